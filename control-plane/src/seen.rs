//! The table of seen requests: per client id, the last write applied and its answer, so a
//! retried write is answered again instead of applied again. It is part of the replicated
//! state (changed only by applying log entries), so every node holds the same table.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use switchyard_model::grpc::check_request_id;
use switchyard_proto::v1::Change;

use crate::error::ApiError;
use crate::pb::Pb;

/// Most client ids remembered. A new client beyond this evicts the one whose last write is
/// oldest (lowest revision, then lowest id): decided by the log alone, so every node evicts
/// the same one. A client evicted and retrying gets its write applied again, so this must
/// stay far above the number of clients writing at once.
pub const MAX_CLIENTS: usize = 10_000;

/// A write's identity: the client's id and its sequence number for the write. A client
/// keeps one write in flight at a time and reuses the pair on every retry of that write. The
/// command itself is not compared: a pair sent again gets the first answer whatever it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    pub client: String,
    pub seq: u64,
}

impl RequestId {
    /// Checks an id from a client or a peer before it goes near Raft.
    pub fn check(&self) -> Result<(), ApiError> {
        check_request_id(&self.client, self.seq).map_err(|e| ApiError::InvalidArgument(e.to_string()))
    }
}

/// A client's last applied write: its seq and the answer it got, kept to answer a retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub revision: u64,
    /// The outcome as first applied (`WireOutcome` in `state`, spelled out to keep this
    /// module free of it).
    pub outcome: Result<Vec<Pb<Change>>, ApiError>,
}

/// What the table knows of a request.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// Not applied yet: apply it.
    New,
    /// Applied already: answer with this.
    Repeat(&'a Record),
    /// Older than the client's last applied write, whose answer replaced this one's.
    TooOld { recorded: u64 },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Seen {
    rows: BTreeMap<String, Record>,
    /// `(revision, client)` of every row: the eviction order, oldest first.
    by_age: BTreeSet<(u64, String)>,
}

impl Seen {
    /// Rebuilds the table from stored rows (sled or a snapshot).
    pub fn from_rows(rows: impl IntoIterator<Item = (String, Record)>) -> Seen {
        let mut s = Seen::default();
        for (client, rec) in rows {
            s.put(client, rec);
        }
        s.evict_over_bound();
        s
    }

    pub fn rows(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.rows.iter()
    }

    pub fn get(&self, client: &str) -> Option<&Record> {
        self.rows.get(client)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn lookup(&self, id: &RequestId) -> Lookup<'_> {
        match self.rows.get(&id.client) {
            Some(r) if r.seq == id.seq => Lookup::Repeat(r),
            Some(r) if r.seq > id.seq => Lookup::TooOld { recorded: r.seq },
            _ => Lookup::New,
        }
    }

    /// Records the answer to `id`, applied at `revision`; returns the clients evicted to
    /// stay within [`MAX_CLIENTS`].
    pub fn record(&mut self, id: &RequestId, revision: u64, outcome: Result<Vec<Pb<Change>>, ApiError>) -> Vec<String> {
        self.put(id.client.clone(), Record { seq: id.seq, revision, outcome });
        self.evict_over_bound()
    }

    fn put(&mut self, client: String, rec: Record) {
        self.by_age.insert((rec.revision, client.clone()));
        if let Some(old) = self.rows.insert(client.clone(), rec) {
            if old.revision != self.rows[&client].revision {
                self.by_age.remove(&(old.revision, client));
            }
        }
    }

    fn evict_over_bound(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        while self.rows.len() > MAX_CLIENTS {
            let Some((_, client)) = self.by_age.pop_first() else { break };
            self.rows.remove(&client);
            gone.push(client);
        }
        gone
    }
}
