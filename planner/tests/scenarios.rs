//! Planner scenarios on small configs: derived decisions through the dependency graph, store
//! kinds, local endpoints, policy-only changes, source changes and sharing across branches.

#![allow(clippy::unwrap_used)]

mod common;

use common::config;
use microstax_planner::{
    plan_all, plan_branch, Cause, Decision, Isolation, Planner, Resources, SourceChanges,
};

const GRAPH: &str = r#"
kind: org
services:
  a:
    endpoints: ["127.0.0.1:9001"]
    image: img/a:1
    stores: [{name: db, kind: postgres}]
    topics: {produces: [t]}
  b:
    endpoints: ["127.0.0.1:9002"]
    stores: [{name: db, kind: postgres}]
  c:
    endpoints: ["127.0.0.1:9003"]
    topics: {consumes: [t]}
  d:
    endpoints: ["127.0.0.1:9004"]
    depends_on: [c]
    env: {C_URL: "http://c:8080/api"}
  e:
    endpoints: ["127.0.0.1:9005"]
    depends_on: [d]
    env: {D_HOST: d.svc.cluster.local}
  f:
    endpoints: ["127.0.0.1:9006"]
    depends_on: [e]
    env: {VIA: "http://proxy:8080"}
"#;

fn decision(p: &microstax_planner::Plan, name: &str) -> Decision {
    p.entry(name).map(|e| e.decision.clone()).unwrap()
}

fn reuse(from: &str) -> Decision {
    Decision::Reuse { from: from.into() }
}

#[test]
fn derived_isolation_follows_the_graph() {
    let c = config(&[
        ("org.yaml", GRAPH),
        (
            "branches/x.yaml",
            "services:\n  a:\n    migrations: [{store: db, name: m1}]\n    contracts: {t: v2}\n",
        ),
    ])
    .unwrap();
    let p = plan_branch(&c, "x", None).unwrap();
    assert_eq!(decision(&p, "a"), Decision::Fork);
    assert_eq!(decision(&p, "db"), Decision::Isolate(Isolation::Schema));
    assert_eq!(decision(&p, "t"), Decision::Isolate(Isolation::Topic));
    assert_eq!(
        p.entry("b").unwrap().to_string(),
        "b: fork - uses db, isolated in branch/x"
    );
    assert_eq!(
        p.entry("c").unwrap().to_string(),
        "c: fork - consumes t, isolated in branch/x"
    );
    assert_eq!(
        p.entry("d").unwrap().to_string(),
        "d: fork - env.C_URL references c, forked in branch/x"
    );
    assert_eq!(
        p.entry("e").unwrap().to_string(),
        "e: fork - env.D_HOST references d, forked in branch/x"
    );
    // f calls e through the proxy: the branch context routes it, no fork
    assert_eq!(decision(&p, "f"), reuse("baseline"));
    assert_eq!(p.summary.forked, 5);
}

#[test]
fn a_child_reuses_what_its_parent_isolated() {
    let c = config(&[
        ("org.yaml", GRAPH),
        (
            "branches/x.yaml",
            "services:\n  a:\n    migrations: [{store: db, name: m1}]\n",
        ),
        (
            "branches/y.yaml",
            "parent: x\nservices:\n  f:\n    image: img/f:2\n",
        ),
        (
            "branches/z.yaml",
            "parent: x\nservices:\n  a:\n    migrations: [{store: db, name: m1}]\n",
        ),
    ])
    .unwrap();
    let p = plan_branch(&c, "y", None).unwrap();
    assert_eq!(decision(&p, "db"), reuse("branch/x"));
    assert_eq!(decision(&p, "a"), reuse("branch/x"));
    assert_eq!(decision(&p, "b"), reuse("branch/x"));
    assert_eq!(decision(&p, "f"), Decision::Fork);
    // restating an applied migration changes nothing
    let p = plan_branch(&c, "z", None).unwrap();
    assert_eq!(decision(&p, "db"), reuse("branch/x"));
    assert_eq!(
        p.entry("a").unwrap().to_string(),
        "a: reuse - identical to branch/x; branch/z restates its parent's values"
    );
}

#[test]
fn store_kinds_decide_isolation_and_price() {
    let org = r#"
kind: org
services:
  a:
    endpoints: ["127.0.0.1:9001"]
    stores: [{name: pg, kind: postgres}, {name: my, kind: mysql}, {name: cache, kind: redis}, {name: blobs, kind: s3}]
"#;
    let branch = "services:\n  a:\n    migrations:\n      - {store: pg, name: m}\n      - {store: my, name: m}\n      - {store: cache, name: m}\n      - {store: blobs, name: m}\n";
    let c = config(&[("org.yaml", org), ("branches/x.yaml", branch)]).unwrap();
    let p = plan_branch(&c, "x", None).unwrap();
    assert_eq!(decision(&p, "pg"), Decision::Isolate(Isolation::Schema));
    assert_eq!(decision(&p, "my"), Decision::Isolate(Isolation::Database));
    assert_eq!(
        decision(&p, "cache"),
        Decision::Isolate(Isolation::Instance)
    );
    assert_eq!(
        decision(&p, "blobs"),
        Decision::Isolate(Isolation::Instance)
    );
    assert_eq!(p.entry("pg").unwrap().cost, Resources::ZERO);
    assert_eq!(p.entry("cache").unwrap().cost, Resources::new(100, 256));
    assert_eq!(p.entry("blobs").unwrap().cost, Resources::new(250, 512));
    // a (no resources: the default 100m/128Mi) + the two forked stores
    assert_eq!(p.summary.cost, Resources::new(450, 896));
    assert_eq!(
        p.summary.clone_cost,
        Resources::new(100 + 250 + 250 + 100 + 250, 128 + 512 + 512 + 256 + 512)
    );
}

#[test]
fn local_endpoints_cost_nothing_and_move_their_dependents() {
    let c = config(&[
        ("org.yaml", GRAPH),
        (
            "branches/x.yaml",
            "services:\n  c:\n    local: 10.1.2.3:7000\n",
        ),
    ])
    .unwrap();
    let p = plan_branch(&c, "x", None).unwrap();
    let e = p.entry("c").unwrap();
    assert_eq!(e.decision, Decision::Local);
    assert_eq!(e.cost, Resources::ZERO);
    assert_eq!(
        e.to_string(),
        "c: local - developer endpoint 10.1.2.3:7000 set in branch/x (branches/x.yaml:3)"
    );
    assert_eq!(
        p.entry("d").unwrap().to_string(),
        "d: fork - env.C_URL references c, local in branch/x"
    );
    assert_eq!(p.summary.local, 1);
}

#[test]
fn policy_only_changes_reuse_the_instance() {
    let c = config(&[
        ("org.yaml", GRAPH),
        (
            "branches/x.yaml",
            "services:\n  a:\n    policy: {request_timeout_ms: 500}\n",
        ),
    ])
    .unwrap();
    let p = plan_branch(&c, "x", None).unwrap();
    assert_eq!(decision(&p, "a"), reuse("baseline"));
    assert_eq!(
        p.entry("a").unwrap().to_string(),
        "a: reuse - identical to baseline; route policy only: policy.request_timeout_ms changed in branch/x (branches/x.yaml:3)"
    );
    assert_eq!(p.summary.forked, 0);
}

#[test]
fn env_reference_cycles_terminate() {
    let org = r#"
kind: org
services:
  p:
    endpoints: ["127.0.0.1:9001"]
    depends_on: [q]
    env: {Q: "http://q:1"}
  q:
    endpoints: ["127.0.0.1:9002"]
    depends_on: [p]
    env: {P: "http://p:1"}
  r:
    endpoints: ["127.0.0.1:9003"]
"#;
    let c = config(&[
        ("org.yaml", org),
        ("branches/x.yaml", "services:\n  p:\n    image: p:2\n"),
        ("branches/y.yaml", "services:\n  p:\n    image: p:2\n"),
        ("branches/z.yaml", "services:\n  p:\n    image: p:3\n"),
    ])
    .unwrap();
    let p = plan_branch(&c, "x", None).unwrap();
    assert_eq!(decision(&p, "p"), Decision::Fork);
    assert_eq!(
        p.entry("q").unwrap().to_string(),
        "q: fork - env.P references p, forked in branch/x"
    );
    assert_eq!(decision(&p, "r"), reuse("baseline"));
    let f = plan_all(&c).unwrap();
    let shared: Vec<(String, Vec<String>)> = f
        .shared
        .iter()
        .map(|s| {
            (
                s.name.to_string(),
                s.layers.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    assert_eq!(
        shared,
        [
            (
                "p".to_string(),
                vec!["branch/x".to_string(), "branch/y".to_string()]
            ),
            (
                "q".to_string(),
                vec!["branch/x".to_string(), "branch/y".to_string()]
            ),
        ]
    );
}

#[test]
fn identical_specs_share_one_instance() {
    let c = config(&[
        ("org.yaml", GRAPH),
        ("branches/x.yaml", "services:\n  c:\n    image: img/c:2\n"),
        (
            "branches/y.yaml",
            "services:\n  c:\n    image: img/c:2\n    policy: {connect_timeout_ms: 50}\n",
        ),
        ("branches/z.yaml", "services:\n  c:\n    image: img/c:3\n"),
    ])
    .unwrap();
    let planner = Planner::new(&c).unwrap();
    let fleet = planner.plan_all(&c).unwrap();
    let mut x = planner.plan(&c, "x", None).unwrap();
    let y = planner.plan(&c, "y", None).unwrap();
    let z = planner.plan(&c, "z", None).unwrap();
    // route policy is not part of the spec; d and e are forked through env references
    for s in ["c", "d", "e"] {
        assert_eq!(
            x.entry(s).unwrap().instance,
            y.entry(s).unwrap().instance,
            "{s}"
        );
        assert_ne!(
            x.entry(s).unwrap().instance,
            z.entry(s).unwrap().instance,
            "{s}"
        );
    }
    assert_eq!(fleet.shared.len(), 3);
    assert_eq!(fleet.instances_unshared - fleet.instances, 3);
    x.annotate_sharing(&fleet);
    let c_entry = x.entry("c").unwrap();
    assert_eq!(c_entry.shared_with, vec![std::sync::Arc::from("branch/y")]);
    assert!(
        c_entry.to_string().ends_with("; same instance as branch/y"),
        "{c_entry}"
    );
    assert!(fleet.to_table().contains("branch/x, branch/y"));
    assert_eq!(fleet.to_json()["shared"].as_array().map(Vec::len), Some(3));
}

#[test]
fn source_changes_fork_owners_including_shared_libraries() {
    let org = r#"
kind: org
services:
  a:
    endpoints: ["127.0.0.1:9001"]
    paths: ["svc/a/**", "lib/common/**"]
  b:
    endpoints: ["127.0.0.1:9002"]
    paths: ["svc/b/**", "lib/common/**"]
  c:
    endpoints: ["127.0.0.1:9003"]
    paths: ["svc/c/*.rs"]
"#;
    let c = config(&[
        ("org.yaml", org),
        (
            "branches/x.yaml",
            "services:\n  b:\n    local: 10.0.0.9:7000\n",
        ),
    ])
    .unwrap();
    let changes = SourceChanges::from_paths(
        "main",
        "x",
        [
            "lib/common/money.rs",
            "svc/a/1.rs",
            "svc/a/2.rs",
            "svc/a/3.rs",
            "svc/c/deep/x.rs",
            "README.md",
        ],
    );
    let p = plan_branch(&c, "x", Some(&changes)).unwrap();
    assert_eq!(
        p.entry("a").unwrap().to_string(),
        "a: fork - source changed in main...x: lib/common/money.rs, svc/a/1.rs, svc/a/2.rs (+1 more)"
    );
    // a developer endpoint wins over a source change
    assert_eq!(decision(&p, "b"), Decision::Local);
    // `*` does not cross directories
    assert_eq!(decision(&p, "c"), reuse("baseline"));
    assert_eq!(
        p.source.as_ref().map(|(r, n)| (r.to_string(), *n)),
        Some(("main...x".to_string(), 6))
    );
    assert!(p.to_table().contains("source: main...x, 6 changed paths"));
}

#[test]
fn catalog_errors_are_rejected_by_validation() {
    // the planner's own checks stay, but a config carrying these never reaches it: validation
    // refuses them with file:line, so planned routing is never silently turned off
    let org =
        "kind: org\nservices:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\n    paths: [\"svc/[a\"]\n";
    let e = config(&[("org.yaml", org), ("branches/x.yaml", "services: {}\n")]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("org.yaml:5: services.a.paths.0: `svc/[a` is not a valid glob"),
        "{e}"
    );
    let org = "kind: org\nservices:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\n    stores: [{name: s, kind: redis}]\n  b:\n    endpoints: [\"127.0.0.1:2\"]\n    stores: [{name: s, kind: postgres}]\n";
    let e = config(&[("org.yaml", org), ("branches/x.yaml", "services: {}\n")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "org.yaml:8: services.b.stores.0.kind: store `s` is `postgres` here but `redis` in service `a` (org.yaml:5)"
    );
}

#[test]
fn structured_causes_keep_origins() {
    let c = config(&[
        ("org.yaml", GRAPH),
        ("branches/x.yaml", "services:\n  a:\n    image: img/a:2\n"),
    ])
    .unwrap();
    let p = plan_branch(&c, "x", None).unwrap();
    match p.entry("a").unwrap().causes.first() {
        Some(Cause::Field(ch)) => {
            assert_eq!(ch.field, "image");
            let o = ch.origin().unwrap();
            assert_eq!(
                (&*o.layer, &*o.file, o.line),
                ("branch/x", "branches/x.yaml", 3)
            );
            assert_eq!(
                ch.before.as_ref().map(|f| f.value.as_str()),
                Some("img/a:1")
            );
        }
        other => panic!("unexpected cause {other:?}"),
    }
}
