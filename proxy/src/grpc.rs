//! What the proxy knows of gRPC: telling a gRPC request (its `content-type`), reading its
//! `grpc-timeout` as the request's deadline, and the status codes a reply the proxy makes
//! itself carries (trailers-only form: `grpc-status` and `grpc-message` in the one header
//! block of an HTTP `200`, as a gRPC client reads them; an HTTP error body it cannot read).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use std::time::Duration;

pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// gRPC status codes the proxy answers with (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// The request is malformed in a way no upstream could serve.
    InvalidArgument = 3,
    /// The deadline (`grpc-timeout`, or the route's request timeout) passed.
    DeadlineExceeded = 4,
    /// The branch named does not exist (strict mode).
    NotFound = 5,
    /// A limit was reached (request head too large, hold queue full).
    ResourceExhausted = 8,
    /// No service serves this method.
    Unimplemented = 12,
    /// The table is broken.
    Internal = 13,
    /// No upstream could take the call (refused, not ready, circuit open): safe to retry.
    Unavailable = 14,
}

impl Code {
    /// The `grpc-status` value.
    pub fn value(self) -> HeaderValue {
        HeaderValue::from(self as u8 as u16)
    }

    /// The code matching an HTTP status the proxy would otherwise answer with, following
    /// gRPC's HTTP-to-gRPC mapping (doc/http-grpc-status-mapping.md) except where the proxy
    /// knows better (a timeout is `DEADLINE_EXCEEDED`, a missing route `UNIMPLEMENTED`).
    pub fn for_status(status: StatusCode) -> Code {
        match status.as_u16() {
            400 => Code::InvalidArgument,
            404 | 405 => Code::Unimplemented,
            408 | 504 => Code::DeadlineExceeded,
            413 | 429 | 431 => Code::ResourceExhausted,
            502 | 503 => Code::Unavailable,
            _ => Code::Internal,
        }
    }
}

/// Whether a request is a gRPC call: `content-type: application/grpc` or `application/grpc+…`
/// (`application/grpc-web` is not: it is served over HTTP/1.1 too and reads errors as HTTP).
#[inline]
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The call's `grpc-timeout` (`1*8DIGIT unit`, unit one of `H M S m u n`), if present and
/// well formed.
pub fn timeout(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Percent-encode a `grpc-message` (the spec's encoding: bytes outside printable ASCII, and `%`).
pub fn message(reason: &str) -> HeaderValue {
    let mut out = String::with_capacity(reason.len());
    for b in reason.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static("microstax"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn tells_grpc_by_content_type() {
        assert!(is_grpc(&headers("content-type", "application/grpc")));
        assert!(is_grpc(&headers("content-type", "application/grpc+proto")));
        assert!(is_grpc(&headers("content-type", "Application/GRPC;x=1")));
        assert!(!is_grpc(&headers("content-type", "application/grpc-web")));
        assert!(!is_grpc(&headers("content-type", "application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn reads_grpc_timeout() {
        let t = |v| timeout(&headers("grpc-timeout", v));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(t("123456789S"), None);
        assert_eq!(t("m"), None);
        assert_eq!(t("10x"), None);
        assert_eq!(t("-1S"), None);
    }

    #[test]
    fn encodes_messages() {
        assert_eq!(message("a 100% é"), "a 100%25 %C3%A9");
    }
}
