//! Probes and metrics on a listener kubelet and Prometheus can reach, without writes or config
//! values: `--health` serves only `/healthz`, `/readyz` and `/metrics`; `--admin-reads token`
//! puts the config-revealing reads of the admin API behind the token; `microstax probe` exits
//! 0 only on a 2xx answer.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use common::*;
use http::Method;
use std::net::SocketAddr;

const TOKEN: &str = "health-token";

fn free_port() -> SocketAddr {
    // released before the binary binds it: a small race, acceptable on loopback in tests
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn config(dir: &std::path::Path, base: SocketAddr) {
    std::fs::create_dir_all(dir.join("branches")).expect("mkdir");
    std::fs::write(
        dir.join("org.yaml"),
        format!("kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n    env: {{SECRET: hunter2}}\n"),
    )
    .expect("write org");
    std::fs::write(dir.join("branches/dev.yaml"), "parent: baseline\n").expect("write branch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_listener_serves_probes_and_metrics_and_nothing_else() {
    let base = Upstream::start("base").await;
    let dir = tempfile::tempdir().expect("tempdir");
    config(dir.path(), base.addr);
    let health = free_port();
    let health_arg = health.to_string();
    let (child, _proxy, admin) = spawn_run_with(
        dir.path(),
        &["--health", &health_arg],
        &[("MICROSTAX_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let c = h1_client();
    wait_for(DEADLINE, "ready on the health listener", || async {
        (get(&c, health, "/readyz", &[]).await.status == 200).then_some(())
    })
    .await;
    assert_eq!(get(&c, health, "/healthz", &[]).await.status, 200);
    let m = get(&c, health, "/metrics", &[]).await;
    assert_eq!(m.status, 200);
    assert!(
        m.text().contains("microstax_active_connections"),
        "{}",
        m.text()
    );
    let auth = format!("Bearer {TOKEN}");
    for path in [
        "/routes",
        "/explain?branch=baseline&service=api",
        "/plan?branch=dev",
        "/branches",
        "/instances",
    ] {
        let r = get(&c, health, path, &[("authorization", &auth)]).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(!r.text().contains("hunter2"));
        // the same read on the (loopback) admin listener shows the value
        assert_eq!(get(&c, admin, path, &[]).await.status, 200, "{path}");
    }
    let put = send(
        &c,
        Method::PUT,
        health,
        "/branches/x",
        &[("authorization", &auth)],
        "parent: baseline\n",
    )
    .await;
    assert_eq!(put.status, 404, "{}", put.text());
    stop_bin(child).await;
}

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_that_reveal_config_values_can_need_the_token() {
    let base = Upstream::start("base").await;
    let dir = tempfile::tempdir().expect("tempdir");
    config(dir.path(), base.addr);
    let (child, _proxy, admin) = spawn_run_with(
        dir.path(),
        &["--admin-reads", "token"],
        &[("MICROSTAX_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let c = h1_client();
    let explain = "/explain?branch=baseline&service=api";
    let r = get(&c, admin, explain, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(!r.text().contains("hunter2"));
    let auth = format!("Bearer {TOKEN}");
    let r = get(&c, admin, explain, &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("hunter2"));
    // probes never need it
    assert_eq!(get(&c, admin, "/healthz", &[]).await.status, 200);
    assert_eq!(get(&c, admin, "/metrics", &[]).await.status, 200);
    stop_bin(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exits_zero_only_on_a_2xx_answer() {
    let base = Upstream::start("base").await;
    let dir = tempfile::tempdir().expect("tempdir");
    config(dir.path(), base.addr);
    let (child, _proxy, admin) = spawn_run(dir.path(), &[]).await;
    let probe = |path: &'static str, addr: SocketAddr| async move {
        tokio::process::Command::new(BIN)
            .args(["probe", "--addr", &addr.to_string(), "--path", path])
            .output()
            .await
            .expect("run probe")
            .status
            .success()
    };
    wait_for(DEADLINE, "probe succeeds", || async {
        probe("/readyz", admin).await.then_some(())
    })
    .await;
    assert!(!probe("/no-such-path", admin).await);
    stop_bin(child).await;
    assert!(!probe("/healthz", admin).await, "nothing listens any more");
}
