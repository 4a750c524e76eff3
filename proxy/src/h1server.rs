//! The proxy's own HTTP/1.1 server for the common request: a cleartext connection's requests
//! are read, answered and written here, on the connection's task, with no hyper dispatcher,
//! no body channel and one write per small response. What this loop does not serve itself it
//! hands, with the bytes it has already read, to hyper for the rest of the connection:
//!
//! - a connection that opens with the HTTP/2 preface (to hyper's HTTP/2 server);
//! - a request with a body (`Content-Length` above zero or `Transfer-Encoding`), an
//!   `Expect`, an `Upgrade` (WebSocket), `CONNECT`, or HTTP/1.0 (to hyper's HTTP/1.1 server,
//!   which keeps serving that connection to its end).
//!
//! The limits are the listener's: the header-read timeout runs from the moment the connection
//! waits for a request (the first, or the next on a kept-alive connection), a head larger than
//! `max_header_bytes` gets `431`, more than `max_headers` fields `431`, a malformed head `400`;
//! each of those closes the connection. A client that closes its end while its request is in
//! flight cancels the request, as hyper does. Pipelined requests are answered in order.

use crate::body::ClientBody;
use crate::h1::{has_token, COPY_LIMIT};
use crate::reply::ResponseBody;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most header fields this loop parses itself; a listener allowing more hands its
/// connections to hyper.
pub(crate) const MAX_FIELDS: usize = 128;
/// Read buffer growth.
const READ_CHUNK: usize = 8 * 1024;

/// The listener's limits, as this loop needs them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
    /// Requests may be served here; else the loop only tells HTTP/2 from HTTP/1.1.
    pub(crate) serve: bool,
}

/// How a connection left this loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// It is finished: close it.
    Close,
    /// Hand it to hyper's HTTP/1.1 server, with the bytes in the buffer as its first input.
    Http1,
    /// Hand it to hyper's HTTP/2 server, likewise.
    Http2,
}

/// What one request asks of its connection, beyond the request itself.
struct Asks {
    /// The client asked to close after this response (`Connection: close`).
    close: bool,
    /// The client accepts trailers (`TE: trailers`).
    trailers: bool,
    head_only: bool,
}

/// Serve `io` until it closes or needs hyper; `buf` holds what was read and not yet used
/// (the caller hands it to hyper with the connection). `respond` answers one request;
/// `draining` says whether the listener is shutting down (a connection waiting for its next
/// request is then closed), and `drained` completes when it begins; `shutting` says whether
/// it has (a cheap check, made before each response).
pub(crate) async fn serve<S, F, Fut, D>(
    io: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
    respond: F,
    drained: &mut D,
    shutting: impl Fn() -> bool,
) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<ClientBody>) -> Fut,
    Fut: Future<Output = Response<ResponseBody>>,
    D: Future<Output = ()> + Unpin,
{
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut first = true;
    loop {
        // the header-read timeout runs from the start of the wait for this head, not from
        // its last read (slowloris)
        let deadline = Instant::now() + limits.header_read_timeout.min(limits.idle_timeout);
        // a complete head, or why there is none
        let (req, mut asks) = loop {
            skip_empty_lines(buf);
            if !buf.is_empty() {
                if first && starts_preface(buf) {
                    if buf.len() >= H2_PREFACE.len() {
                        return Next::Http2;
                    }
                } else if !limits.serve {
                    return Next::Http1;
                } else {
                    match parse(buf, limits.max_headers) {
                        Parsed::Request(req, asks) => break (req, asks),
                        Parsed::Hyper(head) => {
                            if !head.is_empty() {
                                let mut whole = BytesMut::with_capacity(head.len() + buf.len());
                                whole.extend_from_slice(&head);
                                whole.extend_from_slice(buf);
                                *buf = whole;
                            }
                            return Next::Http1;
                        }
                        Parsed::Partial => {}
                        Parsed::Refuse(status) => {
                            refuse(io, &mut out, status).await;
                            return Next::Close;
                        }
                    }
                }
                if buf.len() >= limits.max_header_bytes {
                    refuse(io, &mut out, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE).await;
                    return Next::Close;
                }
            }
            match read_head_bytes(io, buf, deadline, drained).await {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) => {}
            }
        };
        first = false;
        let mut client = Client {
            io: &mut *io,
            buf: &mut *buf,
            max: limits.max_header_bytes,
        };
        let mut fut = std::pin::pin!(respond(req));
        let resp = match client.until_gone(|cx| fut.as_mut().poll(cx)).await {
            Some(r) => r,
            // the client went away: its request is cancelled
            None => return Next::Close,
        };
        // shutting down: this response is the connection's last, and says so
        asks.close |= shutting();
        match write_response(&mut client, &mut out, resp, &asks).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = io.shutdown().await;
                return Next::Close;
            }
        }
    }
}

/// What [`decode_request`] made of a client's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodedRequest {
    /// A bodiless request this server answers itself: its method, target, fields and the
    /// bytes its head took (empty lines before it included).
    Served {
        /// The method.
        method: String,
        /// The request target.
        target: String,
        /// Header fields.
        fields: usize,
        /// Bytes the head took.
        len: usize,
    },
    /// Not all of the head is there.
    Partial,
    /// The connection goes to hyper.
    Hyper {
        /// hyper is given exactly the bytes read (after any empty lines before the head).
        intact: bool,
    },
    /// Answered with this status, then closed.
    Refused(u16),
}

/// Classify `input` as the start of a connection the way the server loop does, for the fuzz
/// target and tests: a request it serves, a head still partial, a connection for hyper, or a
/// refusal.
pub fn decode_request(input: &[u8], max_headers: usize) -> DecodedRequest {
    let mut buf = BytesMut::from(input);
    skip_empty_lines(&mut buf);
    let skipped = input.len() - buf.len();
    match parse(&mut buf, max_headers.min(MAX_FIELDS - 1)) {
        Parsed::Request(req, _) => DecodedRequest::Served {
            method: req.method().to_string(),
            target: req.uri().to_string(),
            fields: req.headers().len(),
            len: input.len() - buf.len(),
        },
        Parsed::Partial => DecodedRequest::Partial,
        Parsed::Hyper(head) => DecodedRequest::Hyper {
            intact: [&head[..], &buf[..]].concat() == input[skipped..],
        },
        Parsed::Refuse(status) => DecodedRequest::Refused(status.as_u16()),
    }
}

/// Drop the empty lines a client may send before a request line (RFC 9112 2.2).
fn skip_empty_lines(buf: &mut BytesMut) {
    let n = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    if n > 0 {
        buf.advance(n);
    }
}

/// Whether `buf` is (so far) the start of the HTTP/2 preface.
fn starts_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    buf[..n] == H2_PREFACE[..n]
}

// the request is the common case and is moved once, out of the match: boxing it would cost
// an allocation per request
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request(Request<ClientBody>, Asks),
    /// Not all of the head is here yet.
    Partial,
    /// A request for hyper (see the module docs): the head that was taken out of the
    /// buffer for it (it goes back in front), or nothing.
    Hyper(Bytes),
    /// Answer this status and close.
    Refuse(StatusCode),
}

/// Parse one request head at the start of `buf`; a request served here is taken out of it.
fn parse(buf: &mut BytesMut, max_headers: usize) -> Parsed {
    // the empty line that ends the head: a head has few lines, so the line ends are looked at
    let end = memchr::memchr_iter(b'\n', buf)
        .find(|&i| buf.get(i + 1..i + 3) == Some(b"\r\n"))
        .and_then(|i| i.checked_sub(1));
    let Some(end) = end.filter(|&i| buf.get(i) == Some(&b'\r')) else {
        // not all here yet, or a head whose lines end in bare LF (hyper's, if complete)
        return match head_len(buf, max_headers) {
            Ok(None) => Parsed::Partial,
            Ok(Some(_)) => Parsed::Hyper(Bytes::new()),
            Err(status) => Parsed::Refuse(status),
        };
    };
    // the head leaves the buffer as shared bytes: the target and the field values are
    // slices of it, not copies
    let head = buf.split_to(end + 4).freeze();
    build(&head, max_headers)
}

/// The length of the complete head at the start of `buf`, if it is complete.
fn head_len(buf: &[u8], max_headers: usize) -> Result<Option<usize>, StatusCode> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_FIELDS] =
        [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let slots = &mut slots[..(max_headers + 1).min(MAX_FIELDS)];
    let mut r = httparse::Request::new(&mut []);
    match r.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(_) => Err(StatusCode::BAD_REQUEST),
    }
}

/// The request of the complete `head`.
fn build(head: &Bytes, max_headers: usize) -> Parsed {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_FIELDS] =
        [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let slots = &mut slots[..(max_headers + 1).min(MAX_FIELDS)];
    let mut r = httparse::Request::new(&mut []);
    match r.parse_with_uninit_headers(head, slots) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        _ => return Parsed::Refuse(StatusCode::BAD_REQUEST),
    }
    if r.headers.len() > max_headers {
        return Parsed::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    let (Some(method), Some(target), Some(1)) = (r.method, r.path, r.version) else {
        // HTTP/1.0 (its keep-alive rules differ): hyper's
        return Parsed::Hyper(head.clone());
    };
    if method == "CONNECT" {
        return Parsed::Hyper(head.clone());
    }
    let mut asks = Asks {
        close: false,
        trailers: false,
        head_only: method == "HEAD",
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Refuse(StatusCode::BAD_REQUEST);
    };
    let Ok(uri) = Uri::from_maybe_shared(head.slice_ref(target.as_bytes())) else {
        return Parsed::Refuse(StatusCode::BAD_REQUEST);
    };
    // room for the fields the proxy adds (forwarding, context) without a rehash
    let mut map = crate::headers::map_with_capacity(r.headers.len() + 6);
    let mut seen_length = false;
    for h in r.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"content-length") {
            // a body, or a length given twice: hyper's (it merges or refuses them)
            if h.value.is_empty() || h.value.iter().any(|&b| b != b'0') || seen_length {
                return Parsed::Hyper(head.clone());
            }
            seen_length = true;
        } else if n.eq_ignore_ascii_case(b"transfer-encoding")
            || n.eq_ignore_ascii_case(b"expect")
            || n.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::Hyper(head.clone());
        } else if n.eq_ignore_ascii_case(b"connection") {
            asks.close |= has_token(h.value, b"close");
        } else if n.eq_ignore_ascii_case(b"te") {
            asks.trailers |= has_token(h.value, b"trailers");
        }
        let Some(name) = crate::headers::field_name(n) else {
            return Parsed::Refuse(StatusCode::BAD_REQUEST);
        };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice_ref(h.value)) else {
            return Parsed::Refuse(StatusCode::BAD_REQUEST);
        };
        map.append(name, value);
    }
    let mut req = Request::new(ClientBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = map;
    Parsed::Request(req, asks)
}

/// Read more of a head into `buf`: the bytes read (0: the client closed), or an error when
/// `deadline` passes or the listener drains first.
async fn read_head_bytes<S, D>(
    io: &mut S,
    buf: &mut BytesMut,
    deadline: Instant,
    drained: &mut D,
) -> io::Result<usize>
where
    S: AsyncRead + Unpin,
    D: Future<Output = ()> + Unpin,
{
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    // the timer is armed only if the read has to wait (`CoarseSleep` arms when first polled)
    let mut sleep = crate::deadline::CoarseSleep::until(deadline);
    let idle = buf.is_empty();
    poll_fn(|cx| {
        if let Poll::Ready(r) = poll_read(io, buf, cx) {
            return Poll::Ready(r);
        }
        if Pin::new(&mut sleep).poll(cx).is_ready() {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        // a drain closes a connection that waits for its next request, not one that is
        // sending a head
        if idle && Pin::new(&mut *drained).poll(cx).is_ready() {
            return Poll::Ready(Err(io::ErrorKind::Interrupted.into()));
        }
        Poll::Pending
    })
    .await
}

fn poll_read<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The client's side of a connection while a request of it is answered.
struct Client<'a, S> {
    io: &'a mut S,
    buf: &'a mut BytesMut,
    /// Most bytes kept in `buf` meanwhile.
    max: usize,
}

impl<S: AsyncRead + Unpin> Client<'_, S> {
    /// What `poll` yields, or `None` if the client closed its connection (or it failed)
    /// first. Bytes the client pipelines meanwhile are kept in `buf` (up to `max` of them).
    /// The end of the client's stream means it is gone, as for hyper's server and nginx: a
    /// half-close cannot be told from a client that left, and is taken as one.
    async fn until_gone<T>(
        &mut self,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Option<T> {
        poll_fn(|cx| {
            if let Poll::Ready(r) = poll(cx) {
                return Poll::Ready(Some(r));
            }
            if self.buf.len() < self.max {
                if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                    self.buf.reserve(READ_CHUNK);
                }
                match poll_read(self.io, self.buf, cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                    // pipelined: read again at once (the reader is not registered yet)
                    Poll::Ready(Ok(_)) => cx.waker().wake_by_ref(),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body may follow (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Write `resp`: `Ok(true)` if the connection can serve another request.
async fn write_response<S>(
    client: &mut Client<'_, S>,
    out: &mut Vec<u8>,
    resp: Response<ResponseBody>,
    asks: &Asks,
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let raw = body.take_raw();
    let mut body = std::pin::pin!(body);
    let status = parts.status;
    status_line(out, status);
    let mut keep = !asks.close;
    let mut length = None;
    let mut chunked = false;
    let mut date = false;
    if let Some(raw) = &raw {
        // an upstream's fields as they came: none of them is hop-by-hop
        out.extend_from_slice(raw.lines());
        length = raw.length;
        date = raw.date;
    }
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            length = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        } else if name == header::TRANSFER_ENCODING {
            chunked = true;
        } else if name == header::CONNECTION {
            keep &= !has_token(value.as_bytes(), b"close");
        } else if name == header::DATE {
            date = true;
        }
        crate::h1::write_field(out, name, value);
    }
    let bodiless = asks.head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
        out.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if !date {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    if !keep && parts.headers.get(header::CONNECTION).is_none() {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        // a frame that is ready goes next to what is buffered; before waiting, write that out
        let polled = poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    client.io.write_all(out).await?;
                    out.clear();
                }
                // a long response (a stream, a long poll) ends when its client goes away
                match client.until_gone(|cx| body.as_mut().poll_frame(cx)).await {
                    Some(f) => f,
                    None => return Ok(false),
                }
            }
        };
        let frame = match frame {
            None => break,
            // the body failed midway: the response cannot be completed
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed: connection closed");
                if !out.is_empty() {
                    let _ = client.io.write_all(out).await;
                }
                return Ok(false);
            }
            Some(Ok(f)) => f,
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), framing) {
                    if asks.trailers {
                        out.extend_from_slice(b"0\r\n");
                        write_trailers(out, &parts.headers, &trailers);
                        out.extend_from_slice(b"\r\n");
                        client.io.write_all(out).await?;
                        out.clear();
                        return Ok(keep);
                    }
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            Framing::None => continue,
            Framing::Length(_) => {
                let n = data.len() as u64;
                if n > left {
                    // more than announced: what was announced goes out, then the close
                    let announced = data.slice(..usize::try_from(left).unwrap_or(0));
                    put_data(client.io, out, announced, b"").await?;
                    client.io.write_all(out).await?;
                    return Ok(false);
                }
                left -= n;
                put_data(client.io, out, data, b"").await?;
            }
            Framing::Chunked => {
                let mut line = [0u8; 18];
                out.extend_from_slice(crate::h1::hex_line(data.len(), &mut line));
                put_data(client.io, out, data, b"\r\n").await?;
            }
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        // shorter than announced: the client would wait for the rest
        Framing::Length(_) if left > 0 => keep = false,
        _ => {}
    }
    if !out.is_empty() {
        client.io.write_all(out).await?;
        out.clear();
    }
    Ok(keep)
}

/// The trailer fields the response's `Trailer` field announced, less those that may not be
/// trailers (RFC 9110 6.5.1; hyper's rule).
fn write_trailers(out: &mut Vec<u8>, headers: &HeaderMap, trailers: &HeaderMap) {
    static NOT_TRAILERS: [HeaderName; 12] = [
        header::AUTHORIZATION,
        header::CACHE_CONTROL,
        header::CONTENT_ENCODING,
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::CONTENT_TYPE,
        header::HOST,
        header::MAX_FORWARDS,
        header::SET_COOKIE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::TE,
    ];
    let announced = |name: &HeaderName| {
        headers
            .get_all(header::TRAILER)
            .iter()
            .any(|v| has_token(v.as_bytes(), name.as_str().as_bytes()))
    };
    for (name, value) in trailers {
        if announced(name) && !NOT_TRAILERS.contains(name) {
            crate::h1::write_field(out, name, value);
        }
    }
}

/// Start `out` afresh with the status line of `status`.
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Add `data` (and `after`) to `out`, or, when large, write `out` and then `data` itself.
async fn put_data<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    mut data: Bytes,
    after: &[u8],
) -> io::Result<()> {
    if data.len() <= COPY_LIMIT {
        out.extend_from_slice(&data);
    } else {
        io.write_all(out).await?;
        out.clear();
        while data.has_remaining() {
            let n = io.write(&data).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data.advance(n);
        }
    }
    out.extend_from_slice(after);
    Ok(())
}

/// Answer a refused head with `status` and no body (the connection closes after it).
async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, out: &mut Vec<u8>, status: StatusCode) {
    status_line(out, status);
    out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\ndate: ");
    with_date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n\r\n");
    let _ = io.write_all(out).await;
    let _ = io.shutdown().await;
}

/// `n` in decimal.
fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

thread_local! {
    /// This thread's `Date` value and the second it is for.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Call `f` with the current `Date` value (IMF-fixdate, formatted once a second per thread).
fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == 29 {
                d.1.copy_from_slice(s.as_bytes());
                d.0 = secs;
            }
        }
        f(&d.1);
    });
}

/// A connection's stream with bytes already read from it put back in front, for hyper.
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    io: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Bytes, io: S) -> Prefixed<S> {
        Prefixed { prefix, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() && buf.remaining() > 0 {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_upgrades_and_old_versions_go_to_hyper() {
        for head in [
            &b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            b"PUT / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(head);
            let Parsed::Hyper(taken) = parse(&mut buf, 100) else {
                panic!("not for hyper: {head:?}");
            };
            assert_eq!([&taken[..], &buf[..]].concat(), head, "nothing is lost");
        }
    }

    #[test]
    fn a_bodiless_request_is_parsed_and_taken_out_of_the_buffer() {
        let mut buf = BytesMut::from(
            &b"GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\nTE: trailers\r\ncontent-length: 0\r\n\r\nGET /next"[..],
        );
        let Parsed::Request(req, asks) = parse(&mut buf, 100) else {
            panic!("not parsed");
        };
        assert_eq!(req.uri(), "/a?b");
        assert_eq!(req.headers()["host"], "x");
        assert!(asks.close && asks.trailers && !asks.head_only);
        assert_eq!(&buf[..], b"GET /next");
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        let mut buf = BytesMut::from(&b"GARBAGE\r\n\r\n"[..]);
        assert!(matches!(
            parse(&mut buf, 100),
            Parsed::Refuse(StatusCode::BAD_REQUEST)
        ));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..4 {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&many[..]);
        assert!(matches!(
            parse(&mut buf, 3),
            Parsed::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        ));
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nhost: a"[..]);
        assert!(matches!(parse(&mut buf, 100), Parsed::Partial));
    }

    #[test]
    fn tokens_and_numbers() {
        assert!(has_token(b"keep-alive, close", b"close"));
        assert!(!has_token(b"closed", b"close"));
        assert_eq!(itoa_u64(0, &mut [0; 20]), b"0");
        assert_eq!(itoa_u64(1234567890, &mut [0; 20]), b"1234567890");
        let mut d = Vec::new();
        with_date(|v| d.extend_from_slice(v));
        assert!(d.ends_with(b" GMT"), "{d:?}");
    }
}
