//! A lean HTTP/1.1 client exchange, driven on the request's own task.
//!
//! hyper's client connection needs a task of its own per connection and hands every request
//! and response to it over channels; on a proxy that answers small requests, that task and
//! its wake-ups cost more user-space instructions than the rest of the upstream side together.
//! Here the request's task writes the request head and body straight to the socket, parses
//! the response head (httparse, as hyper does) and reads the response body from the socket as
//! the downstream connection asks for it. A connection belongs to one exchange at a time and
//! goes back to its worker's pool ([`crate::pool`]) as soon as its response body has been read
//! to the end; nothing polls it while it is idle, so before it is reused a read with no waker
//! checks that the upstream has not closed it (`Conn::is_closed`).
//!
//! Framing follows RFC 9112: a request body goes out with its `Content-Length`, or chunked when
//! its length is unknown; a response body is delimited by `Transfer-Encoding: chunked` (whose
//! trailers become a trailers frame), else `Content-Length`, else the end of the connection;
//! responses to `HEAD`, 1xx, 204 and 304 have none. Interim 1xx responses (other than 101,
//! which only upgrades ask for, and those go over hyper) are skipped. A request body still
//! being sent when the response head arrives keeps being sent while the response body is read
//! (full duplex, as hyper does).
//!
//! A connection is reused only when the exchange ended cleanly: both bodies complete, no
//! `Connection: close` either way, an HTTP/1.1 response, no bytes left over.

use crate::body::UpstreamBody;
use crate::upstream::{ConnSlot, UpstreamState};
use crate::upstream_tls::UpstreamIo;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::future::poll_fn;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest response head accepted (status line and headers), as the listener's request limit.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head or a trailer section (hyper's default).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Read granularity: room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Request body chunks up to this size are copied into the write buffer with their framing
/// (one write); larger ones are written from their own buffer.
pub(crate) const COPY_LIMIT: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The upstream closed the connection before a complete response.
    #[error("connection closed before a complete response")]
    Closed,
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The response is not valid HTTP/1.1.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// The client's request body failed (read error or its idle timeout).
    #[error("request body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An exchange over hyper's client (upgrades, HTTP/2) failed.
    #[error("{0}")]
    Hyper(#[source] hyper::Error),
}

impl ExchangeError {
    /// Whether the connection closed or was reset before a complete response head.
    pub(crate) fn is_reset(&self) -> bool {
        match self {
            ExchangeError::Closed => true,
            ExchangeError::Io(e) => e.kind() == io::ErrorKind::ConnectionReset,
            ExchangeError::Hyper(e) => {
                e.is_incomplete_message()
                    || std::error::Error::source(e)
                        .and_then(|s| s.downcast_ref::<io::Error>())
                        .is_some_and(|io| io.kind() == io::ErrorKind::ConnectionReset)
            }
            _ => false,
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body.
    Empty,
    /// This many bytes (left).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Eof,
}

/// An open HTTP/1.1 connection to an upstream.
pub(crate) struct Conn {
    io: UpstreamIo,
    /// Bytes read and not yet consumed.
    rbuf: BytesMut,
    /// Bytes to write (a request head, framing, small body chunks).
    wbuf: Vec<u8>,
    /// Counts the connection against its upstream's limit until it is dropped.
    slot: ConnSlot,
    /// Exchanges started on it.
    served: u32,
}

impl Conn {
    /// A connection over `io`, counted by `slot`.
    pub(crate) fn new(io: UpstreamIo, slot: ConnSlot) -> Box<Conn> {
        Box::new(Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            slot,
            served: 0,
        })
    }

    /// The upstream it is connected to.
    pub(crate) fn upstream(&self) -> &Arc<UpstreamState> {
        self.slot.upstream()
    }

    /// The socket and its slot, for hyper's client (an upgrade), if nothing is buffered.
    pub(crate) fn into_io(self) -> Option<(UpstreamIo, ConnSlot)> {
        self.rbuf.is_empty().then_some((self.io, self.slot))
    }

    /// Whether an idle connection can no longer be used: the upstream closed it (or sent
    /// something unasked). An open, quiet connection answers "would block", from the reactor's
    /// readiness without a system call: over TCP, `try_read` looks at that readiness and leaves
    /// the waker of the connection's last read registered; over TLS, a read with a waker that
    /// does nothing.
    pub(crate) fn is_closed(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return true;
        }
        if let crate::upstream_tls::UpstreamIo::Plain(s) = &self.io {
            let mut byte = [0u8; 1];
            return !matches!(s.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        !matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    /// Write `wbuf` out (from `*at`) and flush; `*at` tracks progress across polls.
    fn poll_write_buf(&mut self, at: &mut usize, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while *at < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        self.wbuf.clear();
        *at = 0;
        Poll::Ready(Ok(()))
    }
}

/// A request body on its way out: its framing and what is left to write.
struct Outgoing {
    body: UpstreamBody,
    framing: Framing,
    /// Progress through the connection's `wbuf`.
    at: usize,
    /// A large data chunk written from its own buffer after `wbuf`, and the framing after it.
    big: Option<(Bytes, &'static [u8])>,
    /// The body's last frame has been framed into `wbuf` (maybe not yet written).
    ended: bool,
}

impl Outgoing {
    /// Make progress sending the body: `Ready(Ok)` once all of it is written and flushed.
    fn poll_send(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ExchangeError>> {
        loop {
            ready!(conn.poll_write_buf(&mut self.at, cx))?;
            if let Some((data, after)) = &mut self.big {
                while !data.is_empty() {
                    let n = ready!(Pin::new(&mut conn.io).poll_write(cx, data))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                    }
                    data.advance(n);
                }
                conn.wbuf.extend_from_slice(after);
                self.big = None;
                continue;
            }
            if self.ended {
                ready!(Pin::new(&mut conn.io).poll_flush(cx))?;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    self.ended = true;
                    match self.framing {
                        Framing::Chunked => conn.wbuf.extend_from_slice(b"0\r\n\r\n"),
                        Framing::Length(left) if left > 0 => {
                            return Poll::Ready(Err(ExchangeError::Io(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "request body shorter than its content-length",
                            ))));
                        }
                        _ => {}
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(ExchangeError::Body(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.frame_data(conn, data)?,
                    Err(frame) => {
                        if let (Ok(trailers), Framing::Chunked) =
                            (frame.into_trailers(), self.framing)
                        {
                            conn.wbuf.extend_from_slice(b"0\r\n");
                            write_fields(&mut conn.wbuf, &trailers);
                            conn.wbuf.extend_from_slice(b"\r\n");
                            self.ended = true;
                        }
                        // trailers of a body with a length have no place on HTTP/1.1: dropped
                    }
                },
            }
        }
    }

    fn frame_data(&mut self, conn: &mut Conn, data: Bytes) -> Result<(), ExchangeError> {
        if data.is_empty() {
            return Ok(());
        }
        let after: &'static [u8] = match &mut self.framing {
            Framing::Chunked => {
                let mut line = [0u8; 18];
                conn.wbuf.extend_from_slice(hex_line(data.len(), &mut line));
                b"\r\n"
            }
            Framing::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err(ExchangeError::Io(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "request body longer than its content-length",
                    )));
                }
                *left -= n;
                b""
            }
            Framing::Empty | Framing::Eof => {
                return Err(ExchangeError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "request body where none was announced",
                )))
            }
        };
        if data.len() <= COPY_LIMIT {
            conn.wbuf.extend_from_slice(&data);
            conn.wbuf.extend_from_slice(after);
        } else {
            self.big = Some((data, after));
        }
        Ok(())
    }
}

/// `len` in hex followed by CRLF.
pub(crate) fn hex_line(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 16;
    let mut v = len;
    loop {
        i -= 1;
        buf[i] = HEX[v & 15];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    buf[16] = b'\r';
    buf[17] = b'\n';
    &buf[i..]
}

fn write_fields(out: &mut Vec<u8>, h: &HeaderMap) {
    for (name, value) in h {
        write_field(out, name, value);
    }
}

pub(crate) fn write_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Fields the proxy adds to a request for an HTTP/1.1 upstream (`X-Forwarded-For`,
/// `X-Forwarded-Proto`, `Via`, the `baggage` member), written after the request's own fields.
/// Kept out of the request's `HeaderMap`: hyper sizes that map for the fields the client sent,
/// so inserting four more would grow and rehash it on every request.
/// The fields are borrowed (static names, the connection's values, the table's): nothing is
/// cloned into it or dropped with it. It also says how the exchange should hand back the
/// response's fields (`keep_raw`), since it goes with the request down to the exchange.
#[derive(Debug, Default)]
pub struct Added<'a> {
    fields: [Option<(&'a HeaderName, &'a HeaderValue)>; 4],
    len: usize,
    /// The response's fields may be kept as they came (see [`RawFields`]): its client is the
    /// proxy's own HTTP/1.1 server, which writes them out as a block. Otherwise (HTTP/2 and
    /// hyper's server need a map) they go into the map as the head is parsed, not parsed a
    /// second time later.
    pub(crate) keep_raw: bool,
}

impl<'a> Added<'a> {
    /// Add a field, if it fits; else it is given back.
    pub(crate) fn push(
        &mut self,
        name: &'a HeaderName,
        value: &'a HeaderValue,
    ) -> Result<(), (&'a HeaderName, &'a HeaderValue)> {
        match self.fields.get_mut(self.len) {
            Some(slot) => {
                *slot = Some((name, value));
                self.len += 1;
                Ok(())
            }
            None => Err((name, value)),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + '_ {
        self.fields[..self.len].iter().filter_map(|f| *f)
    }
}

/// A failed exchange: the error, and the request when none of it reached the upstream.
pub(crate) type Failure = (ExchangeError, Option<Request<UpstreamBody>>);

/// Send `req` over `conn` and wait for the response head. The response body reads from the
/// connection and returns it to its worker's pool at its end (when `reuse`).
// not an `async fn`: that would keep a second copy of each by-value argument in
// the future (rust-lang/rust#62958), and the request's future is moved by value
#[allow(clippy::manual_async_fn)]
pub(crate) fn exchange<'a>(
    mut conn: Box<Conn>,
    req: Request<UpstreamBody>,
    added: &'a Added<'_>,
    reuse: bool,
) -> impl Future<Output = Result<Response<ResponseBody>, Failure>> + use<'a> {
    async move {
        let reused = conn.served > 0;
        conn.served = conn.served.saturating_add(1);
        let head_only = req.method() == Method::HEAD;
        let (framing, mut keep) = encode_head(&req, added, &mut conn.wbuf);
        let keep_request_head = reused && idempotent(req.method()) && framing == Framing::Empty;
        // the head goes out first; a failure there sent nothing of the request on a reused
        // connection the upstream had closed, so the request comes back for another connection
        let mut at = 0;
        if let Err(e) = poll_fn(|cx| conn.poll_write_buf(&mut at, cx)).await {
            conn.wbuf.clear();
            return Err((e.into(), Some(req)));
        }
        let (parts, body) = req.into_parts();
        let mut out = (framing != Framing::Empty).then_some(Outgoing {
            body,
            framing,
            at: 0,
            big: None,
            ended: false,
        });
        if out.is_none() {
            if let Err(e) = poll_fn(|cx| Pin::new(&mut conn.io).poll_flush(cx)).await {
                return Err((e.into(), None));
            }
        }
        // send the body while watching for the response head; an upstream that answers early
        // (a 413, say) and stops reading makes the send fail, and its answer still counts
        let mut send_failed: Option<ExchangeError> = None;
        let head = poll_fn(|cx| {
            if let Some(o) = &mut out {
                match o.poll_send(&mut conn, cx) {
                    Poll::Ready(Ok(())) => out = None,
                    // the client's body failed: the request cannot be completed
                    Poll::Ready(Err(e @ ExchangeError::Body(_))) => return Poll::Ready(Err(e)),
                    Poll::Ready(Err(e)) => {
                        out = None;
                        send_failed = Some(e);
                    }
                    Poll::Pending => {}
                }
            }
            loop {
                match parse_head(&mut conn.rbuf, head_only, added.keep_raw) {
                    Err(e) => return Poll::Ready(Err(e)),
                    Ok(Some(Parsed::Interim)) => continue,
                    Ok(Some(Parsed::Final(h))) => return Poll::Ready(Ok(h)),
                    Ok(None) => {}
                }
                if conn.rbuf.len() >= MAX_HEAD {
                    return Poll::Ready(Err(ExchangeError::Invalid("response head too large")));
                }
                match ready!(conn.poll_read_more(cx)) {
                    Ok(0) => {
                        return Poll::Ready(Err(send_failed
                            .take()
                            .unwrap_or(ExchangeError::Closed)))
                    }
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Err(send_failed.take().unwrap_or(e.into()))),
                }
            }
        })
        .await;
        if send_failed.is_some() {
            keep = false;
        }
        let head = match head {
            Ok(h) => h,
            Err(e) if keep_request_head && e.is_reset() && conn.rbuf.is_empty() => {
                // a reused connection closed by the upstream just as the request went out:
                // nothing was answered and the request is idempotent and bodiless, so it may go out
                // again on another connection (what browsers and hyper's pooled client do)
                let req =
                    Request::from_parts(parts, http_body_util::Either::Right(Default::default()));
                return Err((e, Some(req)));
            }
            Err(e) => return Err((e, None)),
        };
        // the request's fields are no longer needed: their map serves a later request
        crate::headers::recycle(parts.headers);
        keep &= head.keep_alive && reuse && head.framing != Framing::Eof;
        let mut resp = Response::new(ResponseBody {
            conn: Some(conn),
            framing: head.framing,
            chunk: ChunkState::Size,
            out: out.map(Box::new),
            keep,
            raw: head.raw,
        });
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        resp.body_mut().finish_if_empty();
        Ok(resp)
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Write the request head into `out`; returns the body's framing and whether the request lets
/// the connection be reused.
fn encode_head(
    req: &Request<UpstreamBody>,
    added: &Added<'_>,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let h = req.headers();
    let mut keep = true;
    for v in h.get_all(header::CONNECTION) {
        if has_token(v.as_bytes(), b"close") {
            keep = false;
        }
    }
    let declared = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| parse_length(v.as_bytes()));
    let end = req.body().is_end_stream();
    let (framing, add): (Framing, Option<u64>) = match declared {
        Some(0) => (Framing::Empty, None),
        Some(n) => (Framing::Length(n), None),
        None if end => {
            let m = req.method();
            let wants = *m == Method::POST || *m == Method::PUT || *m == Method::PATCH;
            (Framing::Empty, wants.then_some(0))
        }
        None => match req.body().size_hint().exact() {
            Some(0) => (Framing::Empty, None),
            Some(n) => (Framing::Length(n), Some(n)),
            None => (Framing::Chunked, None),
        },
    };
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(out, h);
    for (name, value) in added.iter() {
        write_field(out, name, value);
    }
    if let Some(n) = add {
        use std::io::Write as _;
        let _ = write!(out, "content-length: {n}\r\n");
    }
    if framing == Framing::Chunked && !h.contains_key(header::TRANSFER_ENCODING) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep)
}

/// A decimal `Content-Length` value (no sign, no spaces around digits other than OWS).
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Whether the comma-separated header value `v` lists `token` (case-insensitive).
pub(crate) fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// The fields as received, when they can go to an HTTP/1.1 client as they are (then
    /// `headers` is empty).
    raw: Option<RawFields>,
    framing: Framing,
    keep_alive: bool,
}

/// An upstream response's header fields as they came, not parsed into a `HeaderMap`: kept
/// only for a response whose fields the proxy does not change (no hop-by-hop field, no
/// `x-microstax-` field, framed by its length or bodiless), so the proxy's own HTTP/1.1
/// server (`crate::h1server`) writes them out as one block. Whatever needs the fields as a
/// map (hyper's server, the access log) calls [`RawFields::materialize`].
#[derive(Debug, Clone)]
pub(crate) struct RawFields {
    /// The field lines, each with its CRLF, followed by the empty line.
    block: Bytes,
    /// The `Content-Length`, if one was sent.
    pub(crate) length: Option<u64>,
    /// A `Date` field is among them.
    pub(crate) date: bool,
}

impl RawFields {
    /// The field lines, each ending in CRLF (without the empty line).
    pub(crate) fn lines(&self) -> &[u8] {
        &self.block[..self.block.len().saturating_sub(2)]
    }

    /// Put the fields into `headers`, ahead of those already there (the proxy's own).
    pub(crate) fn materialize(self, headers: &mut HeaderMap) {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Ok(httparse::Status::Complete((_, fields))) =
            httparse::parse_headers(&self.block, &mut slots)
        else {
            // parsed once already, when the head came: cannot happen
            tracing::debug!("upstream header block did not parse again");
            return;
        };
        let added = std::mem::replace(headers, HeaderMap::with_capacity(fields.len() + 4));
        for f in fields.iter() {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(f.name.as_bytes()),
                HeaderValue::from_maybe_shared(self.block.slice_ref(f.value)),
            ) {
                headers.append(name, value);
            }
        }
        let mut last = None;
        for (name, value) in added {
            if let Some(n) = name {
                last = Some(n);
            }
            if let Some(n) = &last {
                headers.append(n.clone(), value);
            }
        }
    }
}

enum Parsed {
    /// A 1xx response, consumed.
    Interim,
    Final(Head),
}

/// Parse a response head at the start of `buf`, consuming it when complete. `keep_raw`: the
/// fields may stay as they came (see [`RawFields`]); otherwise they go into the head's map.
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
    keep_raw: bool,
) -> Result<Option<Parsed>, ExchangeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // left uninitialised: httparse writes the fields it parses (100 empty ones cost a
    // 3.2 KiB memset on every response)
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut r,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Invalid("too many header fields"))
        }
        Err(_) => return Err(ExchangeError::Invalid("malformed response head")),
    };
    let code = r.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::Invalid("invalid status code"))?;
    let version = if r.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    if status.is_informational() {
        if code == 101 {
            return Err(ExchangeError::Invalid("101 without an upgrade request"));
        }
        let _ = buf.split_to(len);
        return Ok(Some(Parsed::Interim));
    }
    // where each field lies in the head, so that values can share its buffer
    let base = buf.as_ptr() as usize;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let n = r.headers.len();
    let mut framing = if head_only || code == 204 || code == 304 {
        Framing::Empty
    } else {
        Framing::Eof
    };
    let bodyless = framing == Framing::Empty;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut keep_alive = version == Version::HTTP_11;
    // whether the fields can be passed on as they came (see `RawFields`)
    let mut plain = true;
    let mut date = false;
    for (i, f) in r.headers.iter().enumerate() {
        let name = f.name.as_bytes();
        plain &= !crate::headers::changed_on_responses(name);
        date |= name.eq_ignore_ascii_case(b"date");
        let ns = f.name.as_ptr() as usize - base;
        let vs = f.value.as_ptr() as usize - base;
        spans[i] = (
            ns as u32,
            (ns + name.len()) as u32,
            vs as u32,
            (vs + f.value.len()) as u32,
        );
        if name.eq_ignore_ascii_case(b"content-length") {
            let v =
                parse_length(f.value).ok_or(ExchangeError::Invalid("invalid content-length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(ExchangeError::Invalid("conflicting content-length"));
            }
            // the same length twice goes out once, through the map
            plain &= length.is_none();
            length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            coded = true;
            // only a final `chunked` delimits the body; any other coding runs to the close
            chunked = f
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(f.value, b"close") {
                keep_alive = false;
            } else if has_token(f.value, b"keep-alive") && version == Version::HTTP_10 {
                keep_alive = true;
            }
        }
    }
    if !bodyless {
        framing = if coded {
            if chunked {
                Framing::Chunked
            } else {
                Framing::Eof
            }
        } else {
            match length {
                Some(0) => Framing::Empty,
                Some(l) => Framing::Length(l),
                None => Framing::Eof,
            }
        };
    }
    if coded && length.is_some() {
        // both: a smuggling attempt or a broken upstream; never reuse the connection
        keep_alive = false;
    }
    let head = buf.split_to(len).freeze();
    let block = head.slice(spans.first().map_or(len, |s| s.0 as usize)..);
    // lines that end in a bare LF (httparse accepts them) are re-encoded through the map
    let crlf = || {
        block.ends_with(b"\r\n\r\n")
            && memchr::memchr_iter(b'\n', &block).all(|i| i > 0 && block[i - 1] == b'\r')
    };
    if keep_raw
        && plain
        && n > 0
        && matches!(framing, Framing::Empty | Framing::Length(_))
        && crlf()
    {
        let raw = RawFields {
            block,
            length,
            date,
        };
        return Ok(Some(Parsed::Final(Head {
            status,
            version,
            headers: HeaderMap::new(),
            raw: Some(raw),
            framing,
            keep_alive,
        })));
    }
    let mut headers = HeaderMap::with_capacity(n);
    for &(ns, ne, vs, ve) in &spans[..n] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| ExchangeError::Invalid("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| ExchangeError::Invalid("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Parsed::Final(Head {
        status,
        version,
        headers,
        raw: None,
        framing,
        keep_alive,
    })))
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// After a chunk's data, at its CRLF.
    DataEnd,
    /// After the last chunk, at the trailer section.
    Trailers,
}

/// A response body read from its connection as it is polled.
pub(crate) struct ResponseBody {
    /// `None` once the body ended (the connection went back to its pool, or was closed).
    conn: Option<Box<Conn>>,
    framing: Framing,
    chunk: ChunkState,
    /// The rest of a request body still being sent (full duplex; boxed: rare).
    out: Option<Box<Outgoing>>,
    /// The connection may be reused once the body ends.
    keep: bool,
    /// The response's fields, when they were kept as they came (see [`RawFields`]).
    raw: Option<RawFields>,
}

impl ResponseBody {
    /// Take the response's unparsed fields, if it has them.
    pub(crate) fn take_raw(&mut self) -> Option<RawFields> {
        self.raw.take()
    }

    fn finish_if_empty(&mut self) {
        if self.framing == Framing::Empty || self.framing == Framing::Length(0) {
            self.framing = Framing::Empty;
            self.end();
        }
    }

    /// The body is complete: return the connection to its pool, if it may be reused.
    fn end(&mut self) {
        self.framing = Framing::Empty;
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.keep && self.out.is_none() && conn.rbuf.is_empty() {
            let up = conn.upstream().clone();
            crate::pool::put(&up, conn);
        }
        // else dropped: closed
    }

    fn fail(&mut self, e: ExchangeError) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        self.conn = None;
        self.framing = Framing::Empty;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(o) = &mut this.out {
            match o.poll_send(conn, cx) {
                Poll::Ready(Ok(())) => this.out = None,
                // the upstream has answered; what it did not take of the request is dropped
                // and the connection is not reused
                Poll::Ready(Err(_)) => {
                    this.out = None;
                    this.keep = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buffered = conn.rbuf.len();
            match this.framing {
                Framing::Empty => {
                    this.end();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if buffered > 0 => {
                    let take = usize::try_from(left).map_or(buffered, |l| l.min(buffered));
                    let data = conn.rbuf.split_to(take).freeze();
                    let left = left - take as u64;
                    this.framing = Framing::Length(left);
                    if left == 0 {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Eof if buffered > 0 => {
                    let data = conn.rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked if buffered > 0 => {
                    match decode_chunk(&mut conn.rbuf, &mut this.chunk) {
                        Err(e) => return this.fail(e),
                        Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                        Ok(Decoded::More) => {}
                        Ok(Decoded::Progress) => continue,
                        Ok(Decoded::End(trailers)) => {
                            this.end();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                    }
                }
                _ => {}
            }
            match ready!(conn.poll_read_more(cx)) {
                Ok(0) if this.framing == Framing::Eof => {
                    this.conn = None;
                    this.framing = Framing::Empty;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(ExchangeError::Closed),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Empty
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

enum Decoded {
    /// A piece of chunk data.
    Data(Bytes),
    /// More bytes are needed.
    More,
    /// A framing element was consumed.
    Progress,
    /// The last chunk and the trailer section were read.
    End(Option<HeaderMap>),
}

fn decode_chunk(buf: &mut BytesMut, state: &mut ChunkState) -> Result<Decoded, ExchangeError> {
    match *state {
        ChunkState::Size => {
            let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(ExchangeError::Invalid("chunk size line too long"));
                }
                return Ok(Decoded::More);
            };
            let line = &buf[..eol];
            let digits = line
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if digits.is_empty() || digits.len() > 15 {
                return Err(ExchangeError::Invalid("invalid chunk size"));
            }
            let mut size = 0u64;
            for &d in digits {
                let v = match d {
                    b'0'..=b'9' => d - b'0',
                    b'a'..=b'f' => d - b'a' + 10,
                    b'A'..=b'F' => d - b'A' + 10,
                    _ => return Err(ExchangeError::Invalid("invalid chunk size")),
                };
                size = (size << 4) | u64::from(v);
            }
            buf.advance(eol + 2);
            *state = if size == 0 {
                ChunkState::Trailers
            } else {
                ChunkState::Data(size)
            };
            Ok(Decoded::Progress)
        }
        ChunkState::Data(_) if buf.is_empty() => Ok(Decoded::More),
        ChunkState::Data(left) => {
            let take = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
            let data = buf.split_to(take).freeze();
            let left = left - take as u64;
            *state = if left == 0 {
                ChunkState::DataEnd
            } else {
                ChunkState::Data(left)
            };
            Ok(Decoded::Data(data))
        }
        ChunkState::DataEnd => {
            if buf.len() < 2 {
                return Ok(Decoded::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err(ExchangeError::Invalid("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            *state = ChunkState::Size;
            Ok(Decoded::Progress)
        }
        ChunkState::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Decoded::End(None));
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Partial) => {
                    if buf.len() >= MAX_HEAD {
                        return Err(ExchangeError::Invalid("trailer section too large"));
                    }
                    Ok(Decoded::More)
                }
                Err(_) => Err(ExchangeError::Invalid("malformed trailer section")),
                Ok(httparse::Status::Complete((len, parsed))) => {
                    let mut map = HeaderMap::with_capacity(parsed.len());
                    for f in parsed.iter() {
                        let (Ok(n), Ok(v)) = (
                            HeaderName::from_bytes(f.name.as_bytes()),
                            HeaderValue::from_bytes(f.value),
                        ) else {
                            return Err(ExchangeError::Invalid("invalid trailer field"));
                        };
                        map.append(n, v);
                    }
                    buf.advance(len);
                    Ok(Decoded::End(Some(map)))
                }
            }
        }
    }
}

/// What [`decode`] made of an upstream's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedResponse {
    /// The final status.
    pub status: u16,
    /// The body's bytes, in order.
    pub body: Vec<u8>,
    /// The trailer fields, if a chunked body had any.
    pub trailers: usize,
    /// Bytes after the response (the next one's, or garbage).
    pub left: usize,
    /// Header fields in the head.
    pub fields: usize,
}

/// Decode `input` as one complete upstream response (head, then body by its framing) the way
/// an exchange reads it from a connection, all of it already received: for the fuzz target
/// and tests. A response delimited by the end of the connection ends with `input`.
pub fn decode(input: &[u8], head_only: bool) -> Result<DecodedResponse, ExchangeError> {
    let mut buf = BytesMut::from(input);
    let head = loop {
        match parse_head(&mut buf, head_only, true)? {
            Some(Parsed::Interim) => continue,
            Some(Parsed::Final(h)) => break h,
            None if buf.len() >= MAX_HEAD => {
                return Err(ExchangeError::Invalid("response head too large"))
            }
            None => return Err(ExchangeError::Closed),
        }
    };
    let mut headers = head.headers;
    if let Some(raw) = head.raw {
        raw.materialize(&mut headers);
    }
    let mut body = Vec::new();
    let mut trailers = 0;
    match head.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            if (buf.len() as u64) < n {
                return Err(ExchangeError::Closed);
            }
            body.extend_from_slice(&buf.split_to(n as usize));
        }
        Framing::Eof => body.extend_from_slice(&buf.split()),
        Framing::Chunked => {
            let mut state = ChunkState::Size;
            loop {
                match decode_chunk(&mut buf, &mut state)? {
                    Decoded::Data(d) => body.extend_from_slice(&d),
                    Decoded::Progress => {}
                    Decoded::More => return Err(ExchangeError::Closed),
                    Decoded::End(t) => {
                        trailers = t.map_or(0, |t| t.len());
                        break;
                    }
                }
            }
        }
    }
    Ok(DecodedResponse {
        status: head.status.as_u16(),
        body,
        trailers,
        left: buf.len(),
        fields: headers.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `conn` is seen closed within 5 s (the reactor records the close at its next
    /// turn: the test yields to it until then).
    async fn seen_closed(conn: &mut Conn) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if conn.is_closed() {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_once_its_upstream_closes_or_talks_unasked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(crate::upstream::UpstreamState::new(addr.to_string().into()));
        for unasked in [false, true] {
            let io = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut peer, _) = listener.accept().await.unwrap();
            let mut conn = Conn::new(
                crate::upstream_tls::UpstreamIo::Plain(io),
                up.open_unbounded(),
            );
            // open and quiet: usable, however often it is asked
            for _ in 0..3 {
                assert!(!conn.is_closed());
                tokio::task::yield_now().await;
            }
            if unasked {
                tokio::io::AsyncWriteExt::write_all(&mut peer, b"HTTP/1.1 200 OK\r\n")
                    .await
                    .unwrap();
            } else {
                drop(peer);
            }
            assert!(seen_closed(&mut conn).await, "unasked bytes: {unasked}");
        }
    }

    #[test]
    fn whole_responses_decode() {
        let r = decode(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n1\r\nd\r\n0\r\nx-sum: 1\r\n\r\nNEXT",
            false,
        )
        .expect("decodes");
        assert_eq!(
            (r.status, &r.body[..], r.trailers, r.left),
            (200, &b"abcd"[..], 1, 4)
        );
        let r =
            decode(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcdef", false).expect("length");
        assert_eq!((&r.body[..], r.left), (&b"abc"[..], 3));
        assert!(decode(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc", false).is_err());
        // a chunk cut short ends the input: incomplete, not a loop (found by the fuzz target)
        let cut = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;e=a: b\r\n\r\n";
        assert!(matches!(decode(cut, false), Err(ExchangeError::Closed)));
        assert!(decode(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            false
        )
        .is_err());
    }

    #[test]
    fn fields_the_proxy_does_not_change_are_kept_as_they_came() {
        let head = |raw: &[u8]| {
            let mut b = BytesMut::from(raw);
            match parse_head(&mut b, false, true) {
                Ok(Some(Parsed::Final(h))) => h,
                _ => panic!("no head"),
            }
        };
        let h =
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nok");
        let raw = h.raw.expect("kept raw");
        assert!(h.headers.is_empty());
        assert_eq!(raw.length, Some(2));
        assert!(raw.date);
        assert_eq!(
            raw.lines(),
            b"Content-Length: 2\r\nDate: x\r\nX-A: 1\r\nx-a: 2\r\n"
        );
        let mut map = HeaderMap::new();
        map.insert("x-microstax-route", HeaderValue::from_static("r"));
        raw.materialize(&mut map);
        let names: Vec<_> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["content-length", "date", "x-a", "x-microstax-route"]
        );
        assert_eq!(map.get_all("x-a").iter().count(), 2);
        // a hop-by-hop field, the proxy's own names, or a body not framed by its length:
        // parsed into the map, as before
        for raw in [
            &b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nx-microstax-route: forged\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok",
        ] {
            let h = head(raw);
            assert!(h.raw.is_none(), "{raw:?}");
            assert!(!h.headers.is_empty());
        }
    }

    #[test]
    fn fields_go_straight_into_the_map_when_the_client_needs_one() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nok";
        let mut b = BytesMut::from(&raw[..]);
        let Ok(Some(Parsed::Final(h))) = parse_head(&mut b, false, false) else {
            panic!("no head");
        };
        // the same fields, in the same order, as the raw block would give once materialized
        assert!(h.raw.is_none());
        let fields: Vec<_> = h
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(
            fields,
            [
                ("content-length", &b"2"[..]),
                ("date", b"x"),
                ("x-a", b"1"),
                ("x-a", b"2")
            ]
        );
        assert_eq!((h.framing, &b[..]), (Framing::Length(2), &b"ok"[..]));
    }

    #[test]
    fn hex_lines() {
        let mut b = [0u8; 18];
        assert_eq!(hex_line(0, &mut b), b"0\r\n");
        assert_eq!(hex_line(255, &mut b), b"ff\r\n");
        assert_eq!(hex_line(0x1234, &mut b), b"1234\r\n");
    }

    #[test]
    fn lengths_and_tokens() {
        assert_eq!(parse_length(b" 42 "), Some(42));
        assert_eq!(parse_length(b"+4"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }

    #[test]
    fn heads_frame_their_bodies() {
        let framing = |raw: &[u8], head_only: bool| {
            let mut b = BytesMut::from(raw);
            match parse_head(&mut b, head_only, true) {
                Ok(Some(Parsed::Final(h))) => Ok((h.framing, h.keep_alive)),
                Ok(_) => Err("incomplete"),
                Err(_) => Err("error"),
            }
        };
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
            Ok((Framing::Length(2), true))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", true),
            Ok((Framing::Empty, true))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                false
            ),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\n\r\n", false),
            Ok((Framing::Eof, false))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
                false
            ),
            Ok((Framing::Empty, false))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
                false
            ),
            Err("error")
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-le", false),
            Err("incomplete")
        );
        assert_eq!(framing(b"HTTX/1.1 200 OK\r\n\r\n", false), Err("error"));
        let mut b = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"[..]);
        assert!(matches!(
            parse_head(&mut b, false, true),
            Ok(Some(Parsed::Interim))
        ));
        assert_eq!(&b[..], b"HTTP/1.1 200 OK\r\n");
    }
}
