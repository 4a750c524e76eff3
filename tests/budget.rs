//! Team budgets enforced on branch writes, against the real binary over loopback: a branch file
//! and an admin API write that would take the team over its budget are refused with the reason,
//! the conflicting constraints and the cheapest plan feasible without the budget, and the last
//! good table keeps serving (the refused branch is not routed; the team's other branch is).
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use common::*;
use http::Method;
use std::net::SocketAddr;
use std::time::Duration;

const TOKEN: &str = "budget-token";
const DEADLINE: Duration = Duration::from_secs(10);

fn org(base: SocketAddr) -> String {
    format!(
        "kind: org\nrouting: {{debug_header: true}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n    resources: {{cpu_m: 500, memory_mi: 1024}}\n"
    )
}

/// A branch of team `t` that forks `api` (its own endpoint): one instance.
fn branch(endpoint: SocketAddr) -> String {
    format!("parent: t\nservices:\n  api:\n    endpoints: [\"{endpoint}\"]\n")
}

async fn upstream_for(client: &TestClient, proxy: SocketAddr, branch: &str) -> String {
    let r = get(
        client,
        proxy,
        "/",
        &[("host", "api"), ("x-microstax-branch", branch)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.upstream()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_the_team_budget_are_refused_with_reasons_and_the_table_keeps_serving() {
    let base = Upstream::start("base").await;
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for d in ["teams", "branches"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::write(root.join("org.yaml"), org(base.addr)).expect("org");
    // one instance allowed across the team's live branches
    std::fs::write(
        root.join("teams/t.yaml"),
        "parent: baseline\nbudget: {max_instances: 1}\n",
    )
    .expect("team");
    std::fs::write(root.join("branches/a.yaml"), branch(v1.addr)).expect("a");
    let (child, proxy, admin) =
        spawn_run_with(root, &[], &[("MICROSTAX_ADMIN_TOKEN", TOKEN)]).await;
    let client = h1_client();
    assert_eq!(upstream_for(&client, proxy, "a").await, "v1");
    let auth = format!("Bearer {TOKEN}");

    // the plan of `a` shows the budget it counts against
    let r = send(
        &client,
        Method::GET,
        admin,
        "/plan?branch=a",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let plan = r.json();
    assert_eq!(plan["economics"]["budget"]["team"], "team/t", "{plan}");
    assert_eq!(plan["economics"]["budget"]["total"]["instances"], 1);

    // an API write that needs a second instance: refused with its reasons
    let r = send(
        &client,
        Method::PUT,
        admin,
        "/branches/c",
        &[("authorization", &auth)],
        &branch(v2.addr),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let text = r.text();
    for want in [
        "the budget of team/t cannot hold what the constraints require",
        "team/t (teams/t.yaml:2) allows 1 instances and any cost; its other live layers use 1",
        "conflicting: budget of team/t",
        "cheapest plan without the budget: api=own-instance (0.025/h, 1 instances)",
    ] {
        assert!(text.contains(want), "missing `{want}` in {text}");
    }
    assert_eq!(
        upstream_for(&client, proxy, "c").await,
        "base",
        "refused: c is not routed"
    );

    // the same as a file: refused, reported, and the team's branch keeps serving
    std::fs::write(root.join("branches/b.yaml"), branch(v2.addr)).expect("b");
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
    assert_eq!(upstream_for(&client, proxy, "b").await, "base");
    assert_eq!(upstream_for(&client, proxy, "a").await, "v1");

    // raising the budget lets the held file in
    std::fs::write(
        root.join("teams/t.yaml"),
        "parent: baseline\nbudget: {max_instances: 3}\n",
    )
    .expect("team");
    std::fs::write(root.join("branches/b.yaml"), branch(v2.addr)).expect("b again");
    wait_for(DEADLINE, "b routed", || async {
        (upstream_for(&client, proxy, "b").await == "v2").then_some(())
    })
    .await;
    stop_bin(child).await;
}
