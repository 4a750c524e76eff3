//! etcd as the shared state of many proxies. The active planner publishes every layer of its
//! config under a key prefix ([`layout`]) in transactions guarded by its leadership and by the
//! revision it last wrote ([`publisher`]); one planner is active at a time through a leased
//! election key, and standbys take over when its lease expires. Proxies follow that prefix
//! ([`follower`]): they load it at one revision, are ready only after that first complete load,
//! watch from that revision and apply each change incrementally through their own control
//! plane; while etcd is unreachable they keep serving the last good table and count the seconds
//! since their last successful sync, and on a compacted revision they list again and converge.
//!
//! The client speaks etcd's JSON gateway ([`client`]) with the hyper client the workspace
//! already has: no protobuf compiler at build time, no gRPC stack, and etcd 3.4 and later
//! serve it on the client port.

pub mod client;
pub mod follower;
pub mod layout;
pub mod publisher;

pub use client::Client;
pub use follower::{follow, FollowOptions, SyncStatus};
pub use publisher::{NotifySink, PublishOptions, Publisher};

/// Why an etcd operation failed. `Unreachable` is retried (the store may come back);
/// the others describe a request the store refused or an answer that could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// The store did not answer (refused, reset, timed out): retry later.
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// The store answered with an error.
    #[error("etcd refused {path}: {message}")]
    Server {
        /// The gateway path.
        path: String,
        /// The server's message.
        message: String,
    },
    /// The answer could not be read.
    #[error("unexpected answer from etcd: {0}")]
    Protocol(String),
    /// The request could not be built.
    #[error("bad etcd request: {0}")]
    Request(String),
    /// The `etcd://` address is malformed.
    #[error("bad etcd address `{0}`: expected etcd://HOST:PORT/PREFIX")]
    Address(String),
}

impl EtcdError {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EtcdError::Unreachable(_))
    }
}

/// An `etcd://HOST:PORT/PREFIX` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `HOST:PORT` of the client port.
    pub host_port: String,
    /// The key prefix, starting with `/` and without a trailing `/`.
    pub prefix: String,
}

impl std::str::FromStr for Endpoint {
    type Err = EtcdError;

    fn from_str(s: &str) -> Result<Endpoint, EtcdError> {
        let bad = || EtcdError::Address(s.to_string());
        let rest = s.strip_prefix("etcd://").ok_or_else(bad)?;
        let (host_port, prefix) = rest.split_once('/').unwrap_or((rest, "microstax"));
        let prefix = prefix.trim_matches('/');
        if host_port.is_empty() || !host_port.contains(':') || prefix.is_empty() {
            return Err(bad());
        }
        Ok(Endpoint {
            host_port: host_port.to_string(),
            prefix: format!("/{prefix}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gives_the_client_port_and_the_prefix() {
        let e: Endpoint = "etcd://127.0.0.1:2379/team/a/".parse().expect("valid");
        assert_eq!(e.host_port, "127.0.0.1:2379");
        assert_eq!(e.prefix, "/team/a");
        assert!("http://x:1/p".parse::<Endpoint>().is_err());
        assert!("etcd://nohost/p".parse::<Endpoint>().is_err());
    }
}
