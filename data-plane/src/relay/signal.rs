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
    /// Raises whose wake is done: fewer than `raised` while one is between counting and
    /// taking the waker.
    woken: AtomicU32,
    waker: AtomicWaker,
}

/// What one waiter knows of a signal: the count it last saw, and whether its task's waker is
/// in the slot since then. A relay polls its signals on every wake-up of every direction, and
/// registering a waker is two atomic read-modify-writes each time; once registered, the waker
/// stays in the slot until a raise takes it, and a raise counts first, so while the count is
/// unchanged the registration holds and a poll is one load. A registration made while a raise
/// (from another thread) was between counting and waking may be taken by that late wake, so
/// it is not relied on.
#[derive(Default, Clone, Copy)]
pub struct Seen {
    count: u32,
    registered: bool,
}

impl Signal {
    /// Wakes the task that waits on this signal, now or at its next poll.
    pub fn raise(&self) {
        self.count();
        self.wake_counted();
    }

    /// A raise's first half: counted, the waiter not yet woken.
    fn count(&self) {
        self.raised.fetch_add(1, Ordering::Release);
    }

    fn wake_counted(&self) {
        self.waker.wake();
        self.woken.fetch_add(1, Ordering::Release);
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
        // Every raise counted so far has taken the waker it will take: what is registered now
        // stays until the next raise.
        let settled = self.woken.load(Ordering::Acquire) == seen.count;
        self.waker.register(cx.waker());
        // A raise between the check and the registration woke nobody: check again.
        if self.take(seen) {
            Poll::Ready(())
        } else {
            seen.registered = settled;
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

    /// Raises come from other threads (a drain, a shutdown) while the relay polls: each raise
    /// wakes the waiter on its own, also when the waiter polled between a raise's count and
    /// its wake, which is what spinning before each wait makes likely.
    #[test]
    fn every_raise_from_another_thread_wakes_the_waiter() {
        const RAISES: u32 = 5_000;
        let s = Arc::new(Signal::default());
        let (ack, acked) = std::sync::mpsc::channel::<()>();
        let raiser = {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..RAISES {
                    s.raise();
                    if acked.recv_timeout(std::time::Duration::from_secs(5)).is_err() {
                        return false;
                    }
                }
                true
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let mut seen = Seen::default();
            for i in 0..RAISES {
                let mut got = false;
                for _ in 0..(i % 64) {
                    if poll_fn(|cx| Poll::Ready(s.poll_raised(&mut seen, cx))).await.is_ready() {
                        got = true;
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                if !got {
                    let wait = poll_fn(|cx| s.poll_raised(&mut seen, cx));
                    tokio::time::timeout(std::time::Duration::from_secs(5), wait)
                        .await
                        .unwrap_or_else(|_| panic!("raise {i} woke nobody"));
                }
                ack.send(()).unwrap();
            }
        });
        assert!(raiser.join().unwrap(), "the waiter answered every raise");
    }

    /// The waiter polls between a raise's count and its wake (the raise runs on another
    /// thread): the late wake takes the waker registered meanwhile, so the waiter must not
    /// count on that registration, or the next raise wakes nobody.
    #[test]
    fn a_registration_made_during_a_raise_is_made_again() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(Default::default()));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let (s, mut seen) = (Signal::default(), Seen::default());
        assert!(s.poll_raised(&mut seen, &mut cx).is_pending());
        s.count();
        assert!(s.poll_raised(&mut seen, &mut cx).is_ready(), "the count is seen");
        assert!(s.poll_raised(&mut seen, &mut cx).is_pending());
        s.wake_counted();
        flag.0.store(false, Ordering::SeqCst);
        assert!(s.poll_raised(&mut seen, &mut cx).is_pending());
        s.raise();
        assert!(flag.0.load(Ordering::SeqCst), "the next raise woke the waiter");
    }
}
