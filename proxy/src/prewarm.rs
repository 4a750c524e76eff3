//! Prewarming and upstream maintenance. Before a table that names new upstreams is swapped in
//! (`crate::publish`), the proxy opens a few pooled connections to each and checks that it
//! answers, within a bounded time, so the first request to a new branch pays no connect cost.
//! Each worker pools its own connections, so with per-core workers the probe runs on every
//! worker's runtime; the swap proceeds once each worker has one answer (or the timeout passed),
//! while the remaining connections are still opened in the background. Upstreams that did not answer are
//! marked not ready (requests then follow the route's readiness policy) and are probed again in
//! the background until they answer.

use crate::client::{Reuse, UpstreamClient};
use crate::forward::Proxy;
use crate::upstream::{Readiness, UpstreamState};
use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{header, Request};
use http_body_util::{BodyExt, Either, Empty};
use std::sync::Arc;
use std::time::Duration;

impl Proxy {
    /// Open `connections` pooled connections to `up` (on each worker, if sharded) and mark it
    /// ready if any request is answered within `timeout`. Each worker returns at its first
    /// answer (or the timeout), so the swap waits for one answer per worker, not for all.
    pub(crate) async fn probe(
        &self,
        up: &Arc<UpstreamState>,
        connections: usize,
        timeout: Duration,
    ) -> bool {
        let path: Arc<str> = self.options().prewarm.path.as_str().into();
        let run = || {
            probe_here(
                self.client().clone(),
                up.clone(),
                path.clone(),
                connections,
                timeout,
            )
        };
        let ok = match self.workers() {
            None => run().await,
            Some(workers) => join_all(workers.iter().map(|w| w.spawn(run())))
                .await
                .into_iter()
                .any(|r| matches!(r, Ok(true))),
        };
        up.set_ready(ok);
        ok
    }

    /// Background upkeep: probe not-ready (awake) upstreams of the current table again, and drop the
    /// state of upstreams no table has named for the grace period. Runs until the proxy is
    /// dropped by every other owner.
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let interval = self.options().prewarm.reprobe_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(proxy) = weak.upgrade() else { return };
                let snap = proxy.router().load();
                let opts = &proxy.options().prewarm;
                let waiting: Vec<&Arc<UpstreamState>> = snap
                    .upstreams
                    .iter()
                    // an asleep upstream has no instance to answer: the control plane pushes its
                    // readiness, or it is probed again once marked awake
                    .filter(|u| u.readiness() == Readiness::NotReady && !u.is_asleep())
                    .take(opts.max_upstreams)
                    .collect();
                join_all(waiting.iter().map(|u| proxy.probe(u, 1, opts.timeout))).await;
                proxy.router().registry().sweep(opts.sweep_grace);
            }
        })
    }
}

/// Open `connections` new connections to `up` from the current thread, send one request on
/// each, and read the answers so the connections land in this thread's pool. True as soon as
/// any request is answered; false if none is within `timeout`. The other attempts go on in the
/// background (each bounded by `timeout`), so their connections still reach the pool.
async fn probe_here(
    client: UpstreamClient,
    up: Arc<UpstreamState>,
    path: Arc<str>,
    connections: usize,
    timeout: Duration,
) -> bool {
    let one = move |client: UpstreamClient, up: Arc<UpstreamState>, path: Arc<str>| async move {
        let req = Request::get(&*path)
            .header(header::HOST, &*up.key)
            .header(header::USER_AGENT, "microstax-prewarm")
            .body(Either::Right(Empty::<Bytes>::new()));
        let Ok(req) = req else { return false };
        match client.send_new(&up, req, Reuse::Pool, timeout).await {
            Ok(resp) => {
                // read the (small) body to its end: that returns the connection to the pool
                let _ = tokio::time::timeout(timeout, resp.into_body().collect()).await;
                true
            }
            Err(_) => false,
        }
    };
    let mut attempts: FuturesUnordered<_> = (0..connections.max(1))
        .map(|_| {
            let attempt = one(client.clone(), up.clone(), path.clone());
            tokio::spawn(
                async move { matches!(tokio::time::timeout(timeout, attempt).await, Ok(true)) },
            )
        })
        .collect();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = attempts.next() => match next {
                Some(Ok(true)) => return true,
                Some(_) => {}
                None => return false,
            },
            () = &mut deadline => return false,
        }
    }
}
