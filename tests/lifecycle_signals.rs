//! The binary's lifecycle over real sockets and signals: a second `microstax run` on a port in
//! use fails unless `--handover`; SIGHUP does not kill; SIGTERM drains (`/readyz` 503 first,
//! `Connection: close` during the grace, in-flight HTTP/1 and HTTP/2 requests finished, exit 0),
//! a drain timeout that cuts requests exits 3, and a second signal forces exit 2.
#![allow(clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(20);

/// An upstream whose `/slow` answers only once `release` is set to true; `/` answers at once.
async fn gated_upstream() -> (
    SocketAddr,
    watch::Sender<bool>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (release, rx) = watch::channel(false);
    let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = waiting.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (rx, w) = (rx.clone(), w.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (mut rx, w) = (rx.clone(), w.clone());
                    async move {
                        if req.uri().path() == "/slow" {
                            w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let _ = rx.wait_for(|r| *r).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, release, waiting)
}

fn write_config(root: &Path, upstream: SocketAddr) {
    std::fs::write(
        root.join("org.yaml"),
        format!("kind: org\nrouting: {{default_service: api}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{upstream}\"]\n"),
    )
    .expect("write org");
}

fn signal(child: &tokio::process::Child, sig: rustix::process::Signal) {
    let pid = child.id().expect("pid");
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, sig).expect("signal");
}

async fn run_bin(
    root: &Path,
    listen: &str,
    extra: &[&str],
) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let config = root.to_str().expect("utf-8");
    let mut args = vec![
        "run",
        "--config",
        config,
        "--listen",
        listen,
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    spawn_bin(&args, &[]).await
}

async fn exit_status(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the process exits in time")
        .expect("wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_a_port_in_use_fails_unless_handing_over() {
    let (up, _release, _) = gated_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), up);
    let (first, addr, _) = run_bin(dir.path(), "127.0.0.1:0", &[]).await;
    let listen = addr.to_string();
    let config = dir.path().to_str().expect("utf-8");
    let second = tokio::process::Command::new(BIN)
        .args([
            "run",
            "--config",
            config,
            "--listen",
            &listen,
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let out = tokio::time::timeout(DEADLINE, second.wait_with_output())
        .await
        .expect("the second run exits")
        .expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second run started on {listen}");
    assert!(
        err.contains("already in use") && err.contains("--handover"),
        "{err}"
    );
    // with the hand-over flag it joins (and both serve)
    let (third, addr3, _) = run_bin(dir.path(), &listen, &["--handover"]).await;
    assert_eq!(addr3, addr);
    let r = get(&h1_client(), addr, "/", &[("host", "api")]).await;
    assert_eq!(r.status, 200);
    stop_bin(third).await;
    stop_bin(first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_instead_of_killing() {
    let (up, _release, _) = gated_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), up);
    let (mut child, addr, _) = run_bin(dir.path(), "127.0.0.1:0", &[]).await;
    for _ in 0..3 {
        signal(&child, rustix::process::Signal::HUP);
    }
    // still serving after the hang-ups (a killed process refuses the connection)
    let c = h1_client();
    wait_for(DEADLINE, "served after SIGHUP", || {
        let c = c.clone();
        async move {
            let r = get(&c, addr, "/", &[("host", "api")]).await;
            (r.status == 200).then_some(())
        }
    })
    .await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "SIGHUP killed the process"
    );
    stop_bin(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_http1_and_http2_requests() {
    let (up, release, waiting) = gated_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), up);
    let (mut child, addr, admin) = run_bin(
        dir.path(),
        "127.0.0.1:0",
        &["--drain-grace-ms", "1500", "--drain-timeout-ms", "10000"],
    )
    .await;
    let h1 = h1_client();
    let h2 = h2_client();
    let slow1 = {
        let h1 = h1.clone();
        tokio::spawn(async move { get(&h1, addr, "/slow", &[("host", "api")]).await })
    };
    let slow2 = {
        let h2 = h2.clone();
        tokio::spawn(async move { get(&h2, addr, "/slow", &[]).await })
    };
    wait_for(DEADLINE, "both requests in flight", || {
        let n = waiting.load(std::sync::atomic::Ordering::SeqCst);
        async move { (n == 2).then_some(()) }
    })
    .await;
    let ready = get(&h1, admin, "/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    signal(&child, rustix::process::Signal::TERM);
    // /readyz turns 503 first, while the proxy still accepts and answers with Connection: close
    wait_for(DEADLINE, "/readyz 503", || {
        let h1 = h1.clone();
        async move { (get(&h1, admin, "/readyz", &[]).await.status == 503).then_some(()) }
    })
    .await;
    let during = raw_request(addr, b"GET / HTTP/1.1\r\nhost: api\r\n\r\n").await;
    assert_eq!(during.status, 200, "{}", during.head);
    assert!(
        during
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        during.head
    );
    // the in-flight requests finish once the upstream answers
    release.send(true).expect("release");
    let (r1, r2) = (slow1.await.expect("h1 task"), slow2.await.expect("h2 task"));
    assert_eq!((r1.status.as_u16(), r1.text().as_str()), (200, "done"));
    assert_eq!((r2.status.as_u16(), r2.text().as_str()), (200, "done"));
    let status = exit_status(&mut child).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    // and the listener is closed
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_cuts_requests_exits_3_and_a_second_signal_forces_exit() {
    let (up, _release, waiting) = gated_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), up);
    let (mut child, addr, _) = run_bin(
        dir.path(),
        "127.0.0.1:0",
        &["--drain-grace-ms", "0", "--drain-timeout-ms", "200"],
    )
    .await;
    let h1 = h1_client();
    let slow = tokio::spawn(async move {
        let req = Request::get(format!("http://{addr}/slow"))
            .header("host", "api")
            .body(Full::new(Bytes::new()))
            .expect("req");
        h1.request(req).await
    });
    wait_for(DEADLINE, "request in flight", || {
        let n = waiting.load(std::sync::atomic::Ordering::SeqCst);
        async move { (n >= 1).then_some(()) }
    })
    .await;
    signal(&child, rustix::process::Signal::TERM);
    let status = exit_status(&mut child).await;
    assert_eq!(status.code(), Some(3), "{status:?}");
    assert!(
        slow.await.expect("task").is_err(),
        "the cut request got an answer"
    );

    // a long grace, then a second signal: out at once with 2
    let (mut child, _addr, admin) =
        run_bin(dir.path(), "127.0.0.1:0", &["--drain-grace-ms", "60000"]).await;
    signal(&child, rustix::process::Signal::TERM);
    let c = h1_client();
    wait_for(DEADLINE, "draining", || {
        let c = c.clone();
        async move { (get(&c, admin, "/readyz", &[]).await.status == 503).then_some(()) }
    })
    .await;
    signal(&child, rustix::process::Signal::TERM);
    let status = exit_status(&mut child).await;
    assert_eq!(status.code(), Some(2), "{status:?}");
}
