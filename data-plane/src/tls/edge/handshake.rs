//! The server side of a TLS handshake on [`EdgeTls`], and the async traits the handshake
//! phase (the HTTP head, error answers, plain HTTP through hyper) reads and writes through.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{EdgeTls, Engine, State};

/// The TLS handshake of a wss client on `tcp`: the connection, and the name the client asked
/// for (SNI), when it gave one. The caller bounds it in time.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<(EdgeTls, Option<String>)> {
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let tls = EdgeTls {
        tcp,
        st: Mutex::new(State {
            engine: Engine::Rustls(Box::new(conn)),
            inbox: Vec::new(),
            plain: Vec::new(),
            plain_at: 0,
            outbox: Vec::new(),
            out_at: 0,
            eof: false,
            close_sent: false,
            failed: None,
        }),
    };
    let mut sni = None;
    loop {
        // A read with no room for plaintext: it only moves the handshake on (what the client
        // sends after its Finished waits as plaintext for the first real read).
        let (res, seen) = crate::tls::certs::sni_seen_during(|| tls.read_some(&mut []));
        if seen.is_some() {
            sni = seen;
        }
        let waiting = match res {
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) => return Err(e),
        };
        std::future::poll_fn(|cx| tls.poll_flush_outbox(cx)).await?;
        let (handshaking, eof) = {
            let st = tls.lock();
            let handshaking = match &st.engine {
                Engine::Rustls(conn) => conn.is_handshaking(),
                _ => false,
            };
            (handshaking, st.eof)
        };
        if !handshaking {
            // From here on records are sealed and opened without rustls (see `records`).
            tls.lock().take_keys()?;
            break;
        }
        if eof {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the TLS handshake"));
        }
        if waiting {
            tls.tcp.readable().await?;
        }
    }
    Ok((tls, sni))
}

impl EdgeTls {
    /// Ready once `outbox` is all sent.
    pub(crate) fn poll_flush_outbox(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            {
                let mut st = self.lock();
                st.flush(&self.tcp)?;
                if !st.pending() {
                    return Poll::Ready(Ok(()));
                }
            }
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }
}

impl AsyncRead for EdgeTls {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.read_some(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(self.tcp.poll_read_ready(cx))?,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for EdgeTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.try_write(buf)? {
                0 if !buf.is_empty() => ready!(self.tcp.poll_write_ready(cx))?,
                n => return Poll::Ready(Ok(n)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_outbox(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close_notify()?;
        ready!(self.poll_flush_outbox(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write))
    }
}
