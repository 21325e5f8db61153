//! Reading a segment back at start: its records checked, and what follows the last whole
//! one judged as a write a crash cut short or as damage.

use std::io::{self, Read};

use super::{corrupt, Segment, HEADER, MAX_RECORD};
use crate::types::Entry;

/// What [`scan`] found in a segment.
pub(super) struct Scan {
    /// How far its records are whole.
    pub valid_to: u64,
    /// How far past that the file holds anything but zeros.
    pub torn_to: u64,
    pub file_len: u64,
    /// Whether what follows the whole records can be a write cut short by a crash.
    pub torn: bool,
}

/// Disks write sectors whole; a crash during a write leaves each of its sectors either as
/// written or as before, and before is zeros here ([`PREFILL`]), or past the file's end.
pub(super) const SECTOR: usize = 512;

/// Whether bytes `from..to` of a segment (`to` may run past its end) look like a write a crash
/// cut short, as etcd's WAL judges it: past the end of the file, or a sector of it still all
/// zeros. A record that fails its CRC with every sector written was damaged after the fact.
fn cut_short(data: &[u8], from: usize, to: usize) -> bool {
    if to > data.len() {
        return true;
    }
    let mut at = from;
    while at < to {
        let next = ((at / SECTOR + 1) * SECTOR).min(to);
        if data[at..next].iter().all(|b| *b == 0) {
            return true;
        }
        at = next;
    }
    false
}

/// Reads a segment's records into `seg`, checking framing, CRCs and index order.
pub(super) fn scan(seg: &mut Segment) -> io::Result<Scan> {
    let mut data = Vec::new();
    (&*seg.file).read_to_end(&mut data)?;
    let mut at = 0usize;
    // A zero length (or no room for a header) ends the records; whatever follows is a write
    // cut short, its first sector not on disk.
    let mut torn = true;
    while data.len() - at >= HEADER {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
        if len == 0 {
            break;
        }
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
        let end = at + HEADER + len as usize;
        if len > MAX_RECORD {
            // Judged by the header alone: the length says nothing of where the record ends.
            torn = cut_short(&data, at, at + HEADER);
            break;
        }
        if end > data.len() || crc32fast::hash(&data[at + HEADER..end]) != crc {
            torn = cut_short(&data, at, end);
            break;
        }
        let entry: Entry = postcard::from_bytes(&data[at + HEADER..end]).map_err(|e| {
            corrupt(&seg.path, format!("the entry at byte {at} passes its CRC but does not decode: {e}"))
        })?;
        let want = seg.next();
        if entry.log_id.index != want {
            return Err(corrupt(&seg.path, format!("holds index {} where {want} belongs", entry.log_id.index)));
        }
        seg.ids.push(entry.log_id);
        seg.ends.push(end as u64);
        at = end;
    }
    let torn_to = data.iter().rposition(|b| *b != 0).map_or(at, |p| (p + 1).max(at));
    Ok(Scan { valid_to: at as u64, torn_to: torn_to as u64, file_len: data.len() as u64, torn })
}
