//! Trusted branch context over real sockets: an `edge` listener honours carriers only from
//! trusted peers or with a valid signed token. Every spoofing variant from an untrusted peer
//! (header, baggage, cookie, host, `_` lookalikes, duplicates, `Connection` tricks, forwarding
//! headers, HTTP/2 split cookies), bad, forged, expired and wrong-audience tokens, preview
//! cookies, no wake of an asleep branch, and no upstream address in replies.
#![allow(clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use microstax_proxy::{Proxy, Router, ServerOptions, TokenKeys, TrustMode, TrustPolicy};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const KEY: &str = "edge-test-key-0123456789";
const AUDIENCE: &str = "previews";

/// An upstream answering JSON with its name, the full target it received and its headers.
async fn echo_upstream(name: &'static str) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut rx => break,
                acc = listener.accept() => {
                    let Ok((s, _)) = acc else { continue };
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<Incoming>| async move {
                            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                            for (k, v) in req.headers() {
                                headers.entry(k.as_str().to_string()).or_default()
                                    .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                            }
                            let j = serde_json::json!({
                                "upstream": name,
                                "target": req.uri().to_string(),
                                "headers": headers,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(j.to_string()))))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    });
                }
            }
        }
    });
    (addr, tx)
}

struct Edge {
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    trust: Arc<TrustPolicy>,
    dev: SocketAddr,
    _stop: oneshot::Sender<()>,
    _ups: Vec<oneshot::Sender<()>>,
}

fn keys(k: &str) -> TokenKeys {
    TokenKeys::new(&[k]).expect("key")
}

fn token(branch: &str, ttl: i64, audience: &str, key: &str) -> String {
    let exp = (microstax_proxy::token::unix_now() as i64 + ttl).max(0) as u64;
    keys(key).mint(branch, audience, exp).expect("mint")
}

async fn edge(trusted: &[&str], extra_org: &str) -> Edge {
    let (base, b) = echo_upstream("base").await;
    let (dev, d) = echo_upstream("dev").await;
    let org = format!(
        "kind: org\ncontext: {{host_patterns: [\"{{branch}}.preview.test\"]}}\nrouting: {{debug_header: true, default_service: api}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n{extra_org}"
    );
    let br = format!("parent: baseline\nservices:\n  api: {{endpoints: [\"{dev}\"]}}\n");
    let cfg = config(&[("org.yaml", &org), ("branches/dev.yaml", &br)]);
    let router = Router::new(microstax_planner::compile(&cfg, 1));
    let proxy = Proxy::new(router, microstax_proxy::ProxyOptions::default());
    let trust = Arc::new(TrustPolicy {
        mode: TrustMode::Edge,
        trusted: trusted.iter().map(|c| c.parse().expect("cidr")).collect(),
        keys: Some(TokenKeys::new(&[KEY, "edge-test-key-previous-one"]).expect("keys")),
        audience: AUDIENCE.into(),
        ..TrustPolicy::default()
    });
    let opts = ServerOptions {
        trust: trust.clone(),
        drain_timeout: Duration::from_secs(2),
        ..ServerOptions::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(microstax_proxy::serve(
        listener,
        proxy.clone(),
        opts,
        async move {
            let _ = rx.await;
        },
    ));
    Edge {
        addr,
        proxy,
        trust,
        dev,
        _stop: tx,
        _ups: vec![b, d],
    }
}

fn seen_all(r: &Reply, name: &str) -> Vec<String> {
    r.json()["headers"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The upstream saw no branch carrier at all (and no token).
fn assert_no_carrier(r: &Reply) {
    let j = r.json();
    let h = j["headers"].as_object().expect("headers");
    for name in [
        "x-microstax-branch",
        "x_microstax_branch",
        "x-microstax-token",
        "x_microstax_token",
    ] {
        assert!(!h.contains_key(name), "{name} forwarded: {j}");
    }
    for v in seen_all(r, "baggage") {
        assert!(
            !v.contains("microstax-branch"),
            "baggage member forwarded: {v}"
        );
    }
    for v in seen_all(r, "cookie") {
        assert!(
            !v.contains("microstax-branch") && !v.contains("microstax-token"),
            "cookie forwarded: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_carriers_are_stripped_and_go_to_the_baseline() {
    let e = edge(&["10.0.0.0/8"], "").await;
    let c = h1_client();
    let spoofs: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "header",
            vec![("host", "api"), ("x-microstax-branch", "dev")],
        ),
        (
            "baggage",
            vec![
                ("host", "api"),
                ("baggage", "a=1, microstax-branch=dev;p=1"),
            ],
        ),
        (
            "two baggage headers",
            vec![
                ("host", "api"),
                ("baggage", "a=1"),
                ("baggage", "microstax-branch=dev"),
            ],
        ),
        (
            "cookie",
            vec![("host", "api"), ("cookie", "s=1; microstax-branch=dev")],
        ),
        ("host pattern", vec![("host", "dev.preview.test")]),
        (
            "underscore header",
            vec![("host", "api"), ("x_microstax_branch", "dev")],
        ),
        (
            "duplicate headers",
            vec![
                ("host", "api"),
                ("x-microstax-branch", "bad name"),
                ("x-microstax-branch", "dev"),
            ],
        ),
        (
            "connection names carriers",
            vec![
                ("host", "api"),
                ("connection", "x-microstax-branch, baggage, cookie"),
                ("x-microstax-branch", "dev"),
                ("baggage", "microstax-branch=dev"),
            ],
        ),
        (
            "token cookie lookalike",
            vec![("host", "api"), ("x_microstax_token", "ms1.x.y")],
        ),
    ];
    for (what, headers) in &spoofs {
        let r = get(&c, e.addr, "/", headers).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(
            r.upstream(),
            "base",
            "{what}: an untrusted carrier selected a branch"
        );
        assert_no_carrier(&r);
        assert!(
            r.route().contains("branch=baseline"),
            "{what}: {}",
            r.route()
        );
    }
    // the other cookies and baggage members are kept
    let r = get(
        &c,
        e.addr,
        "/",
        &[
            ("host", "api"),
            ("cookie", "s=1; microstax-branch=dev"),
            ("baggage", "a=1, microstax-branch=dev"),
        ],
    )
    .await;
    assert_eq!(r.seen("cookie").as_deref(), Some("s=1"));
    assert_eq!(r.seen("baggage").as_deref(), Some("a=1"));
    assert!(e.trust.metrics.stripped.get() >= spoofs.len() as u64 - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_forwarding_headers_are_appended_and_overwritten() {
    let e = edge(&[], "").await;
    let r = raw_request(
        e.addr,
        b"GET / HTTP/1.1\r\nhost: api\r\nx-forwarded-for: 203.0.113.1\r\nx-forwarded-for: 203.0.113.2\r\nx-forwarded-proto: https\r\nconnection: close, x-forwarded-for, x-forwarded-proto\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        r.seen_all("x-forwarded-for"),
        ["203.0.113.1, 203.0.113.2, 127.0.0.1"]
    );
    assert_eq!(
        r.seen_all("x-forwarded-proto"),
        ["http"],
        "an untrusted client set the proto"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_http2_split_cookies_and_headers_are_stripped() {
    let e = edge(&[], "").await;
    let c = h2_client();
    let r = get(
        &c,
        e.addr,
        "/",
        &[
            ("cookie", "a=1"),
            ("cookie", "microstax-branch=dev"),
            ("x-microstax-branch", "dev"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), "base");
    assert_no_carrier(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peers_keep_their_carriers() {
    let e = edge(&["127.0.0.0/8"], "").await;
    let r = get(
        &h1_client(),
        e.addr,
        "/",
        &[("host", "api"), ("x-microstax-branch", "dev")],
    )
    .await;
    assert_eq!(r.upstream(), "dev");
    assert!(
        r.route().contains(&format!("upstream={}", e.dev)),
        "{}",
        r.route()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_selects_its_branch_and_becomes_a_cookie() {
    let e = edge(&[], "").await;
    let c = h1_client();
    let t = token("dev", 3600, AUDIENCE, KEY);
    // in the header
    let r = get(
        &c,
        e.addr,
        "/",
        &[
            ("host", "api"),
            ("x-microstax-token", &t),
            ("x-microstax-branch", "other"),
        ],
    )
    .await;
    assert_eq!(r.upstream(), "dev", "{}", r.text());
    assert_eq!(r.seen("x-microstax-branch").as_deref(), Some("dev"));
    assert_no_token(&r);
    let set = r
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        set.starts_with(&format!("microstax-token={t}; Path=/; Max-Age=")),
        "{set}"
    );
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    assert!(r.route().contains("source=token"), "{}", r.route());
    assert!(
        !r.route().contains("upstream="),
        "an upstream address reached an untrusted client: {}",
        r.route()
    );
    // in the query (a preview link): removed from the target the upstream sees
    let r = get(
        &c,
        e.addr,
        &format!("/p?x=1&microstax-token={t}"),
        &[("host", "api")],
    )
    .await;
    assert_eq!(r.upstream(), "dev");
    assert_eq!(r.json()["target"], "/p?x=1");
    assert!(r.headers.contains_key("set-cookie"));
    // the cookie the browser sends back: no new cookie, and the token is not forwarded
    let cookie = format!("a=1; microstax-token={t}");
    let r = get(&c, e.addr, "/", &[("host", "api"), ("cookie", &cookie)]).await;
    assert_eq!(r.upstream(), "dev");
    assert_eq!(r.seen("cookie").as_deref(), Some("a=1"));
    assert!(!r.headers.contains_key("set-cookie"));
    // a key being rotated out is still accepted
    let old = token("dev", 60, AUDIENCE, "edge-test-key-previous-one");
    let r = get(
        &c,
        e.addr,
        "/",
        &[("host", "api"), ("x-microstax-token", &old)],
    )
    .await;
    assert_eq!(r.upstream(), "dev");
    assert_eq!(e.trust.metrics.valid(), 4);
}

fn assert_no_token(r: &Reply) {
    let h = r.json()["headers"].clone();
    assert!(h.get("x-microstax-token").is_none(), "token forwarded: {h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_go_to_the_baseline_and_are_counted() {
    let e = edge(&[], "").await;
    let c = h1_client();
    let valid = token("dev", 3600, AUDIENCE, KEY);
    let (payload, _) = valid.rsplit_once('.').expect("dot");
    let other_tag = token("main", 3600, AUDIENCE, KEY);
    let forged = format!("{payload}.{}", other_tag.rsplit('.').next().expect("tag"));
    let bad = [
        ("expired", token("dev", -1, AUDIENCE, KEY)),
        ("wrong audience", token("dev", 3600, "elsewhere", KEY)),
        (
            "unknown key",
            token("dev", 3600, AUDIENCE, "an-attacker-key-0123456"),
        ),
        ("forged tag", forged),
        ("garbage", "ms1.!!!.***".to_string()),
        ("empty", String::new()),
        ("huge", "ms1.".to_string() + &"A".repeat(4000)),
    ];
    for (what, t) in &bad {
        for (path, headers) in [
            (
                "/".to_string(),
                vec![("host", "api"), ("x-microstax-token", t.as_str())],
            ),
            (format!("/?microstax-token={t}"), vec![("host", "api")]),
        ] {
            let r = get(&c, e.addr, &path, &headers).await;
            assert_eq!(r.status, 200, "{what}: {}", r.text());
            assert_eq!(r.upstream(), "base", "{what}");
            assert!(!r.headers.contains_key("set-cookie"), "{what}");
            assert_no_token(&r);
        }
    }
    let cookie = format!("microstax-token={}", bad[0].1);
    let r = get(&c, e.addr, "/", &[("host", "api"), ("cookie", &cookie)]).await;
    assert_eq!(r.upstream(), "base");
    assert!(
        e.trust.metrics.refused() >= 13,
        "{}",
        e.trust.metrics.refused()
    );
    assert_eq!(e.trust.metrics.valid(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_traffic_never_wakes_an_asleep_branch() {
    let e = edge(&[], "").await;
    let mut wakes = e.proxy.wakes().expect("wakes");
    assert!(e.proxy.set_asleep(&e.dev.to_string(), true));
    let c = h1_client();
    for headers in [
        vec![("host", "api"), ("x-microstax-branch", "dev")],
        vec![("host", "dev.preview.test")],
        vec![("host", "api"), ("cookie", "microstax-branch=dev")],
        vec![("host", "api"), ("x-microstax-token", "ms1.bad.token")],
    ] {
        let r = get(&c, e.addr, "/", &headers).await;
        assert_eq!(r.upstream(), "base");
    }
    assert!(
        wakes.try_recv().is_err(),
        "an untrusted request woke the branch"
    );
    assert_eq!(e.proxy.router().metrics().cold_starts.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_hide_upstream_addresses_from_untrusted_clients() {
    // a service whose only endpoint refuses connections
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let extra = format!(
        "  down:\n    hosts: [down]\n    path_prefixes: [/pkg.Svc/]\n    endpoints: [\"{dead_addr}\"]\n"
    );
    let e = edge(&[], &extra).await;
    let r = get(&h1_client(), e.addr, "/", &[("host", "down")]).await;
    assert_eq!(r.status, 502);
    let port = dead_addr.port().to_string();
    assert!(
        !r.text().contains(&port),
        "the reply names the upstream: {}",
        r.text()
    );
    assert!(r.route().contains("local-reply"), "{}", r.route());
    // a gRPC call gets its failure in grpc-message: redacted the same way
    let r = send(
        &h2_client(),
        http::Method::POST,
        e.addr,
        "/pkg.Svc/Call",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "a trailers-only gRPC reply");
    let message = r
        .headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        r.headers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("14"),
        "UNAVAILABLE: {message}"
    );
    assert!(
        !message.contains(&port) && message.contains("bad gateway"),
        "the gRPC reply names the upstream: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_is_still_forwarded_on_an_edge_listener() {
    let e = edge(&[], "").await;
    let c = h1_client();
    let t = token("dev", 3600, AUDIENCE, KEY);
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{}/up?microstax-token={t}", e.addr))
        .header("host", "api")
        .body(Full::new(Bytes::from_static(b"hello")))
        .expect("req");
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("in time")
        .expect("response");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(j["upstream"], "dev");
    assert_eq!(j["target"], "/up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_mints_tokens_and_serves_an_edge_listener() {
    let (base, _b) = echo_upstream("base").await;
    let (dev, _d) = echo_upstream("dev").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("branches")).expect("mkdir");
    std::fs::write(
        root.join("org.yaml"),
        format!("kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n"),
    )
    .expect("write org");
    std::fs::write(
        root.join("branches/dev.yaml"),
        format!("parent: baseline\nservices:\n  api: {{endpoints: [\"{dev}\"]}}\n"),
    )
    .expect("write branch");
    let keys = root.join("keys");
    std::fs::write(&keys, format!("{KEY}\n")).expect("write keys");
    let keys = keys.to_str().expect("utf-8");
    let out = tokio::process::Command::new(BIN)
        .args([
            "token",
            "--branch",
            "dev",
            "--ttl",
            "8h",
            "--key-file",
            keys,
            "--audience",
            AUDIENCE,
        ])
        .output()
        .await
        .expect("run microstax token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let bad = tokio::process::Command::new(BIN)
        .args(["token", "--branch", "Bad Name", "--key-file", keys])
        .output()
        .await
        .expect("run microstax token");
    assert!(!bad.status.success());
    let (child, addr, _admin) = spawn_run(
        root,
        &[
            "--trust",
            "edge",
            "--token-key-file",
            keys,
            "--token-audience",
            AUDIENCE,
        ],
    )
    .await;
    let c = h1_client();
    let r = get(
        &c,
        addr,
        "/",
        &[("host", "api"), ("x-microstax-branch", "dev")],
    )
    .await;
    assert_eq!(r.upstream(), "base");
    let r = get(&c, addr, "/", &[("host", "api"), ("x-microstax-token", &t)]).await;
    assert_eq!(r.upstream(), "dev");
    stop_bin(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_token_keys() {
    let (base, _b) = echo_upstream("base").await;
    let (dev, _d) = echo_upstream("dev").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("branches")).expect("mkdir");
    std::fs::write(
        root.join("org.yaml"),
        format!("kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n"),
    )
    .expect("write org");
    std::fs::write(
        root.join("branches/dev.yaml"),
        format!("parent: baseline\nservices:\n  api: {{endpoints: [\"{dev}\"]}}\n"),
    )
    .expect("write branch");
    let keys = root.join("keys");
    std::fs::write(&keys, format!("{KEY}\n")).expect("write keys");
    let new_key = "edge-test-key-rotated-in-9876";
    let t = token("dev", 3600, "microstax", new_key);
    let (child, addr, _admin) = spawn_run(
        root,
        &[
            "--trust",
            "edge",
            "--token-key-file",
            keys.to_str().expect("utf-8"),
        ],
    )
    .await;
    let c = h1_client();
    let r = get(&c, addr, "/", &[("host", "api"), ("x-microstax-token", &t)]).await;
    assert_eq!(
        r.upstream(),
        "base",
        "a token of a key not yet listed was accepted"
    );
    // the new key first (it mints), the old one still accepted; then SIGHUP
    std::fs::write(&keys, format!("{new_key}\n{KEY}\n")).expect("rotate keys");
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid"))
        .expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
    wait_for(Duration::from_secs(10), "the rotated key accepted", || {
        let (c, t) = (c.clone(), t.clone());
        async move {
            let r = get(&c, addr, "/", &[("host", "api"), ("x-microstax-token", &t)]).await;
            (r.upstream() == "dev").then_some(())
        }
    })
    .await;
    let old = token("dev", 3600, "microstax", KEY);
    let r = get(
        &c,
        addr,
        "/",
        &[("host", "api"), ("x-microstax-token", &old)],
    )
    .await;
    assert_eq!(r.upstream(), "dev");
    stop_bin(child).await;
}
