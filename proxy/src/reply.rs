//! What the proxy sends a client: the body type of every response, and the short plain-text
//! replies the proxy makes itself (routing failures, refused requests, upstream failures). A
//! gRPC call gets its reply as gRPC instead: trailers-only, `200` with `grpc-status` and
//! `grpc-message` (`crate::grpc`), since a gRPC client cannot read an HTTP error body.

use crate::grpc::{self, Code};
use crate::pool::PooledBody;
use crate::router::Snapshot;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

/// Body sent to the client: the upstream's streamed body, or a local reply
/// (`PooledBody::full`).
pub type ResponseBody = PooledBody;

/// Give `resp` all its fields as a map (for hyper's server and the access log).
pub(crate) fn materialize(resp: &mut http::Response<ResponseBody>) {
    if let Some(raw) = resp.body_mut().take_raw() {
        raw.materialize(resp.headers_mut());
    }
}

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
    /// The gRPC status of this reply, when not the one its HTTP status maps to.
    pub(crate) grpc: Option<Code>,
}

impl LocalReply {
    pub(crate) fn new(status: StatusCode, reason: impl Into<String>) -> LocalReply {
        LocalReply {
            status,
            reason: reason.into(),
            retry_after: false,
            grpc: None,
        }
    }

    /// The same reply with gRPC status `code` for gRPC calls.
    pub(crate) fn with_grpc(self, code: Code) -> LocalReply {
        LocalReply {
            grpc: Some(code),
            ..self
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

/// The response for `reply` (in gRPC form to a gRPC call), with the debug header when the
/// table asks for it.
pub(crate) fn local(snap: &Snapshot, reply: LocalReply, is_grpc: bool) -> Response<ResponseBody> {
    let failure = reply.status.is_server_error();
    let mut resp = if is_grpc {
        grpc_reply(snap, &reply)
    } else {
        http_reply(snap, &reply)
    };
    if failure {
        // for the access log, the process log and `redact` (never sent)
        resp.extensions_mut()
            .insert(crate::access_log::LocalReason(reply.reason, reply.status));
    }
    resp
}

/// The plain-text reply.
fn http_reply(snap: &Snapshot, reply: &LocalReply) -> Response<ResponseBody> {
    let body = format!("microstax: {}\n", reply.reason);
    let mut resp = Response::new(PooledBody::full(body));
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
    debug_header(snap, h);
    resp
}

/// A trailers-only gRPC response: `200`, `content-type: application/grpc`, `grpc-status`
/// and `grpc-message` in the header block, and no body (hyper ends the stream with it).
fn grpc_reply(snap: &Snapshot, reply: &LocalReply) -> Response<ResponseBody> {
    let code = reply.grpc.unwrap_or(Code::for_status(reply.status));
    let mut resp = Response::new(PooledBody::full(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(grpc::GRPC_STATUS, code.value());
    h.insert(
        grpc::GRPC_MESSAGE,
        grpc::message(&format!("microstax: {}", reply.reason)),
    );
    debug_header(snap, h);
    resp
}

fn debug_header(snap: &Snapshot, h: &mut http::HeaderMap) {
    if snap.table.settings.debug_header {
        if let Ok(v) = HeaderValue::from_str(&format!("gen={}; local-reply", snap.table.generation))
        {
            h.insert(ROUTE_HEADER, v);
        }
    }
}

/// Replace the reason of a local 5xx reply (its body, or a gRPC reply's `grpc-message`) by its
/// status's generic text: reasons name upstream addresses, which are not for untrusted clients
/// (the debug header keeps branch and service).
pub(crate) fn redact(resp: &mut Response<ResponseBody>) {
    let Some(status) = resp
        .extensions()
        .get::<crate::access_log::LocalReason>()
        .map(|r| r.1)
    else {
        return;
    };
    let text = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    if resp.headers().contains_key(grpc::GRPC_STATUS) {
        resp.headers_mut().insert(
            grpc::GRPC_MESSAGE,
            grpc::message(&format!("microstax: {text}")),
        );
    } else {
        *resp.body_mut() = PooledBody::full(format!("microstax: {text}\n"));
    }
}
