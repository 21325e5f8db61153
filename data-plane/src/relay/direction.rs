//! One direction of a relayed connection: what has gone through its output (frame
//! boundaries), what the proxy still owes that output (its Close, a Ping), and when the
//! direction's timer must act. The timing policy lives in [`Direction::schedule`] only:
//! [`Direction::deadline`] arms the timer with its earliest entry, [`Direction::on_timer`]
//! acts on whichever entry is due.

use std::io;
use std::time::Duration;

use super::stream::Stream;
use tokio::time::Instant;

use super::io::{shutdown_write, try_write, unfinished, write_frame, write_rest};
use super::limits::{End, Flow, Limits, Side, Why, CLOSE_LINGER, PEER_CLOSING};
use super::shared::Shared;
use crate::frame::{self, Tracker, Violation, CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG};
use crate::stats::BackendStats;

/// What a direction's timer waits for, in precedence order: when several are due, the first
/// listed is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The proxy decided to close `CLOSE_LINGER` ago: its Close went out at the first frame
    /// boundary and the peer had the rest of that time to finish, or this output never
    /// reached a boundary and ends without it.
    Closing,
    /// The other direction ended `CLOSE_LINGER` ago.
    OtherEnded,
    /// A peer's Close went by `PEER_CLOSING` ago and the closing handshake has not ended.
    PeerClosing,
    /// No traffic either way for the idle timeout (watched by the client output).
    Idle,
    /// A whole ping interval passed after our ping without a word from the client.
    DeadClient,
    /// The client has been quiet for a ping interval: ping it.
    PingDue,
}

/// What the relay loop does after the timer fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    /// Nothing more to do now (the timer fired early, or a close was requested).
    Wait,
    /// Write [`ping`] to the output.
    Ping,
    /// This direction is done.
    Finish,
    /// Send the held Close (the backend never answered ours), then this direction is done.
    CloseAndFinish,
}

/// Where [`Direction::forward`] stopped.
pub enum Step {
    /// All done; whether the deadline may have moved.
    Done(bool),
    /// The socket took `sent` bytes of the read's `fed.ok_len`: the rest must wait.
    Rest { sent: usize, fed: Fed },
    /// Written; the read left this owed.
    Owes(Owed),
}

/// What a read fed to the tracker, kept until its bytes are written.
pub struct Fed {
    before: u64,
    had_close: bool,
    was_boundary: bool,
    ok_len: usize,
    violation: Option<Violation>,
}

/// What a read leaves the output owed once its bytes are out.
pub enum Owed {
    Nothing,
    /// A limit was broken: the close it decided.
    Close,
    /// A ping that waited for a frame boundary.
    Ping,
}

pub struct Direction {
    side: Side,
    t: Tracker,
    idle_timeout: Option<Duration>,
    ping_interval: Option<Duration>,
    /// How long one write may wait on a peer that does not read.
    stall: Duration,
    /// The proxy's Close went out on this output (or the peer's own did); what the input still
    /// sends is discarded.
    sent_close: bool,
    /// A ping fell due while this output was mid-frame; it goes out at the next boundary.
    ping_pending: bool,
    ping_sent: Option<Instant>,
    /// The backend's Close answered ours while the client's Close was held: it was kept from
    /// the client, who hears the proxy's instead.
    swallowed: bool,
    /// Bytes passed on, and the code of the proxy's own Close on this output.
    bytes: u64,
    proxy_close: Option<u16>,
}

impl Direction {
    pub fn new(side: Side, limits: Limits) -> Direction {
        Direction {
            side,
            t: Tracker::new(limits.max_message, sender(side)).with_extensions(limits.extensions),
            idle_timeout: limits.idle_timeout,
            ping_interval: limits.ping_interval,
            stall: write_stall(limits),
            sent_close: false,
            ping_pending: false,
            ping_sent: None,
            swallowed: false,
            bytes: 0,
            proxy_close: None,
        }
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// Whether the input sent more than Pongs since this was last asked (see
    /// [`Tracker::spoke`](crate::frame::Tracker)).
    pub fn took_spoke(&mut self) -> bool {
        std::mem::take(&mut self.t.spoke)
    }

    /// What went through this direction so far.
    pub fn flow(&self) -> Flow {
        Flow {
            bytes: self.bytes,
            messages: self.t.messages,
            peer_close: self.t.close_code(),
            proxy_close: self.proxy_close,
        }
    }

    /// When each event falls due (`None`: not pending), in precedence order. Activity only
    /// moves these later, so a timer armed with an earlier value fires early, finds nothing
    /// due, and is re-armed.
    fn schedule(&self, sh: &Shared) -> [(Event, Option<Instant>); 6] {
        let close = sh.close();
        // Idle and ping are the client output's, and stop once a close is decided.
        let watch = self.side == Side::ToClient && close.is_none();
        let idle = self.idle_timeout.filter(|_| watch).map(|idle| sh.last_any() + idle);
        let (mut dead, mut ping) = (None, None);
        if let Some(every) = self.ping_interval.filter(|_| watch) {
            let last_client = sh.last_client();
            match self.ping_sent {
                Some(at) if last_client < at => dead = Some(at + every),
                // A pending ping waits for a frame boundary, not for the timer; after the
                // peer's Close went by, no more pings.
                _ if self.ping_pending || self.t.saw_close => {}
                _ => ping = Some(last_client + every),
            }
        }
        [
            (Event::Closing, close.map(|c| c.at + CLOSE_LINGER)),
            (Event::OtherEnded, sh.finished_at().map(|f| f + CLOSE_LINGER)),
            // Watched by the client output only, which keeps a timer already (the idle
            // timeout's, usually): the backend output would make one for it on every close.
            (Event::PeerClosing, sh.close_seen_at().filter(|_| self.side == Side::ToClient).map(|c| c + PEER_CLOSING)),
            (Event::Idle, idle),
            (Event::DeadClient, dead),
            (Event::PingDue, ping),
        ]
    }

    /// When the timer should next fire, if anything is pending.
    pub fn deadline(&self, sh: &Shared) -> Option<Instant> {
        self.schedule(sh).into_iter().filter_map(|(_, at)| at).min()
    }

    /// The event due at `now` that takes precedence, if any.
    pub fn due(&self, now: Instant, sh: &Shared) -> Option<Event> {
        self.schedule(sh).into_iter().find(|(_, at)| at.is_some_and(|at| now >= at)).map(|(e, _)| e)
    }

    /// Acts on what is due at `now`.
    pub fn on_timer(&mut self, now: Instant, sh: &Shared) -> TimerAction {
        match self.due(now, sh) {
            None => TimerAction::Wait,
            Some(Event::Closing) if self.owes_held_close(sh) => TimerAction::CloseAndFinish,
            Some(Event::Closing | Event::OtherEnded | Event::PeerClosing) => TimerAction::Finish,
            Some(Event::Idle) => {
                sh.request_close(CLOSE_GOING_AWAY, CLOSE_GOING_AWAY, End::Proxy(CLOSE_GOING_AWAY), Why::Idle);
                TimerAction::Wait
            }
            Some(Event::DeadClient) => {
                // The backend hears the client is gone (1001, from the other direction at its
                // next frame boundary), not a bare FIN.
                sh.request_close(CLOSE_GOING_AWAY, CLOSE_GOING_AWAY, End::DeadClient, Why::PeerLost);
                sh.set_end(End::DeadClient);
                TimerAction::Finish
            }
            Some(Event::PingDue) if self.t.at_boundary() => {
                self.ping_sent = Some(now);
                TimerAction::Ping
            }
            Some(Event::PingDue) => {
                self.ping_pending = true;
                TimerAction::Wait
            }
        }
    }

    /// Handles bytes read from this direction's input at `now`: forwards them, unless they
    /// break a limit (then what precedes the offending frame goes through, and a close is
    /// decided). Returns whether the deadline may have moved (the timer must be re-armed).
    pub async fn on_read(
        &mut self,
        data: &[u8],
        now: Instant,
        to: &Stream,
        sh: &Shared,
        stats: &BackendStats,
    ) -> io::Result<bool> {
        match self.forward(data, to, sh, stats)? {
            Step::Done(rearm) => Ok(rearm),
            step => self.finish(step, data, now, to, sh, stats).await,
        }
    }

    /// [`Self::on_read`] as far as it goes without waiting, which is all of it for nearly
    /// every read: the relay loop awaits [`Self::finish`] (boxed) only for the rest, so the
    /// state every connection keeps has no room for a write that waits.
    pub fn forward(&mut self, data: &[u8], to: &Stream, sh: &Shared, stats: &BackendStats) -> io::Result<Step> {
        if self.sent_close {
            // Our Close is out: what the peer still sends is discarded.
            return Ok(Step::Done(false));
        }
        let before = self.t.messages;
        let was_boundary = self.t.at_boundary();
        let had_close = self.t.saw_close;
        let (mut ok_len, violation) = match self.t.feed(data) {
            Ok(n) => (n, None),
            Err((n, v)) => (n, Some(v)),
        };
        if !had_close && self.t.saw_close && self.holds(sh) {
            // The backend's answer to our Close: the client hears the proxy's own instead.
            if let Some(at) = self.t.close_start {
                ok_len = at;
                self.swallowed = true;
            }
        }
        // A Close going by may end the relay (`Shared::closed_for`): the loop looks again.
        let closed_now = !had_close && self.t.saw_close;
        let fed = Fed { before, had_close, was_boundary, ok_len, violation };
        if ok_len > 0 {
            // Usually the socket takes it all at once. Otherwise wait, but not forever: a peer
            // that stops reading must not pin the connection (and its timers).
            let sent = try_write(to, &data[..ok_len])?;
            if unfinished(to, sent, ok_len) {
                return Ok(Step::Rest { sent, fed });
            }
        }
        Ok(match self.account(fed, sh, stats) {
            Owed::Nothing => Step::Done(closed_now),
            owed => Step::Owes(owed),
        })
    }

    /// Finishes what [`Self::forward`] could not: the rest of a write, then what the read
    /// left owed. Returns whether the deadline may have moved.
    pub async fn finish(
        &mut self,
        step: Step,
        data: &[u8],
        now: Instant,
        to: &Stream,
        sh: &Shared,
        stats: &BackendStats,
    ) -> io::Result<bool> {
        let mut closed_now = false;
        let owed = match step {
            Step::Done(rearm) => return Ok(rearm),
            Step::Rest { sent, fed } => {
                write_rest(to, &data[sent..fed.ok_len], now + self.stall).await?;
                closed_now = !fed.had_close && self.t.saw_close;
                self.account(fed, sh, stats)
            }
            Step::Owes(owed) => owed,
        };
        match owed {
            Owed::Nothing => Ok(closed_now),
            Owed::Close => {
                self.sent_close = self.send_close(to, sh).await?;
                Ok(true)
            }
            Owed::Ping => {
                write_frame(to, &PING, self.stall).await?;
                self.ping_sent = Some(Instant::now());
                self.ping_pending = false;
                Ok(true)
            }
        }
    }

    /// Counts what a read passed on, once it is written, and says what it leaves owed.
    fn account(&mut self, fed: Fed, sh: &Shared, stats: &BackendStats) -> Owed {
        let Fed { before, had_close, was_boundary, ok_len, violation } = fed;
        self.bytes += ok_len as u64;
        if !had_close && self.t.saw_close {
            sh.peer_ended(self.side);
            sh.close_came(self.side, Instant::now());
            if !self.swallowed {
                sh.close_went(self.side);
            }
        }
        stats.traffic.add(self.side, self.t.messages - before, ok_len as u64);
        if let Some(v) = violation {
            self.on_violation(v, ok_len > 0 || was_boundary, sh);
            return Owed::Close;
        }
        if self.ping_pending && self.t.at_boundary() && !self.t.saw_close {
            return Owed::Ping;
        }
        Owed::Nothing
    }

    /// A close is decided and this output is between frames: our Close is due (for a held
    /// client Close, once the backend answered).
    pub fn owes_close(&self, sh: &Shared) -> bool {
        !self.sent_close && self.t.at_boundary() && sh.close().is_some() && (!self.holds(sh) || self.swallowed)
    }

    /// This output is the client's and its Close waits for the backend's answer.
    fn holds(&self, sh: &Shared) -> bool {
        self.side == Side::ToClient && sh.close().is_some_and(|c| c.hold_client)
    }

    /// A held Close is still owed and could go out now.
    fn owes_held_close(&self, sh: &Shared) -> bool {
        self.holds(sh) && !self.sent_close && self.t.at_boundary() && (!self.t.saw_close || self.swallowed)
    }

    /// The peer's own Close went out on this output (a second one is not allowed).
    fn forwarded_close(&self) -> bool {
        self.t.saw_close && !self.swallowed
    }

    /// Sends our Close, when [`Self::owes_close`] (or a held one at the end of lingering).
    pub async fn close(&mut self, to: &Stream, sh: &Shared) -> io::Result<()> {
        self.sent_close = self.forwarded_close() || self.send_close(to, sh).await?;
        Ok(())
    }

    /// The input hung up without a Close frame (crashed, killed, cut off): the output still
    /// gets a proper Close (the code decided, if the proxy decided to close), then the FIN.
    pub async fn on_eof(&mut self, to: &Stream, sh: &Shared) {
        if !self.sent_close && !self.forwarded_close() && self.t.at_boundary() {
            let code = sh.close().map_or(CLOSE_GOING_AWAY, |c| match self.side {
                Side::ToClient => c.client,
                Side::ToBackend => c.backend,
            });
            if write_frame(to, &proxy_close(self.side, code), self.stall).await.is_ok() {
                self.proxy_close = Some(code);
                sh.close_went(self.side);
            }
        }
        sh.peer_ended(self.side);
        // When the other direction is already done, or ends now because the peer this one
        // writes to has closed and the peer that hung up owes nothing more
        // (`Shared::closed_for`), the relay ends and the socket is closed (a client's by
        // lingering), which sends the FIN itself: a plain socket needs no separate shutdown
        // here (TLS still says close_notify first).
        let ending = sh.finished_at().is_some() || (sh.closed_for(self.side) && sh.close_went_to(self.side.other()));
        if !(ending && matches!(to, Stream::Plain(_))) {
            let _ = shutdown_write(to);
        }
    }

    /// The input broke a limit: decides the close. `at_boundary` tells whether the output is
    /// still between frames, i.e. none of the offending header went out with an earlier read.
    fn on_violation(&mut self, v: Violation, at_boundary: bool, sh: &Shared) {
        let (code, why) = match v {
            Violation::MessageTooBig => (CLOSE_TOO_BIG, Why::TooBig),
            Violation::Protocol(_) => (CLOSE_PROTOCOL_ERROR, Why::Protocol(self.side)),
        };
        // The side that broke the limit hears why; the other side hears the proxy is going away.
        // A client still gets the backend's replies to what it sent before.
        match self.side {
            Side::ToBackend => sh.request_close_held(code, CLOSE_GOING_AWAY, End::Proxy(code), why),
            Side::ToClient => sh.request_close(CLOSE_GOING_AWAY, code, End::Proxy(CLOSE_GOING_AWAY), why),
        }
        // The tracker stopped at the offending header. If part of it went out earlier the
        // tracker stays mid-frame, so no Close is written after half a header (the connection
        // just ends).
        if at_boundary {
            let messages = self.t.messages;
            // Only following frames now, not judging them.
            self.t = Tracker::new(u64::MAX, sender(self.side)).with_extensions(true);
            self.t.messages = messages;
        }
    }

    /// Writes the proxy's Close if one is decided and the output is at a boundary. Returns
    /// whether it did.
    async fn send_close(&mut self, to: &Stream, sh: &Shared) -> io::Result<bool> {
        let Some(codes) = sh.close() else { return Ok(false) };
        if !self.t.at_boundary() {
            return Ok(false);
        }
        let code = match self.side {
            Side::ToClient => codes.client,
            Side::ToBackend => codes.backend,
        };
        write_frame(to, &proxy_close(self.side, code), self.stall).await?;
        self.proxy_close = Some(code);
        sh.close_went(self.side);
        Ok(true)
    }
}

/// Who sends what a direction reads.
fn sender(side: Side) -> frame::Peer {
    match side {
        Side::ToBackend => frame::Peer::Client,
        Side::ToClient => frame::Peer::Server,
    }
}

/// The proxy's Ping (only ever sent to the client, so unmasked).
/// A constant, so that a ping owes no buffer across its write.
pub const PING: [u8; 4] = [0x80 | frame::OP_PING, 2, b's', b'y'];

/// The proxy's own Close toward one side: masked toward the backend, plain toward the client.
fn proxy_close(side: Side, code: u16) -> frame::CodeClose {
    match side {
        Side::ToClient => frame::code_close(code, None),
        Side::ToBackend => frame::code_close(code, Some(rand::random())),
    }
}

/// How long one write may wait on a peer that does not read before the connection ends: 60 s
/// unless the connection's timers say sooner (NGINX's `send_timeout`).
pub(crate) fn write_stall(limits: Limits) -> Duration {
    let mut d = Duration::from_secs(60);
    if let Some(idle) = limits.idle_timeout {
        d = d.min(idle);
    }
    if let Some(p) = limits.ping_interval {
        d = d.min(p * 2);
    }
    d.max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests;
