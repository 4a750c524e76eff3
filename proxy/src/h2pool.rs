//! Per-worker pools of multiplexed HTTP/2 (prior knowledge) upstream connections. As for
//! HTTP/1.1 (`crate::pool`), each worker thread keeps its own connections in a thread-local
//! map keyed by upstream id, so finding one costs no lock; a connection carries up to
//! [`MAX_STREAMS`] requests at once (and never more than its server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`: h2 queues the rest), and a worker opens at most
//! [`MAX_CONNS`] per upstream. Requests that find every connection full, or none while one is
//! being opened, wait for it instead of each opening their own: a burst on a cold pool opens one
//! connection, not one per request.

use crate::body::UpstreamBody;
use hyper::client::conn::http2::SendRequest;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// The request half of a multiplexed upstream connection.
pub type H2Sender = SendRequest<UpstreamBody>;

/// Most concurrent requests this proxy puts on one upstream connection (the value most servers
/// advertise as `SETTINGS_MAX_CONCURRENT_STREAMS`: Envoy, nginx and gRPC's defaults are 100 to
/// 128). A request past it goes to another connection.
pub const MAX_STREAMS: u32 = 100;
/// Most HTTP/2 connections a worker opens to one upstream: past `MAX_CONNS * MAX_STREAMS`
/// concurrent requests, new ones share the least loaded connection (h2 queues them).
pub const MAX_CONNS: usize = 4;

struct Conn {
    sender: H2Sender,
    streams: Arc<AtomicU32>,
    /// The upstream's epoch when it was opened (`UpstreamState::epoch`).
    epoch: u32,
}

#[derive(Default)]
struct Upstream {
    conns: Vec<Conn>,
    /// Set while a connection is being opened; woken when it is ready (or failed).
    opening: Option<Arc<OpenState>>,
}

/// A connection being opened: its waiters, and whether it is over (set by whoever ends it, on
/// whatever thread, so a marker left on the thread that began it is never trusted past that).
#[derive(Default)]
pub(crate) struct OpenState {
    notify: Notify,
    done: AtomicBool,
}

impl OpenState {
    /// Wait until the opening is over (opened, failed or cancelled).
    pub(crate) async fn over(&self) {
        let n = self.notify.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if self.done.load(Ordering::Acquire) {
            return;
        }
        n.await;
    }
}

thread_local! {
    static POOLS: RefCell<FxHashMap<u64, Upstream>> = RefCell::new(FxHashMap::default());
}

/// One request's claim on a stream of a pooled connection: released when dropped (the
/// response body read or abandoned).
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicU32>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn claim(c: &Conn) -> (H2Sender, StreamSlot) {
    c.streams.fetch_add(1, Ordering::Relaxed);
    (c.sender.clone(), StreamSlot(c.streams.clone()))
}

/// What a request should do to get a stream to upstream `id` on this worker.
pub(crate) enum Next {
    /// Use this connection.
    Ready(H2Sender, StreamSlot),
    /// Another request is opening a connection: wait for it, then ask again.
    Wait(Arc<OpenState>),
    /// Open a connection; the guard marks it as being opened until dropped.
    Open(Opening),
}

/// Marks a connection to an upstream as being opened; dropping it (opened, failed or
/// cancelled) wakes the requests waiting for it.
pub(crate) struct Opening {
    id: u64,
    state: Arc<OpenState>,
}

impl Opening {
    /// Add the opened connection and claim a stream on it for the caller.
    pub(crate) fn finish(self, sender: H2Sender, epoch: u32) -> StreamSlot {
        let conn = Conn {
            sender,
            streams: Arc::new(AtomicU32::new(1)),
            epoch,
        };
        let slot = StreamSlot(conn.streams.clone());
        let sender = conn.sender.clone();
        let _ = POOLS.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                p.entry(self.id).or_default().conns.push(conn);
            }
        });
        drop(sender);
        slot
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        self.state.done.store(true, Ordering::Release);
        let _ = POOLS.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                if let Some(u) = p.get_mut(&self.id) {
                    if u.opening
                        .as_ref()
                        .is_some_and(|o| Arc::ptr_eq(o, &self.state))
                    {
                        u.opening = None;
                    }
                }
            }
        });
        self.state.notify.notify_waiters();
    }
}

/// Find a stream to upstream `id`: the least loaded open connection with a free stream, else
/// a wait for the connection being opened, else the right to open one (while under
/// [`MAX_CONNS`]), else the least loaded connection even if full.
pub(crate) fn next(id: u64, epoch: u32) -> Next {
    POOLS
        .try_with(|p| {
            let Ok(mut p) = p.try_borrow_mut() else {
                return None;
            };
            let u = p.entry(id).or_default();
            // a connection of an earlier epoch closes once its streams end
            u.conns
                .retain(|c| !c.sender.is_closed() && c.epoch == epoch);
            let least = u
                .conns
                .iter()
                .min_by_key(|c| c.streams.load(Ordering::Relaxed));
            if let Some(c) = least.filter(|c| c.streams.load(Ordering::Relaxed) < MAX_STREAMS) {
                let (s, slot) = claim(c);
                return Some(Next::Ready(s, slot));
            }
            if u.opening
                .as_ref()
                .is_some_and(|o| o.done.load(Ordering::Acquire))
            {
                // ended on another thread (a future that moved): not being opened any more
                u.opening = None;
            }
            if let Some(o) = &u.opening {
                return Some(Next::Wait(o.clone()));
            }
            if u.conns.len() >= MAX_CONNS {
                return least.map(|c| {
                    let (s, slot) = claim(c);
                    Next::Ready(s, slot)
                });
            }
            let state = Arc::new(OpenState::default());
            u.opening = Some(state.clone());
            Some(Next::Open(Opening { id, state }))
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            // no pool on this thread (teardown): a connection of its own, never pooled
            Next::Open(Opening {
                id: 0,
                state: Arc::default(),
            })
        })
}

/// Drop this worker's HTTP/2 connections to upstream `id` (closed once their streams end).
pub fn forget(id: u64) {
    let _ = POOLS.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            p.remove(&id);
        }
    });
}

/// Open HTTP/2 connections this worker holds to upstream `id`, and the streams in use on
/// them (for tests and diagnostics).
pub fn local_conns(id: u64) -> (usize, u32) {
    POOLS
        .try_with(|p| {
            p.try_borrow().map_or((0, 0), |p| {
                p.get(&id).map_or((0, 0), |u| {
                    let open = u.conns.iter().filter(|c| !c.sender.is_closed());
                    open.fold((0, 0), |(n, s), c| {
                        (n + 1, s + c.streams.load(Ordering::Relaxed))
                    })
                })
            })
        })
        .unwrap_or((0, 0))
}

/// Close this thread's closed connections' entries (called with the HTTP/1.1 reaper).
pub fn reap_local() {
    let _ = POOLS.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            p.retain(|_, u| {
                u.conns.retain(|c| !c.sender.is_closed());
                let opening = u.opening.as_ref();
                !u.conns.is_empty() || opening.is_some_and(|o| !o.done.load(Ordering::Acquire))
            });
        }
    });
}
