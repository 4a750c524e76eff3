//! Planning every team and branch of a config at once, and instance sharing across them.
//!
//! Within a lineage, reuse already shares instances. Content addressing adds sharing across
//! lineages: when two layers independently need an instance with the same [`InstanceKey`]
//! (e.g. two sibling branches that bump `orders` to the same image), one instance serves both.
//! Each layer is planned once, parents before children, so the whole fleet costs about the sum
//! of its overrides, not layers x services.

use crate::cost::Resources;
use crate::engine::{LayerPlan, View};
use crate::error::PlanError;
use crate::instance::InstanceKey;
use crate::plan::{Plan, Subject};
use crate::planner::{lineage, Planner};
use crate::render::{resources_cell, table};
use microstax_config::{Config, LayerIdx};
use rustc_hash::FxHashMap;
use serde_json::{json, Value};
use std::sync::Arc;

/// What one layer needs of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    /// The layer's label.
    pub layer: Arc<str>,
    /// Services forked.
    pub forked: usize,
    /// Services on a developer endpoint.
    pub local: usize,
    /// Stores isolated.
    pub stores_isolated: usize,
    /// Topics isolated.
    pub topics_isolated: usize,
    /// What its own decisions cost, counting shared instances in full.
    pub cost: Resources,
}

/// One instance needed by several layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedInstance {
    /// Service, store or topic.
    pub subject: Subject,
    /// Its name.
    pub name: Arc<str>,
    /// The content address.
    pub instance: InstanceKey,
    /// Every layer that needs it (`baseline` first if the baseline runs it), in plan order.
    pub layers: Vec<Arc<str>>,
}

/// The plans of every team and branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// One summary per team and branch, parents before children.
    pub layers: Vec<LayerSummary>,
    /// Instances needed by more than one layer.
    pub shared: Vec<SharedInstance>,
    /// Distinct instances (services, stores, topics) with sharing, baseline included.
    pub instances: usize,
    /// Instances if every layer ran its own forks.
    pub instances_unshared: usize,
    /// Instances if every layer cloned everything.
    pub instances_if_cloned: usize,
    /// What the layers' instances cost with sharing (baseline excluded).
    pub cost: Resources,
    /// What they cost without sharing.
    pub cost_unshared: Resources,
    index: FxHashMap<InstanceKey, usize>,
}

impl Fleet {
    /// The sharing record of an instance, if more than one layer needs it.
    pub fn sharing(&self, key: InstanceKey) -> Option<&SharedInstance> {
        self.index.get(&key).and_then(|&i| self.shared.get(i))
    }

    /// A readable report: totals, then each shared instance.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "{} layers; {} instances with sharing, {} without, {} if every layer cloned everything\n\
             cost of the layers' instances: {} with sharing, {} without\n\n",
            self.layers.len(),
            self.instances,
            self.instances_unshared,
            self.instances_if_cloned,
            resources_cell(self.cost),
            resources_cell(self.cost_unshared),
        );
        let rows: Vec<Vec<String>> = self
            .shared
            .iter()
            .map(|s| {
                let layers: Vec<&str> = s.layers.iter().map(|l| &**l).collect();
                vec![
                    s.name.to_string(),
                    s.subject.as_str().to_string(),
                    s.instance.to_string(),
                    layers.join(", "),
                ]
            })
            .collect();
        if rows.is_empty() {
            out.push_str("no instance is needed by more than one layer\n");
        } else {
            out.push_str(&table(&["NAME", "KIND", "INSTANCE", "SHARED BY"], &rows));
        }
        out
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "layers": self.layers.iter().map(|l| json!({
                "layer": &*l.layer,
                "forked": l.forked,
                "local": l.local,
                "stores_isolated": l.stores_isolated,
                "topics_isolated": l.topics_isolated,
                "cost": l.cost.to_json(),
            })).collect::<Vec<_>>(),
            "shared": self.shared.iter().map(|s| json!({
                "subject": s.subject.as_str(),
                "name": &*s.name,
                "instance": s.instance.hex(),
                "layers": s.layers.iter().map(|l| &**l).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "instances": self.instances,
            "instances_unshared": self.instances_unshared,
            "instances_if_cloned": self.instances_if_cloned,
            "cost": self.cost.to_json(),
            "cost_unshared": self.cost_unshared.to_json(),
        })
    }
}

impl Plan {
    /// Name, on each entry this plan moves, the other layers needing the identical instance.
    pub fn annotate_sharing(&mut self, fleet: &Fleet) {
        for e in &mut self.entries {
            if !e.decision.is_moved() {
                continue;
            }
            if let Some(s) = fleet.sharing(e.instance) {
                e.shared_with = s
                    .layers
                    .iter()
                    .filter(|l| ***l != *self.layer)
                    .cloned()
                    .collect();
            }
        }
    }
}

struct Owners {
    subject: Subject,
    name: Arc<str>,
    layers: Vec<Arc<str>>,
    cost: Resources,
}

impl Planner {
    /// Plan every team and branch of `config` and find the instances they can share.
    pub fn plan_all(&self, config: &Config) -> Result<Fleet, PlanError> {
        let engine = self.engine(config)?;
        let cat = &self.catalog;
        let mut order: Vec<(usize, LayerIdx)> = Vec::new();
        for idx in 1..config.layer_slots() {
            if config.layer(idx).is_some() {
                order.push((lineage(config, idx)?.len(), idx));
            }
        }
        order.sort_unstable();
        let mut owners: FxHashMap<InstanceKey, Owners> = FxHashMap::default();
        let mut keys_in_order: Vec<InstanceKey> = Vec::new();
        let base_view = View::new(Vec::new(), &self.base);
        let base_label = base_view.label().clone();
        let mut add = |key: InstanceKey, subject, name: &Arc<str>, layer: &Arc<str>, cost| {
            let o = owners.entry(key).or_insert_with(|| {
                keys_in_order.push(key);
                Owners {
                    subject,
                    name: name.clone(),
                    layers: Vec::new(),
                    cost,
                }
            });
            if o.layers.last() != Some(layer) {
                o.layers.push(layer.clone());
            }
        };
        for s in 0..cat.len() as u32 {
            let (_, key, res) = base_view.service(s);
            add(
                key,
                Subject::Service,
                &cat.names[s as usize],
                &base_label,
                res,
            );
        }
        for x in 0..cat.stores.len() as u32 {
            add(
                base_view.store(x).1,
                Subject::Store,
                &cat.stores[x as usize].name,
                &base_label,
                Resources::ZERO,
            );
        }
        for t in 0..cat.topics.len() as u32 {
            add(
                base_view.topic(t).1,
                Subject::Topic,
                &cat.topics[t as usize].name,
                &base_label,
                Resources::ZERO,
            );
        }
        let baseline_instances = cat.len() + cat.stores.len() + cat.topics.len();
        let mut memo: Vec<Option<LayerPlan>> = vec![None; config.layer_slots()];
        let mut layers = Vec::with_capacity(order.len());
        let mut fleet_cost_unshared = Resources::ZERO;
        let mut moved_total = 0;
        for &(_, idx) in &order {
            let chain = lineage(config, idx)?;
            let view = View::new(
                chain[1..]
                    .iter()
                    .filter_map(|&i| memo[i].as_ref())
                    .collect(),
                &self.base,
            );
            let p = engine.plan_layer(idx, &view, None)?;
            let mut summary = LayerSummary {
                layer: p.label.clone(),
                forked: 0,
                local: 0,
                stores_isolated: p.stores.len(),
                topics_isolated: p.topics.len(),
                cost: Resources::ZERO,
            };
            for (&s, m) in sorted(&p.services) {
                let cost = if m.local {
                    Resources::ZERO
                } else {
                    m.resources
                };
                if m.local {
                    summary.local += 1;
                } else {
                    summary.forked += 1;
                }
                summary.cost += cost;
                add(
                    m.key,
                    Subject::Service,
                    &cat.names[s as usize],
                    &p.label,
                    cost,
                );
            }
            for (&x, m) in sorted(&p.stores) {
                let st = &cat.stores[x as usize];
                let cost = self.cost.store(&st.name, &st.kind, st.isolation);
                summary.cost += cost;
                add(m.key, Subject::Store, &st.name, &p.label, cost);
            }
            for (&t, m) in sorted(&p.topics) {
                let tp = &cat.topics[t as usize];
                let cost = self.cost.topic(&tp.name);
                summary.cost += cost;
                add(m.key, Subject::Topic, &tp.name, &p.label, cost);
            }
            moved_total += p.services.len() + p.stores.len() + p.topics.len();
            fleet_cost_unshared += summary.cost;
            layers.push(summary);
            memo[idx] = Some(p);
        }
        let mut shared = Vec::new();
        let mut index = FxHashMap::default();
        let mut cost = Resources::ZERO;
        for key in keys_in_order {
            let Some(o) = owners.remove(&key) else {
                continue;
            };
            let baseline_runs = o.layers.first() == Some(&base_label);
            if !baseline_runs {
                cost += o.cost;
            }
            if o.layers.len() > 1 {
                index.insert(key, shared.len());
                shared.push(SharedInstance {
                    subject: o.subject,
                    name: o.name,
                    instance: key,
                    layers: o.layers,
                });
            }
        }
        let instances = baseline_instances + moved_total
            - shared.iter().map(|s| s.layers.len() - 1).sum::<usize>();
        Ok(Fleet {
            instances,
            instances_unshared: baseline_instances + moved_total,
            instances_if_cloned: baseline_instances * (layers.len() + 1),
            layers,
            shared,
            cost,
            cost_unshared: fleet_cost_unshared,
            index,
        })
    }
}

fn sorted<V>(m: &FxHashMap<u32, V>) -> Vec<(&u32, &V)> {
    let mut v: Vec<(&u32, &V)> = m.iter().collect();
    v.sort_unstable_by_key(|(k, _)| **k);
    v
}

/// Plan every team and branch of `config` (see [`Planner::plan_all`]).
pub fn plan_all(config: &Config) -> Result<Fleet, PlanError> {
    Planner::new(config)?.plan_all(config)
}
