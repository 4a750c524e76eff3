//! The access log over real sockets: one JSON line per request with the routing facts, sampled
//! logging that still keeps every proxy-made 502/503/504 with its reason, and the binary's
//! `--access-log`, `--access-log-file` and `--log-format json` (no colour codes on a pipe).
#![allow(clippy::expect_used)]

mod common;

use common::*;
use microstax_proxy::{AccessLog, LogMode, LogSink, ServerOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(10);

fn cfg(base: &Upstream, dev: &Upstream, dead: std::net::SocketAddr) -> microstax_config::Config {
    let org = format!(
        "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{}\"]\n  down:\n    hosts: [down]\n    endpoints: [\"{dead}\"]\n",
        base.addr
    );
    let br = format!(
        "parent: baseline\nservices:\n  api: {{endpoints: [\"{}\"]}}\n",
        dev.addr
    );
    config(&[("org.yaml", &org), ("branches/dev.yaml", &br)])
}

async fn dead_addr() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

async fn lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    wait_for(DEADLINE, "access log lines", || async move {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let v: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (v.len() >= n).then_some(v)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request_with_the_routing_facts() {
    let (base, dev) = (Upstream::start("base").await, Upstream::start("dev").await);
    let dead = dead_addr().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("access.log");
    let log = AccessLog::start(LogMode::All, LogSink::File(file.clone())).expect("log");
    let opts = ServerOptions {
        access_log: Arc::new(log),
        ..ServerOptions::default()
    };
    let p = ProxyUnderTest::start_with(&cfg(&base, &dev, dead), opts).await;
    let c = h1_client();
    let r = get(
        &c,
        p.addr,
        "/orders/7?x=1",
        &[
            ("host", "api"),
            ("x-microstax-branch", "dev"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
    )
    .await;
    assert_eq!(r.upstream(), "dev");
    let r = get(&c, p.addr, "/", &[("host", "down")]).await;
    assert_eq!(r.status, 502);
    let v = lines(&file, 2).await;
    let a = &v[0];
    assert_eq!(a["method"], "GET");
    assert_eq!(a["authority"], "api");
    assert_eq!(a["path"], "/orders/7");
    assert_eq!(a["status"], 200);
    assert!(a["duration_ms"].as_f64().expect("duration") > 0.0);
    assert!(a["bytes"].as_u64().expect("bytes") > 0);
    assert_eq!(a["branch"], "dev");
    assert_eq!(a["branch_source"], "header");
    assert_eq!(a["service"], "api");
    assert_eq!(a["layer"], "branch/dev");
    assert_eq!(a["route"], "branch");
    assert_eq!(a["upstream"], dev.addr.to_string());
    assert_eq!(a["retries"], 0);
    assert_eq!(a["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(a["time"].as_str().expect("time").ends_with('Z'));
    let b = &v[1];
    assert_eq!(b["status"], 502);
    assert_eq!(b["service"], "down");
    assert!(
        b["reason"]
            .as_str()
            .expect("a reason")
            .contains("cannot connect to upstream"),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_keeps_every_proxy_made_failure() {
    let (base, dev) = (Upstream::start("base").await, Upstream::start("dev").await);
    let dead = dead_addr().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("access.log");
    let log = AccessLog::start(LogMode::Sampled(1000), LogSink::File(file.clone())).expect("log");
    let opts = ServerOptions {
        access_log: Arc::new(log),
        ..ServerOptions::default()
    };
    let p = ProxyUnderTest::start_with(&cfg(&base, &dev, dead), opts).await;
    let c = h1_client();
    for _ in 0..20 {
        assert_eq!(get(&c, p.addr, "/", &[("host", "api")]).await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&c, p.addr, "/", &[("host", "down")]).await.status, 502);
    }
    let v = lines(&file, 3).await;
    assert!(
        v.iter()
            .all(|l| l["status"] == 502 && l["reason"].is_string()),
        "{v:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_the_access_log_and_json_process_logs_without_colour() {
    let base = Upstream::start("base").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("branches")).expect("mkdir");
    std::fs::write(
        root.join("org.yaml"),
        format!(
            "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{}\"]\n",
            base.addr
        ),
    )
    .expect("org");
    // a broken branch file: the start leaves it out with a warning in the process log
    std::fs::write(
        root.join("branches/bad.yaml"),
        "parent: baseline\nnot_a_field: 1\n",
    )
    .expect("bad");
    let file = root.join("access.log");
    let (cfg, f) = (root.to_str().expect("utf-8"), file.to_str().expect("utf-8"));
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "run",
            "--config",
            cfg,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--access-log",
            "all",
            "--access-log-file",
            f,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(DEADLINE, out.next_line())
        .await
        .expect("started")
        .expect("read")
        .expect("a line");
    let addr: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split(',').next()?.parse().ok())
        .expect("proxy address");
    let r = get(&h1_client(), addr, "/x", &[("host", "api")]).await;
    assert_eq!(r.status, 200);
    let v = lines(&file, 1).await;
    assert_eq!(v[0]["path"], "/x");
    assert_eq!(v[0]["service"], "api");
    let _ = child.start_kill();
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains('\u{1b}'), "colour codes on a pipe: {err}");
    let json_lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert!(!json_lines.is_empty(), "no process log");
    for l in json_lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
}
