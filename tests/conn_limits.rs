//! Connection bounds over real sockets: an idle HTTP/2 connection gets GOAWAY, an idle HTTP/1
//! keep-alive connection is closed (hyper's header-read timer, verified, not assumed), the
//! per-peer and global connection limits, the header-count limit on both protocols, and
//! HTTP/2 floods by hand-made frames (`tests/fixtures/h2_flood.py`): streams over the limit
//! refused, a rapid-reset flood answered with GOAWAY.
#![allow(clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use microstax_proxy::{ConnLimits, ServerOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cfg(up: &Upstream) -> microstax_config::Config {
    config(&[(
        "org.yaml",
        &format!(
            "kind: org\nrouting: {{default_service: api}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{}\"]\n",
            up.addr
        ),
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_goaway() {
    let up = Upstream::start("base").await;
    let opts = ServerOptions {
        idle_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let p = ProxyUnderTest::start_with(&cfg(&up), opts).await;
    let tcp = tokio::net::TcpStream::connect(p.addr)
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("handshake");
    let started = Instant::now();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/", p.addr))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    // the server ends the idle connection (GOAWAY, then close): the client's connection ends
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection stayed open");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before it was idle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let up = Upstream::start("base").await;
    let opts = ServerOptions {
        header_read_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let p = ProxyUnderTest::start_with(&cfg(&up), opts).await;
    let mut s = tokio::net::TcpStream::connect(p.addr)
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: api\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // then nothing: the proxy closes the keep-alive connection by itself
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle keep-alive connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_and_global_connection_limits() {
    let up = Upstream::start("base").await;
    let limits = Arc::new(ConnLimits::new(1000, 2));
    let opts = ServerOptions {
        limits: limits.clone(),
        ..ServerOptions::default()
    };
    let p = ProxyUnderTest::start_with(&cfg(&up), opts).await;
    let a = tokio::net::TcpStream::connect(p.addr).await.expect("a");
    let b = tokio::net::TcpStream::connect(p.addr).await.expect("b");
    wait_for(Duration::from_secs(10), "two open", || {
        let n = limits.open();
        async move { (n == 2).then_some(()) }
    })
    .await;
    // a third from the same peer is closed at once, before any byte is read
    let mut c = tokio::net::TcpStream::connect(p.addr).await.expect("c");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(limits.refused(), 1);
    // a place given back is taken again
    drop(a);
    wait_for(Duration::from_secs(10), "a place back", || {
        let n = limits.open();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let r = raw_request(
        p.addr,
        b"GET / HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    drop(b);
    // the global limit
    let limits = Arc::new(ConnLimits::new(1, 10));
    let opts = ServerOptions {
        limits: limits.clone(),
        ..ServerOptions::default()
    };
    let p2 = ProxyUnderTest::start_with(&cfg(&up), opts).await;
    let _one = tokio::net::TcpStream::connect(p2.addr).await.expect("one");
    wait_for(Duration::from_secs(10), "one open", || {
        let n = limits.open();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let mut two = tokio::net::TcpStream::connect(p2.addr).await.expect("two");
    let r = tokio::time::timeout(Duration::from_secs(5), two.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(limits.refused(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_fields_get_431_on_both_protocols() {
    let up = Upstream::start("base").await;
    let opts = ServerOptions {
        max_headers: 20,
        ..ServerOptions::default()
    };
    let p = ProxyUnderTest::start_with(&cfg(&up), opts).await;
    let mut req = b"GET / HTTP/1.1\r\nhost: api\r\nconnection: close\r\n".to_vec();
    for i in 0..30 {
        req.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let r = raw_request(p.addr, &req).await;
    assert_eq!(r.status, 431, "{}", r.head);
    let names: Vec<String> = (0..30).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = get(&h2_client(), p.addr, "/", &headers).await;
    assert_eq!(r.status, 431, "{}", r.text());
    // within the limit: served
    let r = get(&h2_client(), p.addr, "/", &headers[..10]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Run `tests/fixtures/h2_flood.py MODE ADDR` (python3 with the `h2` package's `hpack`).
async fn h2_flood(mode: &str, addr: std::net::SocketAddr) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/h2_flood.py");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("python3")
            .args([script, mode, &addr.to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the flood script ends")
    .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_floods_are_refused_and_rapid_resets_get_goaway() {
    let up = Upstream::start("base").await;
    let p = ProxyUnderTest::start_with(&cfg(&up), ServerOptions::default()).await;
    // 150 streams at once on a connection that allows 100: the rest are refused
    let v = h2_flood("streams", p.addr).await;
    assert_eq!(v["max_concurrent_streams"], 100, "{v}");
    assert_eq!(v["refused"], 50, "{v}");
    // 500 streams opened and reset at once: GOAWAY (hyper/h2's reset-flood bound), not 500
    // upstream requests
    let v = h2_flood("resets", p.addr).await;
    assert!(
        !v["goaway"].as_array().expect("goaway").is_empty() || v["closed"] == true,
        "{v}"
    );
    // the proxy still serves
    let r = get(&h2_client(), p.addr, "/", &[]).await;
    assert_eq!(r.status, 200);
}
