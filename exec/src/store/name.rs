//! The deterministic name of a branch's store (`msx_<store>_<branch>`), shared by every plugin so
//! a database, a schema or a command's resource is called the same for the same store and branch.
//!
//! Names fit PostgreSQL's identifier limit (63 bytes) and use only `[a-z0-9_]`, so they need no
//! quoting in most backends (the postgres plugin quotes them anyway). Two different
//! `(store, branch)` pairs never get the same name:
//! - the *plain* form `msx_<store>_<branch>` is used only when the store is `[a-z0-9]+` and the
//!   branch is `[a-z0-9_]+` without `__`, and the whole fits; it can be read back unambiguously
//!   (the store ends at the first `_` after the prefix) and never contains `__`;
//! - every other pair gets the *hashed* form: the sanitised text (lower-cased, any other byte
//!   replaced by `_`), cut to fit, then `__` and 12 hex digits of a hash of the raw pair. It
//!   always contains `__`, so it cannot equal a plain name, and two hashed names differ unless
//!   their 48-bit hashes collide.

/// PostgreSQL's longest identifier (NAMEDATALEN - 1).
pub const MAX_NAME_LEN: usize = 63;

const PREFIX: &str = "msx_";
const HASH_HEX: usize = 12;

/// The name of the branch's store: see the module doc for the rules.
pub fn store_resource_name(store: &str, branch: &str) -> String {
    let plain = format!("{PREFIX}{store}_{branch}");
    if is_plain(store, branch) && plain.len() <= MAX_NAME_LEN {
        return plain;
    }
    let mut base: String = plain
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'0'..=b'9' | b'_' => b as char,
            b'A'..=b'Z' => b.to_ascii_lowercase() as char,
            _ => '_',
        })
        .collect();
    base.truncate(MAX_NAME_LEN - 2 - HASH_HEX);
    let base = base.trim_end_matches('_');
    let hash = fnv1a64(store.as_bytes(), branch.as_bytes());
    let hex = format!("{hash:016x}");
    format!("{base}__{}", &hex[..HASH_HEX])
}

fn is_plain(store: &str, branch: &str) -> bool {
    let store_ok = !store.is_empty()
        && store
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let branch_ok = !branch.is_empty()
        && branch
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !branch.contains("__");
    store_ok && branch_ok
}

/// FNV-1a over `store`, a zero byte, then `branch` (the zero byte keeps `("ab","c")` and
/// `("a","bc")` apart). Stable across releases and platforms, unlike `DefaultHasher`.
fn fnv1a64(store: &[u8], branch: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in store.iter().chain(&[0u8]).chain(branch) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(
            store_resource_name("orders", "feature_x"),
            "msx_orders_feature_x"
        );
    }

    #[test]
    fn sanitised_or_long_names_get_a_hash_and_fit() {
        let n = store_resource_name("orders-db", "feature/X");
        assert!(n.starts_with("msx_orders_db_feature_x__"), "{n}");
        assert_eq!(n.len(), "msx_orders_db_feature_x__".len() + HASH_HEX);
        let long = store_resource_name("orders", &"b".repeat(200));
        assert!(long.len() <= MAX_NAME_LEN, "{long}");
        assert!(long.contains("__"));
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        assert!(n.chars().all(ok) && long.chars().all(ok));
    }

    #[test]
    fn pairs_that_read_alike_do_not_collide() {
        let pairs = [
            ("a_b", "c"),
            ("a", "b_c"),
            ("a", "b-c"),
            ("a", "b.c"),
            ("a", "B_c"),
            ("a", "b__c"),
            ("orders", "x"),
            ("orders", "X"),
        ];
        let mut names: Vec<String> = pairs
            .iter()
            .map(|(s, b)| store_resource_name(s, b))
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), pairs.len(), "{names:?}");
        assert_eq!(
            store_resource_name("a", "b-c"),
            store_resource_name("a", "b-c")
        );
    }
}
