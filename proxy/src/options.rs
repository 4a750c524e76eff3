//! Data-plane settings that do not come from the routing table: how new upstreams are
//! prewarmed and kept up, and how long a body may stall. Plain data, read by the proxy,
//! publishing and upkeep.

use std::time::Duration;

/// Data-plane settings that do not come from the routing table.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// How new upstreams are prewarmed before a table naming them is published.
    pub prewarm: PrewarmOptions,
    /// Longest wait for the next chunk of a client's request body (nginx
    /// `client_body_timeout`): between two reads, not for the whole body. Zero: no limit.
    pub request_body_idle_timeout: Duration,
    /// Longest wait for the next chunk of an upstream's response body (nginx
    /// `proxy_read_timeout`): between two reads, not for the whole body. Zero: no limit.
    pub response_body_idle_timeout: Duration,
}

/// Default [`ProxyOptions::request_body_idle_timeout`] and
/// [`ProxyOptions::response_body_idle_timeout`] (nginx's and Envoy's 60 s).
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            prewarm: PrewarmOptions::default(),
            request_body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            response_body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
        }
    }
}

/// Prewarm and maintenance settings.
#[derive(Debug, Clone)]
pub struct PrewarmOptions {
    /// Connections opened to each new upstream.
    pub connections: usize,
    /// Time allowed for a new upstream to answer (its connect timeout included).
    pub timeout: Duration,
    /// Path requested (GET) to check an upstream answers; any HTTP status counts as an answer.
    pub path: String,
    /// Most new upstreams prewarmed per publish; the rest are treated as ready.
    pub max_upstreams: usize,
    /// How often not-ready upstreams are probed again.
    pub reprobe_interval: Duration,
    /// How long the state of an upstream no table names is kept.
    pub sweep_grace: Duration,
}

impl Default for PrewarmOptions {
    fn default() -> Self {
        PrewarmOptions {
            connections: 2,
            timeout: Duration::from_secs(1),
            path: "/".into(),
            max_upstreams: 256,
            reprobe_interval: Duration::from_millis(250),
            sweep_grace: Duration::from_secs(60),
        }
    }
}
