//! Data-plane defects of issue 8, each over real sockets: silent connections and half HTTP/2
//! prefaces are closed at the header-read timeout; `Connection` cannot remove what the proxy
//! keeps and removes every name it lists; conflicting hosts are refused and an absolute-form
//! target's authority wins; `X-Forwarded-For` keeps every line; only the carrier value used is
//! forwarded; an upstream answer framed twice is a 502; oversized heads never reach the
//! upstream, even under concurrency; CONNECT is refused.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use microstax_proxy::ServerOptions;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One service `api` on `base`, and a branch `dev` on `dev`.
fn one_service(base: SocketAddr, dev: SocketAddr) -> microstax_config::Config {
    let org =
        format!("kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n");
    let br = format!("parent: baseline\nservices:\n  api: {{endpoints: [\"{dev}\"]}}\n");
    config(&[("org.yaml", &org), ("branches/dev.yaml", &br)])
}

struct Setup {
    base: Upstream,
    _dev: Upstream,
    proxy: ProxyUnderTest,
}

async fn setup() -> Setup {
    let base = Upstream::start("base").await;
    let dev = Upstream::start("dev").await;
    let proxy = ProxyUnderTest::start(&one_service(base.addr, dev.addr)).await;
    Setup {
        base,
        _dev: dev,
        proxy,
    }
}

/// A raw HTTP/1.1 GET of `/` with `lines` as header lines, closing after the answer.
async fn raw_get(addr: SocketAddr, lines: &[&str]) -> RawReply {
    let mut req = String::from("GET / HTTP/1.1\r\n");
    for l in lines {
        req.push_str(l);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    raw_request(addr, req.as_bytes()).await
}

/// Whether the peer closes `s` (EOF or reset) before `within` passes.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // an error reply before the close is fine
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_preface_connections_are_closed_at_the_header_read_timeout() {
    let base = Upstream::start("base").await;
    let options = ServerOptions {
        header_read_timeout: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(2),
        ..ServerOptions::default()
    };
    let p = ProxyUnderTest::start_with(&one_service(base.addr, base.addr), options).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut silent = Vec::new();
    let mut half = Vec::new();
    for _ in 0..5 {
        silent.push(
            tokio::net::TcpStream::connect(p.addr)
                .await
                .expect("connect"),
        );
        let mut s = tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect");
        s.write_all(&preface[..12]).await.expect("write");
        half.push(s);
    }
    let start = Instant::now();
    for (what, conns) in [("silent", &mut silent), ("half preface", &mut half)] {
        for s in conns.iter_mut() {
            assert!(
                closed_within(s, Duration::from_secs(5)).await,
                "a {what} connection is still open after 5 s"
            );
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    // the listener still serves
    let r = get(&h1_client(), p.addr, "/", &[("host", "api")]).await;
    assert_eq!(r.status, 200);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_remove_what_the_proxy_keeps_or_sets() {
    let s = setup().await;
    let r = raw_get(
        s.proxy.addr,
        &[
            "host: api",
            "x-microstax-branch: dev",
            "baggage: a=1",
            "x-forwarded-for: 203.0.113.9",
            "x-forwarded-proto: https",
            "via: 1.1 edge",
            "cookie: session=s1",
            "connection: close, host, baggage, x-microstax-branch, cookie, x-forwarded-for, \
             x-forwarded-proto, via, content-length",
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let j = r.json();
    assert_eq!(j["upstream"], "dev", "routed by the branch header");
    assert_eq!(r.seen_all("host"), ["api"], "Host is kept");
    assert_eq!(r.seen_all("x-microstax-branch"), ["dev"]);
    assert_eq!(r.seen_all("baggage"), ["a=1,microstax-branch=dev"]);
    assert_eq!(r.seen_all("cookie"), ["session=s1"]);
    assert_eq!(r.seen_all("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(r.seen_all("x-forwarded-proto"), ["https"]);
    assert_eq!(r.seen_all("via"), ["1.1 edge", "1.1 microstax"]);
    assert!(r.seen_all("connection").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_header_named_by_connection_is_removed() {
    let s = setup().await;
    let names: Vec<String> = (1..=12).map(|i| format!("x-hop-{i}")).collect();
    let mut lines = vec!["host: api".to_string()];
    // over two Connection lines, mixed case
    lines.push(format!("connection: close, {}", names[..6].join(", ")));
    lines.push(format!(
        "Connection: {}",
        names[6..].join(",").to_uppercase()
    ));
    lines.extend(names.iter().map(|n| format!("{n}: secret")));
    lines.push("x-keep: 1".into());
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let r = raw_get(s.proxy.addr, &lines).await;
    assert_eq!(r.status, 200, "{}", r.head);
    for n in &names {
        assert!(r.seen_all(n).is_empty(), "{n} reached the upstream");
    }
    assert_eq!(r.seen_all("x-keep"), ["1"]);

    // more than 64 connection options: refused, and nothing reaches the upstream
    let before = s.base.conns.load(Ordering::SeqCst);
    let many: Vec<String> = (0..65).map(|i| format!("x-o{i}")).collect();
    let line = format!("connection: close, {}", many.join(","));
    let r = raw_get(s.proxy.addr, &["host: api", &line]).await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert!(
        String::from_utf8_lossy(&r.body).contains("connection options"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(s.base.conns.load(Ordering::SeqCst), before);
    // exactly 64 is fine
    let line = format!("connection: close, {}", many[..63].join(","));
    let r = raw_get(s.proxy.addr, &["host: api", &line]).await;
    assert_eq!(r.status, 200, "{}", r.head);
}

/// Send `req` over a new HTTP/2 (prior knowledge) connection to `addr`.
async fn h2_send(addr: SocketAddr, req: http::Request<Empty<Bytes>>) -> (u16, Bytes) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("h2 request timed out")
        .expect("h2 request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    driver.abort();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_hosts_are_refused_and_the_target_authority_wins() {
    let s = setup().await;
    let before = s.base.conns.load(Ordering::SeqCst);
    // two Host lines: 400, whichever comes first
    let r = raw_get(
        s.proxy.addr,
        &["host: api", "host: other", "connection: close"],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.head);
    let r = raw_get(
        s.proxy.addr,
        &["host: other", "host: api", "connection: close"],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.head);
    // HTTP/2: `:authority` and `host` that disagree: 400
    let req = http::Request::get("http://api/")
        .header("host", "other")
        .body(Empty::new())
        .expect("req");
    let (status, body) = h2_send(s.proxy.addr, req).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(s.base.conns.load(Ordering::SeqCst), before);
    // ... and that agree (case aside): served
    let req = http::Request::get("http://api/")
        .header("host", "API")
        .body(Empty::new())
        .expect("req");
    let (status, body) = h2_send(s.proxy.addr, req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // absolute form (RFC 9112 3.2.2): the target's authority wins over Host
    let r = raw_request(
        s.proxy.addr,
        b"GET http://api/x HTTP/1.1\r\nhost: other\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.json()["upstream"], "base");
    assert_eq!(r.json()["path"], "/x");
    assert_eq!(r.seen_all("host"), ["api"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_keeps_every_line() {
    let s = setup().await;
    let r = raw_get(
        s.proxy.addr,
        &[
            "host: api",
            "x-forwarded-for: 203.0.113.1",
            "x-forwarded-for: 203.0.113.2, 203.0.113.3",
            "connection: close",
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        r.seen_all("x-forwarded-for"),
        ["203.0.113.1, 203.0.113.2, 203.0.113.3, 127.0.0.1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_carrier_value_used_is_forwarded() {
    let s = setup().await;
    let addr = s.proxy.addr;
    // malformed branch headers route to the baseline and are not forwarded
    for bad in ["Bad!", "FEAT", ""] {
        let line = format!("x-microstax-branch: {bad}");
        let r = raw_get(addr, &["host: api", &line, "connection: close"]).await;
        assert_eq!(r.json()["upstream"], "base", "{bad}");
        assert!(
            r.seen_all("x-microstax-branch").is_empty(),
            "{bad} forwarded"
        );
    }
    // a malformed header with a valid cookie: the cookie's branch, carried canonically
    let r = raw_get(
        addr,
        &[
            "host: api",
            "x-microstax-branch: Bad!",
            "cookie: microstax-branch=dev",
            "connection: close",
        ],
    )
    .await;
    assert_eq!(r.json()["upstream"], "dev");
    assert_eq!(r.seen_all("x-microstax-branch"), ["dev"]);
    // two branch headers: the first is used, and only it is forwarded
    let r = raw_get(
        addr,
        &[
            "host: api",
            "x-microstax-branch: dev",
            "x-microstax-branch: other",
            "connection: close",
        ],
    )
    .await;
    assert_eq!(r.json()["upstream"], "dev");
    assert_eq!(r.seen_all("x-microstax-branch"), ["dev"]);
    // a duplicated baggage member is forwarded once; other members are kept
    let r = raw_get(
        addr,
        &[
            "host: api",
            "baggage: a=1, microstax-branch=dev",
            "baggage: microstax-branch=dev;p=1, b=2",
            "connection: close",
        ],
    )
    .await;
    assert_eq!(r.json()["upstream"], "dev");
    assert_eq!(r.seen_all("baggage"), ["a=1,b=2,microstax-branch=dev"]);
    // a malformed member before the one used: dropped
    let r = raw_get(
        addr,
        &[
            "host: api",
            "baggage: microstax-branch=%zz",
            "baggage: microstax-branch=dev",
            "connection: close",
        ],
    )
    .await;
    assert_eq!(r.json()["upstream"], "dev");
    assert_eq!(r.seen_all("baggage"), ["microstax-branch=dev"]);
    // a malformed member and no context: the member is removed, the others kept
    let r = raw_get(
        addr,
        &[
            "host: api",
            "baggage: a=1, microstax-branch=Bad!",
            "connection: close",
        ],
    )
    .await;
    assert_eq!(r.json()["upstream"], "base");
    assert_eq!(r.seen_all("baggage"), ["a=1"]);
    assert!(r.seen_all("x-microstax-branch").is_empty());
    // only a malformed member: no baggage at all
    let r = raw_get(
        addr,
        &[
            "host: api",
            "baggage: microstax-branch=FEAT",
            "connection: close",
        ],
    )
    .await;
    assert!(r.seen_all("baggage").is_empty());
    // untouched when there is nothing to fix
    let r = raw_get(
        addr,
        &["host: api", "baggage: a=1;p, b=2", "connection: close"],
    )
    .await;
    assert_eq!(r.seen_all("baggage"), ["a=1;p, b=2"]);
}

/// An upstream on 127.0.0.1:0 that answers every connection with `answer`, written by hand.
async fn raw_upstream(answer: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                // read the request head, then answer
                let mut buf = vec![0u8; 16 * 1024];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                let _ = s.write_all(answer).await;
                let mut rest = [0u8; 1024];
                while let Ok(k) = s.read(&mut rest).await {
                    if k == 0 {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_framed_by_both_length_and_chunking_is_502() {
    let (up, task) = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let p = ProxyUnderTest::start(&one_service(up, up)).await;
    let r = get(&h1_client(), p.addr, "/", &[("host", "api")]).await;
    assert_eq!(r.status, 502, "{:?} {}", r.headers, r.text());
    assert!(r.text().contains("content-length"), "{}", r.text());
    p.shutdown().await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_never_reach_the_upstream_even_concurrently() {
    let s = setup().await;
    let addr = s.proxy.addr;
    let mut head = String::from("GET / HTTP/1.1\r\nhost: api\r\n");
    // 500 KiB over 50 header lines
    for i in 0..50 {
        head.push_str(&format!("x-big-{i}: {}\r\n", "a".repeat(10 * 1024)));
    }
    head.push_str("connection: close\r\n\r\n");
    let head = bytes::Bytes::from(head);
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let head = head.clone();
            tokio::spawn(async move {
                let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let (mut r, mut w) = s.into_split();
                let writer = tokio::spawn(async move {
                    // the proxy may close before it has read everything
                    let _ = w.write_all(&head).await;
                    w
                });
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut buf))
                    .await
                    .expect("no answer within 20 s");
                let _ = writer.await;
                let text = String::from_utf8_lossy(&buf).into_owned();
                text.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok())
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("join"));
    }
    let passed = statuses.iter().filter(|s| **s == Some(200)).count();
    assert_eq!(passed, 0, "statuses: {statuses:?}");
    assert!(
        statuses.iter().all(|s| s.is_none() || *s == Some(431)),
        "{statuses:?}"
    );
    assert_eq!(
        s.base.conns.load(Ordering::SeqCst),
        0,
        "an oversized head reached the upstream"
    );
    // a normal request still works
    let r = raw_get(addr, &["host: api", "connection: close"]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_405() {
    let s = setup().await;
    let r = raw_request(
        s.proxy.addr,
        b"CONNECT api:443 HTTP/1.1\r\nhost: api:443\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405, "{}", r.head);
    assert!(r.head.to_ascii_lowercase().contains("allow:"), "{}", r.head);
    assert_eq!(s.base.conns.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_closes_silent_connections_on_its_coarse_timer() {
    let base = Upstream::start("base").await;
    let router = microstax_proxy::Router::new(microstax_planner::compile(
        &one_service(base.addr, base.addr),
        1,
    ));
    let proxy = microstax_proxy::Proxy::new(router, microstax_proxy::ProxyOptions::default());
    let listeners = microstax_proxy::reuseport_listeners("127.0.0.1:0".parse().expect("addr"), 1)
        .expect("bind");
    let addr = listeners[0].local_addr().expect("addr");
    let options = ServerOptions {
        header_read_timeout: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(2),
        ..ServerOptions::default()
    };
    let workers = microstax_proxy::Workers::start(listeners, proxy, options).expect("workers");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(workers.serve_until(async move {
        let _ = stopped.await;
    }));
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut half = tokio::net::TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "silent still open"
    );
    assert!(
        closed_within(&mut half, Duration::from_secs(5)).await,
        "half still open"
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .expect("workers did not stop")
        .expect("join");
}
