//! How requests on one route are forwarded: timeouts, header rules, the readiness policy and
//! the upstream protocol.
//! Values are already merged along the lineage by the compiler.

use http::{HeaderName, HeaderValue};
use std::fmt;
use std::sync::Arc;
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

/// The protocol spoken to a route's upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// gRPC requests (`content-type: application/grpc*`) over HTTP/2 with prior knowledge,
    /// everything else over HTTP/1.1: a gRPC server speaks only HTTP/2, and a plain HTTP
    /// server most often only HTTP/1.1.
    #[default]
    Auto,
    /// Every request over HTTP/1.1.
    Http1,
    /// Every request over HTTP/2 with prior knowledge (h2c), multiplexed.
    Http2,
}

impl UpstreamProtocol {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Auto => "auto",
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
        }
    }

    /// Parse a config file name.
    pub fn parse(s: &str) -> Option<UpstreamProtocol> {
        match s {
            "auto" => Some(UpstreamProtocol::Auto),
            "http1" => Some(UpstreamProtocol::Http1),
            "http2" => Some(UpstreamProtocol::Http2),
            _ => None,
        }
    }
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    /// Protocol spoken to the upstreams.
    pub protocol: UpstreamProtocol,
    /// Most HTTP/1.1 connections open to one of the route's upstreams (all workers together);
    /// a request finding them all busy waits in the pending queue.
    pub max_connections: u32,
    /// Most requests waiting for a connection to one upstream; past it a request gets a fast
    /// `503` naming the limit (a circuit breaker: never an unbounded queue).
    pub max_pending: u32,
}

/// TLS to a route's upstreams (`policy.upstream_tls`). Plain data: the CA bundle is read when the
/// config is compiled, and the proxy builds its TLS client from it once per upstream of a table.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// The CA bundle file (for messages).
    pub ca_file: Arc<str>,
    /// Its PEM contents when the table was compiled (empty: it could not be read then).
    pub ca_pem: Arc<[u8]>,
    /// Name sent in SNI and checked against the upstream's certificate; `None`: the
    /// endpoint's host.
    pub server_name: Option<Arc<str>>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // the bundle's bytes say nothing a reader of a table dump needs
        f.debug_struct("UpstreamTls")
            .field("ca_file", &self.ca_file)
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("server_name", &self.server_name)
            .finish()
    }
}
