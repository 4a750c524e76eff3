//! A worker holding one idle keep-alive client sleeps until its next deadline instead of
//! ticking. Wake-ups are counted as the worker thread's voluntary context switches (Linux
//! `/proc`): each time an idle current-thread runtime wakes, its thread leaves `epoll_wait`.
//! This file holds one test so that no other test's worker threads run in this process.

mod common;

use common::*;
use microstax_proxy::{Proxy, ProxyOptions, Router, ServerOptions, Workers};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Thread ids of this process's proxy worker threads.
fn worker_tids() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        // thread names are cut to 15 bytes: "microstax-worke"
        comm.starts_with("microstax-work")
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
    .collect()
}

/// Voluntary context switches of thread `tid` so far.
fn switches(tid: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_client_does_not_wake_the_worker() {
    if !std::path::Path::new("/proc/self/task").exists() {
        eprintln!("no /proc: skipped");
        return;
    }
    let base = Upstream::start("base").await;
    let org = format!(
        "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{}\"]\n",
        base.addr
    );
    let router = Router::new(microstax_planner::compile(
        &config(&[("org.yaml", &org)]),
        1,
    ));
    let proxy = Proxy::new(router, ProxyOptions::default());
    let listeners = microstax_proxy::reuseport_listeners("127.0.0.1:0".parse().expect("addr"), 1)
        .expect("bind");
    let addr = listeners[0].local_addr().expect("addr");
    // the default header-read timeout (10 s) is the only deadline the idle client leaves
    let workers = Workers::start(listeners, proxy, ServerOptions::default()).expect("workers");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(workers.serve_until(async move {
        let _ = stopped.await;
    }));
    // the worker thread may not have started yet: poll for it
    let tids = wait_for(Duration::from_secs(10), "the worker thread", || async {
        let t = worker_tids();
        (t.len() == 1).then_some(t)
    })
    .await;

    // one request on a keep-alive connection, answered in full; then the client stays idle
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: api\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse::<usize>().ok());
        len.is_some_and(|n| body.len() >= n)
    };
    while !complete(&got) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answer within 10 s")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));

    // the worker settles (the upstream connection goes back to its pool), then is watched
    let window = Duration::from_secs(2);
    // settled: no wake-up over a 100 ms poll (within 10 s)
    let settle = std::time::Instant::now() + Duration::from_secs(10);
    let mut before = switches(&tids[0]);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = switches(&tids[0]);
        if now == before {
            break;
        }
        assert!(
            std::time::Instant::now() < settle,
            "the worker never settled"
        );
        before = now;
    }
    // the measured window
    tokio::time::sleep(window).await;
    let woke = switches(&tids[0]) - before;
    // needed in 2 s: at most one pool reap (every 5 s); a 20 ms ticker shows as ~100
    assert!(
        woke <= 10,
        "the idle worker woke {woke} times in {window:?}"
    );

    drop(s);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .expect("workers did not stop")
        .expect("join");
}
