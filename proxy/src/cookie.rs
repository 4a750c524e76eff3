//! Cookie header parsing (RFC 6265 `cookie-string`), allocation-free. HTTP/2 clients may split
//! cookies over several headers; the caller passes each.

/// The value of cookie `name` in one `Cookie` header value; surrounding double quotes removed.
pub fn find<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    for pair in header.split(|&b| b == b';') {
        let pair = trim(pair);
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        if trim(&pair[..eq]) != name.as_bytes() {
            continue;
        }
        let v = trim(&pair[eq + 1..]);
        let v = match v {
            [b'"', inner @ .., b'"'] => inner,
            _ => v,
        };
        return Some(v);
    }
    None
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_cookie() {
        let h = b"session=abc; microstax-branch=feature-b;theme=dark";
        assert_eq!(find(h, "microstax-branch"), Some(&b"feature-b"[..]));
        assert_eq!(find(h, "theme"), Some(&b"dark"[..]));
        assert_eq!(find(b"x=\"quoted\"", "x"), Some(&b"quoted"[..]));
        assert_eq!(find(b"microstax-branchx=1", "microstax-branch"), None);
        assert_eq!(find(b"", "a"), None);
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = find(s.as_bytes(), "microstax-branch");
        }
    }
}
