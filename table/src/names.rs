//! Name rules. Branch names travel in headers, cookies, baggage and host labels, so the charset is
//! small and fixed: `[a-z0-9][a-z0-9._/-]{0,62}` (at most 63 bytes, like a DNS label). Service and
//! team names use the same rule without `/`.

/// The reserved parent name that means "the org baseline".
pub const BASELINE: &str = "baseline";

/// Why a name is not allowed, or `None` when it is.
pub fn branch_name_error(name: &str) -> Option<&'static str> {
    check(name, true)
}

/// Why a service or team name is not allowed, or `None` when it is.
pub fn plain_name_error(name: &str) -> Option<&'static str> {
    check(name, false)
}

/// Whether `name` is a valid branch name; used on the request path, so it does not allocate.
pub fn is_branch_name(name: &str) -> bool {
    check(name, true).is_none()
}

fn check(name: &str, allow_slash: bool) -> Option<&'static str> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Some("name is empty");
    }
    if b.len() > 63 {
        return Some("name is longer than 63 characters");
    }
    if !(b[0].is_ascii_lowercase() || b[0].is_ascii_digit()) {
        return Some("name must start with a lower-case letter or digit");
    }
    let ok = b.iter().all(|c| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || *c == b'.'
            || *c == b'_'
            || *c == b'-'
            || (allow_slash && *c == b'/')
    });
    if !ok {
        return Some(if allow_slash {
            "name may hold only a-z, 0-9, '.', '_', '-' and '/'"
        } else {
            "name may hold only a-z, 0-9, '.', '_' and '-'"
        });
    }
    // names become path segments (admin URLs, files): no empty, `.` or `..` segment
    if allow_slash
        && name
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Some("name may not hold an empty, `.` or `..` segment");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names() {
        assert!(is_branch_name("feature-a"));
        assert!(is_branch_name("alice/fix-1.2_x"));
        assert!(is_branch_name("0"));
        assert!(!is_branch_name(""));
        assert!(!is_branch_name("Feature"));
        assert!(!is_branch_name("-x"));
        assert!(!is_branch_name("a b"));
        assert!(!is_branch_name(&"a".repeat(64)));
        assert!(is_branch_name(&"a".repeat(63)));
        assert!(plain_name_error("a/b").is_some());
        for bad in ["a/../../etc", "a/./b", "a//b", "a/", "a/.."] {
            assert!(!is_branch_name(bad), "{bad}");
        }
        assert!(is_branch_name("a/.b/c..d"));
    }
}
