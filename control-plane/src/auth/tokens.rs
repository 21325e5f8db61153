//! Bearer tokens: `sy_` and 64 hex digits (32 random bytes). The cluster stores only a SHA-256
//! hash of each, with its id, name, role and expiry; the secret is shown once, to whoever
//! created it. Token records live beside the model, never in it, so no change set (and so no
//! watch stream, cache file or Query reply) can carry one.

use std::collections::BTreeMap;

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use switchyard_model::tls::Role;

/// What every token starts with, so a leaked one is recognisable (secret scanners, logs).
pub const PREFIX: &str = "sy_";
const SECRET_BYTES: usize = 32;
/// Most tokens a cluster keeps: a bound on the state, far above any real use.
pub const MAX_TOKENS: usize = 10_000;
/// Longest token name.
pub const MAX_NAME: usize = 64;

/// One stored token: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    /// A [`Role`] by name (viewer, operator or admin).
    pub role: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub created_ms: u64,
    /// 0 = never (the bootstrap token).
    pub expires_ms: u64,
    pub created_revision: u64,
}

impl TokenRecord {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now_ms
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    SystemRandom::new().fill(&mut buf).expect("the system RNG works");
    hex(&buf)
}

/// SHA-256 of a secret, hex: what the cluster keeps.
pub fn hash(secret: &str) -> String {
    hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

/// A new token: (id, secret). The id is public (listings, audit); the secret is not.
pub fn mint() -> (String, String) {
    (random_hex(6), format!("{PREFIX}{}", random_hex(SECRET_BYTES)))
}

/// Whether `s` has a token's shape, before any lookup.
pub fn well_formed(s: &str) -> bool {
    s.strip_prefix(PREFIX).is_some_and(|h| h.len() == SECRET_BYTES * 2 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The roles a token may carry: people's and scripts'. Proxies and nodes prove themselves
/// with certificates only.
pub fn token_role(s: &str) -> Result<Role, String> {
    match s.parse::<Role>() {
        Ok(r @ (Role::Viewer | Role::Operator | Role::Admin)) => Ok(r),
        Ok(r) => Err(format!("a token cannot carry role {r}: proxies and nodes use certificates")),
        Err(_) => Err(format!("unknown role {s:?}: one of viewer, operator, admin")),
    }
}

/// The tokens a cluster holds, by id and by hash.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tokens {
    by_id: BTreeMap<String, TokenRecord>,
    by_hash: BTreeMap<String, String>,
}

impl Tokens {
    pub fn from_records(records: impl IntoIterator<Item = TokenRecord>) -> Tokens {
        let mut t = Tokens::default();
        for r in records {
            t.insert(r);
        }
        t
    }

    pub fn insert(&mut self, r: TokenRecord) {
        self.by_hash.insert(r.hash.clone(), r.id.clone());
        self.by_id.insert(r.id.clone(), r);
    }

    pub fn remove(&mut self, id: &str) -> Option<TokenRecord> {
        let r = self.by_id.remove(id)?;
        self.by_hash.remove(&r.hash);
        Some(r)
    }

    pub fn get(&self, id: &str) -> Option<&TokenRecord> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains_hash(&self, hash: &str) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// The record a secret belongs to, if any.
    pub fn by_secret(&self, secret: &str) -> Option<&TokenRecord> {
        self.by_hash.get(&hash(secret)).and_then(|id| self.by_id.get(id))
    }

    pub fn iter(&self) -> impl Iterator<Item = &TokenRecord> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_well_formed_distinct_and_found_by_secret_only() {
        let (id, secret) = mint();
        let (id2, secret2) = mint();
        assert!(well_formed(&secret) && well_formed(&secret2));
        assert_ne!(secret, secret2);
        assert_ne!(id, id2);
        assert!(!well_formed("sy_abc") && !well_formed(&secret.replace("sy_", "xx_")));
        let rec = TokenRecord {
            id: id.clone(),
            name: "ci".into(),
            role: "operator".into(),
            hash: hash(&secret),
            created_ms: 1,
            expires_ms: 10,
            created_revision: 3,
        };
        assert!(!rec.hash.contains(&secret[3..]), "the hash is not the secret");
        let mut t = Tokens::from_records([rec.clone()]);
        assert_eq!(t.by_secret(&secret), Some(&rec));
        assert_eq!(t.by_secret(&secret2), None);
        assert!(rec.expired(10) && !rec.expired(9));
        t.remove(&id);
        assert_eq!(t.by_secret(&secret), None);
        assert!(t.is_empty());
    }

    #[test]
    fn tokens_carry_only_people_roles() {
        assert_eq!(token_role("operator"), Ok(Role::Operator));
        assert!(token_role("node").unwrap_err().contains("certificates"));
        assert!(token_role("root").unwrap_err().contains("unknown role"));
    }
}
