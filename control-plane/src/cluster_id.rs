//! The cluster id: minted by the node that initializes a cluster, kept in the `meta` tree,
//! learnt by every other member from the first leader append it accepts, and carried in every
//! peer RPC so that a node never mixes with another cluster's nodes or data.

use std::sync::{Arc, RwLock};

use tonic::metadata::MetadataValue;
use tonic::Status;

/// The gRPC metadata key peer calls carry the sender's cluster id in.
pub const HEADER: &str = switchyard_model::grpc::CLUSTER_ID_KEY;
const KEY: &str = "cluster_id";
/// The cluster a restored cluster's backup came from (see [`crate::restore`]).
const RESTORED_FROM: &str = "restored_from";
/// The metadata key a watch reply names that cluster in, so a proxy that followed it knows
/// this one replaces it and resyncs whole.
pub const RESTORED_FROM_HEADER: &str = "switchyard-restored-from";

/// This node's cluster id, if it has one yet; shared by the peer client and service.
#[derive(Clone)]
pub struct ClusterId {
    meta: sled::Tree,
    cur: Arc<RwLock<Option<String>>>,
    restored_from: Option<String>,
}

/// 32 lowercase hex digits (128 bits).
pub fn valid(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A new random id.
pub fn mint() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl ClusterId {
    /// Reads the id stored in `db`'s `meta` tree, if any.
    pub fn open(db: &sled::Db) -> Result<ClusterId, String> {
        let meta = db.open_tree("meta").map_err(|e| e.to_string())?;
        let cur = match meta.get(KEY).map_err(|e| e.to_string())? {
            None => None,
            Some(v) => {
                let s = String::from_utf8(v.to_vec()).ok().filter(|s| valid(s));
                Some(s.ok_or("corrupt cluster id")?)
            }
        };
        let restored_from = meta
            .get(RESTORED_FROM)
            .map_err(|e| e.to_string())?
            .and_then(|v| String::from_utf8(v.to_vec()).ok())
            .filter(|s| valid(s));
        Ok(ClusterId { meta, cur: Arc::new(RwLock::new(cur)), restored_from })
    }

    /// Records, in a data dir being restored, the cluster its backup came from.
    pub fn record_restored_from(db: &sled::Db, old: &str) -> Result<(), String> {
        let meta = db.open_tree("meta").map_err(|e| e.to_string())?;
        meta.insert(RESTORED_FROM, old.as_bytes()).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The cluster this one was restored from, if it was.
    pub fn restored_from(&self) -> Option<&str> {
        self.restored_from.as_deref()
    }

    /// [`Self::check`] for a watch: a watcher that followed the cluster this one was restored
    /// from is let in, and `true` says it must be sent the state whole (its revision belongs
    /// to the old cluster).
    pub fn check_watch<T>(&self, req: &tonic::Request<T>) -> Result<bool, Status> {
        let theirs = req.metadata().get(HEADER).and_then(|v| v.to_str().ok());
        match (theirs, self.restored_from()) {
            (Some(t), Some(old)) if t == old && self.get().is_some_and(|ours| ours != t) => Ok(true),
            _ => self.check(req).map(|_| false),
        }
    }

    /// Tells a watcher which cluster this one replaced, if any.
    pub fn attach_lineage<T>(&self, res: &mut tonic::Response<T>) {
        if let Some(v) = self.restored_from().and_then(|id| MetadataValue::try_from(id).ok()) {
            res.metadata_mut().insert(RESTORED_FROM_HEADER, v);
        }
    }

    pub fn get(&self) -> Option<String> {
        self.cur.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes `id` as this node's cluster id, durably, unless it already has one.
    pub fn adopt(&self, id: &str) -> Result<(), String> {
        let mut cur = self.cur.write().unwrap_or_else(|e| e.into_inner());
        if cur.is_some() {
            return Ok(());
        }
        self.meta.insert(KEY, id.as_bytes()).map_err(|e| e.to_string())?;
        self.meta.flush().map_err(|e| e.to_string())?;
        tracing::info!(cluster_id = id, "this node now belongs to cluster {id}");
        *cur = Some(id.to_string());
        Ok(())
    }

    /// Adds this node's id (if any) to an outgoing peer call.
    pub fn attach<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(id) = self.get() {
            if let Ok(v) = MetadataValue::try_from(id.as_str()) {
                req.metadata_mut().insert(HEADER, v);
            }
        }
    }

    /// Tells the caller which cluster answered (a watch stream's proxy).
    pub fn attach_reply<T>(&self, res: &mut tonic::Response<T>) {
        if let Some(v) = self.get().and_then(|id| MetadataValue::try_from(id.as_str()).ok()) {
            res.metadata_mut().insert(HEADER, v);
        }
    }

    /// Checks an incoming peer call's id against this node's: the sender's id (if it sent
    /// one), or FAILED_PRECONDITION when the two differ or the id is malformed.
    pub fn check<T>(&self, req: &tonic::Request<T>) -> Result<Option<String>, Status> {
        let Some(v) = req.metadata().get(HEADER) else { return Ok(None) };
        let theirs = v
            .to_str()
            .ok()
            .filter(|s| valid(s))
            .ok_or_else(|| Status::invalid_argument(format!("{HEADER} must be 32 lowercase hex digits")))?;
        match self.get() {
            Some(ours) if ours != theirs => Err(Status::failed_precondition(mismatch(&ours, theirs))),
            _ => Ok(Some(theirs.to_string())),
        }
    }
}

pub fn mismatch(ours: &str, theirs: &str) -> String {
    format!("cluster id mismatch: this node belongs to cluster {ours}, the request came from cluster {theirs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopts_once_persists_and_refuses_other_clusters() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (mint(), mint());
        assert!(valid(&a) && a != b);
        // Without sled's background flusher, whose thread could still hold the lock when the
        // second open comes.
        let open = || sled::Config::new().path(dir.path()).flush_every_ms(None).open().unwrap();
        {
            let db = open();
            let ids = ClusterId::open(&db).unwrap();
            let mut req = tonic::Request::new(());
            ids.attach(&mut req);
            assert!(req.metadata().get(HEADER).is_none(), "no id yet, nothing sent");
            ids.adopt(&a).unwrap();
            ids.adopt(&b).unwrap();
            assert_eq!(ids.get().as_deref(), Some(a.as_str()));
        }
        let db = open();
        let ids = ClusterId::open(&db).unwrap();
        assert_eq!(ids.get().as_deref(), Some(a.as_str()), "survives a restart");

        let mut same = tonic::Request::new(());
        ids.attach(&mut same);
        assert_eq!(ids.check(&same).unwrap().as_deref(), Some(a.as_str()));
        let mut other = tonic::Request::new(());
        other.metadata_mut().insert(HEADER, b.parse().unwrap());
        let e = ids.check(&other).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains(&format!("belongs to cluster {a}, the request came from cluster {b}")), "{e}");
        let mut bad = tonic::Request::new(());
        bad.metadata_mut().insert(HEADER, "nope".parse().unwrap());
        assert_eq!(ids.check(&bad).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
