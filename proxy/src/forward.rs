//! The request path, as named phases: `decide` (context, service, route, upstream), `admit`
//! (readiness, sleep and the hold queue: `crate::admit`), `prepare`
//! (rewrite the request for the upstream), `send` (this worker's pooled connections, timeouts,
//! upgrades) and `finish` (response headers). Errors become short plain-text local replies (gRPC
//! trailers-only replies to gRPC calls); nothing here panics or locks, and the snapshot loaded
//! at the start is used to the end (the route's connect timeout and protocol included).

use crate::access_log::{AccessLog, Routed};
use crate::activity;
use crate::balance::{self, InFlight};
use crate::body::{self, ClientBody, RequestBody};
use crate::client::{Limits, Reuse, UpstreamClient, UpstreamError};
use crate::context::{BranchName, ContextSource, BAGGAGE};
use crate::deadline;
use crate::grpc::{self, Code};
use crate::h1::Added;
use crate::headers::{self, HeaderError};
use crate::lifecycle::WAKE_CHANNEL_CAPACITY;
use crate::metrics::KindLabel;
use crate::options::ProxyOptions;
use crate::pool::{Lease, PooledBody};
use crate::reply::{local, LocalReply, ResponseBody, ROUTE_HEADER};
use crate::router::{Router, Snapshot};
use crate::trust::{self, TrustPolicy};
use crate::upstream::{ConnectError, Connector, InUse, UpstreamState};
use bytes::Bytes;
use http::header::{self, Entry, HeaderName, HeaderValue};
use http::uri::Uri;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper_util::rt::TokioIo;
use microstax_table::table::BASELINE_ID;
use microstax_table::{LayerId, Readiness, Route, RouteKind, ServiceId, UpstreamProtocol};
use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

// built at compile time: a name given as `&str` would be parsed on every insert
const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-microstax-fallback");
const COLD_START_HEADER: HeaderName = HeaderName::from_static("x-microstax-cold-start-ms");

/// Per-connection facts computed once when the connection is accepted.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's IP as an `X-Forwarded-For` element.
    pub peer_ip: HeaderValue,
    /// The listener's request-head limit, in bytes.
    pub max_header_bytes: usize,
    /// Whether this peer's carriers are honoured (its listener's trust policy, decided once).
    pub trusted: bool,
    /// The listener's trust policy (consulted for untrusted peers only).
    pub trust: Arc<TrustPolicy>,
    /// The listener's access log (routing facts are attached to responses only when it is on).
    pub log: Arc<AccessLog>,
    /// `X-Forwarded-Proto` of this connection (`http`, or `https` behind TLS termination).
    pub proto: HeaderValue,
}

impl ConnInfo {
    /// Facts of a connection from `peer` to a listener accepting heads up to
    /// `max_header_bytes`, under `trust`.
    pub fn new(peer: SocketAddr, max_header_bytes: usize, trust: &Arc<TrustPolicy>) -> ConnInfo {
        let ip = peer.ip().to_string();
        ConnInfo {
            peer_ip: HeaderValue::from_str(&ip).unwrap_or(HeaderValue::from_static("unknown")),
            max_header_bytes,
            trusted: trust.trusts_peer(peer.ip()),
            trust: trust.clone(),
            log: Arc::default(),
            proto: HeaderValue::from_static("http"),
        }
    }
}

/// A routing decision for one request.
pub(crate) struct Decision<'s> {
    /// The layer of the branch the request named (the baseline when none or unknown).
    pub(crate) layer: LayerId,
    pub(crate) branch: Option<(BranchName, ContextSource)>,
    pub(crate) service: ServiceId,
    pub(crate) route: &'s Route,
    pub(crate) upstream: &'s Arc<UpstreamState>,
    /// The readiness policy sent the request to the parent's route.
    pub(crate) fallback: bool,
    /// How long admission held the request for its upstream to start or become ready.
    pub(crate) held: Option<Duration>,
    /// The client's carriers are honoured (see `crate::trust`).
    pub(crate) trusted: bool,
    /// The preview cookie to set (a token shown in the header or the query).
    pub(crate) set_cookie: Option<HeaderValue>,
}

impl Decision<'_> {
    fn kind(&self) -> KindLabel {
        if self.fallback {
            KindLabel::Fallback
        } else {
            KindLabel::Route(self.route.kind)
        }
    }
}

/// The data plane: routes and forwards requests using the router's current snapshot.
pub struct Proxy {
    router: Arc<Router>,
    client: UpstreamClient,
    options: ProxyOptions,
    /// Runtimes of the per-core workers, when sharded: prewarming opens connections on each,
    /// since each worker pools its own.
    workers: OnceLock<Box<[Handle]>>,
    /// Wakes for asleep upstreams, to the control plane (bounded; see `crate::lifecycle`).
    wake_tx: mpsc::Sender<Arc<str>>,
    /// Its receiving end until the control plane takes it.
    wake_rx: Mutex<Option<mpsc::Receiver<Arc<str>>>>,
    /// The counters of stalled request and response bodies. Leaked, once per proxy, so that
    /// a body can hold them without a reference count per request (a shared atomic that every
    /// worker's requests would touch).
    stalls: &'static BodyStalls,
}

/// See [`Proxy::stalls`](Proxy).
struct BodyStalls {
    request: prometheus::IntCounter,
    response: prometheus::IntCounter,
}

impl Proxy {
    /// A proxy over `router` with per-worker pools of HTTP/1.1 upstream connections.
    pub fn new(router: Arc<Router>, options: ProxyOptions) -> Arc<Proxy> {
        let (wake_tx, wake_rx) = mpsc::channel(WAKE_CHANNEL_CAPACITY);
        let m = router.metrics();
        let stalls = Box::leak(Box::new(BodyStalls {
            request: m.request_body_idle_timeouts.clone(),
            response: m.response_body_idle_timeouts.clone(),
        }));
        Arc::new(Proxy {
            router,
            client: UpstreamClient::new(Connector),
            options,
            workers: OnceLock::new(),
            wake_tx,
            wake_rx: Mutex::new(Some(wake_rx)),
            stalls,
        })
    }

    pub(crate) fn wake_sender(&self) -> &mpsc::Sender<Arc<str>> {
        &self.wake_tx
    }

    pub(crate) fn wake_receiver(&self) -> &Mutex<Option<mpsc::Receiver<Arc<str>>>> {
        &self.wake_rx
    }

    /// The router this proxy reads.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The upstream client (shared with prewarming).
    pub(crate) fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// Record the runtimes of the workers serving this proxy (once; later calls are ignored and
    /// return false).
    pub fn attach_workers(&self, handles: Vec<Handle>) -> bool {
        self.workers.set(handles.into_boxed_slice()).is_ok()
    }

    /// The worker runtimes, if attached.
    pub(crate) fn workers(&self) -> Option<&[Handle]> {
        self.workers.get().map(|w| &**w)
    }

    /// Prewarm settings.
    pub fn options(&self) -> &ProxyOptions {
        &self.options
    }

    /// Handle one request end to end.
    // not an `async fn`: that would keep a second copy of each by-value argument in
    // the future (rust-lang/rust#62958), and the request's future is moved by value
    #[allow(clippy::manual_async_fn)]
    pub fn handle<'a>(
        &'a self,
        req: Request<ClientBody>,
        conn: &'a ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + use<'a> {
        async move {
            let start = Instant::now();
            // the request's activity stamp, computed once (decide, record and attempts use it)
            let stamp = activity::stamp(start);
            let snap = self.router.load();
            let is_grpc = grpc::is_grpc(req.headers());
            let mut routed = None;
            let (resp, service, kind, layer) = match decide(&snap, &req, conn, stamp) {
                Err(reply) => (
                    local(&snap, reply, is_grpc),
                    None,
                    KindLabel::None,
                    BASELINE_ID,
                ),
                Ok(d) => match self.admit(&snap, self.record(d, stamp)).await {
                    Err((reply, d)) => {
                        let kind = d.kind();
                        routed = conn.log.enabled().then(|| routed_of(&snap, &d));
                        (local(&snap, reply, is_grpc), Some(d.service), kind, d.layer)
                    }
                    Ok(d) => {
                        if d.fallback {
                            d.upstream.touch(stamp);
                        }
                        routed = conn.log.enabled().then(|| routed_of(&snap, &d));
                        let (service, kind, layer) = (d.service, d.kind(), d.layer);
                        // pinned where it is built: `.await` on the value would move it again
                        let fwd = std::pin::pin!(self.forward(
                            &snap,
                            d,
                            req,
                            conn,
                            (start, stamp),
                            is_grpc
                        ));
                        let resp = match fwd.await {
                            Ok(r) => r,
                            Err(reply) => local(&snap, reply, is_grpc),
                        };
                        (resp, Some(service), kind, layer)
                    }
                },
            };
            let mut resp = resp;
            if !conn.trusted {
                crate::reply::redact(&mut resp);
            }
            if let Some(r) = routed {
                resp.extensions_mut().insert(r);
            }
            let secs = start.elapsed().as_secs_f64();
            snap.metrics
                .request(service, kind, layer, resp.status().as_u16(), secs);
            resp
        }
    }

    /// Record the request's activity: its branch's layer and the upstream its route chose.
    #[inline]
    fn record<'s>(&self, d: Decision<'s>, now: u64) -> Decision<'s> {
        self.router.layer_activity().touch(d.layer, now);
        d.upstream.touch(now);
        d
    }

    /// Phases 3 and 4: send upstream and finish the response.
    // not an `async fn`: that would keep a second copy of each by-value argument in
    // the future (rust-lang/rust#62958), and the request's future is moved by value
    #[allow(clippy::manual_async_fn)]
    fn forward<'a>(
        &'a self,
        snap: &'a Snapshot,
        mut d: Decision<'a>,
        mut req: Request<ClientBody>,
        conn: &'a ConnInfo,
        (start, stamp): (Instant, u64),
        is_grpc: bool,
    ) -> impl Future<Output = Result<Response<ResponseBody>, LocalReply>> + use<'a> {
        async move {
            let upgrade = headers::wants_upgrade(req.headers(), req.version());
            let policy = &d.route.policy;
            // an upgrade is an HTTP/1.1 mechanism: such a request always goes over HTTP/1.1
            let h2 = !upgrade
                && match policy.protocol {
                    UpstreamProtocol::Http2 => true,
                    UpstreamProtocol::Http1 => false,
                    UpstreamProtocol::Auto => is_grpc,
                };
            // a gRPC call's own deadline bounds the wait, when shorter than the route's
            let timeout = match is_grpc.then(|| grpc::timeout(req.headers())).flatten() {
                Some(t) => t.min(policy.request_timeout),
                None => policy.request_timeout,
            };
            let mut added = Added::default();
            prepare(snap, &d, &mut req, conn, upgrade, h2, &mut added)
                .map_err(|e| LocalReply::bad_request(format!("the request names {e}")))?;
            let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
            let reuse = if upgrade { Reuse::Never } else { Reuse::Pool };
            d.upstream.requests.fetch_add(1, Ordering::Relaxed);
            // an executor's instance is in use until the response body ends (or the tunnel
            // closes): its scale to zero waits for that
            let in_use = InUse::of(d.upstream);
            let connect_timeout = policy.connect_timeout.min(timeout);
            let limits = Limits {
                max_connections: policy.max_connections,
                max_pending: policy.max_pending,
            };
            let idle = self.options.request_body_idle_timeout;
            let stalls = Some(&self.stalls.request);
            let req = req.map(|b| Either::Left(RequestBody::new(b, idle, stalls)));
            let outcome = {
                // pinned where it is built: `within` then holds a pointer, not a copy of
                // the (large) future, and nothing moves it again
                let attempts = std::pin::pin!(self.attempts(
                    snap,
                    &mut d,
                    req,
                    &added,
                    h2,
                    reuse,
                    (start, stamp),
                    connect_timeout,
                    limits,
                ));
                deadline::within(start + timeout, attempts).await
            };
            let mut resp = match outcome {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(upstream_error(snap, &d, &e)),
                Err(_) => {
                    d.upstream.timeouts.fetch_add(1, Ordering::Relaxed);
                    snap.metrics.timeout(d.service);
                    let reason = format!(
                        "upstream {} did not answer within {timeout:?}",
                        d.upstream.key
                    );
                    return Err(LocalReply::new(StatusCode::GATEWAY_TIMEOUT, reason)
                        .with_grpc(Code::DeadlineExceeded));
                }
            };
            resp.body_mut().idle_timeout(
                self.options.response_body_idle_timeout,
                Some(&self.stalls.response),
            );
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            if let Err(e) = headers::strip_response(resp.headers_mut(), switching) {
                // dropping the response unread closes its connection: its framing is unknown
                let reason = format!("upstream {} answered with {e}", d.upstream.key);
                return Err(LocalReply::new(StatusCode::BAD_GATEWAY, reason));
            }
            resp.body_mut().keep_in_use(in_use);
            if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                let lease = resp.body_mut().take_lease();
                let in_use = resp.body_mut().take_in_use();
                tokio::spawn(tunnel(client_upgrade, upstream_upgrade, lease, in_use));
            }
            if d.fallback {
                resp.headers_mut()
                    .insert(FALLBACK_HEADER, HeaderValue::from_static("not-ready"));
            }
            if let Some(waited) = d.held {
                let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
                resp.headers_mut()
                    .insert(COLD_START_HEADER, HeaderValue::from(ms));
            }
            if snap.table.settings.debug_header {
                add_route_header(snap, &d, resp.headers_mut());
            }
            if let Some(c) = d.set_cookie {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
            Ok(resp)
        }
    }
}

/// What the access log says of `d` (only built when the log is on).
fn routed_of(snap: &Arc<Snapshot>, d: &Decision<'_>) -> Routed {
    Routed {
        snap: snap.clone(),
        branch: d.branch,
        service: Some(d.service),
        layer: d.route.layer,
        kind: d.kind(),
        upstream: Some(d.upstream.key.clone()),
    }
}

impl Proxy {
    /// Send `req` to `d`'s upstream; when nothing of it was sent (the connect failed, or a
    /// pooled connection closed before the request was written), or when an idempotent
    /// request without a body was reset before a complete response head, again to another of
    /// the route's upstreams (or the same), at most [`MAX_RETRIES`] times and only while the
    /// upstream's retry budget allows. Outcomes feed outlier detection. `d.upstream` ends as
    /// the upstream that answered (or failed last).
    #[allow(clippy::too_many_arguments)]
    // not an `async fn`: that would keep a second copy of each by-value argument in
    // the future (rust-lang/rust#62958), and the request's future is moved by value
    #[allow(clippy::manual_async_fn)]
    fn attempts<'a, 's>(
        &'a self,
        snap: &'s Snapshot,
        d: &'a mut Decision<'s>,
        mut req: Request<crate::body::UpstreamBody>,
        added: &'a Added<'_>,
        h2: bool,
        reuse: Reuse,
        (start, stamp): (Instant, u64),
        connect_timeout: Duration,
        limits: Limits,
    ) -> impl Future<Output = Result<Response<PooledBody>, UpstreamError>> + use<'a, 's> {
        async move {
            let mut retries = 0;
            // a branch instance that refuses connections is restarting (its executor may not have
            // seen the crash yet): as for a not-ready upstream, the request is held for the route's
            // `hold` time, connecting again as the instance comes back, within the retry budget
            let hold_until = match d.route.policy.readiness {
                Readiness::Hold { ms } if d.route.kind != RouteKind::Baseline => {
                    Some(start + Duration::from_millis(ms))
                }
                _ => None,
            };
            let mut pause = HOLD_PAUSE;
            // the head of a request that may be sent again after a reset (its body is empty, so
            // the head is all of it); a sent request is consumed. Kept only where a retry has
            // somewhere to go, its upstream is failing, or it is an executor's instance whose
            // pooled connections die with it when it crashes: the copy costs ~2k instructions, 6%
            // of a request, which a healthy single endpoint should not pay
            let worth = d.route.upstreams.len() > 1
                || d.upstream.failing()
                || (hold_until.is_some() && d.upstream.is_managed());
            let copy = (worth && reuse == Reuse::Pool && replayable(&req))
                .then(|| Box::new(head_copy(&req)));
            loop {
                let up = d.upstream;
                let sent = {
                    // counted only where the balancer has a choice to make
                    let _in_flight = (d.route.upstreams.len() > 1).then(|| InFlight::start(up.id));
                    if h2 {
                        std::pin::pin!(self.client.send_h2(up, req, connect_timeout)).await
                    } else {
                        let sent =
                            self.client
                                .send(up, req, added, reuse, start, connect_timeout, limits);
                        std::pin::pin!(sent).await
                    }
                };
                let failed = match sent {
                    Ok(resp) => {
                        if resp.status().is_server_error() {
                            self.outlier(snap, d, stamp);
                        } else {
                            up.succeeded();
                        }
                        return Ok(resp);
                    }
                    Err(f) => f,
                };
                if failed.error.is_connect() {
                    up.connect_errors.fetch_add(1, Ordering::Relaxed);
                    snap.metrics.connect_error(d.service);
                }
                // a client's stalled request body says nothing of the upstream
                let stalled =
                    matches!(&failed.error, UpstreamError::Exchange(e) if body::is_idle(e));
                if !stalled && !matches!(failed.error, UpstreamError::Overloaded { .. }) {
                    self.outlier(snap, d, stamp);
                }
                let retryable = !matches!(failed.error, UpstreamError::Overloaded { .. });
                let unsent = failed.unsent.or_else(|| {
                    let reset = reset_before_response(&failed.error);
                    reset.then(|| copy.as_deref().map(|c| Box::new(head_copy(c))))?
                });
                let holding = d.route.upstreams.len() == 1
                    && d.upstream.is_managed()
                    && hold_until.is_some_and(|t| Instant::now() + pause < t);
                let Some(unsent) =
                    unsent.filter(|_| retryable && (retries < MAX_RETRIES || holding))
                else {
                    return Err(failed.error);
                };
                if !up.try_retry(stamp) {
                    snap.metrics.retry(d.service, false);
                    return Err(failed.error);
                }
                snap.metrics.retry(d.service, true);
                retries += 1;
                req = *unsent;
                if let (true, Some(until)) = (holding, hold_until) {
                    // boxed: a rare wait, kept out of every request's future
                    Box::pin(async {
                        tokio::time::sleep(pause).await;
                        if !up.is_serving() {
                            // the executor saw the crash: its restart's readiness ends the wait
                            let left = until.saturating_duration_since(Instant::now());
                            let _ = tokio::time::timeout(left, up.wait_ready()).await;
                        }
                    })
                    .await;
                    pause = (pause * 2).min(HOLD_PAUSE_MAX);
                    continue;
                }
                let mut back = || snap.metrics.ejected.dec();
                if let Some(next) = balance::pick(
                    &d.route.upstreams,
                    &snap.upstreams,
                    stamp,
                    Some(up.id),
                    &mut back,
                ) {
                    d.upstream = next;
                }
            }
        }
    }

    /// Count a failure of `d`'s upstream; eject it when that is its streak's limit and another
    /// upstream of the route still serves.
    fn outlier(&self, snap: &Snapshot, d: &Decision<'_>, stamp: u64) {
        let up = d.upstream;
        let others_serve = d.route.upstreams.iter().any(|&id| {
            snap.upstreams
                .get(id as usize)
                .is_some_and(|u| u.id != up.id && !u.is_ejected())
        });
        if up.failed(stamp, others_serve) {
            snap.metrics.ejections.inc();
            snap.metrics.ejected.inc();
            tracing::info!(upstream = %up.key, "upstream ejected after consecutive failures");
        }
    }
}

/// Most retries of one request (each also needs the retry budget's leave), except while a
/// refused branch instance's request is held (see `Proxy::attempts`).
pub const MAX_RETRIES: u32 = 2;
/// First pause before connecting again to a refusing branch instance; doubled each time.
const HOLD_PAUSE: Duration = Duration::from_millis(5);
/// Longest pause between those connects.
const HOLD_PAUSE_MAX: Duration = Duration::from_millis(100);

/// Whether a request may be sent again after it was sent: an idempotent method (RFC 9110
/// 9.2.2) and no body (so nothing of it streamed from the client is lost).
fn replayable(req: &Request<crate::body::UpstreamBody>) -> bool {
    use http_body::Body as _;
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    idempotent && req.body().is_end_stream()
}

/// A copy of a bodiless request.
fn head_copy(req: &Request<crate::body::UpstreamBody>) -> Request<crate::body::UpstreamBody> {
    let mut r = Request::new(Either::Right(http_body_util::Empty::new()));
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

/// Whether a sent request failed before a complete response head: the connection closed or
/// was reset while the proxy waited for it.
fn reset_before_response(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Exchange(e) if e.is_reset())
}

/// Phase 1: resolve the branch context, the service, the route and the upstream.
fn decide<'s>(
    snap: &'s Snapshot,
    req: &Request<ClientBody>,
    conn: &ConnInfo,
    stamp: u64,
) -> Result<Decision<'s>, LocalReply> {
    if headers::head_len(req) > conn.max_header_bytes {
        return Err(LocalReply::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request head over {} bytes", conn.max_header_bytes),
        ));
    }
    if req.method() == Method::CONNECT {
        // tunnels to arbitrary targets are not a branch-routing proxy's job; RFC 9110 9.3.6
        // lets a proxy refuse them
        return Err(LocalReply::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
        ));
    }
    let table = &snap.table;
    let host = request_host(req)?;
    let (branch, set_cookie) = if conn.trusted {
        (snap.rules.extract(req.headers(), host), None)
    } else {
        let g = conn.trust.grant(req.headers(), req.uri());
        (g.branch, g.set_cookie)
    };
    let layer = match &branch {
        None => BASELINE_ID,
        Some((name, _)) => match table.branch(name.as_str()) {
            Some(id) => id,
            None if table.settings.context.strict => {
                return Err(LocalReply::new(
                    StatusCode::NOT_FOUND,
                    format!("unknown branch `{}` (strict mode)", name.as_str()),
                ));
            }
            None => BASELINE_ID,
        },
    };
    let path = req.uri().path();
    let Some(service) = table.services.resolve(host, path) else {
        return Err(LocalReply::new(
            StatusCode::NOT_FOUND,
            format!(
                "no service for host `{}` and path `{path}`",
                host.unwrap_or("")
            ),
        ));
    };
    let route = table.route(layer, service).ok_or_else(|| {
        LocalReply::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "table has no baseline route",
        )
    })?;
    let mut back = || snap.metrics.ejected.dec();
    let upstream = balance::pick(&route.upstreams, &snap.upstreams, stamp, None, &mut back)
        .ok_or_else(|| {
            LocalReply::new(StatusCode::INTERNAL_SERVER_ERROR, "route has no upstream")
        })?;
    Ok(Decision {
        layer,
        branch,
        service,
        route,
        upstream,
        fallback: false,
        held: None,
        trusted: conn.trusted,
        set_cookie,
    })
}

/// The host a request is for. The target's authority wins: an HTTP/2 `:authority`, or an
/// absolute-form HTTP/1.1 target, whose Host a proxy must ignore (RFC 9112 3.2.2). Two Host
/// lines, or an HTTP/2 `host` that names another host than `:authority` (RFC 9113 8.3.1), are
/// refused: a hop behind us could pick the other one.
fn request_host(req: &Request<ClientBody>) -> Result<Option<&str>, LocalReply> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(LocalReply::bad_request("more than one Host header"));
    }
    match (target_authority(req.uri()), host) {
        (Some(a), Some(h))
            if req.version() == http::Version::HTTP_2
                && !h.as_bytes().eq_ignore_ascii_case(a.as_bytes()) =>
        {
            Err(LocalReply::bad_request(
                "the host header and :authority name different hosts",
            ))
        }
        (Some(a), _) => Ok(Some(a)),
        (None, h) => Ok(h.and_then(|v| v.to_str().ok())),
    }
}

/// A request target's `host[:port]`, without any user information.
fn target_authority(uri: &Uri) -> Option<&str> {
    let a = uri.authority()?.as_str();
    Some(a.rsplit_once('@').map_or(a, |(_, host)| host))
}

thread_local! {
    static RR: Cell<u32> = const { Cell::new(0) };
}

/// Spread requests over a route's upstreams with a per-thread rotating index (no shared
/// counter on the request path).
pub(crate) fn pick(ids: &[u32]) -> Option<u32> {
    match ids {
        [] => None,
        [one] => Some(*one),
        many => {
            let i = RR.with(|c| {
                let v = c.get().wrapping_add(1);
                c.set(v);
                v
            });
            many.get(i as usize % many.len()).copied()
        }
    }
}

/// Phase 2: rewrite the request for the upstream.
fn prepare<'a>(
    snap: &'a Snapshot,
    d: &Decision<'_>,
    req: &mut Request<ClientBody>,
    conn: &'a ConnInfo,
    upgrade: bool,
    h2: bool,
    added: &mut Added<'a>,
) -> Result<(), HeaderError> {
    let version = req.version();
    // only the own HTTP/1.1 server writes an upstream's fields as they came: its requests are
    // the ones without a body (`ClientBody::Empty`), those `ConnCtx::respond` gets with
    // `raw`; the access log reads the fields from the map, as `respond` does
    added.keep_raw = matches!(req.body(), ClientBody::Empty) && !conn.log.enabled();
    if let Some(a) = target_authority(req.uri()) {
        // HTTP/2 (or an absolute-form HTTP/1.1 target): the target's host goes to Host (an
        // HTTP/2 `host` that agrees is kept as is) and the upstream gets the origin form
        let same = req
            .headers()
            .get(header::HOST)
            .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(a.as_bytes()));
        if !same {
            if let Ok(v) = HeaderValue::from_str(a) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        *req.uri_mut() = origin_form(req.uri());
    }
    *req.version_mut() = http::Version::HTTP_11;
    if !d.trusted {
        // `Request` lends its target and headers one at a time: the target is moved out and back
        let mut uri = std::mem::take(req.uri_mut());
        let stripped = trust::strip_untrusted(req.headers_mut(), &mut uri, &snap.rules);
        *req.uri_mut() = uri;
        if stripped {
            conn.trust.metrics.stripped.inc();
        }
    }
    let policy = &d.route.policy;
    // fields the request lacks go after it in an HTTP/1.1 head the proxy writes itself (see
    // `Added`); into the map for HTTP/2, upgrades (hyper's client) and routes that set or
    // remove fields (those apply to the added ones too)
    let mut added =
        (!h2 && !upgrade && policy.remove_headers.is_empty() && policy.set_headers.is_empty())
            .then_some(added);
    let h = req.headers_mut();
    headers::strip_request(h, upgrade, &snap.rules.header)?;
    add_field(
        h,
        &mut added,
        &headers::FORWARDED_FOR_NAME,
        &conn.peer_ip,
        |h| headers::append_forwarded_for(h, &conn.peer_ip),
    );
    if !d.trusted {
        // an untrusted client does not say how it reached us
        h.remove(headers::X_FORWARDED_PROTO);
    }
    add_field(
        h,
        &mut added,
        &headers::FORWARDED_PROTO_NAME,
        &conn.proto,
        |_| {},
    );
    let via = (&headers::VIA_NAME, headers::via(version));
    if let Err((name, value)) = push(&mut added, via) {
        h.append(name.clone(), value.clone());
    }
    propagate_context(snap, d, h, added);
    for name in policy.remove_headers.iter() {
        h.remove(name);
    }
    for (name, value) in policy.set_headers.iter() {
        h.insert(name.clone(), value.clone());
    }
    if h2 {
        to_h2_form(req, &d.upstream.key);
    }
    Ok(())
}

/// Give the request field `name: value` unless it has one (then `present` decides): in
/// `added` when there is one, else in the map.
fn add_field<'a>(
    h: &mut http::HeaderMap,
    added: &mut Option<&mut Added<'a>>,
    name: &'a HeaderName,
    value: &'a HeaderValue,
    present: impl FnOnce(&mut http::HeaderMap),
) {
    if h.contains_key(name) {
        present(h);
    } else if let Err((name, value)) = push(added, (name, value)) {
        h.insert(name.clone(), value.clone());
    }
}

/// Put a field in `added`, if there is one with room; else it is given back.
fn push<'a>(
    added: &mut Option<&mut Added<'a>>,
    (name, value): (&'a HeaderName, &'a HeaderValue),
) -> Result<(), (&'a HeaderName, &'a HeaderValue)> {
    match added {
        Some(a) => a.push(name, value),
        None => Err((name, value)),
    }
}

/// Put an (origin-form, HTTP/1.1) upstream request in HTTP/2 form: the host moves from `Host`
/// to the target's authority (`:authority`), the scheme is `http` (cleartext, prior knowledge).
fn to_h2_form(req: &mut Request<ClientBody>, upstream: &str) {
    let host = req.headers_mut().remove(header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or(upstream);
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build();
    if let Ok(uri) = uri {
        *req.uri_mut() = uri;
    } else if let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(upstream)
        .path_and_query(req.uri().path_and_query().map_or("/", |pq| pq.as_str()))
        .build()
    {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_2;
}

/// The origin form (`/path?query`) of a request target.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Uri::from(pq.clone()),
        _ => Uri::from_static("/"),
    }
}

/// Carry the context on as exactly the value used: the canonical branch header, and one
/// baggage member with the branch (every other member kept). With no context, a branch header
/// or baggage member the request carried was malformed: it is removed, so the next hop cannot
/// read what this one ignored.
fn propagate_context<'a>(
    snap: &'a Snapshot,
    d: &Decision<'_>,
    h: &mut http::HeaderMap,
    added: Option<&mut Added<'a>>,
) {
    let key = &*snap.rules.baggage_key;
    let Some((name, _)) = &d.branch else {
        h.remove(&snap.rules.header);
        if let Entry::Occupied(mut e) = h.entry(BAGGAGE) {
            if crate::baggage::has_member(e.iter().map(|v| v.as_bytes()), key) {
                let existing: Vec<&[u8]> = e.iter().map(|v| v.as_bytes()).collect();
                let rest = crate::baggage::without_member(&existing, key);
                match HeaderValue::from_maybe_shared(Bytes::from(rest)) {
                    Ok(v) if !v.is_empty() => {
                        e.insert(v);
                    }
                    _ => {
                        e.remove();
                    }
                }
            }
        }
        return;
    };
    let known = (d.layer != BASELINE_ID).then_some(d.layer as usize);
    let branch_value = known
        .and_then(|l| snap.table.layer(l as u32)?.branch_value.clone())
        .or_else(|| HeaderValue::from_str(name.as_str()).ok());
    if let Some(v) = branch_value {
        h.insert(snap.rules.header.clone(), v);
    }
    match h.entry(BAGGAGE) {
        Entry::Vacant(e) => {
            let known_member =
                known.and_then(|l| snap.table.layer(l as u32)?.baggage_member.as_ref());
            match known_member {
                Some(m) => {
                    let mut added = added;
                    if let Err((_, m)) = push(&mut added, (&headers::BAGGAGE_NAME, m)) {
                        e.insert(m.clone());
                    }
                }
                None => {
                    if let Ok(m) = HeaderValue::from_str(&format!("{key}={}", name.as_str())) {
                        e.insert(m);
                    }
                }
            }
        }
        Entry::Occupied(mut e) => {
            let values = e.iter().map(|v| v.as_bytes());
            if crate::baggage::only_member_is(values, key, name.as_str()) {
                return; // the common case: the baggage already carries the branch, once
            }
            let existing: Vec<&[u8]> = e.iter().map(|v| v.as_bytes()).collect();
            let merged = crate::baggage::with_member(&existing, key, name.as_str());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(merged)) {
                e.insert(v);
            }
        }
    }
}

fn upstream_error(snap: &Snapshot, d: &Decision<'_>, e: &UpstreamError) -> LocalReply {
    let key = &d.upstream.key;
    match e {
        UpstreamError::Overloaded { .. } => {
            snap.metrics.overflow(d.service);
            LocalReply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream {key} is at its limit: {e}"),
            )
        }
        // nothing reached the upstream: for gRPC, a retryable UNAVAILABLE
        UpstreamError::Connect(ConnectError::TimedOut { .. }) => LocalReply::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("connect to upstream {key} timed out"),
        )
        .with_grpc(Code::Unavailable),
        UpstreamError::Connect(ConnectError::Io { source, .. }) => LocalReply::new(
            StatusCode::BAD_GATEWAY,
            format!("cannot connect to upstream {key}: {}", source.kind()),
        ),
        UpstreamError::Connect(ConnectError::Tls { reason, .. }) => LocalReply::new(
            StatusCode::BAD_GATEWAY,
            format!("cannot connect to upstream {key}: tls: {reason}"),
        )
        .with_grpc(Code::Unavailable),
        UpstreamError::Handshake(_) => LocalReply::new(
            StatusCode::BAD_GATEWAY,
            format!("cannot connect to upstream {key}: connection failed"),
        ),
        // the client stopped sending its body before any response: its fault, not the upstream's
        UpstreamError::Exchange(e) if body::is_idle(e) => LocalReply::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body stalled past its idle timeout",
        ),
        UpstreamError::Exchange(e) => LocalReply::new(
            StatusCode::BAD_GATEWAY,
            format!("upstream {key} failed: {e}"),
        ),
    }
}

/// Splice client and upstream once both sides have switched protocols. `lease` holds the
/// upstream connection's request half until then; it is never pooled again.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    lease: Option<Lease>,
    _in_use: Option<InUse>,
) {
    let (c, u) = tokio::join!(client, upstream);
    drop(lease);
    let (Ok(c), Ok(u)) = (c, u) else {
        tracing::debug!("upgrade failed on one side");
        return;
    };
    let mut c = TokioIo::new(c);
    let mut u = TokioIo::new(u);
    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
        tracing::debug!(error = %e, "tunnel closed with an error");
    }
}

fn add_route_header(snap: &Snapshot, d: &Decision<'_>, h: &mut http::HeaderMap) {
    let t = &snap.table;
    let mut v = String::with_capacity(160);
    let _ = write!(v, "gen={}", t.generation);
    match &d.branch {
        Some((name, src)) => {
            let _ = write!(v, "; branch={}; source={}", name.as_str(), src.as_str());
            if d.layer == BASELINE_ID {
                v.push_str("; unknown-branch");
            }
        }
        None => v.push_str("; branch=baseline"),
    }
    if d.fallback {
        v.push_str("; fallback=not-ready");
    }
    let layer = t.layer(d.route.layer).map_or("?", |l| &*l.label);
    let _ = write!(
        v,
        "; service={}; layer={}; kind={}",
        t.service_name(d.service),
        layer,
        d.route.kind.as_str(),
    );
    // upstream addresses are for the mesh, not for whoever reached an edge listener
    if d.trusted {
        let _ = write!(v, "; upstream={}", d.upstream.key);
    }
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(ROUTE_HEADER, v);
    }
}
