//! The vocabulary shared by the model, its validation and the merge: layer ids, origins,
//! endpoints, sourced values, the built-in defaults and the readiness policy's file form. A leaf:
//! it imports nothing of the model, so the modules that use it do not import each other.

use crate::schema::ReadinessDoc;
use microstax_table::Readiness;
use std::fmt;
use std::sync::Arc;

/// Index of a layer in [`Config::layers`](crate::Config::layers); the org baseline is always 0.
pub type LayerIdx = usize;

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The layer label, e.g. `baseline`, `team/payments-team`, `branch/feature-a`; `default` for
    /// built-in defaults.
    pub layer: Arc<str>,
    /// The file that set it.
    pub file: Arc<str>,
    /// The line that set it (0 for built-in defaults).
    pub line: u32,
}

impl Origin {
    pub(crate) fn builtin() -> Self {
        Origin {
            layer: Arc::from("default"),
            file: Arc::from("built-in"),
            line: 0,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{} ({})", self.layer, self.file)
        } else {
            write!(f, "{} ({}:{})", self.layer, self.file, self.line)
        }
    }
}

/// An upstream endpoint, normalised to `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint(pub Arc<str>);

impl Endpoint {
    /// Parse `host:port` or `http://host:port`.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let rest = if let Some(r) = s.strip_prefix("http://") {
            r
        } else if s.starts_with("https://") {
            return Err(
                "https upstreams are not supported yet (TLS to upstreams is planned)".into(),
            );
        } else if s.contains("://") {
            return Err("only http:// endpoints are supported".into());
        } else {
            s
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        // a path cannot be honoured (requests keep their own) and must not be dropped silently
        if rest.contains(['/', '?', '#']) {
            return Err(format!(
                "`{s}` has a path: an endpoint is host:port or http://host:port, and requests keep their own path"
            ));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no port: write host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{s}` has an invalid port"))?;
        if port == 0 {
            return Err(format!("`{s}` has port 0"));
        }
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        };
        if !host_ok {
            return Err(format!("`{s}` has an invalid host"));
        }
        Ok(Endpoint(Arc::from(
            format!("{host}:{port}").to_ascii_lowercase(),
        )))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Fill an instance address template. `branch` has `/` replaced by `-` (a host label).
pub fn instance_address(template: &str, service: &str, branch: &str, instance: &str) -> String {
    template
        .replace("{service}", service)
        .replace("{branch}", &branch.replace('/', "-"))
        .replace("{instance}", instance)
}

/// Built-in connect timeout when no layer sets one. Well under Linux's first SYN retransmit
/// (1 s): a SYN dropped by a full listen backlog fails fast and is retried (nothing was sent)
/// instead of every request of a burst waiting the full second and failing at it; and far
/// above a connect's time on loopback or in a cluster (well under 10 ms).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 250;
/// Built-in response-header timeout when no layer sets one.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Built-in limit of connections open to one upstream endpoint (Envoy's default is 1024 per
/// cluster; one endpoint of a dev or branch instance rarely serves more than a few hundred).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// Built-in bound of the queue of requests waiting for a connection to one endpoint.
pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;
/// Built-in hold time of the `hold` readiness policy.
pub const DEFAULT_HOLD_MS: u64 = 1_000;

/// A value with the place that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Who set it.
    pub origin: Origin,
}

/// Convert the file form of a readiness policy.
pub fn readiness_from_doc(d: &ReadinessDoc) -> Result<Readiness, String> {
    match d.policy.as_str() {
        "hold" => Ok(Readiness::Hold {
            ms: d.hold_ms.unwrap_or(DEFAULT_HOLD_MS),
        }),
        "fallback" if d.hold_ms.is_none() => Ok(Readiness::Fallback),
        "fail" if d.hold_ms.is_none() => Ok(Readiness::Fail),
        "fallback" | "fail" => Err("hold_ms applies to the `hold` policy only".into()),
        other => Err(format!(
            "unknown readiness policy `{other}`: use hold, fallback or fail"
        )),
    }
}
