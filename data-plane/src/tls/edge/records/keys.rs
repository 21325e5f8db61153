//! Traffic keys, and the few of them each worker thread keeps ready.
//!
//! An idle connection holds only its secrets (see [`super`]); a ring key is built from them
//! to move records. Building one is an AES key expansion and a GHASH table, about 0.27 us of
//! the 2 us of user time a relayed wss message costs. So each worker keeps the built keys of
//! the directions that moved records last, in a small direct-mapped table: a busy connection
//! finds its keys there, and what the table holds is bounded per thread, not per connection,
//! so idle connections stay as small as they were. Proxy workers run one runtime per thread,
//! so a connection's task, and its keys, stay on one thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{LessSafeKey, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};
use rustls::{AlertDescription, ConnectionTrafficSecrets};

use super::{fail, Fail};

/// Built keys a worker keeps: 256 of about 600 bytes, 150 KiB per thread at most.
const KEPT: usize = 256;

/// Every [`Direction`] gets an id of its own, never reused: a kept key is found by it, so a
/// key built for other secrets (another connection, the same one before a key update) is
/// never taken for this one's.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A slot of the table: the id of the direction whose key it holds, and the key.
type Slot = Option<(u64, Box<Keyed>)>;

thread_local! {
    static KEPT_KEYS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

/// One direction's traffic keys, as rustls derived them, and its next sequence number.
pub struct Direction {
    id: u64,
    secrets: ConnectionTrafficSecrets,
    pub seq: u64,
}

/// A direction's key, built and ready to seal or open records.
pub struct Keyed {
    pub key: LessSafeKey,
    pub iv: [u8; 12],
    pub gcm: bool,
}

/// A built key taken from this thread's table for one read or write; it goes back in when
/// dropped, so the next read or write of the same direction finds it.
pub struct Lease {
    id: u64,
    key: Option<Box<Keyed>>,
}

impl std::ops::Deref for Lease {
    type Target = Keyed;
    fn deref(&self) -> &Keyed {
        self.key.as_ref().expect("a lease holds its key until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        // At thread exit the table may be gone: the key is then simply dropped.
        let _ = KEPT_KEYS.try_with(|t| {
            if let Ok(mut t) = t.try_borrow_mut() {
                if t.is_empty() {
                    t.resize_with(KEPT, || None);
                }
                t[slot(self.id)] = Some((self.id, key));
            }
        });
    }
}

fn slot(id: u64) -> usize {
    (id % KEPT as u64) as usize
}

impl Direction {
    pub fn new(secrets: ConnectionTrafficSecrets, seq: u64) -> Self {
        Self { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), secrets, seq }
    }

    /// This direction's key: the one this thread kept, or one built now.
    pub fn lease(&self) -> Result<Lease, Fail> {
        let kept = KEPT_KEYS
            .try_with(|t| {
                let mut t = t.try_borrow_mut().ok()?;
                let s = t.get_mut(slot(self.id))?;
                match s {
                    Some((id, _)) if *id == self.id => s.take().map(|(_, k)| k),
                    _ => None,
                }
            })
            .ok()
            .flatten();
        let key = match kept {
            Some(k) => k,
            None => Box::new(self.build()?),
        };
        Ok(Lease { id: self.id, key: Some(key) })
    }

    /// Drops the key this thread kept for this direction, if any: its connection is over.
    pub fn forget(&self) {
        let _ = KEPT_KEYS.try_with(|t| {
            if let Ok(mut t) = t.try_borrow_mut() {
                if let Some(s) = t.get_mut(slot(self.id)) {
                    if matches!(s, Some((id, _)) if *id == self.id) {
                        *s = None;
                    }
                }
            }
        });
    }

    fn build(&self) -> Result<Keyed, Fail> {
        let (alg, key, iv, gcm) = match &self.secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv, false),
            _ => return Err(fail(AlertDescription::InternalError, "unsupported TLS cipher suite")),
        };
        let bad = || fail(AlertDescription::InternalError, "unusable TLS traffic key");
        let key = LessSafeKey::new(UnboundKey::new(alg, key.as_ref()).map_err(|_| bad())?);
        let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| bad())?;
        Ok(Keyed { key, iv, gcm })
    }
}

/// Whether this thread keeps a built key for the direction with id `of`: for the tests.
#[cfg(test)]
pub fn is_kept(of: u64) -> bool {
    KEPT_KEYS.with(|t| matches!(t.borrow().get(slot(of)), Some(Some((id, _))) if *id == of))
}

#[cfg(test)]
impl Direction {
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// A direction whose id falls in the same slot as `d`'s: for the tests.
#[cfg(test)]
pub fn same_slot(d: &Direction, secrets: ConnectionTrafficSecrets) -> Direction {
    let base = NEXT_ID.fetch_add(2 * KEPT as u64, Ordering::Relaxed);
    let id = base + (d.id + KEPT as u64 - base % KEPT as u64) % KEPT as u64;
    Direction { id, secrets, seq: 0 }
}
