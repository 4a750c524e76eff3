//! Data-plane settings that do not come from the routing table: how new upstreams are
//! prewarmed and kept up. Plain data, read by the proxy, publishing and upkeep.

use std::time::Duration;

/// Data-plane settings that do not come from the routing table.
#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// How new upstreams are prewarmed before a table naming them is published.
    pub prewarm: PrewarmOptions,
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
