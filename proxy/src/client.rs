//! The upstream side of an exchange: take an idle connection from this worker's pool or open
//! one (connect timeout, HTTP/1.1 handshake with upgrades, driver task on this worker's
//! runtime), send the request, and hand back the response with its connection on loan. A
//! request that a pooled connection closed before writing is retried on another connection:
//! nothing reached the upstream, so this is safe even for non-idempotent requests. HTTP/2
//! upstreams get a stream on one of this worker's multiplexed connections (`crate::h2pool`).
//!
//! New HTTP/1.1 connections are bounded per upstream: at most the route's `max_connections`
//! open and [`MAX_CONNECTING`](crate::upstream::MAX_CONNECTING) being opened; a request finding
//! neither an idle connection nor room for a new one waits in the upstream's pending queue
//! (at most the route's `max_pending`) for a returned connection, and past that fails at once
//! ([`UpstreamError::Overloaded`]).

use crate::body::UpstreamBody;
use crate::h1::{self, Added, Conn, ExchangeError};
use crate::h2pool::{self, H2Sender, Next};
use crate::pool::{self, Lease, PooledBody, Waiter};
use crate::upstream::{ConnSlot, ConnectError, Connector, UpstreamState};
use crate::upstream_tls::UpstreamIo;
use http::{Request, Response};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened; nothing was sent, a retry is safe.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection opened but the handshake failed; nothing was sent.
    #[error("handshake with upstream failed")]
    Handshake(#[source] hyper::Error),
    /// The request was (at least partly) sent and the exchange failed; a retry may repeat it
    /// (unless the failure comes back with the request: then nothing of it was sent).
    #[error("{0}")]
    Exchange(#[source] ExchangeError),
    /// The upstream's connections and pending queue are full; nothing was sent.
    #[error("{conns} connections busy and {pending} requests waiting")]
    Overloaded {
        /// Its connection limit.
        conns: u32,
        /// Its pending-queue limit.
        pending: u32,
    },
}

impl UpstreamError {
    /// Whether the failure happened while opening the connection.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::Handshake(_)
        )
    }
}

/// A failed exchange, with the request when none of it was sent (so it can be retried).
#[derive(Debug)]
pub struct Failed {
    /// What failed.
    pub error: UpstreamError,
    /// The request, untouched, when nothing of it reached the upstream.
    pub unsent: Option<Box<Request<UpstreamBody>>>,
}

impl Failed {
    fn unsent(error: impl Into<UpstreamError>, req: Request<UpstreamBody>) -> Failed {
        Failed {
            error: error.into(),
            unsent: Some(Box::new(req)),
        }
    }

    fn sent(error: UpstreamError) -> Failed {
        Failed {
            error,
            unsent: None,
        }
    }
}

/// Whether the connection may serve later requests once this exchange is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Return it to the pool when the response body is read.
    Pool,
    /// Never reuse it (it carries a protocol upgrade).
    Never,
}

/// Per-upstream bounds of new connections (from the request's route).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open to the upstream.
    pub max_connections: u32,
    /// Most requests waiting for a connection.
    pub max_pending: u32,
}

/// Opens and reuses HTTP/1.1 and HTTP/2 connections to upstreams.
#[derive(Clone)]
pub struct UpstreamClient {
    connector: Connector,
    builder: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

/// Largest response head accepted from an HTTP/2 upstream (as the listener's request limit).
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

impl UpstreamClient {
    /// A client opening connections with `connector`.
    pub fn new(connector: Connector) -> UpstreamClient {
        // h2's protections stay at their defaults: the reset-stream limits (CVE-2023-44487),
        // the bounded send buffer, the pending-accept limit
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.max_header_list_size(H2_MAX_HEADER_LIST);
        UpstreamClient {
            connector,
            builder: http1::Builder::new(),
            h2,
        }
    }

    /// Send `req` to `up` over a pooled connection if this worker has one, else a new one
    /// opened within `connect_timeout` when `limits` allow, else once one is returned (the
    /// caller's deadline bounds the wait). `now` is the request's start time.
    #[allow(clippy::too_many_arguments)]
    // not an `async fn`: that would keep a second copy of each by-value argument in
    // the future (rust-lang/rust#62958), and the request's future is moved by value
    #[allow(clippy::manual_async_fn)]
    pub fn send<'a>(
        &'a self,
        up: &'a Arc<UpstreamState>,
        mut req: Request<UpstreamBody>,
        added: &'a Added<'_>,
        reuse: Reuse,
        now: Instant,
        connect_timeout: Duration,
        limits: Limits,
    ) -> impl Future<Output = Result<Response<PooledBody>, Failed>> + use<'a> {
        async move {
            let mut queued = None;
            loop {
                while let Some(conn) = pool::take(up, now) {
                    // no longer waiting: a request still counted in the pending queue while
                    // its exchange runs would make other requests' returns close their
                    // connections for a waiter that is not there (`pool::put`), and every one
                    // closed is opened again
                    queued = None;
                    match std::pin::pin!(self.send_on(conn, req, added, reuse)).await {
                        Ok(resp) => return Ok(resp),
                        // the pooled connection had been closed: nothing was sent
                        Err(Failed {
                            unsent: Some(unsent),
                            ..
                        }) => req = *unsent,
                        Err(f) => return Err(f),
                    }
                }
                if let Some(slot) = up.try_open(limits.max_connections) {
                    drop(queued);
                    // boxed, as the wait below: connecting (and TLS) has a large state that would
                    // otherwise be part of every request's future, which is moved by value
                    let new = self.send_on_new(up, req, added, reuse, connect_timeout, slot);
                    return Box::pin(new).await;
                }
                if queued.is_none() {
                    match up.try_queue(limits.max_pending, limits.max_connections) {
                        Some(q) => queued = Some(q),
                        None => {
                            let e = UpstreamError::Overloaded {
                                conns: limits.max_connections,
                                pending: limits.max_pending,
                            };
                            return Err(Failed::unsent(e, req));
                        }
                    }
                }
                // woken by a connection returned to this worker's pool, or one closing or opened
                // anywhere (room for a new one). Armed only now (arming takes the notifier's
                // lock, which the fast path above never does), then one more look, so that a
                // connection freed on another thread meanwhile is not missed.
                let freed = up.freed();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if pool::idle_local(up.id) > 0 || up.has_room(limits.max_connections) {
                    continue;
                }
                match Waiter::new(up.id) {
                    Some(w) => {
                        Box::pin(async {
                            tokio::select! {
                                () = w.returned() => {}
                                () = freed => {}
                            }
                        })
                        .await
                    }
                    None => freed.await,
                }
            }
        }
    }

    /// Send `req` to `up` over a new connection opened within `connect_timeout` (prewarming
    /// opens a fixed number of connections this way: counted, but not bounded).
    pub async fn send_new(
        &self,
        up: &Arc<UpstreamState>,
        req: Request<UpstreamBody>,
        reuse: Reuse,
        connect_timeout: Duration,
    ) -> Result<Response<PooledBody>, Failed> {
        let slot = up.open_unbounded();
        let added = Added::default();
        self.send_on_new(up, req, &added, reuse, connect_timeout, slot)
            .await
    }

    async fn send_on_new(
        &self,
        up: &Arc<UpstreamState>,
        req: Request<UpstreamBody>,
        added: &Added<'_>,
        reuse: Reuse,
        connect_timeout: Duration,
        mut slot: ConnSlot,
    ) -> Result<Response<PooledBody>, Failed> {
        let io = match self.connector.connect(up, connect_timeout, false).await {
            Ok(io) => io,
            Err(e) => return Err(Failed::unsent(e, req)),
        };
        slot.opened();
        self.send_on(Conn::new(io, slot), req, added, reuse).await
    }

    /// One exchange on `conn`: on this task ([`crate::h1`]), with `added` written after the
    /// request's fields, or for an upgrade over hyper's client, which then owns the connection
    /// (it is never pooled again; an upgrade's fields are all in its map).
    // not an `async fn`: that would keep a second copy of each by-value argument in
    // the future (rust-lang/rust#62958), and the request's future is moved by value
    #[allow(clippy::manual_async_fn)]
    fn send_on<'a>(
        &'a self,
        conn: Box<Conn>,
        req: Request<UpstreamBody>,
        added: &'a Added<'_>,
        reuse: Reuse,
    ) -> impl Future<Output = Result<Response<PooledBody>, Failed>> + use<'a> {
        async move {
            if reuse == Reuse::Never {
                let Some((io, slot)) = (*conn).into_io() else {
                    return Err(Failed::unsent(
                        UpstreamError::Exchange(ExchangeError::Closed),
                        req,
                    ));
                };
                return Box::pin(self.upgrade_on(io, slot, req)).await;
            }
            match std::pin::pin!(h1::exchange(conn, req, added, true)).await {
                Ok(resp) => Ok(resp.map(PooledBody::direct)),
                Err((e, Some(unsent))) => Err(Failed::unsent(UpstreamError::Exchange(e), unsent)),
                Err((e, None)) => Err(Failed::sent(UpstreamError::Exchange(e))),
            }
        }
    }

    /// Send an upgrade request over hyper's HTTP/1.1 client on `io`; its driver task keeps the
    /// connection (and `slot`) until the tunnel ends.
    async fn upgrade_on(
        &self,
        io: UpstreamIo,
        slot: ConnSlot,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, Failed> {
        let (mut sender, conn) = match self.builder.handshake(TokioIo::new(io)).await {
            Ok(h) => h,
            Err(e) => return Err(Failed::unsent(UpstreamError::Handshake(e), req)),
        };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            drop(slot);
        });
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(|body| PooledBody::hyper(body, Some(Lease::new(sender))))),
            Err(mut e) => {
                let unsent = e.take_message();
                let error = UpstreamError::Exchange(ExchangeError::Hyper(e.into_error()));
                match unsent {
                    Some(unsent) => Err(Failed::unsent(error, unsent)),
                    None => Err(Failed::sent(error)),
                }
            }
        }
    }

    /// Send `req` (already in HTTP/2 form: absolute URI, version 2) to `up` on a stream of one
    /// of this worker's HTTP/2 connections to it, opening one within `connect_timeout` when
    /// none has a free stream.
    // not an `async fn`: that would keep a second copy of each by-value argument in
    // the future (rust-lang/rust#62958), and the request's future is moved by value
    #[allow(clippy::manual_async_fn)]
    pub fn send_h2<'a>(
        &'a self,
        up: &'a UpstreamState,
        req: Request<UpstreamBody>,
        connect_timeout: Duration,
    ) -> impl Future<Output = Result<Response<PooledBody>, Failed>> + use<'a> {
        async move {
            let (mut sender, slot) = loop {
                match h2pool::next(up.id, up.epoch()) {
                    Next::Ready(sender, slot) => break (sender, slot),
                    Next::Wait(opening) => {
                        // the caller's deadline bounds the wait; the opener's connect timeout too
                        // boxed, as opening below: rare waits kept out of every request's future
                        let wait = tokio::time::timeout(connect_timeout, opening.over());
                        let _ = Box::pin(wait).await;
                    }
                    Next::Open(opening) => {
                        match Box::pin(self.open_h2(up, connect_timeout)).await {
                            Ok(sender) => {
                                let slot = opening.finish(sender.clone(), up.epoch());
                                break (sender, slot);
                            }
                            Err(e) => return Err(Failed::unsent(e, req)),
                        }
                    }
                }
            };
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| Failed::sent(UpstreamError::Exchange(ExchangeError::Hyper(e))))?;
            Ok(resp.map(|body| PooledBody::stream(body, slot)))
        }
    }

    async fn open_h2(
        &self,
        up: &UpstreamState,
        connect_timeout: Duration,
    ) -> Result<H2Sender, UpstreamError> {
        let stream = self.connector.connect(up, connect_timeout, true).await?;
        let (sender, conn) = self
            .h2
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended with an error");
            }
        });
        Ok(sender)
    }
}
