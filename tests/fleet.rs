//! etcd as the shared state of a fleet, against a real etcd server and the real binary: a
//! planner publishes, three proxies follow and converge; a standby planner takes over when the
//! leader dies; proxies keep routing while etcd is frozen and then killed, and converge again
//! after it restarts with its history compacted; a corrupt value is refused while the table
//! keeps serving.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;
#[path = "common/etcd.rs"]
mod etcd_server;

use common::*;
use etcd_server::EtcdServer;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(15);
const PREFIX: &str = "fleet";

fn org(base: SocketAddr) -> String {
    format!("kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n")
}

fn branch(endpoint: SocketAddr) -> String {
    format!("parent: baseline\nservices:\n  api:\n    endpoints: [\"{endpoint}\"]\n")
}

fn write_config(root: &Path, base: SocketAddr, dev: SocketAddr) {
    std::fs::create_dir_all(root.join("branches")).expect("mkdir");
    std::fs::write(root.join("org.yaml"), org(base)).expect("write org");
    set_dev(root, dev);
}

/// Point branch `dev` at `to`, atomically (write then rename).
fn set_dev(root: &Path, to: SocketAddr) {
    let tmp = root.join("dev.yaml.tmp");
    std::fs::write(&tmp, branch(to)).expect("write branch");
    std::fs::rename(&tmp, root.join("branches/dev.yaml")).expect("rename");
}

struct Node {
    child: tokio::process::Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

async fn planner(config: &Path, etcd: &EtcdServer, id: &str) -> Node {
    let url = etcd.url(PREFIX);
    let (child, proxy, admin) = spawn_run(
        config,
        &[
            "--publish",
            &url,
            "--etcd-lease-ttl",
            "2",
            "--planner-id",
            id,
        ],
    )
    .await;
    Node {
        child,
        proxy,
        admin,
    }
}

async fn follower(etcd: &EtcdServer) -> Node {
    let url = etcd.url(PREFIX);
    let args = [
        "run",
        "--source",
        url.as_str(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ];
    let (child, proxy, admin) = spawn_bin(&args, &[]).await;
    Node {
        child,
        proxy,
        admin,
    }
}

/// Which upstream answers `branch` through `proxy` (None while it does not route).
async fn upstream_for(client: &TestClient, proxy: SocketAddr, branch: &str) -> Option<String> {
    let r = get(
        client,
        proxy,
        "/",
        &[("host", "api"), ("x-microstax-branch", branch)],
    )
    .await;
    (r.status == 200).then(|| r.upstream())
}

async fn wait_all(client: &TestClient, nodes: &[&Node], branch: &str, want: &str) {
    for (i, n) in nodes.iter().enumerate() {
        wait_for(
            DEADLINE,
            &format!("proxy {i}: {branch} -> {want}"),
            || async {
                (upstream_for(client, n.proxy, branch).await.as_deref() == Some(want)).then_some(())
            },
        )
        .await;
    }
}

async fn readyz(client: &TestClient, admin: SocketAddr) -> (u16, serde_json::Value) {
    let r = get(client, admin, "/readyz", &[]).await;
    (r.status.as_u16(), r.json())
}

/// The value of the metric series `series` (exact name with labels), if present.
async fn metric(client: &TestClient, admin: SocketAddr, series: &str) -> Option<f64> {
    let r = get(client, admin, "/metrics", &[]).await;
    r.text().lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_and_three_proxies_converge_on_a_change() {
    let etcd = EtcdServer::start().await;
    let (base, v1, v2) = (
        Upstream::start("base").await,
        Upstream::start("v1").await,
        Upstream::start("v2").await,
    );
    let client = h1_client();
    // proxies first: they must not be ready before a planner has published
    let proxies = [
        follower(&etcd).await,
        follower(&etcd).await,
        follower(&etcd).await,
    ];
    let (status, body) = readyz(&client, proxies[0].admin).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["source"]["synced"], false, "{body}");

    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), base.addr, v1.addr);
    let planner = planner(dir.path(), &etcd, "a").await;
    let all: Vec<&Node> = proxies.iter().collect();
    wait_all(&client, &all, "dev", "v1").await;
    for p in &proxies {
        let (status, body) = readyz(&client, p.admin).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["source"]["synced"], true, "{body}");
        assert!(
            body["source"]["revision"].as_i64().unwrap_or(0) > 0,
            "{body}"
        );
    }
    assert_eq!(
        metric(&client, planner.admin, "microstax_etcd_leader").await,
        Some(1.0)
    );

    set_dev(dir.path(), v2.addr);
    wait_all(&client, &all, "dev", "v2").await;
    assert_eq!(
        upstream_for(&client, proxies[1].proxy, "other")
            .await
            .as_deref(),
        Some("base")
    );
    // a removed branch is removed from every proxy
    std::fs::remove_file(dir.path().join("branches/dev.yaml")).expect("remove");
    wait_all(&client, &all, "dev", "base").await;
    for p in proxies {
        stop_bin(p.child).await;
    }
    stop_bin(planner.child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_planner_takes_over_when_the_leader_dies() {
    let etcd = EtcdServer::start().await;
    let (base, v1, v2) = (
        Upstream::start("base").await,
        Upstream::start("v1").await,
        Upstream::start("v2").await,
    );
    let client = h1_client();
    // two planners whose configs differ, so the proxy shows which one published
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    write_config(a_dir.path(), base.addr, v1.addr);
    write_config(b_dir.path(), base.addr, v2.addr);
    let a = planner(a_dir.path(), &etcd, "a").await;
    wait_for(DEADLINE, "planner a leads", || async {
        (metric(&client, a.admin, "microstax_etcd_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let b = planner(b_dir.path(), &etcd, "b").await;
    let proxy = follower(&etcd).await;
    wait_all(&client, &[&proxy], "dev", "v1").await;
    assert_eq!(
        metric(&client, b.admin, "microstax_etcd_leader").await,
        Some(0.0),
        "b stands by while a leads"
    );
    // b's own edits are not published while it stands by
    set_dev(b_dir.path(), v2.addr);

    let mut a_child = a.child;
    a_child.start_kill().expect("kill planner a");
    let _ = a_child.wait().await;
    // the lease (2 s) expires, b takes over and publishes its layers
    wait_all(&client, &[&proxy], "dev", "v2").await;
    assert_eq!(
        metric(&client, b.admin, "microstax_etcd_leader").await,
        Some(1.0)
    );
    // b goes on publishing its changes
    set_dev(b_dir.path(), v1.addr);
    wait_all(&client, &[&proxy], "dev", "v1").await;
    stop_bin(proxy.child).await;
    stop_bin(b.child).await;
}

/// Send `signal` to process `pid` (by pid, never by name).
fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        rustix::process::kill_process(p, signal).expect("signal");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_routing_without_etcd_and_converge_after_a_restart_and_a_compaction() {
    let mut etcd = EtcdServer::start().await;
    let (base, v1, v2) = (
        Upstream::start("base").await,
        Upstream::start("v1").await,
        Upstream::start("v2").await,
    );
    let client = h1_client();
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), base.addr, v1.addr);
    let planner = planner(dir.path(), &etcd, "a").await;
    let proxies = [
        follower(&etcd).await,
        follower(&etcd).await,
        follower(&etcd).await,
    ];
    let all: Vec<&Node> = proxies.iter().collect();
    wait_all(&client, &all, "dev", "v1").await;

    // frozen: connections hang; the proxies serve their last good table and say it is stale
    etcd.pause();
    for (i, p) in proxies.iter().enumerate() {
        let body = wait_for(DEADLINE, &format!("proxy {i} sees etcd gone"), || async {
            let (status, body) = readyz(&client, p.admin).await;
            assert_eq!(status, 200, "a proxy with a table stays ready: {body}");
            (body["source"]["connected"] == false
                && body["source"]["staleness_seconds"].as_f64().unwrap_or(0.0) > 0.0)
                .then_some(body)
        })
        .await;
        assert_eq!(body["source"]["synced"], true, "{body}");
        assert_eq!(
            upstream_for(&client, p.proxy, "dev").await.as_deref(),
            Some("v1")
        );
        let stale = metric(&client, p.admin, "microstax_source_staleness_seconds").await;
        assert!(stale.is_some_and(|s| s > 0.0), "{stale:?}");
    }
    // then killed: still routing
    etcd.kill();
    for p in &proxies {
        assert_eq!(
            upstream_for(&client, p.proxy, "dev").await.as_deref(),
            Some("v1")
        );
    }

    // freeze the proxies while etcd comes back and moves on past their revision, then compact
    // its history: their watches resume from a compacted revision and must list again
    for p in &proxies {
        signal(p.pid(), rustix::process::Signal::STOP);
    }
    etcd.restart().await;
    set_dev(dir.path(), v2.addr);
    let api = etcd.api();
    let published = wait_for(
        DEADLINE,
        "the planner publishes after the restart",
        || async {
            let (_, kv) = api
                .get(&format!("/{PREFIX}/layers/branch/dev"))
                .await
                .ok()?;
            let kv = kv?;
            String::from_utf8_lossy(&kv.value)
                .contains(&v2.addr.to_string())
                .then_some(kv.mod_revision)
        },
    )
    .await;
    etcd.put("/unrelated", b"x").await;
    let now = etcd.revision().await;
    assert!(now > published);
    api.compact(now).await.expect("compact");
    for p in &proxies {
        signal(p.pid(), rustix::process::Signal::CONT);
    }
    wait_all(&client, &all, "dev", "v2").await;
    for p in &proxies {
        let relists = metric(&client, p.admin, "microstax_source_relists_total").await;
        assert_eq!(
            relists,
            Some(2.0),
            "the first load and one after the compaction"
        );
        let (status, body) = wait_for(DEADLINE, "the proxy is current again", || async {
            let (status, body) = readyz(&client, p.admin).await;
            (body["source"]["connected"] == true).then_some((status, body))
        })
        .await;
        assert_eq!(status, 200, "{body}");
    }
    for p in proxies {
        stop_bin(p.child).await;
    }
    stop_bin(planner.child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_is_refused_while_the_table_keeps_serving() {
    let etcd = EtcdServer::start().await;
    let (base, v1, v2) = (
        Upstream::start("base").await,
        Upstream::start("v1").await,
        Upstream::start("v2").await,
    );
    let client = h1_client();
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), base.addr, v1.addr);
    let planner = planner(dir.path(), &etcd, "a").await;
    let proxy = follower(&etcd).await;
    wait_all(&client, &[&proxy], "dev", "v1").await;
    let rejected = "microstax_config_rejected_total{source=\"etcd\"}";
    let key = format!("/{PREFIX}/layers/branch/dev");
    for (i, bad) in [
        &b"{\"parent\": \"baseline\", \"services\": {\"api\": [1,"[..],
        b"\xff\xfe not utf-8",
        b"{\"parent\": \"no-such-layer\"}",
        b"{\"name\": \"someone-else\", \"parent\": \"baseline\"}",
    ]
    .into_iter()
    .enumerate()
    {
        etcd.put(&key, bad).await;
        wait_for(DEADLINE, &format!("corrupt value {i} refused"), || async {
            (metric(&client, proxy.admin, rejected).await == Some(i as f64 + 1.0)).then_some(())
        })
        .await;
        assert_eq!(
            upstream_for(&client, proxy.proxy, "dev").await.as_deref(),
            Some("v1"),
            "the last good version keeps serving"
        );
        let (status, body) = readyz(&client, proxy.admin).await;
        assert_eq!(status, 200, "{body}");
    }
    // a valid value for the key applies again
    etcd.put(&key, branch(v2.addr).as_bytes()).await;
    wait_all(&client, &[&proxy], "dev", "v2").await;
    stop_bin(proxy.child).await;
    stop_bin(planner.child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_at_the_first_load_is_left_out_and_the_rest_serves() {
    let etcd = EtcdServer::start().await;
    let (base, v1, v2) = (
        Upstream::start("base").await,
        Upstream::start("v1").await,
        Upstream::start("v2").await,
    );
    let client = h1_client();
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), base.addr, v1.addr);
    let planner = planner(dir.path(), &etcd, "a").await;
    let api = etcd.api();
    let marker = format!("/{PREFIX}/meta");
    wait_for(DEADLINE, "the planner's first publish", || async {
        api.get(&marker).await.ok()?.1.map(|_| ())
    })
    .await;
    let bad = format!("/{PREFIX}/layers/branch/bad");
    etcd.put(&bad, b"services: [").await;
    etcd.put(
        &format!("/{PREFIX}/layers/branch/orphan"),
        b"parent: no-such-layer\n",
    )
    .await;
    let proxy = follower(&etcd).await;
    wait_all(&client, &[&proxy], "dev", "v1").await;
    let (status, body) = readyz(&client, proxy.admin).await;
    assert_eq!(status, 200, "{body}");
    let rejected = "microstax_config_rejected_total{source=\"etcd\"}";
    assert_eq!(metric(&client, proxy.admin, rejected).await, Some(2.0));
    assert_eq!(
        upstream_for(&client, proxy.proxy, "bad").await.as_deref(),
        Some("base")
    );
    // fixed in place: it applies
    etcd.put(&bad, branch(v2.addr).as_bytes()).await;
    wait_all(&client, &[&proxy], "bad", "v2").await;
    stop_bin(proxy.child).await;
    stop_bin(planner.child).await;
}
