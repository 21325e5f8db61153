//! `apply` without Raft: each command's effect, requests applied once per id, and that
//! applying commands one by one gives the same state (seen table included) as restoring a
//! snapshot taken at any point.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::seen::RequestId;
use crate::seen::{Record, MAX_CLIENTS};
use switchyard_proto::v1::AdminState;
use switchyard_proto::v1::Route;

fn pool(name: &str) -> Command {
    Command::CreatePool(Pb(validate::pool(Pool { name: name.into(), ..Default::default() }).unwrap()))
}

fn backend(pool: &str, addr: &str) -> Command {
    Command::AddBackend(Pb(validate::backend(Backend {
        pool: pool.into(),
        address: addr.into(),
        weight: 1,
        ..Default::default()
    })
    .unwrap()))
}

/// A proxy's report of one binding in pool `p`.
fn bind(key: &str, backend: &str, ttl_ms: u64, now_ms: u64) -> Command {
    let b = SessionBinding { pool: "p".into(), key: key.into(), backend: backend.into(), ttl_ms, ..Default::default() };
    Command::BindSessions { now_ms, bindings: vec![Pb(b)] }
}

#[test]
fn references_are_checked_when_applied() {
    let mut s = State::default();
    assert!(matches!(s.apply(1, &backend("p", "a:1")), Err(ApiError::NotFound(_))));
    s.apply(2, &pool("p")).unwrap();
    assert!(matches!(s.apply(3, &pool("p")), Err(ApiError::AlreadyExists(_))));
    s.apply(4, &backend("p", "a:1")).unwrap();
    // A backend added twice is refused, and the one there stays as it was (revision 4).
    let before = s.clone();
    assert!(matches!(s.apply(5, &backend("p", "a:1")), Err(ApiError::AlreadyExists(_))));
    assert_eq!(s, before);
    assert_eq!(s.backend("p", "a:1").unwrap().updated_revision, 4);
    let del = Command::DeletePool { name: "p".into() };
    assert!(matches!(s.apply(5, &del), Err(ApiError::FailedPrecondition(_))));
    let before = s.clone();
    // A failed command leaves the state as it was.
    let _ = s.apply(6, &del);
    assert_eq!(s, before);
    s.apply(7, &Command::RemoveBackend { pool: "p".into(), address: "a:1".into() }).unwrap();
    s.apply(8, &del).unwrap();
    assert!(s.pools.is_empty());
}

#[test]
fn unchanged_writes_emit_nothing() {
    let mut s = State::default();
    s.apply(1, &pool("p")).unwrap();
    s.apply(2, &backend("p", "a:1")).unwrap();
    let w = Command::SetBackendWeight { pool: "p".into(), address: "a:1".into(), weight: 1 };
    assert!(s.apply(3, &w).unwrap().is_empty());
    let w = Command::SetBackendWeight { pool: "p".into(), address: "a:1".into(), weight: 5 };
    assert_eq!(s.apply(4, &w).unwrap().len(), 1);
}

#[test]
fn sessions_first_writer_wins_and_expire_by_command_time() {
    let mut s = State::default();
    s.apply(1, &pool("p")).unwrap();
    s.apply(2, &backend("p", "a:1")).unwrap();
    s.apply(3, &backend("p", "b:1")).unwrap();
    let bind_k = |b: &str, now| bind("k", b, 100, now);
    s.apply(4, &bind_k("a:1", 1000)).unwrap();
    s.apply(5, &bind_k("b:1", 1001)).unwrap();
    assert_eq!(s.sessions[&("p".into(), "k".into())].backend, "a:1");
    s.apply(6, &Command::ExpireSessions { now_ms: 1099 }).unwrap();
    assert_eq!(s.sessions.len(), 1);
    s.apply(7, &Command::ExpireSessions { now_ms: 1100 }).unwrap();
    assert!(s.sessions.is_empty());
    // A binding to a drained backend is replaced by the next report.
    s.apply(8, &bind_k("a:1", 2000)).unwrap();
    s.apply(
        9,
        &Command::SetBackendState { pool: "p".into(), address: "a:1".into(), state: AdminState::Draining as i32 },
    )
    .unwrap();
    s.apply(10, &bind_k("b:1", 2001)).unwrap();
    assert_eq!(s.sessions[&("p".into(), "k".into())].backend, "b:1");
}

#[test]
fn a_weight_zero_backend_loses_its_bindings_to_the_next_report() {
    // Proxies route no new connection to a backend of weight 0, so the state machine must
    // let their next report move its sessions, as it does for a drained one.
    let mut s = State::default();
    s.apply(1, &pool("p")).unwrap();
    s.apply(2, &backend("p", "a:1")).unwrap();
    s.apply(3, &backend("p", "b:1")).unwrap();
    let bind_k = |b: &str, now| bind("k", b, 0, now);
    s.apply(4, &bind_k("a:1", 1000)).unwrap();
    s.apply(5, &bind_k("b:1", 1001)).unwrap();
    assert_eq!(s.sessions[&("p".into(), "k".into())].backend, "a:1", "first writer wins while a:1 is usable");
    s.apply(6, &Command::SetBackendWeight { pool: "p".into(), address: "a:1".into(), weight: 0 }).unwrap();
    s.apply(7, &bind_k("b:1", 1002)).unwrap();
    let moved = &s.sessions[&("p".into(), "k".into())];
    assert_eq!((moved.backend.as_str(), moved.created_revision), ("b:1", 7));
    // And no new binding is made to a backend of weight 0.
    assert!(s.apply(8, &bind("new", "a:1", 0, 1003)).unwrap().is_empty());
    assert!(!s.sessions.contains_key(&("p".into(), "new".into())));
}

fn with_id(client: &str, seq: u64, cmd: Command) -> Proposed {
    Proposed { id: Some(RequestId { client: client.into(), seq }), cmd, audit: None }
}

fn remove(pool: &str, addr: &str) -> Command {
    Command::RemoveBackend { pool: pool.into(), address: addr.into() }
}

#[test]
fn a_repeated_request_is_applied_once_and_answered_as_the_first_time() {
    let mut s = State::default();
    s.apply(1, &pool("p")).unwrap();
    let add = with_id("alice", 1, backend("p", "a:1"));
    let first = s.apply_proposed(2, &add);
    assert!(first.fresh && first.written.1.is_ok());
    let again = s.apply_proposed(3, &add);
    assert!(!again.fresh, "a repeat changes nothing");
    assert_eq!(again.written, first.written, "same revision, same outcome");
    assert_eq!(s.backends_of("p").count(), 1);
    // Removed by someone else, then alice's add retried: the backend does not come back.
    assert!(s.apply_proposed(4, &with_id("bob", 1, remove("p", "a:1"))).written.1.is_ok());
    let late = s.apply_proposed(5, &add);
    assert_eq!(late.written, first.written);
    assert_eq!(s.backends_of("p").count(), 0);
    // A refusal is an answer too: repeated as it was, not re-decided.
    let dup = with_id("carol", 7, pool("p"));
    let refused = s.apply_proposed(6, &dup).written;
    assert!(matches!(refused, (6, Err(ApiError::AlreadyExists(_)))));
    s.apply(7, &Command::DeletePool { name: "p".into() }).unwrap();
    assert_eq!(s.apply_proposed(8, &dup).written, refused);
    assert!(s.pools.is_empty());
    // Older than the client's last write: its answer is gone, so it is refused, not applied.
    let old = s.apply_proposed(9, &with_id("carol", 6, pool("q")));
    assert!(matches!(old.written.1, Err(ApiError::FailedPrecondition(ref m)) if m.contains("request too old")));
    assert!(s.pools.is_empty());
    // The next seq is a new write; a write without an id is never deduplicated.
    assert!(s.apply_proposed(10, &with_id("carol", 8, pool("q"))).fresh);
    assert!(s.apply_proposed(11, &Proposed::from(pool("r"))).written.1.is_ok());
    assert!(s.apply_proposed(12, &Proposed::from(pool("r"))).written.1.is_err());
}

#[test]
fn the_seen_table_evicts_the_oldest_client_deterministically() {
    let run = || {
        let mut s = State::default();
        s.apply(1, &pool("p")).unwrap();
        let mut evicted = Vec::new();
        for i in 0..MAX_CLIENTS as u64 + 3 {
            // Two clients per revision, so ties are broken by client id.
            let rev = 2 + i / 2;
            let a = s.apply_proposed(rev, &with_id(&format!("c{i:05}"), 1, remove("p", "x:1")));
            evicted.extend(a.evicted);
        }
        (s, evicted)
    };
    let (a, evicted) = run();
    let (b, _) = run();
    assert_eq!(a, b, "same log, same table");
    assert_eq!(a.seen().len(), MAX_CLIENTS);
    assert_eq!(evicted, vec!["c00000", "c00001", "c00002"], "oldest revision first, then lowest id");
    assert!(a.seen().get("c00003").is_some() && a.seen().get("c00000").is_none());
    // The rows rebuild the same table, eviction order included.
    let rows: Vec<(String, Record)> = a.seen().rows().map(|(c, r)| (c.clone(), r.clone())).collect();
    let mut restored = State::from_topology(a.to_topology(0), Seen::from_rows(rows), a.clock_ms());
    let mut a = a;
    let next = with_id("new", 1, remove("p", "x:1"));
    assert_eq!(restored.apply_proposed(9_999, &next).evicted, a.apply_proposed(9_999, &next).evicted);
    assert_eq!(restored, a);
}

fn random_command(rng: &mut StdRng) -> Command {
    let p = format!("p{}", rng.random_range(0..4));
    let a = format!("10.0.0.{}:80", rng.random_range(0..5));
    match rng.random_range(0..12) {
        0 | 1 => pool(&p),
        2 => Command::DeletePool { name: p },
        3 | 4 => backend(&p, &a),
        5 => Command::SetBackendWeight { pool: p, address: a, weight: rng.random_range(0..10) },
        6 => Command::SetBackendState { pool: p, address: a, state: rng.random_range(1..4) },
        7 => Command::RemoveBackend { pool: p, address: a },
        8 => Command::SetRoute(Pb(Route {
            name: format!("r{}", rng.random_range(0..3)),
            pool: p,
            path_prefix: format!("/{}", rng.random_range(0..3)),
            ..Default::default()
        })),
        9 => Command::BindSessions {
            now_ms: rng.random_range(0..10_000),
            bindings: vec![Pb(SessionBinding {
                pool: p,
                key: format!("k{}", rng.random_range(0..20)),
                backend: a,
                ttl_ms: 1000,
                ..Default::default()
            })],
        },
        10 => Command::ExpireSessions { now_ms: rng.random_range(0..12_000) },
        _ => Command::DeleteRoute { name: format!("r{}", rng.random_range(0..3)) },
    }
}

/// A random command, with a request id from one of a few clients half the time: a new seq,
/// a repeat of the last one, or an older one.
fn random_proposed(rng: &mut StdRng, seqs: &mut [u64; 3]) -> Proposed {
    let cmd = random_command(rng);
    if rng.random_bool(0.5) {
        return cmd.into();
    }
    let c = rng.random_range(0..seqs.len());
    match rng.random_range(0..6) {
        0..=2 => seqs[c] += 1,
        3 | 4 => seqs[c] = seqs[c].max(1),
        _ => return with_id(&format!("c{c}"), rng.random_range(1..=seqs[c].max(1)), cmd),
    }
    with_id(&format!("c{c}"), seqs[c], cmd)
}

fn proposals(seed: u64) -> Vec<Proposed> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seqs = [0; 3];
    (0..300).map(|_| random_proposed(&mut rng, &mut seqs)).collect()
}

/// A snapshot of `s` as the store takes one: the topology, and the seen table's rows through
/// postcard.
fn snapshot_restore(s: &State, rev: u64) -> State {
    let rows: Vec<(String, Record)> = s.seen().rows().map(|(c, r)| (c.clone(), r.clone())).collect();
    let rows: Vec<(String, Record)> = postcard::from_bytes(&postcard::to_stdvec(&rows).unwrap()).unwrap();
    State::from_topology(s.to_topology(rev), Seen::from_rows(rows), s.clock_ms())
}

#[test]
fn replay_equals_snapshot_restore() {
    for seed in 0..20 {
        let cmds = proposals(seed);
        let mut s = State::default();
        let mut answers = Vec::new();
        for (i, p) in cmds.iter().enumerate() {
            let rev = i as u64 + 1;
            answers.push(s.apply_proposed(rev, p).written);
            if i % 37 == 36 {
                assert_eq!(snapshot_restore(&s, rev), s, "seed {seed} rev {rev}");
            }
        }
        assert!(!s.seen().is_empty(), "seed {seed}: the table is covered");
        // Replaying the same commands from a snapshot taken midway reaches the same state and
        // gives the same answers, repeats included.
        let mut b = State::default();
        for (i, p) in cmds[..150].iter().enumerate() {
            b.apply_proposed(i as u64 + 1, p);
        }
        let mut b = snapshot_restore(&b, 150);
        for (i, p) in cmds[150..].iter().enumerate() {
            assert_eq!(b.apply_proposed(i as u64 + 151, p).written, answers[i + 150], "seed {seed} at {}", i + 151);
        }
        assert_eq!(b, s, "seed {seed}");
    }
}

fn set_health(addr: &str, h: Health) -> Command {
    Command::SetBackendHealth { pool: "p".into(), address: addr.into(), health: h as i32 }
}

fn update_check(kind: Option<HealthCheckKind>) -> Command {
    let hc = kind.map(|k| switchyard_proto::v1::HealthCheck {
        kind: k as i32,
        interval_ms: 1000,
        timeout_ms: 500,
        rise: 1,
        fall: 1,
        ..Default::default()
    });
    let p = Pool { name: "p".into(), health_check: hc, ..Default::default() };
    Command::UpdatePool { pool: Pb(p), mask: vec!["health_check".into()] }
}

#[test]
fn removing_a_pools_health_check_resets_its_backends_to_unknown() {
    for removed in [None, Some(HealthCheckKind::HealthCheckNone)] {
        let mut s = State::default();
        s.apply(1, &pool("p")).unwrap();
        s.apply(2, &backend("p", "a:1")).unwrap();
        s.apply(3, &backend("p", "b:1")).unwrap();
        s.apply(4, &update_check(Some(HealthCheckKind::HealthCheckTcp))).unwrap();
        s.apply(5, &set_health("a:1", Health::Unhealthy)).unwrap();
        let out = s.apply(6, &update_check(removed)).unwrap();
        let a = s.backend("p", "a:1").unwrap();
        assert_eq!((a.health, a.updated_revision), (Health::Unknown as i32, 6), "check {removed:?}");
        // The pool and the one backend that changed, in the same command.
        assert_eq!(out.len(), 2, "{out:?}");
        // A flip from a probe still in flight changes nothing now.
        assert!(s.apply(7, &set_health("a:1", Health::Unhealthy)).unwrap().is_empty());
        assert_eq!(s.backend("p", "a:1").unwrap().health, Health::Unknown as i32);
    }
}

#[test]
fn session_time_never_goes_back_when_a_new_leaders_clock_is_behind() {
    let mut s = State::default();
    s.apply(1, &pool("p")).unwrap();
    s.apply(2, &backend("p", "a:1")).unwrap();
    let last_seen = |s: &State, k: &str| s.sessions[&("p".into(), k.into())].last_seen_ms;
    // Leader A, at 1000.
    s.apply(3, &bind("k1", "a:1", 100, 1000)).unwrap();
    // Leader B, whose clock says 900: its bind is stamped at the high-water time.
    s.apply(4, &bind("k2", "a:1", 100, 900)).unwrap();
    assert_eq!(last_seen(&s, "k2"), 1000);
    s.apply(5, &bind("k1", "a:1", 100, 950)).unwrap();
    assert_eq!(last_seen(&s, "k1"), 1000);
    // B's expiry at 1000 on its clock is 1000 in the model: k2 (seen at 1000) lives on.
    s.apply(6, &Command::ExpireSessions { now_ms: 1000 }).unwrap();
    assert_eq!(s.sessions.len(), 2);
    s.apply(7, &Command::ExpireSessions { now_ms: 1099 }).unwrap();
    assert_eq!(s.sessions.len(), 2);
    s.apply(8, &Command::ExpireSessions { now_ms: 1100 }).unwrap();
    assert!(s.sessions.is_empty());
    // Nor later: once the model is at 1200, an expiry stamped 900 expires what 1200 does.
    s.apply(9, &bind("k3", "a:1", 10, 1100)).unwrap();
    s.apply(10, &bind("k4", "a:1", 1000, 1200)).unwrap();
    s.apply(11, &Command::ExpireSessions { now_ms: 900 }).unwrap();
    assert!(!s.sessions.contains_key(&("p".into(), "k3".into())));
    assert!(s.sessions.contains_key(&("p".into(), "k4".into())));
    assert_eq!(s.clock_ms(), 1200);
    assert_eq!(snapshot_restore(&s, 11), s);
}

fn audited(cmd: Command) -> Proposed {
    let note = crate::audit::AuditNote {
        who: "cert alice".into(),
        role: "admin".into(),
        method: "m".into(),
        summary: String::new(),
        at_ms: 5,
    };
    Proposed { id: None, cmd, audit: Some(std::sync::Arc::new(note)) }
}

fn token(id: &str, role: &str) -> Command {
    Command::CreateToken(crate::auth::tokens::TokenRecord {
        id: id.into(),
        name: String::new(),
        role: role.into(),
        hash: crate::auth::tokens::hash(id),
        created_ms: 1,
        expires_ms: 0,
        created_revision: 0,
    })
}

/// Tokens change no model entity (so no change set, watch or Query reply carries one), are
/// refused when they could not be used, and only accepted writes are audited.
#[test]
fn tokens_stay_out_of_change_sets_and_only_accepted_writes_are_audited() {
    let mut s = State::default();
    let a = s.apply_proposed(1, &audited(token("t1", "operator")));
    assert_eq!(a.written.1, Ok(vec![]));
    assert_eq!(s.tokens().get("t1").map(|t| t.created_revision), Some(1));
    assert_eq!(a.audited.as_ref().map(|r| (r.seq, r.revision)), Some((0, 1)));
    let dup = s.apply_proposed(2, &audited(token("t1", "viewer")));
    assert!(matches!(dup.written.1, Err(ApiError::AlreadyExists(_))), "{dup:?}");
    let node = s.apply_proposed(3, &audited(token("t2", "node")));
    assert!(matches!(node.written.1, Err(ApiError::InvalidArgument(_))), "{node:?}");
    assert!(dup.audited.is_none() && node.audited.is_none());
    let gone = s.apply_proposed(4, &audited(Command::RevokeToken { id: "t1".into() }));
    assert_eq!(gone.written.1, Ok(vec![]));
    assert!(s.tokens().is_empty());
    assert!(s.apply_proposed(5, &audited(Command::RevokeToken { id: "t1".into() })).written.1.is_err());
    let revs: Vec<u64> = s.audit().records().map(|r| r.revision).collect();
    assert_eq!(revs, [1, 4]);
    // Internal writes carry no note and leave no record.
    s.apply_proposed(6, &Command::ExpireSessions { now_ms: 1 }.into());
    assert_eq!(s.audit().len(), 2);
}

#[test]
fn the_first_affinity_secret_takes_drops_raw_bindings_and_never_changes() {
    let mut s = State::default();
    s.apply(1, &pool("p")).unwrap();
    s.apply(2, &backend("p", "a:1")).unwrap();
    s.apply(3, &bind("raw-token", "a:1", 1000, 10)).unwrap();
    assert_eq!(s.sessions.len(), 1);
    let first = Command::SetAffinitySecret(SecretBytes(vec![1; 32]));
    let out = s.apply(4, &first).unwrap();
    assert_eq!(out.len(), 2, "the raw binding goes, the secret comes: {out:?}");
    assert!(s.sessions.is_empty() && s.affinity_secret.is_set());
    assert!(!format!("{first:?}").contains("1, 1"), "Debug hides the secret");
    // A second mint (two leaders racing) and a malformed one change nothing.
    assert!(s.apply(5, &Command::SetAffinitySecret(SecretBytes(vec![2; 32]))).unwrap().is_empty());
    assert_eq!(s.affinity_secret.expose(), &[1; 32]);
    let mut fresh = State::default();
    assert!(fresh.apply(1, &Command::SetAffinitySecret(SecretBytes(vec![3; 5]))).unwrap().is_empty());
    assert!(!fresh.affinity_secret.is_set());
}

#[test]
fn delete_sessions_drops_every_binding_of_one_pool_only() {
    let mut s = State::default();
    s.apply(1, &pool("p")).unwrap();
    s.apply(2, &pool("q")).unwrap();
    s.apply(3, &backend("p", "a:1")).unwrap();
    s.apply(4, &backend("q", "a:1")).unwrap();
    s.apply(5, &bind("k1", "a:1", 60_000, 1)).unwrap();
    s.apply(6, &bind("k2", "a:1", 60_000, 1)).unwrap();
    let q = SessionBinding { pool: "q".into(), key: "k9".into(), backend: "a:1".into(), ..Default::default() };
    s.apply(7, &Command::BindSessions { now_ms: 1, bindings: vec![Pb(q)] }).unwrap();
    assert_eq!(s.sessions.len(), 3);
    let out = s.apply(8, &Command::DeleteSessions { pool: "p".into() }).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(s.sessions.keys().cloned().collect::<Vec<_>>(), vec![("q".to_string(), "k9".to_string())]);
    assert!(matches!(s.apply(9, &Command::DeleteSessions { pool: "nope".into() }), Err(ApiError::NotFound(_))));
    assert_eq!(Command::DeleteSessions { pool: "p".into() }.needs(), 2);
}

#[test]
fn closing_on_a_failed_check_needs_feature_level_4_only_when_set() {
    let hc = |close| Some(switchyard_proto::v1::HealthCheck { close_on_failure: close, ..Default::default() });
    let with = Pool { name: "p".into(), health_check: hc(true), ..Default::default() };
    let create = Command::CreatePool(Pb(with.clone()));
    assert_eq!((create.needs(), create.what()), (4, "closing a backend's connections when its health check fails"));
    let update = |pool: &Pool, field: &str| Command::UpdatePool { pool: Pb(pool.clone()), mask: vec![field.into()] };
    assert_eq!(update(&with, "health_check").needs(), 4);
    // The field goes only where the mask says: a pool carrying it in another update needs nothing.
    assert_eq!(update(&with, "drain_timeout_ms").needs(), 1);
    let without = Pool { name: "p".into(), health_check: hc(false), ..Default::default() };
    assert_eq!(Command::CreatePool(Pb(without.clone())).needs(), 1);
    assert_eq!(update(&without, "health_check").needs(), 1);
}

#[test]
fn route_auth_and_claim_keys_need_feature_level_3_which_every_build_knowing_them_has() {
    let auth = Some(switchyard_proto::v1::RouteAuth::default());
    let guarded = Command::SetRoute(Pb(Route { name: "r".into(), pool: "p".into(), auth, ..Default::default() }));
    assert_eq!((guarded.needs(), guarded.what()), (3, "authentication on a route"));
    assert_eq!(Command::SetRoute(Pb(Route { name: "r".into(), pool: "p".into(), ..Default::default() })).needs(), 1);
    let claims = Pool { name: "p".into(), affinity: "claim:sub".into(), ..Default::default() };
    let create = Command::CreatePool(Pb(claims.clone()));
    assert_eq!((create.needs(), create.what()), (3, "a claim: key (a JWT claim) for affinity or hashing"));
    let hashed = Pool { name: "p".into(), hash_key: "Claim:tenant".into(), ..Default::default() };
    assert_eq!(Command::CreatePool(Pb(hashed)).needs(), 3);
    let update = |field: &str| Command::UpdatePool { pool: Pb(claims.clone()), mask: vec![field.into()] };
    assert_eq!(update("affinity").needs(), 3);
    assert_eq!(update("weight_default").needs(), 1, "the key goes only where the mask says");
    assert_eq!(
        Command::CreatePool(Pb(Pool { name: "p".into(), affinity: "cookie:sy".into(), ..Default::default() })).needs(),
        1
    );
}

/// The running size of the pools, backends and routes is what encoding them says, after any
/// mix of writes (the restore comparison in `replay_equals_snapshot_restore` checks it too,
/// against a state that computed it afresh).
#[test]
fn the_topology_size_follows_every_write() {
    use prost::Message;
    for seed in 0..20 {
        let mut s = State::default();
        let mut rng = StdRng::seed_from_u64(seed + 1000);
        for (i, p) in proposals(seed).iter().enumerate() {
            s.apply_proposed(i as u64 + 1, p);
            // Pool updates too: a health check added, or removed (which rewrites every
            // backend's health), and a health flip.
            if i % 5 == 4 {
                let pool = format!("p{}", rng.random_range(0..4));
                let kind = [None, Some(HealthCheckKind::HealthCheckTcp)][rng.random_range(0..2)];
                let Command::UpdatePool { pool: Pb(mut p), mask } = update_check(kind) else { unreachable!() };
                p.name = pool.clone();
                s.apply(i as u64 + 1, &Command::UpdatePool { pool: Pb(p), mask }).ok();
                let address = format!("10.0.0.{}:80", rng.random_range(0..5));
                s.apply(i as u64 + 1, &Command::SetBackendHealth { pool, address, health: Health::Unhealthy as i32 })
                    .ok();
            }
            let t = Topology {
                pools: s.pools.values().cloned().collect(),
                backends: s.backends.values().cloned().collect(),
                routes: s.routes.values().cloned().collect(),
                ..Default::default()
            };
            assert_eq!(s.topology_bytes(), t.encoded_len() as u64, "seed {seed} after {}", i + 1);
        }
        assert!(s.topology_bytes() > 0 && !s.pools.is_empty(), "seed {seed}: the run ends with something in it");
    }
}
