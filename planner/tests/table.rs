//! Table lookup laws on generated configs: the compiled, sparse table routes every
//! (branch, service) exactly where the layer merge says, and an incremental update equals a
//! full recompile.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

use microstax_config::{parse_text, Config, LayerKind};
use microstax_planner::Compiler;
use proptest::prelude::*;

const SERVICES: usize = 6;

/// `parents[i]` is the parent of branch i (an index < i, or None for baseline);
/// `overrides[i]` the services branch i overrides.
fn config(parents: &[Option<usize>], overrides: &[Vec<usize>]) -> Config {
    let mut org = String::from("kind: org\nservices:\n");
    for s in 0..SERVICES {
        org.push_str(&format!(
            "  s{s}:\n    hosts: [s{s}]\n    endpoints: [\"10.0.0.1:{}\"]\n",
            1000 + s
        ));
    }
    let mut docs = parse_text("org.yaml", &org, Some(LayerKind::Org), None).expect("org");
    for (i, p) in parents.iter().enumerate() {
        let parent = p.map_or("baseline".to_string(), |p| format!("b{p}"));
        let mut text = format!("parent: {parent}\nservices:\n");
        for s in &overrides[i] {
            text.push_str(&format!("  s{s}: {{endpoints: [\"10.1.{i}.{s}:80\"]}}\n"));
        }
        if overrides[i].is_empty() {
            text.push_str("  {}\n");
            text = text.replace("services:\n  {}\n", "services: {}\n");
        }
        docs.extend(
            parse_text(
                &format!("branches/b{i}.yaml"),
                &text,
                Some(LayerKind::Branch),
                Some(&format!("b{i}")),
            )
            .expect("branch"),
        );
    }
    Config::build(docs).expect("valid")
}

fn expected_upstream(cfg: &Config, branch: &str, service: usize) -> String {
    let id = cfg.branch_id(branch).expect("branch");
    let eff = cfg.effective(id, &format!("s{service}")).expect("eff");
    eff.upstreams().0[0].0.to_string()
}

fn routed_upstream(t: &microstax_config::RoutingTable, branch: &str, service: usize) -> String {
    let layer = t.branch(branch).expect("branch in table");
    let r = t.route(layer, service as u32).expect("route");
    t.upstream(r.upstreams[0])
        .expect("upstream")
        .authority
        .to_string()
}

fn arb_forest() -> impl Strategy<Value = (Vec<Option<usize>>, Vec<Vec<usize>>)> {
    (1usize..10).prop_flat_map(|n| {
        let parents = (0..n)
            .map(|i| {
                if i == 0 {
                    Just(None).boxed()
                } else {
                    proptest::option::of(0..i).boxed()
                }
            })
            .collect::<Vec<_>>();
        let overrides =
            proptest::collection::vec(proptest::collection::btree_set(0..SERVICES, 0..3), n)
                .prop_map(|v| v.into_iter().map(|s| s.into_iter().collect()).collect());
        (parents, overrides)
    })
}

proptest! {
    #[test]
    fn table_routes_like_the_merge((parents, overrides) in arb_forest()) {
        let cfg = config(&parents, &overrides);
        let c = Compiler::new(&cfg, 1);
        let t = c.table();
        prop_assert_eq!(t.check_invariants(), Ok(()));
        let (_, routes) = t.counts();
        // sparse: baseline routes plus one per override, never branches x services
        prop_assert_eq!(routes, SERVICES + overrides.iter().map(Vec::len).sum::<usize>());
        for i in 0..parents.len() {
            for s in 0..SERVICES {
                let b = format!("b{i}");
                prop_assert_eq!(routed_upstream(t, &b, s), expected_upstream(&cfg, &b, s));
            }
        }
    }

    #[test]
    fn incremental_update_equals_full_compile((parents, overrides) in arb_forest(), pick in 0usize..10, svc in 0..SERVICES) {
        let cfg = config(&parents, &overrides);
        let mut c = Compiler::new(&cfg, 1);
        let i = pick % parents.len();
        let name = format!("b{i}");
        let parent = parents[i].map_or("baseline".to_string(), |p| format!("b{p}"));
        let text = format!("parent: {parent}\nservices:\n  s{svc}: {{endpoints: [\"10.9.9.9:{}\"]}}\n", 2000 + svc);
        let doc = parse_text("api", &text, Some(LayerKind::Branch), Some(&name)).expect("doc").remove(0);
        let (next, changed) = cfg.upsert(doc).expect("upsert");
        let prev = c.table().clone();
        let inc = c.update(&next, changed, 2);
        prop_assert_eq!(inc.check_invariants(), Ok(()));
        prop_assert_eq!(inc.generation, 2);
        let full = Compiler::new(&next, 2);
        for j in 0..parents.len() {
            for s in 0..SERVICES {
                let b = format!("b{j}");
                prop_assert_eq!(routed_upstream(&inc, &b, s), routed_upstream(full.table(), &b, s));
            }
        }
        // the table names exactly the upstreams a full compile names, each once
        prop_assert_eq!(upstream_set(&inc), upstream_set(full.table()));
        prop_assert_eq!(upstream_set(&inc).len(), inc.upstreams.len());
        // layers outside the changed subtree are shared, not rebuilt (unless an upstream they
        // name was renumbered into a freed id)
        let subtree = next.subtree(changed);
        let renumbered = inc.upstreams.len() < prev.upstreams.len();
        for (id, layer) in inc.layers.iter().enumerate() {
            let (Some(now), Some(before)) = (layer, &prev.layers[id]) else { continue };
            if !renumbered || subtree.contains(&id) {
                prop_assert_eq!(std::sync::Arc::ptr_eq(now, before), !subtree.contains(&id), "layer {}", id);
            }
        }
        // then removing every leaf one by one keeps agreeing with a full compile
        let mut cfg = next;
        let mut t = inc;
        for j in (0..parents.len()).rev() {
            let name = format!("b{j}");
            let Ok((after, gone)) = cfg.remove(&name) else { continue };
            t = c.update(&after, gone, t.generation + 1);
            prop_assert_eq!(t.check_invariants(), Ok(()));
            let full = Compiler::new(&after, t.generation);
            prop_assert_eq!(upstream_set(&t), upstream_set(full.table()));
            prop_assert_eq!(upstream_set(&t).len(), t.upstreams.len());
            for k in 0..j {
                let b = format!("b{k}");
                if after.branch_id(&b).is_none() { continue }
                for s in 0..SERVICES {
                    prop_assert_eq!(routed_upstream(&t, &b, s), routed_upstream(full.table(), &b, s));
                }
            }
            cfg = after;
        }
    }
}

/// The authorities a table names, and that its routes use.
fn upstream_set(t: &microstax_config::RoutingTable) -> std::collections::BTreeSet<String> {
    let listed: std::collections::BTreeSet<String> = t
        .upstreams
        .iter()
        .map(|u| u.authority.to_string())
        .collect();
    let used: std::collections::BTreeSet<String> = t
        .layers
        .iter()
        .flatten()
        .flat_map(|l| l.routes.iter())
        .flat_map(|r| r.upstreams.iter())
        .filter_map(|&u| t.upstream(u))
        .map(|u| u.authority.to_string())
        .collect();
    assert_eq!(listed, used, "the table lists upstreams no route names");
    listed
}

#[test]
fn removing_a_leaf_branch_drops_it_from_the_table() {
    let cfg = config(&[None, Some(0)], &[vec![1], vec![2]]);
    let mut c = Compiler::new(&cfg, 1);
    let (next, changed) = cfg.remove("b1").expect("remove");
    let t = c.update(&next, changed, 2);
    assert!(t.branch("b1").is_none());
    assert_eq!(
        upstream_set(&t).len(),
        SERVICES + 1,
        "b1's upstream is gone"
    );
    assert!(t.branch("b0").is_some());
    assert_eq!(t.check_invariants(), Ok(()));
}

/// With `routing.instance_address`, a service the plan forks without a declared endpoint routes
/// to its planned instance; identical specs share one address; reused services keep the parent's.
#[test]
fn planned_forks_route_to_their_instances() {
    let org = "kind: org
routing: {instance_address: \"{service}-{instance}.branches.svc:8080\"}
services:
  orders:
    hosts: [orders]
    endpoints: [\"10.0.0.1:80\"]
    image: orders:1
    env: {INVENTORY_URL: \"http://inventory:8080\"}
    depends_on: [inventory]
  inventory:
    hosts: [inventory]
    endpoints: [\"10.0.0.2:80\"]
    image: inventory:1
  web:
    hosts: [web]
    endpoints: [\"10.0.0.3:80\"]
";
    let mut docs = parse_text("org.yaml", org, Some(LayerKind::Org), None).expect("org");
    for (name, text) in [
        (
            "a",
            "parent: baseline\nservices:\n  inventory: {image: inventory:2}\n",
        ),
        (
            "b",
            "parent: baseline\nservices:\n  inventory: {image: inventory:2}\n",
        ),
        (
            "c",
            "parent: a\nservices:\n  web: {endpoints: [\"10.9.9.9:80\"]}\n",
        ),
    ] {
        docs.extend(
            parse_text(
                &format!("branches/{name}.yaml"),
                text,
                Some(LayerKind::Branch),
                Some(name),
            )
            .expect("branch"),
        );
    }
    let cfg = Config::build(docs).expect("valid");
    let c = Compiler::new(&cfg, 1);
    let t = c.table();
    assert_eq!(t.check_invariants(), Ok(()));
    let up = |branch: &str, svc: u32| {
        let r = t
            .route(t.branch(branch).expect("branch"), svc)
            .expect("route");
        t.upstream(r.upstreams[0])
            .expect("up")
            .authority
            .to_string()
    };
    // service ids follow the catalog's name order: inventory 0, orders 1, web 2
    let inv_a = up("a", 0);
    assert!(
        inv_a.starts_with("inventory-") && inv_a.ends_with(".branches.svc:8080"),
        "{inv_a}"
    );
    // orders forks through its env reference to the forked inventory
    assert!(up("a", 1).starts_with("orders-"), "{}", up("a", 1));
    // identical specs in sibling branches share one instance address
    assert_eq!(up("b", 0), inv_a);
    // web is reused in a and b, and c inherits a's planned instances and adds its own endpoint
    assert_eq!(up("a", 2), "10.0.0.3:80");
    assert_eq!(up("c", 0), inv_a);
    assert_eq!(up("c", 2), "10.9.9.9:80");
    // an incremental update keeps planning
    let doc = parse_text(
        "api",
        "parent: baseline\nservices:\n  web: {image: web:2}\n",
        Some(LayerKind::Branch),
        Some("b"),
    )
    .expect("doc")
    .remove(0);
    let (next, changed) = cfg.upsert(doc).expect("upsert");
    let mut c2 = c.clone();
    let t2 = c2.update(&next, changed, 2);
    let r = t2.route(t2.branch("b").expect("b"), 2).expect("route");
    assert!(t2
        .upstream(r.upstreams[0])
        .expect("up")
        .authority
        .starts_with("web-"));
    let r = t2.route(t2.branch("b").expect("b"), 0).expect("route");
    assert_eq!(
        &*t2.upstream(r.upstreams[0]).expect("up").authority,
        "10.0.0.2:80",
        "b no longer forks inventory"
    );
}
