//! Forwarding end to end over real sockets: header rewriting and context propagation as seen by
//! a real upstream, WebSocket tunnelling, a large streamed body, and upstream failures.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

fn one_service(endpoint: &str, branch_endpoint: &str, extra: &str) -> microstax_config::Config {
    let org = format!(
        "kind: org\nrouting: {{debug_header: true}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{endpoint}\"]\n{extra}"
    );
    let br =
        format!("parent: baseline\nservices:\n  api: {{endpoints: [\"{branch_endpoint}\"]}}\n");
    config(&[("org.yaml", &org), ("branches/dev.yaml", &br)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_forwarding_headers_and_context() {
    let base = Upstream::start("base").await;
    let dev = Upstream::start("dev").await;
    let extra = "    policy:\n      request_headers: {set: {x-env: shared}, remove: [x-drop-me]}\n";
    let p = ProxyUnderTest::start(&one_service(
        &base.addr.to_string(),
        &dev.addr.to_string(),
        extra,
    ))
    .await;
    let c = h1_client();
    let r = get(
        &c,
        p.addr,
        "/path?q=1",
        &[
            ("host", "api"),
            ("cookie", "microstax-branch=dev"),
            ("baggage", "userId=alice;ttl=5, tenant=acme"),
            ("x-forwarded-for", "203.0.113.9"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("x-drop-me", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), "dev");
    let j = r.json();
    assert_eq!(j["path"], "/path");
    // canonical branch header set from the cookie
    assert_eq!(r.seen("x-microstax-branch").as_deref(), Some("dev"));
    // baggage keeps the other members (and their properties) and gains ours
    let bag = r.seen("baggage").unwrap_or_default();
    assert!(bag.contains("userId=alice;ttl=5"), "{bag}");
    assert!(bag.contains("tenant=acme"), "{bag}");
    assert!(bag.contains("microstax-branch=dev"), "{bag}");
    assert_eq!(
        r.seen("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(r.seen("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(r.seen("via").as_deref(), Some("1.1 microstax"));
    assert_eq!(
        r.seen("host").as_deref(),
        Some("api"),
        "original Host is kept"
    );
    assert_eq!(
        r.seen("x-hop"),
        None,
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(r.seen("x-drop-me"), None, "route policy removes it");
    // the route policy's headers apply to the branch too (it inherits the policy)
    assert_eq!(r.seen("x-env").as_deref(), Some("shared"));

    // with no baggage at all, the member is added; with ours already there it is untouched
    let r = get(
        &c,
        p.addr,
        "/",
        &[("host", "api"), ("x-microstax-branch", "dev")],
    )
    .await;
    assert_eq!(r.seen("baggage").as_deref(), Some("microstax-branch=dev"));
    let r = get(
        &c,
        p.addr,
        "/",
        &[("host", "api"), ("baggage", "a=1,microstax-branch=dev")],
    )
    .await;
    assert_eq!(
        r.seen("baggage").as_deref(),
        Some("a=1,microstax-branch=dev")
    );
    assert_eq!(r.seen("x-microstax-branch").as_deref(), Some("dev"));
    // no context: nothing is invented
    let r = get(&c, p.addr, "/", &[("host", "api")]).await;
    assert_eq!(r.upstream(), "base");
    assert_eq!(r.seen("x-microstax-branch"), None);
    assert_eq!(r.seen("baggage"), None);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let base = Upstream::start("base").await;
    let ws = Upstream::websocket().await;
    let p = ProxyUnderTest::start(&one_service(
        &base.addr.to_string(),
        &ws.addr.to_string(),
        "",
    ))
    .await;
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/chat", p.addr),
    )
    .map(|mut r| {
        r.headers_mut().insert("host", "api".parse().expect("hv"));
        r.headers_mut()
            .insert("x-microstax-branch", "dev".parse().expect("hv"));
        r
    })
    .expect("ws request");
    let (mut sock, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("ws connect timed out")
    .expect("ws connect");
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let msg = format!("hello {i}");
        sock.send(tokio_tungstenite::tungstenite::Message::text(msg.clone()))
            .await
            .expect("send");
        let back = tokio::time::timeout(Duration::from_secs(5), sock.next())
            .await
            .expect("echo timed out")
            .expect("stream ended")
            .expect("ws error");
        assert_eq!(back.into_text().expect("text").as_str(), msg);
    }
    let _ = sock.close(None).await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refused_is_502_and_timeout_is_504() {
    let base = Upstream::start("base").await;
    // a port with nothing listening: bind, read the port, close
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let extra = "    policy: {request_timeout_ms: 300}\n";
    let p = ProxyUnderTest::start(&one_service(
        &base.addr.to_string(),
        &dead.to_string(),
        extra,
    ))
    .await;
    let c = h1_client();
    let r = get(
        &c,
        p.addr,
        "/",
        &[("host", "api"), ("x-microstax-branch", "dev")],
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("cannot connect to upstream"),
        "{}",
        r.text()
    );
    let r = get(&c, p.addr, "/hang", &[("host", "api")]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("did not answer within"), "{}", r.text());
    // the proxy keeps serving
    let r = get(&c, p.addr, "/", &[("host", "api")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), "base");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let base = Upstream::start("base").await;
    let p = ProxyUnderTest::start(&one_service(
        &base.addr.to_string(),
        &base.addr.to_string(),
        "",
    ))
    .await;
    // 64 MiB up, counted by the upstream as it streams
    const UP: usize = 64 << 20;
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let frames = (0..UP / chunk.len())
        .map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone())));
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{}/upload", p.addr))
        .header("host", "api")
        .body(body)
        .expect("req");
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .expect("timeout")
        .expect("upload");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(j["body_bytes"].as_u64(), Some(UP as u64));
    // 64 MiB down, counted here as it streams
    let c = h1_client();
    let req = Request::get(format!("http://{}/big?bytes={}", p.addr, UP))
        .header("host", "api")
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("req");
    let resp = c.request(req).await.expect("download");
    let mut body = resp.into_body();
    let mut n = 0usize;
    while let Some(f) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("frame timeout")
    {
        if let Some(d) = f.expect("frame").data_ref() {
            n += d.len();
        }
    }
    assert_eq!(n, UP);
    p.shutdown().await;
}
