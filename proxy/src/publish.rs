//! Publishing a table: bind it to upstream states, prewarm the upstreams no earlier table
//! named (see `crate::prewarm`), then swap the one snapshot in.

use crate::forward::Proxy;
use crate::upstream::UpstreamState;
use futures_util::future::join_all;
use microstax_table::RoutingTable;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReport {
    /// Generation now served.
    pub generation: u64,
    /// Upstreams no earlier table named.
    pub new_upstreams: usize,
    /// New upstreams that answered their prewarm.
    pub ready: usize,
    /// New upstreams that did not answer in time.
    pub not_ready: usize,
    /// Time from the call to the swap.
    pub elapsed: Duration,
}

impl Proxy {
    /// Bind `table`, prewarm its new upstreams, then swap it in. The caller has validated it.
    pub async fn publish(&self, table: Arc<RoutingTable>) -> PublishReport {
        let start = Instant::now();
        let generation = table.generation;
        let staged = self.router().stage(table);
        let opts = &self.options().prewarm;
        let targets: Vec<Arc<UpstreamState>> = staged
            .new_upstreams
            .iter()
            .take(opts.max_upstreams)
            .cloned()
            .collect();
        let outcomes = join_all(
            targets
                .iter()
                .map(|u| self.probe(u, opts.connections, opts.timeout)),
        )
        .await;
        let ready = outcomes.iter().filter(|ok| **ok).count();
        let not_ready = outcomes.len() - ready;
        let metrics = self.router().metrics();
        metrics.prewarm("ok", ready as u64);
        metrics.prewarm("failed", not_ready as u64);
        let new_upstreams = staged.new_upstreams.len();
        self.router().commit(staged);
        let elapsed = start.elapsed();
        metrics.swap_duration.observe(elapsed.as_secs_f64());
        PublishReport {
            generation,
            new_upstreams,
            ready,
            not_ready,
            elapsed,
        }
    }
}
