//! A wake-up for the one task that runs a relay: a counter and that task's waker. Lighter
//! than `tokio::sync::Notify` for this use: a waiter keeps only the count it last saw (not a
//! 64-byte waiter node in every connection's state), and polling it takes no lock (a
//! `Notified` locks the waiter list on every poll, and a relay polls both directions on every
//! wake-up).

use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

#[derive(Default)]
pub struct Signal {
    raised: AtomicU32,
    waker: AtomicWaker,
}

/// What one waiter knows of a signal: the count it last saw, and whether its task's waker is
/// in the slot since then. A relay polls its signals on every wake-up of every direction, and
/// registering a waker is two atomic read-modify-writes each time; once registered, the waker
/// stays in the slot until a raise takes it, and a raise counts first, so while the count is
/// unchanged the registration holds and a poll is one load.
#[derive(Default, Clone, Copy)]
pub struct Seen {
    count: u32,
    registered: bool,
}

impl Signal {
    /// Wakes the task that waits on this signal, now or at its next poll.
    pub fn raise(&self) {
        self.raised.fetch_add(1, Ordering::Release);
        self.waker.wake();
    }

    /// Ready when the signal was raised since `seen`, which it then updates. Every waiter is
    /// in the same task for the signal's life (the relay's), so the one waker slot serves them
    /// all, and a waiter that registered that task's waker need not register it again until
    /// a raise.
    pub fn poll_raised(&self, seen: &mut Seen, cx: &mut Context<'_>) -> Poll<()> {
        if self.take(seen) {
            return Poll::Ready(());
        }
        if seen.registered {
            // No raise was counted since this waiter registered, so none has taken the waker:
            // one that is counting now wakes the task after it counts.
            return Poll::Pending;
        }
        self.waker.register(cx.waker());
        // A raise between the check and the registration woke nobody: check again.
        if self.take(seen) {
            Poll::Ready(())
        } else {
            seen.registered = true;
            Poll::Pending
        }
    }

    fn take(&self, seen: &mut Seen) -> bool {
        let now = self.raised.load(Ordering::Acquire);
        if now == seen.count {
            return false;
        }
        // The raise took the waker (or is about to): the next wait registers again.
        *seen = Seen { count: now, registered: false };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_raise_before_the_wait_is_not_lost_and_each_waiter_sees_it_once() {
        let s = Arc::new(Signal::default());
        s.raise();
        let mut seen = Seen::default();
        poll_fn(|cx| s.poll_raised(&mut seen, cx)).await;
        let pending = poll_fn(|cx| Poll::Ready(s.poll_raised(&mut seen, cx))).await;
        assert!(pending.is_pending(), "one raise woke the waiter twice");
        let s2 = s.clone();
        let t = tokio::spawn(async move {
            let mut seen = Seen { count: 1, registered: false };
            poll_fn(|cx| s2.poll_raised(&mut seen, cx)).await;
        });
        tokio::task::yield_now().await;
        s.raise();
        tokio::time::timeout(std::time::Duration::from_secs(5), t).await.expect("a raise woke no waiter").unwrap();
    }
}
