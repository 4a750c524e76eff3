//! Listeners: HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on one port. A cleartext
//! connection starts in the proxy's own HTTP/1.1 loop (`crate::h1server`), which serves
//! bodiless requests itself and hands the connection to hyper's HTTP/1.1 or HTTP/2 server
//! when it needs one (a body, an upgrade, the HTTP/2 preface); TLS connections likewise,
//! after their handshake. hyper gets a timer so header-read timeouts work, upgrades
//! enabled, and graceful drain on shutdown. [`serve`] runs one listener on the caller's
//! runtime; [`Workers`] (and [`serve_sharded`]) run one thread per listener, each with its own
//! current-thread runtime, `SO_REUSEPORT` listener and upstream pools, so a request never
//! leaves the core that accepted it. Both take already bound listeners and a shutdown future,
//! so tests bind `127.0.0.1:0` and stop them cleanly.

use crate::access_log::{AccessLog, Entry, LocalReason};
use crate::body::ClientBody;
use crate::deadline::{self, CoarseTimer};
use crate::drain::{Drain, DrainReport};
use crate::forward::{ConnInfo, Proxy};
use crate::h1server::{self, Prefixed};
use crate::limits::{ConnActivity, ConnLimits};
use crate::pool;
use crate::tls::TlsTerminator;
use crate::trust::TrustPolicy;
use bytes::BytesMut;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Time allowed for a client to send a request's headers (HTTP/1.1), and for a new
    /// connection to show its protocol (its first bytes, or the whole HTTP/2 preface).
    pub header_read_timeout: Duration,
    /// Time allowed for open connections to finish after shutdown begins.
    pub drain_timeout: Duration,
    /// Largest request head accepted (request line and header lines, as sent over HTTP/1.1;
    /// for HTTP/2 also the header list limit): a larger one gets `431`. Checked on every
    /// parsed head: hyper's read-buffer limit alone (~408 KiB) let a head that arrived in large
    /// reads through.
    pub max_header_bytes: usize,
    /// Who may select a branch through this listener (`crate::trust`).
    pub trust: Arc<TrustPolicy>,
    /// The drain flag: set it to make HTTP/1 responses close their connections (`crate::drain`).
    pub drain: Arc<Drain>,
    /// A connection with no request in flight for this long is shut down (HTTP/2: GOAWAY).
    /// An idle HTTP/1 connection is closed sooner, by the header-read timeout: hyper starts
    /// it as soon as the connection waits for its next request.
    pub idle_timeout: Duration,
    /// Most header fields in a request (HTTP/1: hyper answers `431`; HTTP/2: `431` here).
    pub max_headers: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Global and per-peer connection limits, shared by the listener's workers.
    pub limits: Arc<ConnLimits>,
    /// The access log (`crate::access_log`).
    pub access_log: Arc<AccessLog>,
    /// TLS termination (`crate::tls`); `None`: cleartext.
    pub tls: Option<Arc<TlsTerminator>>,
}

/// Default [`ServerOptions::max_headers`] (hyper's own default for HTTP/1).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default [`ServerOptions::max_concurrent_streams`].
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

/// Default [`ServerOptions::max_header_bytes`]: 64 KiB (Envoy's default is 60 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            trust: Arc::default(),
            drain: Arc::default(),
            idle_timeout: Duration::from_secs(60),
            max_headers: DEFAULT_MAX_HEADERS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            limits: Arc::default(),
            access_log: Arc::default(),
            tls: None,
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
    serve_reporting(listener, proxy, options, shutdown).await;
}

/// [`serve`], saying how the drain ended.
pub async fn serve_reporting(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> DrainReport {
    let mut h1 = http1::Builder::new();
    h1.header_read_timeout(options.header_read_timeout)
        .max_headers(options.max_headers)
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(options.max_concurrent_streams);
    // every request arms a header-read timer: on a worker, the cheap coarse one
    if deadline::installed() {
        h1.timer(CoarseTimer);
        h2.timer(CoarseTimer);
    } else {
        h1.timer(TokioTimer::new());
        h2.timer(TokioTimer::new());
    }
    // every connection watches this: true shuts it down gracefully (HTTP/2 GOAWAY)
    let (drain_tx, drain_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        proxy,
        options: options.clone(),
        h1,
        h2,
    });
    let all_closed = Arc::new(tokio::sync::Notify::new());
    let active = shared.proxy.router().metrics().active_connections.clone();
    // this listener's open connections: those left when the drain timeout passes were cut
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
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
                let Some(permit) = options.limits.admit(peer.ip()) else {
                    tracing::debug!(%peer, "connection limit reached: closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                active.inc();
                open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let conn = Conn {
                    shared: shared.clone(),
                    drain_rx: drain_rx.clone(),
                };
                let (active, open, all_closed) = (active.clone(), open.clone(), all_closed.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    conn.run(stream, peer).await;
                    active.dec();
                    if open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                        all_closed.notify_waiters();
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let closed = async {
        loop {
            let notified = all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if open.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    };
    tokio::select! {
        () = closed => DrainReport::default(),
        () = tokio::time::sleep(options.drain_timeout) => {
            let cut = open.load(std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(cut, "drain timeout reached with connections still open");
            DrainReport { cut }
        }
    }
}

/// What every connection of one listener shares.
struct Shared {
    proxy: Arc<Proxy>,
    options: ServerOptions,
    /// Connections the own HTTP/1.1 loop hands over (bodies, upgrades, HTTP/1.0; all of a
    /// listener allowing more fields than it parses).
    h1: http1::Builder,
    /// Connections that open with the HTTP/2 preface.
    h2: http2::Builder<TokioExecutor>,
}

/// One accepted connection.
struct Conn {
    shared: Arc<Shared>,
    drain_rx: watch::Receiver<bool>,
}

impl Conn {
    /// TLS handshake (if the listener terminates TLS), then serve until the connection ends,
    /// it is idle for the idle timeout, or the drain begins (both: a graceful shutdown).
    async fn run(self, stream: tokio::net::TcpStream, peer: std::net::SocketAddr) {
        let o = &self.shared.options;
        let deadline = Instant::now() + o.header_read_timeout;
        let mut info = ConnInfo::new(peer, o.max_header_bytes, &o.trust);
        info.log = o.access_log.clone();
        let Some(tls) = &o.tls else {
            return self.serve(stream, info).await;
        };
        // the handshake is bounded like a request head: a silent client is dropped
        let hs = tokio::time::timeout_at(deadline.into(), tls.acceptor().accept(stream)).await;
        let Ok(Ok(stream)) = hs else {
            tls.handshake_failed();
            tracing::debug!(%peer, "tls handshake failed or timed out");
            return;
        };
        let verified = stream
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty());
        if verified && tls.trusts_client_certs() {
            info.trusted = true;
        }
        info.proto = http::HeaderValue::from_static("https");
        self.serve(stream, info).await;
    }

    /// Serve a connection (cleartext, or TLS after its handshake): the proxy's own HTTP/1.1
    /// loop (`crate::h1server`) until the connection ends or needs hyper, then hyper's
    /// HTTP/1.1 or HTTP/2 server. The loop also tells HTTP/2 from HTTP/1.1 by the first bytes,
    /// within the header-read timeout, for a listener whose requests it does not parse itself.
    async fn serve<S>(self, mut stream: S, info: ConnInfo)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let o = &self.shared.options;
        let ctx = ConnCtx::new(self.shared.clone(), info);
        let limits = h1server::Limits {
            header_read_timeout: o.header_read_timeout,
            idle_timeout: o.idle_timeout,
            max_header_bytes: o.max_header_bytes,
            max_headers: o.max_headers,
            // more fields than the own loop parses: hyper's server throughout
            serve: o.max_headers < h1server::MAX_FIELDS,
        };
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let next = {
            let mut rx = self.drain_rx.clone();
            let mut drained = std::pin::pin!(async move {
                let _ = rx.wait_for(|d| *d).await;
            });
            // the drain is the watch's only change (connections are accepted before it): its
            // version is read without the watch's lock
            let seen = &self.drain_rx;
            let shutting = || seen.has_changed().unwrap_or(true);
            let respond = |req| ctx.respond(req, true);
            h1server::serve(
                &mut stream,
                &mut buf,
                limits,
                respond,
                &mut drained,
                shutting,
            )
            .await
        };
        let Conn { shared, drain_rx } = self;
        let io = TokioIo::new(Prefixed::new(buf.freeze(), stream));
        let activity = ctx.activity.clone();
        let idle = shared.options.idle_timeout;
        match next {
            h1server::Next::Close => {}
            h1server::Next::Http1 => {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let ctx = ctx.clone();
                    async move {
                        Ok::<_, Infallible>(ctx.respond(req.map(ClientBody::Hyper), false).await)
                    }
                });
                let conn = shared.h1.serve_connection(io, svc).with_upgrades();
                drive!(std::pin::pin!(conn), drain_rx, activity, idle);
            }
            h1server::Next::Http2 => {
                // each stream's future is spawned as a task: boxed, the task holds a pointer
                // instead of a copy of the (large) request future at every stage change
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let ctx = ctx.clone();
                    Box::pin(async move {
                        Ok::<_, Infallible>(ctx.respond(req.map(ClientBody::Hyper), false).await)
                    })
                });
                let conn = shared.h2.serve_connection(io, svc);
                drive!(std::pin::pin!(conn), drain_rx, activity, idle);
            }
        }
    }
}

/// What every request of one connection needs.
struct ConnCtx {
    shared: Arc<Shared>,
    info: ConnInfo,
    activity: Arc<ConnActivity>,
}

impl ConnCtx {
    fn new(shared: Arc<Shared>, info: ConnInfo) -> Arc<ConnCtx> {
        // one refcount per request, on a per-connection value (not on the proxy, whose
        // count every connection of every worker would share)
        Arc::new(ConnCtx {
            shared,
            info,
            activity: Arc::new(ConnActivity::new()),
        })
    }

    /// Answer one request: the header-count limit, the proxy, the access log, the drain mark.
    /// `raw`: the response goes to the own HTTP/1.1 server, which writes an upstream's
    /// unparsed fields as they came (for hyper's server they are parsed into the map).
    // not an `async fn`: that would keep a second copy of the request in the future
    // (rust-lang/rust#62958)
    #[allow(clippy::manual_async_fn)]
    fn respond(
        &self,
        req: http::Request<ClientBody>,
        raw: bool,
    ) -> impl Future<Output = http::Response<crate::ResponseBody>> + '_ {
        async move {
            let (shared, info, activity) = (&self.shared, &self.info, &self.activity);
            let max_headers = shared.options.max_headers;
            let version = req.version();
            activity.begin();
            let log = &info.log;
            // what the access log needs of the request, taken before it is moved
            let head = log.enabled().then(|| {
                (
                    Instant::now(),
                    req.method().clone(),
                    req.uri().clone(),
                    req.headers().get(http::header::HOST).cloned(),
                    Entry::trace_id(req.headers()),
                )
            });
            let mut resp = if req.headers().len() > max_headers {
                too_many_headers(max_headers)
            } else {
                let fut = std::pin::pin!(shared.proxy.handle(req, info));
                fut.await
            };
            activity.end();
            if !raw || head.is_some() {
                crate::reply::materialize(&mut resp);
            }
            match head {
                Some((start, method, uri, host, trace_id)) => {
                    let e = Entry {
                        method: &method,
                        uri: &uri,
                        host: host.as_ref(),
                        trace_id,
                        duration: start.elapsed(),
                    };
                    log.log(&e, &resp, log.sample());
                }
                None => warn_local_failure(&resp),
            }
            shared.options.drain.mark(version, &mut resp);
            resp
        }
    }
}

/// Run a hyper server connection (`$conn`, pinned) until it ends; the drain and the idle
/// timeout shut it down gracefully (HTTP/2: GOAWAY). A macro: the three connection types
/// hyper has share the method, not a trait this crate can name without their bounds.
macro_rules! drive {
    ($conn:expr, $drain_rx:expr, $activity:expr, $idle_timeout:expr) => {{
        let mut conn = $conn;
        let mut drain_rx = $drain_rx;
        let idle = $activity.idle($idle_timeout);
        tokio::pin!(idle);
        let mut shutting = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = drain_rx.wait_for(|d| *d), if !shutting => {
                    conn.as_mut().graceful_shutdown();
                    shutting = true;
                }
                () = &mut idle, if !shutting => {
                    conn.as_mut().graceful_shutdown();
                    shutting = true;
                }
            }
        }
    }};
}
use drive;

/// Without an access log, a 502/503/504 the proxy made still goes to the process log with
/// its reason (an error path: the log's lock is taken only then).
fn warn_local_failure<B>(resp: &http::Response<B>) {
    let status = resp.status().as_u16();
    if matches!(status, 502..=504) {
        if let Some(r) = resp.extensions().get::<LocalReason>() {
            tracing::warn!(status, reason = %r.0, "proxy reply");
        }
    }
}

/// `431` for a request with more than `max` header fields (HTTP/2: hyper counts only bytes).
fn too_many_headers(max: usize) -> http::Response<crate::ResponseBody> {
    let body = format!("microstax: more than {max} header fields\n");
    let mut resp = http::Response::new(crate::ResponseBody::full(body));
    *resp.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    resp
}

/// Why the sharded server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A worker's runtime could not be built.
    #[error("building worker {worker}'s runtime")]
    Runtime {
        /// Worker index.
        worker: usize,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A listener could not be handed to its worker.
    #[error("preparing worker {worker}'s listener")]
    Listener {
        /// Worker index.
        worker: usize,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A worker thread could not be spawned.
    #[error("spawning worker {worker}'s thread")]
    Thread {
        /// Worker index.
        worker: usize,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The proxy is already served by other workers (their pools are the ones prewarmed).
    #[error("the proxy already has workers attached")]
    AlreadyAttached,
    /// No listener was given.
    #[error("no listener to serve")]
    NoListener,
}

/// Bind `n` listeners on `addr` with `SO_REUSEPORT`, so the kernel spreads connections over
/// one listener per worker. Port 0 is resolved by the first bind and shared by the rest.
/// The address must be free: `SO_REUSEPORT` would let this process silently join another
/// process's listeners (and take half its traffic), so a listener already there is an
/// `AddrInUse` error (see [`reuseport_listeners_handover`] to share it on purpose).
pub fn reuseport_listeners(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        ensure_free(addr)?;
    }
    reuseport_listeners_handover(addr, n)
}

/// [`reuseport_listeners`] without the check that the address is free: for a hand-over, where
/// a new process joins the old one's listeners until the old one drains.
pub fn reuseport_listeners_handover(
    addr: SocketAddr,
    n: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_reuseport(addr)?;
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n.max(1) {
        all.push(bind_reuseport(addr)?);
    }
    Ok(all)
}

/// Fail with `AddrInUse` if something listens on `addr`: a probe without `SO_REUSEPORT` (but
/// with `SO_REUSEADDR`, so connections in TIME_WAIT do not count) cannot bind next to a
/// listening socket.
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    match s.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{addr} is already in use by another listener"),
        )),
        Err(e) => Err(e),
    }
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    #[cfg(unix)]
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Per-core workers serving a proxy: one thread per listener, each driving a current-thread
/// runtime with its own accept loop and upstream pools. Dropping this stops them.
pub struct Workers {
    stop: watch::Sender<bool>,
    done: Vec<(oneshot::Receiver<DrainReport>, std::thread::JoinHandle<()>)>,
}

impl Workers {
    /// Start one worker per listener and attach their runtimes to `proxy` (for prewarming).
    pub fn start(
        listeners: Vec<std::net::TcpListener>,
        proxy: Arc<Proxy>,
        options: ServerOptions,
    ) -> Result<Workers, ServeError> {
        if listeners.is_empty() {
            return Err(ServeError::NoListener);
        }
        let (stop, _) = watch::channel(false);
        let mut handles = Vec::with_capacity(listeners.len());
        let mut done = Vec::with_capacity(listeners.len());
        for (worker, listener) in listeners.into_iter().enumerate() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| ServeError::Runtime { worker, source })?;
            let listener = listener
                .set_nonblocking(true)
                .and_then(|()| {
                    let _entered = rt.enter();
                    TcpListener::from_std(listener)
                })
                .map_err(|source| ServeError::Listener { worker, source })?;
            handles.push(rt.handle().clone());
            let (finished, finished_rx) = oneshot::channel();
            let stopped = {
                let mut rx = stop.subscribe();
                async move {
                    // a dropped sender (Workers dropped) stops the worker too
                    let _ = rx.wait_for(|s| *s).await;
                }
            };
            let (proxy, options) = (proxy.clone(), options.clone());
            let thread = std::thread::Builder::new()
                .name(format!("microstax-worker-{worker}"))
                .spawn(move || {
                    deadline::install();
                    let report = rt.block_on(async move {
                        let ticker = tokio::spawn(deadline::ticker());
                        let reaper = tokio::spawn(reap_pools());
                        let report = serve_reporting(listener, proxy, options, stopped).await;
                        reaper.abort();
                        ticker.abort();
                        report
                    });
                    // tunnels and upstream connections still open are cancelled here
                    rt.shutdown_timeout(Duration::from_secs(1));
                    let _ = finished.send(report);
                })
                .map_err(|source| ServeError::Thread { worker, source })?;
            done.push((finished_rx, thread));
        }
        if !proxy.attach_workers(handles) {
            return Err(ServeError::AlreadyAttached);
        }
        Ok(Workers { stop, done })
    }

    /// Serve until `shutdown` completes, then let every worker drain and stop.
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) {
        self.serve_until_drained(shutdown).await;
    }

    /// [`Workers::serve_until`], saying how many connections the drain timeout cut.
    pub async fn serve_until_drained(self, shutdown: impl Future<Output = ()>) -> DrainReport {
        shutdown.await;
        let _ = self.stop.send(true);
        let mut report = DrainReport::default();
        for (finished, thread) in self.done {
            // waiting asynchronously first keeps this runtime free while workers drain
            if let Ok(r) = finished.await {
                report = report.merge(r);
            }
            let _ = thread.join();
        }
        report
    }
}

/// Serve `listeners` with one worker each until `shutdown` completes, then drain.
pub async fn serve_sharded(
    listeners: Vec<std::net::TcpListener>,
    proxy: Arc<Proxy>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    Workers::start(listeners, proxy, options)?
        .serve_until(shutdown)
        .await;
    Ok(())
}

/// Close this worker's expired pooled connections even while it serves no request.
async fn reap_pools() {
    let mut tick = tokio::time::interval(pool::REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        pool::reap_local();
    }
}
