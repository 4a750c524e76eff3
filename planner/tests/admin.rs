//! The admin listener in process, over raw TCP: silent, trickling and idle clients are closed at
//! the header-read timeout; a slow or oversized body is refused; `/readyz` answers 503 with the
//! reason until the first table has been published through the sink, then 200.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use microstax_config::RoutingTable;
use microstax_planner::admin::{serve, AdminOptions, AdminState};
use microstax_planner::{ControlPlane, TableSink};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// A sink that publishes once a permit is released (so a test can hold the first publish).
struct GateSink(Arc<Semaphore>);

impl TableSink for GateSink {
    fn publish(&self, _t: Arc<RoutingTable>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _ = self.0.acquire().await.map(|p| p.forget());
        })
    }
}

fn cfg() -> microstax_config::Config {
    common::config(&[(
        "org.yaml",
        "kind: org\nservices:\n  api: {hosts: [api], endpoints: [\"127.0.0.1:9\"]}\n",
    )])
    .unwrap()
}

async fn start(
    options: AdminOptions,
    gate: Arc<Semaphore>,
) -> (SocketAddr, Arc<ControlPlane>, Arc<AtomicBool>) {
    let registry = prometheus::Registry::new();
    let control = ControlPlane::new(cfg(), Arc::new(GateSink(gate)), &registry).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = Arc::new(AtomicBool::new(true));
    let state = Arc::new(AdminState {
        control: control.clone(),
        registry,
        token: Some(b"t".to_vec()),
        serving: serving.clone(),
        options,
        runtime: None,
        source: None,
        upstreams: None,
    });
    tokio::spawn(serve(listener, state, std::future::pending()));
    (addr, control, serving)
}

fn short() -> AdminOptions {
    AdminOptions {
        header_read_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        max_body: 1024,
        max_connections: 512,
        protect_reads: false,
    }
}

/// Send `req` raw and read the whole answer (bounded by 10 s); returns the status code.
async fn raw(addr: SocketAddr, req: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// Whether the server closed `s` (EOF or reset) before `deadline`, while `trickle` bytes are
/// written to it one at a time every 50 ms.
async fn closed_by_server(mut s: TcpStream, trickle: &'static [u8], deadline: Instant) -> bool {
    let mut i = 0;
    let mut buf = [0u8; 512];
    loop {
        if Instant::now() >= deadline {
            return false;
        }
        if i < trickle.len() && s.write_all(&trickle[i..=i]).await.is_err() {
            return true;
        }
        i += 1;
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // an answer (e.g. 408) before the close
            Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_trickling_and_idle_clients_are_closed() {
    let gate = Arc::new(Semaphore::new(1000));
    let (addr, control, _) = start(short(), gate).await;
    control.publish_initial().await;
    const SLOW: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut clients = Vec::new();
    for i in 0..100 {
        let s = TcpStream::connect(addr).await.unwrap();
        // half never send a byte, half trickle their headers
        let trickle: &'static [u8] = if i % 2 == 0 { b"" } else { SLOW };
        clients.push(tokio::spawn(closed_by_server(s, trickle, deadline)));
    }
    for c in clients {
        assert!(c.await.unwrap(), "a slow client was still open after 5 s");
    }
    // an idle keep-alive connection is closed too
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(s, b"", Instant::now() + Duration::from_secs(5)).await);
    // the listener still serves
    let (code, _) = raw(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_bodies_are_refused() {
    let gate = Arc::new(Semaphore::new(1000));
    let (addr, control, _) = start(short(), gate).await;
    control.publish_initial().await;
    // a body announced but never sent
    let (code, text) = raw(
        addr,
        "PUT /branches/x HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer t\r\nContent-Length: 100\r\nConnection: close\r\n\r\nparent",
    )
    .await;
    assert_eq!(code, 408, "{text}");
    // a body larger than the bound
    let big = "#".repeat(2000);
    let (code, text) = raw(
        addr,
        &format!(
            "PUT /branches/x HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
            big.len()
        ),
    )
    .await;
    assert_eq!(code, 413, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_first_publish() {
    let gate = Arc::new(Semaphore::new(0));
    let (addr, control, _) = start(short(), gate.clone()).await;
    let readyz = "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    let (code, text) = raw(addr, readyz).await;
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("not yet published"), "{text}");
    assert!(!control.is_ready());
    // the publish is under way but the sink has not taken the table yet
    let c = control.clone();
    let first = tokio::spawn(async move { c.publish_initial().await });
    let (code, _) = raw(addr, readyz).await;
    assert_eq!(code, 503);
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("publish within 10 s")
        .unwrap();
    assert!(control.is_ready());
    let (code, text) = raw(addr, readyz).await;
    assert_eq!(code, 200, "{text}");
}
