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

impl Signal {
    /// Wakes the task that waits on this signal, now or at its next poll.
    pub fn raise(&self) {
        self.raised.fetch_add(1, Ordering::Release);
        self.waker.wake();
    }

    /// Ready when the signal was raised since `seen`, which it then updates. Every waiter is
    /// in the same task, so the one waker slot serves them all.
    pub fn poll_raised(&self, seen: &mut u32, cx: &mut Context<'_>) -> Poll<()> {
        if self.take(seen) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A raise between the check and the registration woke nobody: check again.
        if self.take(seen) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn take(&self, seen: &mut u32) -> bool {
        let now = self.raised.load(Ordering::Acquire);
        if now == *seen {
            return false;
        }
        *seen = now;
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
        let mut seen = 0;
        poll_fn(|cx| s.poll_raised(&mut seen, cx)).await;
        let pending = poll_fn(|cx| Poll::Ready(s.poll_raised(&mut seen, cx))).await;
        assert!(pending.is_pending(), "one raise woke the waiter twice");
        let s2 = s.clone();
        let t = tokio::spawn(async move {
            let mut seen = 1;
            poll_fn(|cx| s2.poll_raised(&mut seen, cx)).await;
        });
        tokio::task::yield_now().await;
        s.raise();
        tokio::time::timeout(std::time::Duration::from_secs(5), t).await.expect("a raise woke no waiter").unwrap();
    }
}
