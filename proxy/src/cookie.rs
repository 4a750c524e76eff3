//! Cookie header parsing (RFC 6265 `cookie-string`), allocation-free. HTTP/2 clients may split
//! cookies over several headers; the caller passes each.

/// The value of cookie `name` in one `Cookie` header value; surrounding double quotes removed.
pub fn find<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    for pair in header.split(|&b| b == b';') {
        let pair = pair.trim_ascii();
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        if pair[..eq].trim_ascii() != name.as_bytes() {
            continue;
        }
        let v = pair[eq + 1..].trim_ascii();
        let v = match v {
            [b'"', inner @ .., b'"'] => inner,
            _ => v,
        };
        return Some(v);
    }
    None
}

/// One `Cookie` header value without the cookies named in `names` (the others kept in order,
/// joined by `; `). Allocates; call it only when [`find`] found one of them.
pub fn without(header: &[u8], names: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    for pair in header.split(|&b| b == b';') {
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            continue;
        }
        let name = pair
            .iter()
            .position(|&b| b == b'=')
            .map_or(pair, |eq| pair[..eq].trim_ascii());
        if names.iter().any(|n| n.as_bytes() == name) {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    out
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

    #[test]
    fn removes_named_cookies() {
        let h = b"a=1; microstax-branch=x;b=2 ; microstax-token=t";
        assert_eq!(
            without(h, &["microstax-branch", "microstax-token"]),
            b"a=1; b=2"
        );
        assert_eq!(without(b"microstax-branch=x", &["microstax-branch"]), b"");
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = find(s.as_bytes(), "microstax-branch");
        }
    }
}
