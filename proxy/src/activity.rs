//! Request activity, for the control plane's scale-to-zero (stop an instance idle for its
//! `idle_after_s`) and branch expiry (a branch idle past its TTL): the time of the last request
//! per upstream (on `UpstreamState`) and per layer (here), and the read handle [`Activity`].
//!
//! The request path only stores: a coarse stamp (milliseconds since a process-wide epoch, plus
//! one so that 0 means "never") into an `AtomicU64`, with `Relaxed`, and only when the stamp
//! moved. No lock and no allocation per request: the per-layer slots are a chunked array indexed
//! by layer id whose fixed-size chunks are allocated once, on the first request to a layer of
//! the chunk, and never freed.
//!
//! A request records the branch it named (its resolved layer), not the layer that supplied
//! its route: a child's request keeps the child alive. Ancestors are not marked: the control
//! plane never expires a parent with live children, so the named branch is enough.
//!
//! Layer ids are stable across incremental updates (a removed layer leaves an empty slot and a
//! new layer takes a new id), but an org change rebuilds the config and renumbers every layer.
//! So when a published table changes the branch index, every slot whose layer name changed is
//! given the activity its new layer had under its old id (or none): a slot never inherits
//! another branch's activity. A request still in flight on the previous table may stamp the
//! old id once more after that; it is as recent as the swap, which at worst keeps the new layer
//! alive one idle period longer.

use crate::router::Router;
use microstax_table::{LayerId, RoutingTable};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Most layer ids tracked (ids at or above it record nothing): 1<<20 slots of 8 bytes, 8 MiB
/// when every chunk is in use, allocated chunk by chunk as ids are used.
pub const MAX_LAYERS: usize = 1 << 20;
const CHUNK_BITS: usize = 12;
/// Slots per chunk: 4096 layers, 32 KiB.
const CHUNK: usize = 1 << CHUNK_BITS;
const CHUNKS: usize = MAX_LAYERS / CHUNK;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process-wide epoch of stamps (fixed by the first call).
pub(crate) fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// The stamp of `at`: milliseconds since the epoch, plus one (0 means never).
#[inline]
pub(crate) fn stamp(at: Instant) -> u64 {
    let ms = at.saturating_duration_since(epoch()).as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX - 1).saturating_add(1)
}

/// The instant of a stamp (to the millisecond, never after the request); `None` for 0.
pub(crate) fn instant_of(stamp: u64) -> Option<Instant> {
    let ms = stamp.checked_sub(1)?;
    epoch().checked_add(Duration::from_millis(ms))
}

/// Last-request stamps by layer id.
pub(crate) struct LayerActivity {
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl std::fmt::Debug for LayerActivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self.chunks.iter().filter(|c| c.get().is_some()).count();
        write!(f, "LayerActivity({used} chunks)")
    }
}

impl LayerActivity {
    pub(crate) fn new() -> LayerActivity {
        // fixes the epoch before the first request can take a stamp
        let _ = epoch();
        LayerActivity {
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }

    fn slot(&self, id: usize) -> Option<&AtomicU64> {
        let chunk = self.chunks.get(id >> CHUNK_BITS)?.get()?;
        chunk.get(id & (CHUNK - 1))
    }

    fn slot_or_init(&self, id: usize) -> Option<&AtomicU64> {
        let chunk = self.chunks.get(id >> CHUNK_BITS)?;
        let chunk = chunk.get_or_init(|| (0..CHUNK).map(|_| AtomicU64::new(0)).collect());
        chunk.get(id & (CHUNK - 1))
    }

    /// Record a request of layer `id` at `stamp` (the request path).
    #[inline]
    pub(crate) fn touch(&self, id: LayerId, stamp: u64) {
        if let Some(s) = self.slot_or_init(id as usize) {
            if s.load(Ordering::Relaxed) != stamp {
                s.store(stamp, Ordering::Relaxed);
            }
        }
    }

    fn raw(&self, id: usize) -> u64 {
        self.slot(id).map_or(0, |s| s.load(Ordering::Relaxed))
    }

    fn set_raw(&self, id: usize, stamp: u64) {
        if stamp == 0 {
            // a chunk never touched holds zeros already: reading it does not allocate it
            if let Some(s) = self.slot(id) {
                s.store(0, Ordering::Relaxed);
            }
        } else if let Some(s) = self.slot_or_init(id) {
            s.store(stamp, Ordering::Relaxed);
        }
    }

    /// The last request of layer `id`, if any.
    pub(crate) fn last(&self, id: LayerId) -> Option<Instant> {
        instant_of(self.raw(id as usize))
    }

    /// Before `next` replaces `prev`: give every slot whose layer name changed the activity of
    /// its new layer's old id (none for a new branch). O(1) when the branch index is shared
    /// (no branch was added, removed or renumbered); else one pass over the layer slots, as the
    /// compiler's own rebuild of the index was.
    pub(crate) fn rebind(&self, prev: &RoutingTable, next: &RoutingTable) {
        if Arc::ptr_eq(&prev.branches, &next.branches) {
            return;
        }
        let name = |t: &RoutingTable, i: usize| {
            t.layers
                .get(i)
                .and_then(|l| l.as_deref())
                .map(|l| l.name.clone())
        };
        let slots = prev.layers.len().max(next.layers.len()).min(MAX_LAYERS);
        let mut moves = Vec::new();
        for i in 0..slots {
            let (old, new) = (
                prev.layers.get(i).and_then(|l| l.as_ref()),
                next.layers.get(i).and_then(|l| l.as_ref()),
            );
            let same = match (old, new) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.name == b.name,
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            let carried = name(next, i)
                .and_then(|n| prev.branch(&n))
                .map_or(0, |old_id| self.raw(old_id as usize));
            moves.push((i, carried));
        }
        for (i, stamp) in moves {
            self.set_raw(i, stamp);
        }
    }
}

/// Read access to request activity for the control plane (cheap to clone; reads take no lock
/// on the request path's data, the upstream lookup takes the registry's, off the request path).
#[derive(Debug, Clone)]
pub struct Activity {
    router: Arc<Router>,
}

impl Activity {
    pub(crate) fn new(router: Arc<Router>) -> Activity {
        Activity { router }
    }

    /// When a request last named layer `layer_id` (to the millisecond); `None` if none did
    /// since the layer took this id (or the id is not below [`MAX_LAYERS`]).
    pub fn last_request_layer(&self, layer_id: LayerId) -> Option<Instant> {
        self.router.layer_activity().last(layer_id)
    }

    /// When a request last named branch `name` in the table now served; `None` if never or if
    /// the table has no such branch.
    pub fn last_request_branch(&self, name: &str) -> Option<Instant> {
        let id = self.router.load().table.branch(name)?;
        self.last_request_layer(id)
    }

    /// When a request was last routed to upstream `authority` (`host:port`, as in the table);
    /// `None` if never or if no table names it.
    pub fn last_request_upstream(&self, authority: &str) -> Option<Instant> {
        self.router.registry().get(authority)?.last_request()
    }

    /// Requests in flight to upstream `authority` now, and tunnels open to it (counted for an
    /// executor's instances only); 0 if no table names it.
    pub fn in_use_upstream(&self, authority: &str) -> u32 {
        self.router
            .registry()
            .get(authority)
            .map_or(0, |u| u.in_use())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_across_chunks_and_past_the_bound() {
        let a = LayerActivity::new();
        let s = stamp(Instant::now());
        for id in [0, CHUNK - 1, CHUNK, MAX_LAYERS - 1] {
            assert_eq!(a.last(id as LayerId), None);
            a.touch(id as LayerId, s);
            assert_eq!(a.last(id as LayerId), instant_of(s), "id {id}");
        }
        assert_eq!(a.last(1), None, "a neighbour is untouched");
        a.touch(MAX_LAYERS as LayerId, s);
        assert_eq!(
            a.last(MAX_LAYERS as LayerId),
            None,
            "past the bound records nothing"
        );
        let used = a.chunks.iter().filter(|c| c.get().is_some()).count();
        assert_eq!(used, 3, "only the chunks touched are allocated");
        a.set_raw(CHUNK * 5, 0);
        assert_eq!(a.chunks.iter().filter(|c| c.get().is_some()).count(), 3);
    }

    #[test]
    fn stamps_round_trip_to_the_millisecond() {
        let _ = epoch();
        let now = Instant::now();
        let back = instant_of(stamp(now)).expect("a stamp is never 0");
        assert!(back <= now && now - back < Duration::from_millis(1));
        assert_eq!(instant_of(0), None);
    }
}
