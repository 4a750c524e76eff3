//! Bounded config input against the real binary: a branch file or admin body nested 50 000
//! levels deep (about 100 KB) is refused with its file, line and the limit. `check` and `run`
//! print the diagnostic and exit 1 instead of dying of a stack overflow, and a running proxy
//! keeps serving, its watcher keeps following the directory, and the admin API answers 422.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use common::*;
use http::Method;
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

const TOKEN: &str = "limits-token";
const DEADLINE: Duration = Duration::from_secs(10);
const LIMIT: &str = "nesting deeper than 64 levels";

fn deep() -> String {
    format!("{}x\n", "- ".repeat(50_000))
}

fn write_org(root: &Path, endpoint: &str) {
    std::fs::create_dir_all(root.join("branches")).expect("mkdir");
    let org = format!(
        "kind: org\nrouting: {{debug_header: true}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{endpoint}\"]\n"
    );
    std::fs::write(root.join("org.yaml"), org).expect("write org");
}

/// Run the binary to completion (bounded), returning its exit code and stderr.
async fn run_to_end(args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(BIN).args(args).kill_on_drop(true).output(),
    )
    .await
    .expect("finished within 30 s")
    .expect("ran");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_run_refuse_a_deep_file_with_a_diagnostic() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_org(dir.path(), "127.0.0.1:1");
    std::fs::write(dir.path().join("branches/deep.yaml"), deep()).expect("write");
    let cfg = dir.path().to_str().expect("utf8");
    let want = format!("branches/deep.yaml:1: {LIMIT}");

    let (code, err) = run_to_end(&["check", "--config", cfg]).await;
    assert_eq!(code, Some(1), "exit 1, not a signal: {err}");
    assert!(err.contains(&want), "{err}");

    // `run` starts with the files that validate (one broken branch file must not keep the
    // proxy down) and names the refused file and the limit in its log
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = Command::new(BIN)
        .args(["run", "--config", cfg, "--listen", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0", "--workers", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(&want) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let alive = child.try_wait().expect("try_wait").is_none();
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    assert!(found, "run logs {want}");
    assert!(alive, "run keeps serving with the deep file left out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_proxy_refuses_deep_files_and_bodies_and_keeps_serving() {
    let base = Upstream::start("base").await;
    let v1 = Upstream::start("v1").await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_org(dir.path(), &base.addr.to_string());
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("write token");
    let token = token.to_str().expect("utf8").to_string();
    let (child, proxy, admin) = spawn_run(dir.path(), &["--admin-token-file", &token]).await;
    let c = h1_client();
    let upstream_for = |branch: &'static str| {
        let c = c.clone();
        async move {
            let r = get(
                &c,
                proxy,
                "/",
                &[("host", "api"), ("x-microstax-branch", branch)],
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.upstream()
        }
    };
    assert_eq!(upstream_for("deep").await, "base");

    // a deep file appears in the watched directory: counted as rejected, routing stays
    std::fs::write(dir.path().join("branches/deep.yaml"), deep()).expect("write deep");
    wait_for(DEADLINE, "the deep file's rejection", || async {
        let m = get(&c, admin, "/metrics", &[]).await.text();
        m.contains("microstax_config_rejected_total{source=\"file\"} 1")
            .then_some(())
    })
    .await;
    assert_eq!(upstream_for("deep").await, "base");

    // the same text as an admin body: 422 naming the limit and its line
    let auth = format!("Bearer {TOKEN}");
    let r = send(
        &c,
        Method::PUT,
        admin,
        "/branches/deep-api",
        &[("authorization", &auth)],
        &deep(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let d = &r.json()["diagnostics"][0];
    assert_eq!(d["reason"], LIMIT, "{d}");
    assert_eq!(d["line"], 1, "{d}");
    assert_eq!(d["file"], "api:PUT /branches/deep-api", "{d}");

    // the watcher still follows the directory: fixing the file is picked up
    let fixed = format!("services:\n  api:\n    endpoints: [\"{}\"]\n", v1.addr);
    std::fs::write(dir.path().join("branches/deep.yaml"), fixed).expect("fix");
    wait_for(DEADLINE, "deep -> v1", || async {
        (upstream_for("deep").await == "v1").then_some(())
    })
    .await;
    stop_bin(child).await;
}
