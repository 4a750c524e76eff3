//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 7.6.1, including
//! headers named by `Connection`), `X-Forwarded-For`/`-Proto`, `Via`, and the branch context.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::Version;

/// Static hop-by-hop headers, removed in both directions.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Remove hop-by-hop headers. `keep_upgrade` keeps `Connection: upgrade` and `Upgrade` for a
/// protocol upgrade (WebSocket) that is tunnelled through.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // one pass over the names finds what is present: most messages carry no hop-by-hop header
    // (or only `Connection`), and a lookup per listed name would hash every one of them
    let mut seen = 0u8;
    let mut upgrade = false;
    for name in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == name) {
            seen |= 1 << i;
        } else if name == header::UPGRADE {
            upgrade = true;
        }
    }
    if seen & 1 != 0 {
        remove_connection_named(h);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if seen & (1 << i) != 0 {
            h.remove(name);
        }
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        h.remove(header::UPGRADE);
    }
}

/// Remove the headers that `Connection` names (they are hop-by-hop too).
fn remove_connection_named(h: &mut HeaderMap) {
    let mut named: [Option<HeaderName>; 8] = Default::default();
    let mut n = 0;
    for v in h.get_all(header::CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let t = token.trim_ascii();
            if t.is_empty()
                || t.eq_ignore_ascii_case(b"upgrade")
                || t.eq_ignore_ascii_case(b"close")
                || t.eq_ignore_ascii_case(b"keep-alive")
            {
                continue;
            }
            if let (Ok(name), true) = (HeaderName::from_bytes(t), n < named.len()) {
                named[n] = Some(name);
                n += 1;
            }
        }
    }
    for name in named.iter().flatten() {
        h.remove(name);
    }
}

/// Whether a request asks for a protocol upgrade (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
pub fn wants_upgrade(h: &HeaderMap, version: Version) -> bool {
    version == Version::HTTP_11
        && h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// `Via` value for a request of `version`.
pub fn via(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_2 => "2 microstax",
        Version::HTTP_10 => "1.0 microstax",
        _ => "1.1 microstax",
    })
}

/// Append the client address to `X-Forwarded-For`. `peer` is the prebuilt value of this
/// connection's client address (built once per connection).
pub fn append_forwarded_for(h: &mut HeaderMap, peer: &HeaderValue) {
    const NAME: HeaderName = HeaderName::from_static("x-forwarded-for");
    match h.entry(NAME) {
        Entry::Vacant(e) => {
            e.insert(peer.clone());
        }
        Entry::Occupied(mut e) => {
            let prev = e.get();
            let mut v = Vec::with_capacity(prev.len() + peer.len() + 2);
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                e.insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert!(h.get(header::TE).is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h.get("x-keep").unwrap(), "1");
    }

    #[test]
    fn strips_every_listed_header_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        for name in &HOP_BY_HOP {
            h.append(name, HeaderValue::from_static("x"));
        }
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-a, X-B"),
        );
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-keep").unwrap(), "1");
        // nothing hop-by-hop: nothing changes
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn keeps_upgrade_when_tunnelling() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h, Version::HTTP_11));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let peer = HeaderValue::from_static("127.0.0.1");
        append_forwarded_for(&mut h, &peer);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1");
        append_forwarded_for(&mut h, &HeaderValue::from_static("10.0.0.1"));
        assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1, 10.0.0.1");
    }
}
