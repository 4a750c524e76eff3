//! How requests on one route are forwarded: timeouts, header rules and the readiness policy.
//! Values are already merged along the lineage by the compiler.

use http::{HeaderName, HeaderValue};
use std::fmt;
use std::time::Duration;

/// What the proxy does while a branch-local upstream is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Readiness {
    /// Wait up to `ms` for it, then answer 503.
    Hold {
        /// Longest wait in milliseconds.
        ms: u64,
    },
    /// Use the parent's route and mark the response `x-microstax-fallback: not-ready`.
    Fallback,
    /// Answer 503 at once.
    Fail,
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readiness::Hold { ms } => write!(f, "hold {ms}ms"),
            Readiness::Fallback => f.write_str("fallback"),
            Readiness::Fail => f.write_str("fail"),
        }
    }
}

/// How requests on a route are forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoutePolicy {
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive.
    pub request_timeout: Duration,
    /// Headers set on the upstream request.
    pub set_headers: Box<[(HeaderName, HeaderValue)]>,
    /// Headers removed from the upstream request.
    pub remove_headers: Box<[HeaderName]>,
    /// Behaviour while the upstream is not ready.
    pub readiness: Readiness,
}
