//! MicroStax proxy: the branch-aware HTTP data plane. It reads routing tables (never the
//! planner), resolves each request's branch context, picks the route and upstream from one
//! atomically loaded snapshot, and forwards with the context propagated.

pub mod access_log;
pub mod activity;
mod admit;
pub mod baggage;
pub mod balance;
pub mod body;
pub mod client;
pub mod context;
pub mod cookie;
pub mod deadline;
pub mod drain;
pub mod edge_metrics;
pub mod forward;
pub mod grpc;
pub mod h1;
pub mod h1server;
pub mod h2pool;
pub mod headers;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod options;
pub mod pool;
pub mod prewarm;
pub mod publish;
pub mod reply;
pub mod router;
pub mod server;
pub mod tls;
pub mod token;
pub mod trust;
pub mod upstream;
pub mod upstream_tls;

pub use access_log::{AccessLog, LogMode, LogSink};
pub use activity::Activity;
pub use body::{ClientBody, UpstreamBody};
pub use context::{BranchName, ContextRules, ContextSource};
pub use drain::{Drain, DrainReport};
pub use edge_metrics::EdgeMetrics;
pub use forward::{ConnInfo, Proxy};
pub use limits::ConnLimits;
pub use metrics::ProxyMetrics;
pub use options::{PrewarmOptions, ProxyOptions};
pub use publish::PublishReport;
pub use reply::ResponseBody;
pub use router::{Router, Snapshot};
pub use server::{
    reuseport_listeners, reuseport_listeners_handover, serve, serve_reporting, serve_sharded,
    ServeError, ServerOptions, Workers,
};
pub use tls::{CertFiles, TlsSettings, TlsTerminator};
pub use token::TokenKeys;
pub use trust::{Cidr, TrustMetrics, TrustMode, TrustPolicy};
