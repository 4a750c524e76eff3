//! The gRPC load generator (the hidden `grpc-load` subcommand, which the harness runs as its
//! own pinned child): `conns` HTTP/2 prior-knowledge connections (hyper's client), `streams`
//! calls in flight on each, for `duration` seconds. Every call is checked whole: HTTP 200,
//! `content-type: application/grpc`, the expected count of well-formed length-prefixed
//! messages, and `grpc-status: 0` in the trailers (a trailers-only answer, which is how a proxy
//! reports its own errors, counts as failed unless its status is 0). Only checked calls count
//! as done; the rest are failed, so a rate of errors is never reported as throughput.
//!
//! Call shapes: `unary` (one message each way), `stream` (server streaming: one message in,
//! [`STREAM_MESSAGES`] out), `client` (client streaming: [`STREAM_MESSAGES`] in, one out; the
//! request messages are sent as one body, as a client that has them at hand does).
//!
//! Prints one line: `calls=N failed=N messages=N secs=S first_error=...`.

use super::load::Outcome;
use super::upstream::{GRPC_MESSAGE, STREAM_MESSAGES};
use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A gRPC call shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Unary,
    Stream,
    Client,
}

impl Shape {
    /// Name in load ids.
    pub fn label(self) -> &'static str {
        match self {
            Shape::Unary => "unary",
            Shape::Stream => "server-stream",
            Shape::Client => "client-stream",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Shape::Unary => "/bench.Bench/Unary",
            Shape::Stream => "/bench.Bench/Stream",
            Shape::Client => "/bench.Bench/ClientStream",
        }
    }

    fn request_messages(self) -> usize {
        if self == Shape::Client {
            STREAM_MESSAGES
        } else {
            1
        }
    }

    fn response_messages(self) -> usize {
        if self == Shape::Stream {
            STREAM_MESSAGES
        } else {
            1
        }
    }
}

/// Arguments of the hidden `grpc-load` subcommand.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long, value_enum)]
    pub shape: Shape,
    #[arg(long, default_value_t = 8)]
    pub conns: u32,
    #[arg(long, default_value_t = 16)]
    pub streams: u32,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 1)]
    pub duration: u64,
    /// The branch header value every call carries.
    #[arg(long, default_value = "b1")]
    pub branch: String,
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    failed: AtomicU64,
    messages: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counts {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.first_error.lock() {
            e.get_or_insert(why);
        }
    }
}

/// Run the load and print the result line.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("building the load runtime")?;
    let counts = Arc::new(Counts::default());
    let secs = rt.block_on(drive(&args, counts.clone()))?;
    let first = counts
        .first_error
        .lock()
        .ok()
        .and_then(|e| e.clone())
        .unwrap_or_default()
        .replace(char::is_whitespace, "_");
    println!(
        "calls={} failed={} messages={} secs={secs:.3} first_error={first}",
        counts.calls.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.messages.load(Ordering::Relaxed),
    );
    Ok(())
}

async fn drive(args: &Args, counts: Arc<Counts>) -> anyhow::Result<f64> {
    let mut body = Vec::new();
    for _ in 0..args.shape.request_messages() {
        body.extend_from_slice(&GRPC_MESSAGE);
    }
    let body = Bytes::from(body);
    let branch = HeaderValue::from_str(&args.branch)?;
    let uri: http::Uri = format!("http://app{}", args.shape.path()).parse()?;
    let mut senders = Vec::new();
    for _ in 0..args.conns.max(1) {
        let tcp = tokio::net::TcpStream::connect(args.addr)
            .await
            .with_context(|| format!("connecting to {}", args.addr))?;
        tcp.set_nodelay(true)?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .context("HTTP/2 handshake")?;
        tokio::spawn(conn);
        senders.push(send);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for send in &senders {
        for _ in 0..args.streams.max(1) {
            let (mut send, counts) = (send.clone(), counts.clone());
            let (body, branch, uri, shape) =
                (body.clone(), branch.clone(), uri.clone(), args.shape);
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    if send.ready().await.is_err() {
                        counts.fail("connection closed".into());
                        return;
                    }
                    let req = Request::post(uri.clone())
                        .header("content-type", "application/grpc")
                        .header("te", "trailers")
                        .header("x-microstax-branch", branch.clone())
                        .body(Full::new(body.clone()));
                    let Ok(req) = req else { return };
                    match call(&mut send, req, shape).await {
                        Ok(n) => {
                            counts.calls.fetch_add(1, Ordering::Relaxed);
                            counts.messages.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => counts.fail(format!("{e:#}")),
                    }
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// One call, checked; returns the messages received.
async fn call(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
    shape: Shape,
) -> anyhow::Result<u64> {
    let resp = send.send_request(req).await.context("sending")?;
    if resp.status() != http::StatusCode::OK {
        bail!("HTTP status {}", resp.status());
    }
    let head_status = resp.headers().get("grpc-status").cloned();
    let ct_ok = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let collected = resp
        .into_body()
        .collect()
        .await
        .context("reading the body")?;
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head_status);
    match status {
        Some(s) if s == "0" => {}
        Some(s) => bail!("grpc-status {}", String::from_utf8_lossy(s.as_bytes())),
        None => bail!("no grpc-status"),
    }
    if !ct_ok {
        bail!("content-type is not application/grpc");
    }
    let data = collected.to_bytes();
    let n = count_messages(&data).context("malformed messages")?;
    if n != shape.response_messages() as u64 {
        bail!("{n} messages, expected {}", shape.response_messages());
    }
    Ok(n)
}

/// Count length-prefixed gRPC messages that exactly fill `data`; `None` if they do not.
pub fn count_messages(mut data: &[u8]) -> Option<u64> {
    let mut n = 0;
    while !data.is_empty() {
        let len = u32::from_be_bytes(data.get(1..5)?.try_into().ok()?) as usize;
        data = data.get(5 + len..)?;
        n += 1;
    }
    Some(n)
}

/// Parse the result line into an [`Outcome`] (requests = checked calls) and the messages.
pub fn parse(out: &str) -> anyhow::Result<(Outcome, u64, String)> {
    let line = out
        .lines()
        .find(|l| l.starts_with("calls="))
        .context("no result line")?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .with_context(|| format!("no `{k}`"))
    };
    let calls: u64 = field("calls")?.parse()?;
    let failed: u64 = field("failed")?.parse()?;
    let messages: u64 = field("messages")?.parse()?;
    let secs: f64 = field("secs")?.parse()?;
    let first = field("first_error")?.to_string();
    let o = Outcome {
        requests: calls,
        rps: calls as f64 / secs.max(1e-6),
        errors: failed,
        ..Outcome::default()
    };
    Ok((o, messages, first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages() -> anyhow::Result<()> {
        assert_eq!(count_messages(&GRPC_MESSAGE), Some(1));
        assert_eq!(count_messages(&[]), Some(0));
        assert_eq!(count_messages(&GRPC_MESSAGE[..6]), None);
        let (o, m, e) = parse("calls=10 failed=2 messages=100 secs=2.000 first_error=x\n")?;
        assert_eq!((o.requests, o.errors, m, e.as_str()), (10, 2, 100, "x"));
        assert!((o.rps - 5.0).abs() < 1e-9);
        Ok(())
    }
}
