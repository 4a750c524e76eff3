//! The admin API, on its own listener (loopback by default), and the health listener
//! ([`serve_health`]: `/healthz`, `/readyz`, `/metrics` only, for probes and Prometheus on an
//! address they reach). Reads are open unless [`AdminOptions::protect_reads`]; writes
//! (`PUT`/`DELETE /branches/{name}`) need `Authorization: Bearer <token>`, compared in constant
//! time, and are validated exactly like files. Errors are JSON with a message; unknown paths
//! are 404. Every connection is bounded: request headers must arrive within
//! [`AdminOptions::header_read_timeout`] (an idle or silent connection is closed then), a body
//! within [`AdminOptions::body_timeout`] and [`AdminOptions::max_body`] bytes, and at most
//! [`AdminOptions::max_connections`] are served at once.

mod branches;
pub mod json;
pub mod query;
mod reads;

use crate::control::ControlPlane;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Bounds of the admin listener.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// Time allowed for a request's headers, counted from when the connection is ready for the
    /// next request: a client that connects and sends nothing, trickles its headers, or sits
    /// idle between requests is closed after it.
    pub header_read_timeout: Duration,
    /// Time allowed to read a write's body.
    pub body_timeout: Duration,
    /// Largest accepted request body (a layer document).
    pub max_body: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Whether the reads that reveal config values (`/routes`, `/plan`, `/explain`,
    /// `/branches`, `/instances`) need the bearer token too (for an admin listener that is not
    /// on loopback). `/healthz`, `/readyz` and `/metrics` never do.
    pub protect_reads: bool,
}

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_body: 1 << 20,
            max_connections: 256,
            protect_reads: false,
        }
    }
}

/// What the admin API serves.
pub struct AdminState {
    /// The control plane (config, table, writes).
    pub control: Arc<ControlPlane>,
    /// The metrics registry rendered at `/metrics`.
    pub registry: prometheus::Registry,
    /// Bearer token for writes; `None` disables writes.
    pub token: Option<Vec<u8>>,
    /// Set once the proxy listeners are serving (for `/readyz`).
    pub serving: Arc<AtomicBool>,
    /// Connection bounds.
    pub options: AdminOptions,
    /// The environments runtime, when an executor runs the plans (`/instances`).
    pub runtime: Option<Arc<crate::environments::Runtime>>,
    /// The shared store this proxy follows, if any (its sync state is `/readyz` detail).
    pub source: Option<Arc<crate::etcd::SyncStatus>>,
    /// The data plane's view of its upstreams (`GET /upstreams`: readiness, ejection, failure
    /// streaks, connections), when the proxy runs in this process.
    pub upstreams: Option<UpstreamsView>,
}

/// What renders `GET /upstreams` (the proxy's registry, seen from the binary that owns both).
pub type UpstreamsView = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

type Reply = Response<Full<Bytes>>;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The whole admin API.
    Admin,
    /// `/healthz`, `/readyz` and `/metrics` only: no write, no config value.
    Health,
}

/// Serve the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    serve_scope(listener, state, shutdown, Scope::Admin).await;
}

/// Serve only `/healthz`, `/readyz` and `/metrics` on `listener` (for kubelet probes and
/// Prometheus, on an address they reach) until `shutdown` completes; every other path is `404`.
pub async fn serve_health(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    serve_scope(listener, state, shutdown, Scope::Health).await;
}

async fn serve_scope(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
    scope: Scope,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(state.options.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = &mut shutdown => return,
        };
        tokio::select! {
            acc = listener.accept() => {
                let Ok((stream, _)) = acc else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let timeout = state.options.header_read_timeout;
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move {
                            let reply = match scope {
                                Scope::Admin => handle(&state, req).await,
                                Scope::Health => health(&state, &req),
                            };
                            Ok::<_, Infallible>(reply)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(timeout)
                        .max_buf_size(64 * 1024)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            () = &mut shutdown => return,
        }
    }
}

pub(crate) fn json(status: StatusCode, v: &serde_json::Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

/// The health listener: probes and metrics, nothing else.
fn health<B>(state: &AdminState, req: &Request<B>) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(state),
        (&Method::GET, "/metrics") => {
            if let Some(s) = &state.source {
                s.refresh_staleness();
            }
            metrics(&state.registry)
        }
        (_, p) => error(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint on the health listener: {p}"),
        ),
    }
}

async fn handle(state: &AdminState, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let branch = path.strip_prefix("/branches/");
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
        return health(state, &req);
    }
    if state.options.protect_reads && method == Method::GET {
        if let Err(r) = authorize(state, &req) {
            return *r;
        }
    }
    match (method, path.as_str()) {
        (Method::GET, "/routes") => json(
            StatusCode::OK,
            &json::table_json(&*state.control.table().await),
        ),
        (Method::GET, "/upstreams") => match &state.upstreams {
            Some(view) => json(StatusCode::OK, &view()),
            None => error(
                StatusCode::NOT_FOUND,
                "no data plane runs in this process: /upstreams is served by the proxies",
            ),
        },
        (Method::GET, "/branches") => branches::list(&state.control, state.runtime.as_deref()),
        (Method::GET, "/instances") => json(
            StatusCode::OK,
            &crate::environments::instances_json(state.runtime.as_deref()),
        ),
        (Method::GET, "/plan") => reads::plan(&state.control, req.uri().query()),
        (Method::GET, "/explain") => {
            reads::explain(&state.control, state.runtime.as_deref(), req.uri().query()).await
        }
        (Method::GET, _) if branch.is_some() => branches::get(&state.control, branch.unwrap_or("")),
        (Method::PUT, _) if branch.is_some() => {
            if let Err(r) = authorize(state, &req) {
                return *r;
            }
            let name = branch.unwrap_or("").to_string();
            branches::put(state, &name, req).await
        }
        (Method::DELETE, _) if branch.is_some() => {
            if let Err(r) = authorize(state, &req) {
                return *r;
            }
            branches::delete(&state.control, branch.unwrap_or("")).await
        }
        (_, p) if p.starts_with("/branches") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use GET, PUT or DELETE")
        }
        (_, p) => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {p}")),
    }
}

/// `200` once the first complete config is published to the proxy and the proxy listeners
/// serve; else `503` with the reason. A proxy following a shared store adds its sync state
/// (`source`: connected, revision, staleness in seconds).
fn readyz(state: &AdminState) -> Reply {
    let reason = if state.source.as_ref().is_some_and(|s| !s.is_synced()) {
        Some("the first complete load from the shared store is not done yet")
    } else if !state.control.is_ready() {
        Some("the first config is not yet published to the proxy")
    } else if !state.serving.load(Ordering::Acquire) {
        Some("the proxy listeners are not serving yet")
    } else {
        None
    };
    let (status, mut body) = match reason {
        None => (StatusCode::OK, serde_json::json!({"ready": true})),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ready": false, "reason": r}),
        ),
    };
    // a proxy that lost its store stays ready (it serves its last good table) and says how
    // stale that table may be
    if let Some(s) = &state.source {
        body["source"] = s.to_json();
    }
    json(status, &body)
}

/// Why a write is refused, if it is.
fn authorize(state: &AdminState, req: &Request<Incoming>) -> Result<(), Box<Reply>> {
    use subtle::ConstantTimeEq;
    let Some(token) = &state.token else {
        let msg = "admin writes are disabled: no token is configured";
        return Err(Box::new(error(StatusCode::FORBIDDEN, msg)));
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if bool::from(given.ct_eq(token.as_slice())) {
        Ok(())
    } else {
        let msg = "a valid bearer token is required for writes";
        Err(Box::new(error(StatusCode::UNAUTHORIZED, msg)))
    }
}

fn metrics(registry: &prometheus::Registry) -> Reply {
    let mut buf = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut buf) {
        Ok(()) => {
            let mut r = Response::new(Full::new(Bytes::from(buf)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding metrics failed: {e}"),
        ),
    }
}
