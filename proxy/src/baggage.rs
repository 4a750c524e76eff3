//! W3C Baggage (<https://www.w3.org/TR/baggage/>) parsing, allocation-free. A request may carry
//! several `baggage` headers; together they form one comma-separated list of members
//! `key = value *(; property)`, with optional whitespace around every part and percent-encoded
//! values. Malformed members are skipped, not fatal: one bad member must not hide the others.

/// The W3C limit on the size of all baggage headers of a request; longer input is not read.
pub const MAX_BAGGAGE_BYTES: usize = 8192;

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// baggage-octet: printable US-ASCII except space, `"`, `,`, `;` and `\`.
fn is_value_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// The raw (still percent-encoded) value of `key` in one baggage header value, if present and
/// well formed. The first well-formed member with that key wins.
pub fn find_raw<'a>(header: &'a [u8], key: &str) -> Option<&'a [u8]> {
    if header.len() > MAX_BAGGAGE_BYTES {
        return None;
    }
    for member in header.split(|&b| b == b',') {
        let kv = member.split(|&b| b == b';').next().unwrap_or(member);
        let Some(eq) = kv.iter().position(|&b| b == b'=') else {
            continue;
        };
        let k = kv[..eq].trim_ascii();
        if k != key.as_bytes() || !k.iter().all(|&b| is_token_byte(b)) {
            continue;
        }
        let v = kv[eq + 1..].trim_ascii();
        if v.iter().all(|&b| is_value_byte(b)) {
            return Some(v);
        }
    }
    None
}

/// Percent-decode `raw` into `out`; returns the decoded length, or `None` when the encoding is
/// invalid or the result does not fit.
pub fn percent_decode(raw: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut i = 0;
    let mut n = 0;
    while i < raw.len() {
        let b = if raw[i] == b'%' {
            let hi = hex(*raw.get(i + 1)?)?;
            let lo = hex(*raw.get(i + 2)?)?;
            i += 3;
            hi << 4 | lo
        } else {
            i += 1;
            raw[i - 1]
        };
        *out.get_mut(n)? = b;
        n += 1;
    }
    Some(n)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The key of one member (before `=`, trimmed), if it has one.
fn member_key(member: &[u8]) -> Option<&[u8]> {
    let kv = member.split(|&b| b == b';').next().unwrap_or(member);
    kv.iter()
        .position(|&b| b == b'=')
        .map(|eq| kv[..eq].trim_ascii())
}

/// Whether the baggage headers hold exactly one member with `key`, and its raw value is
/// `value` (then the context is carried as is and nothing needs rebuilding).
pub fn only_member_is<'a>(headers: impl Iterator<Item = &'a [u8]>, key: &str, value: &str) -> bool {
    let mut found = false;
    for h in headers {
        for member in h.split(|&b| b == b',') {
            if member_key(member) != Some(key.as_bytes()) {
                continue;
            }
            if found || find_raw(member, key) != Some(value.as_bytes()) {
                return false;
            }
            found = true;
        }
    }
    found
}

/// Whether any baggage header holds a member with `key` (well formed or not).
pub fn has_member<'a>(mut headers: impl Iterator<Item = &'a [u8]>, key: &str) -> bool {
    headers.any(|h| {
        h.split(|&b| b == b',')
            .any(|m| member_key(m) == Some(key.as_bytes()))
    })
}

/// Every member of `existing` except those with `key`, in order, with their properties, as
/// one value.
pub fn without_member(existing: &[&[u8]], key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(existing.iter().map(|h| h.len() + 1).sum::<usize>());
    others(existing, key, &mut out);
    out
}

fn others(existing: &[&[u8]], key: &str, out: &mut Vec<u8>) {
    for h in existing {
        for member in h.split(|&b| b == b',') {
            let m = member.trim_ascii();
            if m.is_empty() || member_key(m) == Some(key.as_bytes()) {
                continue;
            }
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(m);
        }
    }
}

/// Rebuild one baggage value with `key` set to `value` (already a valid branch name, which
/// needs no percent-encoding): every other member is kept, with its properties, in order, and
/// every member with `key` (duplicated or malformed) gives way to the one appended.
pub fn with_member(existing: &[&[u8]], key: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        existing.iter().map(|h| h.len() + 1).sum::<usize>() + key.len() + value.len() + 2,
    );
    others(existing, key, &mut out);
    if !out.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(h: &str, key: &str) -> Option<String> {
        let raw = find_raw(h.as_bytes(), key)?;
        let mut buf = [0u8; 128];
        let n = percent_decode(raw, &mut buf)?;
        String::from_utf8(buf[..n].to_vec()).ok()
    }

    #[test]
    fn finds_member_among_others_with_whitespace_and_properties() {
        let h = "userId=alice , microstax-branch = feature-a ;prop=1;flag, other=x";
        assert_eq!(decode(h, "microstax-branch").as_deref(), Some("feature-a"));
        assert_eq!(decode(h, "userId").as_deref(), Some("alice"));
        assert_eq!(decode(h, "missing"), None);
    }

    #[test]
    fn percent_encoding_is_decoded() {
        assert_eq!(decode("k=alice%2Ffix", "k").as_deref(), Some("alice/fix"));
        assert_eq!(decode("k=bad%2", "k"), None);
        assert_eq!(decode("k=bad%zz", "k"), None);
    }

    #[test]
    fn malformed_members_are_skipped() {
        assert_eq!(decode("garbage,,k=v", "k").as_deref(), Some("v"));
        assert_eq!(decode("k=\"quoted\",k=ok", "k").as_deref(), Some("ok"));
        assert_eq!(decode("k = has space", "k"), None);
        let big = format!("k=v,{}", "x".repeat(MAX_BAGGAGE_BYTES));
        assert_eq!(decode(&big, "k"), None);
    }

    #[test]
    fn with_member_replaces_and_keeps_others() {
        let a: &[u8] = b"a=1;p, microstax-branch=old";
        let b: &[u8] = b"b=2";
        let out = with_member(&[a, b], "microstax-branch", "new");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a=1;p,b=2,microstax-branch=new"
        );
        let out = with_member(&[], "k", "v");
        assert_eq!(out, b"k=v");
        // duplicated and malformed members with the key give way to the one set
        let a: &[u8] = b"k=v, a=1, k=%zz;p";
        assert_eq!(with_member(&[a], "k", "v"), b"a=1,k=v");
        assert_eq!(without_member(&[a, b"b=2"], "k"), b"a=1,b=2");
        assert!(without_member(&[b"k=Bad!"], "k").is_empty());
    }

    #[test]
    fn only_member_and_has_member() {
        let one: [&[u8]; 2] = [b"a=1", b" k = v ;p"];
        assert!(only_member_is(one.iter().copied(), "k", "v"));
        assert!(!only_member_is(one.iter().copied(), "k", "w"));
        let two: [&[u8]; 2] = [b"k=v", b"k=v"];
        assert!(!only_member_is(two.iter().copied(), "k", "v"));
        let bad: [&[u8]; 1] = [b"k=%zz, k=v"];
        assert!(!only_member_is(bad.iter().copied(), "k", "v"));
        assert!(!only_member_is([&b"a=1"[..]].into_iter(), "k", "v"));
        assert!(has_member(bad.iter().copied(), "k"));
        assert!(!has_member([&b"a=1,kk=2"[..]].into_iter(), "k"));
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,300}", key in "[a-z-]{1,10}") {
            let _ = decode(&s, &key);
        }

        #[test]
        fn set_member_round_trips(
            others in proptest::collection::vec(("[a-z]{1,8}", "[a-zA-Z0-9]{0,8}"), 0..6),
            value in "[a-z0-9][a-z0-9._-]{0,20}",
        ) {
            let existing: Vec<String> = others.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let joined = existing.join(" , ");
            let out = with_member(&[joined.as_bytes()], "microstax-branch", &value);
            let out = String::from_utf8(out).unwrap();
            prop_assert_eq!(decode(&out, "microstax-branch"), Some(value.clone()));
            for (k, v) in &others {
                if k != "microstax-branch" {
                    // the first member with each key is preserved
                    let first = others.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.clone());
                    prop_assert_eq!(decode(&out, k), first.or(Some(v.clone())));
                }
            }
        }
    }
}
