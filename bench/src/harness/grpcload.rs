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
//! request messages are sent as one body, as a client that has them at hand does), `bidi`
//! (bidirectional streaming, ping-pong: each of [`STREAM_MESSAGES`] messages goes out only
//! after the answer to the one before came back, over one open request and response, so every
//! message crosses the proxy on its own, both ways).
//!
//! Prints one line: `calls=N failed=N messages=N secs=S first_error=...`.

use super::load::Outcome;
use super::upstream::{GRPC_MESSAGE, STREAM_MESSAGES};
use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A gRPC call shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Unary,
    Stream,
    Client,
    Bidi,
}

impl Shape {
    /// Name in load ids.
    pub fn label(self) -> &'static str {
        match self {
            Shape::Unary => "unary",
            Shape::Stream => "server-stream",
            Shape::Client => "client-stream",
            Shape::Bidi => "bidi-stream",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Shape::Unary => "/bench.Bench/Unary",
            Shape::Stream => "/bench.Bench/Stream",
            Shape::Client => "/bench.Bench/ClientStream",
            Shape::Bidi => "/bench.Bench/Bidi",
        }
    }

    fn request_messages(self) -> usize {
        if matches!(self, Shape::Client | Shape::Bidi) {
            STREAM_MESSAGES
        } else {
            1
        }
    }

    fn response_messages(self) -> usize {
        if matches!(self, Shape::Stream | Shape::Bidi) {
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
    let mut senders: Vec<Sender> = Vec::new();
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
                        .header("x-microstax-branch", branch.clone());
                    let done = if shape == Shape::Bidi {
                        bidi(&mut send, req).await
                    } else {
                        let Ok(req) = req.body(Either::Left(Full::new(body.clone()))) else {
                            return;
                        };
                        call(&mut send, req, shape).await
                    };
                    match done {
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
async fn call(send: &mut Sender, req: Request<CallBody>, shape: Shape) -> anyhow::Result<u64> {
    let resp = send.send_request(req).await.context("sending")?;
    let (head_status, ct_ok) = check_head(&resp)?;
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

/// The status of an answer's head, its `grpc-status` if it has one (a trailers-only answer)
/// and whether its content type is gRPC's.
fn check_head<B>(resp: &http::Response<B>) -> anyhow::Result<(Option<HeaderValue>, bool)> {
    if resp.status() != http::StatusCode::OK {
        bail!("HTTP status {}", resp.status());
    }
    let ct_ok = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    Ok((resp.headers().get("grpc-status").cloned(), ct_ok))
}

/// A request body a call writes as it goes: each message sent on the channel is one frame.
pub struct Chan(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for Chan {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// A call's request body: whole (unary, server and client streaming) or written as it goes.
type CallBody = Either<Full<Bytes>, Chan>;
type Sender = hyper::client::conn::http2::SendRequest<CallBody>;

/// Longest a bidirectional call may take: a stuck one fails instead of holding the load.
const BIDI_TIMEOUT: Duration = Duration::from_secs(10);

/// One bidirectional call, checked: send a message, wait for its echo, send the next, then end
/// the request and expect `grpc-status: 0`; returns the messages received.
async fn bidi(send: &mut Sender, req: http::request::Builder) -> anyhow::Result<u64> {
    let call = async {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let req = req.body(Either::Right(Chan(rx)))?;
        let msg = Bytes::from_static(&GRPC_MESSAGE);
        let closed = || anyhow::anyhow!("the request body was closed");
        tx.send(msg.clone()).await.map_err(|_| closed())?;
        let resp = send.send_request(req).await.context("sending")?;
        let (head_status, ct_ok) = check_head(&resp)?;
        if !ct_ok {
            bail!("content-type is not application/grpc");
        }
        let mut body = resp.into_body();
        let (mut tx, mut sent, mut got) = (Some(tx), 1, 0u64);
        let mut pending: Vec<u8> = Vec::new();
        let mut status = head_status;
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the body")?;
            let frame = match frame.into_data() {
                Ok(d) => {
                    pending.extend_from_slice(&d);
                    while let Some(n) = whole_message(&pending) {
                        pending.drain(..n);
                        got += 1;
                        match &tx {
                            Some(t) if sent < STREAM_MESSAGES => {
                                t.send(msg.clone()).await.map_err(|_| closed())?;
                                sent += 1;
                            }
                            // all answered: the request ends, and the answer's trailers follow
                            _ => tx = None,
                        }
                    }
                    continue;
                }
                Err(f) => f,
            };
            if let Ok(t) = frame.into_trailers() {
                status = t.get("grpc-status").cloned();
            }
        }
        match status {
            Some(s) if s == "0" => {}
            Some(s) => bail!("grpc-status {}", String::from_utf8_lossy(s.as_bytes())),
            None => bail!("no grpc-status"),
        }
        if got != STREAM_MESSAGES as u64 || !pending.is_empty() {
            bail!("{got} whole messages, expected {STREAM_MESSAGES}");
        }
        Ok(got)
    };
    tokio::time::timeout(BIDI_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| bail!("no end within {BIDI_TIMEOUT:?}"))
}

/// The length of the whole length-prefixed message at the front of `data`, if it is there.
fn whole_message(data: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(data.get(1..5)?.try_into().ok()?) as usize;
    (data.len() >= 5 + len).then_some(5 + len)
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
