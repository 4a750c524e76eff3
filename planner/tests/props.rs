//! Property tests of the planner's laws on random catalogs and lineages: a layer without
//! changes reuses everything; provenance names the nearest layer that set a value, and a fork
//! names it too; a lineage cycle is rejected; derived forks are closed over env references;
//! the sparse plans address instances exactly as a from-scratch computation does, and identical
//! specs share one instance.

#![allow(clippy::unwrap_used)]

mod common;

use common::config;
use microstax_config::{Config, LayerKind};
use microstax_planner::{plan_all, Decision, Planner, Subject};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One service of a random catalog.
#[derive(Debug, Clone)]
struct Svc {
    /// Dependencies (indices of other services) and whether env names each.
    deps: Vec<(usize, bool)>,
    store: Option<usize>,
    produces: Option<usize>,
    consumes: Option<usize>,
}

/// One random override of a service in a layer.
#[derive(Debug, Clone)]
struct Over {
    svc: usize,
    image: Option<u8>,
    /// Some(v): env MODE set to `m{v}`, or for odd v to a URL naming a dependency.
    env: Option<u8>,
    migration: Option<u8>,
    contract: Option<u8>,
    timeout: Option<u8>,
    local: bool,
    endpoints: Option<u8>,
}

const STORES: [(&str, &str); 2] = [("db0", "postgres"), ("db1", "redis")];

fn svc_strategy(n: usize) -> impl Strategy<Value = Svc> {
    (
        proptest::collection::vec((0..n, any::<bool>()), 0..3),
        proptest::option::of(0..2usize),
        proptest::option::of(0..2usize),
        proptest::option::of(0..2usize),
    )
        .prop_map(|(deps, store, produces, consumes)| Svc {
            deps,
            store,
            produces,
            consumes,
        })
}

fn over_strategy(n: usize) -> impl Strategy<Value = Over> {
    (
        0..n,
        proptest::option::of(0..3u8),
        proptest::option::of(0..4u8),
        proptest::option::of(0..2u8),
        proptest::option::of(0..2u8),
        proptest::option::of(0..2u8),
        proptest::bool::weighted(0.1),
        proptest::option::of(0..2u8),
    )
        .prop_map(
            |(svc, image, env, migration, contract, timeout, local, endpoints)| Over {
                svc,
                image,
                env,
                migration,
                contract,
                timeout,
                local,
                endpoints,
            },
        )
}

/// A catalog of 1..7 services and 1..6 branch layers, each with a parent earlier in the list
/// (or the baseline) and up to 3 overrides.
fn world() -> impl Strategy<Value = (Vec<Svc>, Vec<(usize, Vec<Over>)>)> {
    (1..7usize).prop_flat_map(|n| {
        (
            proptest::collection::vec(svc_strategy(n), n),
            proptest::collection::vec(
                (0..6usize, proptest::collection::vec(over_strategy(n), 0..4)),
                1..6,
            ),
        )
    })
}

fn org_yaml(svcs: &[Svc]) -> String {
    let mut y = String::from("kind: org\nservices:\n");
    for (i, s) in svcs.iter().enumerate() {
        let _ = writeln!(
            y,
            "  s{i}:\n    endpoints: [\"127.0.0.1:{}\"]\n    image: img/s{i}:1",
            9000 + i
        );
        let deps: Vec<usize> = s.deps.iter().map(|d| d.0).filter(|&d| d != i).collect();
        if !deps.is_empty() {
            let names: Vec<String> = deps.iter().map(|d| format!("s{d}")).collect();
            let _ = writeln!(y, "    depends_on: [{}]", names.join(", "));
        }
        let refs: Vec<usize> = s
            .deps
            .iter()
            .filter(|d| d.1 && d.0 != i)
            .map(|d| d.0)
            .collect();
        if !refs.is_empty() {
            let _ = writeln!(y, "    env:");
            for d in refs {
                let _ = writeln!(y, "      DEP_{d}: \"http://s{d}:80\"");
            }
        }
        if let Some(k) = s.store {
            let _ = writeln!(
                y,
                "    stores: [{{name: {}, kind: {}}}]",
                STORES[k].0, STORES[k].1
            );
        }
        if s.produces.is_some() || s.consumes.is_some() {
            let p: Vec<String> = s.produces.iter().map(|t| format!("t{t}")).collect();
            let c: Vec<String> = s.consumes.iter().map(|t| format!("t{t}")).collect();
            let _ = writeln!(
                y,
                "    topics: {{produces: [{}], consumes: [{}]}}",
                p.join(", "),
                c.join(", ")
            );
        }
    }
    y
}

fn layer_yaml(svcs: &[Svc], parent: &str, overs: &[Over]) -> String {
    let mut y = format!("parent: {parent}\nservices:\n");
    let mut by_svc: BTreeMap<usize, &Over> = BTreeMap::new();
    for o in overs {
        by_svc.insert(o.svc, o);
    }
    if by_svc.is_empty() {
        return format!("parent: {parent}\nservices: {{}}\n");
    }
    for (&i, o) in &by_svc {
        let s = &svcs[i];
        let _ = writeln!(y, "  s{i}:");
        if let Some(v) = o.image {
            let _ = writeln!(y, "    image: img/s{i}:{}", v + 1);
        }
        if let Some(v) = o.env {
            let deps: Vec<usize> = s.deps.iter().map(|d| d.0).filter(|&d| d != i).collect();
            let value = match deps.first() {
                Some(d) if v % 2 == 1 => format!("http://s{d}:81"),
                _ => format!("m{v}"),
            };
            let _ = writeln!(y, "    env: {{MODE: \"{value}\"}}");
        }
        if let (Some(v), Some(k)) = (o.migration, s.store) {
            let _ = writeln!(
                y,
                "    migrations: [{{store: {}, name: m{v}}}]",
                STORES[k].0
            );
        }
        if let (Some(v), Some(t)) = (o.contract, s.produces) {
            let _ = writeln!(y, "    contracts: {{t{t}: c{v}}}");
        }
        if let Some(v) = o.timeout {
            let _ = writeln!(
                y,
                "    policy: {{request_timeout_ms: {}}}",
                1000 + u32::from(v)
            );
        }
        if o.local {
            let _ = writeln!(y, "    local: 10.0.0.1:{}", 7000 + i);
        }
        if let Some(v) = o.endpoints {
            let _ = writeln!(y, "    endpoints: [\"127.0.0.1:{}\"]", 8000 + u32::from(v));
        }
    }
    y
}

/// Build the config of a random world: layer `i` is branch `l{i}` with parent `l{p}` for
/// p < i, else the baseline.
fn build(svcs: &[Svc], layers: &[(usize, Vec<Over>)], empty: bool) -> Config {
    let mut files = vec![("org.yaml".to_string(), org_yaml(svcs))];
    for (i, (p, overs)) in layers.iter().enumerate() {
        let parent = if *p < i {
            format!("l{p}")
        } else {
            "baseline".into()
        };
        let overs: &[Over] = if empty { &[] } else { overs };
        files.push((
            format!("branches/l{i}.yaml"),
            layer_yaml(svcs, &parent, overs),
        ));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    match config(&refs) {
        Ok(c) => c,
        Err(e) => panic!("generated config is invalid: {e}\n{files:#?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// A layer without changes reuses everything from the baseline and costs nothing.
    #[test]
    fn no_changes_reuse_everything((svcs, layers) in world()) {
        let c = build(&svcs, &layers, true);
        let planner = Planner::new(&c).unwrap();
        for i in 0..layers.len() {
            let p = planner.plan(&c, &format!("l{i}"), None).unwrap();
            for e in &p.entries {
                prop_assert_eq!(&e.decision, &Decision::Reuse { from: "baseline".into() }, "{}", e);
            }
            prop_assert_eq!(p.summary.forked + p.summary.local, 0);
            prop_assert!(p.summary.cost.is_zero());
        }
    }

    /// The sparse plans give every instance the address a from-scratch computation gives, so
    /// reuse is only ever of an identical instance and equal keys mean equal specs.
    #[test]
    fn plan_addresses_match_from_scratch((svcs, layers) in world()) {
        let c = build(&svcs, &layers, false);
        let planner = Planner::new(&c).unwrap();
        for i in 0..layers.len() {
            let name = format!("l{i}");
            let p = planner.plan(&c, &name, None).unwrap();
            let scratch: BTreeMap<(Subject, String), _> = planner
                .addresses(&c, &name)
                .unwrap()
                .into_iter()
                .map(|(s, n, k)| ((s, n.to_string()), k))
                .collect();
            for e in &p.entries {
                prop_assert_eq!(Some(&e.instance), scratch.get(&(e.subject, e.name.to_string())), "{} in {}", e, name);
            }
        }
    }

    /// Derived forks are closed: in every plan, a service whose env names a dependency that
    /// the layer itself forks or runs locally is moved as well.
    #[test]
    fn derived_forks_are_closed((svcs, layers) in world()) {
        let c = build(&svcs, &layers, false);
        for i in 0..layers.len() {
            let name = format!("l{i}");
            let p = microstax_planner::plan_branch(&c, &name, None).unwrap();
            let idx = c.layer_id(&name).unwrap();
            for svc in c.services() {
                let eff = c.effective(idx, &svc.name).unwrap();
                for d in &svc.depends_on {
                    let dep_moved = p.entry(d).unwrap().decision.is_moved();
                    let named = eff.env.values().any(|v| v.value.split(|ch: char| !ch.is_ascii_alphanumeric() && ch != '-' && ch != '_').any(|w| w == d));
                    if dep_moved && named {
                        prop_assert!(p.entry(&svc.name).unwrap().decision.is_moved(), "{} names moved {} in {}", svc.name, d, name);
                    }
                }
            }
        }
    }

    /// Two sibling branches with the same overrides need the same instances: every instance
    /// one moves, the other moves too with the same key, and the fleet reports it shared.
    #[test]
    fn identical_siblings_share((svcs, layers) in world()) {
        let overs = layers[0].1.clone();
        let mut files = vec![("org.yaml".to_string(), org_yaml(&svcs))];
        files.push(("branches/x.yaml".into(), layer_yaml(&svcs, "baseline", &overs)));
        files.push(("branches/y.yaml".into(), layer_yaml(&svcs, "baseline", &overs)));
        let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let c = config(&refs).unwrap();
        let planner = Planner::new(&c).unwrap();
        let x = planner.plan(&c, "x", None).unwrap();
        let y = planner.plan(&c, "y", None).unwrap();
        let fleet = planner.plan_all(&c).unwrap();
        for (a, b) in x.entries.iter().zip(&y.entries) {
            prop_assert_eq!(a.instance, b.instance);
            prop_assert_eq!(a.decision.is_moved(), b.decision.is_moved());
            if a.decision.is_moved() {
                let shared = fleet.sharing(a.instance).map(|s| s.layers.len()).unwrap_or(0);
                prop_assert!(shared >= 2, "{} not shared", a);
            }
        }
        let moved = x.entries.iter().filter(|e| e.decision.is_moved()).count();
        prop_assert_eq!(fleet.instances_unshared - fleet.instances, moved);
    }

    /// The effective value's origin is the nearest layer that set it, and a fork names the
    /// planned layer; a reuse names the nearest layer whose own plan forked the service.
    #[test]
    fn provenance_names_the_nearest_layer(teams in 0..3usize, sets in proptest::collection::vec(proptest::option::of(0..3u8), 1..6)) {
        let org = "kind: org\nservices:\n  a:\n    endpoints: [\"127.0.0.1:9000\"]\n    image: img:0\n";
        let mut files = vec![("org.yaml".to_string(), org.to_string())];
        let mut labels = vec!["baseline".to_string()];
        for (i, set) in sets.iter().enumerate() {
            let (dir, kind) = if i < teams { ("teams", "team") } else { ("branches", "branch") };
            let parent = if i == 0 { "baseline".to_string() } else { format!("l{}", i - 1) };
            let body = match set {
                Some(v) => format!("parent: {parent}\nservices:\n  a:\n    image: img:{v}\n"),
                None => format!("parent: {parent}\nservices: {{}}\n"),
            };
            files.push((format!("{dir}/l{i}.yaml"), body));
            labels.push(format!("{kind}/l{i}"));
        }
        let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let c = config(&refs).unwrap();
        // values along the chain: index 0 is the baseline
        let mut value = vec![Some(0u8)];
        value.extend(sets.iter().copied());
        let last = sets.len();
        let nearest_set = (0..=last).rev().find(|&j| value[j].is_some()).unwrap_or(0);
        let eff = c.effective(c.layer_id(&format!("l{}", last - 1)).unwrap(), "a").unwrap();
        let image = eff.image.unwrap();
        prop_assert_eq!(&*image.origin.layer, labels[nearest_set].as_str());
        prop_assert_eq!(image.value, format!("img:{}", value[nearest_set].unwrap_or(0)));
        // effective image at each chain position
        let mut at = vec![0u8; last + 1];
        for j in 1..=last {
            at[j] = value[j].unwrap_or(at[j - 1]);
        }
        let forks = |j: usize| j >= 1 && value[j].is_some() && at[j] != at[j - 1];
        let p = microstax_planner::plan_branch(&c, &format!("l{}", last - 1), None).unwrap();
        let e = p.entry("a").unwrap();
        if forks(last) {
            prop_assert_eq!(&e.decision, &Decision::Fork);
            let named = e.to_string().contains(&format!("image changed in {} ", labels[last]));
            prop_assert!(named, "{}", e);
        } else {
            let owner = (1..last).rev().find(|&j| forks(j)).map_or("baseline", |j| labels[j].as_str());
            prop_assert_eq!(&e.decision, &Decision::Reuse { from: owner.into() });
        }
    }

    /// A lineage cycle is rejected by validation, naming the cycle; without one every layer
    /// plans and its lineage ends at the baseline.
    #[test]
    fn lineage_cycles_are_rejected(parents in proptest::collection::vec(0..6usize, 1..6)) {
        let k = parents.len();
        let org = "kind: org\nservices:\n  a:\n    endpoints: [\"127.0.0.1:9000\"]\n";
        let mut files = vec![("org.yaml".to_string(), org.to_string())];
        // parent index >= k means the baseline
        let parent_of = |i: usize| (parents[i] < k).then_some(parents[i]);
        for i in 0..k {
            let parent = parent_of(i).map_or("baseline".to_string(), |p| format!("l{p}"));
            files.push((format!("branches/l{i}.yaml"), format!("parent: {parent}\nservices: {{}}\n")));
        }
        let has_cycle = (0..k).any(|start| {
            let mut cur = start;
            for _ in 0..=k {
                match parent_of(cur) {
                    Some(p) if p == start => return true,
                    Some(p) => cur = p,
                    None => return false,
                }
            }
            false
        });
        let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        match config(&refs) {
            Err(e) => {
                prop_assert!(has_cycle, "rejected without a cycle: {}", e);
                prop_assert!(e.to_string().contains("lineage cycle"), "{}", e);
            }
            Ok(c) => {
                prop_assert!(!has_cycle);
                let planner = Planner::new(&c).unwrap();
                for i in 0..k {
                    let p = planner.plan(&c, &format!("l{i}"), None).unwrap();
                    prop_assert_eq!(p.lineage.last().map(|l| &**l), Some("baseline"));
                }
                prop_assert_eq!(plan_all(&c).unwrap().layers.len(), k);
            }
        }
    }
}

#[test]
fn generated_worlds_are_valid_configs() {
    // the generator itself must produce what it claims: overrides, lineage and kinds
    let svcs = vec![
        Svc {
            deps: vec![(1, true)],
            store: Some(0),
            produces: Some(0),
            consumes: None,
        },
        Svc {
            deps: vec![],
            store: Some(0),
            produces: None,
            consumes: Some(0),
        },
    ];
    let over = Over {
        svc: 0,
        image: Some(1),
        env: None,
        migration: Some(0),
        contract: Some(1),
        timeout: None,
        local: false,
        endpoints: None,
    };
    let c = build(&svcs, &[(9, vec![over.clone()]), (0, vec![])], false);
    let l1 = c.layer(c.layer_id("l1").unwrap()).unwrap();
    assert_eq!(l1.kind, LayerKind::Branch);
    assert_eq!(c.lineage(c.layer_id("l1").unwrap()).len(), 3);
    let p = microstax_planner::plan_branch(&c, "l0", None).unwrap();
    assert_eq!(p.entry("db0").unwrap().decision.as_str(), "isolate");
    assert_eq!(p.entry("s1").unwrap().decision, Decision::Fork);
}
