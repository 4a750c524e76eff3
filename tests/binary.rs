//! The `microstax` binary as a real child process: the embedded demo's request tree, `check`
//! on bad input, `demo --write-config`, a 200 MB body streamed with flat proxy memory, and an
//! idle proxy that uses no CPU.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::process::{Child, Command};

async fn spawn(args: &[&str]) -> (Child, SocketAddr, SocketAddr) {
    spawn_bin(args, &[]).await
}

async fn stop(child: Child) {
    stop_bin(child).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_a_whole_request_tree() {
    let (child, proxy, admin) =
        spawn(&["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]).await;
    let c = h1_client();
    let health = get(&c, admin, "/healthz", &[]).await;
    assert_eq!(health.status, 200);

    let r = get(
        &c,
        proxy,
        "/",
        &[("host", "web"), ("x-microstax-branch", "feature-b")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["service"], "web");
    assert_eq!(j["instance"], "baseline");
    assert_eq!(
        j["calls"]["orders"]["instance"], "branch/feature-b",
        "feature-b's plan forks orders (it references inventory, which feature-b forks)"
    );
    assert_eq!(
        j["calls"]["orders"]["context"]["branch_header"], "feature-b",
        "context propagated"
    );
    assert_eq!(j["calls"]["payments"]["instance"], "baseline");
    assert!(r.route().contains("branch=feature-b"), "{}", r.route());

    let r = get(
        &c,
        proxy,
        "/inventory/",
        &[("baggage", "microstax-branch=feature-b")],
    )
    .await;
    assert_eq!(r.json()["instance"], "branch/feature-b");

    let r = get(
        &c,
        proxy,
        "/web/",
        &[("cookie", "microstax-branch=pay-fix")],
    )
    .await;
    let j = r.json();
    assert_eq!(j["calls"]["payments"]["instance"], "team/payments-team");
    assert_eq!(j["calls"]["orders"]["instance"], "baseline");

    let r = get(
        &c,
        proxy,
        "/web/",
        &[("host", "feature-a.preview.localhost")],
    )
    .await;
    assert_eq!(r.json()["calls"]["orders"]["instance"], "branch/feature-a");
    stop(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_file_line_field_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("branches")).expect("mkdir");
    std::fs::write(
        dir.path().join("org.yaml"),
        "kind: org\nservices:\n  web:\n    hosts: [web]\n    endpoints: [\"127.0.0.1:1\"]\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("branches/bad.yaml"),
        "parent: nobody\nservices:\n  web:\n    endpoints: [\"no-port\"]\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.path())
        .output()
        .await
        .expect("run check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("branches/bad.yaml:4: services.web.endpoints.0: `no-port` has no port"),
        "{err}"
    );
    assert!(
        err.contains("branches/bad.yaml:1: parent: unknown parent `nobody`"),
        "{err}"
    );

    // the demo config written to disk is valid
    let demo = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["demo", "--write-config"])
        .arg(demo.path())
        .output()
        .await
        .expect("write-config");
    assert!(out.status.success());
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(demo.path())
        .output()
        .await
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 services, 5 layers"));
}

/// `microstax run` with `workers` workers on a config of one service `api` (Host `api`) backed
/// by a real upstream; the upstream and the config directory live as long as the returns.
async fn run_one_service(workers: &str) -> (Upstream, tempfile::TempDir, Child, SocketAddr) {
    let up = Upstream::start("base").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("branches")).expect("mkdir");
    let org = format!(
        "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{}\"]\n",
        up.addr
    );
    std::fs::write(dir.path().join("org.yaml"), org).expect("write");
    let cfg = dir.path().to_str().expect("utf8 path").to_string();
    let args = [
        "run",
        "--config",
        &cfg,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        workers,
    ];
    let (child, proxy, _) = spawn(&args).await;
    (up, dir, child, proxy)
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_body_streams_with_flat_memory() {
    let (_up, _dir, child, proxy) = run_one_service("1").await;
    let pid = child.id().expect("pid");
    let before = peak_rss_kib(pid);

    const SIZE: usize = 200 << 20;
    let chunk = Bytes::from(vec![1u8; 256 * 1024]);
    let frames = (0..SIZE / chunk.len())
        .map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone())));
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::put(format!("http://{proxy}/blob"))
        .header("host", "api")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .expect("req");
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
        .await
        .expect("timeout")
        .expect("upload");
    assert_eq!(resp.status(), 200);
    let j: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(j["body_bytes"].as_u64(), Some(SIZE as u64));

    let after = peak_rss_kib(pid);
    assert!(before > 0 && after > 0, "could not read VmHWM");
    // flat: the proxy's peak memory grew by far less than the body (which is 204800 KiB)
    assert!(
        after - before < 32 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    stop(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_explain_on_the_written_demo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tokio::process::Command::new(BIN)
        .args(["demo", "--write-config"])
        .arg(dir.path())
        .output()
        .await
        .expect("write");
    assert!(out.status.success());
    let cfg = dir.path().to_str().expect("utf8");
    let out = tokio::process::Command::new(BIN)
        .args(["plan", "--config", cfg, "--branch", "feature-a"])
        .output()
        .await
        .expect("plan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("orders-db       postgres  isolate (per-branch schema)"),
        "{text}"
    );
    assert!(
        text.contains("image changed in branch/feature-a (branches/feature-a.yaml:4)"),
        "{text}"
    );
    assert!(text.contains("payments        service   reuse"), "{text}");
    let out = tokio::process::Command::new(BIN)
        .args(["plan", "--config", cfg, "--branch", "pay-fix", "--json"])
        .output()
        .await
        .expect("plan json");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let payments = j["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["name"] == "payments")
        .expect("payments")
        .clone();
    assert_eq!(payments["reason"], "identical to team/payments-team");
    let out = tokio::process::Command::new(BIN)
        .args([
            "explain",
            "--config",
            cfg,
            "--branch",
            "feature-b",
            "--service",
            "orders",
        ])
        .output()
        .await
        .expect("explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("branch/feature-a (branches/feature-a.yaml:4)"),
        "{text}"
    );
    // an unknown branch is a one-line error and exit 1
    let out = tokio::process::Command::new(BIN)
        .args(["plan", "--config", cfg, "--branch", "nope"])
        .output()
        .await
        .expect("plan");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "error: unknown branch or team `nope`");
}

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_proxy_uses_no_cpu() {
    let (_up, _dir, child, proxy) = run_one_service("2").await;
    let pid = child.id().expect("pid");
    // serve a request (arming and clearing the workers' timers), then leave it idle
    let r = get(&h1_client(), proxy, "/", &[("host", "api")]).await;
    assert_eq!(r.status, 200);
    // settled: no CPU tick over a 100 ms poll (within 10 s)
    let settle = std::time::Instant::now() + Duration::from_secs(10);
    let mut before = cpu_ticks(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = cpu_ticks(pid);
        if now == before {
            break;
        }
        assert!(
            std::time::Instant::now() < settle,
            "the proxy never settled"
        );
        before = now;
    }
    // the measured window: what an idle proxy spends in 2 s
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    // a busy loop (the config watcher once re-read its files ~150 times a second) or a timer
    // spinning without work shows up as several ticks here
    assert!(used <= 2, "idle proxy used {used} CPU ticks in 2 s");
    stop(child).await;
}
