//! How the state machine's rows are keyed and written in the `sm` tree: one prefixed key per
//! entity, per client of the seen table, per token and per audit record, so an entry's changes
//! and `last_applied` go in one atomic batch.

use serde::Serialize;
use switchyard_model::Entity;
use switchyard_proto::v1::Change;

use super::super::write_err;
use crate::auth::tokens::TokenRecord;
use crate::seen::Record;
use crate::state::{Applied, Command, Proposed, State};
use crate::types::StorageError;

pub const SEP: u8 = 0;

pub fn k1(prefix: u8, a: &str) -> Vec<u8> {
    let mut k = vec![prefix, SEP];
    k.extend_from_slice(a.as_bytes());
    k
}

pub fn k2(prefix: u8, a: &str, b: &str) -> Vec<u8> {
    let mut k = k1(prefix, a);
    k.push(SEP);
    k.extend_from_slice(b.as_bytes());
    k
}

pub const LAST_APPLIED: &[u8] = b"~last_applied";
pub const MEMBERSHIP: &[u8] = b"~membership";
pub const SETTINGS: &[u8] = b"~settings";
pub const CLOCK: &[u8] = b"~clock";
pub const AFFINITY_SECRET: &[u8] = b"~affinity_secret";
/// The cluster feature level (absent in data from before levels: level 1).
pub const FEATURE_LEVEL: &[u8] = b"~feature_level";

/// Writes one client's row of the seen-requests table (`None`: it was evicted).
pub fn persist_seen(batch: &mut sled::Batch, client: &str, rec: Option<&Record>) -> Result<(), StorageError> {
    match rec {
        Some(r) => batch.insert(k1(b'c', client), encode(r)?),
        None => batch.remove(k1(b'c', client)),
    }
    Ok(())
}

pub fn audit_key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'a', SEP];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Writes a token's row (`None`: revoked).
pub fn persist_token(batch: &mut sled::Batch, id: &str, rec: Option<&TokenRecord>) -> Result<(), StorageError> {
    match rec {
        Some(r) => batch.insert(k1(b't', id), encode(r)?),
        None => batch.remove(k1(b't', id)),
    }
    Ok(())
}

/// Writes the rows a command's tokens and audit record changed.
pub fn persist_access(batch: &mut sled::Batch, state: &State, p: &Proposed, a: &Applied) -> Result<(), StorageError> {
    if a.fresh && a.written.1.is_ok() {
        match &p.cmd {
            Command::CreateToken(t) => persist_token(batch, &t.id, state.tokens().get(&t.id))?,
            Command::RevokeToken { id } => persist_token(batch, id, None)?,
            _ => {}
        }
    }
    if let Some(r) = &a.audited {
        batch.insert(audit_key(r.seq), encode(r)?);
    }
    if let Some(seq) = a.audit_dropped {
        batch.remove(audit_key(seq));
    }
    Ok(())
}

/// Writes one change to the `sm` tree: each entity under its own prefixed key.
pub fn persist(batch: &mut sled::Batch, c: &Change) {
    let Some((entity, value)) = Entity::of(c) else { return };
    let key = match entity {
        Entity::Pool(n) => k1(b'p', n),
        Entity::Backend { pool, address } => k2(b'b', pool, address),
        Entity::Route(n) => k1(b'r', n),
        Entity::Settings => SETTINGS.to_vec(),
        Entity::Session { pool, key } => k2(b's', pool, key),
        Entity::AffinitySecret => AFFINITY_SECRET.to_vec(),
    };
    match value {
        Some(v) => batch.insert(key, v),
        None => batch.remove(key),
    }
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(v).map_err(write_err)
}
