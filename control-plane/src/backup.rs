//! Backup files (`switchyard snapshot save`): the state machine at one revision, framed so
//! that a truncated, corrupt or foreign file is refused before anything is restored.
//!
//! ```text
//! "SWYDSNAP" | storage format u32 | revision u64 | cluster id (32 ASCII hex) | length u64 | data | SHA-256
//! ```
//! Integers are big-endian; the SHA-256 covers every byte before it. `data` is the snapshot
//! data a node sends a lagging follower ([`crate::store::sm`]), so a restore installs it the
//! way a follower installs a leader's snapshot.

use ring::digest::{digest, SHA256};

const MAGIC: &[u8; 8] = b"SWYDSNAP";
const HEAD: usize = 8 + 4 + 8 + 32 + 8;
const SUM: usize = 32;

/// A decoded, checked backup.
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    /// The storage format the data is in ([`crate::store::SNAPSHOT_FORMAT`] of the node that saved it).
    pub format: u32,
    pub revision: u64,
    /// The cluster it was saved from.
    pub cluster_id: String,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BackupError {
    #[error("not a Switchyard snapshot file (no SWYDSNAP header)")]
    NotABackup,
    #[error("the file is truncated: {0}")]
    Truncated(String),
    #[error("checksum mismatch: the file is corrupt (SHA-256 {found}, recorded {recorded})")]
    Checksum { found: String, recorded: String },
    #[error("the snapshot is in storage format {found}; this build reads format {want}")]
    Format { found: u32, want: u32 },
    #[error("the snapshot names no valid cluster id")]
    ClusterId,
    #[error("the snapshot's revision {0} is past any a cluster can reach")]
    Revision(u64),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Backup {
    /// The whole file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD + self.data.len() + SUM);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.format.to_be_bytes());
        out.extend_from_slice(&self.revision.to_be_bytes());
        let mut id = [b'0'; 32];
        let n = self.cluster_id.len().min(32);
        id[..n].copy_from_slice(&self.cluster_id.as_bytes()[..n]);
        out.extend_from_slice(&id);
        out.extend_from_slice(&(self.data.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.data);
        let sum = digest(&SHA256, &out);
        out.extend_from_slice(sum.as_ref());
        out
    }

    /// Checks the frame and checksum, then the format this build reads.
    pub fn decode(file: &[u8]) -> Result<Backup, BackupError> {
        if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        if file.len() < HEAD + SUM {
            return Err(BackupError::Truncated(format!("{} bytes, shorter than the header", file.len())));
        }
        let u64_at = |at: usize| u64::from_be_bytes(file[at..at + 8].try_into().expect("8 bytes"));
        let len = u64_at(8 + 4 + 8 + 32);
        let want = ((HEAD + SUM) as u64).saturating_add(len);
        if file.len() as u64 != want {
            return Err(BackupError::Truncated(format!("{} bytes, the header says {want}", file.len())));
        }
        let (body, recorded) = file.split_at(file.len() - SUM);
        let found = digest(&SHA256, body);
        if found.as_ref() != recorded {
            return Err(BackupError::Checksum { found: hex(found.as_ref()), recorded: hex(recorded) });
        }
        let format = u32::from_be_bytes(file[8..12].try_into().expect("4 bytes"));
        if format != crate::store::SNAPSHOT_FORMAT {
            return Err(BackupError::Format { found: format, want: crate::store::SNAPSHOT_FORMAT });
        }
        let cluster_id = String::from_utf8(file[20..52].to_vec()).map_err(|_| BackupError::ClusterId)?;
        if !crate::cluster_id::valid(&cluster_id) {
            return Err(BackupError::ClusterId);
        }
        // A checksum is no signature: the revision is checked as a peer's log index is
        // (openraft adds 1 to it unchecked once it is the restored log's start).
        let revision = u64_at(12);
        if revision > crate::api::peer::sane::LIMIT {
            return Err(BackupError::Revision(revision));
        }
        Ok(Backup { format, revision, cluster_id, data: body[HEAD..].to_vec() })
    }

    /// The file's SHA-256, in hex.
    pub fn checksum(file: &[u8]) -> String {
        hex(&file[file.len().saturating_sub(SUM)..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Backup {
        Backup {
            format: crate::store::SNAPSHOT_FORMAT,
            revision: 42,
            cluster_id: "0123456789abcdef0123456789abcdef".into(),
            data: b"state".to_vec(),
        }
    }

    #[test]
    fn round_trips_and_refuses_every_kind_of_damage() {
        let file = sample().encode();
        assert_eq!(Backup::decode(&file).unwrap(), sample());
        assert_eq!(Backup::checksum(&file).len(), 64);

        let mut flipped = file.clone();
        flipped[HEAD + 1] ^= 1;
        assert!(matches!(Backup::decode(&flipped), Err(BackupError::Checksum { .. })));
        assert!(matches!(Backup::decode(&file[..file.len() - 1]), Err(BackupError::Truncated(_))));
        assert_eq!(Backup::decode(b"hello world"), Err(BackupError::NotABackup));
        let old = Backup { format: 2, ..sample() }.encode();
        assert_eq!(Backup::decode(&old), Err(BackupError::Format { found: 2, want: crate::store::SNAPSHOT_FORMAT }));
        // Format 5 moved the log, not the snapshot: backups are still format 4's.
        let five = Backup { format: 5, ..sample() }.encode();
        assert_eq!(Backup::decode(&five), Err(BackupError::Format { found: 5, want: 4 }));
        // Made to the format, checksum and all: a length that would overflow, a revision
        // no cluster reaches.
        let mut huge = file.clone();
        huge[HEAD - 8..HEAD].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(Backup::decode(&huge), Err(BackupError::Truncated(_))));
        let far = Backup { revision: u64::MAX, ..sample() }.encode();
        assert_eq!(Backup::decode(&far), Err(BackupError::Revision(u64::MAX)));
    }
}
