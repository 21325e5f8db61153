//! The Raft log's own write-ahead log: entries appended to segment files, each record framed
//! by its length and a CRC, made durable by one `fdatasync` per group commit.
//!
//! The log lived in sled before. Every flush there sealed sled's write buffer and handed the
//! write to sled's I/O pool, whose idle threads were all woken for it (seven, for one write),
//! and reads went through sled's page cache: about a sixth of a member's CPU under saturating
//! writes. etcd keeps its WAL apart from its store for the same reason. sled keeps the vote
//! and the other small records, which are rarely written.
//!
//! Layout: `wal/<first index, 20 digits>.wal`, records `[len: u32 LE][crc32: u32 LE][payload]`
//! back to back, then zeros written ahead of them ([`PREFILL`]; a length of 0 ends the
//! records). Within a segment indexes are consecutive; a segment starts a new run after a
//! gap (an append past a purge still in progress) or once the last one passes
//! [`SEGMENT_BYTES`]; the segment before is synced before the new one takes a record. So a
//! record cut short in the last segment (past the file's end, or with a sector still zeros)
//! is the tail of a write never synced, and so never acknowledged: opening ends the log there
//! and says so. A record failing its CRC with every sector written, a bad record anywhere
//! else, or a segment with no records before others, is corruption, and the node does not
//! start. Segments also enter the directory in order, and a truncation removes them last
//! first, each for good before the next: so a segment missing between two on disk is damage
//! too, which `LogStore::check` refuses.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::types::LogId;

mod scan;
#[cfg(test)]
use scan::SECTOR;
use scan::{scan, Scan};

/// A segment takes new appends until it is this long.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Zeros written ahead of the records at a time. An `fdatasync` after writes that grow a file
/// must also commit its new size (a journal commit on ext4): 130-150 us here, against 95-110
/// us for the same writes over blocks already written (zeros). `fallocate` is not enough:
/// its blocks are marked unwritten, and writing them is again a metadata change.
const PREFILL: u64 = 4 * 1024 * 1024;
/// Largest record accepted when reading back: larger than any entry Raft can carry (peer
/// messages are capped well below), small enough that a corrupt length cannot ask for more.
const MAX_RECORD: u32 = 256 * 1024 * 1024;
const HEADER: usize = 8;

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// The end offset of each record, and its entry's id.
    ends: Vec<u64>,
    /// The file's length: records, then zeros written ahead of them.
    filled: u64,
    ids: Vec<LogId>,
    /// Written since it was last synced.
    dirty: bool,
}

impl Segment {
    fn len(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// One past the last index held.
    fn next(&self) -> u64 {
        self.first + self.ids.len() as u64
    }

    fn start_of(&self, k: usize) -> u64 {
        if k == 0 {
            0
        } else {
            self.ends[k - 1]
        }
    }
}

struct Inner {
    segments: Vec<Segment>,
    /// A segment was created or removed since the directory was last synced.
    dir_dirty: bool,
}

pub struct Wal {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Held from taking the dirty flags until their fsyncs are done: a second caller (the
    /// flusher beside a vote's flush) must not find nothing dirty and return while the first
    /// caller's fsync of its appends is still running.
    syncing: Mutex<()>,
}

/// What opening found at the end of the log: the bytes of a torn write removed from it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub dropped_bytes: u64,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens (creating it if need be) the log in `dir`, reading every record once. A torn
    /// write at the end of the last segment is removed (see the module doc); a bad record
    /// elsewhere, an entry that is framed right but does not decode, or indexes out of order
    /// are corruption, and an error.
    pub fn open(dir: &Path) -> io::Result<(Wal, Recovered)> {
        std::fs::create_dir_all(dir)?;
        // The directory itself, in the data dir, is as durable as what goes in it.
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Some(stem) = name.strip_suffix(".wal") else {
                return Err(corrupt(&e.path(), "is not a log segment (only NNN.wal files belong in wal/)"));
            };
            let first = stem.parse::<u64>().map_err(|_| corrupt(&e.path(), "is not named by its first index"))?;
            names.push((first, e.path()));
        }
        names.sort();
        let mut segments: Vec<Segment> = Vec::new();
        let mut recovered = Recovered::default();
        let count = names.len();
        for (n, (first, path)) in names.into_iter().enumerate() {
            if let Some(prev) = segments.last() {
                if first < prev.next() {
                    return Err(corrupt(&path, format!("starts at index {first}, inside the segment before it")));
                }
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut seg = Segment {
                first,
                path,
                file: Arc::new(file),
                ends: Vec::new(),
                filled: 0,
                ids: Vec::new(),
                dirty: false,
            };
            let Scan { valid_to, torn_to, file_len, torn } = scan(&mut seg)?;
            seg.filled = file_len;
            if torn_to > valid_to {
                if n + 1 < count {
                    return Err(corrupt(
                        &seg.path,
                        format!(
                            "the record at byte {valid_to} is cut short or fails its CRC, and later segments follow"
                        ),
                    ));
                }
                if !torn {
                    return Err(corrupt(
                        &seg.path,
                        format!(
                            "the record at byte {valid_to} fails its CRC with none of its sectors zero, so it is \
                             damage, not a write cut short by a crash; entries from it on cannot be trusted. \
                             Take this node out of the cluster and add it back with an empty data dir"
                        ),
                    ));
                }
                // Back to zeros, as written ahead: the next append goes there.
                seg.file.write_all_at(&vec![0u8; (torn_to - valid_to) as usize], valid_to)?;
                seg.file.sync_data()?;
                recovered.dropped_bytes = torn_to - valid_to;
            }
            if seg.ids.is_empty() {
                // A segment is synced with its entries before the next one takes any (see
                // `append`), so only the last can be empty after a crash (made, and nothing
                // written to it yet). One before others is damage: a file truncated or zeroed.
                if n + 1 < count {
                    return Err(corrupt(
                        &seg.path,
                        "holds no entries, and later segments follow: a segment is written to disk with its \
                         entries before the next takes any, so this is damage (a file truncated or zeroed), and \
                         entries this node acknowledged may be gone. Take this node out of the cluster and add \
                         it back with an empty data dir",
                    ));
                }
                std::fs::remove_file(&seg.path)?;
                continue;
            }
            // What a killed process wrote is still in the page cache, and is about to count
            // as this node's log (and be acknowledged as such): on disk first.
            seg.file.sync_data()?;
            segments.push(seg);
        }
        sync_dir(dir)?;
        let inner = Mutex::new(Inner { segments, dir_dirty: false });
        Ok((Wal { dir: dir.to_path_buf(), inner, syncing: Mutex::new(()) }, recovered))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends encoded entries (each with its id), in index order, following the last entry
    /// or past a gap. Not durable until [`Self::sync`].
    pub fn append(&self, records: &[(LogId, Vec<u8>)]) -> io::Result<()> {
        let Some((first_id, _)) = records.first() else { return Ok(()) };
        let start = first_id.index;
        // Checked and framed before anything changes, so a refused append leaves no trace.
        let mut buf = Vec::with_capacity(records.iter().map(|(_, r)| r.len() + HEADER).sum());
        let mut sizes = Vec::with_capacity(records.len());
        for (i, (id, payload)) in records.iter().enumerate() {
            if id.index != start + i as u64 {
                return Err(io::Error::other("entries to append are not consecutive"));
            }
            let len = u32::try_from(payload.len()).ok().filter(|l| *l > 0 && *l <= MAX_RECORD);
            let len = len.ok_or_else(|| io::Error::other("a log entry empty or over 256 MiB"))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
            buf.extend_from_slice(payload);
            sizes.push((HEADER + payload.len()) as u64);
        }
        let mut inner = self.inner();
        let need_new = match inner.segments.last() {
            None => true,
            Some(s) if start < s.next() => {
                return Err(io::Error::other(format!(
                    "append at index {start} over entries up to {} not truncated first",
                    s.next() - 1
                )))
            }
            Some(s) => start > s.next() || s.len() >= SEGMENT_BYTES,
        };
        if need_new {
            // The last segment is whole on disk before the next takes a record (module doc),
            // whatever its flag says: a sync that cleared it may still be running.
            if let Some(prev) = inner.segments.last_mut() {
                prev.file.sync_data()?;
            }
            // Segments enter the directory in order: the ones made before are in it for good
            // before this one can be. So a segment missing before one on disk is damage, not a
            // crash's leftover (see `LogStore::check`). Once per segment of 64 MiB, or per gap.
            if inner.dir_dirty {
                sync_dir(&self.dir)?;
                inner.dir_dirty = false;
            }
            let path = self.dir.join(segment_name(start));
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
            inner.segments.push(Segment {
                first: start,
                path,
                file: Arc::new(file),
                ends: Vec::new(),
                filled: 0,
                ids: Vec::new(),
                dirty: true,
            });
            inner.dir_dirty = true;
        }
        let seg = inner.segments.last_mut().expect("a segment to append to");
        seg.dirty = true;
        if let Err(e) = seg.file.write_all_at(&buf, seg.len()) {
            // A segment made for this append and holding nothing goes again.
            if seg.ids.is_empty() {
                let s = inner.segments.pop().expect("the segment just written");
                let _ = std::fs::remove_file(&s.path);
            }
            return Err(e);
        }
        let mut at = seg.len();
        seg.ends.extend(sizes.into_iter().map(|n| {
            at += n;
            at
        }));
        seg.ids.extend(records.iter().map(|(id, _)| *id));
        seg.filled = seg.filled.max(seg.len());
        // Zeros ahead, once half of them are used. Best effort: without them appends still
        // work, at the cost of syncing a growing file.
        if seg.filled - seg.len() < PREFILL / 2
            && seg.file.write_all_at(&vec![0u8; PREFILL as usize], seg.filled).is_ok()
        {
            seg.filled += PREFILL;
        }
        Ok(())
    }

    /// Makes every append so far durable: the segments written since their last sync, then
    /// the directory if segments came or went.
    pub fn sync(&self) -> io::Result<()> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        let (files, dir) = {
            let mut inner = self.inner();
            let files: Vec<Arc<File>> = inner
                .segments
                .iter_mut()
                .filter(|s| s.dirty)
                .map(|s| {
                    s.dirty = false;
                    s.file.clone()
                })
                .collect();
            (files, std::mem::take(&mut inner.dir_dirty))
        };
        let res =
            files.iter().try_for_each(|f| f.sync_data()).and_then(|_| if dir { sync_dir(&self.dir) } else { Ok(()) });
        if res.is_err() {
            // Owe it all again: which of them made it is unknown.
            let mut inner = self.inner();
            inner.segments.iter_mut().for_each(|s| s.dirty = true);
            inner.dir_dirty = true;
        }
        res
    }

    /// Removes the entries from `index` on, durably: entries appended after a truncation
    /// must never sit beside a removed segment come back (its old entries, or one starting
    /// inside theirs, which opening would take for corruption), so segments removed are gone
    /// from the directory before this returns. They go last first, each for good before the
    /// next: a crash part way leaves the log shorter, never with a hole in it.
    pub fn truncate(&self, index: u64) -> io::Result<()> {
        let mut inner = self.inner();
        while inner.segments.last().is_some_and(|s| s.first >= index) {
            let s = inner.segments.pop().expect("checked");
            std::fs::remove_file(&s.path)?;
            if let Err(e) = sync_dir(&self.dir) {
                inner.dir_dirty = true;
                return Err(e);
            }
        }
        if let Some(s) = inner.segments.last_mut() {
            if index < s.next() {
                let k = (index - s.first) as usize;
                let at = s.start_of(k);
                s.file.set_len(at)?;
                // A shrink is metadata `fdatasync` need not write: sync all of it now.
                s.file.sync_all()?;
                s.filled = at;
                s.ends.truncate(k);
                s.ids.truncate(k);
            }
        }
        Ok(())
    }

    /// Removes the segments that hold nothing after `index`, except the last (appends go on
    /// there). Entries up to `index` in the segments kept stay on disk; readers skip them.
    pub fn purge(&self, index: u64) -> io::Result<()> {
        let gone: Vec<Segment> = {
            let mut inner = self.inner();
            let n = inner
                .segments
                .iter()
                .take(inner.segments.len().saturating_sub(1))
                .take_while(|s| s.next() <= index + 1)
                .count();
            if n > 0 {
                inner.dir_dirty = true;
            }
            inner.segments.drain(..n).collect()
        };
        // Unlinked without the lock held: appends and reads go on meanwhile.
        gone.iter().try_for_each(|s| std::fs::remove_file(&s.path))
    }

    pub fn last(&self) -> Option<LogId> {
        self.inner().segments.last().and_then(|s| s.ids.last().copied())
    }

    pub fn is_empty(&self) -> bool {
        self.inner().segments.is_empty()
    }

    /// How many bytes the records from index `first` on take, framing included.
    pub fn bytes_from(&self, first: u64) -> u64 {
        let inner = self.inner();
        let held = inner.segments.iter().filter(|s| s.next() > first);
        held.map(|s| s.len() - s.start_of(first.saturating_sub(s.first) as usize)).sum()
    }

    /// The runs of consecutive indexes held, first to last, in order.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        self.inner().segments.iter().map(|s| (s.first, s.next() - 1)).collect()
    }

    /// The encoded entries from `start` to before `end` that the log holds, stopping once more
    /// than `max_bytes` are taken (at least one always is).
    pub fn read(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<Vec<u8>>> {
        if start >= end {
            return Ok(Vec::new());
        }
        // Where to read, gathered under the lock; the reads themselves after it.
        let mut spans: Vec<(Arc<File>, u64, Vec<u64>)> = Vec::new();
        {
            let inner = self.inner();
            let mut taken = 0usize;
            for s in &inner.segments {
                if s.next() <= start || s.first >= end {
                    continue;
                }
                let from = (start.max(s.first) - s.first) as usize;
                let to = (end.min(s.next()) - s.first) as usize;
                let base = s.start_of(from);
                let mut ends = Vec::new();
                let mut prev = base;
                for &e in &s.ends[from..to] {
                    taken += (e - prev) as usize - HEADER;
                    if taken > max_bytes && !(spans.is_empty() && ends.is_empty()) {
                        break;
                    }
                    ends.push(e);
                    prev = e;
                }
                let full = ends.len() == to - from;
                if !ends.is_empty() {
                    spans.push((s.file.clone(), base, ends));
                }
                if !full {
                    break;
                }
            }
        }
        let mut out = Vec::new();
        for (file, base, ends) in spans {
            let mut buf = vec![0u8; (ends[ends.len() - 1] - base) as usize];
            file.read_exact_at(&mut buf, base)?;
            let mut at = 0usize;
            for e in ends {
                let end = (e - base) as usize;
                out.push(buf[at + HEADER..end].to_vec());
                at = end;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
