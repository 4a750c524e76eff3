//! MicroStax planner: the co-located control plane. It compiles validated configs into routing
//! tables (incrementally when one layer changes) and diffs layers against their parents.

pub mod compile;
pub mod diff;

pub use compile::{compile, Compiler};
pub use diff::{diff_service, ChangeKind, FieldChange, ServiceDiff};
