//! Planning one layer against its parent: which services it forks or runs locally, which
//! stores and topics it isolates, why, and the content address of each. Sparse by
//! construction: only the layer's own entries, its source-changed services and what the graph
//! derives from them are looked at; everything else is inherited through a [`View`] of the
//! lineage's plans. The rules themselves are documented on [`crate::plan`].

use crate::cost::{CostModel, Resources};
use crate::diff::{diff_effective, FieldClass, ServiceDiff};
use crate::error::PlanError;
use crate::git::SourceChanges;
use crate::graph::{references, sccs, Catalog};
use crate::instance::{InstanceKey, KeyHasher};
use crate::plan::{Cause, REASON_PATHS};
use microstax_config::{Config, Effective, Layer, LayerIdx};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A service this layer needs its own instance of.
#[derive(Debug, Clone)]
pub(crate) struct MovedService {
    pub local: bool,
    pub causes: Vec<Cause>,
    pub key: InstanceKey,
    pub resources: Resources,
}

/// A store or topic this layer isolates.
#[derive(Debug, Clone)]
pub(crate) struct Moved {
    pub causes: Vec<Cause>,
    pub key: InstanceKey,
}

/// What one layer changes relative to its parent.
#[derive(Debug, Clone)]
pub(crate) struct LayerPlan {
    pub label: Arc<str>,
    pub services: FxHashMap<u32, MovedService>,
    /// Notes on services the layer mentions but still reuses (policy-only, restated).
    pub notes: FxHashMap<u32, Vec<Cause>>,
    pub stores: FxHashMap<u32, Moved>,
    pub topics: FxHashMap<u32, Moved>,
}

/// The instances of the org baseline.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    label: Arc<str>,
    services: Vec<(InstanceKey, Resources)>,
    /// The baseline's env references of each service: (dependency, env key).
    pub refs: Vec<Vec<(u32, String)>>,
    stores: Vec<InstanceKey>,
    topics: Vec<InstanceKey>,
}

impl Base {
    pub(crate) fn new(
        config: &Config,
        cat: &Catalog,
        cost: &dyn CostModel,
    ) -> Result<Base, PlanError> {
        let engine = Engine {
            config,
            catalog: cat,
            cost,
        };
        let a = engine.addresses(0)?;
        let services = a
            .services
            .iter()
            .zip(&a.effs)
            .map(|(&k, e)| {
                (
                    k,
                    cost.service(&e.service, e.resources.as_ref().map(|r| r.value)),
                )
            })
            .collect();
        Ok(Base {
            label: config.org().label.clone(),
            services,
            refs: a.edges,
            stores: a.stores,
            topics: a.topics,
        })
    }
}

/// Addresses of every instance of one layer, by catalog id.
pub(crate) struct Addresses {
    pub services: Vec<InstanceKey>,
    pub stores: Vec<InstanceKey>,
    pub topics: Vec<InstanceKey>,
    pub edges: Vec<Vec<(u32, String)>>,
    effs: Vec<Effective>,
}

/// The plans of a lineage, nearest layer first, over the baseline: answers "whose instance
/// serves this here".
#[derive(Debug)]
pub(crate) struct View<'a> {
    plans: Vec<&'a LayerPlan>,
    base: &'a Base,
}

impl<'a> View<'a> {
    pub(crate) fn new(plans: Vec<&'a LayerPlan>, base: &'a Base) -> View<'a> {
        View { plans, base }
    }

    pub(crate) fn target(&self) -> Option<&'a LayerPlan> {
        self.plans.first().copied()
    }

    pub(crate) fn label(&self) -> &'a Arc<str> {
        self.plans.first().map_or(&self.base.label, |p| &p.label)
    }

    pub(crate) fn labels(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self.plans.iter().map(|p| p.label.clone()).collect();
        out.push(self.base.label.clone());
        out
    }

    /// Owner layer, key and resources of the instance serving service `s`.
    pub(crate) fn service(&self, s: u32) -> (&'a Arc<str>, InstanceKey, Resources) {
        for p in &self.plans {
            if let Some(m) = p.services.get(&s) {
                return (&p.label, m.key, m.resources);
            }
        }
        let (k, r) = self
            .base
            .services
            .get(s as usize)
            .copied()
            .unwrap_or_default();
        (&self.base.label, k, r)
    }

    /// The baseline's env references of service `s`.
    pub(crate) fn base_refs(&self, s: u32) -> &'a [(u32, String)] {
        self.base.refs.get(s as usize).map_or(&[], Vec::as_slice)
    }

    /// Owner layer and key of store `x`.
    pub(crate) fn store(&self, x: u32) -> (&'a Arc<str>, InstanceKey) {
        for p in &self.plans {
            if let Some(m) = p.stores.get(&x) {
                return (&p.label, m.key);
            }
        }
        (
            &self.base.label,
            self.base
                .stores
                .get(x as usize)
                .copied()
                .unwrap_or_default(),
        )
    }

    /// Owner layer and key of topic `t`.
    pub(crate) fn topic(&self, t: u32) -> (&'a Arc<str>, InstanceKey) {
        for p in &self.plans {
            if let Some(m) = p.topics.get(&t) {
                return (&p.label, m.key);
            }
        }
        (
            &self.base.label,
            self.base
                .topics
                .get(t as usize)
                .copied()
                .unwrap_or_default(),
        )
    }
}

/// Plans layers of one config with one catalog.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Engine<'a> {
    pub config: &'a Config,
    pub catalog: &'a Catalog,
    pub cost: &'a dyn CostModel,
}

struct Pending {
    local: bool,
    causes: Vec<Cause>,
}

/// The state of planning one layer.
struct Work<'a> {
    engine: Engine<'a>,
    idx: LayerIdx,
    /// The team and branch layers of the lineage (the org layer excluded).
    lineage: Vec<&'a Arc<Layer>>,
    label: Arc<str>,
    effs: FxHashMap<u32, Effective>,
    moved: FxHashMap<u32, Pending>,
    notes: FxHashMap<u32, Vec<Cause>>,
    stores: FxHashMap<u32, Vec<Cause>>,
    topics: FxHashMap<u32, Vec<Cause>>,
    queue: Vec<u32>,
}

/// A new schema migration or message contract declared by a moved service.
enum Change {
    Migration {
        service: u32,
        store: u32,
        cause: Cause,
    },
    Contract {
        service: u32,
        topic: u32,
        cause: Cause,
    },
}

impl<'a> Engine<'a> {
    /// Plan layer `idx` given the view of its parent's lineage and, for the planned layer
    /// only, its changed source paths.
    pub(crate) fn plan_layer(
        &self,
        idx: LayerIdx,
        up: &View<'_>,
        changes: Option<&SourceChanges>,
    ) -> Result<LayerPlan, PlanError> {
        let layer = self
            .config
            .layer(idx)
            .ok_or_else(|| PlanError::UnknownLayer(format!("#{idx}")))?;
        let parent = layer.parent.unwrap_or(0);
        let lineage = self
            .config
            .lineage(idx)
            .into_iter()
            .filter(|&i| i != 0)
            .filter_map(|i| self.config.layer(i))
            .collect();
        let mut w = Work {
            engine: *self,
            idx,
            lineage,
            label: layer.label.clone(),
            effs: FxHashMap::default(),
            moved: FxHashMap::default(),
            notes: FxHashMap::default(),
            stores: FxHashMap::default(),
            topics: FxHashMap::default(),
            queue: Vec::new(),
        };
        let declared = w.decide_entries(layer, parent)?;
        let source_ids = match changes {
            Some(c) => w.decide_source(c),
            None => FxHashMap::default(),
        };
        let mut first: Vec<u32> = w.moved.keys().copied().collect();
        first.sort_unstable();
        w.queue = first;
        for c in declared {
            match c {
                Change::Migration {
                    service,
                    store,
                    cause,
                } => w.isolate_store(store, service, cause),
                Change::Contract {
                    service,
                    topic,
                    cause,
                } => w.isolate_topic(topic, service, cause),
            }
        }
        w.propagate_dependencies(up)?;
        w.finish(up, &source_ids)
    }

    /// Addresses of every service, store and topic of layer `idx`, computed from its effective
    /// config alone (no lineage plans, no source changes). Linear in the catalog; used to check
    /// that the sparse plans address instances the same way.
    pub(crate) fn addresses(&self, idx: LayerIdx) -> Result<Addresses, PlanError> {
        let cat = self.catalog;
        let effs = (0..cat.len())
            .map(|s| {
                self.config
                    .effective(idx, &cat.names[s])
                    .ok_or_else(|| PlanError::UnknownService(cat.names[s].to_string()))
            })
            .collect::<Result<Vec<Effective>, PlanError>>()?;
        let get = |u: u32| effs.get(u as usize);
        let stores: Vec<InstanceKey> = (0..cat.stores.len() as u32)
            .map(|x| store_key(cat, x, get))
            .collect();
        let topics: Vec<InstanceKey> = (0..cat.topics.len() as u32)
            .map(|t| topic_key(cat, t, get))
            .collect();
        let nodes: Vec<u32> = (0..cat.len() as u32).collect();
        let own: Vec<InstanceKey> = nodes
            .iter()
            .map(|&s| {
                own_key(
                    cat,
                    s,
                    &effs[s as usize],
                    None,
                    |x| stores[x as usize],
                    |t| topics[t as usize],
                )
            })
            .collect();
        let edges: Vec<Vec<(u32, String)>> = nodes
            .iter()
            .map(|&s| cat.env_refs(s, &effs[s as usize].env))
            .collect();
        let services = service_keys(
            cat,
            &nodes,
            |s| own[s as usize],
            |s| &edges[s as usize],
            |_| InstanceKey(0),
        );
        Ok(Addresses {
            services,
            stores,
            topics,
            edges,
            effs,
        })
    }

    /// Migrations and contracts `child` has that `parent` does not.
    fn new_changes(&self, s: u32, parent: &Effective, child: &Effective) -> Vec<Change> {
        let mut out = Vec::new();
        let name = &self.catalog.names[s as usize];
        for m in &child.migrations {
            if parent.migrations.iter().any(|p| p.value == m.value) {
                continue;
            }
            if let Some(store) = self.catalog.store(&m.value.store) {
                out.push(Change::Migration {
                    service: s,
                    store,
                    cause: Cause::Migrates {
                        service: name.clone(),
                        migration: m.value.name.clone(),
                        origin: m.origin.clone(),
                    },
                });
            }
        }
        for (t, v) in &child.contracts {
            if parent.contracts.get(t).map(|p| &p.value) == Some(&v.value) {
                continue;
            }
            if let Some(topic) = self.catalog.topic(t) {
                out.push(Change::Contract {
                    service: s,
                    topic,
                    cause: Cause::Contract {
                        producer: name.clone(),
                        version: v.value.clone(),
                        origin: v.origin.clone(),
                    },
                });
            }
        }
        out
    }
}

impl Work<'_> {
    fn eff(&mut self, s: u32) -> Result<&Effective, PlanError> {
        if !self.effs.contains_key(&s) {
            let name = &self.engine.catalog.names[s as usize];
            let e = self
                .engine
                .config
                .effective(self.idx, name)
                .ok_or_else(|| PlanError::UnknownService(name.to_string()))?;
            self.effs.insert(s, e);
        }
        self.effs.get(&s).ok_or_else(|| {
            PlanError::UnknownService(self.engine.catalog.names[s as usize].to_string())
        })
    }

    /// Decide every service the layer mentions; returns the migrations and contracts its
    /// moved services declare, for the derived rules.
    fn decide_entries(
        &mut self,
        layer: &Layer,
        parent: LayerIdx,
    ) -> Result<Vec<Change>, PlanError> {
        let (config, cat) = (self.engine.config, self.engine.catalog);
        let mut declared = Vec::new();
        for name in layer.doc.doc.services.keys() {
            let Some(s) = cat.service(name) else { continue };
            let missing = || PlanError::UnknownService(name.clone());
            let child = config.effective(self.idx, name).ok_or_else(missing)?;
            let par = config.effective(parent, name).ok_or_else(missing)?;
            self.decide_own(s, &diff_effective(&par, &child), &child);
            if self.moved.contains_key(&s) {
                declared.extend(self.engine.new_changes(s, &par, &child));
            }
            self.effs.insert(s, child);
        }
        Ok(declared)
    }

    /// The decision for a service the layer itself mentions.
    fn decide_own(&mut self, s: u32, d: &ServiceDiff, child: &Effective) {
        if d.is_empty() {
            self.notes.entry(s).or_default().push(Cause::Restated {
                layer: self.label.clone(),
            });
            return;
        }
        let local_set = d
            .changes
            .iter()
            .any(|c| c.field == "local" && c.after.is_some());
        if let (true, Some(l)) = (local_set, &child.local) {
            let cause = Cause::Local {
                endpoint: l.value.to_string(),
                origin: l.origin.clone(),
            };
            self.moved.insert(
                s,
                Pending {
                    local: true,
                    causes: vec![cause],
                },
            );
            return;
        }
        let (policy, mut other): (Vec<_>, Vec<_>) = d
            .changes
            .iter()
            .cloned()
            .partition(|c| c.class() == FieldClass::Policy);
        // what runs (image, env, ...) explains a fork better than where it is reached
        other.sort_by_key(|c| c.class() != FieldClass::Spec);
        if other.is_empty() {
            self.notes
                .entry(s)
                .or_default()
                .extend(policy.into_iter().map(Cause::Policy));
        } else {
            let causes = other.into_iter().map(Cause::Field).collect();
            self.moved.insert(
                s,
                Pending {
                    local: false,
                    causes,
                },
            );
        }
    }

    /// Fork services whose source paths changed; returns their source identities.
    fn decide_source(&mut self, c: &SourceChanges) -> FxHashMap<u32, InstanceKey> {
        let range: Arc<str> = Arc::from(c.range().as_str());
        let mut ids = FxHashMap::default();
        for (s, idxs) in self.engine.catalog.match_changes(c) {
            if self.moved.get(&s).is_some_and(|p| p.local) {
                continue; // the developer runs their own build
            }
            let mut h = KeyHasher::new("source");
            h.str(c.merge_base.as_deref().unwrap_or(""));
            for &i in &idxs {
                h.str(&c.paths[i].path)
                    .str(c.paths[i].blob.as_deref().unwrap_or("-"));
            }
            ids.insert(s, h.finish());
            let cause = Cause::Source {
                paths: idxs
                    .iter()
                    .take(REASON_PATHS)
                    .map(|&i| c.paths[i].path.clone())
                    .collect(),
                total: idxs.len(),
                range: range.clone(),
            };
            self.moved
                .entry(s)
                .or_insert(Pending {
                    local: false,
                    causes: Vec::new(),
                })
                .causes
                .push(cause);
        }
        ids
    }

    /// Fork `s` for a derived reason (a local service stays local).
    fn derive(&mut self, s: u32, cause: Cause) {
        match self.moved.get_mut(&s) {
            Some(p) if p.local => {}
            Some(p) => p.causes.push(cause),
            None => {
                self.moved.insert(
                    s,
                    Pending {
                        local: false,
                        causes: vec![cause],
                    },
                );
                self.queue.push(s);
            }
        }
    }

    fn isolate_store(&mut self, x: u32, by: u32, cause: Cause) {
        let fresh = !self.stores.contains_key(&x);
        self.stores.entry(x).or_default().push(cause);
        if !fresh {
            return;
        }
        let store = &self.engine.catalog.stores[x as usize];
        let (name, users) = (store.name.clone(), store.users.clone());
        for u in users.into_iter().filter(|&u| u != by) {
            self.derive(
                u,
                Cause::UsesStore {
                    store: name.clone(),
                    layer: self.label.clone(),
                },
            );
        }
    }

    fn isolate_topic(&mut self, t: u32, by: u32, cause: Cause) {
        let fresh = !self.topics.contains_key(&t);
        self.topics.entry(t).or_default().push(cause);
        if !fresh {
            return;
        }
        let topic = &self.engine.catalog.topics[t as usize];
        let (name, consumers) = (topic.name.clone(), topic.consumers.clone());
        for c in consumers.into_iter().filter(|&c| c != by) {
            self.derive(
                c,
                Cause::ConsumesTopic {
                    topic: name.clone(),
                    layer: self.label.clone(),
                },
            );
        }
    }

    /// Fork, to a fixpoint, every service whose env names a moved dependency.
    fn propagate_dependencies(&mut self, up: &View<'_>) -> Result<(), PlanError> {
        let cat = self.engine.catalog;
        while let Some(d) = self.queue.pop() {
            let how = if self.moved.get(&d).is_some_and(|p| p.local) {
                "local"
            } else {
                "forked"
            };
            let dep = &cat.names[d as usize];
            for &r in &cat.rdeps[d as usize] {
                if self.moved.contains_key(&r) {
                    continue;
                }
                let env = self.env_naming(r, d, up)?;
                if let Some(env) = env {
                    let cause = Cause::Dependency {
                        dependency: dep.clone(),
                        env,
                        moved: how,
                        layer: self.label.clone(),
                    };
                    self.derive(r, cause);
                }
            }
        }
        Ok(())
    }

    /// The env key of service `r` whose value names dependency `d`, if any. When no layer of
    /// the lineage mentions `r`, its env is the baseline's, already indexed: this keeps the
    /// fan-out check off the (allocating) effective merge.
    fn env_naming(&mut self, r: u32, d: u32, up: &View<'_>) -> Result<Option<String>, PlanError> {
        let cat = self.engine.catalog;
        let name = &cat.names[r as usize];
        if !self.effs.contains_key(&r) && self.lineage.iter().all(|l| l.service(name).is_none()) {
            let found = up.base_refs(r).iter().find(|(x, _)| *x == d);
            return Ok(found.map(|(_, k)| k.clone()));
        }
        let dep = &cat.names[d as usize];
        Ok(self
            .eff(r)?
            .env
            .iter()
            .find(|(_, v)| references(&v.value, dep))
            .map(|(k, _)| k.clone()))
    }

    /// Address every moved instance and price the services.
    fn finish(
        mut self,
        up: &View<'_>,
        source_ids: &FxHashMap<u32, InstanceKey>,
    ) -> Result<LayerPlan, PlanError> {
        let cat = self.engine.catalog;
        let mut need: Vec<u32> = self.moved.keys().copied().collect();
        for &x in self.stores.keys() {
            need.extend(&cat.stores[x as usize].users);
        }
        for &t in self.topics.keys() {
            need.extend(&cat.topics[t as usize].producers);
        }
        for s in need {
            self.eff(s)?;
        }
        let effs = &self.effs;
        let get = |u: u32| effs.get(&u);
        let store_keys: FxHashMap<u32, InstanceKey> = self
            .stores
            .keys()
            .map(|&x| (x, store_key(cat, x, get)))
            .collect();
        let topic_keys: FxHashMap<u32, InstanceKey> = self
            .topics
            .keys()
            .map(|&t| (t, topic_key(cat, t, get)))
            .collect();
        let skey = |x: u32| store_keys.get(&x).copied().unwrap_or_else(|| up.store(x).1);
        let tkey = |t: u32| topic_keys.get(&t).copied().unwrap_or_else(|| up.topic(t).1);
        let mut nodes: Vec<u32> = self.moved.keys().copied().collect();
        nodes.sort_unstable();
        let mut own = FxHashMap::default();
        let mut edges = FxHashMap::default();
        for &s in &nodes {
            let Some(e) = effs.get(&s) else { continue };
            own.insert(
                s,
                own_key(cat, s, e, source_ids.get(&s).copied(), skey, tkey),
            );
            edges.insert(s, cat.env_refs(s, &e.env));
        }
        let no_edges = Vec::new();
        let keys = service_keys(
            cat,
            &nodes,
            |s| own.get(&s).copied().unwrap_or_default(),
            |s| edges.get(&s).unwrap_or(&no_edges),
            |d| up.service(d).1,
        );
        let mut services = FxHashMap::default();
        for (s, key) in nodes.into_iter().zip(keys) {
            let Some(p) = self.moved.remove(&s) else {
                continue;
            };
            let resources = effs.get(&s).map_or(Resources::ZERO, |e| {
                self.engine
                    .cost
                    .service(&e.service, e.resources.as_ref().map(|r| r.value))
            });
            services.insert(
                s,
                MovedService {
                    local: p.local,
                    causes: p.causes,
                    key,
                    resources,
                },
            );
        }
        let stores = self
            .stores
            .into_iter()
            .map(|(x, causes)| {
                (
                    x,
                    Moved {
                        causes,
                        key: store_keys.get(&x).copied().unwrap_or_default(),
                    },
                )
            })
            .collect();
        let topics = self
            .topics
            .into_iter()
            .map(|(t, causes)| {
                (
                    t,
                    Moved {
                        causes,
                        key: topic_keys.get(&t).copied().unwrap_or_default(),
                    },
                )
            })
            .collect();
        Ok(LayerPlan {
            label: self.label,
            services,
            notes: self.notes,
            stores,
            topics,
        })
    }
}

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
