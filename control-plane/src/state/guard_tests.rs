//! Guards as every node applies them: refusals that leave the state as it was, in log
//! order, and entries that cannot nest.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard_proto::v1::{SessionBinding, Topology};

use super::*;

fn pool(name: &str) -> Command {
    Command::CreatePool(Pb(validate::pool(Pool { name: name.into(), ..Default::default() }).unwrap()))
}

fn backend(pool: &str, address: &str) -> Command {
    let b = Backend { pool: pool.into(), address: address.into(), weight: 1, ..Default::default() };
    Command::AddBackend(Pb(validate::backend(b).unwrap()))
}

fn route(name: &str, pool: &str) -> Command {
    Command::SetRoute(Pb(Route { name: name.into(), pool: pool.into(), path_prefix: "/".into(), ..Default::default() }))
}

fn guarded(guard: Guard, cmd: Command) -> Command {
    Command::Guarded { guards: vec![guard], cmd: Box::new(cmd) }
}

fn state(cmds: &[Command]) -> State {
    let mut s = State::default();
    for (i, c) in cmds.iter().enumerate() {
        s.apply(i as u64 + 1, c).unwrap();
    }
    s
}

/// Pool p with backends a:1 and b:1, and route r sending clients to it.
fn served() -> State {
    state(&[pool("p"), backend("p", "a:1"), backend("p", "b:1"), route("r", "p")])
}

/// A way to take a backend out of service, by address.
type TakeOut = fn(&str) -> Command;

#[test]
fn of_two_drains_sent_at_once_the_second_to_apply_is_refused() {
    let take_outs: [(&str, TakeOut); 4] = [
        ("draining it", |a| Command::SetBackendState {
            pool: "p".into(),
            address: a.into(),
            state: AdminState::Draining as i32,
        }),
        ("disabling it", |a| Command::SetBackendState {
            pool: "p".into(),
            address: a.into(),
            state: AdminState::Disabled as i32,
        }),
        ("a weight of 0", |a| Command::SetBackendWeight { pool: "p".into(), address: a.into(), weight: 0 }),
        ("removing it", |a| Command::RemoveBackend { pool: "p".into(), address: a.into() }),
    ];
    for (what, take_out) in take_outs {
        let mut s = served();
        // Both were judged against the same state (each backend had the other beside it);
        // they apply one after the other.
        assert!(s.apply(10, &guarded(Guard::KeepsABackend, take_out("a:1"))).is_ok(), "{what}");
        let before = s.clone();
        let e = s.apply(11, &guarded(Guard::KeepsABackend, take_out("b:1"))).unwrap_err();
        assert!(
            matches!(&e, ApiError::FailedPrecondition(m) if m.contains("b:1 is the last of pool p") && m.contains(what)),
            "{what}: {e}"
        );
        assert_eq!(s, before, "{what}: a refused write changes nothing");
        // Unguarded (forced), it applies.
        assert!(s.apply(12, &take_out("b:1")).is_ok(), "{what}");
    }
}

#[test]
fn the_last_backend_may_go_when_no_route_uses_its_pool_or_it_serves_no_one_already() {
    let drain = |a: &str| {
        guarded(
            Guard::KeepsABackend,
            Command::SetBackendState { pool: "p".into(), address: a.into(), state: AdminState::Draining as i32 },
        )
    };
    let mut s = state(&[pool("p"), backend("p", "a:1")]);
    assert!(s.apply(10, &drain("a:1")).is_ok(), "no route sends clients to p");
    let mut s = served();
    s.apply(10, &Command::SetBackendWeight { pool: "p".into(), address: "b:1".into(), weight: 0 }).unwrap();
    assert!(s.apply(11, &drain("a:1")).is_err());
    s.apply(12, &Command::SetBackendState { pool: "p".into(), address: "a:1".into(), state: 2 }).unwrap();
    assert!(s.apply(13, &drain("a:1")).is_ok(), "draining a draining backend takes nothing away");
    assert!(s.apply(14, &drain("z:1")).is_err_and(|e| matches!(e, ApiError::NotFound(_))), "the command's own answer");
}

#[test]
fn a_route_repointed_to_a_pool_that_serves_no_one_is_refused_when_applied() {
    let mut s = served();
    s.apply(10, &pool("empty")).unwrap();
    let before = s.clone();
    let e = s.apply(11, &guarded(Guard::KeepsARouteServed, route("r", "empty"))).unwrap_err();
    assert!(matches!(&e, ApiError::FailedPrecondition(m) if m.contains("pool empty has no backend")), "{e}");
    assert_eq!(s, before);
    s.apply(12, &backend("empty", "c:1")).unwrap();
    assert!(s.apply(13, &guarded(Guard::KeepsARouteServed, route("r", "empty"))).is_ok(), "filled in between");
}

#[test]
fn a_new_affinity_key_is_refused_while_the_pool_holds_bindings() {
    let mut s = served();
    let update = |key: &str| {
        let p = Pool { name: "p".into(), affinity: key.into(), ..Default::default() };
        guarded(Guard::KeepsSessions, Command::UpdatePool { pool: Pb(p), mask: vec!["affinity".into()] })
    };
    assert!(s.apply(10, &update("header:X-User")).is_ok(), "no bindings yet");
    let b =
        SessionBinding { pool: "p".into(), key: "k".into(), backend: "a:1".into(), ttl_ms: 1000, ..Default::default() };
    s.apply(11, &Command::BindSessions { now_ms: 1, bindings: vec![Pb(b)] }).unwrap();
    assert!(s.apply(12, &update("header:x-user")).is_ok(), "the same header, as the proxy reads it");
    let before = s.clone();
    let e = s.apply(13, &update("cookie:sid")).unwrap_err();
    assert!(matches!(&e, ApiError::FailedPrecondition(m) if m.contains("holds session bindings")), "{e}");
    assert_eq!(s, before, "a refused write changes nothing");
}

/// A random write of the kinds that grow the config, or of those that shrink it.
fn random_write(rng: &mut StdRng) -> Command {
    let p = format!("pool-{}", rng.random_range(0..6));
    let a = format!("10.0.{}.{}:8080", rng.random_range(0..3), rng.random_range(0..9));
    match rng.random_range(0..10) {
        0 | 1 => pool(&p),
        2..=5 => backend(&p, &a),
        6 => route(&format!("route-{}", rng.random_range(0..4)), &p),
        7 => Command::RemoveBackend { pool: p, address: a },
        8 => Command::DeleteRoute { name: format!("route-{}", rng.random_range(0..4)) },
        _ => Command::DeletePool { name: p },
    }
}

fn topology_len(s: &State) -> u64 {
    use prost::Message;
    let t = Topology {
        pools: s.pools.values().cloned().collect(),
        backends: s.backends.values().cloned().collect(),
        routes: s.routes.values().cloned().collect(),
        ..Default::default()
    };
    t.encoded_len() as u64
}

#[test]
fn writes_guarded_by_room_never_take_the_config_past_the_limit() {
    let (mut refused, mut taken) = (0, 0);
    // Revisions below 128 take one byte, as do the ones a replaced route keeps: within them
    // the bound is exact.
    for seed in 0..80 {
        let mut rng = StdRng::seed_from_u64(seed);
        let limit = rng.random_range(200..700);
        let mut s = State::default();
        for rev in 1..128 {
            let cmd = guarded(Guard::Room { limit }, random_write(&mut rng));
            let before = s.clone();
            match s.apply(rev, &cmd) {
                Err(ApiError::ResourceExhausted(m)) => {
                    assert!(m.contains(&format!("limit of {limit}")), "{m}");
                    assert_eq!(s, before, "seed {seed}: a refused write changes nothing");
                    refused += 1;
                }
                Err(_) => assert_eq!(s, before),
                Ok(_) => taken += 1,
            }
            assert_eq!(s.topology_bytes(), topology_len(&s), "seed {seed} rev {rev}");
            assert!(s.topology_bytes() <= limit, "seed {seed} rev {rev}: {} past {limit}", s.topology_bytes());
        }
    }
    assert!(
        refused > 500 && taken > 500,
        "the runs reach the limit and work below it: {refused} refused, {taken} taken"
    );
}

#[test]
fn judged_before_it_has_a_revision_a_write_is_measured_at_its_longest() {
    let s = served();
    let add = backend("p", "c:1");
    let exact = growth(&s, &add, 5);
    assert_eq!(growth(&s, &add, u64::MAX), exact + 9, "u64::MAX takes ten bytes, 5 one");
    let now = s.topology_bytes();
    assert!(Guard::Room { limit: now + exact }.check(&s, &add, 5).is_ok());
    assert!(Guard::Room { limit: now + exact }.check(&s, &add, u64::MAX).is_err());
    assert_eq!(growth(&s, &backend("p", "a:1"), 5), 0, "one that exists is refused as such");
    assert_eq!(growth(&s, &backend("nope", "a:1"), 5), 0, "one in no pool too");
}

#[test]
fn guarded_writes_need_level_5_and_do_not_nest_in_the_log() {
    let g = guarded(Guard::KeepsABackend, Command::RemoveBackend { pool: "p".into(), address: "a:1".into() });
    assert_eq!(g.needs(), 5);
    let tls = Pool { name: "p".into(), backend_tls: Some(Default::default()), ..Default::default() };
    assert_eq!(guarded(Guard::Room { limit: 1 }, Command::CreatePool(Pb(tls))).needs(), 5);

    let one: Command = postcard::from_bytes(&postcard::to_allocvec(&g).unwrap()).unwrap();
    assert!(matches!(one, Command::Guarded { ref guards, .. } if guards == &[Guard::KeepsABackend]));
    let nested = Command::Guarded { guards: vec![], cmd: Box::new(g) };
    assert!(postcard::from_bytes::<Command>(&postcard::to_allocvec(&nested).unwrap()).is_err());

    // A forged entry nesting a million deep is refused at the second level, not decoded to
    // the bottom (which would overflow the stack).
    let note = postcard::to_allocvec(&Command::Note).unwrap();
    let wrap = postcard::to_allocvec(&Command::Guarded { guards: vec![], cmd: Box::new(Command::Note) }).unwrap();
    let level = &wrap[..wrap.len() - note.len()];
    let mut deep = level.repeat(1_000_000);
    deep.extend_from_slice(&note);
    assert!(postcard::from_bytes::<Command>(&deep).is_err());
    // The flag is left as found: the next entry decodes.
    assert!(postcard::from_bytes::<Command>(&wrap).is_ok());

    // More guards than any write carries are refused as they are decoded.
    let with = |n: usize| Command::Guarded { guards: vec![Guard::KeepsABackend; n], cmd: Box::new(Command::Note) };
    assert!(postcard::from_bytes::<Command>(&postcard::to_allocvec(&with(MAX_GUARDS)).unwrap()).is_ok());
    let e = postcard::from_bytes::<Command>(&postcard::to_allocvec(&with(MAX_GUARDS + 1)).unwrap()).unwrap_err();
    assert!(matches!(e, postcard::Error::SerdeDeCustom), "{e}");
}

#[test]
fn only_admin_writes_apply_guarded_and_only_once() {
    let mut s = served();
    let before = s.clone();
    let nested = guarded(Guard::KeepsABackend, Command::RemoveBackend { pool: "p".into(), address: "a:1".into() });
    for inner in [nested, Command::SetFeatureLevel(9), Command::ExpireSessions { now_ms: u64::MAX }] {
        let e = s.apply(20, &Command::Guarded { guards: vec![], cmd: Box::new(inner.clone()) }).unwrap_err();
        assert!(matches!(e, ApiError::InvalidArgument(_)), "{inner:?}: {e}");
    }
    assert_eq!(s, before);
}

#[test]
fn a_route_with_edge_authentication_is_not_replaced_by_one_without() {
    use switchyard_proto::v1::RouteAuth;
    let mut s = served();
    let with = Route {
        auth: Some(RouteAuth::default()),
        ..match route("r", "p") {
            Command::SetRoute(Pb(r)) => r,
            _ => unreachable!(),
        }
    };
    s.apply(10, &Command::SetRoute(Pb(with.clone()))).unwrap();
    let before = s.clone();
    let e = s.apply(11, &guarded(Guard::KeepsRouteAuth, route("r", "p"))).unwrap_err();
    assert!(matches!(&e, ApiError::FailedPrecondition(m) if m.contains("has edge authentication")), "{e}");
    assert_eq!(s, before);
    assert!(s.apply(12, &guarded(Guard::KeepsRouteAuth, Command::SetRoute(Pb(with)))).is_ok(), "with its auth");
    let other = Route { name: "other".into(), pool: "p".into(), path_prefix: "/other".into(), ..Default::default() };
    assert!(s.apply(13, &guarded(Guard::KeepsRouteAuth, Command::SetRoute(Pb(other)))).is_ok(), "a new route");
}

#[test]
fn past_the_limit_a_write_that_adds_nothing_still_goes_through() {
    let mut s = served();
    s.apply(10, &pool("q")).unwrap();
    s.apply(11, &backend("q", "c:1")).unwrap();
    // Restamped revisions took the config a byte past its limit.
    let limit = s.topology_bytes() - 1;
    assert!(s.apply(12, &guarded(Guard::Room { limit }, route("r", "q"))).is_ok(), "a repoint grows nothing");
    let e = s.apply(13, &guarded(Guard::Room { limit }, backend("q", "d:1"))).unwrap_err();
    assert!(matches!(e, ApiError::ResourceExhausted(_)), "{e}");
}
