//! Load balancing over a route's upstreams: power of two choices over the requests each
//! upstream has in flight on this worker (two upstreams drawn at random, the less loaded one
//! wins), skipping upstreams that passive outlier detection ejected unless every one is (a
//! route never loses its last host). The counts and the random state are thread-local: a
//! worker balances its own requests, with no shared write per request (as Envoy's per-worker
//! load balancers do).

use crate::upstream::UpstreamState;
use rustc_hash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
    static IN_FLIGHT: RefCell<FxHashMap<u64, u32>> = RefCell::new(FxHashMap::default());
}

/// A pseudo-random number (xorshift64*, seeded per thread).
fn random() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        if x == 0 {
            // seed from the thread's stack address and the clock: distinct per worker
            let local = 0u8;
            x = (&raw const local as u64) ^ (std::time::Instant::now().elapsed().as_nanos() as u64);
            x |= 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Requests in flight to upstream `id` on this worker.
pub fn in_flight(id: u64) -> u32 {
    IN_FLIGHT
        .try_with(|m| m.borrow().get(&id).copied().unwrap_or(0))
        .unwrap_or(0)
}

/// One request in flight to an upstream on this worker, counted until dropped.
pub(crate) struct InFlight(u64);

impl InFlight {
    pub(crate) fn start(id: u64) -> InFlight {
        let _ = IN_FLIGHT.try_with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                *m.entry(id).or_default() += 1;
            }
        });
        InFlight(id)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let _ = IN_FLIGHT.try_with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                if let Some(n) = m.get_mut(&self.0) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        m.remove(&self.0);
                    }
                }
            }
        });
    }
}

/// A second draw among `n` (at least 2), distinct from the first draw `a`.
fn second(a: usize, r: u64, n: usize) -> usize {
    (a + 1 + (r % (n as u64 - 1)) as usize) % n
}

/// Pick one of `ids` (indexes into `states`) at `stamp`, avoiding `avoid` (an upstream that
/// just failed), ejected upstreams and upstreams that do not serve (a crashed, starting or
/// asleep replica) when another is available. `returned` is called for each upstream whose
/// ejection ended at this look.
pub(crate) fn pick<'s>(
    ids: &[u32],
    states: &'s [Arc<UpstreamState>],
    stamp: u64,
    avoid: Option<u64>,
    returned: &mut dyn FnMut(),
) -> Option<&'s Arc<UpstreamState>> {
    let get = |id: u32| states.get(id as usize);
    match ids {
        [] => None,
        [one] => get(*one),
        many => {
            let mut usable = |u: &UpstreamState| {
                let (ejected, back) = u.ejected_at(stamp);
                if back {
                    returned();
                }
                // not serving: a replica crashed, starting or asleep; when none of the route's
                // upstreams serves, the first candidate is taken and admission holds or wakes it
                !ejected && Some(u.id) != avoid && u.is_serving()
            };
            let n = many.len() as u64;
            let r = random();
            let a = (r % n) as usize;
            // a second, distinct draw
            let b = second(a, r >> 32, many.len());
            let (ua, ub) = (get(many[a])?, get(many[b])?);
            match (usable(ua), usable(ub)) {
                (true, true) => Some(if in_flight(ub.id) < in_flight(ua.id) {
                    ub
                } else {
                    ua
                }),
                (true, false) => Some(ua),
                (false, true) => Some(ub),
                // both out: any usable one, else (every host ejected) the first draw
                (false, false) => many
                    .iter()
                    .filter_map(|&id| get(id))
                    .find(|u| usable(u))
                    .or(Some(ua)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_draw_differs_from_the_first_and_covers_the_rest() {
        for n in 2..6usize {
            for a in 0..n {
                let seen: std::collections::BTreeSet<usize> =
                    (0..50u64).map(|r| second(a, r, n)).collect();
                assert!(!seen.contains(&a));
                assert_eq!(seen.len(), n - 1);
            }
        }
        assert_ne!(random(), random());
    }
}
