//! The fast upstream: a hyper server (HTTP/1.1 and h2c by prior knowledge) on one loopback
//! listener per role (`baseline`, `b1`, `b2`, ...). Every listener answers any path with a fixed
//! body: 2 bytes (`ok`), or 16 KiB for paths under `/large`. Each response names the listener
//! that answered in `x-upstream`, so the harness can check that a proxy routed a branch header
//! to the right upstream.
//!
//! A gRPC call (`content-type: application/grpc...`) is answered as gRPC ([`grpc_answer`]):
//! length-prefixed messages and a `grpc-status: 0` trailer; `/bench.Bench/Unary` and
//! `/bench.Bench/ClientStream` answer one message, `/bench.Bench/Stream` [`STREAM_MESSAGES`];
//! `/bench.Bench/Bidi` echoes each request message as it arrives ([`Echo`]) and ends with the
//! trailer once the request ends.
//!
//! It prints `role=addr ...` as its first stdout line, then serves until its stdin closes (the
//! harness holds the other end, so the upstream cannot outlive the harness) or it is killed.

use anyhow::Context as _;
use bytes::Bytes;
use http::HeaderMap;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, Either};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::TcpListener;

/// Size of the large body.
pub const LARGE_BODY: usize = 16 * 1024;
static LARGE: [u8; LARGE_BODY] = [b'x'; LARGE_BODY];

/// Arguments of the hidden `upstream` subcommand.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Listener roles, e.g. `baseline,b1,b2`.
    #[arg(long, value_delimiter = ',', default_value = "baseline,b1,b2")]
    pub roles: Vec<String>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

/// Serve until stdin closes.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .context("building the upstream runtime")?;
    rt.block_on(serve(args.roles))
}

async fn serve(roles: Vec<String>) -> anyhow::Result<()> {
    let mut line = Vec::new();
    for role in roles {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding an upstream listener")?;
        line.push(format!("{role}={}", listener.local_addr()?));
        let tag = HeaderValue::from_str(&role).context("role is not a header value")?;
        tokio::spawn(accept_loop(listener, tag));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", line.join(" "))?;
    out.flush()?;
    drop(out);
    // Returns on EOF (the harness closed our stdin or exited) or on a read error.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::stdin().read_to_end(&mut sink)
    })
    .await;
    Ok(())
}

async fn accept_loop(listener: TcpListener, tag: HeaderValue) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // e.g. out of file descriptors: back off instead of spinning
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tag = tag.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, tag.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Messages of one `/bench.Bench/Stream` answer.
pub const STREAM_MESSAGES: usize = 10;
/// The gRPC message every answer carries: `ok` behind its 5-byte length prefix.
pub const GRPC_MESSAGE: [u8; 7] = [0, 0, 0, 0, 2, b'o', b'k'];
static GRPC_STREAM: [u8; 7 * STREAM_MESSAGES] = {
    let mut a = [0u8; 7 * STREAM_MESSAGES];
    let mut i = 0;
    while i < STREAM_MESSAGES {
        let mut j = 0;
        while j < 7 {
            a[i * 7 + j] = GRPC_MESSAGE[j];
            j += 1;
        }
        i += 1;
    }
    a
};

/// A body of one data frame and then trailers (a gRPC answer).
pub struct DataThenTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl DataThenTrailers {
    /// `data` (left out when empty), then `trailers`.
    pub fn new(data: Bytes, trailers: HeaderMap) -> Self {
        DataThenTrailers {
            data: (!data.is_empty()).then_some(data),
            trailers: Some(trailers),
        }
    }
}

impl Body for DataThenTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Whether a request is a gRPC call.
fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// An answer's body: whole, or echoing the request's (bidirectional streaming).
type AnswerBody = Either<DataThenTrailers, Echo>;

/// The trailers of a successful gRPC answer.
fn grpc_ok() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

/// Answer a gRPC call: read the request's messages whole, then the messages of the method and
/// `grpc-status: 0` (or `12`, UNIMPLEMENTED, for another method); a bidirectional call is
/// echoed as it arrives.
async fn grpc_answer(req: Request<Incoming>, tag: HeaderValue) -> Response<AnswerBody> {
    let path = req.uri().path().to_string();
    if path == "/bench.Bench/Bidi" {
        let echo = Echo {
            inner: req.into_body(),
            trailers: Some(grpc_ok()),
        };
        return grpc_response(Either::Right(echo), tag);
    }
    let _ = req.into_body().collect().await;
    let (data, status) = match path.as_str() {
        "/bench.Bench/Unary" | "/bench.Bench/ClientStream" => {
            (Bytes::from_static(&GRPC_MESSAGE), "0")
        }
        "/bench.Bench/Stream" => (Bytes::from_static(&GRPC_STREAM), "0"),
        _ => (Bytes::new(), "12"),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    grpc_response(Either::Left(DataThenTrailers::new(data, trailers)), tag)
}

fn grpc_response(body: AnswerBody, tag: HeaderValue) -> Response<AnswerBody> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("x-upstream", tag);
    resp
}

async fn answer(
    req: Request<Incoming>,
    tag: HeaderValue,
) -> Result<Response<AnswerBody>, Infallible> {
    if is_grpc(&req) {
        return Ok(grpc_answer(req, tag).await);
    }
    let body = if req.uri().path().starts_with("/large") {
        Bytes::from_static(&LARGE)
    } else {
        Bytes::from_static(b"ok")
    };
    let mut resp = Response::new(Either::Left(DataThenTrailers {
        data: Some(body),
        trailers: None,
    }));
    resp.headers_mut().insert("x-upstream", tag);
    Ok(resp)
}

/// The body of a bidirectional call's answer: each data frame of the request, as it arrives,
/// then `trailers` once the request ends (its own trailers are dropped).
pub struct Echo {
    inner: Incoming,
    trailers: Option<HeaderMap>,
}

impl Body for Echo {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.trailers.is_none() {
            return Poll::Ready(None);
        }
        loop {
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) if !d.is_empty() => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    _ => {}
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none()
    }
}
