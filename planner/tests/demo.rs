//! The demo walk-through of planner/README.md, checked: the plans of the demo branches with
//! their reasons, sharing, and `explain`.

#![allow(clippy::unwrap_used)]

mod common;

use microstax_planner::{
    explain, plan_all, plan_branch, Decision, Isolation, PlanError, Planner, Resources,
};

fn line(plan: &microstax_planner::Plan, name: &str) -> String {
    plan.entry(name)
        .map(ToString::to_string)
        .unwrap_or_default()
}

#[test]
fn feature_a_forks_orders_and_isolates_its_store_and_topic() {
    let c = common::demo();
    let p = plan_branch(&c, "feature-a", None).unwrap();
    let orders = line(&p, "orders");
    // spec changes in the order of the file; the demo's branches declare no endpoints (the
    // process executor runs their forks)
    assert!(
        orders.starts_with(
            "orders: fork - image changed in branch/feature-a (branches/feature-a.yaml:4); \
             migrations.orders-db.0042_add_delivery_window set in branch/feature-a"
        ),
        "{orders}"
    );
    assert!(!orders.contains("endpoints changed"), "{orders}");
    assert_eq!(
        line(&p, "orders-db"),
        "orders-db: isolate (postgres: per-branch schema) - orders migrates schema \
         (0042_add_delivery_window) in branch/feature-a (branches/feature-a.yaml:6)"
    );
    assert_eq!(
        line(&p, "order-events"),
        "order-events: isolate (per-branch topic) - orders changes its contract to v2 in \
         branch/feature-a (branches/feature-a.yaml:8)"
    );
    assert_eq!(
        line(&p, "inventory"),
        "inventory: fork - consumes order-events, isolated in branch/feature-a"
    );
    // web reaches orders through the proxy with the branch context: no fork needed
    assert_eq!(line(&p, "web"), "web: reuse - identical to baseline");
    assert_eq!(
        line(&p, "payments"),
        "payments: reuse - identical to baseline"
    );
    assert_eq!(
        line(&p, "payments-cache"),
        "payments-cache: reuse - identical to baseline"
    );
    let s = p.summary;
    assert_eq!((s.services, s.forked, s.local, s.reused), (4, 2, 0, 2));
    assert_eq!((s.stores_isolated, s.topics_isolated), (1, 1));
    assert_eq!(s.cost, Resources::new(400, 768));
    assert_eq!(s.clone_cost, Resources::new(1400, 2560));
    assert_eq!(s.saved(), Resources::new(1000, 1792));
}

#[test]
fn feature_b_reuses_feature_a_and_forks_what_references_inventory() {
    let c = common::demo();
    let p = plan_branch(&c, "feature-b", None).unwrap();
    assert_eq!(
        p.lineage.iter().map(|l| &**l).collect::<Vec<_>>(),
        ["branch/feature-b", "branch/feature-a", "baseline"]
    );
    assert_eq!(
        line(&p, "orders"),
        "orders: fork - env.INVENTORY_URL references inventory, forked in branch/feature-b"
    );
    assert_eq!(
        line(&p, "orders-db"),
        "orders-db: reuse - identical to branch/feature-a"
    );
    assert_eq!(
        line(&p, "order-events"),
        "order-events: reuse - identical to branch/feature-a"
    );
    assert!(line(&p, "inventory")
        .contains("env.RESERVATION_MODE set in branch/feature-b (branches/feature-b.yaml:5)"));
}

#[test]
fn pay_fix_reuses_the_team_instance() {
    let c = common::demo();
    let p = plan_branch(&c, "pay-fix", None).unwrap();
    assert_eq!(
        line(&p, "payments"),
        "payments: reuse - identical to team/payments-team"
    );
    assert!(p.entries.iter().all(|e| !e.decision.is_moved()));
    assert_eq!(p.summary.cost, Resources::ZERO);
    let team = plan_branch(&c, "payments-team", None).unwrap();
    assert_eq!(
        team.entry("payments").map(|e| &e.decision),
        Some(&Decision::Fork)
    );
}

#[test]
fn renderings_carry_reasons_and_costs() {
    let c = common::demo();
    let p = plan_branch(&c, "feature-a", None).unwrap();
    let t = p.to_table();
    assert!(t.starts_with("plan for branch/feature-a (lineage: branch/feature-a -> baseline)\n"));
    assert!(t.contains("NAME            KIND      DECISION"), "{t}");
    assert!(t.contains("isolate (per-branch schema)"), "{t}");
    assert!(
        t.contains("forked 2 of 4 services (0 local, 2 reused)"),
        "{t}"
    );
    assert!(t.contains("saves 1000m/1792Mi"), "{t}");
    let j = p.to_json();
    let db = j["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "orders-db")
        .unwrap();
    assert_eq!(db["decision"], "isolate");
    assert_eq!(db["isolation"], "per-branch schema");
    assert_eq!(db["causes"][0]["origin"]["line"], 6);
    assert_eq!(db["instance"].as_str().map(str::len), Some(32));
    assert_eq!(j["summary"]["forked"], 2);
    assert_eq!(j["summary"]["saved"]["cpu_m"], 1000);
}

#[test]
fn explain_names_layers_lines_and_route() {
    let c = common::demo();
    let e = explain(&c, "feature-b", "orders").unwrap();
    let image = e.fields.iter().find(|f| f.name == "image").unwrap();
    assert_eq!(&*image.origin.layer, "branch/feature-a");
    assert_eq!(
        (&*image.origin.file, image.origin.line),
        ("branches/feature-a.yaml", 4)
    );
    let res = e.fields.iter().find(|f| f.name == "resources").unwrap();
    assert_eq!(&*res.origin.layer, "baseline");
    let route = e.route.as_ref().unwrap();
    // offline (no executor) the fork has no instance: the nearest declared one serves
    assert_eq!((&*route.layer, route.kind), ("baseline", "baseline"));
    assert_eq!(route.upstreams, ["127.0.0.1:9102"]);
    // the plan forks orders in feature-b but no layer declares endpoints for it
    assert!(e
        .note
        .as_deref()
        .unwrap_or("")
        .contains("no layer from branch/feature-b"));
    let text = e.to_text();
    assert!(
        text.contains("branch/feature-a (branches/feature-a.yaml:4)"),
        "{text}"
    );
    assert!(
        text.contains("route: baseline (baseline) -> 127.0.0.1:9102"),
        "{text}"
    );
    let j = e.to_json();
    assert_eq!(j["route"]["upstreams"][0], "127.0.0.1:9102");
    assert_eq!(j["decision"]["decision"], "fork");

    let e = explain(&c, "pay-fix", "payments").unwrap();
    let route = e.route.as_ref().unwrap();
    assert_eq!(
        (&*route.layer, route.upstreams.as_slice()),
        ("team/payments-team", &["127.0.0.1:9203".to_string()][..])
    );
    assert_eq!(e.note, None);
    let e = explain(&c, "baseline", "web").unwrap();
    assert_eq!(e.decision, None);
    assert_eq!(e.route.map(|r| r.kind), Some("baseline"));
}

#[test]
fn errors_are_typed() {
    let c = common::demo();
    assert!(matches!(
        plan_branch(&c, "nope", None),
        Err(PlanError::UnknownLayer(_))
    ));
    assert!(matches!(
        plan_branch(&c, "baseline", None),
        Err(PlanError::Baseline)
    ));
    assert!(matches!(
        explain(&c, "feature-a", "nope"),
        Err(PlanError::UnknownService(_))
    ));
    let other = common::demo();
    let planner = Planner::new(&c).unwrap();
    assert!(matches!(
        planner.plan(&other, "feature-a", None),
        Err(PlanError::StaleOrg)
    ));
    assert_eq!(
        PlanError::Baseline.to_string(),
        "`baseline` is the root: it has no parent to plan against"
    );
}

#[test]
fn a_planner_survives_branch_updates() {
    let c = common::demo();
    let planner = Planner::new(&c).unwrap();
    let doc = microstax_config::parse_text(
        "branches/feature-a.yaml",
        "parent: baseline\nservices:\n  payments:\n    image: registry.example.com/payments:9\n",
        Some(microstax_config::LayerKind::Branch),
        Some("feature-a"),
    )
    .unwrap()
    .remove(0);
    let (next, _) = c.upsert(doc).unwrap();
    let p = planner.plan(&next, "feature-a", None).unwrap();
    assert_eq!(
        p.entry("orders").map(|e| &e.decision),
        Some(&Decision::Reuse {
            from: "baseline".into()
        })
    );
    assert!(line(&p, "payments")
        .contains("image changed in branch/feature-a (branches/feature-a.yaml:4)"));
    assert_eq!(
        p.entry("orders-db").map(|e| e.decision.clone()),
        Some(Decision::Reuse {
            from: "baseline".into()
        })
    );
    let _ = Isolation::Schema;
}

#[test]
fn fleet_counts_instances() {
    let c = common::demo();
    let f = plan_all(&c).unwrap();
    assert_eq!(f.layers.len(), 4);
    // baseline 4 services + 3 stores + 1 topic; team 1; feature-a 2+1+1; feature-b 2
    assert_eq!(f.instances, 15);
    assert_eq!(f.instances_unshared, 15);
    assert_eq!(f.instances_if_cloned, 8 * 5);
    assert!(f.shared.is_empty());
    assert!(f
        .to_table()
        .contains("no instance is needed by more than one layer"));
}
