//! A wss connection's side of its records: the keys taken from rustls once the handshake is
//! over, whole records opened into a reader's buffer, and a failure to seal.

use std::io;

use super::{Fail, Opened, Records};
use crate::tls::edge::{broken, Engine, State};

/// The connection's side of the hand-over and of opening records.
impl State {
    /// [`Self::process`] once [`Records`] has the keys: every whole record is opened in place.
    pub(in crate::tls::edge) fn open_records(
        &mut self,
        inb: &mut [u8],
        start: &mut usize,
        out: &mut [u8],
        filled: &mut usize,
    ) -> io::Result<()> {
        let Engine::Records(r) = &mut self.engine else { return Err(self.gone()) };
        let mut key = None;
        while !self.eof {
            let res = match r.whole(&inb[*start..]) {
                Ok(None) => return Ok(()),
                Ok(Some(len)) => r.open(&mut inb[*start..*start + len], &mut self.outbox, &mut key).map(|o| (o, len)),
                Err(f) => Err(f),
            };
            let (opened, len) = match res {
                Ok(ok) => ok,
                Err(f) => return Err(self.failed_records(f)),
            };
            match opened {
                Opened::Data(range) => {
                    let p = &inb[*start + range.start..*start + range.end];
                    let n = p.len().min(out.len() - *filled);
                    out[*filled..*filled + n].copy_from_slice(&p[..n]);
                    *filled += n;
                    self.plain.extend_from_slice(&p[n..]);
                }
                Opened::Closed => self.eof = true,
                Opened::Nothing => {}
            }
            *start += len;
        }
        Ok(())
    }

    /// Hands the keys over from rustls to [`Records`], once the handshake is over and every
    /// record rustls made has been taken.
    pub(in crate::tls::edge) fn take_keys(&mut self) -> io::Result<()> {
        let Engine::Rustls(conn) = std::mem::replace(&mut self.engine, Engine::Gone) else {
            return Ok(());
        };
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(|e| broken(&e))?;
        let records = Records::new(secrets, kernel).map_err(|f| broken(&f.error))?;
        self.engine = Engine::Records(records);
        Ok(())
    }

    /// A record that could not be opened or sealed: the connection is failed, and the alert
    /// the peer is owed goes out first.
    pub(in crate::tls::edge) fn failed_records(&mut self, f: Fail) -> io::Error {
        if let (Engine::Records(r), Some(a)) = (&mut self.engine, f.alert) {
            if let Some(alert) = r.last_alert(a) {
                self.outbox.extend_from_slice(&alert);
            }
        }
        let io = broken(&f.error);
        self.failed = Some(f.error);
        io
    }
}
