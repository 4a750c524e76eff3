//! The economic layer: choosing the cheapest way to run a branch that keeps its environment
//! reliable, exactly, and saying why.
//!
//! The planner describes each choice it faces as a [`DecisionVar`] with priced
//! [`Alternative`]s (a changed service: own instance, an instance shared with branches of the
//! identical spec, scaled to zero; a store: share, per-branch schema, database from a template,
//! forked instance; a topic: per-branch topic or forking every consumer; replicas), the graph's
//! isolation rules and contract checks as [`Constraint`]s, and team [`Budget`]s. [`solve`]
//! returns the least-cost assignment (ties: fewer instances, then earlier alternatives in
//! decision order) with a [`Binding`] reason and an exact [`RunnerUp`] per decision, or
//! [`SolveError::Infeasible`] with a small conflicting set and the cheapest plan without
//! budgets. Pure: no I/O, no config types, integer costs, deterministic.
//!
//! [`baselines`] prices the simpler rules the plan is compared with. [`brute`] is the
//! exhaustive reference the property tests check the solver against.

mod baseline;
#[doc(hidden)]
pub mod brute;
mod exact;
mod model;
mod problem;
mod search;

pub use baseline::{baselines, Baselines, Node, Topology, Totals};
pub use exact::{
    solve, Binding, Conflict, Explained, Infeasible, RunnerUp, Solution, SolveError, Solver,
};
pub use problem::{
    Alternative, Budget, Choice, Constraint, DecisionVar, Malformed, Problem, Reason, SubjectKind,
    Usage, MAX_ALTERNATIVES,
};
