//! Planning one layer against its parent: which services it forks or runs locally, which
//! stores and topics it isolates, why, and the content address of each. Sparse by
//! construction: only the layer's own entries, its source-changed services and what the graph
//! derives from them are looked at; everything else is inherited through a [`View`] of the
//! lineage's plans. The rules themselves are documented on [`crate::plan`].

mod keys;
mod view;
mod work;

pub(crate) use view::{Addresses, Base, LayerPlan, View};

use crate::cost::CostModel;
use crate::decision::Cause;
use crate::error::PlanError;
use crate::git::SourceChanges;
use crate::graph::Catalog;
use crate::instance::InstanceKey;
use keys::{own_key, service_keys, store_key, topic_key};
use microstax_config::{Config, Effective, LayerIdx};
use rustc_hash::FxHashMap;
use work::{Change, Work};

/// Plans layers of one config with one catalog.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Engine<'a> {
    pub config: &'a Config,
    pub catalog: &'a Catalog,
    pub cost: &'a dyn CostModel,
}

/// The instances of the org baseline of `config`.
pub(crate) fn base(
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
