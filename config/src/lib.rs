//! MicroStax config: the layered model (org, team and branch layers), its validation with file,
//! line, field and reason, the merge with provenance, and the compiled routing table type that
//! the planner writes and the proxy reads.

mod catalog;
pub mod error;
pub mod load;
pub mod merge;
pub mod model;
pub mod names;
pub mod schema;
pub mod spans;
pub mod table;

pub use error::{ConfigError, Diagnostic};
pub use load::{
    load_path, parse_sources, parse_text, read_config, read_sources, ParsedDoc, SourceText, Sources,
};
pub use merge::{Effective, Field, Readiness, Sourced};
pub use model::{Config, Endpoint, HostPattern, Layer, LayerIdx, Origin, Service, Settings};
pub use schema::LayerKind;
pub use table::{LayerId, Route, RouteKind, RoutingTable, ServiceId, UpstreamId};

/// Load and validate a config directory or single file.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    Config::build(load_path(path)?)
}
