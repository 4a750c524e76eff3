//! Percent-decoding of the admin API's query strings (`application/x-www-form-urlencoded`:
//! `+` is a space, `%XX` a byte) and of branch names in paths (`%XX` only). A malformed escape
//! or a value that does not decode to UTF-8 is an error, never silently kept as written.

/// Why a query parameter or path segment could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A `%` not followed by two hex digits.
    #[error("malformed percent escape in `{0}`")]
    Escape(String),
    /// The decoded bytes are not UTF-8.
    #[error("`{0}` does not decode to UTF-8")]
    Utf8(String),
}

/// Longest query string the admin API reads (names are at most 63 bytes each).
pub const MAX_QUERY: usize = 4096;

/// Decode `%XX` escapes (and `+` as a space when `plus_is_space`).
pub fn decode(s: &str, plus_is_space: bool) -> Result<String, DecodeError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16).ok()
                });
                let Some(v) = hex else {
                    return Err(DecodeError::Escape(s.to_string()));
                };
                out.push(v);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::Utf8(s.to_string()))
}

/// A decoded query string: `key=value` pairs in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parse and decode `query` (without the `?`).
    pub fn parse(query: &str) -> Result<Query, DecodeError> {
        let mut pairs = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            pairs.push((decode(k, true)?, decode(v, true)?));
        }
        Ok(Query(pairs))
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_plus() {
        let q = Query::parse("branch=team%2Ffoo&service=a+b&x").expect("parse");
        assert_eq!(q.get("branch"), Some("team/foo"));
        assert_eq!(q.get("service"), Some("a b"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(q.get("nope"), None);
        assert_eq!(decode("a+b%2b", false).as_deref(), Ok("a+b+"));
    }

    #[test]
    fn rejects_bad_escapes_and_bytes() {
        assert!(matches!(decode("a%2", true), Err(DecodeError::Escape(_))));
        assert!(matches!(decode("a%zz", true), Err(DecodeError::Escape(_))));
        assert!(matches!(decode("%ff", true), Err(DecodeError::Utf8(_))));
    }
}
