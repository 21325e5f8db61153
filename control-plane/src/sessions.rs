//! Session affinity on the control plane, beside the binding rules in [`crate::state`]:
//! the leader expires bindings whose TTL has passed, with its clock stamped into the command,
//! skips refreshes too recent to matter, and mints the cluster's affinity hashing secret when
//! the state has none (a new cluster, or one from before hashing).

use std::sync::Arc;
use std::time::Duration;

use switchyard_model::topology::Pair;
use switchyard_proto::v1::SessionBinding;

use crate::error::ApiError;
use crate::node::calls::ExecError;
use crate::node::context::NodeCtx;
use crate::node::leader;
use crate::pb::Pb;
use crate::state::{Command, SecretBytes, State};

/// How often the leader looks for expired bindings.
const EXPIRY_TICK: Duration = Duration::from_millis(500);

/// Runs for the node's lifetime; proposes expiry only while this node leads.
pub async fn expire(node: Arc<NodeCtx>) {
    let mut ticker = tokio::time::interval(EXPIRY_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !node.is_leader() {
            continue;
        }
        mint_secret(&node).await;
        // Judged at the time `apply` will use: never before the state's high-water clock.
        let due = {
            let live = node.shared.read();
            let at = crate::clock::now_ms().max(live.state.clock_ms());
            live.state.sessions.values().any(|s| s.last_seen_ms.saturating_add(s.ttl_ms) <= at)
        };
        let now_ms = crate::clock::now_ms();
        if due {
            if let Err(e) = leader::write(&node, Command::ExpireSessions { now_ms }).await {
                tracing::debug!("session expiry not recorded: {e}");
            }
        }
    }
}

/// Drops from a report the bindings not worth a Raft entry. A refresh: a binding the state
/// already holds, to the same backend, seen less than a third of its TTL before `now_ms`
/// (judged, as `apply` will, at no earlier than the high-water clock); idle sessions so commit
/// once per TTL/3 however often proxies report them, with two thirds of the TTL to spare. And
/// one `apply` would ignore: a session bound to another backend that is still usable (a
/// binding keeps its first backend), a new one to an unusable backend or an unknown pool. A
/// proxy that cannot use a session's backend itself (ejected there, or at its connection cap)
/// sends such a re-binding with every connection of the session, and each was an entry that
/// changed nothing. Returns how many were dropped.
pub fn drop_fresh_refreshes(state: &State, now_ms: u64, bindings: &mut Vec<Pb<SessionBinding>>) -> usize {
    let at = now_ms.max(state.clock_ms());
    let usable_here = |pool: &str, backend: &str| state.backend(pool, backend).is_some_and(switchyard_model::usable);
    let before = bindings.len();
    bindings.retain(|Pb(b)| match state.sessions.get(&Pair(&b.pool, &b.key)) {
        Some(cur) if cur.backend == b.backend => at.saturating_sub(cur.last_seen_ms) >= cur.ttl_ms / 3,
        Some(cur) => !usable_here(&b.pool, &cur.backend) && usable_here(&b.pool, &b.backend),
        None => state.pools.contains_key(b.pool.as_str()) && usable_here(&b.pool, &b.backend),
    });
    before - bindings.len()
}

/// The most session bindings the cluster holds. Session keys come from clients (a cookie
/// the proxy mints for each client that has none, a header a client sets), so without a
/// bound a client opening connections without its cookie grows every node's state, its
/// snapshots and every proxy's table by one binding per connection, for a whole TTL. Like a
/// full HAProxy stick table, a full cluster still routes a new session; it only does not
/// record it, so the session's later connections may land elsewhere until bindings expire.
/// A binding is a few hundred bytes in memory on every node and every proxy.
pub const MAX_SESSIONS: usize = 1_000_000;

/// The most bytes the bindings may take in a config snapshot. Every proxy receives them in one
/// message with the pools, backends and routes (at most 128 MiB, `--max-config-bytes`), and
/// the two must fit in [`switchyard_model::limits::MAX_GRPC_MESSAGE`] (256 MiB): 32 MiB is
/// left for what binds in flight add past this check (judged on the leader's applied state)
/// and the bytes longer revisions add past the config's (`state::Guard::Room`).
/// A million typical bindings (short names, IP addresses) take 70-100 MB; a million with the
/// longest pool and host names allowed would take nearly 400.
pub const MAX_SESSION_BYTES: u64 = 96 << 20;

/// The most `b` can take once stored: with the time, TTL and revision the state machine
/// sets (`State::bind_sessions`) at their longest.
fn stored_at_most(b: &SessionBinding) -> u64 {
    let ttl_ms = b.ttl_ms.max(crate::validate::MAX_AFFINITY_TTL_MS);
    crate::state::snapshot_len(&SessionBinding {
        last_seen_ms: u64::MAX,
        ttl_ms,
        created_revision: u64::MAX,
        ..b.clone()
    })
}

/// How many bindings, and how many bytes of them, the cluster records.
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    pub count: usize,
    pub bytes: u64,
}

pub const CAP: Cap = Cap { count: MAX_SESSIONS, bytes: MAX_SESSION_BYTES };

/// Drops from a report the new bindings past the cap, in number or in bytes, and the moves of
/// held bindings to a backend with a longer address past the byte cap (a session not recorded
/// is still routed; its binding, to a backend no longer usable, expires). Refreshes always
/// stay. Returns how many were dropped.
pub fn drop_past_the_cap(state: &State, bindings: &mut Vec<Pb<SessionBinding>>, cap: Cap) -> usize {
    use crate::state::snapshot_len;
    let mut room = cap.count.saturating_sub(state.sessions.len());
    let mut bytes = cap.bytes.saturating_sub(state.session_bytes());
    let before = bindings.len();
    bindings.retain(|Pb(b)| {
        if let Some(cur) = state.sessions.get(&Pair(&b.pool, &b.key)) {
            if cur.backend == b.backend {
                return true;
            }
            // A move: the new address, and a new time and revision.
            let growth = stored_at_most(&SessionBinding { backend: b.backend.clone(), ..cur.clone() })
                .saturating_sub(snapshot_len(cur));
            let fits = growth <= bytes;
            if fits {
                bytes -= growth;
            }
            return fits;
        }
        let size = stored_at_most(b);
        let fits = room > 0 && size <= bytes;
        if fits {
            room -= 1;
            bytes -= size;
        }
        fits
    });
    before - bindings.len()
}

/// Proposes a fresh affinity secret when the applied state has none; the state machine keeps
/// only the first one ever applied, so two leaders racing cannot change it.
async fn mint_secret(node: &NodeCtx) {
    if let Err(e) = ensure_secret(node).await {
        tracing::debug!("affinity secret not recorded: {e:?}");
    }
}

/// Makes sure the state holds the affinity secret before the leader proposes an admin write,
/// so no pool (and so no session key) exists before the secret does: a proxy that routed a
/// connection before the secret reached it would give that connection no affinity at all.
/// One mint at a time: the writes that arrive together
/// on a new cluster wait for the first one's instead of proposing their own.
pub async fn ensure_secret(node: &NodeCtx) -> Result<(), ExecError> {
    if node.shared.read().state.affinity_secret.is_set() {
        return Ok(());
    }
    let mint = async {
        let _one = node.minting.lock().await;
        if node.shared.read().state.affinity_secret.is_set() {
            return Ok(());
        }
        let secret = switchyard_model::AffinitySecret::mint()
            .map_err(|e| ExecError::Api(ApiError::Internal(format!("cannot mint the affinity secret: {e}"))))?;
        let cmd = Command::SetAffinitySecret(SecretBytes(secret.expose().to_vec()));
        node.propose(cmd.into()).await?.1.map_err(ExecError::Api)?;
        tracing::info!("minted the cluster's affinity hashing secret");
        Ok(())
    };
    // Bounded like a write: a leader cut off from its quorum must not hold the writes queued
    // behind the mint for longer than each of them would have waited anyway.
    tokio::time::timeout(node.config.write_timeout, mint).await.unwrap_or_else(|_| {
        Err(ExecError::Api(ApiError::Unavailable("the affinity secret was not committed in time".into())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use switchyard_proto::v1::{Backend, Pool};

    fn binding(key: &str, backend: &str) -> Pb<SessionBinding> {
        Pb(SessionBinding { pool: "p".into(), key: key.into(), backend: backend.into(), ..Default::default() })
    }

    #[test]
    fn only_refreshes_younger_than_a_third_of_the_ttl_are_dropped() {
        let mut s = State::default();
        let pool = Pool { name: "p".into(), affinity_ttl_ms: 3_000, ..Default::default() };
        s.apply(1, &Command::CreatePool(Pb(crate::validate::pool(pool).unwrap()))).unwrap();
        for (i, a) in ["a:1", "a:2"].into_iter().enumerate() {
            let b = Backend { pool: "p".into(), address: a.into(), weight: 1, ..Default::default() };
            s.apply(2 + i as u64, &Command::AddBackend(Pb(crate::validate::backend(b).unwrap()))).unwrap();
        }
        s.apply(4, &Command::BindSessions { now_ms: 10_000, bindings: vec![binding("k", "a:1")] }).unwrap();

        let mut r = vec![binding("k", "a:1"), binding("new", "a:1")];
        assert_eq!(drop_fresh_refreshes(&s, 10_999, &mut r), 1, "moved 999 ms of a 3 s TTL");
        assert_eq!(r, vec![binding("new", "a:1")], "a new key stays");
        // What apply would ignore: another backend while the first is usable, a new key on an
        // unknown backend or pool. Moving off a backend that is not usable stays.
        let elsewhere = Pb(SessionBinding { pool: "q".into(), ..binding("new", "a:1").0 });
        let mut r = vec![binding("k", "a:2"), binding("new", "z:9"), elsewhere];
        assert_eq!(drop_fresh_refreshes(&s, 11_000, &mut r), 3);
        let drain = Command::SetBackendState {
            pool: "p".into(),
            address: "a:1".into(),
            state: switchyard_proto::v1::AdminState::Draining as i32,
        };
        s.apply(5, &drain).unwrap();
        let mut r = vec![binding("k", "a:2"), binding("new2", "a:1")];
        assert_eq!(drop_fresh_refreshes(&s, 11_000, &mut r), 1, "off a draining backend: kept; onto it: dropped");
        assert_eq!(r, vec![binding("k", "a:2")]);
        let mut r = vec![binding("k", "a:1")];
        assert_eq!(drop_fresh_refreshes(&s, 11_000, &mut r), 0, "a third of the TTL on: committed");
        // A clock behind the state's high-water mark is judged at the mark.
        s.apply(6, &Command::ExpireSessions { now_ms: 11_500 }).unwrap();
        let mut r = vec![binding("k", "a:1")];
        assert_eq!(drop_fresh_refreshes(&s, 5, &mut r), 0);
    }

    #[test]
    fn new_bindings_past_the_cap_are_dropped_and_held_ones_still_refresh() {
        let mut s = State::default();
        let pool = Pool { name: "p".into(), ..Default::default() };
        s.apply(1, &Command::CreatePool(Pb(crate::validate::pool(pool).unwrap()))).unwrap();
        let b = Backend { pool: "p".into(), address: "a:1".into(), weight: 1, ..Default::default() };
        s.apply(2, &Command::AddBackend(Pb(crate::validate::backend(b).unwrap()))).unwrap();
        s.apply(3, &Command::BindSessions { now_ms: 1, bindings: vec![binding("k1", "a:1"), binding("k2", "a:1")] })
            .unwrap();
        // Room for one more of three: the first new one takes it.
        let mut r = vec![binding("n1", "a:1"), binding("k1", "a:1"), binding("n2", "a:1"), binding("n3", "a:1")];
        let count = |n| Cap { count: n, bytes: u64::MAX };
        assert_eq!(drop_past_the_cap(&s, &mut r, count(3)), 2);
        assert_eq!(r, vec![binding("n1", "a:1"), binding("k1", "a:1")]);
        // Full: held keys only.
        let mut r = vec![binding("n1", "a:1"), binding("k2", "a:1")];
        assert_eq!(drop_past_the_cap(&s, &mut r, count(2)), 1);
        assert_eq!(r, vec![binding("k2", "a:1")]);
    }

    #[test]
    fn new_bindings_past_the_byte_cap_are_dropped_and_the_bytes_follow_every_change() {
        let mut s = State::default();
        let pool = Pool { name: "p".into(), ..Default::default() };
        s.apply(1, &Command::CreatePool(Pb(crate::validate::pool(pool).unwrap()))).unwrap();
        for (i, a) in ["a:1", "a:2"].into_iter().enumerate() {
            let b = Backend { pool: "p".into(), address: a.into(), weight: 1, ..Default::default() };
            s.apply(2 + i as u64, &Command::AddBackend(Pb(crate::validate::backend(b).unwrap()))).unwrap();
        }
        let stored = |s: &State| s.sessions.values().map(crate::state::snapshot_len).sum::<u64>();
        assert_eq!(s.session_bytes(), 0);
        s.apply(4, &Command::BindSessions { now_ms: 1, bindings: vec![binding("k1", "a:1"), binding("k2", "a:1")] })
            .unwrap();
        assert!(s.session_bytes() > 0);
        assert_eq!(s.session_bytes(), stored(&s));
        // Room in bytes for one new binding of a long key, not two; a held key still refreshes.
        let long = |k: &str| binding(&format!("{k}{}", "x".repeat(200)), "a:2");
        let one = stored_at_most(&long("n1").0);
        let cap = Cap { count: usize::MAX, bytes: s.session_bytes() + one + 10 };
        let mut r = vec![long("n1"), long("n2"), binding("k1", "a:1")];
        assert_eq!(drop_past_the_cap(&s, &mut r, cap), 1);
        assert_eq!(r, vec![long("n1"), binding("k1", "a:1")]);
        // What the cap let through fits under it once stored, at a late time and revision.
        let rev = u64::MAX >> 1;
        s.apply(rev, &Command::BindSessions { now_ms: 1 << 50, bindings: r }).unwrap();
        assert_eq!(s.session_bytes(), stored(&s));
        assert!(s.session_bytes() <= cap.bytes, "{} over {}", s.session_bytes(), cap.bytes);
        // A move to a backend with a longer address is charged its growth: with no room left,
        // it is dropped; with room, it is applied. Removals and expiry keep the count exact.
        let far = format!("{}.example.com:80", "b".repeat(60));
        let b = Backend { pool: "p".into(), address: far.clone(), weight: 1, ..Default::default() };
        s.apply(rev + 1, &Command::AddBackend(Pb(crate::validate::backend(b).unwrap()))).unwrap();
        let drain = |a: &str| Command::SetBackendState {
            pool: "p".into(),
            address: a.into(),
            state: switchyard_proto::v1::AdminState::Disabled as i32,
        };
        s.apply(rev + 2, &drain("a:1")).unwrap();
        let full = Cap { count: usize::MAX, bytes: s.session_bytes() };
        let mut moves = vec![binding("k1", &far)];
        assert_eq!(drop_past_the_cap(&s, &mut moves, full), 1, "no room for a longer address");
        let roomy = Cap { count: usize::MAX, bytes: s.session_bytes() + 100 };
        let mut moves = vec![binding("k1", &far)];
        assert_eq!(drop_past_the_cap(&s, &mut moves, roomy), 0);
        s.apply(rev + 3, &Command::BindSessions { now_ms: (1 << 50) + 1, bindings: moves }).unwrap();
        assert_eq!(s.sessions.get(&Pair("p", "k1")).unwrap().backend, far, "moved");
        assert_eq!(s.session_bytes(), stored(&s));
        assert!(s.session_bytes() <= roomy.bytes);
        s.apply(rev + 4, &Command::RemoveBackend { pool: "p".into(), address: far }).unwrap();
        assert_eq!(s.session_bytes(), stored(&s));
        s.apply(rev + 5, &Command::ExpireSessions { now_ms: u64::MAX >> 2 }).unwrap();
        assert_eq!((s.session_bytes(), s.sessions.len()), (0, 0));
    }
}
