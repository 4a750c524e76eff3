//! Data-plane defects of issue 8, each over real sockets: silent connections and half HTTP/2
//! prefaces are closed at the header-read timeout.

mod common;

use common::*;
use microstax_proxy::ServerOptions;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One service `api` on `base`, and a branch `dev` on `dev`.
fn one_service(base: SocketAddr, dev: SocketAddr) -> microstax_config::Config {
    let org =
        format!("kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n");
    let br = format!("parent: baseline\nservices:\n  api: {{endpoints: [\"{dev}\"]}}\n");
    config(&[("org.yaml", &org), ("branches/dev.yaml", &br)])
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
