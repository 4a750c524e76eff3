//! The upstream side of an exchange: take an idle connection from this worker's pool or open
//! one (connect timeout, HTTP/1.1 handshake with upgrades, driver task on this worker's
//! runtime), send the request, and hand back the response with its connection on loan. A
//! request that a pooled connection closed before writing is retried on another connection:
//! nothing reached the upstream, so this is safe even for non-idempotent requests.

use crate::body::UpstreamBody;
use crate::pool::{self, Lease, PooledBody, Sender};
use crate::upstream::{ConnectError, Connector, UpstreamState};
use http::{Request, Response};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
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

/// Opens and reuses HTTP/1.1 connections to upstreams.
#[derive(Clone)]
pub struct UpstreamClient {
    connector: Connector,
    builder: http1::Builder,
}

impl UpstreamClient {
    /// A client opening connections with `connector`.
    pub fn new(connector: Connector) -> UpstreamClient {
        UpstreamClient {
            connector,
            builder: http1::Builder::new(),
        }
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
