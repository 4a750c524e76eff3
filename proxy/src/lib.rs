//! MicroStax proxy: the branch-aware HTTP data plane. It reads routing tables (never the
//! planner), resolves each request's branch context, picks the route and upstream from one
//! atomically loaded snapshot, and forwards with the context propagated.

pub mod baggage;
pub mod client;
pub mod context;
pub mod cookie;
pub mod deadline;
pub mod forward;
pub mod headers;
pub mod metrics;
pub mod pool;
pub mod prewarm;
pub mod router;
pub mod server;
pub mod upstream;

pub use context::{BranchName, ContextRules, ContextSource};
pub use forward::{ConnInfo, Proxy, ProxyOptions};
pub use metrics::ProxyMetrics;
pub use prewarm::{PrewarmOptions, PublishReport};
pub use router::{Router, Snapshot};
pub use server::{reuseport_listeners, serve, serve_sharded, ServeError, ServerOptions, Workers};
