//! Branch-context resolution. Fixed precedence: (1) the branch header, (2) the W3C `baggage`
//! member, (3) the cookie, (4) a host pattern. A source whose value is malformed (not a valid
//! branch name, bad percent-encoding) is ignored and the next source is consulted. Nothing here
//! allocates: names are copied into a fixed 63-byte buffer.

use crate::{baggage, cookie};
use http::header::{HeaderMap, HeaderName, COOKIE};
use microstax_table::names::is_branch_name;
use microstax_table::{HostPattern, Settings};

/// Longest branch name (see `microstax_table::names`).
const MAX_NAME: usize = 63;

/// The W3C `baggage` header.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// A valid branch name held inline.
#[derive(Clone, Copy)]
pub struct BranchName {
    len: u8,
    buf: [u8; MAX_NAME],
}

impl BranchName {
    /// Copy `b` if it is a valid branch name.
    pub fn from_bytes(b: &[u8]) -> Option<BranchName> {
        if b.is_empty() || b.len() > MAX_NAME {
            return None;
        }
        let s = std::str::from_utf8(b).ok()?;
        if !is_branch_name(s) {
            return None;
        }
        let mut buf = [0u8; MAX_NAME];
        buf[..b.len()].copy_from_slice(b);
        Some(BranchName {
            len: b.len() as u8,
            buf,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // only valid ASCII is ever stored
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

impl std::fmt::Debug for BranchName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for BranchName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// Where the branch context came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextSource {
    /// The branch header.
    Header,
    /// The baggage member.
    Baggage,
    /// The cookie.
    Cookie,
    /// A host pattern.
    Host,
    /// A signed branch token (from an untrusted client on an `edge` listener: `crate::trust`).
    Token,
}

impl ContextSource {
    /// Lower-case name (used in the debug header).
    pub fn as_str(self) -> &'static str {
        match self {
            ContextSource::Header => "header",
            ContextSource::Baggage => "baggage",
            ContextSource::Cookie => "cookie",
            ContextSource::Host => "host",
            ContextSource::Token => "token",
        }
    }
}

/// Context settings prepared for the request path.
#[derive(Debug, Clone)]
pub struct ContextRules {
    /// The branch header.
    pub header: HeaderName,
    /// The baggage member key.
    pub baggage_key: Box<str>,
    /// The cookie name.
    pub cookie: Box<str>,
    /// Host patterns.
    pub patterns: Box<[HostPattern]>,
}

impl ContextRules {
    /// Prepare the rules of a table's settings. The header name was validated with the config.
    pub fn new(settings: &Settings) -> ContextRules {
        let c = &settings.context;
        ContextRules {
            header: HeaderName::from_bytes(c.header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-microstax-branch")),
            baggage_key: c.baggage_key.as_str().into(),
            cookie: c.cookie.as_str().into(),
            patterns: c.host_patterns.clone().into_boxed_slice(),
        }
    }

    /// Resolve the branch context of a request. `host` is the Host header or URI authority.
    pub fn extract(
        &self,
        headers: &HeaderMap,
        host: Option<&str>,
    ) -> Option<(BranchName, ContextSource)> {
        if let Some(v) = headers.get(&self.header) {
            if let Some(n) = BranchName::from_bytes(v.as_bytes().trim_ascii()) {
                return Some((n, ContextSource::Header));
            }
        }
        for v in headers.get_all(BAGGAGE) {
            if let Some(raw) = baggage::find_raw(v.as_bytes(), &self.baggage_key) {
                let mut buf = [0u8; MAX_NAME];
                if let Some(n) = baggage::percent_decode(raw, &mut buf)
                    .and_then(|n| BranchName::from_bytes(&buf[..n]))
                {
                    return Some((n, ContextSource::Baggage));
                }
            }
        }
        for v in headers.get_all(COOKIE) {
            if let Some(n) =
                cookie::find(v.as_bytes(), &self.cookie).and_then(BranchName::from_bytes)
            {
                return Some((n, ContextSource::Cookie));
            }
        }
        if !self.patterns.is_empty() {
            if let Some(n) = host.and_then(|h| self.branch_in_host(h)) {
                return Some((n, ContextSource::Host));
            }
        }
        None
    }

    fn branch_in_host(&self, host: &str) -> Option<BranchName> {
        let h = host.as_bytes();
        let h = match h.iter().rposition(|&b| b == b':') {
            Some(i) if h.first() != Some(&b'[') => &h[..i],
            _ => h,
        };
        if h.len() > 256 {
            return None;
        }
        let mut buf = [0u8; 256];
        let lower = &mut buf[..h.len()];
        for (o, b) in lower.iter_mut().zip(h) {
            *o = b.to_ascii_lowercase();
        }
        for p in self.patterns.iter() {
            let (pre, suf) = (p.prefix.as_bytes(), p.suffix.as_bytes());
            if lower.len() > pre.len() + suf.len() && lower.starts_with(pre) && lower.ends_with(suf)
            {
                if let Some(n) = BranchName::from_bytes(&lower[pre.len()..lower.len() - suf.len()])
                {
                    return Some(n);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn rules() -> ContextRules {
        ContextRules {
            header: HeaderName::from_static("x-microstax-branch"),
            baggage_key: "microstax-branch".into(),
            cookie: "microstax-branch".into(),
            patterns: vec![HostPattern::parse("{branch}.preview.example.com").unwrap()]
                .into_boxed_slice(),
        }
    }

    fn get(h: &[(&'static str, &str)], host: Option<&str>) -> Option<(String, ContextSource)> {
        let mut m = HeaderMap::new();
        for (k, v) in h {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        rules()
            .extract(&m, host)
            .map(|(n, s)| (n.as_str().to_string(), s))
    }

    #[test]
    fn precedence_header_baggage_cookie_host() {
        let host = Some("hb.preview.example.com:443");
        let all = [
            ("x-microstax-branch", "ha"),
            ("baggage", "microstax-branch=ba"),
            ("cookie", "microstax-branch=ca"),
        ];
        assert_eq!(get(&all, host), Some(("ha".into(), ContextSource::Header)));
        assert_eq!(
            get(&all[1..], host),
            Some(("ba".into(), ContextSource::Baggage))
        );
        assert_eq!(
            get(&all[2..], host),
            Some(("ca".into(), ContextSource::Cookie))
        );
        assert_eq!(get(&[], host), Some(("hb".into(), ContextSource::Host)));
        assert_eq!(get(&[], Some("preview.example.com")), None);
        assert_eq!(
            get(&[], Some("HB.Preview.Example.com")),
            Some(("hb".into(), ContextSource::Host))
        );
    }

    #[test]
    fn malformed_source_falls_through() {
        let h = [
            ("x-microstax-branch", "Bad Name!"),
            ("baggage", "a=1, microstax-branch=alice%2Ffix"),
        ];
        assert_eq!(
            get(&h, None),
            Some(("alice/fix".into(), ContextSource::Baggage))
        );
        let h = [
            ("baggage", "microstax-branch=%zz"),
            ("cookie", "microstax-branch=\"c1\""),
        ];
        assert_eq!(get(&h, None), Some(("c1".into(), ContextSource::Cookie)));
        assert_eq!(get(&[("x-microstax-branch", "")], None), None);
    }

    #[test]
    fn several_baggage_headers() {
        let h = [("baggage", "a=1"), ("baggage", " microstax-branch = b2 ;p")];
        assert_eq!(get(&h, None), Some(("b2".into(), ContextSource::Baggage)));
    }
}
