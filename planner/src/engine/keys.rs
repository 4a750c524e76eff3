//! Content addresses of instances: a store by its migrations, a topic by its producers'
//! contracts, a service by its own fields and bindings, and services referencing each other
//! hashed together as one strongly connected component.

use crate::diff::FieldClass;
use crate::graph::{sccs, Catalog};
use crate::instance::{InstanceKey, KeyHasher};
use microstax_config::Effective;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

/// A store's address: its name and kind, and every migration its users apply to it.
pub(crate) fn store_key<'e>(
    cat: &Catalog,
    x: u32,
    eff: impl Fn(u32) -> Option<&'e Effective>,
) -> InstanceKey {
    let st = &cat.stores[x as usize];
    let mut applied: Vec<(&str, &str)> = Vec::new();
    for &u in &st.users {
        if let Some(e) = eff(u) {
            for m in e.migrations.iter().filter(|m| *m.value.store == *st.name) {
                applied.push((&cat.names[u as usize], &m.value.name));
            }
        }
    }
    applied.sort_unstable();
    applied.dedup();
    let mut h = KeyHasher::new("store");
    h.str(&st.name).str(&st.kind);
    for (s, m) in applied {
        h.str(s).str(m);
    }
    h.finish()
}

/// A topic's address: its name and the contract each producer writes to it.
pub(crate) fn topic_key<'e>(
    cat: &Catalog,
    t: u32,
    eff: impl Fn(u32) -> Option<&'e Effective>,
) -> InstanceKey {
    let tp = &cat.topics[t as usize];
    let mut contracts: Vec<(&str, &str)> = Vec::new();
    for &p in &tp.producers {
        if let Some(v) = eff(p).and_then(|e| e.contracts.get(&*tp.name)) {
            contracts.push((&cat.names[p as usize], &v.value));
        }
    }
    contracts.sort_unstable();
    let mut h = KeyHasher::new("topic");
    h.str(&tp.name);
    for (p, v) in contracts {
        h.str(p).str(v);
    }
    h.finish()
}

/// A service's own address, before service bindings: its non-policy fields, its changed
/// source, and the stores and topics it is bound to.
pub(crate) fn own_key(
    cat: &Catalog,
    s: u32,
    e: &Effective,
    source: Option<InstanceKey>,
    store: impl Fn(u32) -> InstanceKey,
    topic: impl Fn(u32) -> InstanceKey,
) -> InstanceKey {
    let fields: BTreeMap<String, String> = e
        .fields()
        .into_iter()
        .filter(|f| crate::diff::class(&f.name) != FieldClass::Policy)
        .map(|f| (f.name, f.value))
        .collect();
    let mut h = KeyHasher::new("service");
    h.str(&cat.names[s as usize]).u64(fields.len() as u64);
    for (k, v) in &fields {
        h.str(k).str(v);
    }
    if let Some(src) = source {
        h.str("source").key(src);
    }
    for &x in &cat.uses[s as usize] {
        h.str("store")
            .str(&cat.stores[x as usize].name)
            .key(store(x));
    }
    for &t in &cat.consumes[s as usize] {
        h.str("topic")
            .str(&cat.topics[t as usize].name)
            .key(topic(t));
    }
    h.finish()
}

/// Final addresses of `nodes` (sorted ids): own key plus the keys of the services their env
/// references. Services referencing each other (a strongly connected component) are hashed
/// together; references leaving `nodes` use `external`.
pub(crate) fn service_keys<'e>(
    cat: &Catalog,
    nodes: &[u32],
    own: impl Fn(u32) -> InstanceKey,
    edges: impl Fn(u32) -> &'e [(u32, String)],
    external: impl Fn(u32) -> InstanceKey,
) -> Vec<InstanceKey> {
    let pos: FxHashMap<u32, usize> = nodes.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    let adj: Vec<Vec<usize>> = nodes
        .iter()
        .map(|&s| {
            edges(s)
                .iter()
                .filter_map(|(d, _)| pos.get(d).copied())
                .collect()
        })
        .collect();
    let mut keys: Vec<Option<InstanceKey>> = vec![None; nodes.len()];
    for comp in sccs(&adj) {
        let mut h = KeyHasher::new("component");
        for &p in &comp {
            let s = nodes[p];
            h.str(&cat.names[s as usize]).key(own(s));
            for (d, _) in edges(s) {
                let name = &cat.names[*d as usize];
                match pos.get(d) {
                    Some(q) if comp.binary_search(q).is_ok() => h.str("in").str(name),
                    Some(&q) => h.str("out").str(name).key(keys[q].unwrap_or_default()),
                    None => h.str("out").str(name).key(external(*d)),
                };
            }
        }
        let joint = h.finish();
        for &p in &comp {
            keys[p] = Some(
                KeyHasher::new("member")
                    .key(joint)
                    .str(&cat.names[nodes[p] as usize])
                    .finish(),
            );
        }
    }
    keys.into_iter().map(Option::unwrap_or_default).collect()
}
