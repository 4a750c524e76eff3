//! MicroStax planner: the co-located control plane. It compiles validated configs into routing
//! tables (incrementally when one layer changes) and, in later modules, diffs branches against
//! their parents, decides reuse / fork / local with reasons, and publishes tables.

pub mod admin;
pub mod compile;
pub mod control;
pub mod watch;

pub use compile::{compile, Compiler};
pub use control::{Applied, Change, ChangeSource, ControlPlane, TableSink};
pub use watch::{watch, ConfigWatcher, WatchError};
