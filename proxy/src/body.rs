//! Body types and the body idle timeout (a leaf module: the pool, the client and the request
//! path all name it, and it names none of them but the coarse timer).
//!
//! A body may take as long as it likes in all, but no longer than its idle timeout between two
//! chunks (nginx's `client_body_timeout` and `proxy_read_timeout`, Envoy's
//! `stream_idle_timeout`). `IdleGuard` arms one coarse deadline (`crate::deadline`) the first
//! time its body waits, and never re-arms it per chunk: a later wait only notes when it began,
//! and when the deadline comes a body that moved meanwhile is given another full timeout from
//! the start of its current wait. Only time spent waiting for the body counts (time the reader
//! did not ask for more, a slow client holding back an upstream body, does not). So a flowing
//! body costs one clock read per chunk that had to be waited for, no lock and no allocation.

use crate::deadline::CoarseSleep;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Body sent upstream: the client's streamed body (bounded by its idle timeout), or nothing
/// (prewarm probes).
pub type UpstreamBody = Either<RequestBody, Empty<Bytes>>;

/// Why a streamed body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Reading it failed.
    #[error(transparent)]
    Read(#[from] hyper::Error),
    /// No chunk came for its idle timeout.
    #[error("no body data for {0:?}")]
    Idle(Duration),
    /// Reading an upstream response body from its connection failed.
    #[error(transparent)]
    Upstream(Box<crate::h1::ExchangeError>),
}

/// Whether `e` (or its cause) is a body that stalled past its idle timeout.
pub(crate) fn is_idle(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if matches!(e.downcast_ref::<BodyError>(), Some(BodyError::Idle(_))) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The idle timeout of one body.
pub(crate) struct IdleGuard {
    /// `None`: no limit.
    timeout: Option<Duration>,
    sleep: Option<CoarseSleep>,
    /// When the current wait began, if it began after `sleep` was armed.
    since: Option<Instant>,
    /// The body is waiting (its last poll was pending).
    waiting: bool,
}

impl std::fmt::Debug for IdleGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleGuard")
            .field("timeout", &self.timeout)
            .field("armed", &self.sleep.is_some())
            .finish()
    }
}

impl IdleGuard {
    /// A guard of `timeout` (zero: none).
    pub(crate) fn new(timeout: Duration) -> IdleGuard {
        IdleGuard {
            timeout: (!timeout.is_zero()).then_some(timeout),
            sleep: None,
            since: None,
            waiting: false,
        }
    }

    /// A guard that never fires.
    pub(crate) const fn off() -> IdleGuard {
        IdleGuard {
            timeout: None,
            sleep: None,
            since: None,
            waiting: false,
        }
    }

    /// The body yielded a chunk.
    #[inline]
    pub(crate) fn moved(&mut self) {
        self.waiting = false;
    }

    /// The body is waiting: whether this wait has lasted past its timeout (else `cx` is woken
    /// by then).
    pub(crate) fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.timeout else {
            return false;
        };
        if !self.waiting {
            self.waiting = true;
            let now = Instant::now();
            match self.sleep {
                None => self.sleep = Some(CoarseSleep::until(now + timeout)),
                // armed by an earlier wait: checked against this one when it fires
                Some(_) => self.since = Some(now),
            }
        }
        loop {
            let Some(sleep) = self.sleep.as_mut() else {
                return true;
            };
            if Pin::new(sleep).poll(cx).is_pending() {
                return false;
            }
            match self.since.take() {
                // the body moved since the deadline was armed: a full timeout from this wait
                Some(at) => self.sleep = Some(CoarseSleep::until(at + timeout)),
                None => {
                    self.sleep = None;
                    return true;
                }
            }
        }
    }

    /// The timeout (for the error).
    fn timeout(&self) -> Duration {
        self.timeout.unwrap_or_default()
    }
}

/// Poll `body` under `idle`: a frame notes progress; waiting past the timeout is an error.
pub(crate) fn poll_idle<B>(
    body: Pin<&mut B>,
    idle: &mut IdleGuard,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BodyError>,
{
    match body.poll_frame(cx) {
        Poll::Ready(Some(Ok(f))) => {
            idle.moved();
            Poll::Ready(Some(Ok(f)))
        }
        Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Pending if idle.stalled(cx) => {
            Poll::Ready(Some(Err(BodyError::Idle(idle.timeout()))))
        }
        Poll::Pending => Poll::Pending,
    }
}

/// A client's request body as the listener read it: hyper's (HTTP/2, TLS, and HTTP/1.1
/// connections handed to hyper), or none (a bodiless request read by the proxy's own HTTP/1.1
/// server, `crate::h1server`).
#[derive(Debug)]
pub enum ClientBody {
    /// Read by hyper.
    Hyper(Incoming),
    /// The request has no body.
    Empty,
}

impl From<Incoming> for ClientBody {
    fn from(b: Incoming) -> ClientBody {
        ClientBody::Hyper(b)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A client's request body on its way upstream, bounded by the request body idle timeout.
#[derive(Debug)]
pub struct RequestBody {
    body: ClientBody,
    idle: IdleGuard,
    /// Counted when the body stalls.
    stalls: Option<&'static prometheus::IntCounter>,
}

impl RequestBody {
    /// `body` with at most `timeout` between two chunks (zero: no limit); a stall is counted
    /// on `stalls`.
    pub(crate) fn new(
        body: ClientBody,
        timeout: Duration,
        stalls: Option<&'static prometheus::IntCounter>,
    ) -> RequestBody {
        RequestBody {
            body,
            idle: IdleGuard::new(timeout),
            stalls,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = poll_idle(Pin::new(&mut this.body), &mut this.idle, cx);
        if let Poll::Ready(Some(Err(BodyError::Idle(t)))) = &polled {
            if let Some(c) = &this.stalls {
                c.inc();
            }
            tracing::info!(timeout = ?t, "request body stalled: cut");
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
