//! The service graph of the org catalog, indexed once per org layer: services by id (the same
//! ids the routing table uses), who depends on whom, store users, topic producers and
//! consumers, and the source path globs. Also the two graph algorithms the planner needs: which
//! env values reference a dependency, and strongly connected components (for content
//! addressing services that reference each other).

use crate::decision::Isolation;
use crate::error::PlanError;
use crate::git::SourceChanges;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use microstax_config::{Config, Sourced};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A store, as declared by the services that use it.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub name: Arc<str>,
    pub kind: Arc<str>,
    pub isolation: Isolation,
    pub users: Vec<u32>,
}

/// A topic with its producers and consumers.
#[derive(Debug, Clone)]
pub(crate) struct Topic {
    pub name: Arc<str>,
    pub producers: Vec<u32>,
    pub consumers: Vec<u32>,
}

/// The indexed catalog.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    pub names: Vec<Arc<str>>,
    index: FxHashMap<Arc<str>, u32>,
    pub deps: Vec<Vec<u32>>,
    pub rdeps: Vec<Vec<u32>>,
    pub stores: Vec<Store>,
    store_index: FxHashMap<Arc<str>, u32>,
    /// Stores each service uses.
    pub uses: Vec<Vec<u32>>,
    pub topics: Vec<Topic>,
    topic_index: FxHashMap<Arc<str>, u32>,
    /// Topics each service consumes.
    pub consumes: Vec<Vec<u32>>,
    /// Store ids in name order, for plans.
    pub store_order: Vec<u32>,
    /// Topic ids in name order, for plans.
    pub topic_order: Vec<u32>,
    globs: GlobSet,
    glob_owner: Vec<u32>,
}

impl Catalog {
    pub(crate) fn new(config: &Config) -> Result<Catalog, PlanError> {
        let services = config.services();
        let names: Vec<Arc<str>> = services
            .iter()
            .map(|s| Arc::from(s.name.as_str()))
            .collect();
        let index: FxHashMap<Arc<str>, u32> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        let mut deps = vec![Vec::new(); names.len()];
        let mut rdeps = vec![Vec::new(); names.len()];
        let mut stores: Vec<Store> = Vec::new();
        let mut store_index: FxHashMap<Arc<str>, u32> = FxHashMap::default();
        let mut uses = vec![Vec::new(); names.len()];
        let mut topics: Vec<Topic> = Vec::new();
        let mut topic_index: FxHashMap<Arc<str>, u32> = FxHashMap::default();
        let mut consumes = vec![Vec::new(); names.len()];
        let mut globs = GlobSetBuilder::new();
        let mut glob_owner = Vec::new();
        for (i, s) in services.iter().enumerate() {
            let sid = i as u32;
            for d in &s.depends_on {
                if let Some(&d) = index.get(d.as_str()) {
                    if !deps[i].contains(&d) {
                        deps[i].push(d);
                        rdeps[d as usize].push(sid);
                    }
                }
            }
            for st in &s.stores {
                let x = match store_index.get(st.name.as_str()) {
                    Some(&x) => {
                        let known = &stores[x as usize];
                        if *known.kind != *st.kind {
                            return Err(PlanError::StoreKind {
                                store: st.name.clone(),
                                first: known.kind.to_string(),
                                first_service: names[known.users[0] as usize].to_string(),
                                second: st.kind.clone(),
                                second_service: s.name.clone(),
                            });
                        }
                        x
                    }
                    None => {
                        let x = stores.len() as u32;
                        let name: Arc<str> = Arc::from(st.name.as_str());
                        stores.push(Store {
                            name: name.clone(),
                            kind: Arc::from(st.kind.as_str()),
                            isolation: Isolation::for_store_kind(&st.kind),
                            users: Vec::new(),
                        });
                        store_index.insert(name, x);
                        x
                    }
                };
                if !uses[i].contains(&x) {
                    uses[i].push(x);
                    stores[x as usize].users.push(sid);
                }
            }
            let mut topic = |t: &str| -> u32 {
                if let Some(&x) = topic_index.get(t) {
                    return x;
                }
                let x = topics.len() as u32;
                let name: Arc<str> = Arc::from(t);
                topics.push(Topic {
                    name: name.clone(),
                    producers: Vec::new(),
                    consumers: Vec::new(),
                });
                topic_index.insert(name, x);
                x
            };
            let produced: Vec<u32> = s.topics.produces.iter().map(|t| topic(t)).collect();
            let consumed: Vec<u32> = s.topics.consumes.iter().map(|t| topic(t)).collect();
            for t in produced {
                let p = &mut topics[t as usize].producers;
                if !p.contains(&sid) {
                    p.push(sid);
                }
            }
            for t in consumed {
                let c = &mut topics[t as usize].consumers;
                if !c.contains(&sid) {
                    c.push(sid);
                    consumes[i].push(t);
                }
            }
            for g in &s.paths {
                // `*` stays within one directory, `**` crosses them, as in .gitignore
                let glob = GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|source| PlanError::Glob {
                        service: s.name.clone(),
                        glob: g.clone(),
                        source,
                    })?;
                globs.add(glob);
                glob_owner.push(sid);
            }
        }
        let globs = globs
            .build()
            .map_err(|source| PlanError::GlobSet { source })?;
        let mut store_order: Vec<u32> = (0..stores.len() as u32).collect();
        store_order.sort_by(|&a, &b| stores[a as usize].name.cmp(&stores[b as usize].name));
        let mut topic_order: Vec<u32> = (0..topics.len() as u32).collect();
        topic_order.sort_by(|&a, &b| topics[a as usize].name.cmp(&topics[b as usize].name));
        Ok(Catalog {
            names,
            index,
            deps,
            rdeps,
            stores,
            store_index,
            uses,
            topics,
            topic_index,
            consumes,
            store_order,
            topic_order,
            globs,
            glob_owner,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn service(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub(crate) fn store(&self, name: &str) -> Option<u32> {
        self.store_index.get(name).copied()
    }

    pub(crate) fn topic(&self, name: &str) -> Option<u32> {
        self.topic_index.get(name).copied()
    }

    /// The dependencies of `service` that one of its env values names, with the first env key
    /// naming each.
    pub(crate) fn env_refs(
        &self,
        service: u32,
        env: &BTreeMap<String, Sourced<String>>,
    ) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for &d in &self.deps[service as usize] {
            let name = &self.names[d as usize];
            if let Some((k, _)) = env.iter().find(|(_, v)| references(&v.value, name)) {
                out.push((d, k.clone()));
            }
        }
        out
    }

    /// Services owning each changed path, with the indices of their paths in `changes`. A path
    /// matched by several services' globs (a shared library) marks all of them.
    pub(crate) fn match_changes(&self, changes: &SourceChanges) -> BTreeMap<u32, Vec<usize>> {
        let mut out: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        let mut hits = Vec::new();
        for (i, p) in changes.paths.iter().enumerate() {
            self.globs.matches_into(p.path.as_str(), &mut hits);
            for &g in &hits {
                let owner = self.glob_owner[g];
                let v = out.entry(owner).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
        out
    }
}

/// Whether `value` names `name` as a whole word, where words are made of lower- and upper-case
/// letters, digits, `-` and `_`: `http://orders:8080` and `orders.svc` reference `orders`,
/// `orders-db` does not.
pub(crate) fn references(value: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let b = value.as_bytes();
    value.match_indices(name).any(|(i, m)| {
        let before = i.checked_sub(1).map(|j| b[j]);
        let after = b.get(i + m.len()).copied();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

/// Strongly connected components of a graph given as adjacency lists, in reverse topological
/// order (a component comes after every component it reaches). Iterative Tarjan, so deep
/// graphs do not overflow the stack.
pub(crate) fn sccs(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSET: usize = usize::MAX;
    let n = adj.len();
    let mut index = vec![UNSET; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    let mut next = 0;
    let mut calls: Vec<(usize, usize)> = Vec::new();
    for root in 0..n {
        if index[root] != UNSET {
            continue;
        }
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        calls.push((root, 0));
        while let Some(top) = calls.last_mut() {
            let (v, edge) = *top;
            if let Some(&w) = adj[v].get(edge) {
                top.1 += 1;
                if index[w] == UNSET {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(u, _)) = calls.last() {
                low[u] = low[u].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                comp.sort_unstable();
                out.push(comp);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn word_references() {
        assert!(references("http://orders:8080", "orders"));
        assert!(references("orders.svc.cluster.local", "orders"));
        assert!(references("orders", "orders"));
        assert!(!references("orders-db:5432", "orders"));
        assert!(!references("preorders:1", "orders"));
        assert!(!references("orders_v2", "orders"));
        assert!(references("a,orders-db", "orders-db"));
        assert!(!references("x", ""));
    }

    #[test]
    fn sccs_find_cycles_in_reverse_topological_order() {
        // 0 -> 1 -> 2 -> 1, 2 -> 3
        let adj = vec![vec![1], vec![2], vec![1, 3], vec![]];
        let c = sccs(&adj);
        assert_eq!(c, vec![vec![3], vec![1, 2], vec![0]]);
    }

    #[test]
    fn sccs_deep_chain_does_not_overflow() {
        let n = 200_000;
        let adj: Vec<Vec<usize>> = (0..n)
            .map(|i| if i + 1 < n { vec![i + 1] } else { vec![] })
            .collect();
        let c = sccs(&adj);
        assert_eq!(c.len(), n);
        assert_eq!(c[0], vec![n - 1]);
    }

    proptest! {
        /// Every node is in exactly one component, and every edge goes to the same component
        /// or to one emitted earlier.
        #[test]
        fn sccs_partition_and_order(edges in proptest::collection::vec((0usize..8, 0usize..8), 0..20)) {
            let mut adj = vec![Vec::new(); 8];
            for (a, b) in edges {
                adj[a].push(b);
            }
            let comps = sccs(&adj);
            let mut comp_of = [usize::MAX; 8];
            for (ci, c) in comps.iter().enumerate() {
                for &v in c {
                    prop_assert_eq!(comp_of[v], usize::MAX);
                    comp_of[v] = ci;
                }
            }
            prop_assert!(comp_of.iter().all(|&c| c != usize::MAX));
            for (a, outs) in adj.iter().enumerate() {
                for &b in outs {
                    prop_assert!(comp_of[b] <= comp_of[a]);
                }
            }
        }
    }
}
