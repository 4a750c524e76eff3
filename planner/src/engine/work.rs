//! The per-layer decision rules: a layer's own entries, its source changes, and the forks
//! derived from them (isolated stores and topics, env references of moved dependencies), to a
//! fixpoint; then every moved instance is addressed and priced.

use super::keys::{own_key, service_keys, store_key, topic_key};
use super::view::{LayerPlan, Moved, MovedService, View};
use super::Engine;
use crate::cost::Resources;
use crate::decision::{Cause, REASON_PATHS};
use crate::diff::{diff_effective, FieldClass, ServiceDiff};
use crate::error::PlanError;
use crate::git::SourceChanges;
use crate::graph::references;
use crate::instance::{InstanceKey, KeyHasher};
use microstax_config::{Effective, Layer, LayerIdx};
use rustc_hash::FxHashMap;
use std::sync::Arc;

pub(super) struct Pending {
    local: bool,
    causes: Vec<Cause>,
}

/// The state of planning one layer.
pub(super) struct Work<'a> {
    pub(super) engine: Engine<'a>,
    pub(super) idx: LayerIdx,
    /// The team and branch layers of the lineage (the org layer excluded).
    pub(super) lineage: Vec<&'a Arc<Layer>>,
    pub(super) label: Arc<str>,
    pub(super) effs: FxHashMap<u32, Effective>,
    pub(super) moved: FxHashMap<u32, Pending>,
    pub(super) notes: FxHashMap<u32, Vec<Cause>>,
    pub(super) stores: FxHashMap<u32, Vec<Cause>>,
    pub(super) topics: FxHashMap<u32, Vec<Cause>>,
    pub(super) queue: Vec<u32>,
}

/// A new schema migration or message contract declared by a moved service.
pub(super) enum Change {
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

impl Work<'_> {
    pub(super) fn eff(&mut self, s: u32) -> Result<&Effective, PlanError> {
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
    pub(super) fn decide_entries(
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
    pub(super) fn decide_own(&mut self, s: u32, d: &ServiceDiff, child: &Effective) {
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
    pub(super) fn decide_source(&mut self, c: &SourceChanges) -> FxHashMap<u32, InstanceKey> {
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
    pub(super) fn derive(&mut self, s: u32, cause: Cause) {
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

    pub(super) fn isolate_store(&mut self, x: u32, by: u32, cause: Cause) {
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

    pub(super) fn isolate_topic(&mut self, t: u32, by: u32, cause: Cause) {
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
    pub(super) fn propagate_dependencies(&mut self, up: &View<'_>) -> Result<(), PlanError> {
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
    pub(super) fn env_naming(
        &mut self,
        r: u32,
        d: u32,
        up: &View<'_>,
    ) -> Result<Option<String>, PlanError> {
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
    pub(super) fn finish(
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
