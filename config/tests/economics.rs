//! The economic settings: prices (org, overridden per team) and budgets with their provenance,
//! and every mistake reported with file, line, field and reason.

use microstax_config::economics::SchemaPolicy;

mod common;

use common::build;

const ORG: &str = "kind: org
services:
  orders:
    hosts: [orders]
    endpoints: [\"127.0.0.1:2\"]
    stores: [{name: orders-db, kind: postgres}]
    latency_objective_ms: 500
    min_replicas: 2
stores:
  orders-db: {per_branch_schema: additive}
prices:
  cpu_core_hour: 0.05
  stores: {per_branch_schema: 0.001}
";

fn errors(files: &[(&str, &str)]) -> Vec<String> {
    match build(files) {
        Ok(_) => Vec::new(),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

#[test]
fn prices_resolve_from_the_nearest_team_then_the_org_then_the_default() {
    let cfg = build(&[
        ("org.yaml", ORG),
        (
            "teams/t.yaml",
            "parent: baseline\nprices:\n  gib_hour: 0.01\nbudget: {max_instances: 3, max_cost_per_hour: 0.5}\n",
        ),
        ("branches/b.yaml", "parent: t\n"),
    ])
    .expect("valid");
    let b = cfg.layer_id("b").expect("b");
    let p = cfg.prices(b);
    assert_eq!(p.cpu_core_hour.micros, 50_000);
    assert_eq!(p.cpu_core_hour.origin.to_string(), "baseline (org.yaml:12)");
    assert_eq!(p.gib_hour.micros, 10_000);
    assert_eq!(p.gib_hour.origin.to_string(), "team/t (teams/t.yaml:3)");
    assert_eq!(p.per_branch_schema.micros, 1_000);
    assert_eq!(p.active_fraction.micros, 250_000);
    assert_eq!(p.active_fraction.origin.to_string(), "default (built-in)");
    let budget = cfg.budget(b).expect("budget");
    assert_eq!(budget.max_instances, Some(3));
    assert_eq!(budget.max_cost, Some(500_000));
    assert_eq!(budget.origin.to_string(), "team/t (teams/t.yaml:4)");
    assert_eq!(cfg.schema_policy("orders-db").0, SchemaPolicy::Additive);
    // a store entry with only per_branch_schema has no plugin settings
    assert!(cfg.store_settings("orders-db").is_none());
}

#[test]
fn mistakes_are_reported_at_their_lines() {
    let org = format!(
        "{ORG}  active_fraction: 0\n  per_branch_topic: -1\nbudget: {{max_instances: 1}}\n"
    )
    .replace(
        "per_branch_schema: additive",
        "per_branch_schema: sometimes",
    )
    .replace("min_replicas: 2", "min_replicas: 0");
    let errs = errors(&[
        ("org.yaml", &org),
        ("teams/t.yaml", "parent: baseline\nbudget: {}\n"),
        (
            "branches/b.yaml",
            "parent: t\nprices: {gib_hour: 1}\nservices:\n  orders: {min_replicas: 3}\n",
        ),
    ]);
    for want in [
        "org.yaml:8: services.orders.min_replicas: must be at least 1",
        "org.yaml:10: stores.orders-db.per_branch_schema: unknown value `sometimes`: use always, additive or never",
        "org.yaml:14: prices.active_fraction: must be greater than 0 and at most 1",
        "org.yaml:15: prices.per_branch_topic: must be a number of at least 0",
        "org.yaml:16: budget: belongs in a team layer: it limits all of the team's branches",
        "teams/t.yaml:2: budget: sets no limit: give max_instances or max_cost_per_hour",
        "branches/b.yaml:2: prices: belongs in the org layer or a team layer",
        "branches/b.yaml:4: services.orders.min_replicas: is set in the org layer only",
    ] {
        assert!(
            errs.iter().any(|e| e == want),
            "missing `{want}` in:\n{}",
            errs.join("\n")
        );
    }
}
