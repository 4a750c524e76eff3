//! Per-worker pools of idle HTTP/1.1 upstream connections. Each thread keeps its own idle
//! stacks in a thread-local map keyed by upstream id: a worker is one thread driving one
//! current-thread runtime, so taking and returning a connection costs no lock and no atomic
//! operation, and a connection is only ever driven by the runtime of the worker that opened it
//! (no cross-thread wake-ups). A connection goes back to the pool when the response body it
//! carried has been read to its end ([`PooledBody`]); one whose body was abandoned, stalled
//! past the response body idle timeout, or that carried a protocol upgrade, is closed instead. A request waiting for a connection (its
//! upstream at its connection limit) registers here and is woken when one is returned.

use crate::body::{poll_idle, BodyError, IdleGuard, UpstreamBody};
use crate::h1::{Conn, ResponseBody};
use crate::h2pool::StreamSlot;
use crate::upstream::{InUse, UpstreamState};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The request half of a hyper client connection (one carrying an upgrade).
pub type Sender = SendRequest<UpstreamBody>;

/// Idle connections kept per upstream and worker; a surplus connection is closed on return.
const MAX_IDLE: usize = 256;
/// Idle connections older than this are closed (upstreams commonly close at 60-75 s; closing
/// first avoids sending a request on a connection the upstream is about to drop).
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// How often a thread sweeps its whole pool for expired and closed connections.
pub(crate) const REAP_INTERVAL: Duration = Duration::from_secs(5);

struct Idle {
    conn: Box<Conn>,
    since: Instant,
    /// The upstream's epoch when it was pooled.
    epoch: u32,
}

#[derive(Default)]
struct Stack {
    idle: Vec<Idle>,
    /// Requests of this thread waiting for a connection to be returned.
    waiters: u32,
    /// How they are woken (made on the first wait).
    returned: Option<Arc<tokio::sync::Notify>>,
}

struct LocalPools {
    by_upstream: FxHashMap<u64, Stack>,
    last_reap: Instant,
}

impl LocalPools {
    fn reap(&mut self, now: Instant) {
        self.last_reap = now;
        self.by_upstream.retain(|_, stack| {
            stack
                .idle
                .retain_mut(|i| now.duration_since(i.since) < IDLE_TIMEOUT && !i.conn.is_closed());
            !stack.idle.is_empty() || stack.waiters > 0
        });
    }
}

thread_local! {
    static POOLS: RefCell<LocalPools> = RefCell::new(LocalPools {
        by_upstream: FxHashMap::default(),
        last_reap: Instant::now(),
    });
}

/// Take this thread's most recently returned connection to upstream `id`, skipping closed and
/// expired ones. `now` is the request's start time (no extra clock read). Most recent first, so
/// a surplus of connections after a burst goes unused and expires.
pub(crate) fn take(up: &UpstreamState, now: Instant) -> Option<Box<Conn>> {
    let (id, epoch) = (up.id, up.epoch());
    POOLS
        .try_with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            let stack = p.by_upstream.get_mut(&id)?;
            while let Some(mut idle) = stack.idle.pop() {
                if idle.epoch == epoch
                    && now.saturating_duration_since(idle.since) < IDLE_TIMEOUT
                    && !idle.conn.is_closed()
                {
                    return Some(idle.conn);
                }
            }
            None
        })
        .ok()
        .flatten()
}

/// Return a connection to this thread's pool for upstream `up`: to a request of this thread
/// waiting for one, or idle. While requests of another worker wait for a connection to `up`
/// that they cannot open (as many are open as the lowest limit among them allows) and none of
/// this one's wait, the connection is closed instead, which makes room for them to open one.
/// (Below their limit they are waiting for connects in progress and then open their own:
/// closing this one would only make a worker open it again.)
pub(crate) fn put(up: &UpstreamState, conn: Box<Conn>) {
    let id = up.id;
    let now = Instant::now();
    // during thread teardown the pool may be gone: the connection is then simply closed
    let _ = POOLS.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        if now.duration_since(p.last_reap) >= REAP_INTERVAL {
            p.reap(now);
        }
        let stack = p.by_upstream.entry(id).or_default();
        if stack.waiters == 0 && up.waiters_at_limit() {
            return; // dropping it closes the connection
        }
        if stack.idle.len() < MAX_IDLE {
            stack.idle.push(Idle {
                conn,
                since: now,
                epoch: up.epoch(),
            });
            if stack.waiters > 0 {
                if let Some(n) = &stack.returned {
                    n.notify_one();
                }
            }
        }
    });
}

/// A request of this thread waiting for a connection to upstream `id` to be returned.
pub(crate) struct Waiter {
    id: u64,
    returned: Arc<tokio::sync::Notify>,
}

impl Waiter {
    /// Register a waiter for upstream `id` on this thread.
    pub(crate) fn new(id: u64) -> Option<Waiter> {
        POOLS
            .try_with(|p| {
                let mut p = p.try_borrow_mut().ok()?;
                let stack = p.by_upstream.entry(id).or_default();
                stack.waiters += 1;
                let returned = stack.returned.get_or_insert_with(Default::default).clone();
                Some(Waiter { id, returned })
            })
            .ok()
            .flatten()
    }

    /// Wait for a connection to be returned (a permit left by a return before this call counts).
    pub(crate) async fn returned(&self) {
        self.returned.notified().await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let _ = POOLS.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                if let Some(s) = p.by_upstream.get_mut(&self.id) {
                    s.waiters = s.waiters.saturating_sub(1);
                }
            }
        });
    }
}

/// Close this thread's expired and closed idle connections (a worker calls this on a timer so
/// that an idle worker also lets go of them).
pub fn reap_local() {
    crate::h2pool::reap_local();
    let now = Instant::now();
    let _ = POOLS.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            p.reap(now);
        }
    });
}

/// Idle connections held by this thread for upstream `id` (for tests and diagnostics).
pub fn idle_local(id: u64) -> usize {
    POOLS
        .try_with(|p| {
            p.try_borrow()
                .map_or(0, |p| p.by_upstream.get(&id).map_or(0, |s| s.idle.len()))
        })
        .unwrap_or(0)
}

/// The request half of a hyper connection carrying an upgrade, kept until the tunnel is set
/// up (the connection is never reused).
pub(crate) struct Lease {
    _sender: Sender,
}

impl Lease {
    pub(crate) fn new(sender: Sender) -> Lease {
        Lease { _sender: sender }
    }
}

/// Where a response body comes from.
enum Inner {
    /// Read on the request's task from a pooled HTTP/1.1 connection ([`crate::h1`]), which it
    /// returns to the pool at its end.
    Direct(ResponseBody),
    /// From hyper's client (an upgrade's response, an HTTP/2 stream).
    Hyper(Incoming),
    /// All there: a reply the proxy makes itself.
    Full(Full<Bytes>),
}

impl Body for Inner {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Inner::Direct(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| BodyError::Upstream(Box::new(e))),
            Inner::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::Read),
            Inner::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Direct(b) => b.is_end_stream(),
            Inner::Hyper(b) => b.is_end_stream(),
            Inner::Full(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inner::Direct(b) => b.size_hint(),
            Inner::Hyper(b) => b.size_hint(),
            Inner::Full(b) => b.size_hint(),
        }
    }
}

/// A response body (an upstream's, under the response body idle timeout, or the proxy's own
/// reply). Boxed: a response is moved by value through each layer of the request's future,
/// and its head with one pointer beside it (120 bytes) is moved in registers, where head and
/// body state together (352 bytes) took a call to `memcpy` at every move.
pub struct PooledBody(Box<State>);

struct State {
    body: Inner,
    lease: Option<Lease>,
    /// The stream this body holds on a multiplexed HTTP/2 connection.
    _slot: Option<StreamSlot>,
    /// The response body idle timeout (off until the request path sets it).
    idle: IdleGuard,
    /// Counted when the body stalls.
    stalls: Option<&'static prometheus::IntCounter>,
    /// The request's use of an executor's instance, until the body ends or is dropped.
    in_use: Option<InUse>,
}

impl PooledBody {
    fn with(body: Inner, lease: Option<Lease>, slot: Option<StreamSlot>) -> PooledBody {
        PooledBody(Box::new(State {
            body,
            lease,
            _slot: slot,
            idle: IdleGuard::off(),
            stalls: None,
            in_use: None,
        }))
    }

    /// A body read from its HTTP/1.1 connection on the request's task.
    pub(crate) fn direct(body: ResponseBody) -> PooledBody {
        PooledBody::with(Inner::Direct(body), None, None)
    }

    /// A body from hyper's HTTP/1.1 client, holding `lease` (an upgrade).
    pub(crate) fn hyper(body: Incoming, lease: Option<Lease>) -> PooledBody {
        PooledBody::with(Inner::Hyper(body), lease, None)
    }

    /// The body of an HTTP/2 response holding `slot` on its connection until dropped.
    pub(crate) fn stream(body: Incoming, slot: StreamSlot) -> PooledBody {
        PooledBody::with(Inner::Hyper(body), None, Some(slot))
    }

    /// A body of `bytes`, all there.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> PooledBody {
        PooledBody::with(Inner::Full(Full::new(bytes.into())), None, None)
    }

    /// Allow at most `timeout` between two chunks (zero: no limit); past it the body fails
    /// (the client's stream is reset), its connection is closed, and `stalls` counts it.
    pub(crate) fn idle_timeout(
        &mut self,
        timeout: Duration,
        stalls: Option<&'static prometheus::IntCounter>,
    ) {
        self.0.idle = IdleGuard::new(timeout);
        self.0.stalls = stalls;
    }

    /// Take the response's unparsed fields (an HTTP/1.1 upstream's, see `crate::h1::RawFields`).
    pub(crate) fn take_raw(&mut self) -> Option<crate::h1::RawFields> {
        match &mut self.0.body {
            Inner::Direct(b) => b.take_raw(),
            Inner::Hyper(_) | Inner::Full(_) => None,
        }
    }

    /// Keep `in_use` (the request's use of its upstream) until the body ends or is dropped.
    pub(crate) fn keep_in_use(&mut self, in_use: Option<InUse>) {
        self.0.in_use = in_use;
    }

    /// Take the request's use of its upstream out (a tunnel keeps it while it is open).
    pub(crate) fn take_in_use(&mut self) -> Option<InUse> {
        self.0.in_use.take()
    }

    /// Take the connection out (an upgrade keeps it alive until the tunnel is set up).
    pub(crate) fn take_lease(&mut self) -> Option<Lease> {
        self.0.lease.take()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self.0;
        let polled = poll_idle(Pin::new(&mut this.body), &mut this.idle, cx);
        // a failed or stalled exchange leaves the connection in an unknown state: dropping
        // the body closes it
        if let Poll::Ready(Some(Err(BodyError::Idle(t)))) = &polled {
            if let Some(c) = this.stalls {
                c.inc();
            }
            tracing::info!(timeout = ?t, "upstream response body stalled: cut");
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream_tls::UpstreamIo;

    /// An open connection to `listener`, counted by `slot`, and its peer.
    async fn conn_to(
        listener: &tokio::net::TcpListener,
        mut slot: crate::upstream::ConnSlot,
    ) -> (Box<Conn>, tokio::net::TcpStream) {
        let io = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        slot.opened();
        (Conn::new(UpstreamIo::Plain(io), slot), peer)
    }

    // current-thread: "this worker" is the test's thread, whose pool `put` uses
    #[tokio::test(flavor = "current_thread")]
    async fn a_return_closes_a_connection_for_another_workers_waiter_only_at_its_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(UpstreamState::new(addr.to_string().into()));
        // a request of another worker waits (counted pending, no waiter on this thread); its
        // route allows 4 connections
        let other = up.try_queue(16, 4).unwrap();

        // two open of its four: it waits for a connect of its own, not for this one, which
        // goes back to the pool
        let (a, _pa) = conn_to(&listener, up.try_open(4).unwrap()).await;
        let (b, _pb) = conn_to(&listener, up.try_open(4).unwrap()).await;
        put(&up, a);
        assert_eq!(idle_local(up.id), 1, "a return below the limit was closed");
        assert_eq!(up.connections(), (2, 1));

        // a request of a route allowing 2 waits as well: two of its two are open, so a return
        // (of a connection opened under the other route's 4) makes room for it instead
        let strict = up.try_queue(16, 2).unwrap();
        put(&up, b);
        assert_eq!(
            idle_local(up.id),
            1,
            "a return at the waiter's limit was pooled"
        );
        assert_eq!(up.connections(), (1, 2));

        // so does a prewarmed connection's (opened unbounded)
        let (prewarmed, _pc) = conn_to(&listener, up.open_unbounded()).await;
        put(&up, prewarmed);
        assert_eq!(up.connections(), (1, 2));

        // once nobody waits, the lowest limit is forgotten: a new waiter allowed 8 with one
        // open is not at its limit
        drop((other, strict));
        let _roomy = up.try_queue(16, 8).unwrap();
        let c = take(&up, Instant::now()).unwrap();
        put(&up, c);
        assert_eq!(idle_local(up.id), 1);
        assert_eq!(up.connections(), (1, 1));
    }
}
