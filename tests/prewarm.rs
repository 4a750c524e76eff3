//! Prewarming against a real upstream that answers its first connection only (a
//! single-connection dev server): the upstream answered, so it is ready, and the swap does not
//! wait for the probes it never answers.

mod common;

use common::*;
use microstax_proxy::{PrewarmOptions, Proxy, ProxyOptions, Router};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_answered_probe_makes_an_upstream_ready() {
    // answers the first connection's requests; later connections are accepted and held silent
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            if count.fetch_add(1, Ordering::SeqCst) > 0 {
                held.push(s);
                continue;
            }
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let base = config(&[(
        "org.yaml",
        "kind: org\nservices:\n  api: {hosts: [api], endpoints: [\"127.0.0.1:9\"]}\n",
    )]);
    let timeout = Duration::from_secs(3);
    let proxy = Proxy::new(
        Router::new(microstax_planner::compile(&base, 1)),
        ProxyOptions {
            prewarm: PrewarmOptions {
                connections: 2,
                timeout,
                ..PrewarmOptions::default()
            },
            ..ProxyOptions::default()
        },
    );
    let next = config(&[
        (
            "org.yaml",
            "kind: org\nservices:\n  api: {hosts: [api], endpoints: [\"127.0.0.1:9\"]}\n",
        ),
        (
            "branches/dev.yaml",
            &format!("parent: baseline\nservices:\n  api: {{endpoints: [\"{addr}\"]}}\n"),
        ),
    ]);
    let report = proxy.publish(microstax_planner::compile(&next, 2)).await;
    assert_eq!(report.new_upstreams, 1);
    assert_eq!(report.ready, 1, "the upstream answered a probe: {report:?}");
    assert!(
        report.elapsed < timeout,
        "the swap waited for the unanswered probe: {report:?}"
    );
    assert!(accepted.load(Ordering::SeqCst) >= 1);
    server.abort();
}
