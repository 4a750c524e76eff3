//! Plans: for one environment (a branch or team layer), one decision per service, store and
//! topic, each with the reasons a person can check and a price. This module owns the plan types
//! ([`Plan`], [`Entry`], [`Summary`]) and [`crate::plan_branch`]; the vocabulary (decisions, causes) is
//! in `decision`, the [`crate::Planner`] in `planner`, the per-layer decision rules in `engine`, the
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

use crate::cost::Resources;
pub use crate::decision::{Cause, Decision, Isolation, Subject, REASON_PATHS};
pub use crate::economy::{Chosen, Economics};
use crate::instance::InstanceKey;
use std::fmt;
use std::sync::Arc;

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
    /// What one instance of it requests (a service's `resources`, a forked store's size),
    /// whatever the decision: the solver and the baselines price it.
    pub resources: Resources,
    /// The solver's choice, for each entry with alternatives (a forked service, an isolated
    /// store or topic).
    pub chosen: Option<Chosen>,
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
    /// The solver's totals, baselines and budget.
    pub economics: Economics,
}

impl Plan {
    /// The entry for a service, store or topic by name.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| &*e.name == name)
    }
}
