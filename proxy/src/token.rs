//! Signed branch tokens: the credential an untrusted client shows to select a branch on an
//! `edge` listener (see `crate::trust`). A token is `ms1.<payload>.<tag>`, both parts
//! unpadded base64url; the payload is `<expiry unix seconds>\n<audience>\n<branch>` and the
//! tag is HMAC-SHA256 over `ms1.<payload>` (the encoded text, so nothing is decoded before the
//! tag is checked). Several keys are accepted at once, so a key can be rotated: mint with the
//! new one while the old one is still accepted. Verification copies a prepared keyed state per
//! key and decodes into stack buffers: no allocation, no lock.

use crate::context::BranchName;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Token prefix and version.
const PREFIX: &[u8] = b"ms1.";
/// Longest token accepted, in bytes (a 63-byte branch and a 200-byte audience fit).
pub const MAX_TOKEN_LEN: usize = 512;
/// Longest audience, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 200;
/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;
const TAG_LEN: usize = 32;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the token's form (prefix, parts, base64, payload lines, lengths).
    #[error("malformed token")]
    Malformed,
    /// No accepted key made its tag.
    #[error("bad token signature")]
    BadSignature,
    /// Its expiry has passed.
    #[error("expired token")]
    Expired,
    /// Made for another audience.
    #[error("token for another audience")]
    WrongAudience,
    /// The branch it names is not a valid branch name.
    #[error("token names an invalid branch")]
    BadBranch,
}

impl TokenError {
    /// Lower-case label (metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::BadBranch => "bad_branch",
        }
    }
}

/// Why a key set could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key was given.
    #[error("no token key")]
    Empty,
    /// A key is shorter than [`MIN_KEY_LEN`] bytes.
    #[error("token key {index} is shorter than {MIN_KEY_LEN} bytes")]
    TooShort {
        /// The key's index (0 is the first line).
        index: usize,
    },
}

/// Accepted token keys, prepared once; the first one mints.
#[derive(Clone)]
pub struct TokenKeys {
    keyed: Box<[HmacSha256]>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKeys({} keys)", self.keyed.len())
    }
}

impl TokenKeys {
    /// Keys from raw secrets (the first mints, all verify).
    pub fn new<K: AsRef<[u8]>>(keys: &[K]) -> Result<TokenKeys, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut keyed = Vec::with_capacity(keys.len());
        for (index, k) in keys.iter().enumerate() {
            let k = k.as_ref();
            if k.len() < MIN_KEY_LEN {
                return Err(KeyError::TooShort { index });
            }
            // HMAC takes keys of any length: this cannot fail
            keyed.push(
                <HmacSha256 as KeyInit>::new_from_slice(k)
                    .map_err(|_| KeyError::TooShort { index })?,
            );
        }
        Ok(TokenKeys {
            keyed: keyed.into_boxed_slice(),
        })
    }

    /// Keys from a key file's text: one key per non-empty line, surrounding blanks trimmed.
    pub fn from_file_text(text: &str) -> Result<TokenKeys, KeyError> {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        TokenKeys::new(&lines)
    }

    /// A token for `branch` and `audience` expiring at `expires` (unix seconds), made with the
    /// first key. `None` when the branch or audience cannot be carried.
    pub fn mint(&self, branch: &str, audience: &str, expires: u64) -> Option<String> {
        BranchName::from_bytes(branch.as_bytes())?;
        if audience.len() > MAX_AUDIENCE_LEN || audience.contains('\n') {
            return None;
        }
        let payload = format!("{expires}\n{audience}\n{branch}");
        let mut signed = String::from_utf8_lossy(PREFIX).into_owned();
        URL_SAFE_NO_PAD.encode_string(payload, &mut signed);
        let mut mac = self.keyed.first()?.clone();
        mac.update(signed.as_bytes());
        let tag = mac.finalize().into_bytes();
        signed.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut signed);
        Some(signed)
    }

    /// Check `token` for `audience` at time `now` (unix seconds): the branch it grants and its
    /// expiry.
    pub fn verify(
        &self,
        token: &[u8],
        audience: &str,
        now: u64,
    ) -> Result<(BranchName, u64), TokenError> {
        if token.len() > MAX_TOKEN_LEN || !token.starts_with(PREFIX) {
            return Err(TokenError::Malformed);
        }
        let dot = token
            .iter()
            .rposition(|&b| b == b'.')
            .filter(|&i| i >= PREFIX.len())
            .ok_or(TokenError::Malformed)?;
        let (signed, tag_b64) = (&token[..dot], &token[dot + 1..]);
        let mut tag = [0u8; TAG_LEN + 3];
        let n = URL_SAFE_NO_PAD
            .decode_slice(tag_b64, &mut tag)
            .map_err(|_| TokenError::Malformed)?;
        if n != TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let tag = &tag[..TAG_LEN];
        let signed_ok = self.keyed.iter().any(|k| {
            let mut mac = k.clone();
            mac.update(signed);
            mac.verify_slice(tag).is_ok()
        });
        if !signed_ok {
            return Err(TokenError::BadSignature);
        }
        let mut payload = [0u8; MAX_TOKEN_LEN];
        let n = URL_SAFE_NO_PAD
            .decode_slice(&signed[PREFIX.len()..], &mut payload)
            .map_err(|_| TokenError::Malformed)?;
        let mut lines = payload[..n].splitn(3, |&b| b == b'\n');
        let (Some(exp), Some(aud), Some(branch)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(TokenError::Malformed);
        };
        let expires = std::str::from_utf8(exp)
            .ok()
            .and_then(|e| e.parse::<u64>().ok())
            .ok_or(TokenError::Malformed)?;
        if aud != audience.as_bytes() {
            return Err(TokenError::WrongAudience);
        }
        if expires <= now {
            return Err(TokenError::Expired);
        }
        let branch = BranchName::from_bytes(branch).ok_or(TokenError::BadBranch)?;
        Ok((branch, expires))
    }
}

/// Seconds since the unix epoch now (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(&["0123456789abcdef-new", "0123456789abcdef-old"]).unwrap()
    }

    #[test]
    fn mint_then_verify() {
        let k = keys();
        let t = k.mint("alice/fix", "preview", 1000).unwrap();
        let (b, exp) = k.verify(t.as_bytes(), "preview", 999).unwrap();
        assert_eq!((b.as_str(), exp), ("alice/fix", 1000));
        assert_eq!(
            k.verify(t.as_bytes(), "preview", 1000).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            k.verify(t.as_bytes(), "other", 0).unwrap_err(),
            TokenError::WrongAudience
        );
    }

    #[test]
    fn rotation_accepts_every_listed_key() {
        let old = TokenKeys::new(&["0123456789abcdef-old"]).unwrap();
        let t = old.mint("dev", "a", 10).unwrap();
        assert!(keys().verify(t.as_bytes(), "a", 1).is_ok());
        let other = TokenKeys::new(&["0123456789abcdef-xxx"]).unwrap();
        assert_eq!(
            other.verify(t.as_bytes(), "a", 1).unwrap_err(),
            TokenError::BadSignature
        );
        assert_eq!(
            TokenKeys::new(&["short"]).unwrap_err(),
            KeyError::TooShort { index: 0 }
        );
        assert_eq!(TokenKeys::new::<&str>(&[]).unwrap_err(), KeyError::Empty);
    }

    #[test]
    fn tampering_is_refused() {
        let k = keys();
        let t = k.mint("dev", "a", 10).unwrap();
        // a payload naming another branch with the old tag
        let forged_payload = URL_SAFE_NO_PAD.encode("10\na\nmain");
        let tag = t.rsplit('.').next().unwrap();
        let forged = format!("ms1.{forged_payload}.{tag}");
        assert_eq!(
            k.verify(forged.as_bytes(), "a", 1).unwrap_err(),
            TokenError::BadSignature
        );
        for bad in ["", "ms1.", "ms1..", "ms2.a.b", "ms1.abc", "ms1.a.b.c", "x"] {
            assert!(k.verify(bad.as_bytes(), "a", 1).is_err(), "{bad}");
        }
        // a correctly signed payload without three lines is malformed, not a panic
        let mut mac = k.keyed[0].clone();
        let signed = format!("ms1.{}", URL_SAFE_NO_PAD.encode("10"));
        mac.update(signed.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let t = format!("{signed}.{tag}");
        assert_eq!(
            k.verify(t.as_bytes(), "a", 1).unwrap_err(),
            TokenError::Malformed
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = keys().verify(&s, "a", 1);
            let mut t = b"ms1.".to_vec();
            t.extend_from_slice(&s);
            let _ = keys().verify(&t, "a", 1);
        }
    }
}
