//! The [`Planner`]: indexes one org catalog and its baseline once, then plans environments of
//! it (assembling the per-layer plans of a lineage into one [`Plan`]) and addresses their
//! instances from scratch. The decision rules are in `engine`; the plan types in `plan`.

use crate::cost::{CostModel, DefaultCostModel, Resources};
use crate::decision::{Decision, Isolation, Subject};
use crate::economy::Quality;
use crate::engine::{base, Base, Engine, LayerPlan, View};
use crate::error::PlanError;
use crate::git::SourceChanges;
use crate::graph::Catalog;
use crate::instance::InstanceKey;
use crate::plan::{Entry, Plan, Summary};
use crate::solve::Usage;
use microstax_config::{Config, Layer, LayerIdx, LayerKind};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Plans environments of one org catalog. Building it indexes the catalog and addresses the
/// baseline's instances (linear in the number of services); each plan then looks only at the
/// planned layer's lineage, its overrides and what the graph derives from them. Rebuild it when
/// the org layer changes; team and branch changes need no rebuild.
#[derive(Debug, Clone)]
pub struct Planner {
    pub(crate) catalog: Catalog,
    pub(crate) base: Base,
    pub(crate) cost: Arc<dyn CostModel>,
    /// Per catalog service, the replicas its org entry asks for (`min_replicas`, at least 1).
    pub(crate) replicas: Vec<u32>,
    org: Arc<Layer>,
}

impl Planner {
    /// A planner with the [`DefaultCostModel`].
    pub fn new(config: &Config) -> Result<Planner, PlanError> {
        Planner::with_cost_model(config, Arc::new(DefaultCostModel::default()))
    }

    /// A planner pricing with `cost`.
    pub fn with_cost_model(
        config: &Config,
        cost: Arc<dyn CostModel>,
    ) -> Result<Planner, PlanError> {
        let catalog = Catalog::new(config)?;
        let base = base(config, &catalog, cost.as_ref())?;
        let replicas = catalog
            .names
            .iter()
            .map(|n| {
                let doc = config.service_doc(n);
                doc.and_then(|d| d.min_replicas).unwrap_or(1).max(1)
            })
            .collect();
        Ok(Planner {
            catalog,
            base,
            cost,
            replicas,
            org: config.org().clone(),
        })
    }

    pub(crate) fn engine<'a>(&'a self, config: &'a Config) -> Result<Engine<'a>, PlanError> {
        if !Arc::ptr_eq(&self.org, config.org()) {
            return Err(PlanError::StaleOrg);
        }
        Ok(Engine {
            config,
            catalog: &self.catalog,
            cost: self.cost.as_ref(),
        })
    }

    /// Plan the branch or team `branch` of `config`, with the changed source paths if known:
    /// the rules' decisions, then the solver's cheapest choice among their alternatives within
    /// the team's budget (counting what the team's other live layers use).
    pub fn plan(
        &self,
        config: &Config,
        branch: &str,
        changes: Option<&SourceChanges>,
    ) -> Result<Plan, PlanError> {
        self.plan_with(config, branch, changes, None)
    }

    /// [`Planner::plan`], offering each fork an instance shared with the layers of `fleet`
    /// that need the identical one.
    pub fn plan_with(
        &self,
        config: &Config,
        branch: &str,
        changes: Option<&SourceChanges>,
        fleet: Option<&crate::fleet::Fleet>,
    ) -> Result<Plan, PlanError> {
        let mut plan = self.plan_rules(config, branch, changes)?;
        if let Some(f) = fleet {
            plan.annotate_sharing(f);
        }
        let idx = config
            .layer_id(branch)
            .ok_or_else(|| PlanError::UnknownLayer(branch.to_string()))?;
        let others = self.team_usage(config, idx)?;
        crate::economy::choose(self, config, idx, &mut plan, others, Quality::Explained);
        Ok(plan)
    }

    /// What the other live layers of `idx`'s budgeted team use, each at its own cheapest plan
    /// without the budget (`None`: no budget applies).
    fn team_usage(&self, config: &Config, idx: LayerIdx) -> Result<Option<Usage>, PlanError> {
        let Some(b) = config.budget(idx) else {
            return Ok(None);
        };
        let mut used = Usage::default();
        for l in config.layers().filter(|l| l.kind != LayerKind::Org) {
            let Some(lid) = config.layer_id(&l.name) else {
                continue;
            };
            if lid == idx || config.budget(lid).map(|x| x.team) != Some(b.team) {
                continue;
            }
            let mut p = self.plan_rules(config, &l.name, None)?;
            crate::economy::choose(self, config, lid, &mut p, None, Quality::Optimum);
            used.cost = used.cost.saturating_add(p.economics.cost);
            used.instances += p.economics.instances;
        }
        Ok(Some(used))
    }

    /// Plan every team and branch at once, each within its team's budget given what the
    /// team's other layers use (linear in the layers: each is solved once without budgets,
    /// then once more with its team's budget if it has one). For running the plans: the
    /// choices are exact, but their reasons and runner-ups are not computed (`unresolved`).
    pub fn plan_every(&self, config: &Config) -> Vec<(LayerIdx, Result<Plan, PlanError>)> {
        let mut out: Vec<(LayerIdx, Result<Plan, PlanError>)> = Vec::new();
        let mut by_team: BTreeMap<LayerIdx, Usage> = BTreeMap::new();
        for l in config.layers().filter(|l| l.kind != LayerKind::Org) {
            let Some(lid) = config.layer_id(&l.name) else {
                continue;
            };
            let plan = self.plan_rules(config, &l.name, None).map(|mut p| {
                crate::economy::choose(self, config, lid, &mut p, None, Quality::Optimum);
                p
            });
            if let (Ok(p), Some(b)) = (&plan, config.budget(lid)) {
                let u = by_team.entry(b.team).or_default();
                u.cost = u.cost.saturating_add(p.economics.cost);
                u.instances += p.economics.instances;
            }
            out.push((lid, plan));
        }
        for (lid, plan) in &mut out {
            let (Ok(p), Some(b)) = (plan, config.budget(*lid)) else {
                continue;
            };
            let all = by_team.get(&b.team).copied().unwrap_or_default();
            let others = Usage {
                instances: all.instances.saturating_sub(p.economics.instances),
                cost: all.cost.saturating_sub(p.economics.cost),
            };
            crate::economy::choose(self, config, *lid, p, Some(others), Quality::Optimum);
        }
        out
    }

    /// The rules' plan, before the solver chooses among alternatives (which services fork,
    /// which stores and topics are isolated, and why).
    pub(crate) fn plan_rules(
        &self,
        config: &Config,
        branch: &str,
        changes: Option<&SourceChanges>,
    ) -> Result<Plan, PlanError> {
        let engine = self.engine(config)?;
        let idx = config
            .layer_id(branch)
            .ok_or_else(|| PlanError::UnknownLayer(branch.to_string()))?;
        if idx == 0 {
            return Err(PlanError::Baseline);
        }
        let chain = lineage(config, idx)?;
        let mut plans: Vec<LayerPlan> = Vec::with_capacity(chain.len());
        for &l in chain.iter().rev().skip(1) {
            let view = View::new(plans.iter().rev().collect(), &self.base);
            let given = if l == idx { changes } else { None };
            let p = engine.plan_layer(l, &view, given)?;
            plans.push(p);
        }
        let view = View::new(plans.iter().rev().collect(), &self.base);
        Ok(self.assemble(&view, changes))
    }

    /// The content address of every service, store and topic of layer `branch` (a branch, a
    /// team or `baseline`), computed from scratch from its effective config, ignoring source
    /// changes. It agrees with the `instance` of the entries of [`Planner::plan`] (planned
    /// without source changes); use it to check a plan or to look up an instance.
    pub fn addresses(
        &self,
        config: &Config,
        branch: &str,
    ) -> Result<Vec<(Subject, Arc<str>, InstanceKey)>, PlanError> {
        let engine = self.engine(config)?;
        let idx = config
            .layer_id(branch)
            .ok_or_else(|| PlanError::UnknownLayer(branch.to_string()))?;
        lineage(config, idx)?;
        let a = engine.addresses(idx)?;
        let cat = &self.catalog;
        let mut out = Vec::with_capacity(a.services.len() + a.stores.len() + a.topics.len());
        out.extend(
            a.services
                .iter()
                .enumerate()
                .map(|(i, &k)| (Subject::Service, cat.names[i].clone(), k)),
        );
        out.extend(
            a.stores
                .iter()
                .enumerate()
                .map(|(i, &k)| (Subject::Store, cat.stores[i].name.clone(), k)),
        );
        out.extend(
            a.topics
                .iter()
                .enumerate()
                .map(|(i, &k)| (Subject::Topic, cat.topics[i].name.clone(), k)),
        );
        Ok(out)
    }

    fn assemble(&self, view: &View<'_>, changes: Option<&SourceChanges>) -> Plan {
        let cat = &self.catalog;
        let mut entries = Vec::with_capacity(cat.len() + cat.stores.len() + cat.topics.len());
        let mut s = Summary {
            services: cat.len(),
            stores: cat.stores.len(),
            topics: cat.topics.len(),
            ..Summary::default()
        };
        self.service_entries(view, &mut entries, &mut s);
        self.store_entries(view, &mut entries, &mut s);
        self.topic_entries(view, &mut entries, &mut s);
        Plan {
            layer: view.label().clone(),
            lineage: view.labels(),
            entries,
            summary: s,
            source: changes.map(|c| (Arc::from(c.range().as_str()), c.paths.len())),
            economics: Default::default(),
        }
    }

    fn service_entries(&self, view: &View<'_>, entries: &mut Vec<Entry>, s: &mut Summary) {
        let target = view.target();
        for sid in 0..self.catalog.len() as u32 {
            let (decision, causes, cost, instance, resources) =
                match target.and_then(|t| t.services.get(&sid)) {
                    Some(m) if m.local => {
                        s.local += 1;
                        (
                            Decision::Local,
                            m.causes.clone(),
                            Resources::ZERO,
                            m.key,
                            m.resources,
                        )
                    }
                    Some(m) => {
                        s.forked += 1;
                        (
                            Decision::Fork,
                            m.causes.clone(),
                            m.resources,
                            m.key,
                            m.resources,
                        )
                    }
                    None => {
                        s.reused += 1;
                        let (from, key, res) = view.service(sid);
                        let notes = target.and_then(|t| t.notes.get(&sid)).cloned();
                        let from = from.clone();
                        (
                            Decision::Reuse { from },
                            notes.unwrap_or_default(),
                            Resources::ZERO,
                            key,
                            res,
                        )
                    }
                };
            s.cost += cost;
            s.clone_cost += resources;
            entries.push(Entry {
                subject: Subject::Service,
                name: self.catalog.names[sid as usize].clone(),
                kind: None,
                decision,
                causes,
                cost,
                instance,
                shared_with: Vec::new(),
                resources,
                chosen: None,
            });
        }
    }

    fn store_entries(&self, view: &View<'_>, entries: &mut Vec<Entry>, s: &mut Summary) {
        let target = view.target();
        for &x in &self.catalog.store_order {
            let st = &self.catalog.stores[x as usize];
            let resources = self.cost.store(&st.name, &st.kind, Isolation::Instance);
            s.clone_cost += resources;
            let (decision, causes, cost, instance) = match target.and_then(|t| t.stores.get(&x)) {
                Some(m) => {
                    s.stores_isolated += 1;
                    let cost = self.cost.store(&st.name, &st.kind, st.isolation);
                    (
                        Decision::Isolate(st.isolation),
                        m.causes.clone(),
                        cost,
                        m.key,
                    )
                }
                None => {
                    let (from, key) = view.store(x);
                    (
                        Decision::Reuse { from: from.clone() },
                        Vec::new(),
                        Resources::ZERO,
                        key,
                    )
                }
            };
            s.cost += cost;
            entries.push(Entry {
                subject: Subject::Store,
                name: st.name.clone(),
                kind: Some(st.kind.clone()),
                decision,
                causes,
                cost,
                instance,
                shared_with: Vec::new(),
                resources,
                chosen: None,
            });
        }
    }

    fn topic_entries(&self, view: &View<'_>, entries: &mut Vec<Entry>, s: &mut Summary) {
        let target = view.target();
        for &t in &self.catalog.topic_order {
            let tp = &self.catalog.topics[t as usize];
            s.clone_cost += self.cost.topic(&tp.name);
            let (decision, causes, cost, instance) = match target.and_then(|p| p.topics.get(&t)) {
                Some(m) => {
                    s.topics_isolated += 1;
                    let cost = self.cost.topic(&tp.name);
                    (
                        Decision::Isolate(Isolation::Topic),
                        m.causes.clone(),
                        cost,
                        m.key,
                    )
                }
                None => {
                    let (from, key) = view.topic(t);
                    (
                        Decision::Reuse { from: from.clone() },
                        Vec::new(),
                        Resources::ZERO,
                        key,
                    )
                }
            };
            s.cost += cost;
            entries.push(Entry {
                subject: Subject::Topic,
                name: tp.name.clone(),
                kind: None,
                decision,
                causes,
                cost,
                instance,
                shared_with: Vec::new(),
                resources: self.cost.topic(&tp.name),
                chosen: None,
            });
        }
    }
}

/// The lineage of `idx` (itself first), checked to end at the baseline without repeats.
pub(crate) fn lineage(config: &Config, idx: LayerIdx) -> Result<Vec<LayerIdx>, PlanError> {
    let chain = config.lineage(idx);
    if chain.last() != Some(&0) {
        let name = config
            .layer(idx)
            .map_or_else(String::new, |l| l.name.clone());
        let names: Vec<String> = chain
            .iter()
            .filter_map(|&i| config.layer(i))
            .map(|l| l.name.clone())
            .collect();
        return Err(PlanError::Lineage {
            layer: name,
            detail: format!(
                "it runs {} and stops (a cycle or a missing parent)",
                names.join(" -> ")
            ),
        });
    }
    Ok(chain)
}

/// Plan one branch (or team) from scratch: builds a [`Planner`] and plans with it. To plan many
/// branches of one config, build the planner once.
pub fn plan_branch(
    config: &Config,
    branch: &str,
    changes: Option<&SourceChanges>,
) -> Result<Plan, PlanError> {
    Planner::new(config)?.plan(config, branch, changes)
}
