//! Per-upstream state kept outside the immutable table (identity, readiness, sleep, activity,
//! the held-request count, counters), the
//! shared registry that hands the same state to every table naming an upstream, and the TCP
//! connector that applies the route's connect timeout. Idle connections live in the
//! per-worker pools of `crate::pool`, keyed by the state's `id`.

use microstax_table::RoutingTable;
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
    /// Requests sent.
    pub requests: AtomicU64,
    /// Failed connection attempts.
    pub connect_errors: AtomicU64,
    /// Requests that timed out.
    pub timeouts: AtomicU64,
    /// Generation of the last table that named this upstream (for the grace-period sweep).
    pub last_seen_generation: AtomicU64,
    ready: AtomicU8,
    /// Woken when the upstream may take requests again (ready, or awake).
    became_ready: tokio::sync::Notify,
    /// Stamp (`crate::activity::stamp`) of the last request routed to it; 0: never.
    last_request: AtomicU64,
    /// The control plane stopped its instance for idleness (scale to zero).
    asleep: AtomicBool,
    /// A wake was sent for this sleep (one per sleep, not one per request).
    wake_requested: AtomicBool,
    /// Requests waiting for it to become ready (bounded by `Settings::hold_max_requests`).
    held: AtomicU32,
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
    fn new(key: Arc<str>) -> UpstreamState {
        UpstreamState {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            key,
            requests: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            last_seen_generation: AtomicU64::new(0),
            ready: AtomicU8::new(0),
            became_ready: tokio::sync::Notify::new(),
            last_request: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            wake_requested: AtomicBool::new(false),
            held: AtomicU32::new(0),
        }
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

/// All upstream states known to a proxy; touched only when tables are published.
#[derive(Debug, Default)]
pub struct Registry {
    states: Mutex<FxHashMap<Arc<str>, Entry>>,
}

impl Registry {
    /// The states of `table`'s upstreams, indexed like `table.upstreams`, and the indexes of
    /// the ones created by this call (new upstreams, to prewarm).
    pub fn bind(&self, table: &RoutingTable) -> (Box<[Arc<UpstreamState>]>, Vec<usize>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut created = Vec::new();
        let bound = table
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let entry = states.entry(u.authority.clone()).or_insert_with(|| {
                    created.push(i);
                    (Arc::new(UpstreamState::new(u.authority.clone())), now)
                });
                entry.1 = now;
                entry
                    .0
                    .last_seen_generation
                    .store(table.generation, Ordering::Relaxed);
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

    /// The state of `authority`, if a table names it (or named it within the grace period).
    pub fn get(&self, authority: &str) -> Option<Arc<UpstreamState>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.get(authority).map(|(s, _)| s.clone())
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
}

/// TCP connector for upstream connections: resolves `host:port`, applies the connect timeout
/// the caller's route gives, and sets TCP_NODELAY.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connector;

impl Connector {
    /// Open a TCP connection to `up` within `timeout` (the route's `connect_timeout`, taken from
    /// the request's own snapshot).
    pub async fn connect(
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
