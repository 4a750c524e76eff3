//! What the proxy sends a client: the body type of every response, and the short plain-text
//! replies the proxy makes itself (routing failures, refused requests, upstream failures).

use crate::pool::PooledBody;
use crate::router::Snapshot;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

/// Body sent to the client: the upstream's streamed body, or a local reply.
pub type ResponseBody = Either<PooledBody, Full<Bytes>>;

// built at compile time: a name given as `&str` would be parsed on every insert
pub(crate) const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-microstax-route");

/// The methods a `405` names: everything is forwarded except CONNECT.
const ALLOW: HeaderValue =
    HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE");

/// A reply the proxy makes itself.
pub(crate) struct LocalReply {
    pub(crate) status: StatusCode,
    pub(crate) reason: String,
    /// Send `Retry-After: 1`: the condition is expected to pass soon (an upstream starting).
    pub(crate) retry_after: bool,
}

impl LocalReply {
    pub(crate) fn new(status: StatusCode, reason: impl Into<String>) -> LocalReply {
        LocalReply {
            status,
            reason: reason.into(),
            retry_after: false,
        }
    }

    /// `503` with a reason and `Retry-After: 1`: the upstream is starting or not ready yet.
    pub(crate) fn starting(reason: impl Into<String>) -> LocalReply {
        LocalReply {
            retry_after: true,
            ..LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    }

    /// `400` with a reason.
    pub(crate) fn bad_request(reason: impl Into<String>) -> LocalReply {
        LocalReply::new(StatusCode::BAD_REQUEST, reason)
    }
}

/// The response for `reply`, with the debug header when the table asks for it.
pub(crate) fn local(snap: &Snapshot, reply: LocalReply) -> Response<ResponseBody> {
    let body = format!("microstax: {}\n", reply.reason);
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if reply.status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, ALLOW);
    }
    if reply.retry_after {
        // a second: about the time a small instance takes to start, and the shortest value
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if snap.table.settings.debug_header {
        if let Ok(v) = HeaderValue::from_str(&format!("gen={}; local-reply", snap.table.generation))
        {
            h.insert(ROUTE_HEADER, v);
        }
    }
    if reply.status.is_server_error() {
        // for the access log and the process log (never sent)
        resp.extensions_mut()
            .insert(crate::access_log::LocalReason(reply.reason));
    }
    resp
}

/// Replace the reason of a local 5xx reply by its status's generic text: reasons name upstream
/// addresses, which are not for untrusted clients (the debug header keeps branch and service).
pub(crate) fn redact(resp: &mut Response<ResponseBody>) {
    let status = resp.status();
    if !status.is_server_error() || !matches!(resp.body(), Either::Right(_)) {
        return;
    }
    let text = status.canonical_reason().unwrap_or("error");
    let body = format!("microstax: {}\n", text.to_ascii_lowercase());
    *resp.body_mut() = Either::Right(Full::new(Bytes::from(body)));
}
