//! `microstax dev` against a real gateway (`microstax run` on loopback) with real upstreams:
//! the local service's requests go to the local process, the others to the gateway on the
//! developer's branch; the local service's outbound calls through the dev proxy (HTTP_PROXY,
//! absolute-form) keep the branch; each answer says where it was served; the token hook passes
//! its header through.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use common::*;
use std::net::SocketAddr;

struct Setup {
    _dir: tempfile::TempDir,
    gateway: tokio::process::Child,
    gateway_addr: SocketAddr,
    _ups: Vec<Upstream>,
    local_web: Upstream,
}

/// A gateway with services web and orders; branch feature forks orders.
async fn setup() -> Setup {
    let base_web = Upstream::start("base-web").await;
    let base_orders = Upstream::start("base-orders").await;
    let feature_orders = Upstream::start("feature-orders").await;
    let local_web = Upstream::start("local-web").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("branches")).expect("mkdir");
    std::fs::write(
        dir.path().join("org.yaml"),
        format!(
            "kind: org\nservices:\n  web:\n    hosts: [web]\n    endpoints: [\"{}\"]\n  orders:\n    hosts: [orders]\n    endpoints: [\"{}\"]\n",
            base_web.addr, base_orders.addr
        ),
    )
    .expect("org");
    std::fs::write(
        dir.path().join("branches/feature.yaml"),
        format!(
            "parent: baseline\nservices:\n  orders:\n    endpoints: [\"{}\"]\n",
            feature_orders.addr
        ),
    )
    .expect("branch");
    let (gateway, gateway_addr, _) = spawn_run(dir.path(), &[]).await;
    Setup {
        _dir: dir,
        gateway,
        gateway_addr,
        _ups: vec![base_web, base_orders, feature_orders],
        local_web,
    }
}

async fn dev(s: &Setup, extra: &[&str]) -> (tokio::process::Child, SocketAddr) {
    let local = format!("web={}", s.local_web.addr);
    let remote = format!("http://{}", s.gateway_addr);
    let mut args = vec![
        "dev",
        "--branch",
        "feature",
        "--local",
        &local,
        "--remote",
        &remote,
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let (child, proxy, remote_seen) = spawn_bin(&args, &[]).await;
    assert_eq!(remote_seen, s.gateway_addr);
    (child, proxy)
}

fn served(r: &Reply) -> String {
    r.headers
        .get("x-microstax-dev")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_services_go_local_and_the_rest_to_the_gateway_on_the_branch() {
    let s = setup().await;
    let (child, proxy) = dev(&s, &[]).await;
    let c = h1_client();

    let web = get(&c, proxy, "/page", &[("host", "web")]).await;
    assert_eq!(web.status, 200, "{}", web.text());
    assert_eq!(web.upstream(), "local-web");
    assert_eq!(served(&web), "local");
    assert_eq!(web.seen("x-microstax-branch").as_deref(), Some("feature"));
    assert_eq!(web.json()["path"], "/page");

    let orders = get(&c, proxy, "/o/1", &[("host", "orders")]).await;
    assert_eq!(orders.status, 200, "{}", orders.text());
    assert_eq!(
        orders.upstream(),
        "feature-orders",
        "the gateway routed on the branch"
    );
    assert_eq!(served(&orders), "remote");

    // the same request to the gateway without the dev proxy is baseline
    let direct = get(&c, s.gateway_addr, "/o/1", &[("host", "orders")]).await;
    assert_eq!(direct.upstream(), "base-orders");
    // a request that carries its own branch keeps it
    let other = get(
        &c,
        proxy,
        "/",
        &[("host", "orders"), ("x-microstax-branch", "baseline")],
    )
    .await;
    assert_eq!(other.upstream(), "base-orders");
    stop_bin(child).await;
    stop_bin(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_through_the_dev_proxy_keep_the_branch() {
    let s = setup().await;
    let (child, proxy) = dev(&s, &[]).await;
    // what a local service with HTTP_PROXY=http://PROXY sends: an absolute-form target, and no
    // branch header of its own
    let r = raw_request(
        proxy,
        b"GET http://orders/v1/items HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let body = r.json();
    assert_eq!(body["upstream"], "feature-orders", "{body}");
    assert_eq!(body["path"], "/v1/items");
    assert!(
        r.head.to_lowercase().contains("x-microstax-dev: remote"),
        "{}",
        r.head
    );
    // and a call to a local service through the proxy stays local
    let r = raw_request(
        proxy,
        b"GET http://web/x HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.json()["upstream"], "local-web");
    assert!(
        r.head.to_lowercase().contains("x-microstax-dev: local"),
        "{}",
        r.head
    );
    stop_bin(child).await;
    stop_bin(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_hook_passes_its_header_through() {
    let s = setup().await;
    let (child, proxy) = dev(
        &s,
        &["--token", "t0k3n", "--token-header", "x-branch-token"],
    )
    .await;
    let c = h1_client();
    let web = get(&c, proxy, "/", &[("host", "web")]).await;
    assert_eq!(web.seen("x-branch-token").as_deref(), Some("t0k3n"));
    let orders = get(&c, proxy, "/", &[("host", "orders")]).await;
    assert_eq!(orders.upstream(), "feature-orders");
    assert_eq!(orders.seen("x-branch-token").as_deref(), Some("t0k3n"));
    stop_bin(child).await;
    stop_bin(s.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_local_service_answers_502_marked_local() {
    let s = setup().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let local = format!("orders={dead}");
    let (child, proxy) = dev(&s, &["--local", &local]).await;
    let c = h1_client();
    let r = get(&c, proxy, "/", &[("host", "orders")]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(served(&r), "local");
    stop_bin(child).await;
    stop_bin(s.gateway).await;
}
