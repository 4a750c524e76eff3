//! A coarse per-worker timer for the deadlines every request carries (the request timeout, and
//! hyper's header-read timeout). A tokio timer costs a lock on the time driver and a wheel
//! insert and removal per request; measured, the two per-request timers were ~6% of the
//! proxy's instructions. Here a worker keeps its pending deadlines in a thread-local slab
//! (insert and remove are a free-list push and pop) and one ticker task per worker sleeps until
//! the earliest of them, fires the expired ones, and sleeps again; it runs at most once per
//! [`TICK`], so deadlines fire up to one tick late, which is fine for timeouts measured in
//! hundreds of milliseconds or more. An idle keep-alive client (whose header-read deadline is
//! seconds away) costs no wake-up until then; a cancelled deadline is not searched for, it
//! costs at most one early wake-up.
//!
//! The slab exists only on worker threads ([`install`]); elsewhere (a caller's multi-thread
//! runtime, where a future may move between threads) the same calls fall back to tokio's timer.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Resolution of the coarse timer.
pub const TICK: Duration = Duration::from_millis(20);

static NEXT_WHEEL: AtomicU64 = AtomicU64::new(1);

struct Entry {
    deadline: Instant,
    waker: Option<Waker>,
    fired: bool,
}

struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

struct Wheel {
    /// Tells this thread's slab from another's (a key is only valid on its own thread).
    id: u64,
    slots: Vec<Slot>,
    free: Vec<u32>,
    pending: usize,
    /// When the ticker next looks (no earlier than the earliest deadline armed since it last
    /// looked); `None` while nothing is pending.
    target: Option<Instant>,
    /// The ticker's waker, to wake it when a deadline earlier than `target` is armed.
    ticker: Option<Waker>,
}

thread_local! {
    static WHEEL: RefCell<Option<Wheel>> = const { RefCell::new(None) };
}

/// Give this thread a coarse timer. The caller must also run [`ticker`] on this thread's
/// (current-thread) runtime, or no deadline will ever fire.
pub fn install() {
    WHEEL.with(|w| {
        *w.borrow_mut() = Some(Wheel {
            id: NEXT_WHEEL.fetch_add(1, Ordering::Relaxed),
            slots: Vec::new(),
            free: Vec::new(),
            pending: 0,
            target: None,
            ticker: None,
        });
    });
}

/// Whether this thread has a coarse timer.
pub fn installed() -> bool {
    WHEEL.try_with(|w| w.borrow().is_some()).unwrap_or(false)
}

/// Fire this thread's expired deadlines, sleeping until the earliest pending one (at most one
/// pass per [`TICK`]). Runs forever.
pub async fn ticker() {
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    let mut set_for: Option<Instant> = None;
    let mut last = Instant::now();
    let mut wake = Vec::new();
    loop {
        std::future::poll_fn(|cx| until_target(cx, sleep.as_mut(), &mut set_for, last)).await;
        let now = Instant::now();
        last = now;
        fire_expired(now, &mut wake);
        // woken outside the borrow: a waker may run code that touches the wheel
        wake.drain(..).for_each(Waker::wake);
        WAKES.with(|w| w.set(w.get() + 1));
    }
}

thread_local! {
    /// Passes of this thread's ticker (for tests).
    static WAKES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Ready when the wheel's target time has come (no sooner than one [`TICK`] after the last
/// pass); pending with no target.
fn until_target(
    cx: &mut Context<'_>,
    mut sleep: Pin<&mut tokio::time::Sleep>,
    set_for: &mut Option<Instant>,
    last: Instant,
) -> Poll<()> {
    let target = WHEEL
        .try_with(|w| {
            let mut w = w.try_borrow_mut().ok()?;
            let w = w.as_mut()?;
            if !w.ticker.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                w.ticker = Some(cx.waker().clone());
            }
            w.target
        })
        .ok()
        .flatten();
    // no wheel on this thread, or nothing pending: an arm wakes this task
    let Some(target) = target else {
        return Poll::Pending;
    };
    let at = target.max(last + TICK);
    if *set_for != Some(at) {
        sleep.as_mut().reset(at.into());
        *set_for = Some(at);
    }
    sleep.poll(cx)
}

/// Fire the deadlines due by `now` (their wakers go to `wake`) and aim the ticker at the
/// earliest one left.
fn fire_expired(now: Instant, wake: &mut Vec<Waker>) {
    let _ = WHEEL.try_with(|w| {
        let Ok(mut w) = w.try_borrow_mut() else {
            return;
        };
        let Some(w) = w.as_mut() else { return };
        let mut next: Option<Instant> = None;
        for e in w.slots.iter_mut().filter_map(|s| s.entry.as_mut()) {
            if e.fired {
                continue;
            }
            if e.deadline <= now {
                e.fired = true;
                wake.extend(e.waker.take());
            } else if next.is_none_or(|n| e.deadline < n) {
                next = Some(e.deadline);
            }
        }
        w.target = next;
    });
}

/// Passes the ticker of this thread has made (for tests).
pub fn wakes() -> u64 {
    WAKES.try_with(|w| w.get()).unwrap_or(0)
}

/// Where an armed deadline lives in its thread's slab.
#[derive(Debug, Clone, Copy)]
struct Key {
    wheel: u64,
    index: u32,
    generation: u32,
}

fn arm(deadline: Instant, waker: &Waker) -> Option<Key> {
    let (key, ticker) = WHEEL
        .try_with(|w| {
            let mut w = w.try_borrow_mut().ok()?;
            let w = w.as_mut()?;
            let entry = Entry {
                deadline,
                waker: Some(waker.clone()),
                fired: false,
            };
            let index = match w.free.pop() {
                Some(i) => i,
                None => {
                    w.slots.push(Slot {
                        generation: 0,
                        entry: None,
                    });
                    u32::try_from(w.slots.len() - 1).ok()?
                }
            };
            let slot = w.slots.get_mut(index as usize)?;
            slot.entry = Some(entry);
            let key = Key {
                wheel: w.id,
                index,
                generation: slot.generation,
            };
            w.pending += 1;
            // the ticker only needs waking when this deadline comes before the one it awaits
            let earlier = w.target.is_none_or(|t| deadline < t);
            if earlier {
                w.target = Some(deadline);
            }
            Some((key, if earlier { w.ticker.take() } else { None }))
        })
        .ok()
        .flatten()?;
    if let Some(t) = ticker {
        t.wake();
    }
    Some(key)
}

/// Whether the deadline fired; else remember `waker`.
fn check(key: Key, waker: &Waker) -> bool {
    WHEEL
        .try_with(|w| {
            let mut w = w.try_borrow_mut().ok()?;
            let w = w.as_mut().filter(|w| w.id == key.wheel)?;
            let slot = w.slots.get_mut(key.index as usize)?;
            let e = slot
                .entry
                .as_mut()
                .filter(|_| slot.generation == key.generation)?;
            if e.fired {
                return Some(true);
            }
            if !e.waker.as_ref().is_some_and(|old| old.will_wake(waker)) {
                e.waker = Some(waker.clone());
            }
            Some(false)
        })
        .ok()
        .flatten()
        // a key this thread does not know cannot fire; never hang on it
        .unwrap_or(true)
}

fn disarm(key: Key) {
    let _ = WHEEL.try_with(|w| {
        let Ok(mut w) = w.try_borrow_mut() else {
            return;
        };
        let Some(w) = w.as_mut().filter(|w| w.id == key.wheel) else {
            return;
        };
        let Some(slot) = w.slots.get_mut(key.index as usize) else {
            return;
        };
        if slot.generation == key.generation && slot.entry.take().is_some() {
            slot.generation = slot.generation.wrapping_add(1);
            w.free.push(key.index);
            w.pending -= 1;
        }
    });
}

/// A future that completes at (or up to one [`TICK`] after) its deadline.
pub struct CoarseSleep {
    deadline: Instant,
    state: SleepState,
}

enum SleepState {
    /// Not polled yet: nothing is armed (a future that never waits costs nothing).
    Idle,
    Armed(Key),
    /// This thread has no coarse timer.
    Tokio(Pin<Box<tokio::time::Sleep>>),
    Done,
}

impl CoarseSleep {
    /// A sleep until `deadline`.
    pub fn until(deadline: Instant) -> CoarseSleep {
        CoarseSleep {
            deadline,
            state: SleepState::Idle,
        }
    }
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        match &mut this.state {
            SleepState::Idle => match arm(this.deadline, cx.waker()) {
                Some(key) => this.state = SleepState::Armed(key),
                None => {
                    let mut s = Box::pin(tokio::time::sleep_until(this.deadline.into()));
                    if s.as_mut().poll(cx).is_ready() {
                        this.state = SleepState::Done;
                        return Poll::Ready(());
                    }
                    this.state = SleepState::Tokio(s);
                }
            },
            SleepState::Armed(key) => {
                if check(*key, cx.waker()) {
                    disarm(*key);
                    this.state = SleepState::Done;
                    return Poll::Ready(());
                }
            }
            SleepState::Tokio(s) => {
                if s.as_mut().poll(cx).is_ready() {
                    this.state = SleepState::Done;
                    return Poll::Ready(());
                }
            }
            SleepState::Done => return Poll::Ready(()),
        }
        Poll::Pending
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if let SleepState::Armed(key) = self.state {
            disarm(key);
        }
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

/// The coarse timer as hyper's timer (header-read timeouts); use it only on worker threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoarseTimer;

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseSleep::until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseSleep::until(deadline))
    }
}

/// `fut` did not complete by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// `fut` bounded by a deadline: see [`within`]. A named future rather than an `async fn`
    /// so that the (large) inner future is pinned where it is built, not moved again.
    pub struct Within<F> {
        #[pin]
        fut: F,
        coarse: Option<CoarseSleep>,
        // boxed: only outside the per-core workers (tests, `serve`); inline it would make
        // every request's future larger, and that future is moved by value
        tokio: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

/// Run `fut` until `deadline`: the coarse timer on a worker thread, tokio's elsewhere.
pub fn within<F: Future>(deadline: Instant, fut: F) -> Within<F> {
    if installed() {
        Within {
            fut,
            coarse: Some(CoarseSleep::until(deadline)),
            tokio: None,
        }
    } else {
        Within {
            fut,
            coarse: None,
            tokio: Some(Box::pin(tokio::time::sleep_until(deadline.into()))),
        }
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if let Some(s) = this.coarse {
            if Pin::new(s).poll(cx).is_ready() {
                return Poll::Ready(Err(Elapsed));
            }
        }
        if let Some(s) = this.tokio {
            if s.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Elapsed));
            }
        }
        Poll::Pending
    }
}

/// Deadlines pending on this thread (for tests).
pub fn pending() -> usize {
    WHEEL
        .try_with(|w| w.borrow().as_ref().map_or(0, |w| w.pending))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn fires_at_the_deadline_within_a_tick_or_two() {
        worker_runtime().block_on(async {
            install();
            tokio::spawn(ticker());
            let start = Instant::now();
            CoarseSleep::until(start + Duration::from_millis(100)).await;
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(100), "{took:?}");
            assert!(took < Duration::from_millis(100) + 5 * TICK, "{took:?}");
            assert_eq!(pending(), 0);
        });
    }

    #[test]
    fn within_passes_fast_futures_and_stops_slow_ones() {
        worker_runtime().block_on(async {
            install();
            tokio::spawn(ticker());
            let soon = Instant::now() + Duration::from_millis(200);
            assert_eq!(within(soon, async { 7 }).await, Ok(7));
            let slow = tokio::time::sleep(Duration::from_secs(10));
            let start = Instant::now();
            let deadline = start + Duration::from_millis(60);
            assert_eq!(within(deadline, slow).await, Err(Elapsed));
            assert!(start.elapsed() >= Duration::from_millis(60));
            // a completed or dropped deadline leaves nothing behind
            assert_eq!(pending(), 0);
            let far = Instant::now() + Duration::from_secs(60);
            let mut s = Box::pin(CoarseSleep::until(far));
            let first = std::future::poll_fn(|cx| Poll::Ready(s.as_mut().poll(cx))).await;
            assert!(first.is_pending());
            assert_eq!(pending(), 1);
            drop(s);
            assert_eq!(pending(), 0);
        });
    }

    #[test]
    fn without_a_wheel_tokio_keeps_time() {
        worker_runtime().block_on(async {
            assert!(!installed());
            let start = Instant::now();
            CoarseSleep::until(start + Duration::from_millis(30)).await;
            assert!(start.elapsed() >= Duration::from_millis(30));
            let r = within(
                Instant::now() + Duration::from_millis(30),
                std::future::pending::<()>(),
            );
            assert_eq!(r.await, Err(Elapsed));
        });
    }

    #[test]
    fn the_ticker_sleeps_until_the_earliest_deadline() {
        worker_runtime().block_on(async {
            install();
            tokio::spawn(ticker());
            let far = Instant::now() + Duration::from_secs(60);
            let mut idle = Box::pin(CoarseSleep::until(far));
            let first = std::future::poll_fn(|cx| Poll::Ready(idle.as_mut().poll(cx))).await;
            assert!(first.is_pending());
            let before = wakes();
            // a nearer deadline armed later is still met
            let start = Instant::now();
            CoarseSleep::until(start + Duration::from_millis(200)).await;
            let took = start.elapsed();
            assert!(took < Duration::from_millis(200) + 5 * TICK, "{took:?}");
            // one pass fires it; a 20 ms ticker would have made ten
            let passes = wakes() - before;
            assert!(passes <= 2, "{passes} passes");
            drop(idle);
        });
    }

    #[test]
    fn slots_are_reused() {
        worker_runtime().block_on(async {
            install();
            tokio::spawn(ticker());
            for _ in 0..5 {
                let d = Instant::now() + Duration::from_millis(1);
                CoarseSleep::until(d).await;
            }
            let slots = WHEEL.with(|w| w.borrow().as_ref().map_or(0, |w| w.slots.len()));
            assert_eq!(slots, 1);
        });
    }
}
