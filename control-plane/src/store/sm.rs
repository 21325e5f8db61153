//! The state machine: in memory, durable through its snapshots, and the live copy the APIs
//! read and watchers follow.
//!
//! Applying an entry writes nothing to disk. The log is flushed before anything is
//! acknowledged, and Raft never purges it past the last stored snapshot, so the state is
//! always the last snapshot plus the committed entries after it: at start openraft re-applies
//! those from the log. Writing every entity, seen-table row and audit record to sled on every
//! apply, on every node, cost about a third of the control plane's write throughput.
//! Snapshots live in a file of their own ([`snapfile`]). Tree `sm` holds the state machine row
//! by row as builds before storage format 4 wrote it ([`rows`]); it is read, never written, so
//! such a data dir starts where it stopped.

mod data;
mod rows;
mod snapfile;

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend};
use prost::Message;
use switchyard_model::topology::put;
use switchyard_model::Model;
use switchyard_proto::v1::{change, Change};
use tokio::sync::broadcast;

pub use self::data::rebase_snapshot;
use self::data::{decode_state, encode_snapshot, refuse_level, SnapshotFile, SnapshotTail};
use self::rows::*;
use self::snapfile::SnapshotStore;
use super::{read_err, write_err};
use crate::audit::{AuditLog, AuditRecord};
use crate::auth::tokens::{TokenRecord, Tokens};
use crate::metrics::Metrics;
use crate::pb::Pb;
use crate::seen::{Record, Seen};
use crate::state::{Command, State};
use crate::types::{Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// How many applied change sets a node keeps in memory so a watcher can resume without a
/// full resend.
pub const HISTORY: usize = 16_384;

/// What watchers are told.
#[derive(Clone, Debug)]
pub enum Notice {
    /// The changes applied at a revision.
    Changes(u64, Arc<Vec<Change>>),
    /// The state was replaced (snapshot installed): resend it whole.
    Reset,
}

/// The applied state as of `revision`, plus the recent history of changes.
pub struct Live {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    history: VecDeque<(u64, Arc<Vec<Change>>)>,
    /// Every change with a revision above this is in `history`.
    history_start: u64,
}

impl Live {
    pub fn revision(&self) -> u64 {
        self.last_applied.map_or(0, |l| l.index)
    }

    /// The change sets after `from`, if this node still has all of them.
    pub fn changes_since(&self, from: u64) -> Option<Vec<(u64, Arc<Vec<Change>>)>> {
        if from < self.history_start || from > self.revision() {
            return None;
        }
        Some(self.history.iter().filter(|(r, _)| *r > from).cloned().collect())
    }

    /// The last `n` change sets this node applied, oldest first.
    pub fn recent(&self, n: usize) -> Vec<(u64, Arc<Vec<Change>>)> {
        self.history.iter().skip(self.history.len().saturating_sub(n)).cloned().collect()
    }
}

impl Live {
    /// A copy of the state for a snapshot, cheap enough to take under the state lock: the
    /// model's maps share their nodes with the live ones, and the seen table, tokens and
    /// audit log are bounded. Encoding it ([`SnapshotView::encode`]) is the slow part, and
    /// runs with the lock released.
    pub fn snapshot_view(&self) -> SnapshotView {
        SnapshotView { state: self.state.clone(), last_applied: self.last_applied, membership: self.membership.clone() }
    }
}

/// The state at one revision, for encoding as snapshot data off the state lock.
pub struct SnapshotView {
    state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

impl SnapshotView {
    pub fn revision(&self) -> u64 {
        self.last_applied.map_or(0, |l| l.index)
    }

    /// The state as a snapshot's data (what Raft sends a lagging follower, and what a backup
    /// file carries). CPU-bound and proportional to the state: call it from a blocking
    /// thread, not from an async task.
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        encode_snapshot(
            &SnapshotFile {
                last_applied: self.last_applied,
                membership: self.membership.clone(),
                topology: self.state.encode_topology(self.revision()),
                seen: self.state.seen().rows().map(|(c, r)| (c.clone(), r.clone())).collect(),
                clock_ms: self.state.clock_ms(),
                tokens: self.state.tokens().iter().cloned().collect(),
                audit: self.state.audit().records().cloned().collect(),
            },
            &SnapshotTail { feature_level: self.state.feature_level() },
        )
    }
}

/// Runs CPU- or disk-bound snapshot work (encoding, decoding, the file) on a thread of its
/// own, at a lower CPU priority, so the node's runtime (one thread: the Raft core, the state
/// machine and the gRPC services) goes on meanwhile and is not starved by it. Encoding a state
/// of a million backends takes seconds of CPU, on every node at about the same time.
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("snapshot".into())
        .spawn(move || {
            // Niceness is per thread on Linux. Best effort: at worst it runs at normal priority.
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), SNAPSHOT_NICE);
            let _ = tx.send(work());
        })
        .map_err(|e| write_err(format!("cannot start a snapshot thread: {e}")))?;
    rx.await.map_err(|_| write_err("snapshot thread failed"))?
}

/// The snapshot thread's niceness: a tenth of the CPU weight of the node's runtime thread, so
/// the runtime preempts it, while it still progresses on a busy machine.
const SNAPSHOT_NICE: i32 = 10;

/// Shared between the state machine (writer) and the APIs (readers, watchers).
pub struct Shared {
    live: RwLock<Live>,
    tx: broadcast::Sender<Notice>,
}

impl Shared {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A consistent view and a subscription that starts right after it.
    pub fn subscribe(&self) -> (std::sync::RwLockReadGuard<'_, Live>, broadcast::Receiver<Notice>) {
        let live = self.read();
        let rx = self.tx.subscribe();
        (live, rx)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Live> {
        self.live.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// openraft's view of the state machine.
pub struct StateMachineStore {
    shared: Arc<Shared>,
    sm: sled::Tree,
    snaps: SnapshotStore,
    metrics: Arc<Metrics>,
    /// How far this node's log is durable: nothing is applied past it (`None`: tools and
    /// tests of the state machine alone).
    durable: Option<crate::store::log::Durable>,
}

impl StateMachineStore {
    /// Applies an entry only once this node's log holds it durably: a leader counts its own
    /// copy before it is (see [`crate::store::log::Durable`]), and applying is what answers
    /// clients.
    pub fn with_durable(mut self, durable: crate::store::log::Durable) -> Self {
        self.durable = Some(durable);
        self
    }

    /// Keeps the log from being purged past the snapshot durably stored here (see
    /// [`crate::store::log::PurgeGate`]).
    pub fn with_purge_gate(mut self, gate: crate::store::log::PurgeGate) -> Result<Self, StorageError> {
        self.snaps.gate_purges(gate)?;
        Ok(self)
    }

    /// Counts snapshot builds and installs into a node's metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Loads the state machine: the stored snapshot, or the rows an older build wrote when
    /// they are newer. A corrupt entry is an error, not a panic.
    pub fn open(db: sled::Db, dir: &std::path::Path) -> Result<Self, StorageError> {
        let sm = db.open_tree("sm").map_err(read_err)?;
        let snaps = SnapshotStore::open(dir, &db)?;
        let (tx, _) = broadcast::channel(4096);
        let mut me = StateMachineStore {
            shared: Arc::new(Shared {
                live: RwLock::new(Live {
                    state: State::default(),
                    last_applied: None,
                    membership: StoredMembership::default(),
                    history: VecDeque::new(),
                    history_start: 0,
                }),
                tx,
            }),
            sm,
            snaps,
            metrics: Arc::default(),
            durable: None,
        };
        // An empty tree reads as the empty state, at no index.
        let (state, last_applied, membership) = load_rows(&me.sm)?;
        match me.snaps.read()? {
            Some((meta, data)) if meta.last_log_id >= last_applied => {
                me.restore(&data)?;
                if !me.sm.is_empty() {
                    // The snapshot covers what the rows held: they are not needed again.
                    me.sm.clear().map_err(write_err)?;
                }
            }
            _ => me.replace(state, last_applied, membership),
        }
        Ok(me)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Replaces the state machine with a snapshot's contents.
    fn restore(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let (state, last_applied, membership) = decode_state(data)?;
        self.replace(state, last_applied, membership);
        Ok(())
    }

    /// Replaces the live state; watchers resend it whole.
    fn replace(&mut self, state: State, last_applied: Option<LogId>, membership: StoredMembership) {
        let mut live = self.shared.write();
        live.state = state;
        live.last_applied = last_applied;
        live.membership = membership;
        live.history.clear();
        live.history_start = live.revision();
        let _ = self.shared.tx.send(Notice::Reset);
    }
}

/// The state machine as rows in tree `sm` (written by builds before storage format 4).
fn load_rows(sm: &sled::Tree) -> Result<(State, Option<LogId>, StoredMembership), StorageError> {
    let mut model = Model::default();
    let mut last_applied = None;
    let mut membership = StoredMembership::default();
    let mut seen = Vec::new();
    let mut clock_ms = 0;
    let mut tokens = Vec::new();
    let mut audit = Vec::new();
    let mut feature_level = 0;
    for kv in sm.iter() {
        let (k, v) = kv.map_err(read_err)?;
        let bad = |e: &dyn std::fmt::Display| read_err(format!("state machine key {k:?}: {e}"));
        match k.first() {
            Some(b'p') => {
                let p = switchyard_proto::v1::Pool::decode(&*v).map_err(|e| bad(&e))?;
                model.apply(&put(change::Kind::PoolPut(p)));
            }
            Some(b'b') => {
                let b = switchyard_proto::v1::Backend::decode(&*v).map_err(|e| bad(&e))?;
                model.apply(&put(change::Kind::BackendPut(b)));
            }
            Some(b'r') => {
                let r = switchyard_proto::v1::Route::decode(&*v).map_err(|e| bad(&e))?;
                model.apply(&put(change::Kind::RoutePut(r)));
            }
            Some(b's') => {
                let s = switchyard_proto::v1::SessionBinding::decode(&*v).map_err(|e| bad(&e))?;
                model.apply(&put(change::Kind::SessionPut(s)));
            }
            Some(b't') => tokens.push(postcard::from_bytes::<TokenRecord>(&v).map_err(|e| bad(&e))?),
            Some(b'a') => audit.push(postcard::from_bytes::<AuditRecord>(&v).map_err(|e| bad(&e))?),
            Some(b'c') => {
                let name = k.get(2..).ok_or_else(|| bad(&"too short for a client's key"))?;
                let client = std::str::from_utf8(name).map_err(|e| bad(&e))?.to_string();
                seen.push((client, postcard::from_bytes::<Record>(&v).map_err(|e| bad(&e))?));
            }
            _ if &*k == SETTINGS => {
                let s = switchyard_proto::v1::Settings::decode(&*v).map_err(|e| bad(&e))?;
                model.apply(&put(change::Kind::SettingsPut(s)));
            }
            _ if &*k == AFFINITY_SECRET => {
                model.apply(&put(change::Kind::AffinitySecret(v.to_vec())));
            }
            _ if &*k == LAST_APPLIED => last_applied = postcard::from_bytes(&v).map_err(|e| bad(&e))?,
            _ if &*k == MEMBERSHIP => membership = postcard::from_bytes(&v).map_err(|e| bad(&e))?,
            _ if &*k == CLOCK => clock_ms = postcard::from_bytes(&v).map_err(|e| bad(&e))?,
            _ if &*k == FEATURE_LEVEL => feature_level = postcard::from_bytes(&v).map_err(|e| bad(&e))?,
            _ => return Err(bad(&"unknown key")),
        }
    }
    let state = State::from_model(model, Seen::from_rows(seen), clock_ms)
        .with_access(Tokens::from_records(tokens), AuditLog::from_records(audit))
        .with_feature_level(feature_level);
    Ok((state, last_applied, membership))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotSource {
    /// Builds from the live state, but never replaces a stored snapshot at least as new: one
    /// installed from the leader while this build ran covers entries this node may already
    /// have purged from its log, so overwriting it with an older one would leave followers
    /// sent a snapshot behind the purge point, over and over. That stored one is returned
    /// instead (rebuilding from the live state would do too, but the stored one is at hand).
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let view = self.shared.read().snapshot_view();
        let (last_applied, membership) = (view.last_applied, view.membership.clone());
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{nanos}", l.leader_id, l.index),
            None => format!("none-{nanos}"),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        let snaps = self.snaps.clone();
        let built = off_runtime(move || {
            let data = view.encode()?;
            let newer = snaps.store_unless_newer(&meta, &data)?;
            Ok(match newer {
                Some((stored, data)) => (stored, data, false),
                None => (meta, data, true),
            })
        })
        .await?;
        let (meta, data, fresh) = built;
        if fresh {
            self.metrics.snapshot_builds.inc();
        }
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

/// What the snapshot builder needs; built while openraft has the state machine to itself.
pub struct SnapshotSource {
    shared: Arc<Shared>,
    snaps: SnapshotStore,
    metrics: Arc<Metrics>,
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotSource;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let live = self.shared.read();
        Ok((live.last_applied, live.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // A level this binary cannot run stops it before anything here is applied, and so
        // before the entries that need that level, which it may not even decode (`Command`).
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(d), Some(last)) = (&self.durable, entries.last()) {
            d.reached(last.log_id.index).await;
        }
        for e in &entries {
            if let EntryPayload::Normal(cmds) = &e.payload {
                for p in cmds.0.iter() {
                    let cmd = match &p.cmd {
                        Command::Guarded { cmd, .. } => &**cmd,
                        cmd => cmd,
                    };
                    if let Command::SetFeatureLevel(n) = *cmd {
                        refuse_level(n)?;
                    }
                }
            }
        }
        let mut replies = Vec::new();
        let mut notices = Vec::new();
        let mut live = self.shared.write();
        for e in entries {
            live.last_applied = Some(e.log_id);
            let rev = e.log_id.index;
            match e.payload {
                EntryPayload::Blank => replies.push(Response::default()),
                EntryPayload::Normal(cmds) => {
                    let mut outcomes = Vec::with_capacity(cmds.0.len());
                    let mut all = Vec::new();
                    for p in cmds.0.iter() {
                        let a = live.state.apply_proposed(rev, p);
                        if let (true, Ok(changes)) = (a.fresh, &a.written.1) {
                            all.extend(changes.iter().map(|Pb(c)| c.clone()));
                        }
                        outcomes.push(a.written);
                    }
                    if !all.is_empty() {
                        notices.push((rev, Arc::new(all)));
                    }
                    replies.push(Response(outcomes));
                }
                EntryPayload::Membership(m) => {
                    live.membership = StoredMembership::new(Some(e.log_id), m);
                    replies.push(Response::default());
                }
            }
        }
        for (rev, changes) in notices {
            if live.history.len() == HISTORY {
                if let Some((r, _)) = live.history.pop_front() {
                    live.history_start = r;
                }
            }
            live.history.push_back((rev, changes.clone()));
            let _ = self.shared.tx.send(Notice::Changes(rev, changes));
        }
        if let Some(l) = live.last_applied {
            self.metrics.note_applied(l.index, crate::clock::now_ms());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotSource { shared: self.shared.clone(), snaps: self.snaps.clone(), metrics: self.metrics.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let (meta, snaps) = (meta.clone(), self.snaps.clone());
        // Decoded (at a level this binary runs) before anything is replaced, and stored, on a
        // blocking thread: both take time in proportion to the state.
        let (state, last_applied, membership) = off_runtime(move || {
            let decoded = decode_state(&data)?;
            consistent(&meta, &decoded.1, &decoded.2)?;
            snaps.store(&meta, &data)?;
            Ok(decoded)
        })
        .await?;
        self.replace(state, last_applied, membership);
        self.metrics.snapshot_installs.inc();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snaps = self.snaps.clone();
        let stored = off_runtime(move || snaps.read()).await?;
        Ok(stored.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Snapshot data must be at the log id and membership its meta names: openraft goes on from
/// the meta (purging the log up to it, answering votes with it) while the state is the data's,
/// so a mismatch would leave this node's state apart from every other node's with no error.
/// Every snapshot a node builds or restores agrees; one that does not came from a faulty or
/// hostile peer, and this node stops rather than install it.
fn consistent(
    meta: &SnapshotMeta,
    last_applied: &Option<LogId>,
    membership: &StoredMembership,
) -> Result<(), StorageError> {
    if meta.last_log_id != *last_applied || meta.last_membership != *membership {
        return Err(read_err(format!(
            "snapshot {:?} holds a state at {last_applied:?} with membership {membership:?}, but its meta \
             says {:?} with {:?}",
            meta.snapshot_id, meta.last_log_id, meta.last_membership
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
