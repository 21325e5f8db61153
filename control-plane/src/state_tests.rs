//! `apply` without Raft: each command's effect, and that applying commands one by one gives
//! the same state as restoring a snapshot taken at any point.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use switchyard_proto::v1::AdminState;

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

#[test]
fn replay_equals_snapshot_restore() {
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut s = State::default();
        for rev in 1..=300 {
            let _ = s.apply(rev, &random_command(&mut rng));
            if rev % 37 == 0 {
                let restored = State::from_topology(s.to_topology(rev));
                assert_eq!(restored, s, "seed {seed} rev {rev}");
            }
        }
        // Replaying the same commands from a snapshot taken midway reaches the same state.
        let mut rng = StdRng::seed_from_u64(seed);
        let cmds: Vec<Command> = (0..300).map(|_| random_command(&mut rng)).collect();
        let mut a = State::default();
        for (i, c) in cmds.iter().enumerate() {
            let _ = a.apply(i as u64 + 1, c);
        }
        let mut b = State::default();
        for (i, c) in cmds[..150].iter().enumerate() {
            let _ = b.apply(i as u64 + 1, c);
        }
        let mut b = State::from_topology(b.to_topology(150));
        for (i, c) in cmds[150..].iter().enumerate() {
            let _ = b.apply(i as u64 + 151, c);
        }
        assert_eq!(a, b, "seed {seed}");
        assert_eq!(a, s, "seed {seed}");
    }
}
