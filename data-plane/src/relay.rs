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
mod limits;
mod shared;
mod signal;
pub mod stream;
#[cfg(test)]
mod tests;

use std::future::poll_fn;
use std::time::Duration;

use tokio::time::Instant;

pub use close::CloseHandle;
use direction::{Direction, TimerAction};
pub use limits::{End, Flow, Limits, Relayed, Side, Why};
use shared::{Finished, Shared};
pub use stream::Stream;

use crate::frame::CLOSE_GOING_AWAY;
use crate::stats::BackendStats;

/// "No deadline": a timer parked a day out.
const FAR: Duration = Duration::from_secs(86_400);

/// Relays until both directions are done. `client_early` and `backend_early` are bytes
/// already read past each side's HTTP head.
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    client: &Stream,
    backend: &Stream,
    client_early: &[u8],
    backend_early: &[u8],
    limits: Limits,
    ctl: &CloseHandle,
    stats: &BackendStats,
) -> Relayed {
    let sh = Shared::new(Instant::now());
    let c2b = pump(Side::ToBackend, limits, client, backend, client_early, &sh, ctl, stats);
    let b2c = pump(Side::ToClient, limits, backend, client, backend_early, &sh, ctl, stats);
    let (a, b) = tokio::join!(c2b, b2c);
    Relayed {
        end: sh.end().unwrap_or(if a.is_err() || b.is_err() { End::Error } else { End::Peer }),
        why: sh.why(),
        first: sh.first(),
        to_backend: sh.flow(Side::ToBackend),
        to_client: sh.flow(Side::ToClient),
    }
}

/// Runs one direction: reads `from`, writes `to`, and lets its [`Direction`] decide the rest.
#[allow(clippy::too_many_arguments)]
async fn pump(
    side: Side,
    limits: Limits,
    from: &Stream,
    to: &Stream,
    early: &[u8],
    sh: &Shared,
    ctl: &CloseHandle,
    stats: &BackendStats,
) -> std::io::Result<()> {
    let _finished = Finished(sh);
    // Built here, not passed in: an async fn's arguments take room in its future twice.
    let mut d = Direction::new(side, limits);
    let r = run(&mut d, from, to, early, sh, ctl, stats).await;
    sh.set_flow(side, d.flow());
    r
}

/// The loop of [`pump`].
async fn run(
    d: &mut Direction,
    from: &Stream,
    to: &Stream,
    early: &[u8],
    sh: &Shared,
    ctl: &CloseHandle,
    stats: &BackendStats,
) -> std::io::Result<()> {
    if !early.is_empty() {
        // Boxed, as the close paths below: what runs once per connection at most should not
        // widen the state an idle connection keeps.
        Box::pin(d.on_read(early, Instant::now(), to, sh, stats)).await?;
    }
    // The timer lives across iterations: re-creating it for every message would register
    // and deregister it on the hot path. The wake-ups and readiness keep no state but the
    // count each signal was last seen at: an idle connection's state stays small, and
    // polling them takes no lock.
    let (mut woken, mut asked) = (0u32, 0u32);
    let timer = tokio::time::sleep_until(Instant::now() + FAR);
    tokio::pin!(timer);
    let mut rearm = true;
    loop {
        // A close the proxy decided goes out once this output is between frames.
        if d.owes_close(sh) {
            Box::pin(d.close(to, sh)).await?;
        }
        if rearm {
            // Activity only pushes deadlines later, so the timer may fire early; `on_timer`
            // then finds nothing due and it is re-armed here. No timer work per message.
            timer.as_mut().reset(d.deadline(sh).unwrap_or_else(|| Instant::now() + FAR));
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
            _ = &mut timer => {
                rearm = true;
                match d.on_timer(Instant::now(), sh) {
                    TimerAction::Wait => {}
                    TimerAction::Ping => io::write_frame(to, &direction::PING).await?,
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
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some((b, n)) = read {
            let now = Instant::now();
            sh.touch(d.side(), now);
            rearm |= match d.forward(&b[..n], to, sh, stats)? {
                direction::Step::Done(moved) => moved,
                step => Box::pin(d.finish(step, &b[..n], now, to, sh, stats)).await?,
            };
        }
    }
}
