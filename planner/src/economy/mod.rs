//! The economic layer applied to real plans: the rules (`engine`) say what must be isolated or
//! forked and why; this module turns those needs into a [`crate::solve::Problem`] of priced
//! alternatives (`build`), solves it exactly, and writes the solver's choice back into the plan
//! (the chosen alternative, its cost, the binding reason and the runner-up per entry, the
//! totals against three baselines, the team budget). The plan's decisions are the solver's.
//!
//! Costs are integer micro-units per hour at the layer's [`microstax_config::economics::Prices`].

mod build;
mod contracts;

pub use crate::solve::Usage;
pub(crate) use build::choose;

/// How much of the solver's explanation a plan needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quality {
    /// The exact optimum only (for running plans and counting a team's use).
    Optimum,
    /// The optimum with every binding reason and exact runner-up (for people).
    Explained,
}

use crate::solve::Baselines;
use std::sync::Arc;

/// Labels of the alternatives the planner offers.
pub mod labels {
    /// The service runs its own warm instance.
    pub const OWN: &str = "own-instance";
    /// The service uses an instance shared with branches of the identical spec.
    pub const SHARED: &str = "shared-instance";
    /// The service runs its own instance, stopped while idle.
    pub const SCALED: &str = "scaled-to-zero";
    /// A derived fork is not needed: the parent's instance is reused.
    pub const REUSE: &str = "reuse";
    /// The store is shared with the parent.
    pub const SHARE: &str = "share";
    /// A per-branch schema on the shared server.
    pub const SCHEMA: &str = "per-branch-schema";
    /// A per-branch database from a template on the shared server.
    pub const TEMPLATE: &str = "database-from-template";
    /// A forked store instance.
    pub const FORK: &str = "forked-instance";
    /// A per-branch topic.
    pub const TOPIC: &str = "per-branch-topic";
    /// Fork every consumer of the shared topic instead.
    pub const FORK_CONSUMERS: &str = "fork-consumers";
}

/// One priced alternative as the plan shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// Its label (see [`labels`]).
    pub label: Arc<str>,
    /// Micro-units per hour.
    pub cost: u64,
    /// Instances it runs.
    pub instances: u32,
    /// Why it is not allowed (empty: allowed).
    pub not_allowed: Vec<String>,
}

/// The runner-up of a decision: the cheapest plan with another alternative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runner {
    /// That alternative.
    pub label: Arc<str>,
    /// What that alternative itself costs.
    pub cost: u64,
    /// How much more the whole plan would cost with it.
    pub delta: u64,
}

/// The solver's choice for one entry of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The chosen alternative's label.
    pub label: Arc<str>,
    /// Its cost, micro-units per hour.
    pub cost: u64,
    /// Its instances.
    pub instances: u32,
    /// The binding reason (`per-branch-schema is not allowed: migration 0042 is not additive`).
    pub reason: String,
    /// The runner-up, if another alternative is possible.
    pub runner_up: Option<Runner>,
    /// Every alternative considered.
    pub alternatives: Vec<Offered>,
    /// Replicas of a service (its reliability floor; 1 when it declares none).
    pub replicas: u32,
}

/// A team budget as this plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetUse {
    /// The team, `team/<name>`.
    pub team: Arc<str>,
    /// Its limits.
    pub max_instances: Option<u64>,
    /// Micro-units per hour.
    pub max_cost: Option<u64>,
    /// What the team's other live layers use.
    pub others: Usage,
    /// What the team uses in all with this plan (or with the cheapest plan without the budget,
    /// when the budget cannot hold it).
    pub total: Usage,
    /// Where the budget is declared.
    pub origin: String,
}

/// Why the plan cannot be met within the budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// In words.
    pub reason: String,
    /// The constraints, budgets and facts that conflict, one line each.
    pub conflicting: Vec<String>,
    /// The cheapest plan without the budgets, `name=alternative` per decision, and its cost
    /// and instances.
    pub without_budget: Option<(Vec<String>, u64, u64)>,
}

/// The solver's side of a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Economics {
    /// Total cost of the chosen alternatives, micro-units per hour.
    pub cost: u64,
    /// Instances they run.
    pub instances: u64,
    /// What the simpler rules would cost.
    pub baselines: Baselines,
    /// The team budget counted against, if any.
    pub budget: Option<BudgetUse>,
    /// Set when the budget cannot hold the plan (the entries then show the cheapest plan
    /// without the budget).
    pub refused: Option<Refusal>,
    /// Set when the solver gave no answer (malformed problem or its node limit).
    pub error: Option<String>,
    /// The active fraction used for scale-to-zero (parts per million).
    pub active_fraction_ppm: u64,
    /// The prices the plan was made with: (name, micro-units per hour or parts per million,
    /// where it was set).
    pub prices: Vec<(&'static str, u64, String)>,
}

/// Micro-units as a decimal amount with six digits, trailing zeros trimmed to at least two.
pub fn money(micros: u64) -> String {
    let whole = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let mut f = format!("{frac:06}");
    while f.len() > 2 && f.ends_with('0') {
        f.pop();
    }
    format!("{whole}.{f}")
}

#[cfg(test)]
mod tests {
    use super::money;

    #[test]
    fn money_is_exact() {
        assert_eq!(money(0), "0.00");
        assert_eq!(money(12_500), "0.0125");
        assert_eq!(money(1_500_000), "1.50");
        assert_eq!(money(1), "0.000001");
    }
}
