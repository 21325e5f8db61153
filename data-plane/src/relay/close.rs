//! A handle that asks one relayed connection to close. The per-backend registry keeps one per
//! live connection, so a drain, a removed backend or a shutdown can reach it.

use std::sync::atomic::{AtomicU16, Ordering::Relaxed};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

#[derive(Default)]
pub struct CloseHandle {
    notify: Notify,
    /// 0: no close asked for.
    code: AtomicU16,
}

impl CloseHandle {
    /// Asks the connection to close at its next frame boundaries: the client hears `code`,
    /// the backend 1001. A close asked for before the relay starts is not lost (`Notify`
    /// keeps the permit).
    pub fn close(&self, code: u16) {
        self.code.store(code, Relaxed);
        self.notify.notify_one();
    }

    /// The close code asked for, if any.
    pub fn requested(&self) -> Option<u16> {
        match self.code.load(Relaxed) {
            0 => None,
            c => Some(c),
        }
    }

    /// Resolves once a close is asked for (or at once, if one already was and nobody waited).
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}
