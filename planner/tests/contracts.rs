//! Route contracts in the solver: on every edge a branch's routes use, the callee instance
//! served must meet the caller's requirement; the branch is refused, naming the edge, the
//! version and the requirement with their origins, when no choice can meet it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use microstax_planner::Planner;

const ORG: &str = "kind: org
services:
  web:
    hosts: [web]
    endpoints: [\"127.0.0.1:1\"]
    depends_on: [orders]
    requires: {orders: \"^2\"}
  orders:
    hosts: [orders]
    endpoints: [\"127.0.0.1:2\"]
    api: \"2.3.0\"
    idle_after_s: 60
";

fn plan(branch: &str) -> microstax_planner::Plan {
    let cfg = common::config(&[("org.yaml", ORG), ("branches/b.yaml", branch)]).unwrap();
    let planner = Planner::new(&cfg).unwrap();
    planner.plan(&cfg, "b", None).unwrap()
}

#[test]
fn a_compatible_change_plans() {
    let p = plan("services:\n  orders:\n    api: \"2.4.0\"\n");
    assert!(p.economics.refused.is_none(), "{}", p.to_table());
    let both =
        plan("services:\n  orders:\n    api: \"3.0.0\"\n  web:\n    requires: {orders: \"^3\"}\n");
    assert!(both.economics.refused.is_none(), "{}", both.to_table());
}

#[test]
fn an_incompatible_callee_under_an_unchanged_caller_is_refused_with_the_edge() {
    let p = plan("services:\n  orders:\n    api: \"3.0.0\"\n");
    let r = p.economics.refused.as_ref().expect("refused");
    let all = r.conflicting.join("\n");
    assert!(
        all.contains("route web -> orders: orders serves api 3.0.0 (services.orders.api, branch/b (branches/b.yaml:3)), which does not meet web's requirement ^2 (services.web.requires.orders, baseline (org.yaml:7))"),
        "{all}\n{}",
        r.reason
    );
    assert!(
        p.to_table().contains("route web -> orders"),
        "{}",
        p.to_table()
    );
}

#[test]
fn a_local_caller_needing_more_than_the_parent_serves_is_refused() {
    let p = plan("services:\n  web:\n    local: \"127.0.0.1:9\"\n    requires: {orders: \"^3\"}\n");
    let r = p.economics.refused.as_ref().expect("refused");
    assert!(
        r.reason.contains("contracts cannot all be met"),
        "{}",
        r.reason
    );
    assert!(
        r.conflicting.iter().any(|c| c.starts_with(
            "route web -> orders: orders serves api 2.3.0 (services.orders.api, baseline (org.yaml:11))"
        ) && c.contains("requirement ^3 (services.web.requires.orders, branch/b (branches/b.yaml:4))")),
        "{:?}",
        r.conflicting
    );
}
