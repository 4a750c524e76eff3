//! MicroStax config: the spec. The serde file schema, loading with positions, the layered model
//! (org, team and branch layers), its validation with file, line, field and reason, and the merge
//! with provenance. The compiled routing table it is compiled into lives in `microstax-table`
//! (re-exported here) so that the data plane builds without this crate and its YAML parsers.

pub mod api;
mod catalog;
pub mod economics;
pub mod environments;
pub mod error;
mod lineage;
pub mod load;
pub mod merge;
pub mod model;
mod report;
pub mod schema;
pub mod spans;
mod update;
mod validate_layer;
mod validate_org;
pub mod values;

pub use microstax_table::{names, table};

pub use error::{ConfigError, Diagnostic};
pub use load::{
    load_path, parse_sources, parse_text, read_config, read_sources, ParsedDoc, SourceText, Sources,
};
pub use merge::{Effective, Field, Readiness, Sourced};
pub use microstax_table::{ContextSettings, HostPattern, RoutePolicy, Settings};
pub use microstax_table::{
    LayerId, LayerKind, Route, RouteKind, RoutingTable, ServiceId, UpstreamId,
};
pub use model::{Config, Endpoint, Layer, LayerIdx, Origin, Service};

/// Load and validate a config directory or single file.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    Config::build(load_path(path)?)
}
