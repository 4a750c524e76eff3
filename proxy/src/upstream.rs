//! Per-upstream state kept outside the immutable table (identity, readiness, sleep, activity,
//! the held-request count, counters, the connection limit and pending queue, the retry budget,
//! passive outlier ejection), the
//! shared registry that hands the same state to every table naming an upstream, and the
//! connector that applies the route's connect timeout (TCP, then TLS for a TLS upstream: its
//! client is built once with its state, `crate::upstream_tls`). Idle connections live in the
//! per-worker pools of `crate::pool`, keyed by the state's `id`.

use crate::upstream_tls::{TlsClient, UpstreamIo};
use microstax_table::{RoutingTable, Upstream};
use rustc_hash::FxHashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Source of upstream ids: never reused, so a pool entry can never be mistaken for the entry of
/// a later upstream that happens to take the same address.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// State of one upstream endpoint, shared by every table that names it.
#[derive(Debug)]
pub struct UpstreamState {
    /// Unique id of this state (the key of its idle connections in each worker's pool).
    pub id: u64,
    /// `host:port`.
    pub key: Arc<str>,
    /// Its TLS client, when its route asks for TLS (or why none could be built).
    tls: Option<Result<TlsClient, Arc<str>>>,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Failed connection attempts.
    pub connect_errors: AtomicU64,
    /// Requests that timed out.
    pub timeouts: AtomicU64,
    /// Generation of the last table that named this upstream (for the grace-period sweep).
    pub last_seen_generation: AtomicU64,
    ready: AtomicU8,
    /// Its readiness is pushed by the control plane (an executor runs its instance): a refused
    /// connection means the instance is restarting, so requests are held, not failed.
    managed: AtomicBool,
    /// Woken when the upstream may take requests again (ready, or awake).
    became_ready: tokio::sync::Notify,
    /// Stamp (`crate::activity::stamp`) of the last request routed to it; 0: never.
    last_request: AtomicU64,
    /// Requests to it in flight now, and upgraded connections open to it: counted for
    /// executor instances only ([`InUse`]), so that scale to zero never stops one in use.
    in_use: AtomicU32,
    /// The control plane stopped its instance for idleness (scale to zero).
    asleep: AtomicBool,
    /// A wake was sent for this sleep (one per sleep, not one per request).
    wake_requested: AtomicBool,
    /// Requests waiting for it to become ready (bounded by `Settings::hold_max_requests`).
    held: AtomicU32,
    /// HTTP/1.1 connections open to it, over all workers (bounded by the route's
    /// `max_connections`).
    conns: AtomicU32,
    /// Of those, the ones being opened (bounded by [`MAX_CONNECTING`]).
    connecting: AtomicU32,
    /// Requests waiting for a connection (bounded by the route's `max_pending`; the low 32
    /// bits), and the lowest connection limit (`max_connections`) any of them has had since
    /// none waited (the high 32 bits; `u32::MAX` while none waits). One word, so that the
    /// queue emptying and a request joining it cannot lose each other's update.
    pending: AtomicU64,
    /// Woken when a connection to it closes or has finished opening.
    freed: tokio::sync::Notify,
    /// Retries allowed in the current window (see [`UpstreamState::try_retry`]).
    budget: RetryBudget,
    /// Failures (connect errors, 5xx) since its last success.
    consecutive_failures: AtomicU32,
    /// Stamp until which passive outlier detection ejected it; 0: not ejected.
    ejected_until: AtomicU64,
    /// Times it was ejected (each ejection lasts longer).
    ejections: AtomicU32,
    /// Bumped when a table names it again after one that did not: pooled connections opened
    /// before are not reused (the address may now be another instance's).
    epoch: AtomicU32,
}

/// Most connections opened to one upstream at the same time: a burst on a cold pool opens them
/// a few at a time and the rest of its requests wait for those (they are reused as soon as a
/// response ends), rather than sending hundreds of SYNs at a listen backlog of 128 whose
/// overflow the kernel drops (then retries after 1 s).
pub const MAX_CONNECTING: u32 = 16;
/// Consecutive failures (connect errors or 5xx answers) that eject an upstream from its routes'
/// load balancing.
pub const EJECT_AFTER_FAILURES: u32 = 5;
/// How long a first ejection lasts; the n-th lasts n times as long, up to [`MAX_EJECTION`].
pub const BASE_EJECTION: Duration = Duration::from_secs(10);
/// Longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Retries allowed per window beyond the ratio (linkerd's `min_retries_per_second` is 10).
pub const MIN_RETRIES_PER_WINDOW: u64 = 10;
/// One retry per this many requests in the window (20%, linkerd's `retry_ratio`).
pub const REQUESTS_PER_RETRY: u64 = 5;
/// Length of a retry budget window, in milliseconds.
const BUDGET_WINDOW_MS: u64 = 1_000;

/// The retry budget of one upstream: in each one-second window, at most one retry per
/// [`REQUESTS_PER_RETRY`] requests sent in it, plus [`MIN_RETRIES_PER_WINDOW`]. Kept on the
/// request counter the upstream has anyway: only a retry touches the budget's own fields.
#[derive(Debug, Default)]
struct RetryBudget {
    /// Window number (stamp / window length) the fields below are for.
    window: AtomicU64,
    /// The upstream's request count when the window began.
    base: AtomicU64,
    /// Retries spent in the window.
    spent: AtomicU64,
}

/// A request (from its start to the end of its response body) or a tunnel using an upstream:
/// counted in [`UpstreamState::in_use`] while it lives, and the upstream's last request is
/// stamped again when it ends, so the control plane's scale to zero sees a long request or an
/// open WebSocket as activity (Knative counts in-flight requests the same way). Taken only for
/// an executor's instances (managed upstreams, the only ones that scale to zero): a baseline
/// or declared endpoint pays nothing.
#[derive(Debug)]
pub(crate) struct InUse(Arc<UpstreamState>);

impl InUse {
    /// Count a use of `up` when it is an executor's instance.
    #[inline]
    pub(crate) fn of(up: &Arc<UpstreamState>) -> Option<InUse> {
        up.is_managed().then(|| {
            up.in_use.fetch_add(1, Ordering::Relaxed);
            InUse(up.clone())
        })
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0
            .touch(crate::activity::stamp(std::time::Instant::now()));
        self.0.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A claim on a connection to an upstream (counted in its open connections) while it is
/// being opened and then while it is open: dropped when the connection closes.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    up: Arc<UpstreamState>,
    opening: bool,
}

impl ConnSlot {
    /// The upstream it counts against.
    pub(crate) fn upstream(&self) -> &Arc<UpstreamState> {
        &self.up
    }

    /// The connection is open: it no longer counts against the connect concurrency.
    pub(crate) fn opened(&mut self) {
        if std::mem::take(&mut self.opening) {
            self.up.connecting.fetch_sub(1, Ordering::AcqRel);
            self.up.freed.notify_waiters();
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if self.opening {
            self.up.connecting.fetch_sub(1, Ordering::AcqRel);
        }
        self.up.conns.fetch_sub(1, Ordering::AcqRel);
        self.up.freed.notify_waiters();
    }
}

/// A request counted in an upstream's pending queue.
#[derive(Debug)]
pub(crate) struct PendingSlot<'a>(&'a UpstreamState);

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        // the last one out forgets the waiters' lowest limit
        let _ = self
            .0
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (n, limit) = unpack_pending(v);
                let n = n.saturating_sub(1);
                Some(pack_pending(n, if n == 0 { u32::MAX } else { limit }))
            });
    }
}

/// The pending word: requests waiting and their lowest connection limit.
const fn pack_pending(waiting: u32, limit: u32) -> u64 {
    (limit as u64) << 32 | waiting as u64
}

/// Requests waiting and their lowest connection limit, from the pending word.
const fn unpack_pending(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

/// Readiness of an upstream as far as the proxy knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Never probed (e.g. named by the first table): treated as ready.
    Unknown,
    /// Answered a probe.
    Ready,
    /// Did not answer its last probe.
    NotReady,
}

impl UpstreamState {
    #[cfg(test)]
    pub(crate) fn new(key: Arc<str>) -> UpstreamState {
        UpstreamState::with_tls(key, None)
    }

    /// The state of table upstream `u`, with its TLS client built now.
    fn of(u: &Upstream) -> UpstreamState {
        let tls = u.tls.as_ref().map(|t| {
            TlsClient::new(t, &u.authority).map_err(|why| {
                tracing::warn!(upstream = %u.authority, error = %why, "upstream tls unusable");
                Arc::from(why)
            })
        });
        UpstreamState::with_tls(u.authority.clone(), tls)
    }

    fn with_tls(key: Arc<str>, tls: Option<Result<TlsClient, Arc<str>>>) -> UpstreamState {
        UpstreamState {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            key,
            tls,
            requests: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            last_seen_generation: AtomicU64::new(0),
            ready: AtomicU8::new(0),
            managed: AtomicBool::new(false),
            became_ready: tokio::sync::Notify::new(),
            last_request: AtomicU64::new(0),
            in_use: AtomicU32::new(0),
            asleep: AtomicBool::new(false),
            wake_requested: AtomicBool::new(false),
            held: AtomicU32::new(0),
            conns: AtomicU32::new(0),
            connecting: AtomicU32::new(0),
            pending: AtomicU64::new(pack_pending(0, u32::MAX)),
            freed: tokio::sync::Notify::new(),
            budget: RetryBudget::default(),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            epoch: AtomicU32::new(0),
        }
    }

    /// The pool epoch: connections pooled under another epoch are not reused.
    #[inline]
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// HTTP/1.1 connections open to it now (all workers), and requests waiting for one.
    pub fn connections(&self) -> (u32, u32) {
        (
            self.conns.load(Ordering::Relaxed),
            unpack_pending(self.pending.load(Ordering::Relaxed)).0,
        )
    }

    /// Whether requests wait for a connection to it that they cannot open: as many are open as
    /// the lowest limit among them allows, so only a connection closing makes room. (Below
    /// it, they wait for connects in progress and then open their own.)
    pub(crate) fn waiters_at_limit(&self) -> bool {
        let (waiting, limit) = unpack_pending(self.pending.load(Ordering::Acquire));
        waiting > 0 && self.conns.load(Ordering::Acquire) >= limit
    }

    /// Claim a new connection, unless `max` are open or [`MAX_CONNECTING`] are being opened.
    pub(crate) fn try_open(self: &Arc<Self>, max: u32) -> Option<ConnSlot> {
        let claim = |n: &AtomicU32, max: u32| {
            n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v < max).then_some(v + 1)
            })
            .is_ok()
        };
        if !claim(&self.conns, max) {
            return None;
        }
        if !claim(&self.connecting, MAX_CONNECTING) {
            self.conns.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnSlot {
            up: self.clone(),
            opening: true,
        })
    }

    /// Whether [`UpstreamState::try_open`] with `max` would find room now.
    pub(crate) fn has_room(&self, max: u32) -> bool {
        self.conns.load(Ordering::Acquire) < max
            && self.connecting.load(Ordering::Acquire) < MAX_CONNECTING
    }

    /// Claim a new connection whatever the limits (prewarming opens a fixed few).
    pub(crate) fn open_unbounded(self: &Arc<Self>) -> ConnSlot {
        self.conns.fetch_add(1, Ordering::AcqRel);
        self.connecting.fetch_add(1, Ordering::AcqRel);
        ConnSlot {
            up: self.clone(),
            opening: true,
        }
    }

    /// Count a request whose route allows `max_connections` in the pending queue, unless
    /// `max` wait already.
    pub(crate) fn try_queue(&self, max: u32, max_connections: u32) -> Option<PendingSlot<'_>> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (n, limit) = unpack_pending(v);
                (n < max).then(|| pack_pending(n + 1, limit.min(max_connections)))
            })
            .ok()
            .map(|_| PendingSlot(self))
    }

    /// A future woken when a connection to it closes or finishes opening (the caller enables
    /// it before it looks again, so no event is missed).
    pub(crate) fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Spend one retry from the budget at `stamp` (`crate::activity::stamp`), if it allows one.
    pub(crate) fn try_retry(&self, stamp: u64) -> bool {
        let b = &self.budget;
        let window = stamp / BUDGET_WINDOW_MS;
        let requests = self.requests.load(Ordering::Relaxed);
        let current = b.window.load(Ordering::Acquire);
        if current != window
            && b.window
                .compare_exchange(current, window, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.base.store(requests, Ordering::Release);
            b.spent.store(0, Ordering::Release);
        }
        let sent = requests.saturating_sub(b.base.load(Ordering::Acquire));
        let allowed = sent / REQUESTS_PER_RETRY + MIN_RETRIES_PER_WINDOW;
        b.spent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s < allowed).then_some(s + 1)
            })
            .is_ok()
    }

    /// Whether passive outlier detection has it ejected at `stamp` (an ejection past its time
    /// ends here: the upstream returns). Returns `(ejected, returned)`.
    pub(crate) fn ejected_at(&self, stamp: u64) -> (bool, bool) {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return (false, false);
        }
        if stamp < until {
            return (true, false);
        }
        let returned = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if returned {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        (false, returned)
    }

    /// Whether it is ejected now (for views and tests).
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// Whether its last exchange failed (a failure streak is running).
    #[inline]
    pub(crate) fn failing(&self) -> bool {
        self.consecutive_failures.load(Ordering::Relaxed) != 0
    }

    /// Record a success: the failure streak ends (written only when there was one).
    #[inline]
    pub(crate) fn succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Record a failure at `stamp`; true when it ejects the upstream (the caller made sure it is
    /// not its route's last serving upstream).
    pub(crate) fn failed(&self, stamp: u64, may_eject: bool) -> bool {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < EJECT_AFTER_FAILURES || !may_eject {
            return false;
        }
        let times = self.ejections.load(Ordering::Relaxed).saturating_add(1);
        let length = BASE_EJECTION.saturating_mul(times).min(MAX_EJECTION);
        let until = stamp.saturating_add(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
        let ejected = self
            .ejected_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if ejected {
            self.ejections.store(times, Ordering::Relaxed);
        }
        ejected
    }

    /// Current readiness.
    pub fn readiness(&self) -> Readiness {
        match self.ready.load(Ordering::Acquire) {
            1 => Readiness::Ready,
            2 => Readiness::NotReady,
            _ => Readiness::Unknown,
        }
    }

    /// Whether requests may go to this upstream now.
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) != 2
    }

    /// Record a probe outcome; waking requests held for this upstream when it becomes ready.
    pub fn set_ready(&self, ready: bool) {
        self.ready
            .store(if ready { 1 } else { 2 }, Ordering::Release);
        if ready {
            self.became_ready.notify_waiters();
        }
    }

    /// Mark its readiness as pushed by the control plane (see the field).
    pub(crate) fn set_managed(&self) {
        self.managed.store(true, Ordering::Relaxed);
    }

    /// Whether the control plane pushes its readiness.
    #[inline]
    pub(crate) fn is_managed(&self) -> bool {
        self.managed.load(Ordering::Relaxed)
    }

    /// Whether its instance was stopped for idleness.
    #[inline]
    pub fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::Acquire)
    }

    /// Whether requests may go to it now: ready and awake.
    #[inline]
    pub fn is_serving(&self) -> bool {
        self.is_ready() && !self.is_asleep()
    }

    /// Mark the instance stopped (`true`: it is also not ready until a probe or the control
    /// plane says so) or started again (`false`). Either way a new sleep may send a new wake.
    pub fn set_asleep(&self, asleep: bool) {
        if asleep {
            self.ready.store(2, Ordering::Release);
        }
        self.asleep.store(asleep, Ordering::Release);
        self.wake_requested.store(false, Ordering::Release);
        self.became_ready.notify_waiters();
    }

    /// Claim the one wake of this sleep: true for the first caller only.
    pub(crate) fn claim_wake(&self) -> bool {
        !self.wake_requested.swap(true, Ordering::AcqRel)
    }

    /// Give the claim back (the wake could not be sent), so a later request sends it.
    pub(crate) fn release_wake(&self) {
        self.wake_requested.store(false, Ordering::Release);
    }

    /// Record a request at `stamp`. Written only when the stamp moved (at most once per
    /// millisecond and core), so a busy upstream's line is not bounced between cores.
    #[inline]
    pub(crate) fn touch(&self, stamp: u64) {
        if self.last_request.load(Ordering::Relaxed) != stamp {
            self.last_request.store(stamp, Ordering::Relaxed);
        }
    }

    /// Requests to it in flight now, and upgraded connections (tunnels) open to it; only
    /// counted for an executor's instances (a request's `InUse` guard).
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// When the last request was routed to it (millisecond resolution); `None`: never.
    pub fn last_request(&self) -> Option<Instant> {
        crate::activity::instant_of(self.last_request.load(Ordering::Relaxed))
    }

    /// Requests held for it now.
    pub fn held(&self) -> u32 {
        self.held.load(Ordering::Relaxed)
    }

    /// Count one more held request, unless `max` are held already.
    pub(crate) fn try_hold(&self, max: u32) -> bool {
        let before = self.held.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// A held request left (released, timed out or cancelled).
    pub(crate) fn unhold(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }

    /// Wait until the upstream is ready and awake (the caller bounds the wait).
    pub async fn wait_ready(&self) {
        loop {
            let notified = self.became_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_serving() {
                return;
            }
            notified.await;
        }
    }
}

/// An upstream's state and when a published table last named it.
type Entry = (Arc<UpstreamState>, Instant);

/// What an admin view shows of one upstream (`GET /upstreams`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamView {
    /// `host:port`.
    pub authority: Arc<str>,
    /// `ready`, `not ready` or `unknown` (never probed nor pushed).
    pub readiness: &'static str,
    /// Its instance is scaled to zero.
    pub asleep: bool,
    /// Passive outlier detection has it out of the balancing now.
    pub ejected: bool,
    /// Times it was ejected.
    pub ejections: u32,
    /// Failures in a row (connect errors, resets, 5xx) since its last success.
    pub consecutive_failures: u32,
    /// Open and connecting HTTP/1.1 connections (all workers).
    pub connections: (u32, u32),
    /// Requests sent, connect errors, timeouts (since it was first named).
    pub requests: u64,
    /// Connect errors.
    pub connect_errors: u64,
    /// Timeouts.
    pub timeouts: u64,
    /// Requests held now while it starts.
    pub held: u32,
}

impl UpstreamState {
    /// A view of the state now (for the admin API).
    pub fn view(&self) -> UpstreamView {
        UpstreamView {
            authority: self.key.clone(),
            readiness: match self.readiness() {
                Readiness::Ready => "ready",
                Readiness::NotReady => "not ready",
                Readiness::Unknown => "unknown",
            },
            asleep: self.is_asleep(),
            ejected: self.is_ejected(),
            ejections: self.ejections.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            connections: self.connections(),
            requests: self.requests.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            held: self.held(),
        }
    }
}

/// All upstream states known to a proxy, by table upstream (address and TLS settings); touched
/// only when tables are published.
#[derive(Debug, Default)]
pub struct Registry {
    states: Mutex<FxHashMap<Upstream, Entry>>,
    /// Generation of the table bound last.
    last_bound: AtomicU64,
}

impl Registry {
    /// The states of `table`'s upstreams, indexed like `table.upstreams`, and the indexes of
    /// the ones created by this call (new upstreams, to prewarm).
    pub fn bind(&self, table: &RoutingTable) -> (Box<[Arc<UpstreamState>]>, Vec<usize>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let previous = self.last_bound.swap(table.generation, Ordering::Relaxed);
        let mut created = Vec::new();
        let bound = table
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let entry = states.entry(u.clone()).or_insert_with(|| {
                    created.push(i);
                    (Arc::new(UpstreamState::of(u)), now)
                });
                entry.1 = now;
                let seen = entry
                    .0
                    .last_seen_generation
                    .swap(table.generation, Ordering::Relaxed);
                if seen != previous && seen != table.generation {
                    // named again after a table that did not name it: what listens there now
                    // may be another instance, so its idle connections are not reused
                    entry.0.epoch.fetch_add(1, Ordering::Relaxed);
                }
                entry.0.clone()
            })
            .collect();
        (bound, created)
    }

    /// Drop the states that no snapshot has held for longer than `grace` (a state still in use
    /// has references besides the registry's). Returns how many were dropped.
    pub fn sweep(&self, grace: Duration) -> usize {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let before = states.len();
        let now = Instant::now();
        states.retain(|_, (state, seen)| {
            if Arc::strong_count(state) > 1 {
                *seen = now;
            }
            now.duration_since(*seen) <= grace
        });
        before - states.len()
    }

    /// The state of `authority`, if a table names it (or named it within the grace period);
    /// the plain one when it is named both with and without TLS.
    pub fn get(&self, authority: &str) -> Option<Arc<UpstreamState>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let plain = Upstream {
            authority: authority.into(),
            tls: None,
        };
        states
            .get(&plain)
            .or_else(|| {
                states
                    .iter()
                    .find(|(u, _)| &*u.authority == authority)
                    .map(|(_, e)| e)
            })
            .map(|(s, _)| s.clone())
    }

    /// Every upstream state held, sorted by authority (for the admin API; takes the registry's
    /// lock, which the request path never does).
    pub fn views(&self) -> Vec<UpstreamView> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<UpstreamView> = states.values().map(|(s, _)| s.view()).collect();
        out.sort_by(|a, b| a.authority.cmp(&b.authority));
        out
    }

    /// Number of upstream states held.
    pub fn len(&self) -> usize {
        self.states.lock().map_or(0, |s| s.len())
    }

    /// Whether no upstream state is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a connection to an upstream could not be opened. Retrying is safe: nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The upstream did not accept within its connect timeout.
    #[error("connect to {upstream} timed out after {after:?}")]
    TimedOut {
        /// `host:port`.
        upstream: Arc<str>,
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection failed (refused, unreachable, name not resolved, ...).
    #[error("connect to {upstream} failed")]
    Io {
        /// `host:port`.
        upstream: Arc<str>,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// TCP connected but TLS did not: the handshake failed (the certificate did not verify,
    /// no common version or protocol) or the upstream's TLS settings are unusable.
    #[error("tls to {upstream} failed: {reason}")]
    Tls {
        /// `host:port`.
        upstream: Arc<str>,
        /// Why, as rustls says it (e.g. `invalid peer certificate: UnknownIssuer`).
        reason: Arc<str>,
    },
}

/// Connector for upstream connections: resolves `host:port`, applies the connect timeout the
/// caller's route gives (to the TCP connect and the TLS handshake together), sets TCP_NODELAY,
/// and runs TLS for a TLS upstream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connector;

impl Connector {
    /// Open a connection to `up` within `timeout` (the route's `connect_timeout`, taken from
    /// the request's own snapshot); for a TLS upstream, ALPN offers `h2` when `h2`, else
    /// `http/1.1`.
    pub async fn connect(
        &self,
        up: &UpstreamState,
        timeout: Duration,
        h2: bool,
    ) -> Result<UpstreamIo, ConnectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let tcp = self.connect_tcp(up, timeout).await?;
        let tls = match &up.tls {
            None => return Ok(UpstreamIo::Plain(tcp)),
            Some(Ok(c)) => c,
            Some(Err(why)) => {
                return Err(ConnectError::Tls {
                    upstream: up.key.clone(),
                    reason: why.clone(),
                })
            }
        };
        match tokio::time::timeout_at(deadline, tls.handshake(tcp, h2)).await {
            Ok(Ok(s)) => Ok(UpstreamIo::Tls(Box::new(s))),
            Ok(Err(e)) => Err(ConnectError::Tls {
                upstream: up.key.clone(),
                reason: e.to_string().into(),
            }),
            Err(_) => Err(ConnectError::TimedOut {
                upstream: up.key.clone(),
                after: timeout,
            }),
        }
    }

    async fn connect_tcp(
        &self,
        up: &UpstreamState,
        timeout: Duration,
    ) -> Result<TcpStream, ConnectError> {
        let io_error = |source| ConnectError::Io {
            upstream: up.key.clone(),
            source,
        };
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(&*up.key)).await {
            Ok(r) => r.map_err(io_error)?,
            Err(_) => {
                return Err(ConnectError::TimedOut {
                    upstream: up.key.clone(),
                    after: timeout,
                })
            }
        };
        // requests and small responses go out at once rather than waiting for an ACK
        stream.set_nodelay(true).map_err(io_error)?;
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_is_timed_longer_each_time_and_never_without_another_host() {
        let u = UpstreamState::new("127.0.0.1:1".into());
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            assert!(!u.failed(1_000, true));
        }
        // the last host of a route is never ejected, however often it fails
        assert!(!u.failed(1_000, false));
        assert!(!u.is_ejected());
        assert!(u.failed(1_000, true));
        assert!(u.is_ejected());
        let first = u64::try_from(BASE_EJECTION.as_millis()).unwrap_or(u64::MAX);
        assert_eq!(u.ejected_at(1_000 + first - 1), (true, false));
        // its time is up: it returns, with a clean streak
        assert_eq!(u.ejected_at(1_000 + first), (false, true));
        assert!(!u.is_ejected());
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            assert!(!u.failed(50_000, true));
        }
        assert!(u.failed(50_000, true));
        // the second ejection lasts twice as long
        assert_eq!(u.ejected_at(50_000 + 2 * first - 1), (true, false));
        assert_eq!(u.ejected_at(50_000 + 2 * first), (false, true));
        u.succeeded();
    }

    #[test]
    fn retry_budget_is_a_fifth_of_the_window_plus_a_floor() {
        let u = UpstreamState::new("127.0.0.1:1".into());
        u.requests.store(100, Ordering::Relaxed);
        // the first window starts at 100 requests: only the floor is left
        let granted = (0..100).filter(|_| u.try_retry(5_000)).count() as u64;
        assert_eq!(granted, MIN_RETRIES_PER_WINDOW);
        // 50 more requests in the window: 10 more retries
        u.requests.store(150, Ordering::Relaxed);
        let more = (0..100).filter(|_| u.try_retry(5_500)).count() as u64;
        assert_eq!(more, 50 / REQUESTS_PER_RETRY);
        // a new window starts afresh
        let next = (0..100).filter(|_| u.try_retry(6_000)).count() as u64;
        assert_eq!(next, MIN_RETRIES_PER_WINDOW);
    }

    #[test]
    fn limits_count_connections_and_pending_requests() {
        let u = Arc::new(UpstreamState::new("127.0.0.1:1".into()));
        let a = u.try_open(2).expect("first");
        let mut b = u.try_open(2).expect("second");
        assert!(u.try_open(2).is_none());
        b.opened();
        drop(a);
        assert_eq!(u.connections(), (1, 0));
        let q = u.try_queue(1, 2).expect("queued");
        assert!(u.try_queue(1, 2).is_none());
        assert_eq!(u.connections(), (1, 1));
        drop((q, b));
        assert_eq!(u.connections(), (0, 0));
    }
}
