//! A handle that asks one relayed connection to close. The per-backend registry keeps one per
//! live connection, so a drain, a removed backend or a shutdown can reach it.

use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::task::{Context, Poll};

use super::signal::{Seen, Signal};

#[derive(Default)]
pub struct CloseHandle {
    signal: Signal,
    /// 0: no close asked for.
    code: AtomicU16,
}

impl CloseHandle {
    /// Asks the connection to close at its next frame boundaries: the client hears `code`,
    /// the backend 1001. A close asked for before the relay starts is not lost.
    pub fn close(&self, code: u16) {
        self.code.store(code, Relaxed);
        self.signal.raise();
    }

    /// The close code asked for, if any.
    pub fn requested(&self) -> Option<u16> {
        match self.code.load(Relaxed) {
            0 => None,
            c => Some(c),
        }
    }

    /// Ready once a close was asked for after `seen` (start from 0: one asked for before the
    /// wait counts). One task waits on a handle: the relay's.
    pub(crate) fn poll_asked(&self, seen: &mut Seen, cx: &mut Context<'_>) -> Poll<()> {
        self.signal.poll_raised(seen, cx)
    }

    /// Resolves once a close is asked for (at once, if one already was).
    #[cfg(test)]
    pub(crate) async fn asked(&self) {
        let mut seen = Seen::default();
        std::future::poll_fn(|cx| self.poll_asked(&mut seen, cx)).await
    }
}
