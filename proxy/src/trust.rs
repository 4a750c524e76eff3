//! Who may select a branch. A listener's [`TrustPolicy`] is `trust-all` (a sidecar behind a
//! trusted mesh: every carrier is honoured) or `edge`: a carrier (header, baggage, cookie,
//! host) is honoured only from a peer in a trusted CIDR (decided once per connection); any
//! other client selects a branch only with a valid signed token (`crate::token`), shown in the
//! `x-microstax-token` header, the `microstax-token` query parameter or cookie. Everything an
//! untrusted client sent as a carrier is removed before forwarding (so no hop behind reads
//! it), and without a valid token the request goes to the baseline: a bad or expired token is
//! counted, never answered with an error. A token shown in the header or the query is
//! returned as a host-only cookie, so a preview link keeps working in a browser.
//!
//! The trusted path costs one boolean test per request; an untrusted request does a few
//! lookups, and allocates only when it carried something to remove or a token to set.

use crate::context::{BranchName, ContextRules, ContextSource};
use crate::cookie;
use crate::token::{self, TokenError, TokenKeys};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

/// The token header.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-microstax-token");
/// The token query parameter and cookie name.
pub const TOKEN_NAME: &str = "microstax-token";

/// How a listener treats branch carriers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrustMode {
    /// Every carrier is honoured.
    #[default]
    TrustAll,
    /// Carriers only from trusted peers; otherwise a signed token or the baseline.
    Edge,
}

impl FromStr for TrustMode {
    type Err = TrustError;
    fn from_str(s: &str) -> Result<TrustMode, TrustError> {
        match s {
            "trust-all" => Ok(TrustMode::TrustAll),
            "edge" => Ok(TrustMode::Edge),
            other => Err(TrustError::Mode(other.to_string())),
        }
    }
}

/// Why a trust setting is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// Not `trust-all` or `edge`.
    #[error("unknown trust mode `{0}` (expected trust-all or edge)")]
    Mode(String),
    /// Not `address/prefix` (or a bare address).
    #[error("invalid CIDR `{0}`")]
    Cidr(String),
    /// The audience cannot be carried in a token.
    #[error(
        "token audience longer than {} bytes or holding a newline",
        token::MAX_AUDIENCE_LEN
    )]
    Audience,
}

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = TrustError;
    fn from_str(s: &str) -> Result<Cidr, TrustError> {
        let bad = || TrustError::Cidr(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in this block (an IPv4-mapped IPv6 peer counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Counters of the trust decisions (prebuilt children: no label lookup per request).
#[derive(Clone, Debug)]
pub struct TrustMetrics {
    valid: IntCounter,
    refused: [IntCounter; 5],
    /// Requests from untrusted peers whose carriers were removed.
    pub stripped: IntCounter,
}

const REFUSALS: [TokenError; 5] = [
    TokenError::Malformed,
    TokenError::BadSignature,
    TokenError::Expired,
    TokenError::WrongAudience,
    TokenError::BadBranch,
];

impl TrustMetrics {
    /// Families registered on `registry`.
    pub fn new(registry: &Registry) -> Result<TrustMetrics, prometheus::Error> {
        let m = TrustMetrics::unregistered()?;
        registry.register(Box::new(m.family.clone()))?;
        registry.register(Box::new(m.metrics.stripped.clone()))?;
        Ok(m.metrics)
    }

    fn unregistered() -> Result<Families, prometheus::Error> {
        let family = IntCounterVec::new(
            Opts::new(
                "microstax_branch_tokens_total",
                "Branch tokens shown by untrusted clients, by outcome",
            ),
            &["outcome"],
        )?;
        let stripped = IntCounter::new(
            "microstax_untrusted_carriers_stripped_total",
            "Requests from untrusted peers whose branch carriers were removed",
        )?;
        let refused = REFUSALS.map(|e| family.with_label_values(&[e.as_str()]));
        Ok(Families {
            metrics: TrustMetrics {
                valid: family.with_label_values(&["valid"]),
                refused,
                stripped,
            },
            family,
        })
    }

    /// Tokens accepted.
    pub fn valid(&self) -> u64 {
        self.valid.get()
    }

    /// Tokens refused, every reason together.
    pub fn refused(&self) -> u64 {
        self.refused.iter().map(IntCounter::get).sum()
    }

    fn refuse(&self, e: TokenError) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == e) {
            if let Some(c) = self.refused.get(i) {
                c.inc();
            }
        }
    }
}

struct Families {
    metrics: TrustMetrics,
    family: IntCounterVec,
}

impl Default for TrustMetrics {
    /// Counters on no registry (tests, and listeners whose counters nobody reads).
    fn default() -> Self {
        match TrustMetrics::unregistered() {
            Ok(m) => m.metrics,
            Err(_) => unreachable_metrics(),
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_metrics() -> ! {
    panic!("the static options of the trust metrics are valid")
}

/// A listener's trust policy.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    /// trust-all or edge.
    pub mode: TrustMode,
    /// Peers whose carriers are honoured on an edge listener.
    pub trusted: Vec<Cidr>,
    /// Keys accepted for branch tokens (none: tokens are refused).
    pub keys: Option<TokenKeys>,
    /// The audience tokens must name (e.g. the public host of the previews).
    pub audience: Box<str>,
    /// Mark the preview cookie `Secure` (the listener is reached over HTTPS).
    pub secure_cookie: bool,
    /// Counters.
    pub metrics: TrustMetrics,
    /// Keys swapped in since (`reload_keys`, e.g. on SIGHUP); they replace `keys`.
    pub reloaded: Arc<ArcSwapOption<TokenKeys>>,
}

/// What an untrusted request's token gave.
pub(crate) struct Granted {
    /// The branch the token grants.
    pub(crate) branch: Option<(BranchName, ContextSource)>,
    /// The cookie to set on the response (the token came in the header or the query).
    pub(crate) set_cookie: Option<HeaderValue>,
}

impl TrustPolicy {
    /// Check the settings that can be wrong.
    pub fn validate(&self) -> Result<(), TrustError> {
        if self.audience.len() > token::MAX_AUDIENCE_LEN || self.audience.contains('\n') {
            return Err(TrustError::Audience);
        }
        Ok(())
    }

    /// Accept `keys` from now on instead of the keys the policy started with (a rotation
    /// without a restart). Requests in flight finish with the keys they loaded.
    pub fn reload_keys(&self, keys: TokenKeys) {
        self.reloaded.store(Some(Arc::new(keys)));
    }

    /// Whether the carriers of a connection from `ip` are honoured (once per connection).
    pub fn trusts_peer(&self, ip: IpAddr) -> bool {
        match self.mode {
            TrustMode::TrustAll => true,
            TrustMode::Edge => self.trusted.iter().any(|c| c.contains(ip)),
        }
    }

    /// The branch an untrusted request's token grants: the header first, then the query,
    /// then the cookie (the first token found is the one checked).
    pub(crate) fn grant(&self, headers: &HeaderMap, uri: &Uri) -> Granted {
        let none = Granted {
            branch: None,
            set_cookie: None,
        };
        let (tok, presented) = if let Some(v) = headers.get(&TOKEN_HEADER) {
            (v.as_bytes(), true)
        } else if let Some(v) = uri.query().and_then(query_param) {
            (v.as_bytes(), true)
        } else if let Some(v) = headers
            .get_all(header::COOKIE)
            .iter()
            .find_map(|v| cookie::find(v.as_bytes(), TOKEN_NAME))
        {
            (v, false)
        } else {
            return none;
        };
        let reloaded = self.reloaded.load();
        let Some(keys) = reloaded.as_deref().or(self.keys.as_ref()) else {
            self.metrics.refuse(TokenError::BadSignature);
            return none;
        };
        let now = token::unix_now();
        match keys.verify(tok.trim_ascii(), &self.audience, now) {
            Ok((branch, expires)) => {
                self.metrics.valid.inc();
                let set_cookie = presented
                    .then(|| self.cookie(tok.trim_ascii(), expires.saturating_sub(now)))
                    .flatten();
                Granted {
                    branch: Some((branch, ContextSource::Token)),
                    set_cookie,
                }
            }
            Err(e) => {
                self.metrics.refuse(e);
                none
            }
        }
    }

    fn cookie(&self, tok: &[u8], max_age: u64) -> Option<HeaderValue> {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        let tok = std::str::from_utf8(tok).ok()?;
        let v = format!(
            "{TOKEN_NAME}={tok}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
        );
        HeaderValue::from_str(&v).ok()
    }
}

/// The value of the token query parameter, if any (as sent: tokens need no decoding).
fn query_param(q: &str) -> Option<&str> {
    q.split('&')
        .find_map(|p| p.strip_prefix(TOKEN_NAME)?.strip_prefix('='))
}

/// Remove every carrier an untrusted client sent: the branch header (and names that read as
/// it, or as the token header, once `_` is taken for `-`, as CGI-style servers do), the token
/// header, the branch and token cookies, and the token query parameter. The baggage member is
/// rewritten by context propagation.
pub(crate) fn strip_untrusted(h: &mut HeaderMap, uri: &mut Uri, rules: &ContextRules) -> bool {
    let mut stripped = h.remove(&rules.header).is_some();
    stripped |= h.remove(&TOKEN_HEADER).is_some();
    let lookalike = |n: &HeaderName| {
        let n = n.as_str().as_bytes();
        n.contains(&b'_')
            && (folds_to(n, rules.header.as_str()) || folds_to(n, TOKEN_HEADER.as_str()))
    };
    if h.keys().any(lookalike) {
        let names: Vec<HeaderName> = h.keys().filter(|n| lookalike(n)).cloned().collect();
        for n in names {
            h.remove(n);
        }
        stripped = true;
    }
    stripped |= strip_cookies(h, &rules.cookie);
    // the baggage member itself is rewritten by context propagation; here it is only counted
    stripped |= crate::baggage::has_member(
        h.get_all(crate::context::BAGGAGE)
            .iter()
            .map(|v| v.as_bytes()),
        &rules.baggage_key,
    );
    if uri.query().and_then(query_param).is_some() {
        *uri = without_token_param(uri);
        stripped = true;
    }
    stripped
}

fn folds_to(name: &[u8], target: &str) -> bool {
    name.len() == target.len()
        && name
            .iter()
            .zip(target.as_bytes())
            .all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
}

/// Remove the branch and token cookies from every `Cookie` line (a line left empty goes).
fn strip_cookies(h: &mut HeaderMap, branch_cookie: &str) -> bool {
    let names = [branch_cookie, TOKEN_NAME];
    let carries = h.get_all(header::COOKIE).iter().any(|v| {
        names
            .iter()
            .any(|n| cookie::find(v.as_bytes(), n).is_some())
    });
    if !carries {
        return false;
    }
    let kept: Vec<HeaderValue> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| {
            let rest = cookie::without(v.as_bytes(), &names);
            (!rest.is_empty())
                .then(|| HeaderValue::from_maybe_shared(Bytes::from(rest)).ok())
                .flatten()
        })
        .collect();
    h.remove(header::COOKIE);
    for v in kept {
        h.append(header::COOKIE, v);
    }
    true
}

fn without_token_param(uri: &Uri) -> Uri {
    let path = uri.path();
    let rest: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| {
            p.strip_prefix(TOKEN_NAME)
                .is_none_or(|r| !(r.is_empty() || r.starts_with('=')))
        })
        .collect();
    let pq = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn strips_every_carrier_and_lookalike() {
        let rules = ContextRules {
            header: HeaderName::from_static("x-microstax-branch"),
            baggage_key: "microstax-branch".into(),
            cookie: "microstax-branch".into(),
            patterns: Box::new([]),
        };
        let mut h = HeaderMap::new();
        h.append("x-microstax-branch", HeaderValue::from_static("a"));
        h.append("x-microstax-branch", HeaderValue::from_static("b"));
        h.append("x_microstax_branch", HeaderValue::from_static("c"));
        h.append("x_microstax-token", HeaderValue::from_static("c"));
        h.append("x-microstax-token", HeaderValue::from_static("t"));
        h.append("x-other_name", HeaderValue::from_static("kept"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; microstax-branch=dev; microstax-token=t"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("microstax-branch=x"),
        );
        let mut uri: Uri = "/p?a=1&microstax-token=abc&b=2".parse().unwrap();
        assert!(strip_untrusted(&mut h, &mut uri, &rules));
        assert_eq!(uri, "/p?a=1&b=2");
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-other_name", "cookie"], "{h:?}");
        let cookies: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1"]);
        let mut uri: Uri = "/p?microstax-token=abc".parse().unwrap();
        strip_untrusted(&mut h, &mut uri, &rules);
        assert_eq!(uri, "/p");
        let mut clean = HeaderMap::new();
        clean.append("x-a", HeaderValue::from_static("1"));
        let mut uri: Uri = "/p?microstax-tokens=1".parse().unwrap();
        assert!(!strip_untrusted(&mut clean, &mut uri, &rules));
        assert_eq!(uri, "/p?microstax-tokens=1");
    }
}
