//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 7.6.1, including
//! every header named by `Connection`, except those the proxy itself keeps or sets), the
//! framing check of responses, `X-Forwarded-For` and `Via`.

use crate::context::BAGGAGE;
use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::Version;

/// Static hop-by-hop headers, removed in both directions. `Trailer` is not one (RFC 9110 6.6.2
/// and 7.6.1): it announces the trailer fields, and hyper sends an HTTP/1.1 client only the
/// trailers it announces, so it is forwarded with the trailers it names. (This list and the
/// others of names are `static`, not `const`: a `const` array is built anew, and dropped, at
/// each use.)
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRANSFER_ENCODING,
];
/// Whether the proxy removes or sets a response field of this name, given as it came: the
/// hop-by-hop fields [`strip_response`] removes (with `Upgrade` and `Trailer`, which it keeps
/// only for a tunnel or with its trailers) and the proxy's own `x-microstax-` fields. An
/// upstream response with none of them can go to an HTTP/1.1 client as it came
/// (`crate::h1::RawFields`).
pub(crate) fn changed_on_responses(name: &[u8]) -> bool {
    // by length first: most names are compared with nothing
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    let hop = match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        18 => is(b"proxy-authenticate"),
        _ => false,
    };
    hop || (name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-microstax-"))
}

/// Field names outside the `http` crate's standard set that requests commonly carry and the
/// proxy reads or sets: parsed into these, a request's field name is a static string, not a
/// copy made for the request.
static INTERNED: [HeaderName; 7] = [
    HeaderName::from_static("x-microstax-branch"),
    BAGGAGE,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// The field name `name` (as it came, any case), without a copy when it is a standard name or
/// one of [`INTERNED`]; `None` when it is not a valid name.
pub(crate) fn field_name(name: &[u8]) -> Option<HeaderName> {
    match interned(name) {
        Some(n) => Some(n.clone()),
        None => HeaderName::from_bytes(name).ok(),
    }
}

/// The one of [`INTERNED`] that `name` is (any case), found by its length first: the lengths
/// differ, so a name is compared with one candidate at most.
fn interned(name: &[u8]) -> Option<&'static HeaderName> {
    let i = match name.len() {
        18 => 0,
        7 => 1,
        15 => 2,
        17 => 3,
        12 => 4,
        11 => 5,
        10 => 6,
        _ => return None,
    };
    INTERNED
        .get(i)
        .filter(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
}

/// The largest map kept for reuse (in entries it has room for): a request with many fields
/// does not make every later one hold its memory.
const SPARE_CAPACITY: usize = 64;
/// Most maps kept per worker thread: one per request in flight on it, up to this many (a map
/// with room for 12 fields takes about 1.4 KiB).
const SPARE_MAPS: usize = 64;

thread_local! {
    /// Emptied request maps, for the next requests' fields on this worker thread.
    static SPARE: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty map with room for `n` fields: one that [`recycle`] kept on this thread, if any, so
/// that a request's fields reuse the memory of an earlier request's.
pub(crate) fn map_with_capacity(n: usize) -> HeaderMap {
    match SPARE.with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop())) {
        Some(mut m) => {
            m.reserve(n);
            m
        }
        None => HeaderMap::with_capacity(n),
    }
}

/// Keep `map`'s memory for [`map_with_capacity`] (its fields are dropped), unless it is large
/// or this thread keeps [`SPARE_MAPS`] already.
pub(crate) fn recycle(mut map: HeaderMap) {
    if map.capacity() > SPARE_CAPACITY {
        return;
    }
    SPARE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < SPARE_MAPS {
                map.clear();
                s.push(map);
            }
        }
    });
}

/// Bits of `Connection`, `TE` and `Transfer-Encoding` in the set of hop-by-hop headers seen.
const CONNECTION_BIT: u8 = 1;
const TE_BIT: u8 = 1 << 4;
const TRANSFER_ENCODING_BIT: u8 = 1 << 5;

/// Most options one message's `Connection` headers may list (all lines together); a message
/// naming more is refused rather than searched name by name.
pub const MAX_CONNECTION_OPTIONS: usize = 64;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The names above (and others) as statics, for the fields a request borrows
/// (`crate::h1::Added`).
pub(crate) static FORWARDED_FOR_NAME: HeaderName = X_FORWARDED_FOR;
pub(crate) static FORWARDED_PROTO_NAME: HeaderName = X_FORWARDED_PROTO;
pub(crate) static VIA_NAME: HeaderName = header::VIA;
pub(crate) static BAGGAGE_NAME: HeaderName = BAGGAGE;

/// Headers a client's `Connection` may not remove: the proxy keeps them (Host, the framing,
/// the context carriers) or sets or appends to them itself (the forwarding headers). The
/// configured branch header is kept too.
static KEPT: [HeaderName; 7] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::COOKIE,
    BAGGAGE,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    header::VIA,
];

/// Why a message's headers cannot be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// `Connection` lists more than [`MAX_CONNECTION_OPTIONS`] options.
    #[error("more than {MAX_CONNECTION_OPTIONS} connection options")]
    TooManyConnectionOptions,
    /// A response is framed both by `Content-Length` and `Transfer-Encoding` (RFC 9112 6.3:
    /// a sign of response splitting; its length is unknowable).
    #[error("both content-length and transfer-encoding")]
    AmbiguousLength,
}

/// Remove a request's hop-by-hop headers (see `strip`); what `Connection` names is removed
/// unless the proxy keeps it (`KEPT`, and `branch_header`). A `TE` naming `trailers` is sent on
/// as `TE: trailers`: the proxy passes response trailers through (gRPC requires the header).
pub fn strip_request(
    h: &mut HeaderMap,
    keep_upgrade: bool,
    branch_header: &HeaderName,
) -> Result<(), HeaderError> {
    let seen = strip(h, keep_upgrade, Some(branch_header))?;
    if seen.te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    Ok(())
}

/// Remove a response's hop-by-hop headers (see `strip`). A response carrying both
/// `Content-Length` and `Transfer-Encoding` is refused.
pub fn strip_response(h: &mut HeaderMap, keep_upgrade: bool) -> Result<(), HeaderError> {
    let seen = strip(h, keep_upgrade, None)?;
    if seen.transfer_encoding && seen.content_length {
        return Err(HeaderError::AmbiguousLength);
    }
    Ok(())
}

/// What the name scan of [`strip`] found.
struct Seen {
    transfer_encoding: bool,
    content_length: bool,
    /// A `TE` header listed `trailers`.
    te_trailers: bool,
}

/// Remove hop-by-hop headers, including those `Connection` names (except the kept ones, when
/// `kept` is given: a request's). `keep_upgrade` keeps `Connection: upgrade` and `Upgrade` for
/// a protocol upgrade (WebSocket) that is tunnelled through.
fn strip(
    h: &mut HeaderMap,
    keep_upgrade: bool,
    kept: Option<&HeaderName>,
) -> Result<Seen, HeaderError> {
    // one pass over the names finds what is present: most messages carry no hop-by-hop header
    // (or only `Connection`), and a lookup per listed name would hash every one of them
    let mut seen = 0u8;
    let mut upgrade = false;
    let mut content_length = false;
    for name in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == name) {
            seen |= 1 << i;
        } else if name == header::UPGRADE {
            upgrade = true;
        } else if name == header::CONTENT_LENGTH {
            content_length = true;
        }
    }
    let te_trailers = seen & TE_BIT != 0 && te_names_trailers(h);
    if seen & CONNECTION_BIT != 0 {
        remove_connection_named(h, kept)?;
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
    Ok(Seen {
        transfer_encoding: seen & TRANSFER_ENCODING_BIT != 0,
        content_length,
        te_trailers,
    })
}

/// Whether a `TE` line lists the `trailers` token.
fn te_names_trailers(h: &HeaderMap) -> bool {
    h.get_all(header::TE).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            let t = t.trim_ascii();
            let name = t.split(|&b| b == b';').next().unwrap_or(t).trim_ascii();
            name.eq_ignore_ascii_case(b"trailers")
        })
    })
}

/// Remove the headers that `Connection` names (they are hop-by-hop too), every one of them,
/// unless kept. Tokens are matched against the map as `&str` keys, so no name is built.
fn remove_connection_named(
    h: &mut HeaderMap,
    kept: Option<&HeaderName>,
) -> Result<(), HeaderError> {
    let mut options = 0usize;
    let mut line = 0;
    // a clone of a line (a reference count, not a copy) lets the map change while its tokens
    // are read; `Connection` itself is removed by the caller
    while let Some(v) = h.get_all(header::CONNECTION).iter().nth(line).cloned() {
        line += 1;
        for token in v.as_bytes().split(|&b| b == b',') {
            let t = token.trim_ascii();
            if t.is_empty() {
                continue;
            }
            options += 1;
            if options > MAX_CONNECTION_OPTIONS {
                return Err(HeaderError::TooManyConnectionOptions);
            }
            let is = |n: &HeaderName| t.eq_ignore_ascii_case(n.as_str().as_bytes());
            let keep = kept.is_some_and(|b| is(b) || KEPT.iter().any(is));
            if keep
                || is(&header::CONNECTION)
                || is(&header::UPGRADE)
                || t.eq_ignore_ascii_case(b"close")
            {
                continue;
            }
            if let Ok(name) = std::str::from_utf8(t) {
                h.remove(name);
            }
        }
    }
    Ok(())
}

/// The size of a request's head as HTTP/1.1 sends it: the request line and one
/// `name: value\r\n` line per header.
pub fn head_len<B>(req: &http::Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
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
pub fn via(version: Version) -> &'static HeaderValue {
    static VIA_2: HeaderValue = HeaderValue::from_static("2 microstax");
    static VIA_1_0: HeaderValue = HeaderValue::from_static("1.0 microstax");
    static VIA_1_1: HeaderValue = HeaderValue::from_static("1.1 microstax");
    match version {
        Version::HTTP_2 => &VIA_2,
        Version::HTTP_10 => &VIA_1_0,
        _ => &VIA_1_1,
    }
}

/// Append the client address to `X-Forwarded-For`, keeping every line the client sent: they
/// are joined into one (`a, b, peer`), as nginx's `$proxy_add_x_forwarded_for` does, so an
/// upstream reading only the first line still sees the whole chain. `peer` is the prebuilt
/// value of this connection's client address (built once per connection).
pub fn append_forwarded_for(h: &mut HeaderMap, peer: &HeaderValue) {
    match h.entry(X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(peer.clone());
        }
        Entry::Occupied(mut e) => {
            let len = e.iter().map(|v| v.len() + 2).sum::<usize>() + peer.len();
            let mut v = Vec::with_capacity(len);
            for prev in e.iter() {
                let prev = prev.as_bytes().trim_ascii();
                if !prev.is_empty() {
                    v.extend_from_slice(prev);
                    v.extend_from_slice(b", ");
                }
            }
            v.extend_from_slice(peer.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
                e.insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_stripped_from_responses_keeps_them_from_going_out_raw() {
        for name in HOP_BY_HOP
            .iter()
            .chain([&header::UPGRADE, &header::TRAILER])
        {
            let upper = name.as_str().to_ascii_uppercase();
            assert!(changed_on_responses(name.as_str().as_bytes()), "{name}");
            assert!(changed_on_responses(upper.as_bytes()), "{upper}");
        }
        assert!(changed_on_responses(b"X-MicroStax-Route"));
        for name in ["content-length", "date", "x-micro", "tee", "content-type"] {
            assert!(!changed_on_responses(name.as_bytes()), "{name}");
        }
    }

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
        strip_response(&mut h, false).unwrap();
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
        let branch = HeaderName::from_static("x-microstax-branch");
        strip_request(&mut h, false, &branch).unwrap();
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-keep").unwrap(), "1");
        // nothing hop-by-hop: nothing changes
        let before = h.clone();
        strip_request(&mut h, false, &branch).unwrap();
        assert_eq!(h, before);
    }

    #[test]
    fn keeps_upgrade_when_tunnelling() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h, Version::HTTP_11));
        strip_response(&mut h, true).unwrap();
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
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        append_forwarded_for(&mut h, &peer);
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["127.0.0.1, 10.0.0.1, 10.0.0.2, 127.0.0.1"]);
    }

    #[test]
    fn connection_removes_every_name_but_not_what_is_kept() {
        let branch = HeaderName::from_static("x-microstax-branch");
        let mut h = HeaderMap::new();
        let names: Vec<String> = (0..20).map(|i| format!("x-n{i}")).collect();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_str(&names.join(", ").to_uppercase()).unwrap(),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("host, baggage, x-microstax-branch, via, cookie"),
        );
        for n in &names {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        for n in ["host", "baggage", "x-microstax-branch", "via", "cookie"] {
            h.insert(n, HeaderValue::from_static("1"));
        }
        strip_request(&mut h, false, &branch).unwrap();
        assert_eq!(h.len(), 5, "{h:?}");
        // a response keeps nothing `Connection` names
        let mut r = HeaderMap::new();
        r.insert(header::CONNECTION, HeaderValue::from_static("via"));
        r.insert(header::VIA, HeaderValue::from_static("1.1 x"));
        strip_response(&mut r, false).unwrap();
        assert!(r.is_empty());
    }

    #[test]
    fn too_many_options_and_double_framing_are_refused() {
        let branch = HeaderName::from_static("x-microstax-branch");
        let many: Vec<String> = (0..=MAX_CONNECTION_OPTIONS)
            .map(|i| format!("o{i}"))
            .collect();
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_str(&many.join(",")).unwrap(),
        );
        assert_eq!(
            strip_request(&mut h, false, &branch),
            Err(HeaderError::TooManyConnectionOptions)
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_str(&many[1..].join(",")).unwrap(),
        );
        assert_eq!(strip_request(&mut h, false, &branch), Ok(()));
        let mut r = HeaderMap::new();
        r.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        r.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(
            strip_response(&mut r, false),
            Err(HeaderError::AmbiguousLength)
        );
    }

    #[test]
    fn field_names_are_parsed_in_any_case_and_interned_ones_are_static() {
        // `field_name` looks an interned name up by its length alone
        let mut lengths: Vec<usize> = INTERNED.iter().map(|n| n.as_str().len()).collect();
        lengths.sort_unstable();
        lengths.dedup();
        assert_eq!(
            lengths.len(),
            INTERNED.len(),
            "interned names of one length"
        );
        for n in &INTERNED {
            let upper = n.as_str().to_ascii_uppercase();
            assert_eq!(field_name(upper.as_bytes()).as_ref(), Some(n));
            assert_eq!(field_name(n.as_str().as_bytes()).as_ref(), Some(n));
        }
        // same lengths as interned names, other names
        assert_eq!(
            field_name(b"x-microstax-other").unwrap().as_str(),
            "x-microstax-other"
        );
        assert_eq!(
            field_name(b"Accept-").map(|n| n.to_string()),
            Some("accept-".into())
        );
        assert_eq!(field_name(b"Host"), Some(header::HOST));
        assert_eq!(field_name(b"bad name"), None);
        assert_eq!(field_name(b""), None);
    }

    #[test]
    fn a_recycled_map_comes_back_empty_with_its_memory_and_large_ones_are_not_kept() {
        // this test's thread starts with no spare map
        let mut m = map_with_capacity(8);
        m.insert(header::HOST, HeaderValue::from_static("a"));
        let cap = m.capacity();
        recycle(m);
        let m = map_with_capacity(2);
        assert!(m.is_empty());
        assert_eq!(m.capacity(), cap);
        // one kept per request in flight, up to SPARE_MAPS
        for _ in 0..SPARE_MAPS + 1 {
            recycle(HeaderMap::with_capacity(4));
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARE_MAPS);
        SPARE.with(|s| s.borrow_mut().clear());
        recycle(m);
        assert_eq!(map_with_capacity(0).capacity(), cap);
        let big = HeaderMap::with_capacity(SPARE_CAPACITY * 2);
        recycle(big);
        assert!(map_with_capacity(0).capacity() <= SPARE_CAPACITY);
    }
}
