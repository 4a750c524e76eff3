//! Plans: for one environment (a branch or team layer), one decision per service, store and
//! topic, each with the reasons a person can check and a price. This module owns the public plan
//! types and the [`Planner`] entry points; the per-layer decision rules live in `engine`, the
//! renderings in `render`.
//!
//! # Decisions
//! - **reuse**: the service's effective spec and bindings equal the parent's, so requests go to
//!   the instance of the nearest layer that has one (named in the reason). A layer that changes
//!   only route policy (timeouts, header rules, readiness) still reuses: the proxy applies the
//!   policy in front of the parent's instance.
//! - **fork**: a spec field (image, resources, env, migrations, contracts) or the endpoints
//!   changed, or the service's source paths changed, or a derived rule applies (below).
//! - **local**: the layer sets a developer endpoint; it costs the cluster nothing.
//! - **isolate** (stores and topics): a new schema migration isolates the store (a per-branch
//!   schema or database where the kind allows, else a forked instance); a changed message
//!   contract isolates the topic, so baseline consumers never see the new contract.
//!
//! # Derived forks
//! - every other user of an isolated store is forked: its connection now points at the
//!   branch's copy of the store;
//! - every consumer of an isolated topic is forked: it reads the branch's topic;
//! - "a service whose effective settings change because a dependency moved": a service forks
//!   when one of its env values names (as a whole word, e.g. `http://orders:8080`) a service it
//!   `depends_on` that is forked or local in this layer, since that value must now point at the
//!   branch's instance. A dependency reached through the proxy with the branch context
//!   propagated needs no fork: the proxy routes the call. Derived forks cascade to a fixpoint.
//!
//! # Sharing
//! Each instance has an [`InstanceKey`]: a stable hash of its service, its non-policy fields,
//! its changed source (merge base and blob ids) and the keys of what it is bound to (stores it
//! uses, topics it consumes, services its env references; services referencing each other are
//! hashed together). Equal keys mean one instance can serve both environments; see
//! [`crate::fleet`].

use crate::cost::{CostModel, DefaultCostModel, Resources};
use crate::diff::FieldChange;
use crate::engine::{Base, Engine, LayerPlan, View};
use crate::error::PlanError;
use crate::git::SourceChanges;
use crate::graph::Catalog;
use crate::instance::InstanceKey;
use microstax_config::{Config, Layer, LayerIdx, Origin};
use std::fmt;
use std::sync::Arc;

/// What an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A service of the catalog.
    Service,
    /// A data store.
    Store,
    /// A message topic.
    Topic,
}

impl Subject {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Service => "service",
            Subject::Store => "store",
            Subject::Topic => "topic",
        }
    }
}

/// How a store or topic is isolated for one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// A per-branch schema on the shared server (postgres and its kin).
    Schema,
    /// A per-branch database on the shared server (mysql, where schema means database, mongo).
    Database,
    /// A forked instance of the store (redis and anything unknown).
    Instance,
    /// A per-branch topic on the shared broker.
    Topic,
}

impl Isolation {
    /// The isolation a store kind allows, cheapest first.
    pub fn for_store_kind(kind: &str) -> Isolation {
        match kind.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" | "cockroachdb" | "cockroach" => Isolation::Schema,
            "mysql" | "mariadb" | "mongodb" | "mongo" => Isolation::Database,
            _ => Isolation::Instance,
        }
    }

    /// Words for reasons.
    pub fn describe(self) -> &'static str {
        match self {
            Isolation::Schema => "per-branch schema",
            Isolation::Database => "per-branch database",
            Isolation::Instance => "forked instance",
            Isolation::Topic => "per-branch topic",
        }
    }
}

/// The decision for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Route to the instance of layer `from` (a label such as `team/payments-team`).
    Reuse {
        /// The layer whose instance is reused.
        from: Arc<str>,
    },
    /// A branch-local instance.
    Fork,
    /// A developer endpoint.
    Local,
    /// An isolated store or topic.
    Isolate(Isolation),
}

impl Decision {
    /// `reuse`, `fork`, `local` or `isolate`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Reuse { .. } => "reuse",
            Decision::Fork => "fork",
            Decision::Local => "local",
            Decision::Isolate(_) => "isolate",
        }
    }

    /// Whether the environment needs something of its own.
    pub fn is_moved(&self) -> bool {
        !matches!(self, Decision::Reuse { .. })
    }
}

/// One reason for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A spec or address field changed in the layer.
    Field(FieldChange),
    /// A route policy field changed in the layer (the instance is still reused).
    Policy(FieldChange),
    /// The layer restates values identical to its parent's.
    Restated {
        /// The layer.
        layer: Arc<str>,
    },
    /// Source paths owned by the service changed.
    Source {
        /// The first few changed paths.
        paths: Vec<String>,
        /// How many matched in all.
        total: usize,
        /// The compared range, `base...branch`.
        range: Arc<str>,
    },
    /// A developer endpoint.
    Local {
        /// `host:port`.
        endpoint: String,
        /// Where it is set.
        origin: Origin,
    },
    /// (store) A service migrates the store's schema.
    Migrates {
        /// The migrating service.
        service: Arc<str>,
        /// The migration's name.
        migration: String,
        /// Where it is declared.
        origin: Origin,
    },
    /// (service) It uses a store isolated in this layer.
    UsesStore {
        /// The store.
        store: Arc<str>,
        /// The layer isolating it.
        layer: Arc<str>,
    },
    /// (topic) A producer changed the topic's message contract.
    Contract {
        /// The producer.
        producer: Arc<str>,
        /// The new contract version.
        version: String,
        /// Where it is declared.
        origin: Origin,
    },
    /// (service) It consumes a topic isolated in this layer.
    ConsumesTopic {
        /// The topic.
        topic: Arc<str>,
        /// The layer isolating it.
        layer: Arc<str>,
    },
    /// (service) An env value names a dependency that moved in this layer.
    Dependency {
        /// The dependency.
        dependency: Arc<str>,
        /// The env key whose value names it.
        env: String,
        /// `forked` or `local`.
        moved: &'static str,
        /// The layer it moved in.
        layer: Arc<str>,
    },
}

/// How many changed paths a reason lists.
pub const REASON_PATHS: usize = 3;

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Field(c) => write!(f, "{c}"),
            Cause::Policy(c) => write!(f, "route policy only: {c}"),
            Cause::Restated { layer } => write!(f, "{layer} restates its parent's values"),
            Cause::Source {
                paths,
                total,
                range,
            } => {
                write!(f, "source changed in {range}: {}", paths.join(", "))?;
                if *total > paths.len() {
                    write!(f, " (+{} more)", total - paths.len())?;
                }
                Ok(())
            }
            Cause::Local { endpoint, origin } => {
                write!(f, "developer endpoint {endpoint} set in {origin}")
            }
            Cause::Migrates {
                service,
                migration,
                origin,
            } => write!(f, "{service} migrates schema ({migration}) in {origin}"),
            Cause::UsesStore { store, layer } => write!(f, "uses {store}, isolated in {layer}"),
            Cause::Contract {
                producer,
                version,
                origin,
            } => write!(
                f,
                "{producer} changes its contract to {version} in {origin}"
            ),
            Cause::ConsumesTopic { topic, layer } => {
                write!(f, "consumes {topic}, isolated in {layer}")
            }
            Cause::Dependency {
                dependency,
                env,
                moved,
                layer,
            } => write!(f, "env.{env} references {dependency}, {moved} in {layer}"),
        }
    }
}

/// One line of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Service, store or topic.
    pub subject: Subject,
    /// Its name.
    pub name: Arc<str>,
    /// For stores, the kind (`postgres`, `redis`, ...).
    pub kind: Option<Arc<str>>,
    /// The decision.
    pub decision: Decision,
    /// Why (for reuse: notes such as policy-only changes; the reused layer is in the decision).
    pub causes: Vec<Cause>,
    /// What the decision costs this environment.
    pub cost: Resources,
    /// Content address of the instance this environment uses.
    pub instance: InstanceKey,
    /// Other layers that need the identical instance (filled by
    /// [`Plan::annotate_sharing`]).
    pub shared_with: Vec<Arc<str>>,
}

impl Entry {
    /// The decision column: `reuse`, `fork`, `local`, `isolate (per-branch schema)`.
    pub fn decision_text(&self) -> String {
        match &self.decision {
            Decision::Isolate(i) => format!("isolate ({})", i.describe()),
            d => d.as_str().to_string(),
        }
    }

    /// The reason, with at most `max` causes spelled out.
    pub fn reason(&self, max: usize) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Decision::Reuse { from } = &self.decision {
            parts.push(format!("identical to {from}"));
        }
        parts.extend(self.causes.iter().take(max).map(ToString::to_string));
        let mut out = parts.join("; ");
        if self.causes.len() > max {
            out.push_str(&format!(" (+{} more)", self.causes.len() - max));
        }
        if !self.shared_with.is_empty() {
            let names: Vec<&str> = self.shared_with.iter().map(|s| &**s).collect();
            out.push_str(&format!("; same instance as {}", names.join(", ")));
        }
        out
    }
}

impl fmt::Display for Entry {
    /// `orders: fork - image changed in branch/feature-a (branches/feature-a.yaml:7)`, or for a
    /// store `orders-db: isolate (postgres: per-branch schema) - orders migrates schema ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decision = match (&self.decision, &self.kind) {
            (Decision::Isolate(i), Some(k)) => format!("isolate ({k}: {})", i.describe()),
            _ => self.decision_text(),
        };
        write!(
            f,
            "{}: {} - {}",
            self.name,
            decision,
            self.reason(usize::MAX)
        )
    }
}

/// A plan's size against cloning everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Services in the system.
    pub services: usize,
    /// Services forked.
    pub forked: usize,
    /// Services on a developer endpoint.
    pub local: usize,
    /// Services reused.
    pub reused: usize,
    /// Stores in the system.
    pub stores: usize,
    /// Stores isolated.
    pub stores_isolated: usize,
    /// Topics in the system.
    pub topics: usize,
    /// Topics isolated.
    pub topics_isolated: usize,
    /// What this plan costs.
    pub cost: Resources,
    /// What cloning every service and store would cost.
    pub clone_cost: Resources,
}

impl Summary {
    /// Resources the plan saves against cloning everything.
    pub fn saved(&self) -> Resources {
        self.clone_cost.saturating_sub(self.cost)
    }
}

/// The plan of one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The planned layer's label, e.g. `branch/feature-a`.
    pub layer: Arc<str>,
    /// Its lineage, nearest first, ending at `baseline`.
    pub lineage: Vec<Arc<str>>,
    /// Services (catalog order), then stores, then topics (name order).
    pub entries: Vec<Entry>,
    /// Size and cost.
    pub summary: Summary,
    /// The compared source range and how many paths changed, when source changes were given.
    pub source: Option<(Arc<str>, usize)>,
}

impl Plan {
    /// The entry for a service, store or topic by name.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| &*e.name == name)
    }
}

/// Plans environments of one org catalog. Building it indexes the catalog and addresses the
/// baseline's instances (linear in the number of services); each plan then looks only at the
/// planned layer's lineage, its overrides and what the graph derives from them. Rebuild it when
/// the org layer changes; team and branch changes need no rebuild.
#[derive(Debug, Clone)]
pub struct Planner {
    pub(crate) catalog: Catalog,
    pub(crate) base: Base,
    pub(crate) cost: Arc<dyn CostModel>,
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
        let base = Base::new(config, &catalog, cost.as_ref())?;
        Ok(Planner {
            catalog,
            base,
            cost,
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

    /// Plan the branch or team `branch` of `config`, with the changed source paths if known.
    pub fn plan(
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
            });
        }
    }

    fn store_entries(&self, view: &View<'_>, entries: &mut Vec<Entry>, s: &mut Summary) {
        let target = view.target();
        for &x in &self.catalog.store_order {
            let st = &self.catalog.stores[x as usize];
            s.clone_cost += self.cost.store(&st.name, &st.kind, Isolation::Instance);
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
