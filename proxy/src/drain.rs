//! Graceful drain, shared by a listener's connections: once [`Drain::start`] is called (the
//! first SIGTERM), every HTTP/1 response carries `Connection: close`, so clients and load
//! balancers move to other instances while this one still accepts for its grace period; when
//! the accept loop stops, HTTP/2 connections get GOAWAY and in-flight requests finish up to the
//! drain timeout. [`DrainReport`] says how many connections the timeout cut. One atomic load
//! per response.

use http::header::{HeaderValue, CONNECTION};
use http::{Response, StatusCode, Version};
use std::sync::atomic::{AtomicBool, Ordering};

/// The drain flag of a set of listeners.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
}

impl Drain {
    /// Begin draining: responses from now on ask HTTP/1 clients to close.
    pub fn start(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Mark `resp` (to a request of `version`) to close its connection when draining.
    pub(crate) fn mark<B>(&self, version: Version, resp: &mut Response<B>) {
        if version < Version::HTTP_2
            && self.is_draining()
            && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open (busy) when the drain timeout passed, closed unfinished.
    pub cut: usize,
}

impl DrainReport {
    /// Add another listener's report.
    pub fn merge(self, other: DrainReport) -> DrainReport {
        DrainReport {
            cut: self.cut + other.cut,
        }
    }
}
