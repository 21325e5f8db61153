//! The timing policy alone, with no sockets: `now` is passed in.

use super::*;

const S: Duration = Duration::from_secs(1);

fn client_output(idle: Option<u64>, ping: Option<u64>) -> (Direction, Shared, Instant) {
    let limits = Limits {
        max_message: 1 << 20,
        idle_timeout: idle.map(Duration::from_secs),
        ping_interval: ping.map(Duration::from_secs),
        extensions: false,
    };
    let t0 = Instant::now();
    (Direction::new(Side::ToClient, limits), Shared::new(t0), t0)
}

#[test]
fn the_deadline_is_the_earliest_event_and_activity_moves_it() {
    let (d, sh, t0) = client_output(Some(10), Some(3));
    assert_eq!(d.deadline(&sh), Some(t0 + 3 * S));
    assert_eq!(d.due(t0 + 2 * S, &sh), None);
    assert_eq!(d.due(t0 + 3 * S, &sh), Some(Event::PingDue));
    // The backend speaking keeps the connection from idling, not the client from a ping.
    sh.touch(Side::ToClient, t0 + 2 * S, true);
    assert_eq!(d.deadline(&sh), Some(t0 + 3 * S));
    sh.touch(Side::ToBackend, t0 + 2 * S, true);
    assert_eq!(d.deadline(&sh), Some(t0 + 5 * S));
    // A timer armed earlier fires early and finds nothing to do.
    let mut d = d;
    assert_eq!(d.on_timer(t0 + 3 * S, &sh), TimerAction::Wait);
}

#[test]
fn the_backend_output_waits_only_on_closing() {
    let limits = Limits { max_message: 1, idle_timeout: Some(S), ping_interval: Some(S), extensions: false };
    let t0 = Instant::now();
    let (d, sh) = (Direction::new(Side::ToBackend, limits), Shared::new(t0));
    assert_eq!(d.deadline(&sh), None);
    sh.request_close(CLOSE_GOING_AWAY, CLOSE_GOING_AWAY, End::Proxy(CLOSE_GOING_AWAY), Why::Asked);
    let closing = sh.close().unwrap().at + CLOSE_LINGER;
    assert_eq!(d.deadline(&sh), Some(closing));
    assert_eq!(d.due(closing, &sh), Some(Event::Closing));
}

#[test]
fn an_unanswered_ping_is_not_repeated_and_ends_as_a_dead_client() {
    let (mut d, sh, t0) = client_output(Some(10), Some(3));
    assert_eq!(d.on_timer(t0 + 3 * S, &sh), TimerAction::Ping);
    assert_eq!(d.deadline(&sh), Some(t0 + 6 * S));
    // Woken early (here by nothing), it neither pings again nor gives up.
    assert_eq!(d.on_timer(t0 + 5 * S, &sh), TimerAction::Wait);
    assert_eq!(d.deadline(&sh), Some(t0 + 6 * S));
    assert_eq!(d.on_timer(t0 + 6 * S, &sh), TimerAction::Finish);
    assert_eq!(sh.end(), Some(End::DeadClient));
}

#[test]
fn an_answered_ping_schedules_the_next_one() {
    let (mut d, sh, t0) = client_output(None, Some(3));
    assert_eq!(d.on_timer(t0 + 3 * S, &sh), TimerAction::Ping);
    sh.touch(Side::ToBackend, t0 + 4 * S, true);
    assert_eq!(d.deadline(&sh), Some(t0 + 7 * S));
    assert_eq!(d.due(t0 + 7 * S, &sh), Some(Event::PingDue));
}

#[test]
fn a_ping_due_mid_frame_waits_for_the_boundary_not_the_timer() {
    let (mut d, sh, t0) = client_output(Some(10), Some(3));
    d.t.feed(&[0x81, 10, b'h', b'a']).unwrap();
    assert_eq!(d.on_timer(t0 + 3 * S, &sh), TimerAction::Wait);
    assert!(d.ping_pending);
    assert_eq!(d.deadline(&sh), Some(t0 + 10 * S), "only idle is left to the timer");
}

#[test]
fn no_pings_after_the_peers_close_went_by() {
    let (mut d, sh, _) = client_output(None, Some(3));
    d.t.feed(&frame::close_frame(1000, "", None)).unwrap();
    assert_eq!(d.deadline(&sh), None);
}

#[test]
fn idling_decides_a_1001_close_which_stops_idle_and_ping() {
    let (mut d, sh, t0) = client_output(Some(10), Some(30));
    assert_eq!(d.on_timer(t0 + 10 * S, &sh), TimerAction::Wait);
    let c = sh.close().expect("close decided");
    assert_eq!((c.client, c.backend, sh.end()), (1001, 1001, Some(End::Proxy(1001))));
    assert_eq!(d.deadline(&sh), Some(c.at + CLOSE_LINGER));
}

#[test]
fn the_other_direction_ending_takes_precedence() {
    let (mut d, sh, t0) = client_output(Some(1), Some(1));
    drop(crate::relay::shared::Finished(&sh));
    let other = sh.finished_at().unwrap() + CLOSE_LINGER;
    assert_eq!(d.deadline(&sh), Some(other.min(t0 + S)));
    assert_eq!(d.due(t0 + 2 * S, &sh), Some(Event::OtherEnded), "over idle and ping");
    assert_eq!(d.on_timer(t0 + 2 * S, &sh), TimerAction::Finish);
}

#[test]
fn the_constant_ping_is_the_frame_the_encoder_makes() {
    assert_eq!(PING.to_vec(), crate::frame::control_frame(crate::frame::OP_PING, b"sy", None));
}

/// A client that only answers the proxy's Pings is alive but idle: the idle timeout still
/// ends it (the Pongs kept it open for good when they counted as use).
#[test]
fn pongs_answer_pings_but_do_not_keep_an_idle_connection_open() {
    let (mut d, sh, t0) = client_output(Some(8), Some(3));
    assert_eq!(d.on_timer(t0 + 3 * S, &sh), TimerAction::Ping);
    sh.touch(Side::ToBackend, t0 + 4 * S, false);
    assert_eq!(d.on_timer(t0 + 7 * S, &sh), TimerAction::Ping, "answered: the next ping, no dead client");
    sh.touch(Side::ToBackend, t0 + 7 * S, false);
    assert_eq!(d.due(t0 + 8 * S, &sh), Some(Event::Idle));
}

/// What a chunk of frames tells the idle timeout: anything but a Pong is use.
#[test]
fn the_tracker_tells_pongs_from_use() {
    let mask = Some([1, 2, 3, 4]);
    let mut client = frame::Tracker::new(1 << 20, frame::Peer::Client);
    client.feed(&frame::control_frame(frame::OP_PONG, b"p", mask)).unwrap();
    assert!(!std::mem::take(&mut client.spoke), "a Pong alone");
    client.feed(&frame::control_frame(frame::OP_PING, b"p", mask)).unwrap();
    assert!(std::mem::take(&mut client.spoke), "a Ping of the client's own is use");
    let mut text = frame::control_frame(frame::OP_PONG, b"", mask);
    text.extend(frame::control_frame(frame::OP_TEXT, b"hi", mask));
    client.feed(&text).unwrap();
    assert!(std::mem::take(&mut client.spoke), "a Pong and a message");
}
