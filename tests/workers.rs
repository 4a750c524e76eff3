//! Per-core workers over real sockets: the deadlines a worker keeps on its coarse timer (the
//! request timeout, hyper's header-read timeout) fire, and the workers stop on shutdown.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use common::*;
use microstax_proxy::{Proxy, ProxyOptions, Router, ServerOptions, Workers};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Sharded {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
}

impl Sharded {
    async fn start(cfg: &microstax_config::Config, options: ServerOptions) -> Sharded {
        let router = Router::new(microstax_planner::compile(cfg, 1));
        let proxy = Proxy::new(router, ProxyOptions::default());
        let listeners =
            microstax_proxy::reuseport_listeners("127.0.0.1:0".parse().expect("addr"), 2)
                .expect("bind");
        let addr = listeners[0].local_addr().expect("addr");
        let workers = Workers::start(listeners, proxy, options).expect("start workers");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(workers.serve_until(async move {
            let _ = stopped.await;
        }));
        Sharded {
            addr,
            stop: Some(stop),
            served,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), self.served)
            .await
            .expect("workers did not stop")
            .expect("join");
    }
}

fn one_service(endpoint: SocketAddr, extra: &str) -> microstax_config::Config {
    let org = format!(
        "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{endpoint}\"]\n{extra}"
    );
    config(&[("org.yaml", &org)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_fires_on_a_worker() {
    let base = Upstream::start("base").await;
    let cfg = one_service(base.addr, "    policy: {request_timeout_ms: 300}\n");
    let p = Sharded::start(&cfg, ServerOptions::default()).await;
    let c = h1_client();
    let start = Instant::now();
    let r = get(&c, p.addr, "/hang", &[("host", "api")]).await;
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("did not answer within"), "{}", r.text());
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let r = get(&c, p.addr, "/", &[("host", "api")]).await;
    assert_eq!(r.status, 200);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_read_timeout_closes_a_slow_client() {
    let base = Upstream::start("base").await;
    let options = ServerOptions {
        header_read_timeout: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(2),
        ..ServerOptions::default()
    };
    let p = Sharded::start(&one_service(base.addr, ""), options).await;
    let mut s = tokio::net::TcpStream::connect(p.addr)
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: api\r\n")
        .await
        .expect("write");
    let start = Instant::now();
    let mut buf = Vec::new();
    // the worker gives up on the unfinished head and closes the connection
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 5 s");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    p.stop().await;
}
