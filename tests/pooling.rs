//! Upstream connection pools over real sockets: sequential requests reuse one upstream
//! connection (fixed-length and chunked bodies alike), a body abandoned by the client does not
//! poison the pool, and with per-core workers a publish prewarms every worker's pool so that no
//! worker pays a connect on its first request.

mod common;

use common::*;
use http::Request;
use http_body_util::BodyExt;
use microstax_proxy::{Proxy, ProxyOptions, Router, ServerOptions, Workers};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn one_service(endpoint: &str, branches: &[(&str, String)]) -> microstax_config::Config {
    let org = format!(
        "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{endpoint}\"]\n"
    );
    let texts: Vec<(String, String)> = branches
        .iter()
        .map(|(name, ep)| {
            (
                format!("branches/{name}.yaml"),
                format!("parent: baseline\nservices:\n  api: {{endpoints: [\"{ep}\"]}}\n"),
            )
        })
        .collect();
    let mut files: Vec<(&str, &str)> = vec![("org.yaml", &org)];
    files.extend(texts.iter().map(|(f, t)| (f.as_str(), t.as_str())));
    config(&files)
}

// one runtime thread: every request is served, and every connection pooled, on the same thread
#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let base = Upstream::start("base").await;
    let p = ProxyUnderTest::start(&one_service(&base.addr.to_string(), &[])).await;
    let c = h1_client();
    for _ in 0..10 {
        let r = get(&c, p.addr, "/", &[("host", "api")]).await;
        assert_eq!(r.status, 200);
    }
    // chunked answers (no content-length) end with a terminal chunk, then the connection is reused
    for _ in 0..5 {
        let r = get(&c, p.addr, "/big?bytes=200000", &[("host", "api")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 200_000);
    }
    assert_eq!(
        base.conns.load(Ordering::SeqCst),
        1,
        "a request paid a connect"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn abandoned_body_closes_its_connection_and_the_next_request_works() {
    let base = Upstream::start("base").await;
    let p = ProxyUnderTest::start(&one_service(&base.addr.to_string(), &[])).await;
    let c = h1_client();
    // read the head of a large answer, then drop it mid-body
    let req = Request::get(format!("http://{}/big?bytes={}", p.addr, 8 << 20))
        .header("host", "api")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("req");
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("timeout")
        .expect("response");
    let mut body = resp.into_body();
    let _ = body.frame().await;
    drop(body);
    for _ in 0..3 {
        let r = get(&c, p.addr, "/", &[("host", "api")]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.upstream(), "base");
    }
    // the abandoned exchange's connection was not reused: one more was opened, then reused
    assert_eq!(base.conns.load(Ordering::SeqCst), 2);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_workers_prewarm_every_pool() {
    const WORKERS: usize = 2;
    let base = Upstream::start("base").await;
    let cfg = one_service(&base.addr.to_string(), &[]);
    let router = Router::new(microstax_planner::compile(&cfg, 1));
    let proxy = Proxy::new(router, ProxyOptions::default());
    let listeners = microstax_proxy::reuseport_listeners("127.0.0.1:0".parse().expect("addr"), 2)
        .expect("bind");
    let addr = listeners[0].local_addr().expect("addr");
    assert!(listeners
        .iter()
        .all(|l| l.local_addr().expect("addr") == addr));
    let workers =
        Workers::start(listeners, proxy.clone(), ServerOptions::default()).expect("start workers");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(workers.serve_until(async move {
        let _ = stopped.await;
    }));

    // a new branch on a new upstream: the publish opens its connections on every worker
    let warm = Upstream::start("warm").await;
    let next = one_service(&base.addr.to_string(), &[("pw", warm.addr.to_string())]);
    let report = proxy.publish(microstax_planner::compile(&next, 2)).await;
    assert_eq!((report.new_upstreams, report.ready), (1, 1));
    let opened = warm.conns.load(Ordering::SeqCst);
    let per_worker = ProxyOptions::default().prewarm.connections;
    assert_eq!(opened, WORKERS * per_worker);

    // fresh client connections land on either worker; none pays a connect
    for _ in 0..16 {
        let r = get(
            &h1_client(),
            addr,
            "/",
            &[("host", "api"), ("x-microstax-branch", "pw")],
        )
        .await;
        assert_eq!(r.upstream(), "warm");
    }
    assert_eq!(warm.conns.load(Ordering::SeqCst), opened);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .expect("workers did not stop")
        .expect("join");
}
