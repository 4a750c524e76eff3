//! Test harness: real upstream servers on 127.0.0.1:0, the real proxy on 127.0.0.1:0 (in
//! process, or the `microstax` binary as a child process), and real HTTP clients. Everything a
//! test starts is stopped by the test (drop or explicit shutdown); nothing sleeps to
//! synchronise: waits poll with a deadline.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]
#![allow(dead_code)]

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use microstax_config::{Config, LayerKind};
use microstax_proxy::{Proxy, Router, ServerOptions};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub mod live;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream that answers JSON describing what it received.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub conns: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Upstream {
    /// Start an echo upstream called `name`.
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_on(name, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// Start an echo upstream on a given address.
    pub async fn start_on(name: &str, at: SocketAddr) -> Upstream {
        let name: Arc<str> = Arc::from(name);
        Upstream::serve(at, move |stream| {
            let name = name.clone();
            async move {
                let svc = service_fn(move |req| echo(name.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            }
        })
        .await
    }

    /// Start a WebSocket echo upstream.
    pub async fn websocket() -> Upstream {
        let at = "127.0.0.1:0".parse().expect("addr");
        Upstream::serve(at, |stream| async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() || futures_util::SinkExt::send(&mut ws, msg).await.is_err() {
                    break;
                }
            }
        })
        .await
    }

    /// Accept connections on `at` until dropped, handling each with `conn` on its own task and
    /// counting them.
    async fn serve<F, Fut>(at: SocketAddr, conn: F) -> Upstream
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(at).await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = conns.clone();
        let (tx, mut rx) = oneshot::channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    acc = listener.accept() => {
                        let Ok((stream, _)) = acc else { continue };
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::spawn(conn(stream));
                    }
                }
            }
        });
        Upstream {
            addr,
            conns,
            stop: Some(tx),
        }
    }
}

type EchoBody = http_body_util::Either<
    Full<Bytes>,
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

async fn echo(name: Arc<str>, req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    // count the body while streaming it, never holding it whole
    let mut body = req.into_body();
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_bytes += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    if path == "/big" {
        let n: usize = query
            .strip_prefix("bytes=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..n.div_ceil(chunk.len()))
            .map(|i| {
                let len = (n - i * chunk.len()).min(chunk.len());
                Ok(Frame::data(chunk.slice(..len)))
            })
            .collect();
        return Ok(Response::new(http_body_util::Either::Right(
            StreamBody::new(futures_util::stream::iter(frames)),
        )));
    }
    let json = serde_json::json!({
        "upstream": &*name,
        "method": method,
        "path": path,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    Ok(Response::new(http_body_util::Either::Left(Full::new(
        Bytes::from(json.to_string()),
    ))))
}

/// Parse config documents given as (file name, YAML text).
pub fn config(files: &[(&str, &str)]) -> Config {
    let mut docs = Vec::new();
    for (file, text) in files {
        let kind = if file.starts_with("teams/") {
            Some(LayerKind::Team)
        } else if file.starts_with("branches/") {
            Some(LayerKind::Branch)
        } else {
            Some(LayerKind::Org)
        };
        let stem = std::path::Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str());
        docs.extend(microstax_config::parse_text(file, text, kind, stem).expect("parse"));
    }
    Config::build(docs).expect("valid config")
}

/// The proxy, in process, on 127.0.0.1:0.
pub struct ProxyUnderTest {
    pub addr: SocketAddr,
    pub router: Arc<Router>,
    /// The proxy itself (for the control plane's handles: activity, sleep, readiness, wakes).
    pub proxy: Arc<Proxy>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl ProxyUnderTest {
    pub async fn start(config: &Config) -> ProxyUnderTest {
        let opts = ServerOptions {
            drain_timeout: Duration::from_secs(2),
            ..ServerOptions::default()
        };
        ProxyUnderTest::start_with(config, opts).await
    }

    /// The proxy with the given listener settings.
    pub async fn start_with(config: &Config, opts: ServerOptions) -> ProxyUnderTest {
        let router = Router::new(microstax_planner::compile(config, 1));
        ProxyUnderTest::serve_router(router, opts).await
    }

    /// The proxy reporting its metrics to `registry`.
    pub async fn start_with_metrics(
        config: &Config,
        registry: &prometheus::Registry,
    ) -> ProxyUnderTest {
        let metrics = microstax_proxy::ProxyMetrics::new(registry).expect("metrics");
        let router = Router::with_metrics(microstax_planner::compile(config, 1), metrics);
        let opts = ServerOptions {
            drain_timeout: Duration::from_secs(2),
            ..ServerOptions::default()
        };
        ProxyUnderTest::serve_router(router, opts).await
    }

    async fn serve_router(router: Arc<Router>, opts: ServerOptions) -> ProxyUnderTest {
        let proxy = Proxy::new(router.clone(), microstax_proxy::ProxyOptions::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(microstax_proxy::serve(
            listener,
            proxy.clone(),
            opts,
            async move {
                let _ = rx.await;
            },
        ));
        ProxyUnderTest {
            addr,
            router,
            proxy,
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// Stop accepting, drain, and wait for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
        }
    }
}

impl Drop for ProxyUnderTest {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn h1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `upstream` name the echo server put in its answer.
    pub fn upstream(&self) -> String {
        self.json()["upstream"].as_str().unwrap_or("").to_string()
    }

    /// A header the upstream received (first value).
    pub fn seen(&self, name: &str) -> Option<String> {
        self.json()["headers"][name][0].as_str().map(str::to_string)
    }

    pub fn route(&self) -> String {
        self.headers
            .get("x-microstax-route")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

/// Send a GET through `client` to `addr` with extra headers; bounded by 10 s.
pub async fn get(
    client: &TestClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send(client, http::Method::GET, addr, path, headers, "").await
}

/// Send a request with a body; bounded by 10 s.
pub async fn send(
    client: &TestClient,
    method: http::Method,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body timed out")
        .expect("body failed")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A response read from a raw socket: status, head text (lower-cased names as sent) and body.
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Every value the echo upstream saw for header `name`.
    pub fn seen_all(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Write `request` (whole, by hand) to `addr` and read until the proxy closes the connection
/// (send `connection: close`); bounded by 10 s. The body is returned as sent (no chunked
/// decoding: the echo upstream's answers carry a length).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write request");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("no answer within 10 s")
        .expect("read answer");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    RawReply {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    }
}

/// Poll `f` until it returns Some, or panic after `deadline`.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    loop {
        poll.tick().await;
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_microstax");

/// Start the binary with `args` (and `envs`) and return it with the proxy and admin addresses
/// it printed. The child is killed if the test drops it.
pub async fn spawn_bin(
    args: &[&str],
    envs: &[(&str, &str)],
) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    // a test stops the binary with SIGTERM: no drain grace unless the test asks for one
    let serves = matches!(args.first(), Some(&"run" | &"demo"));
    let grace: &[&str] = if serves && !args.contains(&"--drain-grace-ms") {
        &["--drain-grace-ms", "0"]
    } else {
        &[]
    };
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .args(grace)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        // MICROSTAX_TEST_LOG=1 shows the child's log when debugging a test
        .stderr(if std::env::var_os("MICROSTAX_TEST_LOG").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("spawn microstax");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("no output within 20 s")
        .expect("read stdout")
        .expect("stdout closed");
    // "... proxy on http://ADDR, admin on http://ADDR"
    let addrs: Vec<SocketAddr> = line
        .split("http://")
        .skip(1)
        .filter_map(|s| s.split([',', ' ']).next()?.parse().ok())
        .collect();
    assert_eq!(addrs.len(), 2, "unexpected first line: {line}");
    // keep draining stdout so the child never blocks on a full pipe
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addrs[0], addrs[1])
}

/// `microstax run --config CONFIG` on loopback ports with one worker, plus `extra` flags: the
/// child and its proxy and admin addresses.
pub async fn spawn_run(
    config: &std::path::Path,
    extra: &[&str],
) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    spawn_run_with(config, extra, &[]).await
}

/// [`spawn_run`] with `envs` set for the child (an admin token, say).
pub async fn spawn_run_with(
    config: &std::path::Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let config = config.to_str().expect("utf-8 path");
    let mut args = vec![
        "run",
        "--config",
        config,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ];
    args.extend_from_slice(extra);
    spawn_bin(&args, envs).await
}

/// [`spawn_run`] with the process executor keeping its state in `state`.
pub async fn spawn_run_processes(
    config: &std::path::Path,
    state: &std::path::Path,
) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let state = state.to_str().expect("utf-8 path");
    spawn_run(config, &["--executor", "process", "--state-dir", state]).await
}

/// Stop a child started by the test by its pid: SIGTERM (so it stops its own instances and
/// removes what it made), SIGKILL if it has not exited within 10 s; and wait for it.
pub async fn stop_bin(mut child: tokio::process::Child) {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}
