//! Affinity keys are often credentials (a bearer token, a session cookie), so they are
//! stored, replicated, cached and shown only as keyed hashes: HMAC-SHA256 under a random
//! per-cluster secret, cut to 16 bytes, in hex. Without the secret a hash cannot be matched
//! against guessed tokens, and the secret itself never leaves the nodes and proxies.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes in a cluster's secret.
pub const SECRET_LEN: usize = 32;
/// Bytes of the HMAC kept (shown as twice as many hex digits).
const HASH_LEN: usize = 16;

/// The cluster's hashing secret; empty until the leader mints one. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct AffinitySecret(Vec<u8>);

impl std::fmt::Debug for AffinitySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "AffinitySecret(none)" } else { "AffinitySecret(..)" })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the system random source failed")]
pub struct RandomError;

impl AffinitySecret {
    /// A new random secret.
    pub fn mint() -> Result<AffinitySecret, RandomError> {
        let mut b = vec![0u8; SECRET_LEN];
        SystemRandom::new().fill(&mut b).map_err(|_| RandomError)?;
        Ok(AffinitySecret(b))
    }

    /// Takes stored or streamed bytes; anything but [`SECRET_LEN`] bytes is no secret.
    pub fn from_bytes(b: &[u8]) -> AffinitySecret {
        AffinitySecret(if b.len() == SECRET_LEN { b.to_vec() } else { Vec::new() })
    }

    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }

    /// The bytes, for the state machine's storage and the watch stream only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// A raw affinity key's hash, or `None` while there is no secret (the caller then does
    /// without affinity rather than handle the raw key).
    pub fn hash(&self, raw: &[u8]) -> Option<String> {
        if !self.is_set() {
            return None;
        }
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.0), raw);
        Some(tag.as_ref()[..HASH_LEN].iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Whether `key` has the form of a hashed affinity key (what a binding may carry).
pub fn is_hashed(key: &str) -> bool {
    key.len() == 2 * HASH_LEN && key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_short_hex_and_never_the_raw_key() {
        let a = AffinitySecret::mint().unwrap();
        let b = AffinitySecret::mint().unwrap();
        let raw = b"Bearer eyJhbGciOi.secret-token";
        let h = a.hash(raw).unwrap();
        assert!(is_hashed(&h), "{h}");
        assert_eq!(a.hash(raw), Some(h.clone()), "the same key hashes the same on every proxy");
        assert_ne!(b.hash(raw), Some(h.clone()), "another cluster's secret gives another hash");
        assert_ne!(a.hash(b"Bearer other"), Some(h));
        assert_eq!(AffinitySecret::default().hash(raw), None);
        assert_eq!(format!("{a:?}"), "AffinitySecret(..)");
        assert_eq!(AffinitySecret::from_bytes(a.expose()), a);
        assert!(!AffinitySecret::from_bytes(b"short").is_set());
        assert!(!is_hashed("not-a-hash") && !is_hashed(&"A".repeat(32)));
    }
}
