use super::*;

#[test]
fn initial_cluster() {
    let m = parse_initial_cluster("1=127.0.0.1:7401, 2=127.0.0.1:7402").unwrap();
    assert_eq!(m[&2], "127.0.0.1:7402");
    assert!(parse_initial_cluster("1=a:1,1=b:2").is_err());
    assert!(parse_initial_cluster("1=a:1,2=a:1").is_err(), "two nodes at one address");
    assert!(parse_initial_cluster("x=a:1").is_err());
    assert!(parse_initial_cluster("1=nope").is_err());
}

#[test]
fn metrics_listen_is_an_address_or_off() {
    assert_eq!(parse_metrics_listen("127.0.0.1:0").unwrap(), Some("127.0.0.1:0".parse().unwrap()));
    assert_eq!(parse_metrics_listen("off").unwrap(), None);
    let e = parse_metrics_listen("7480").unwrap_err().to_string();
    assert!(e.contains("--metrics-listen") && e.contains("off"), "{e}");
    let c = Args { id: Some(1), ..Default::default() }.into_config().unwrap();
    assert_eq!((c.metrics_listen.unwrap().port(), c.metrics_listen_default), (7480, true));
    let c = Args { id: Some(1), metrics_listen: Some("off".into()), ..Default::default() }.into_config().unwrap();
    assert_eq!((c.metrics_listen, c.metrics_listen_default), (None, false));
}

#[test]
fn timings_past_their_bounds_are_refused_not_overflowed() {
    let check = |f: fn(&mut NodeConfig)| {
        let mut c = NodeConfig::new(1, "127.0.0.1:7400".parse().unwrap(), "d".into());
        f(&mut c);
        c.validate().map_err(|e| e.to_string())
    };
    assert!(check(|_| {}).is_ok());
    let e = check(|c| c.heartbeat_ms = 1 << 63).unwrap_err();
    assert!(e.contains("at most 60000"), "{e}");
    let e = check(|c| c.election_max_ms = u64::MAX / 3 + 1).unwrap_err();
    assert!(e.contains("at most 60000"), "{e}");
    assert!(check(|c| c.write_timeout = Duration::ZERO).unwrap_err().contains("--write-timeout-ms"));
    assert!(check(|c| c.snapshot_every = 0).unwrap_err().contains("--snapshot-every"));
}

#[test]
fn file_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "id = 2\nlisten = \"127.0.0.1:9000\"\ninitial-cluster = \"1=a:1,2=b:2\"\n").unwrap();
    let args = Args { config: Some(f.clone()), listen: Some("127.0.0.1:9001".parse().unwrap()), ..Default::default() };
    let c = args.into_config().unwrap();
    assert_eq!(c.id, 2);
    assert_eq!(c.listen.port(), 9001);
    assert_eq!(c.advertise_addr(), "b:2");
    std::fs::write(&f, "id = 2\nbogus = 1\n").unwrap();
    let err = Args { config: Some(f), ..Default::default() }.into_config().unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[test]
fn without_tls_a_node_stays_on_loopback_unless_told_otherwise() {
    let args = |listen: &str, insecure| Args {
        id: Some(1),
        listen: Some(listen.parse().unwrap()),
        insecure,
        ..Default::default()
    };
    let c = args("127.0.0.1:7400", false).into_config().unwrap();
    assert_eq!(c.security(), Security::Loopback);
    let e = args("0.0.0.0:7400", false).into_config().unwrap_err().to_string();
    assert!(e.contains("not a loopback address") && e.contains("--insecure"), "{e}");
    assert_eq!(args("0.0.0.0:7400", true).into_config().unwrap().security(), Security::Insecure);
    let half = Args { tls_ca: Some("ca.crt".into()), ..args("127.0.0.1:7400", false) };
    let e = half.into_config().unwrap_err().to_string();
    assert!(e.contains("all three"), "{e}");
}

#[test]
fn the_replication_deadline_outlasts_a_heartbeat_and_passes_openraft() {
    for (hb, min, max) in [(50, 120, 240), (100, 400, 700), (1, 3, 4), (10, 21, 30)] {
        let base = NodeConfig::new(1, "127.0.0.1:7400".parse().unwrap(), "d".into());
        let c = NodeConfig { heartbeat_ms: hb, election_min_ms: min, election_max_ms: max, ..base };
        c.validate().unwrap();
        let d = c.replication_deadline_ms();
        assert!(hb < d && d < min, "{hb}/{min}: {d}");
        let (emin, emax) = c.openraft_election_ms();
        assert!(c.lease() >= Duration::from_millis(min) && c.lease() <= Duration::from_millis(max), "{c:?}");
        let raft = openraft::Config {
            heartbeat_interval: d,
            election_timeout_min: emin,
            election_timeout_max: emax,
            enable_heartbeat: false,
            enable_elect: false,
            ..Default::default()
        };
        raft.validate().unwrap();
    }
}

#[test]
fn the_config_limit_defaults_to_64_mib_and_stays_within_a_proxys_message() {
    let c = Args { id: Some(1), ..Default::default() }.into_config().unwrap();
    assert_eq!(c.max_config_bytes, 64 << 20);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "id = 1\nmax-config-bytes = 1048576\n").unwrap();
    let c = Args { config: Some(f.clone()), ..Default::default() }.into_config().unwrap();
    assert_eq!(c.max_config_bytes, 1 << 20);
    let c = Args { config: Some(f), max_config_bytes: Some(2 << 20), ..Default::default() }.into_config().unwrap();
    assert_eq!(c.max_config_bytes, 2 << 20, "the flag wins over the file");
    for bad in [0, 1000, switchyard_model::limits::MAX_GRPC_MESSAGE as u64] {
        let e = Args { id: Some(1), max_config_bytes: Some(bad), ..Default::default() }.into_config().unwrap_err();
        assert!(e.to_string().contains("--max-config-bytes must be 65536 to 134217728"), "{e}");
    }
}
