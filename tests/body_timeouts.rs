//! Body idle timeouts over real sockets (raw `TcpStream` clients, raw upstreams): a request
//! body that stalls is cut (`408` before any response), a response body whose upstream stalls
//! after its headers is cut (the client's connection closes, the upstream connection is closed
//! and not pooled), and bodies that keep flowing longer than the idle timeout are never cut.
#![allow(clippy::expect_used)]

mod common;

use common::*;
use microstax_proxy::{Proxy, ProxyMetrics, ProxyOptions, Router, ServerOptions};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const IDLE: Duration = Duration::from_millis(300);
/// How long a cut may take to show (the idle timeout, a coarse tick or two, loaded CI).
const CUT_WITHIN: Duration = Duration::from_secs(5);

fn cfg(up: SocketAddr) -> microstax_config::Config {
    config(&[(
        "org.yaml",
        &format!(
            "kind: org\nrouting: {{default_service: api}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{up}\"]\n"
        ),
    )])
}

/// The proxy with both body idle timeouts at [`IDLE`], reporting to `registry`: served on the
/// test's runtime (tokio's timer), or by per-core workers (the coarse timer).
struct Proxied {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn proxy(up: SocketAddr, registry: &prometheus::Registry) -> Proxied {
    start(up, registry, false).await
}

async fn start(up: SocketAddr, registry: &prometheus::Registry, workers: bool) -> Proxied {
    let metrics = ProxyMetrics::new(registry).expect("metrics");
    let router = Router::with_metrics(microstax_planner::compile(&cfg(up), 1), metrics);
    let options = ProxyOptions {
        request_body_idle_timeout: IDLE,
        response_body_idle_timeout: IDLE,
        ..ProxyOptions::default()
    };
    let proxy = Proxy::new(router, options);
    let (tx, rx) = oneshot::channel::<()>();
    if workers {
        let listeners =
            microstax_proxy::reuseport_listeners("127.0.0.1:0".parse().expect("addr"), 1)
                .expect("bind");
        let addr = listeners[0].local_addr().expect("addr");
        let w = microstax_proxy::Workers::start(listeners, proxy, ServerOptions::default())
            .expect("workers");
        tokio::spawn(w.serve_until(async move {
            let _ = rx.await;
        }));
        return Proxied { addr, _stop: tx };
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(microstax_proxy::serve(
        listener,
        proxy,
        ServerOptions::default(),
        async move {
            let _ = rx.await;
        },
    ));
    Proxied { addr, _stop: tx }
}

fn counter(registry: &prometheus::Registry, side: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "microstax_body_idle_timeouts_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_label().iter().any(|l| l.value() == side))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// Read from `s` until `buf` holds a full response head; returns where the body starts.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return i + 4;
        }
        let n = s.read(&mut chunk).await.expect("read head");
        assert!(n > 0, "closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An upstream that reads a request head and then its `content-length` body (however slowly
/// it comes), and answers `200` with the number of body bytes it got.
async fn counting_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let start = read_head(&mut s, &mut buf).await;
                let head = String::from_utf8_lossy(&buf[..start]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut got = buf.len() - start;
                let mut chunk = [0u8; 4096];
                while got < len {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let body = got.to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_after_the_idle_timeout() {
    stalled_request_body(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_on_a_worker() {
    stalled_request_body(true).await;
}

async fn stalled_request_body(workers: bool) {
    let registry = prometheus::Registry::new();
    let p = start(counting_upstream().await, &registry, workers).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nhost: api\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    let sent = Instant::now();
    // then nothing more of the body
    let mut buf = Vec::new();
    let read = tokio::time::timeout(CUT_WITHIN, read_head(&mut s, &mut buf)).await;
    assert!(read.is_ok(), "no answer to a stalled request body");
    let took = sent.elapsed();
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(took >= IDLE, "cut before the idle timeout: {took:?}");
    assert_eq!(counter(&registry, "request"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_keeps_flowing_is_not_cut() {
    flowing_request_body(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_keeps_flowing_is_not_cut_on_a_worker() {
    flowing_request_body(true).await;
}

async fn flowing_request_body(workers: bool) {
    let registry = prometheus::Registry::new();
    let p = start(counting_upstream().await, &registry, workers).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    // 20 chunks 60 ms apart: 1.2 s in all, four times the idle timeout, never idle for it
    let chunks = 20;
    let head = format!("POST / HTTP/1.1\r\nhost: api\r\ncontent-length: {chunks}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(60));
    for _ in 0..chunks {
        pace.tick().await;
        s.write_all(b"x").await.expect("write chunk");
    }
    assert!(started.elapsed() > IDLE * 3);
    let mut buf = Vec::new();
    let start = tokio::time::timeout(CUT_WITHIN, read_head(&mut s, &mut buf))
        .await
        .expect("an answer");
    let head = String::from_utf8_lossy(&buf[..start]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(counter(&registry, "request"), 0);
}

/// An upstream that answers every request with a `content-length: 1000` head and 10 bytes of
/// body, then stalls; it reports on `closed` when the proxy closes the connection.
async fn stalling_upstream(closed: mpsc::UnboundedSender<()>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                read_head(&mut s, &mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    .await;
                let mut rest = [0u8; 1024];
                loop {
                    match s.read(&mut rest).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = closed.send(());
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_stalled_mid_body_is_cut_and_its_connection_closed() {
    stalled_upstream_body(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_stalled_mid_body_is_cut_on_a_worker() {
    stalled_upstream_body(true).await;
}

async fn stalled_upstream_body(workers: bool) {
    let registry = prometheus::Registry::new();
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let p = start(stalling_upstream(closed_tx).await, &registry, workers).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: api\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let start = read_head(&mut s, &mut buf).await;
    assert!(String::from_utf8_lossy(&buf[..start]).starts_with("HTTP/1.1 200"));
    let headers_at = Instant::now();
    // the client's connection is closed short of the 1000 bytes announced
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(CUT_WITHIN, s.read_to_end(&mut rest)).await;
    assert!(
        cut.is_ok(),
        "the client still waits for a stalled upstream body"
    );
    let got = buf.len() - start + rest.len();
    assert!(got < 1000, "{got} bytes");
    assert!(headers_at.elapsed() >= IDLE - Duration::from_millis(50));
    // and the proxy closed its upstream connection rather than keep or pool it
    let up_closed = tokio::time::timeout(CUT_WITHIN, closed.recv()).await;
    assert!(up_closed.is_ok(), "the upstream connection stayed open");
    assert_eq!(counter(&registry, "response"), 1);
}

/// An upstream that sends a chunked body of 20 chunks 60 ms apart (1.2 s in all).
async fn trickling_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                read_head(&mut s, &mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let mut pace = tokio::time::interval(Duration::from_millis(60));
                for _ in 0..20 {
                    pace.tick().await;
                    if s.write_all(b"1\r\nx\r\n").await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_download_that_keeps_sending_is_not_cut() {
    let registry = prometheus::Registry::new();
    let p = proxy(trickling_upstream().await, &registry).await;
    let client = h1_client();
    let started = Instant::now();
    let reply = get(&client, p.addr, "/", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 20, "{:?}", reply.body);
    assert!(started.elapsed() > IDLE * 3);
    assert_eq!(counter(&registry, "response"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_stalled_mid_body_resets_the_http2_stream() {
    let registry = prometheus::Registry::new();
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let p = proxy(stalling_upstream(closed_tx).await, &registry).await;
    let tcp = TcpStream::connect(p.addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/", p.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("req");
    let resp = send.send_request(req).await.expect("response head");
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let body = tokio::time::timeout(CUT_WITHIN, resp.into_body().collect()).await;
    let body = body.expect("the client still waits for a stalled upstream body");
    assert!(body.is_err(), "the stream ended as if complete");
    let up_closed = tokio::time::timeout(CUT_WITHIN, closed.recv()).await;
    assert!(up_closed.is_ok(), "the upstream connection stayed open");
    // the client's connection outlives its stream: another request on it is answered
    let req = http::Request::get(format!("http://{}/", p.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("req");
    let again = tokio::time::timeout(CUT_WITHIN, send.send_request(req)).await;
    assert!(matches!(again, Ok(Ok(_))), "the connection was closed");
}

/// An upstream that answers `200` as soon as it has a request head, without reading the body,
/// and reports on `closed` when the proxy closes the connection.
async fn early_answer_upstream(closed: mpsc::UnboundedSender<()>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                read_head(&mut s, &mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let mut rest = [0u8; 1024];
                while let Ok(n) = s.read(&mut rest).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed.send(());
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_stalled_after_its_response_is_cut() {
    let registry = prometheus::Registry::new();
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let p = proxy(early_answer_upstream(closed_tx).await, &registry).await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nhost: api\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let start = read_head(&mut s, &mut buf).await;
    assert!(String::from_utf8_lossy(&buf[..start]).starts_with("HTTP/1.1 200"));
    // the rest of the body never comes: both connections are closed
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(CUT_WITHIN, s.read_to_end(&mut rest)).await;
    assert!(cut.is_ok(), "the client connection stayed open");
    let up_closed = tokio::time::timeout(CUT_WITHIN, closed.recv()).await;
    assert!(up_closed.is_ok(), "the upstream connection stayed open");
    // the exchange ended with its response (as Envoy resets an upstream stream whose response
    // completed first): the rest of the body is not waited for, so no stall is counted
    assert_eq!(counter(&registry, "request"), 0);
}
