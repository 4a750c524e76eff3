//! The upstream side of an exchange: take an idle connection from this worker's pool or open
//! one (connect timeout, HTTP/1.1 handshake with upgrades, driver task on this worker's
//! runtime), send the request, and hand back the response with its connection on loan. A
//! request that a pooled connection closed before writing is retried on another connection:
//! nothing reached the upstream, so this is safe even for non-idempotent requests. HTTP/2
//! upstreams get a stream on one of this worker's multiplexed connections (`crate::h2pool`).

use crate::body::UpstreamBody;
use crate::h2pool::{self, H2Sender, Next};
use crate::pool::{self, Lease, PooledBody, Sender};
use crate::upstream::{ConnectError, Connector, UpstreamState};
use http::{Request, Response};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::{Duration, Instant};

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened; nothing was sent, a retry is safe.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection opened but the HTTP/1.1 handshake failed; nothing was sent.
    #[error("handshake with upstream failed")]
    Handshake(#[source] hyper::Error),
    /// The request was (at least partly) sent and the exchange failed; a retry may repeat it.
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
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

/// Whether the connection may serve later requests once this exchange is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Return it to the pool when the response body is read.
    Pool,
    /// Never reuse it (it carries a protocol upgrade).
    Never,
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

    /// Send `req` (already in HTTP/2 form: absolute URI, version 2) to `up` on a stream of one
    /// of this worker's HTTP/2 connections to it, opening one within `connect_timeout` when
    /// none has a free stream.
    pub async fn send_h2(
        &self,
        up: &UpstreamState,
        req: Request<UpstreamBody>,
        connect_timeout: std::time::Duration,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let (mut sender, slot) = loop {
            match h2pool::next(up.id) {
                Next::Ready(sender, slot) => break (sender, slot),
                Next::Wait(notify) => {
                    let opened = notify.notified();
                    // the caller's deadline bounds the wait; the opener's connect timeout too
                    let _ = tokio::time::timeout(connect_timeout, opened).await;
                }
                Next::Open(opening) => {
                    let sender = self.open_h2(up, connect_timeout).await?;
                    let slot = opening.finish(sender.clone());
                    break (sender, slot);
                }
            }
        };
        let resp = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Exchange)?;
        Ok(resp.map(|body| PooledBody::stream(body, slot)))
    }

    async fn open_h2(
        &self,
        up: &UpstreamState,
        connect_timeout: std::time::Duration,
    ) -> Result<H2Sender, UpstreamError> {
        let stream = self.connector.connect(up, connect_timeout).await?;
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

    /// Send `req` to `up` over a pooled connection if this worker has one, else a new one
    /// opened within `connect_timeout`. `now` is the request's start time.
    pub async fn send(
        &self,
        up: &UpstreamState,
        mut req: Request<UpstreamBody>,
        reuse: Reuse,
        now: Instant,
        connect_timeout: Duration,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        while let Some(mut sender) = pool::take(up.id, now) {
            // an idle connection may still be finishing the previous exchange, or be closing
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(leased(up, sender, resp, reuse)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(UpstreamError::Exchange(e.into_error())),
                },
            }
        }
        self.send_new(up, req, reuse, connect_timeout).await
    }

    /// Send `req` to `up` over a new connection opened within `connect_timeout` (prewarming
    /// opens connections this way).
    pub async fn send_new(
        &self,
        up: &UpstreamState,
        req: Request<UpstreamBody>,
        reuse: Reuse,
        connect_timeout: Duration,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let mut sender = self.open(up, connect_timeout).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Exchange)?;
        Ok(leased(up, sender, resp, reuse))
    }

    async fn open(
        &self,
        up: &UpstreamState,
        connect_timeout: Duration,
    ) -> Result<Sender, UpstreamError> {
        let stream = self.connector.connect(up, connect_timeout).await?;
        let (sender, conn) = self
            .builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        // the driver runs on this worker's runtime, beside the requests that use it
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

fn leased(
    up: &UpstreamState,
    sender: Sender,
    resp: Response<hyper::body::Incoming>,
    reuse: Reuse,
) -> Response<PooledBody> {
    let lease = Lease::new(up.id, sender, reuse == Reuse::Pool);
    resp.map(|body| PooledBody::new(body, Some(lease)))
}
