//! Table lookup laws on generated configs: the compiled, sparse table routes every
//! (branch, service) exactly where the layer merge says, and an incremental update equals a
//! full recompile.

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
        // layers outside the changed subtree are shared, not rebuilt
        let subtree = next.subtree(changed);
        for (id, layer) in inc.layers.iter().enumerate() {
            let (Some(now), Some(before)) = (layer, &prev.layers[id]) else { continue };
            prop_assert_eq!(std::sync::Arc::ptr_eq(now, before), !subtree.contains(&id), "layer {}", id);
        }
    }
}

#[test]
fn removing_a_leaf_branch_drops_it_from_the_table() {
    let cfg = config(&[None, Some(0)], &[vec![1], vec![2]]);
    let mut c = Compiler::new(&cfg, 1);
    let (next, changed) = cfg.remove("b1").expect("remove");
    let t = c.update(&next, changed, 2);
    assert!(t.branch("b1").is_none());
    assert!(t.branch("b0").is_some());
    assert_eq!(t.check_invariants(), Ok(()));
}
