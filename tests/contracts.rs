//! Route contracts enforced on branch writes, against the real binary over loopback: a branch
//! file and an admin API write after which the branch would serve an unchanged caller an api it
//! does not accept are refused naming the edge, the version and the requirement, and the last
//! good table keeps serving (the refused branch is not routed; a compatible branch is).
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use common::*;
use http::Method;
use std::net::SocketAddr;
use std::time::Duration;

const TOKEN: &str = "contracts-token";
const DEADLINE: Duration = Duration::from_secs(10);

fn org(base: SocketAddr) -> String {
    format!(
        "kind: org\nrouting: {{debug_header: true}}\nservices:\n  web:\n    hosts: [web]\n    endpoints: [\"{base}\"]\n    depends_on: [orders]\n    requires: {{orders: \"^2\"}}\n  orders:\n    hosts: [orders]\n    endpoints: [\"{base}\"]\n    api: \"2.3.0\"\n"
    )
}

/// A branch that forks `orders` at `endpoint`, serving api `api`.
fn branch(endpoint: SocketAddr, api: &str) -> String {
    format!("parent: baseline\nservices:\n  orders:\n    endpoints: [\"{endpoint}\"]\n    api: \"{api}\"\n")
}

async fn orders_for(client: &TestClient, proxy: SocketAddr, branch: &str) -> String {
    let r = get(
        client,
        proxy,
        "/",
        &[("host", "orders"), ("x-microstax-branch", branch)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.upstream()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_writes_are_refused_naming_the_edge_and_the_table_keeps_serving() {
    let base = Upstream::start("base").await;
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("branches")).expect("mkdir");
    std::fs::write(root.join("org.yaml"), org(base.addr)).expect("org");
    std::fs::write(root.join("branches/a.yaml"), branch(v1.addr, "2.4.0")).expect("a");
    let (child, proxy, admin) =
        spawn_run_with(root, &[], &[("MICROSTAX_ADMIN_TOKEN", TOKEN)]).await;
    let client = h1_client();
    assert_eq!(orders_for(&client, proxy, "a").await, "v1");
    let auth = format!("Bearer {TOKEN}");

    // an API write serving orders 3.0.0 to the baseline's web (^2): refused with the edge
    let r = send(
        &client,
        Method::PUT,
        admin,
        "/branches/c",
        &[("authorization", &auth)],
        &branch(v2.addr, "3.0.0"),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let text = r.text();
    for want in [
        "branch/c is refused",
        "route web -> orders: orders serves api 3.0.0",
        "which does not meet web's requirement ^2 (services.web.requires.orders, baseline (",
    ] {
        assert!(text.contains(want), "missing `{want}` in {text}");
    }
    assert_eq!(
        orders_for(&client, proxy, "c").await,
        "base",
        "refused: c is not routed"
    );

    // the same as a file: refused, reported, and the other branch keeps serving
    std::fs::write(root.join("branches/b.yaml"), branch(v2.addr, "3.0.0")).expect("b");
    wait_for(DEADLINE, "b's file rejected", || async {
        let r = send(
            &client,
            Method::GET,
            admin,
            "/metrics",
            &[("authorization", &auth)],
            "",
        )
        .await;
        r.text()
            .lines()
            .any(|l| l.starts_with("microstax_config_rejected_total{source=\"file\"} 1"))
            .then_some(())
    })
    .await;
    assert_eq!(orders_for(&client, proxy, "b").await, "base");
    assert_eq!(orders_for(&client, proxy, "a").await, "v1");

    // a compatible version lets the file in
    std::fs::write(root.join("branches/b.yaml"), branch(v2.addr, "2.9.1")).expect("b again");
    wait_for(DEADLINE, "b routed", || async {
        (orders_for(&client, proxy, "b").await == "v2").then_some(())
    })
    .await;
    stop_bin(child).await;
}
