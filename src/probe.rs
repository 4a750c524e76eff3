//! `microstax probe`: ask a health endpoint and exit 0 when it answers 2xx within the timeout
//! (the image's `HEALTHCHECK`, or an exec probe: the runtime image has no curl).

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;

/// GET `http://{addr}{path}`; Ok when the status is 2xx.
pub(crate) async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<()> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{addr}{path}")
        .parse()
        .context("building the probe URL")?;
    let resp = tokio::time::timeout(timeout, client.get(uri))
        .await
        .with_context(|| format!("{addr}{path} did not answer within {timeout:?}"))?
        .with_context(|| format!("asking {addr}{path}"))?;
    if !resp.status().is_success() {
        bail!("{addr}{path} answered {}", resp.status());
    }
    Ok(())
}
