//! gRPC through the proxy with a real gRPC server and client (Python `grpcio`, installed by
//! `.ci/run`; `tests/fixtures/grpc_peer.py`): the four call shapes with and without a branch,
//! status and trailers passed through, `grpc-timeout` as the deadline, an upstream that is down,
//! a call no service serves; and the HTTP/2 upstream pool (one multiplexed connection for a
//! burst of calls).
#![allow(clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpc_peer.py");

/// A gRPC server (the Python fixture) on 127.0.0.1:0, stopped (by its pid) when dropped.
struct GrpcServer {
    addr: SocketAddr,
    _child: Child,
}

impl GrpcServer {
    async fn start(name: &str) -> GrpcServer {
        let mut child = Command::new("python3")
            .args([PEER, "server", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the gRPC server (python3 with grpcio)");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the gRPC server printed no port within 20 s")
            .expect("read")
            .expect("the gRPC server exited (is grpcio installed?)");
        let port: u16 = line
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line}"));
        GrpcServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
        }
    }
}

/// One call by the real gRPC client through `target`; its JSON report.
async fn call(target: SocketAddr, method: &str, args: &[&str]) -> serde_json::Value {
    let target = target.to_string();
    let mut cmd = Command::new("python3");
    cmd.args([PEER, "client", &target, method]).args(args);
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("the gRPC client did not finish within 30 s")
        .expect("run the gRPC client");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "client output {text:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn grpc_config(base: &str, dev: &str, policy: &str) -> microstax_config::Config {
    let org = format!(
        "kind: org\nrouting: {{default_service: echo}}\nservices:\n  echo:\n    endpoints: [\"{base}\"]\n{policy}"
    );
    let br = format!("parent: baseline\nservices:\n  echo: {{endpoints: [\"{dev}\"]}}\n");
    config(&[("org.yaml", &org), ("branches/dev.yaml", &br)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_four_call_shapes_with_and_without_a_branch() {
    let (base, dev) = tokio::join!(GrpcServer::start("base"), GrpcServer::start("dev"));
    let p = ProxyUnderTest::start(&grpc_config(
        &base.addr.to_string(),
        &dev.addr.to_string(),
        "",
    ))
    .await;
    let branch = "x-microstax-branch=dev";
    let by_baggage = "baggage=microstax-branch=dev";
    let calls = [
        ("Unary", None, 1),
        ("ServerStream", None, 3),
        ("ClientStream", None, 1),
        ("Bidi", None, 2),
        ("Unary", Some(branch), 1),
        ("ServerStream", Some(branch), 3),
        ("ClientStream", Some(by_baggage), 1),
        ("Bidi", Some(by_baggage), 2),
    ];
    let reports = futures_util::future::join_all(calls.iter().map(|(m, md, _)| {
        let args: Vec<&str> = md.iter().copied().collect();
        let m = *m;
        async move { call(p.addr, m, &args).await }
    }))
    .await;
    for ((method, md, n), r) in calls.iter().zip(&reports) {
        assert_eq!(r["code"], "OK", "{method} {md:?}: {r}");
        let replies = r["replies"].as_array().expect("replies");
        assert_eq!(replies.len(), *n, "{method}: {r}");
        let want = if md.is_some() { "dev" } else { "base" };
        for rep in replies {
            assert_eq!(rep["server"], want, "{method} {md:?}: {r}");
            if md.is_some() {
                // the context reaches the upstream in metadata, as for HTTP: header and baggage
                assert_eq!(rep["x-microstax-branch"], "dev", "{r}");
                assert_eq!(rep["baggage"], "microstax-branch=dev", "{r}");
            } else {
                assert!(rep["x-microstax-branch"].is_null(), "{r}");
            }
        }
    }
    assert_eq!(reports[1]["replies"][2]["msg"], "hello-2");
    assert_eq!(reports[2]["replies"][0]["msg"], "a,b,c");
    assert_eq!(reports[3]["replies"][1]["msg"], "y");
    // trailing metadata passes through
    assert_eq!(
        reports[0]["trailing"]["x-trailer"], "unary",
        "{}",
        reports[0]
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_and_message_from_the_upstream_pass_through() {
    let base = GrpcServer::start("base").await;
    let a = base.addr.to_string();
    let p = ProxyUnderTest::start(&grpc_config(&a, &a, "")).await;
    let r = call(p.addr, "Fail", &[]).await;
    assert_eq!(r["code"], "NOT_FOUND", "{r}");
    assert_eq!(r["details"], "no such thing: hello", "{r}");
    assert_eq!(r["trailing"]["x-trailer"], "fail", "{r}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_upstream_down_is_unavailable_and_no_service_is_unimplemented() {
    // a port that refuses: bound, then closed
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let d = dead.to_string();
    let p = ProxyUnderTest::start(&grpc_config(&d, &d, "")).await;
    for m in ["Unary", "ServerStream", "ClientStream", "Bidi"] {
        let r = call(p.addr, m, &[]).await;
        assert_eq!(r["code"], "UNAVAILABLE", "{m}: {r}");
        let details = r["details"].as_str().unwrap_or_default();
        assert!(details.starts_with("microstax: cannot connect"), "{r}");
    }
    p.shutdown().await;

    let org = format!(
        "kind: org\nservices:\n  echo:\n    path_prefixes: [/other]\n    endpoints: [\"{d}\"]\n"
    );
    let p = ProxyUnderTest::start(&config(&[("org.yaml", &org)])).await;
    let r = call(p.addr, "Unary", &[]).await;
    assert_eq!(r["code"], "UNIMPLEMENTED", "{r}");
    assert!(
        r["details"]
            .as_str()
            .unwrap_or_default()
            .contains("no service"),
        "{r}"
    );
    p.shutdown().await;
}

/// One gRPC message frame (uncompressed).
fn frame(msg: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    Bytes::from(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_the_deadline_and_answers_deadline_exceeded() {
    let base = GrpcServer::start("base").await;
    let a = base.addr.to_string();
    // the route allows 30 s; the call's own deadline of 300 ms must win
    let p = ProxyUnderTest::start(&grpc_config(&a, &a, "")).await;
    let c = h2_client();
    let req = Request::post(format!("http://{}/test.Echo/Slow", p.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(Full::new(frame(b"hello")))
        .expect("request");
    let t0 = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(4), c.request(req))
        .await
        .expect("no answer within 4 s: grpc-timeout ignored")
        .expect("response");
    let took = t0.elapsed();
    assert_eq!(resp.status(), 200);
    // trailers-only: the status is in the header block and the body is empty
    assert_eq!(resp.headers()["grpc-status"], "4", "{:?}", resp.headers());
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let msg = resp.headers()["grpc-message"].to_str().expect("ascii");
    assert!(msg.starts_with("microstax: upstream"), "{msg}");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(body.is_empty());
    assert!(took >= Duration::from_millis(280), "{took:?}");

    // and the real client's deadline gives DEADLINE_EXCEEDED too
    let r = call(p.addr, "Slow", &["0.4"]).await;
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    p.shutdown().await;
}

/// An HTTP/2-only (prior knowledge) upstream that counts its connections and answers each
/// request once `hold` requests are in flight together (or after 5 s), with a trailer.
async fn h2_upstream(hold: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(hold));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let barrier = barrier.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let barrier = barrier.clone();
                async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), barrier.wait()).await;
                    let body = format!("{} {}", req.version() == http::Version::HTTP_2, req.uri());
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("x-done", http::HeaderValue::from_static("yes"));
                    let frames = futures_util::stream::iter([
                        Ok::<_, Infallible>(Frame::data(Bytes::from(body))),
                        Ok(Frame::trailers(trailers)),
                    ]);
                    Ok::<_, Infallible>(http::Response::new(StreamBody::new(frames)))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    (addr, conns)
}

// current-thread: the proxy runs on one thread here, as on one worker, so it has one pool
#[tokio::test(flavor = "current_thread")]
async fn http2_upstream_multiplexes_a_cold_burst_on_one_connection() {
    let (up, conns) = h2_upstream(20).await;
    let a = up.to_string();
    let p = ProxyUnderTest::start(&grpc_config(&a, &a, "    policy: {protocol: http2}\n")).await;
    let c = h1_client();
    let calls = (0..20).map(|i| {
        let c = c.clone();
        let req = Request::get(format!("http://{}/n/{i}", p.addr))
            .body(Full::new(Bytes::new()))
            .expect("request");
        async move {
            let resp = c.request(req).await.expect("response");
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.expect("body").to_bytes()
        }
    });
    let t0 = Instant::now();
    let bodies = futures_util::future::join_all(calls).await;
    for (i, b) in bodies.iter().enumerate() {
        // HTTP/2 upstream request, absolute target built from the client's Host
        assert_eq!(&b[..], format!("true http://{}/n/{i}", p.addr).as_bytes());
    }
    // all 20 were in flight at the upstream together (the barrier let them go), on one connection
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_trailers_reach_an_http1_client_sending_te_trailers() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    // an HTTP/1.1 upstream answering chunked with an announced trailer, when asked with TE
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let te = req.headers().get("te").cloned();
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
                let frames = futures_util::stream::iter([
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"payload"))),
                    Ok(Frame::trailers(trailers)),
                ]);
                let mut resp = http::Response::new(StreamBody::new(frames));
                resp.headers_mut()
                    .insert("trailer", http::HeaderValue::from_static("x-checksum"));
                if let Some(te) = te {
                    resp.headers_mut().insert("x-saw-te", te);
                }
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    let a = addr.to_string();
    let p = ProxyUnderTest::start(&grpc_config(&a, &a, "")).await;
    let r = raw_request(
        p.addr,
        b"GET /t HTTP/1.1\r\nhost: x\r\nte: trailers\r\nconnection: close, te\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let head = r.head.to_ascii_lowercase();
    assert!(head.contains("x-saw-te: trailers"), "{head}");
    let body = String::from_utf8_lossy(&r.body).to_ascii_lowercase();
    assert!(body.contains("payload"), "{body}");
    assert!(body.contains("x-checksum: abc"), "trailer lost: {body:?}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_per_core_workers() {
    use microstax_proxy::{Proxy, ProxyOptions, Router, ServerOptions, Workers};
    let base = GrpcServer::start("base").await;
    let a = base.addr.to_string();
    let router = Router::new(microstax_planner::compile(&grpc_config(&a, &a, ""), 1));
    let proxy = Proxy::new(router, ProxyOptions::default());
    let listeners = microstax_proxy::reuseport_listeners("127.0.0.1:0".parse().expect("addr"), 2)
        .expect("bind");
    let addr = listeners[0].local_addr().expect("addr");
    let workers = Workers::start(listeners, proxy, ServerOptions::default()).expect("workers");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(workers.serve_until(async move {
        let _ = stopped.await;
    }));
    let shapes = ["Unary", "ServerStream", "ClientStream", "Bidi"];
    let reports =
        futures_util::future::join_all(shapes.iter().chain(&shapes).map(|m| call(addr, m, &[])))
            .await;
    for r in &reports {
        assert_eq!(r["code"], "OK", "{r}");
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .expect("workers did not stop")
        .expect("join");
}
