use super::*;

const W: Waits =
    Waits { lease: Duration::from_millis(120), silence: Duration::from_millis(400), retry: Duration::from_millis(150) };

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn follower() -> Facts {
    Facts {
        voter: true,
        committed: true,
        since_contact: ms(10),
        since_alive: ms(10),
        since_vote: ms(5_000),
        ..Facts::default()
    }
}

#[test]
fn a_follower_stands_after_the_silence_and_not_before() {
    assert_eq!(should_stand(&follower(), &W), None);
    let silent = |n| Facts { since_contact: ms(n), since_alive: ms(n), ..follower() };
    assert_eq!(should_stand(&silent(399), &W), None);
    assert_eq!(should_stand(&silent(400), &W), Some(Why::LeaderSilent));
}

#[test]
fn a_leader_whose_stream_ticks_is_given_longer_but_not_forever() {
    let busy = |n| Facts { since_contact: ms(n), since_alive: ms(20), ..follower() };
    assert_eq!(should_stand(&busy(400), &W), None, "its core is held up, its process is not");
    assert_eq!(should_stand(&busy(1_599), &W), None);
    assert_eq!(should_stand(&busy(1_600), &W), Some(Why::LeaderSilent), "a hung disk does not keep it leader");
}

#[test]
fn a_gone_leader_is_replaced_once_the_lease_is_out_in_id_order() {
    let gone = Facts { gone: true, ..follower() };
    assert_eq!(should_stand(&Facts { since_contact: ms(130), ..gone.clone() }, &W), None, "others' lease still on");
    let first = Facts { since_contact: W.lease + MARGIN, ..gone.clone() };
    assert_eq!(should_stand(&first, &W), Some(Why::LeaderGone));
    assert_eq!(should_stand(&Facts { rank: 1, ..first.clone() }, &W), None, "the second waits one step");
    let second = Facts { rank: 1, since_contact: W.lease + MARGIN + STEP, ..gone };
    assert_eq!(should_stand(&second, &W), Some(Why::LeaderGone));
}

#[test]
fn leaders_learners_and_a_node_that_just_stood_do_not_stand() {
    let silent = Facts { since_contact: ms(1_000), since_alive: ms(1_000), ..follower() };
    assert_eq!(should_stand(&Facts { leading: true, ..silent.clone() }, &W), None);
    assert_eq!(should_stand(&Facts { voter: false, ..silent.clone() }, &W), None);
    assert_eq!(should_stand(&Facts { since_stood: Some(ms(50)), ..silent.clone() }, &W), None);
    assert!(should_stand(&Facts { since_stood: Some(ms(200)), ..silent.clone() }, &W).is_some());
    let unseen = Facts { since_stood: Some(ms(200)), stood_unseen: true, ..silent };
    assert_eq!(should_stand(&unseen, &W), None, "its last standing has not shown yet: openraft's core is busy");
    assert!(should_stand(&Facts { since_stood: Some(ms(400)), ..unseen }, &W).is_some());
}

#[test]
fn without_an_elected_leader_a_voter_stands_again_after_its_retry_wait() {
    let candidate = Facts { committed: false, since_vote: ms(100), ..follower() };
    assert_eq!(should_stand(&candidate, &W), None);
    assert_eq!(should_stand(&Facts { since_vote: ms(150), ..candidate }, &W), Some(Why::NoLeader));
    let sole = Facts { sole_voter: true, ..Facts::default() };
    assert_eq!(should_stand(&Facts { voter: true, ..sole }, &W), Some(Why::SoleVoter));
}

#[test]
fn a_prevote_passes_only_when_most_voters_hear_no_leader() {
    let lease = ms(120);
    let live = Some(LeaderReply { leader_id: 2, term: 5, since_leader_ms: 30, log_behind: false });
    let lapsed = Some(LeaderReply { leader_id: 2, term: 5, since_leader_ms: 130, log_behind: false });
    let none = Some(LeaderReply { leader_id: 0, term: 6, since_leader_ms: u64::MAX, log_behind: false });
    let leading = Some(LeaderReply { leader_id: 3, term: 5, since_leader_ms: 0, log_behind: false });
    assert!(majority_willing(&[None, lapsed], 3, lease), "the leader is dead, the other follower's lease ran out");
    assert!(!majority_willing(&[leading, live], 3, lease), "a restarted node facing a live leader");
    assert!(!majority_willing(&[None, None], 3, lease), "cut off from both");
    assert!(majority_willing(&[none, None], 3, lease));
    assert!(!majority_willing(&[lapsed, live, leading, None], 5, lease), "2 of 5");
    assert!(majority_willing(&[lapsed, none, live, None], 5, lease), "3 of 5");
    let longer = Some(LeaderReply { leader_id: 0, term: 6, since_leader_ms: u64::MAX, log_behind: true });
    let voted = Some(LeaderReply { leader_id: 0, term: 6, since_leader_ms: 20, log_behind: false });
    assert!(!majority_willing(&[voted, None], 3, lease), "it just voted for a candidate");
    assert!(!majority_willing(&[longer, None], 3, lease), "the one that answered has a longer log");
    assert!(majority_willing(&[longer, none], 3, lease), "the other would vote for this node");

    // Decided early only when the rest cannot change it.
    assert_eq!(decided(&[None], 1, 3, lease), None, "the dead leader refused first; the follower may still say yes");
    assert_eq!(decided(&[None, lapsed], 0, 3, lease), Some(true));
    assert_eq!(decided(&[lapsed], 1, 3, lease), Some(true), "no need to wait for a stopped leader");
    assert_eq!(decided(&[None, None], 0, 3, lease), Some(false));
    assert_eq!(decided(&[live], 1, 3, lease), None);
    assert_eq!(decided(&[None, live, None], 1, 5, lease), Some(false), "2 of 5 at best");
    assert_eq!(decided(&[None, live], 2, 5, lease), None);
}

#[test]
fn ranks_skip_the_leader() {
    let ranks: Vec<usize> = [1, 3, 4, 5].iter().map(|&me| rank(1..=5, me, Some(2))).collect();
    assert_eq!(ranks, [0, 1, 2, 3]);
}
