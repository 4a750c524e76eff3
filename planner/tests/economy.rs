//! The solver applied to real plans: the plan's decisions are the solver's choice among priced
//! alternatives, with the binding reason and the runner-up; per-branch schema policies, scale to
//! zero against a latency objective, reliability floors, shared instances and team budgets; the
//! executor's desired state follows the choice; plans are deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use microstax_planner::environments::desired;
use microstax_planner::{Decision, Isolation, Planner};
use std::time::Duration;

const ORG: &str = "kind: org
services:
  web:
    hosts: [web]
    endpoints: [\"127.0.0.1:1\"]
    depends_on: [orders]
    resources: {cpu_m: 200, memory_mi: 256}
  orders:
    hosts: [orders]
    endpoints: [\"127.0.0.1:2\"]
    image: registry/orders:1
    resources: {cpu_m: 1000, memory_mi: 1024}
    stores: [{name: orders-db, kind: postgres}]
    idle_after_s: 60
";

fn chosen<'a>(p: &'a microstax_planner::Plan, name: &str) -> &'a microstax_planner::Chosen {
    p.entry(name)
        .and_then(|e| e.chosen.as_ref())
        .unwrap_or_else(|| panic!("{name} has no choice:\n{}", p.to_table()))
}

#[test]
fn demo_feature_a_chooses_the_schema_and_says_why() {
    let cfg = common::demo();
    let planner = Planner::new(&cfg).unwrap();
    let p = planner.plan(&cfg, "feature-a", None).unwrap();
    let db = chosen(&p, "orders-db");
    assert_eq!(&*db.label, "per-branch-schema");
    assert!(
        db.reason
            .starts_with("share is not allowed: orders migrates schema (0042_add_delivery_window)"),
        "{}",
        db.reason
    );
    let r = db.runner_up.as_ref().expect("runner-up");
    assert_eq!(&*r.label, "database-from-template");
    assert_eq!(r.delta, 1_500);
    assert!(chosen(&p, "inventory")
        .reason
        .starts_with("reuse is ruled out"));
    let x = &p.economics;
    assert_eq!(x.cost, 20_350);
    assert!(x.cost < x.baselines.kardinal.cost);
    assert!(x.baselines.kardinal.cost < x.baselines.clone_all.cost);
    // the prices, with where each was set
    let j = p.to_json();
    let cpu = &j["economics"]["prices"][0];
    assert_eq!(cpu["name"], "cpu_core_hour");
    assert_eq!(cpu["micros"], 40_000);
    assert_eq!(cpu["origin"], "default (built-in)");
    // deterministic: the same plan again, and the same JSON
    let again = planner.plan(&cfg, "feature-a", None).unwrap();
    assert_eq!(p, again);
    assert_eq!(p.to_json(), again.to_json());
}

#[test]
fn a_schema_policy_for_additive_migrations_moves_a_breaking_one_to_a_database() {
    let org = format!("{ORG}stores:\n  orders-db: {{per_branch_schema: additive}}\n");
    let branch = |additive: bool| {
        format!("parent: baseline\nservices:\n  orders:\n    migrations: [{{store: orders-db, name: m7, additive: {additive}}}]\n")
    };
    let cfg = common::config(&[
        ("org.yaml", &org),
        ("branches/drop.yaml", &branch(false)),
        ("branches/add.yaml", &branch(true)),
    ])
    .unwrap();
    let planner = Planner::new(&cfg).unwrap();
    let p = planner.plan(&cfg, "drop", None).unwrap();
    let db = chosen(&p, "orders-db");
    assert_eq!(&*db.label, "database-from-template", "{}", p.to_table());
    assert_eq!(
        p.entry("orders-db").unwrap().decision,
        Decision::Isolate(Isolation::Database)
    );
    let schema = db
        .alternatives
        .iter()
        .find(|a| &*a.label == "per-branch-schema")
        .unwrap();
    assert_eq!(
        schema.not_allowed,
        vec!["migration m7 is not additive (orders-db allows per-branch schemas for additive migrations only: baseline (org.yaml:16))".to_string()]
    );
    let p = planner.plan(&cfg, "add", None).unwrap();
    assert_eq!(&*chosen(&p, "orders-db").label, "per-branch-schema");
}

#[test]
fn scale_to_zero_is_chosen_unless_the_cold_start_breaks_the_latency_objective() {
    let branch = "parent: baseline\nservices:\n  orders: {image: registry/orders:2}\n";
    let cfg = common::config(&[("org.yaml", ORG), ("branches/b.yaml", branch)]).unwrap();
    let planner = Planner::new(&cfg).unwrap();
    let p = planner.plan(&cfg, "b", None).unwrap();
    let o = chosen(&p, "orders");
    assert_eq!(&*o.label, "scaled-to-zero", "{}", p.to_table());
    // 1 core at 0.04 + 1 GiB at 0.005, a quarter of the time
    assert_eq!(o.cost, 11_250);
    let (d, _) = desired(&cfg, &planner);
    let inst = d.instances.values().next().expect("one instance");
    assert_eq!(inst.idle_after, Some(Duration::from_secs(60)));

    let org = ORG.replace(
        "    idle_after_s: 60\n",
        "    idle_after_s: 60\n    latency_objective_ms: 300\n    cold_start_ms: 4000\n    min_replicas: 2\n",
    );
    let cfg = common::config(&[("org.yaml", &org), ("branches/b.yaml", branch)]).unwrap();
    let planner = Planner::new(&cfg).unwrap();
    let p = planner.plan(&cfg, "b", None).unwrap();
    let o = chosen(&p, "orders");
    assert_eq!(&*o.label, "own-instance");
    assert_eq!((o.cost, o.instances, o.replicas), (90_000, 2, 2));
    assert_eq!(
        o.reason,
        "scaled-to-zero is not allowed: cold start 4000 ms exceeds the latency objective of 300 ms (baseline (org.yaml:15))"
    );
    let (d, _) = desired(&cfg, &planner);
    let inst = d.instances.values().next().expect("one instance");
    assert_eq!(
        inst.idle_after, None,
        "kept warm: the solver did not scale it"
    );
}

#[test]
fn identical_branches_share_one_instance_at_half_the_cost() {
    let org = ORG.replace("    idle_after_s: 60\n", "");
    let branch = "parent: baseline\nservices:\n  orders: {image: registry/orders:2}\n";
    let cfg = common::config(&[
        ("org.yaml", &org),
        ("branches/a.yaml", branch),
        ("branches/b.yaml", branch),
    ])
    .unwrap();
    let planner = Planner::new(&cfg).unwrap();
    let fleet = planner.plan_all(&cfg).unwrap();
    let a = planner.plan_with(&cfg, "a", None, Some(&fleet)).unwrap();
    let b = planner.plan_with(&cfg, "b", None, Some(&fleet)).unwrap();
    let (ca, cb) = (chosen(&a, "orders"), chosen(&b, "orders"));
    assert_eq!(
        (&*ca.label, &*cb.label),
        ("shared-instance", "shared-instance")
    );
    assert_eq!(ca.cost, 22_500);
    // the instance is counted once, by the first of the layers sharing it
    assert_eq!((ca.instances, cb.instances), (1, 0));
    assert_eq!(
        ca.runner_up.as_ref().map(|r| &*r.label),
        Some("own-instance")
    );
}

#[test]
fn a_team_budget_counts_every_live_branch_and_refuses_what_it_cannot_hold() {
    let org = ORG.replace("    idle_after_s: 60\n", "");
    let team = "parent: baseline\nbudget: {max_cost_per_hour: 0.05}\n";
    let branch =
        |img: u32| format!("parent: t\nservices:\n  orders: {{image: registry/orders:{img}}}\n");
    let cfg = common::config(&[
        ("org.yaml", &org),
        ("teams/t.yaml", team),
        ("branches/a.yaml", &branch(2)),
        ("branches/b.yaml", &branch(3)),
    ])
    .unwrap();
    let planner = Planner::new(&cfg).unwrap();
    // each fork costs 0.045/h: one fits, two do not
    let p = planner.plan(&cfg, "b", None).unwrap();
    let x = &p.economics;
    let refused = x.refused.as_ref().expect("refused");
    assert_eq!(
        refused.reason,
        "the budget of team/t cannot hold what the constraints require"
    );
    assert!(refused
        .conflicting
        .contains(&"budget of team/t".to_string()));
    let (names, cost, inst) = refused.without_budget.as_ref().expect("cheapest without");
    assert_eq!(names, &vec!["orders=own-instance".to_string()]);
    assert_eq!((*cost, *inst), (45_000, 1));
    let u = x.budget.as_ref().expect("budget");
    assert_eq!((u.others.cost, u.others.instances), (45_000, 1));
    assert!(p.to_table().contains("REFUSED: the budget of team/t"));
    // the fleet view refuses both branches the same way, whatever order they come in
    let every = planner.plan_every(&cfg);
    let refused: Vec<bool> = every
        .iter()
        .filter_map(|(_, p)| p.as_ref().ok())
        .filter(|p| p.layer.starts_with("branch/"))
        .map(|p| p.economics.refused.is_some())
        .collect();
    assert_eq!(refused, vec![true, true]);
}
