//! From a plan the rules made to the solver's problem, and the solver's answer back into the
//! plan. Every service the rules fork, every store and topic they isolate is a decision; the
//! rules' derived forks become implications (an isolated store makes each other user fork, a
//! topic makes its consumers fork, a moved dependency makes the service naming it fork), so the
//! solver meets exactly the isolation rules and prices the ways of meeting them.

use super::{labels, BudgetUse, Chosen, Economics, Offered, Refusal, Runner};
use crate::cost::Resources;
use crate::decision::{Cause, Decision, Isolation, Subject};
use crate::plan::{Entry, Plan};
use crate::planner::Planner;
pub(crate) use crate::solve::Usage;
use crate::solve::{
    Alternative, Budget, Choice, Constraint, DecisionVar, Node, Problem, Reason, Solution,
    SolveError, Solver, SubjectKind, Topology,
};
use microstax_config::economics::{Prices, SchemaPolicy, DEFAULT_COLD_START_MS};
use microstax_config::{Config, LayerIdx};
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Prices of one instance of `r` per hour, in micro-units.
fn price(p: &Prices, r: Resources) -> u64 {
    let cpu = r.cpu_m.saturating_mul(p.cpu_core_hour.micros);
    let mem = r.memory_mi.saturating_mul(p.gib_hour.micros);
    (cpu.saturating_add(499) / 1000).saturating_add(mem.saturating_add(511) / 1024)
}

fn subject_slot(s: Subject) -> usize {
    match s {
        Subject::Service => 0,
        Subject::Store => 1,
        Subject::Topic => 2,
    }
}

fn is_derived(c: &Cause) -> bool {
    matches!(
        c,
        Cause::UsesStore { .. } | Cause::ConsumesTopic { .. } | Cause::Dependency { .. }
    )
}

struct Builder<'a> {
    /// Decisions by name, per subject (service, store, topic).
    by_name: [FxHashMap<Arc<str>, usize>; 3],
    planner: &'a Planner,
    config: &'a Config,
    idx: LayerIdx,
    prices: Prices,
    problem: Problem,
    /// Per entry, its decision.
    decision: Vec<Option<usize>>,
    /// Per entry, its replicas.
    replicas: Vec<u32>,
}

impl Builder<'_> {
    fn entry_decision(&self, name: &str, subject: Subject) -> Option<usize> {
        self.by_name[subject_slot(subject)].get(name).copied()
    }

    fn service(&self, plan: &Plan, e: &Entry) -> (DecisionVar, u32) {
        let doc = self.config.service_doc(&e.name);
        let replicas = doc.and_then(|d| d.min_replicas).unwrap_or(1).max(1);
        let one = price(&self.prices, e.resources);
        let own = one.saturating_mul(u64::from(replicas));
        let mut alts = Vec::new();
        if !e.causes.is_empty() && e.causes.iter().all(is_derived) {
            alts.push(Alternative::new(labels::REUSE, 0, 0));
        }
        alts.push(Alternative::new(labels::OWN, own, replicas));
        if !e.shared_with.is_empty() {
            let k = e.shared_with.len() as u64 + 1;
            let first = e.shared_with.iter().all(|l| **l > *plan.layer);
            let inst = if first { replicas } else { 0 };
            alts.push(Alternative::new(labels::SHARED, own.div_ceil(k), inst));
        }
        let scaled = own.saturating_mul(self.prices.active_fraction.micros) / 1_000_000;
        let mut alt = Alternative::new(labels::SCALED, scaled, replicas);
        if self.config.idle_after_s(self.idx, &e.name).is_none() {
            alt = alt.not_allowed(format!(
                "{} is not set to scale to zero (no idle_after_s)",
                e.name
            ));
        }
        if let Some(obj) = doc.and_then(|d| d.latency_objective_ms) {
            let cold = doc
                .and_then(|d| d.cold_start_ms)
                .unwrap_or(DEFAULT_COLD_START_MS);
            if cold > obj {
                alt = alt.not_allowed(format!(
                    "cold start {cold} ms exceeds the latency objective of {obj} ms ({})",
                    self.config.service_origin(&e.name, "latency_objective_ms")
                ));
            }
        }
        alts.push(alt);
        (
            DecisionVar::new(&*e.name, SubjectKind::Service, alts),
            replicas,
        )
    }

    fn store(&self, e: &Entry) -> DecisionVar {
        let kind = e.kind.as_deref().unwrap_or("");
        let p = &self.prices;
        let migrations: Vec<(String, String, bool)> = e
            .causes
            .iter()
            .filter_map(|c| match c {
                Cause::Migrates {
                    service,
                    migration,
                    origin,
                } => Some((
                    migration.clone(),
                    c.to_string(),
                    self.additive(&origin.layer, service, &e.name, migration),
                )),
                _ => None,
            })
            .collect();
        let mut share = Alternative::new(labels::SHARE, p.share.micros, 0);
        for (_, text, _) in &migrations {
            share = share.not_allowed(text.as_str());
        }
        let natural = Isolation::for_store_kind(kind);
        let mut schema = Alternative::new(labels::SCHEMA, p.per_branch_schema.micros, 0);
        if natural != Isolation::Schema {
            schema = schema.not_allowed(format!("{kind} has no per-branch schemas"));
        }
        let (policy, origin) = self.config.schema_policy(&e.name);
        let at = origin.map_or_else(String::new, |o| format!(": {o}"));
        match policy {
            SchemaPolicy::Always => {}
            SchemaPolicy::Never => {
                schema = schema.not_allowed(format!("{} allows no per-branch schema{at}", e.name));
            }
            SchemaPolicy::Additive => {
                for (m, _, additive) in &migrations {
                    if !additive {
                        schema = schema.not_allowed(format!(
                            "migration {m} is not additive ({} allows per-branch schemas for additive migrations only{at})",
                            e.name
                        ));
                    }
                }
            }
        }
        let mut template = Alternative::new(labels::TEMPLATE, p.database_from_template.micros, 0);
        if natural == Isolation::Instance {
            template = template.not_allowed(format!("{kind} has no databases to copy"));
        }
        if let Some(s) = self.config.store_settings(&e.name) {
            use microstax_config::environments::StoreCopy;
            let mode = self.config.org().origin(&format!("stores.{}.mode", e.name));
            let set = self
                .config
                .org()
                .doc
                .doc
                .stores
                .get(&*e.name)
                .is_some_and(|d| d.mode.is_some());
            if set {
                match s.copy {
                    StoreCopy::Schema => {
                        template = template
                            .not_allowed(format!("stores.{}.mode is schema ({mode})", e.name));
                    }
                    StoreCopy::Database | StoreCopy::DatabaseFromTemplate => {
                        schema = schema.not_allowed(format!(
                            "stores.{}.mode makes databases ({mode})",
                            e.name
                        ));
                    }
                }
            }
        }
        let fork_price = p
            .forked_instance
            .as_ref()
            .map_or_else(|| price(p, e.resources), |f| f.micros);
        let fork = Alternative::new(labels::FORK, fork_price, 1);
        DecisionVar::new(
            &*e.name,
            SubjectKind::Store,
            vec![share, schema, template, fork],
        )
    }

    /// Whether `service`'s migration `name` of `store`, declared in layer `label`, is additive.
    fn additive(&self, label: &str, service: &str, store: &str, name: &str) -> bool {
        self.config
            .layers()
            .find(|l| &*l.label == label)
            .and_then(|l| l.service(service))
            .and_then(|s| {
                s.migrations
                    .iter()
                    .find(|m| m.store == store && m.name == name)
            })
            .is_some_and(|m| m.additive)
    }

    fn topic(&self, e: &Entry) -> DecisionVar {
        let own = Alternative::new(labels::TOPIC, self.prices.per_branch_topic.micros, 0);
        let mut shared = Alternative::new(labels::FORK_CONSUMERS, 0, 0);
        for c in &e.causes {
            if let Cause::Contract { .. } = c {
                shared = shared.not_allowed(format!(
                    "{c}, which baseline consumers of the shared topic must not read"
                ));
            }
        }
        DecisionVar::new(&*e.name, SubjectKind::Topic, vec![own, shared])
    }

    /// The implications the rules' derived forks stand for.
    fn implications(&mut self, plan: &Plan) {
        for (i, e) in plan.entries.iter().enumerate() {
            let Some(d) = self.decision[i] else { continue };
            if e.subject != Subject::Service {
                continue;
            }
            let run: Vec<usize> = self.problem.decisions[d]
                .alternatives
                .iter()
                .enumerate()
                .filter(|(_, a)| &*a.label != labels::REUSE)
                .map(|(k, _)| k)
                .collect();
            for c in &e.causes {
                let (target, subject) = match c {
                    Cause::UsesStore { store, .. } => (store, Subject::Store),
                    Cause::ConsumesTopic { topic, .. } => (topic, Subject::Topic),
                    Cause::Dependency { dependency, .. } => (dependency, Subject::Service),
                    _ => continue,
                };
                let reason = Reason::new(format!("{}: {c}", e.name));
                match self.entry_decision(target, subject) {
                    Some(t) => {
                        let triggers: Vec<usize> = self.problem.decisions[t]
                            .alternatives
                            .iter()
                            .enumerate()
                            .filter(|(_, a)| !matches!(&*a.label, labels::SHARE | labels::REUSE))
                            .map(|(k, _)| k)
                            .collect();
                        for a in triggers {
                            self.problem.constraints.push(Constraint::Requires {
                                when: Choice::new(t, a),
                                then: d,
                                one_of: run.clone(),
                                reason: reason.clone(),
                            });
                        }
                    }
                    None => {
                        // moved in this layer without a choice (a developer endpoint): the
                        // fork is needed whatever is chosen
                        if let Some(r) = self.problem.decisions[d]
                            .alternatives
                            .iter_mut()
                            .find(|a| &*a.label == labels::REUSE)
                        {
                            *r = r.clone().not_allowed(reason.clone());
                        }
                    }
                }
            }
        }
    }

    fn topology(&self, plan: &Plan) -> Topology {
        let cat = &self.planner.catalog;
        let mut nodes: Vec<Node> = Vec::new();
        // the plan lists the services first, in catalog order
        for (i, e) in plan.entries.iter().enumerate() {
            let (cost, instances, stateful, changed) = match e.subject {
                Subject::Service => {
                    let r = self.planner.replicas.get(i).copied().unwrap_or(1);
                    let local = e.decision == Decision::Local;
                    let own = e.decision == Decision::Fork && !e.causes.iter().all(is_derived);
                    let cost = if local {
                        0
                    } else {
                        price(&self.prices, e.resources).saturating_mul(u64::from(r))
                    };
                    (cost, if local { 0 } else { r }, false, own || local)
                }
                Subject::Store => {
                    let cost = self
                        .prices
                        .forked_instance
                        .as_ref()
                        .map_or_else(|| price(&self.prices, e.resources), |f| f.micros);
                    (cost, 1, true, matches!(e.decision, Decision::Isolate(_)))
                }
                Subject::Topic => continue,
            };
            nodes.push(Node {
                name: e.name.clone(),
                cost,
                instances,
                stateful,
                changed,
                calls: Vec::new(),
            });
        }
        let services = cat.len();
        // stores come after the services, in store order
        let mut slot = vec![0usize; cat.stores.len()];
        for (pos, &x) in cat.store_order.iter().enumerate() {
            slot[x as usize] = services + pos;
        }
        for (s, node) in nodes.iter_mut().enumerate().take(services) {
            let mut calls: Vec<usize> = cat.deps[s].iter().map(|&d| d as usize).collect();
            calls.extend(cat.uses[s].iter().map(|&x| slot[x as usize]));
            node.calls = calls;
        }
        Topology { nodes }
    }
}

/// Solve the plan of layer `idx` and write the solver's choice into it. `others`: what the
/// team's other live layers use, when its budget is to be enforced (`None`: ignore budgets).
pub(crate) fn choose(
    planner: &Planner,
    config: &Config,
    idx: LayerIdx,
    plan: &mut Plan,
    others: Option<Usage>,
    quality: super::Quality,
) {
    let mut b = Builder {
        by_name: Default::default(),
        planner,
        config,
        idx,
        prices: config.prices(idx),
        problem: Problem::default(),
        decision: vec![None; plan.entries.len()],
        replicas: vec![1; plan.entries.len()],
    };
    for (i, e) in plan.entries.iter().enumerate() {
        let var = match (e.subject, &e.decision) {
            (Subject::Service, Decision::Fork) => {
                let (v, r) = b.service(plan, e);
                b.replicas[i] = r;
                v
            }
            (Subject::Store, Decision::Isolate(_)) => b.store(e),
            (Subject::Topic, Decision::Isolate(_)) => b.topic(e),
            _ => continue,
        };
        b.decision[i] = Some(b.problem.decisions.len());
        b.problem.decisions.push(var);
    }
    for (e, d) in plan.entries.iter().zip(&b.decision) {
        if let Some(d) = d {
            b.by_name[subject_slot(e.subject)].insert(e.name.clone(), *d);
        }
    }
    b.implications(plan);
    let fixed = super::contracts::constrain(
        config,
        idx,
        &planner.catalog,
        plan,
        &b.decision,
        &mut b.problem,
    );
    let budget = config.budget(idx);
    if let (Some(bu), Some(used)) = (&budget, others) {
        b.problem.budgets.push(Budget {
            name: bu.label.clone(),
            decisions: (0..b.problem.decisions.len()).collect(),
            max_instances: bu.max_instances,
            max_cost: bu.max_cost,
            already_used: used,
        });
    }
    // the baselines are for people; a plan that is only run does without them
    let baselines = match quality {
        super::Quality::Explained => crate::solve::baselines(&b.topology(plan)),
        super::Quality::Optimum => Default::default(),
    };
    let pr = &b.prices;
    let mut prices: Vec<(&'static str, u64, String)> = [
        ("cpu_core_hour", &pr.cpu_core_hour),
        ("gib_hour", &pr.gib_hour),
        ("stores.database_from_template", &pr.database_from_template),
        ("stores.per_branch_schema", &pr.per_branch_schema),
        ("stores.share", &pr.share),
        ("per_branch_topic", &pr.per_branch_topic),
        ("active_fraction", &pr.active_fraction),
    ]
    .into_iter()
    .map(|(n, p)| (n, p.micros, p.origin.to_string()))
    .collect();
    if let Some(f) = &pr.forked_instance {
        prices.push(("stores.forked_instance", f.micros, f.origin.to_string()));
    }
    let mut econ = Economics {
        prices,
        baselines,
        active_fraction_ppm: b.prices.active_fraction.micros,
        ..Economics::default()
    };
    let p = &b.problem;
    let solver = match quality {
        super::Quality::Explained => Solver::default(),
        super::Quality::Optimum => Solver {
            runner_ups: false,
            bindings: false,
            ..Solver::default()
        },
    };
    let solution = match solver.solve(p) {
        Ok(s) => Some(s),
        Err(SolveError::Infeasible(inf)) => {
            let without = inf.cheapest_without_budgets.as_deref().map(|s| {
                let names = (0..p.decisions.len())
                    .map(|d| p.describe(Choice::new(d, s.chosen[d])))
                    .collect();
                (names, s.cost, s.instances)
            });
            econ.refused = Some(Refusal {
                reason: inf.reason.clone(),
                conflicting: inf.describe(p),
                without_budget: without,
            });
            inf.cheapest_without_budgets.map(|s| *s)
        }
        Err(e) => {
            econ.error = Some(e.to_string());
            None
        }
    };
    if !fixed.is_empty() && econ.refused.is_none() {
        econ.refused = Some(Refusal {
            reason: "the routes' contracts cannot all be met: no choice of this branch serves every caller a compatible api".into(),
            conflicting: fixed,
            without_budget: None,
        });
    }
    if let Some(bu) = &budget {
        let used = others.unwrap_or_default();
        let (cost, inst) = solution.as_ref().map_or((0, 0), |s| (s.cost, s.instances));
        econ.budget = Some(BudgetUse {
            team: bu.label.clone(),
            max_instances: bu.max_instances,
            max_cost: bu.max_cost,
            others: used,
            total: Usage {
                instances: used.instances + inst,
                cost: used.cost.saturating_add(cost),
            },
            origin: bu.origin.to_string(),
        });
    }
    if let Some(s) = solution {
        write_back(planner, &b, plan, &s, &mut econ);
    }
    plan.economics = econ;
}

fn write_back(
    planner: &Planner,
    b: &Builder<'_>,
    plan: &mut Plan,
    s: &Solution,
    econ: &mut Economics,
) {
    let p = &b.problem;
    econ.cost = s.cost;
    econ.instances = s.instances;
    for (i, e) in plan.entries.iter_mut().enumerate() {
        let Some(d) = b.decision[i] else { continue };
        let var = &p.decisions[d];
        let alt = &var.alternatives[s.chosen[d]];
        let runner_up = s
            .explained
            .get(d)
            .and_then(|x| x.runner_up)
            .map(|r| Runner {
                label: var.alternatives[r.alternative].label.clone(),
                cost: var.alternatives[r.alternative].cost,
                delta: r.delta,
            });
        e.chosen = Some(Chosen {
            label: alt.label.clone(),
            cost: alt.cost,
            instances: alt.instances,
            reason: s.why(p, d),
            runner_up,
            alternatives: var
                .alternatives
                .iter()
                .map(|a| Offered {
                    label: a.label.clone(),
                    cost: a.cost,
                    instances: a.instances,
                    not_allowed: match &a.allowed {
                        Ok(()) => Vec::new(),
                        Err(r) => r.iter().map(ToString::to_string).collect(),
                    },
                })
                .collect(),
            replicas: b.replicas[i],
        });
        if e.subject == Subject::Store {
            let iso = match &*alt.label {
                labels::SCHEMA => Some(Isolation::Schema),
                labels::TEMPLATE => Some(Isolation::Database),
                labels::FORK => Some(Isolation::Instance),
                _ => None,
            };
            if let Some(iso) = iso {
                e.decision = Decision::Isolate(iso);
                e.cost = planner
                    .cost
                    .store(&e.name, e.kind.as_deref().unwrap_or(""), iso);
            }
        }
    }
    plan.summary.cost = plan
        .entries
        .iter()
        .fold(Resources::ZERO, |acc, e| acc + e.cost);
}
