//! Snapshot data: what a snapshot, an installed one or a backup, holds and how it is encoded.

use prost::Message;
use serde::{Deserialize, Serialize};
use switchyard_proto::v1::Topology;

use crate::audit::{AuditLog, AuditRecord};
use crate::auth::tokens::{TokenRecord, Tokens};
use crate::seen::{Record, Seen};
use crate::state::State;
use crate::store::{read_err, write_err};
use crate::types::{LogId, StorageError, StoredMembership};

#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotFile {
    pub(super) last_applied: Option<LogId>,
    pub(super) membership: StoredMembership,
    /// As bytes, not a sequence of `u8`: the same postcard encoding (a length, then the
    /// bytes), written and read in one copy instead of one serde call per byte of a state that
    /// may be hundreds of megabytes.
    #[serde(with = "serde_bytes")]
    pub(super) topology: Vec<u8>,
    /// The seen-requests table: without it a node restored from a snapshot would apply a
    /// retried write again.
    pub(super) seen: Vec<(String, Record)>,
    /// The high-water clock (`State::clock_ms`): without it a restored node could stamp
    /// session times earlier than ones already applied.
    pub(super) clock_ms: u64,
    pub(super) tokens: Vec<TokenRecord>,
    pub(super) audit: Vec<AuditRecord>,
}

/// Snapshot data from another cluster, made this cluster's: applied at `at`, with this
/// cluster's members. Everything else (topology, sessions, tokens, audit, clock) is kept.
pub fn rebase_snapshot(data: &[u8], at: LogId, membership: StoredMembership) -> Result<Vec<u8>, StorageError> {
    let (mut file, tail) = decode_snapshot(data)?;
    Topology::decode(file.topology.as_slice()).map_err(read_err)?;
    file.last_applied = Some(at);
    file.membership = membership;
    encode_snapshot(&file, &tail)
}

/// What snapshot data holds after its [`SnapshotFile`]: added without a storage-format bump,
/// so data dirs, snapshots and backups written before it still read (postcard stops where
/// the file ends, and a missing tail reads as its default), and a node upgraded in place
/// keeps its data. The feature level is here, not in the file, for that reason.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct SnapshotTail {
    pub(super) feature_level: u32,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(v).map_err(write_err)
}

pub(super) fn encode_snapshot(file: &SnapshotFile, tail: &SnapshotTail) -> Result<Vec<u8>, StorageError> {
    // Room for the topology and a little more up front: the data is written once, not copied
    // again each time a growing buffer doubles.
    let room = file.topology.len() + 64 * 1024;
    let mut data = postcard::to_extend(file, Vec::with_capacity(room)).map_err(write_err)?;
    data.extend(encode(tail)?);
    Ok(data)
}

pub(super) fn decode_snapshot(data: &[u8]) -> Result<(SnapshotFile, SnapshotTail), StorageError> {
    let (file, rest) = postcard::take_from_bytes::<SnapshotFile>(data).map_err(read_err)?;
    let tail = if rest.is_empty() { SnapshotTail::default() } else { postcard::from_bytes(rest).map_err(read_err)? };
    Ok((file, tail))
}

/// The feature level snapshot data carries, for a node about to install it.
pub(super) fn refuse_level(level: u32) -> Result<(), StorageError> {
    match crate::features::unsupported(level) {
        Some(why) => Err(read_err(why)),
        None => Ok(()),
    }
}

/// The state a snapshot's data holds, refused if its feature level is not one this binary runs.
pub(super) fn decode_state(data: &[u8]) -> Result<(State, Option<LogId>, StoredMembership), StorageError> {
    let (file, tail) = decode_snapshot(data)?;
    refuse_level(tail.feature_level)?;
    let topo = Topology::decode(file.topology.as_slice()).map_err(read_err)?;
    let state = State::from_topology(topo, Seen::from_rows(file.seen), file.clock_ms)
        .with_access(Tokens::from_records(file.tokens), AuditLog::from_records(file.audit))
        .with_feature_level(tail.feature_level);
    Ok((state, file.last_applied, file.membership))
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    /// Snapshots written before the topology was marked as bytes must read the same, and new
    /// ones must read in builds before it.
    #[test]
    fn topology_as_bytes_encodes_as_the_byte_sequence_it_replaced() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Seq {
            a: u64,
            t: Vec<u8>,
            b: u64,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Bytes {
            a: u64,
            #[serde(with = "serde_bytes")]
            t: Vec<u8>,
            b: u64,
        }
        let t: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let seq = postcard::to_stdvec(&Seq { a: 7, t: t.clone(), b: 9 }).unwrap();
        let bytes = postcard::to_stdvec(&Bytes { a: 7, t: t.clone(), b: 9 }).unwrap();
        assert_eq!(seq, bytes);
        assert_eq!(postcard::from_bytes::<Bytes>(&seq).unwrap(), Bytes { a: 7, t: t.clone(), b: 9 });
        assert_eq!(postcard::from_bytes::<Seq>(&bytes).unwrap(), Seq { a: 7, t, b: 9 });
    }
}
