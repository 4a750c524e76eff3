//! `microstax instances`: what a running proxy's executor runs for the live plans, read from its
//! admin API (`GET /instances`).

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;

/// Fetch `/instances` from `admin` and print it as a table (or as JSON).
pub(crate) async fn print(admin: SocketAddr, json: bool) -> Result<()> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{admin}/instances").parse()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .context("the admin API did not answer within 5 s")?
        .with_context(|| format!("asking the admin API at {admin}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "{admin}/instances answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&body).context("reading /instances")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", table(&v));
    Ok(())
}

fn table(v: &serde_json::Value) -> String {
    let s = |x: &serde_json::Value| match x {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    let mut out = format!("executor: {}\n", s(&v["executor"]));
    if let Some(note) = v.get("note") {
        out.push_str(&format!("{}\n", s(note)));
    }
    let empty = Vec::new();
    let rows = v["instances"].as_array().unwrap_or(&empty);
    if !rows.is_empty() {
        out.push_str(&format!(
            "{:<14} {:<12} {:<20} {:<22} {:<8} {}\n",
            "INSTANCE", "SERVICE", "ADDRESS", "BRANCHES", "PID", "STATE"
        ));
    }
    for r in rows {
        let branches: Vec<String> = r["branches"]
            .as_array()
            .map(|b| b.iter().map(s).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<14} {:<12} {:<20} {:<22} {:<8} {}\n",
            s(&r["instance"]),
            s(&r["service"]),
            s(&r["address"]),
            branches.join(","),
            s(&r["pid"]),
            s(&r["state"]),
        ));
    }
    for f in v["failures"].as_array().unwrap_or(&empty) {
        out.push_str(&format!("failed: {f}\n"));
    }
    out
}
