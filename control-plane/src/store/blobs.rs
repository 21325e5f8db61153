//! sled's blob files, made durable with the log that points to them.
//!
//! sled writes a message larger than a quarter of its 512 KiB segment to a file of its own
//! under `blobs/` and puts only a pointer into its log: a large log entry, and more often a
//! node of the log's tree (up to 17 entries) rewritten whole once its entries are a few KB
//! each, as batched writes and binding reports make them. `Db::flush` fsyncs the log, never
//! these files or the directory that names them, so after a power loss the log could point
//! to a blob that never reached the disk and sled would drop the entries in it, acknowledged
//! or not. [`Blobs::sync`] fsyncs every blob written since it last ran; the flusher runs it
//! before and after each `Db::flush`, and counts nothing durable until both are done.
//!
//! Since storage format 5 the log is in its own WAL and sled holds only small records (the
//! vote, ids, purge points), so sled is not expected to write blobs any more; this stays as
//! the guard for any it does write, at the cost of one empty `read` per flush of sled.
//!
//! New blobs are found with inotify (`IN_CLOSE_WRITE`: sled has written the whole file), so a
//! flush with no new blob costs one `read` that finds nothing, whatever the number of blobs.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fd::OwnedFd;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

/// Makes a data dir's blob files durable; cheap to clone. [`Blobs::none`] for a store that is
/// only read, or a test's.
#[derive(Clone, Default)]
pub struct Blobs(Option<Arc<Mutex<Watch>>>);

struct Watch {
    dir: PathBuf,
    fd: OwnedFd,
    buf: Vec<MaybeUninit<u8>>,
    /// A sync failed after it had taken events off the queue: their names are gone, so the
    /// next one syncs every blob.
    owe_all: bool,
}

impl Blobs {
    /// Nothing to sync.
    pub fn none() -> Blobs {
        Blobs(None)
    }

    /// Starts watching `data_dir`'s `blobs/` (sled makes it when it opens the database) and
    /// syncs the blobs already there, which a crash of the last run may have left unsynced.
    pub fn watch(data_dir: &Path) -> io::Result<Blobs> {
        let dir = data_dir.join("blobs");
        std::fs::create_dir_all(&dir)?;
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).map_err(|e| match e {
            Errno::MFILE => io::Error::other(
                "no inotify instance left for this user (raise the sysctl fs.inotify.max_user_instances)",
            ),
            e => e.into(),
        })?;
        // Watching starts before the listing below, so no blob falls between the two.
        inotify::add_watch(&fd, &dir, WatchFlags::CLOSE_WRITE | WatchFlags::MOVED_TO).map_err(|e| match e {
            Errno::NOSPC => {
                io::Error::other("no inotify watch left for this user (raise the sysctl fs.inotify.max_user_watches)")
            }
            e => e.into(),
        })?;
        let mut w = Watch { dir, fd, buf: vec![MaybeUninit::uninit(); 16 << 10], owe_all: false };
        w.drain()?;
        w.sync_all()?;
        // The directory's own entry in the data dir.
        File::open(data_dir)?.sync_all()?;
        Ok(Blobs(Some(Arc::new(Mutex::new(w)))))
    }

    /// Fsyncs every blob written since the last call, then the directory if there was one;
    /// returns how many.
    pub fn sync(&self) -> io::Result<u64> {
        let Some(w) = &self.0 else { return Ok(0) };
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        let res = w.sync_new();
        w.owe_all = res.is_err();
        res
    }
}

enum Drained {
    Names(Vec<PathBuf>),
    /// The kernel dropped events: any blob may be new.
    Overflowed,
}

impl Watch {
    fn sync_new(&mut self) -> io::Result<u64> {
        let drained = self.drain()?;
        match drained {
            _ if self.owe_all => self.sync_all(),
            Drained::Overflowed => self.sync_all(),
            Drained::Names(names) if names.is_empty() => Ok(0),
            Drained::Names(names) => {
                for n in &names {
                    sync_file(&self.dir.join(n))?;
                }
                File::open(&self.dir)?.sync_all()?;
                Ok(names.len() as u64)
            }
        }
    }

    fn drain(&mut self) -> io::Result<Drained> {
        let mut names = Vec::new();
        let mut overflowed = false;
        let mut events = inotify::Reader::new(&self.fd, &mut self.buf);
        loop {
            match events.next() {
                Ok(e) if e.events().contains(ReadFlags::QUEUE_OVERFLOW) => overflowed = true,
                // The directory was removed or unmounted under the node: nothing watches it.
                Ok(e) if e.events().intersects(ReadFlags::IGNORED | ReadFlags::UNMOUNT) => {
                    return Err(io::Error::other(format!("{} is no longer watched", self.dir.display())));
                }
                Ok(e) => {
                    if let Some(name) = e.file_name() {
                        names.push(PathBuf::from(OsStr::from_bytes(name.to_bytes())));
                    }
                }
                Err(Errno::WOULDBLOCK) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(if overflowed { Drained::Overflowed } else { Drained::Names(names) })
    }

    fn sync_all(&self) -> io::Result<u64> {
        let mut n = 0;
        for e in std::fs::read_dir(&self.dir)? {
            sync_file(&e?.path())?;
            n += 1;
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(n)
    }
}

/// A blob sled removed meanwhile (its page was rewritten) needs nothing.
fn sync_file(path: &Path) -> io::Result<()> {
    match File::open(path) {
        Ok(f) => f.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sled does: write a file under `blobs/` and close it.
    fn write_blob(data_dir: &Path, name: &str) {
        std::fs::write(data_dir.join("blobs").join(name), vec![7u8; 200 << 10]).unwrap();
    }

    #[test]
    fn blobs_are_found_as_they_are_written_and_each_is_synced_once() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("blobs")).unwrap();
        write_blob(tmp.path(), "1");
        let b = Blobs::watch(tmp.path()).unwrap();
        let take = |b: &Blobs| {
            let w = b.0.as_ref().unwrap();
            let mut w = w.lock().unwrap();
            match w.drain().unwrap() {
                Drained::Names(n) => n,
                Drained::Overflowed => panic!("overflow"),
            }
        };
        assert!(take(&b).is_empty(), "a blob there before the watch is synced when it starts");
        write_blob(tmp.path(), "2");
        write_blob(tmp.path(), "3");
        assert_eq!(take(&b), vec![PathBuf::from("2"), PathBuf::from("3")]);
        assert!(take(&b).is_empty());
        write_blob(tmp.path(), "4");
        std::fs::remove_file(tmp.path().join("blobs").join("4")).unwrap();
        b.sync().unwrap();
        assert!(take(&b).is_empty(), "sync took the events, and a blob gone meanwhile is no error");
    }

    /// sled's own threshold, checked against the real thing: a large enough value in a tree
    /// lands in `blobs/`, which is what makes this module necessary.
    #[test]
    fn sled_writes_large_values_to_blob_files() {
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(tmp.path()).flush_every_ms(None).open().unwrap();
        let b = Blobs::watch(tmp.path()).unwrap();
        db.open_tree("log").unwrap().insert(1u64.to_be_bytes(), vec![1u8; 200 << 10]).unwrap();
        let w = b.0.as_ref().unwrap();
        let names = match w.lock().unwrap().drain().unwrap() {
            Drained::Names(n) => n,
            Drained::Overflowed => panic!("overflow"),
        };
        assert_eq!(names.len(), 1, "one blob for one large value: {names:?}");
        b.sync().unwrap();
        db.flush().unwrap();
    }
}
