//! The control plane's handles on the data plane for scale-to-zero and expiry: read request
//! activity, mark an upstream asleep or awake, push readiness (rather than waiting for the next
//! probe), and receive the wakes requests send for asleep upstreams. None of these is on the
//! request path; the upstream lookups take the registry's lock.

use crate::activity::Activity;
use crate::forward::Proxy;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Capacity of the wake channel. A wake is sent once per sleep of an upstream, so this bounds
/// the upstreams asleep and woken at once whose wakes the control plane has not read yet; a
/// full channel drops the wake and a later request sends it again.
pub const WAKE_CHANNEL_CAPACITY: usize = 1024;

impl Proxy {
    /// Request activity (last request per layer and per upstream).
    pub fn activity(&self) -> Activity {
        Activity::new(self.router().clone())
    }

    /// Mark upstream `authority` asleep (its instance was stopped for idleness: requests wake
    /// it and wait, per their route's readiness policy) or awake again (its instance was
    /// started; it serves once ready: see [`Proxy::set_ready`]). Returns false when no table
    /// names `authority`.
    pub fn set_asleep(&self, authority: &str, asleep: bool) -> bool {
        match self.router().registry().get(authority) {
            Some(up) => {
                up.set_managed();
                up.set_asleep(asleep);
                true
            }
            None => false,
        }
    }

    /// Push readiness of upstream `authority` (e.g. the executor reports its instance ready),
    /// releasing the requests held for it at once. Returns false when no table names it.
    pub fn set_ready(&self, authority: &str, ready: bool) -> bool {
        match self.router().registry().get(authority) {
            Some(up) => {
                up.set_managed();
                up.set_ready(ready);
                true
            }
            None => false,
        }
    }

    /// Requests held now for upstream `authority` (`None` when no table names it).
    pub fn held(&self, authority: &str) -> Option<u32> {
        self.router().registry().get(authority).map(|u| u.held())
    }

    /// The wakes: the authority of each asleep upstream a request arrived for, once per sleep.
    /// The receiver can be taken once; later calls return `None`.
    pub fn wakes(&self) -> Option<mpsc::Receiver<Arc<str>>> {
        self.wake_receiver()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}
