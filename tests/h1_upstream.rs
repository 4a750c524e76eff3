//! The proxy's own HTTP/1.1 upstream exchange (`microstax_proxy::h1`) against scripted raw
//! upstreams over real sockets: every way a response body can be delimited (length, chunked
//! with extensions and trailers, until close, none), answers written a few bytes at a time,
//! interim `100` answers, malformed answers, connections the upstream closes while pooled,
//! and request bodies with a length, chunked, and large.
#![allow(clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scripted upstream does with one request: the answer's pieces (written one by one,
/// flushed each), and whether it closes the connection after them.
struct Answer {
    pieces: Vec<Vec<u8>>,
    close: bool,
}

fn answer(pieces: &[&[u8]], close: bool) -> Answer {
    Answer {
        pieces: pieces.iter().map(|p| p.to_vec()).collect(),
        close,
    }
}

/// A request as the upstream read it: head text and body (de-chunked).
#[derive(Clone, Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// An upstream answering each request with `script(request)`; counts accepted connections.
async fn scripted<F>(script: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(&Seen) -> Answer + Send + Sync + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for _ in 0..1000 {
                    let Some(seen) = read_request(&mut s, &mut buf).await else {
                        return;
                    };
                    let a = script(&seen);
                    for p in &a.pieces {
                        if s.write_all(p).await.is_err() || s.flush().await.is_err() {
                            return;
                        }
                        tokio::task::yield_now().await;
                    }
                    if a.close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn take_line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf[..i].to_vec();
            buf.drain(..i + 2);
            return Some(line);
        }
        if !fill(s, buf).await {
            return None;
        }
    }
}

async fn take_exact(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        if !fill(s, buf).await {
            return None;
        }
    }
    Some(buf.drain(..n).collect())
}

async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !fill(s, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if lower.contains("transfer-encoding: chunked") {
        loop {
            let line = take_line(s, buf).await?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&line).trim(), 16).ok()?;
            if size == 0 {
                while !take_line(s, buf).await?.is_empty() {}
                break;
            }
            body.extend(take_exact(s, buf, size).await?);
            take_exact(s, buf, 2).await?;
        }
    } else if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        body = take_exact(s, buf, len).await?;
    }
    Some(Seen { head, body })
}

fn cfg(up: SocketAddr) -> microstax_config::Config {
    config(&[(
        "org.yaml",
        &format!(
            "kind: org\nrouting: {{default_service: api}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{up}\"]\n"
        ),
    )])
}

/// One GET through the proxy with hyper's client, with `te: trailers`: status, body, trailers.
async fn get_with_trailers(proxy: SocketAddr) -> (u16, Vec<u8>, Option<http::HeaderMap>) {
    let client = h1_client();
    let req = http::Request::get(format!("http://{proxy}/"))
        .header("host", "api")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answered in time")
        .expect("answered");
    let status = resp.status().as_u16();
    let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body");
    let trailers = collected.trailers().cloned();
    (status, collected.to_bytes().to_vec(), trailers)
}

#[tokio::test]
async fn chunked_answers_written_a_few_bytes_at_a_time_arrive_whole_with_trailers() {
    let (up, accepted) = scripted(|_| {
        answer(
            &[
                b"HTTP/1.1 200 OK\r\ntransfer-",
                b"encoding: chunked\r\ntrailer: x-checksum\r\n\r\n5;ext=1\r",
                b"\nhello\r\n",
                b"6\r\n wor",
                b"ld\r\n0\r\nx-checksum: abc\r\n",
                b"\r\n",
            ],
            false,
        )
    })
    .await;
    let p = ProxyUnderTest::start(&cfg(up)).await;
    for _ in 0..3 {
        let (status, body, trailers) = get_with_trailers(p.addr).await;
        assert_eq!(status, 200);
        assert_eq!(body, b"hello world");
        let t = trailers.expect("trailers reach a client that sent te: trailers");
        assert_eq!(t.get("x-checksum").map(|v| v.as_bytes()), Some(&b"abc"[..]));
    }
    // the connection went back to the pool after each complete body
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_delimited_by_close_is_whole_and_its_connection_not_reused() {
    let (up, accepted) =
        scripted(|_| answer(&[b"HTTP/1.1 200 OK\r\n\r\nuntil", b" the end"], true)).await;
    let p = ProxyUnderTest::start(&cfg(up)).await;
    for i in 1..=3 {
        let (status, body, _) = get_with_trailers(p.addr).await;
        assert_eq!((status, body.as_slice()), (200, &b"until the end"[..]));
        assert_eq!(accepted.load(Ordering::SeqCst), i);
    }
}

#[tokio::test]
async fn interim_answers_are_skipped_and_bodiless_answers_keep_the_connection() {
    let (up, accepted) = scripted(|seen| {
        if seen.head.starts_with("HEAD") {
            answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n"], false)
        } else if seen.head.contains("/204") {
            answer(&[b"HTTP/1.1 204 No Content\r\n\r\n"], false)
        } else {
            answer(
                &[
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                ],
                false,
            )
        }
    })
    .await;
    let p = ProxyUnderTest::start(&cfg(up)).await;
    let client = h1_client();
    let r = send(
        &client,
        http::Method::POST,
        p.addr,
        "/",
        &[("host", "api")],
        "x",
    )
    .await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    let r = send(
        &client,
        http::Method::HEAD,
        p.addr,
        "/",
        &[("host", "api")],
        "",
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(r.body.is_empty());
    let r = get(&client, p.addr, "/204", &[("host", "api")]).await;
    assert_eq!(r.status.as_u16(), 204);
    let r = get(&client, p.addr, "/", &[("host", "api")]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn malformed_answers_are_502_and_the_proxy_keeps_serving() {
    let (up, _) = scripted(|seen| {
        let path = seen.head.split(' ').nth(1).unwrap_or("/").to_string();
        match path.as_str() {
            "/two-lengths" => answer(
                &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"],
                true,
            ),
            "/garbage" => answer(&[b"SMTP ready\r\n\r\n"], true),
            "/huge-head" => {
                let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..2000 {
                    head.extend_from_slice(
                        format!("x-filler-{i}: {}\r\n", "v".repeat(40)).as_bytes(),
                    );
                }
                Answer {
                    pieces: vec![head],
                    close: true,
                }
            }
            "/closed" => answer(&[b"HTTP/1.1 200 OK\r\ncontent-le"], true),
            _ => answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], false),
        }
    })
    .await;
    let p = ProxyUnderTest::start(&cfg(up)).await;
    let client = h1_client();
    for path in ["/two-lengths", "/garbage", "/huge-head", "/closed"] {
        let r = get(&client, p.addr, path, &[("host", "api")]).await;
        assert_eq!(
            r.status.as_u16(),
            502,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = get(&client, p.addr, "/", &[("host", "api")]).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
}

#[tokio::test]
async fn a_chunked_body_that_turns_malformed_fails_the_clients_body() {
    let (up, _) = scripted(|_| {
        answer(
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n"],
            true,
        )
    })
    .await;
    let p = ProxyUnderTest::start(&cfg(up)).await;
    let client = h1_client();
    let req = http::Request::get(format!("http://{}/", p.addr))
        .header("host", "api")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("in time");
    // the failure may come before the head was flushed to the client, or within its body;
    // never as a complete answer
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("in time");
        assert!(
            body.is_err(),
            "a malformed chunk must not end the body as complete"
        );
    }
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_used() {
    // every answer says keep-alive, then the upstream closes anyway once the proxy has read it
    let (up, accepted) =
        scripted(|_| answer(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], true)).await;
    let p = ProxyUnderTest::start(&cfg(up)).await;
    let client = h1_client();
    for i in 1..=5 {
        let r = get(&client, p.addr, "/", &[("host", "api")]).await;
        assert_eq!(
            (r.status.as_u16(), &r.body[..]),
            (200, &b"ok"[..]),
            "request {i}"
        );
        // the close may not have arrived before the next request: either way no error
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn request_bodies_go_out_with_their_length_chunked_and_large() {
    let (up, _) = scripted(|seen| {
        let mut a = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-framing: {}\r\n\r\n",
            seen.body.len(),
            if seen
                .head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                "chunked"
            } else {
                "length"
            }
        )
        .into_bytes();
        a.extend_from_slice(&seen.body);
        Answer {
            pieces: vec![a],
            close: false,
        }
    })
    .await;
    let p = ProxyUnderTest::start(&cfg(up)).await;
    let client = h1_client();
    // with a length
    let r = send(
        &client,
        http::Method::PUT,
        p.addr,
        "/",
        &[("host", "api")],
        "twelve bytes",
    )
    .await;
    assert_eq!(&r.body[..], b"twelve bytes");
    assert_eq!(r.headers["x-framing"], "length");
    // streamed without a length: chunked upstream, pieces of every size, 3 MiB in all
    let pieces: Vec<Bytes> = (0..48)
        .map(|i| {
            Bytes::from(vec![
                b'a' + (i % 26) as u8;
                if i % 2 == 0 { 100 } else { 131_000 }
            ])
        })
        .collect();
    let expected: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
    let stream = futures_util::stream::iter(
        pieces
            .into_iter()
            .map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))),
    );
    let hyper_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<StreamBody<_>>();
    let req = http::Request::post(format!("http://{}/", p.addr))
        .header("host", "api")
        .body(StreamBody::new(stream))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), hyper_client.request(req))
        .await
        .expect("in time")
        .expect("answered");
    assert_eq!(resp.headers()["x-framing"], "chunked");
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("in time")
        .expect("body")
        .to_bytes();
    assert_eq!(body.len(), expected.len());
    assert!(body[..] == expected[..], "the upload arrived altered");
}
