//! MicroStax planner: the co-located control plane. It compiles validated configs into routing
//! tables (incrementally when one layer changes), diffs layers against their parents, decides
//! per service reuse / fork / local (and per store and topic, isolate) with reasons and costs,
//! finds instances that branches can share, reads changed source paths from git, explains the
//! effective config and route of one service, and publishes tables as the config changes
//! (file watcher, admin API).

pub mod admin;
mod budget;
pub mod compile;
mod contract_check;
pub mod control;
pub mod cost;
mod decision;
pub mod diff;
pub mod economy;
mod engine;
pub mod environments;
pub mod error;
pub mod etcd;
pub mod explain;
pub mod fleet;
pub mod git;
mod graph;
pub mod instance;
pub mod plan;
mod planner;
mod render;
pub mod solve;
pub mod watch;

pub use compile::{compile, Compiler};
pub use control::{Applied, Change, ChangeSource, ControlPlane, TableSink};
pub use cost::{CostModel, DefaultCostModel, Resources};
pub use decision::{Cause, Decision, Isolation, Subject};
pub use diff::{diff_service, ChangeKind, FieldChange, ServiceDiff};
pub use economy::{Chosen, Economics};
pub use environments::{Environments, Runtime, RuntimeView};
pub use error::PlanError;
pub use explain::{explain, Explanation, RouteView};
pub use fleet::{plan_all, Fleet, LayerSummary, SharedInstance};
pub use git::{source_refs, GitError, PathChange, SourceChanges};
pub use instance::InstanceKey;
pub use plan::{Entry, Plan, Summary};
pub use planner::{plan_branch, Planner};
pub use watch::{build_tolerant, watch, ConfigWatcher, WatchError};
