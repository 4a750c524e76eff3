//! Listeners: HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on one port via hyper-util's auto
//! builder, with a timer so header-read timeouts work, upgrades enabled, and graceful drain on
//! shutdown. The server takes an already bound listener and a shutdown future, so tests bind
//! `127.0.0.1:0` and stop it cleanly.

use crate::forward::{ConnInfo, Proxy};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Time allowed for a client to send a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Time allowed for open connections to finish after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serve `listener` until `shutdown` completes, then drain open connections.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let active = proxy.router().metrics().active_connections.clone();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // e.g. EMFILE: back off briefly instead of spinning
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let info = Arc::new(ConnInfo::new(peer));
                let proxy = proxy.clone();
                let svc = service_fn(move |req| {
                    let proxy = proxy.clone();
                    let info = info.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req, &info).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                let active = active.clone();
                active.inc();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    active.dec();
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.drain_timeout) => {
            tracing::warn!("drain timeout reached with connections still open");
        }
    }
}
