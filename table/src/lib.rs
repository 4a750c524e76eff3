//! The compiled routing table: the contract between the planner (writer) and the proxy (reader).
//! Plain data only: no file format, no serde types of the config schema, no JSON. The config
//! crate converts its validated model into these types; the proxy depends on this crate alone, so
//! the data plane builds without any YAML parser.

pub mod kind;
pub mod names;
pub mod policy;
pub mod settings;
pub mod table;

pub use kind::{LayerKind, RouteKind};
pub use policy::{Readiness, RoutePolicy, UpstreamProtocol, UpstreamTls};
pub use settings::{ContextSettings, HostPattern, Settings};
pub use table::{
    LayerId, LayerRoutes, Route, RoutingTable, ServiceId, ServiceIndex, Upstream, UpstreamId,
    BASELINE_ID,
};
