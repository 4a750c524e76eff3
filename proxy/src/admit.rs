//! Phase 2 of the request path, admission: what happens when the chosen upstream cannot take
//! the request now, because it is asleep (its instance was stopped for idleness) or not ready
//! (not started yet, or not answering its probes). An asleep upstream first gets a wake (sent
//! once per sleep on the bounded wake channel, never blocking); then the route's readiness
//! policy decides: `hold` waits for it (a held request counts against the upstream's bounded
//! hold queue, `Settings::hold_max_requests`, and is bounded in time by the policy's `ms`),
//! `fallback` takes the parent's route, `fail` answers 503 at once. Every such 503 carries
//! `Retry-After`. The fast path (a serving upstream) is two atomic loads.

use crate::forward::{Decision, Proxy};
use crate::reply::LocalReply;
use crate::router::Snapshot;
use crate::upstream::UpstreamState;
use microstax_table::{Readiness, Route, RouteKind};
use prometheus::IntGauge;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An admission refused: the reply to send, and the decision (for metrics).
type Refused<'s> = (LocalReply, Decision<'s>);

impl Proxy {
    /// Admit `d` now, after a wait, on the parent's route, or not at all. A fallback whose
    /// parent's upstream cannot serve either is admitted by the parent route's policy in turn
    /// (its upstream woken if asleep), up the lineage; the baseline ends the walk.
    pub(crate) async fn admit<'s>(
        &self,
        snap: &'s Snapshot,
        mut d: Decision<'s>,
    ) -> Result<Decision<'s>, Refused<'s>> {
        loop {
            let up = d.upstream;
            let asleep = up.is_asleep();
            // only routes above the baseline have a parent to fall back to or a reason to wait
            // for a merely not-ready upstream; an asleep one is woken whatever its route
            if !asleep && (up.is_ready() || d.route.kind == RouteKind::Baseline) {
                return Ok(d);
            }
            if asleep {
                self.wake(up);
            }
            match d.route.policy.readiness {
                // boxed: the wait's state would otherwise enlarge every request's future
                Readiness::Hold { ms } => return Box::pin(self.hold(snap, d, ms)).await,
                Readiness::Fail => {
                    let reason = format!("upstream {} is {}", up.key, state(asleep));
                    return Err((LocalReply::starting(reason), d));
                }
                Readiness::Fallback => match parent_of(snap, &d) {
                    Some((route, upstream)) => {
                        d.route = route;
                        d.upstream = upstream;
                        d.fallback = true;
                    }
                    None => {
                        let reason = format!(
                            "upstream {} is {} and there is no parent route",
                            up.key,
                            state(asleep)
                        );
                        return Err((LocalReply::starting(reason), d));
                    }
                },
            }
        }
    }

    /// Ask the control plane to start `up`'s instance: once per sleep; a full channel gives
    /// the claim back, so a later request asks again.
    fn wake(&self, up: &UpstreamState) {
        if !up.claim_wake() {
            return;
        }
        match self.wake_sender().try_send(up.key.clone()) {
            Ok(()) => self.router().metrics().cold_starts.inc(),
            Err(_) => up.release_wake(),
        }
    }

    /// Hold `d` until its upstream serves (or, on a route with replicas, any of the route's
    /// upstreams: after a wake the request goes to the first replica ready, as Knative's
    /// activator sends it to the first ready pod), within the hold queue's bound and `ms`.
    async fn hold<'s>(
        &self,
        snap: &'s Snapshot,
        mut d: Decision<'s>,
        ms: u64,
    ) -> Result<Decision<'s>, Refused<'s>> {
        let up = d.upstream;
        let asleep = up.is_asleep();
        let max = snap.table.settings.hold_max_requests;
        let metrics = self.router().metrics();
        let Some(held) = Held::enter(up, max, &metrics.held_requests) else {
            metrics.hold_rejected_queue_full.inc();
            let reason = format!(
                "upstream {} is {}: hold queue full ({max} requests held)",
                up.key,
                state(asleep)
            );
            return Err((LocalReply::starting(reason), d));
        };
        let since = Instant::now();
        let waited = tokio::time::timeout(Duration::from_millis(ms), first_serving(snap, &d)).await;
        drop(held);
        match waited {
            Ok(next) => {
                d.upstream = next;
                d.held = Some(since.elapsed());
                Ok(d)
            }
            Err(_) => {
                metrics.hold_rejected_timeout.inc();
                let reason = format!("upstream {} is {} (held {ms} ms)", up.key, state(asleep));
                Err((LocalReply::starting(reason), d))
            }
        }
    }
}

/// The first of `d`'s route's upstreams to serve, its own upstream first (a route with one
/// upstream waits for that one alone).
async fn first_serving<'s>(snap: &'s Snapshot, d: &Decision<'s>) -> &'s Arc<UpstreamState> {
    let up = d.upstream;
    if d.route.upstreams.len() < 2 {
        up.wait_ready().await;
        return up;
    }
    let all: Vec<&'s Arc<UpstreamState>> = std::iter::once(up)
        .chain(
            d.route
                .upstreams
                .iter()
                .filter_map(|&id| snap.upstreams.get(id as usize))
                .filter(|u| u.id != up.id),
        )
        .collect();
    let waits = all.iter().map(|u| Box::pin(u.wait_ready()));
    let ((), i, _) = futures_util::future::select_all(waits).await;
    all.get(i).copied().unwrap_or(up)
}

/// The parent's route of `d`'s route and the upstream it picks, if there is a parent.
fn parent_of<'s>(
    snap: &'s Snapshot,
    d: &Decision<'s>,
) -> Option<(&'s Route, &'s Arc<UpstreamState>)> {
    let r = snap.table.parent_route(d.route)?;
    let u = crate::forward::pick(&r.upstreams).and_then(|id| snap.upstreams.get(id as usize))?;
    Some((r, u))
}

fn state(asleep: bool) -> &'static str {
    if asleep {
        "asleep (starting)"
    } else {
        "not ready"
    }
}

/// One place in an upstream's hold queue, given back on drop (also when the client goes away
/// and the request's future is dropped mid-wait).
struct Held<'a> {
    up: &'a UpstreamState,
    gauge: &'a IntGauge,
}

impl<'a> Held<'a> {
    fn enter(up: &'a UpstreamState, max: u32, gauge: &'a IntGauge) -> Option<Held<'a>> {
        if !up.try_hold(max) {
            return None;
        }
        gauge.inc();
        Some(Held { up, gauge })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.up.unhold();
        self.gauge.dec();
    }
}
