//! The body type sent upstream (a leaf module: the pool, the client and the request path all
//! name it, and it names none of them).

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

/// Body sent upstream: the client's streamed body, or nothing (prewarm probes).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;
