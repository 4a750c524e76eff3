//! Per-connection bounds that hyper does not give on its own: a global and a per-peer limit on
//! open connections (checked at accept, never per request), and the idle timeout: a connection
//! with no request in flight and none ended for the listener's idle timeout is shut down
//! gracefully (HTTP/2: GOAWAY; HTTP/1: closed; see `ServerOptions::idle_timeout`). Requests cost two relaxed atomic updates on
//! their connection's [`ConnActivity`]; the idle check is one coarse timer per connection.

use crate::deadline::CoarseSleep;
use rustc_hash::FxHashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connection limits shared by every worker of a listener.
#[derive(Debug)]
pub struct ConnLimits {
    /// Most open connections in all.
    pub max_connections: usize,
    /// Most open connections from one peer address.
    pub max_per_peer: u32,
    open: AtomicUsize,
    per_peer: Mutex<FxHashMap<IpAddr, u32>>,
    refused: AtomicU64,
}

/// Defaults: [`DEFAULT_MAX_CONNECTIONS`] in all, [`DEFAULT_MAX_PER_PEER`] per peer.
impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits::new(DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_PEER)
    }
}

/// Default global connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default per-peer connection limit.
pub const DEFAULT_MAX_PER_PEER: u32 = 256;

impl ConnLimits {
    /// Limits of `max_connections` in all and `max_per_peer` per peer address.
    pub fn new(max_connections: usize, max_per_peer: u32) -> ConnLimits {
        ConnLimits {
            max_connections,
            max_per_peer,
            open: AtomicUsize::new(0),
            per_peer: Mutex::new(FxHashMap::default()),
            refused: AtomicU64::new(0),
        }
    }

    /// Take a place for a connection from `peer`, or `None` (the connection is to be closed)
    /// when a limit is reached. Called once per accepted connection.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<ConnPermit> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut map = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(peer).or_insert(0);
        if *n >= self.max_per_peer {
            drop(map);
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(ConnPermit {
            limits: self.clone(),
            peer,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once because a limit was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A connection's place; given back on drop.
#[derive(Debug)]
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    peer: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut map = self
            .limits
            .per_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
        drop(map);
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the idle check of one connection needs: requests in flight, and when the last one
/// started (milliseconds since the connection was accepted).
#[derive(Debug)]
pub struct ConnActivity {
    accepted: Instant,
    in_flight: AtomicU32,
    last_ms: AtomicU64,
}

impl ConnActivity {
    /// A connection accepted now.
    pub fn new() -> ConnActivity {
        ConnActivity {
            accepted: Instant::now(),
            in_flight: AtomicU32::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    /// A request started.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request's response was handed to hyper (its body may still stream: a graceful
    /// shutdown lets it finish).
    pub fn end(&self) {
        let ms = u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Completes once the connection has been idle for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        let mut deadline = self.accepted + timeout;
        loop {
            CoarseSleep::until(deadline).await;
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                // busy: look again a whole timeout later
                deadline = Instant::now() + timeout;
                continue;
            }
            let last = self.accepted + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            if last + timeout <= Instant::now() {
                return;
            }
            deadline = last + timeout;
        }
    }
}

impl Default for ConnActivity {
    fn default() -> Self {
        ConnActivity::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_per_peer_limits() {
        let l = Arc::new(ConnLimits::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert!(l.admit(a).is_none(), "third from one peer");
        let _p3 = l.admit(b).unwrap();
        assert!(l.admit(b).is_none(), "fourth in all");
        assert_eq!(l.refused(), 2);
        drop(p1);
        let _again = l.admit(a).unwrap();
        assert_eq!(l.open(), 3);
    }
}
