//! Relays a WebSocket connection after the `101`: bytes are forwarded as they arrive, and
//! only frame headers are parsed (see [`crate::frame`]), so a message costs two reads, two
//! writes and a few header bytes of parsing. Both directions run in one task; an idle
//! connection holds no buffer (a buffer is borrowed from a pool for a read and the write
//! after it). The proxy writes its own frames (Close, Ping) only at frame boundaries: masked
//! toward the backend, unmasked toward the client.
//!
//! [`relay`] runs one select loop per direction; what a direction knows and decides lives in
//! `direction::Direction` (with the timing policy), what the two share in `shared::Shared`,
//! socket I/O in `io`.

pub mod close;
mod direction;
mod io;
pub(crate) mod limits;
mod shared;
mod signal;
pub mod stream;
#[cfg(test)]
mod tests;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

pub use close::CloseHandle;
pub(crate) use direction::write_stall;
use direction::{Direction, TimerAction};
pub use limits::{End, Flow, Limits, Relayed, Side, Why, CLOSE_LINGER};
use shared::{Finished, Shared};
use signal::Seen;
pub use stream::Stream;

use crate::frame::CLOSE_GOING_AWAY;
use crate::stats::BackendStats;

/// "No deadline": a timer parked a day out.
const FAR: Duration = Duration::from_secs(86_400);

/// Relays until both directions are done. `client_early` and `backend_early` are bytes
/// already read past each side's HTTP head.
///
/// This and the functions below return `async move` blocks rather than being `async fn`s:
/// an `async fn` keeps each argument twice in its state (as passed, and moved into the
/// body), and that state is what every idle connection holds.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::manual_async_fn)] // an `async fn` keeps its arguments twice in its state
pub fn relay<'a>(
    client: &'a Stream,
    backend: &'a Stream,
    client_early: &'a [u8],
    backend_early: &'a [u8],
    limits: Limits,
    ctl: &'a CloseHandle,
    stats: &'a BackendStats,
) -> impl Future<Output = Relayed> + 'a {
    async move {
        let sh = Shared::new(Instant::now());
        if matches!((client, backend), (Stream::Plain(_), Stream::Plain(_))) {
            sh.set_plain();
        }
        let c2b = pump(Side::ToBackend, &limits, client, backend, client_early, &sh, ctl, stats);
        let b2c = pump(Side::ToClient, &limits, backend, client, backend_early, &sh, ctl, stats);
        let ((a, to_backend), (b, to_client)) = tokio::join!(c2b, b2c);
        Relayed {
            end: sh.end().unwrap_or(if a.is_err() || b.is_err() { End::Error } else { End::Peer }),
            why: sh.why(),
            first: sh.first(),
            to_backend,
            to_client,
            client_open: sh.client_open(),
        }
    }
}

/// Runs one direction: reads `from`, writes `to`, and lets its [`Direction`] decide the rest.
/// Returns how it ended and what went through it.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::manual_async_fn)] // see [`relay`]'s note on `async fn` state
fn pump<'a>(
    side: Side,
    limits: &'a Limits,
    from: &'a Stream,
    to: &'a Stream,
    early: &'a [u8],
    sh: &'a Shared,
    ctl: &'a CloseHandle,
    stats: &'a BackendStats,
) -> impl Future<Output = (std::io::Result<()>, Flow)> + 'a {
    async move {
        let _finished = Finished(sh);
        let mut d = Direction::new(side, *limits);
        let mut input_failed = false;
        // The loop, in a block of its own so that its `?`s still leave the flow to report.
        let r: std::io::Result<()> = async {
            let d = &mut d;
            if !early.is_empty() {
                // Boxed, as the close paths below: what runs once per connection at most should not
                // widen the state an idle connection keeps.
                Box::pin(d.on_read(early, Instant::now(), to, sh, stats)).await?;
            }
            // The timer lives across iterations: re-creating it for every message would register
            // and deregister it on the hot path. It is made (boxed) the first time this direction
            // has a deadline, so a connection with no idle timeout or pings, the usual backend
            // direction, keeps none. The wake-ups and readiness keep no state but the count each
            // signal was last seen at (and whether this task's waker is in place): an idle
            // connection's state stays small, and polling them takes no lock.
            let (mut woken, mut asked) = (Seen::default(), Seen::default());
            let mut timer: Option<Pin<Box<Sleep>>> = None;
            // The timer has this task's waker and has not fired: polling it again (an atomic
            // registration) waits until it has fired or was re-armed. A poll made with the
            // task's budget spent registers nothing, so it does not count.
            let mut timer_waits = false;
            let mut rearm = true;
            loop {
                // A close the proxy decided goes out once this output is between frames.
                if d.owes_close(sh) {
                    Box::pin(d.close(to, sh)).await?;
                }
                if rearm {
                    // The other peer is gone and this one has closed: nothing more may come
                    // this way (see `Shared::closed_for`).
                    if sh.finished_at().is_some() && sh.closed_for(side.other()) {
                        if side == Side::ToBackend {
                            // The client's socket: what it still sends (a Pong, or anything
                            // after its Close) may come after this, so it is closed by
                            // lingering once the relay is done (`Stream::linger`).
                            sh.leave_client_open();
                            return Ok(());
                        }
                        // What the backend sent meanwhile (a Pong, say) is read first: closing a
                        // socket with unread input resets the connection, and the reset can
                        // overtake the Close still on its way to the peer.
                        let mut b = io::Buf::take();
                        for _ in 0..4 {
                            if !matches!(from.read_some(&mut b), Ok(n) if n > 0) {
                                break;
                            }
                        }
                        return Ok(());
                    }
                    // Activity only pushes deadlines later, so the timer may fire early; `on_timer`
                    // then finds nothing due and it is re-armed here. No timer work per message.
                    match (d.deadline(sh), timer.as_mut()) {
                        (Some(at), Some(t)) => t.as_mut().reset(at),
                        (Some(at), None) => timer = Some(Box::pin(tokio::time::sleep_until(at))),
                        (None, Some(t)) => t.as_mut().reset(Instant::now() + FAR),
                        (None, None) => {}
                    }
                    timer_waits = false;
                    rearm = false;
                }
                let mut read = None;
                tokio::select! {
                    biased;
                    _ = poll_fn(|cx| sh.wake.poll_raised(&mut woken, cx)) => rearm = true,
                    // The client side's loop answers the handle, so exactly one direction does.
                    _ = poll_fn(|cx| ctl.poll_asked(&mut asked, cx)), if d.side() == Side::ToClient => {
                        let code = ctl.requested().unwrap_or(CLOSE_GOING_AWAY);
                        sh.request_close(code, CLOSE_GOING_AWAY, End::Proxy(code), Why::Asked);
                        rearm = true;
                    }
                    _ = poll_fn(|cx| match timer.as_mut() {
                        Some(t) if !timer_waits || t.is_elapsed() => {
                            let registers = tokio::task::coop::has_budget_remaining();
                            let p = t.as_mut().poll(cx);
                            timer_waits = p.is_pending() && registers;
                            p
                        }
                        _ => Poll::Pending,
                    }) => {
                        rearm = true;
                        match d.on_timer(Instant::now(), sh) {
                            TimerAction::Wait => {}
                            TimerAction::Ping => io::write_frame(to, &direction::PING, direction::write_stall(*limits)).await?,
                            TimerAction::Finish => return Ok(()),
                            TimerAction::CloseAndFinish => {
                                Box::pin(d.close(to, sh)).await?;
                                return Ok(());
                            }
                        }
                    }
                    r = poll_fn(|cx| from.poll_readable(cx)) => {
                        r?;
                        let mut b = io::Buf::take();
                        match from.read_some(&mut b) {
                            Ok(0) => {
                                drop(b);
                                Box::pin(d.on_eof(to, sh)).await;
                                return Ok(());
                            }
                            Ok(n) => read = Some((b, n)),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) => {
                                // Reset, or given up by the kernel (a host that vanished): the
                                // peer is gone without a Close, as at an end of stream, and the
                                // other side is told so (1001), not just dropped.
                                drop(b);
                                Box::pin(d.on_eof(to, sh)).await;
                                input_failed = true;
                                return Err(e);
                            }
                        }
                    }
                }
                if let Some((b, n)) = read {
                    let now = Instant::now();
                    // Bound first: a `?` in the match itself would keep its temporary in the state.
                    let step = d.forward(&b[..n], to, sh, stats)?;
                    sh.touch(d.side(), now, d.took_spoke());
                    rearm |= match step {
                        direction::Step::Done(moved) => moved,
                        step => Box::pin(d.finish(step, &b[..n], now, to, sh, stats)).await?,
                    };
                }
            }
        }
        .await;
        if r.is_err() && !input_failed {
            // This output failed (its peer left it unread for the stall bound, or its socket
            // broke): the other peer hears 1001 from the other direction at its next frame
            // boundary, not a bare FIN.
            sh.request_close(CLOSE_GOING_AWAY, CLOSE_GOING_AWAY, End::Error, Why::PeerLost);
        }
        (r, d.flow())
    }
}
