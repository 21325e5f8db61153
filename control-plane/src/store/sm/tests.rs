use super::*;

#[tokio::test]
async fn snapshot_data_that_disagrees_with_its_meta_is_not_installed() {
    use openraft::{CommittedLeaderId, Membership};
    let dir = tempfile::tempdir().unwrap();
    let db = crate::store::open_with(dir.path(), 1, false).unwrap();
    let mut sm = StateMachineStore::open(db, dir.path()).unwrap();
    let at = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
    let nodes = std::collections::BTreeMap::from([(1, openraft::BasicNode::new("127.0.0.1:1"))]);
    let membership = StoredMembership::new(Some(at(1)), Membership::new(vec![[1].into()], nodes));
    let data = rebase_snapshot(
        &sm.get_snapshot_builder().await.build_snapshot().await.unwrap().snapshot.into_inner(),
        at(7),
        membership.clone(),
    )
    .unwrap();
    let meta =
        |last| SnapshotMeta { last_log_id: Some(last), last_membership: membership.clone(), snapshot_id: "s".into() };

    let e = sm.install_snapshot(&meta(at(9)), Box::new(Cursor::new(data.clone()))).await.unwrap_err();
    assert!(e.to_string().contains("its meta"), "{e}");
    assert_eq!(sm.applied_state().await.unwrap().0, None, "nothing was installed");
    let other = SnapshotMeta { last_membership: StoredMembership::default(), ..meta(at(7)) };
    assert!(sm.install_snapshot(&other, Box::new(Cursor::new(data.clone()))).await.is_err());

    sm.install_snapshot(&meta(at(7)), Box::new(Cursor::new(data))).await.unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, Some(at(7)));
}

#[test]
fn a_damaged_row_of_the_old_format_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let sm = db.open_tree("sm").unwrap();
    // A client's row is `c/NAME`: one byte of it is what a torn or corrupted key leaves.
    sm.insert(b"c", b"x".to_vec()).unwrap();
    let Err(e) = load_rows(&sm) else { panic!("a damaged row is refused") };
    assert!(e.to_string().contains("too short"), "{e}");
}
