//! MicroStax planner: the co-located control plane. It compiles validated configs into routing
//! tables (incrementally when one layer changes) and, in later modules, diffs branches against
//! their parents, decides reuse / fork / local with reasons, and publishes tables.

pub mod compile;

pub use compile::{compile, Compiler};
