//! The userspace fault relay: a TCP relay in front of one control-plane node that every peer
//! connection to that node passes through. `tc netem` does not work on these kernels, so
//! latency and loss are made here: each chunk is held for a random delay (order kept), a
//! connection is cut with a probability per chunk (what TCP makes of heavy loss: stalls and
//! broken streams), and a black-holed relay stops moving bytes until told otherwise.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::rng::Rng;

/// What the relay does to the bytes it moves.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Each chunk waits `base ± jitter`.
    pub delay: Option<(Duration, Duration)>,
    /// Chance, per chunk, that the connection is cut (both sides closed).
    pub cut_probability: f64,
    /// Nothing moves while set (bytes wait in the sockets, as TCP would retransmit them).
    pub blackhole: bool,
}

impl Faults {
    /// The peer-link weather: 30 ms ± 10 ms and 5 % loss.
    pub fn lossy() -> Faults {
        Faults {
            delay: Some((Duration::from_millis(30), Duration::from_millis(10))),
            cut_probability: 0.05,
            blackhole: false,
        }
    }
}

/// A relay listening on one address and forwarding to one node; stops when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    faults: watch::Sender<Faults>,
    cuts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// The relays' own runtime, one thread: their timing must not wait on the test's runtime.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fault-relay")
        .enable_all()
        .build()
        .expect("the relays' runtime")
}

impl Relay {
    /// Listens on `listen` (port 0: any), forwards each connection to `target`, dialing from
    /// `source`.
    /// Runs on `rt`: the network must not stall when the test's own runtime is busy.
    pub fn start(
        rt: &tokio::runtime::Handle,
        listen: SocketAddr,
        source: IpAddr,
        target: SocketAddr,
        seed: u64,
    ) -> std::io::Result<Relay> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        // `listen` may name port 0.
        let listen = listener.local_addr()?;
        let (faults, rx) = watch::channel(Faults::default());
        let cuts = Arc::new(AtomicU64::new(0));
        let counter = cuts.clone();
        let task = rt.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("register the relay's socket");
            let mut rng = Rng::new(seed);
            loop {
                let client = match listener.accept().await {
                    Ok((c, _)) => c,
                    Err(e) => {
                        // Out of descriptors, say: the relay must outlive it.
                        eprintln!("chaos: relay {listen}: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (rx, counter, seed) = (rx.clone(), counter.clone(), rng.next_u64());
                tokio::spawn(async move {
                    if let Ok(server) = dial(source, target).await {
                        pipe(client, server, rx, counter, seed).await;
                    }
                });
            }
        });
        Ok(Relay { addr: listen, faults, cuts, task })
    }

    pub fn set(&self, f: Faults) {
        self.faults.send_replace(f);
    }

    /// Connections cut by the loss setting so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn dial(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(source, 0))?;
    tokio::time::timeout(Duration::from_secs(3), s.connect(target)).await.map_err(std::io::Error::other)?
}

/// Both directions of one connection; when either ends (or is cut) both sockets close.
async fn pipe(client: TcpStream, server: TcpStream, faults: watch::Receiver<Faults>, cuts: Arc<AtomicU64>, seed: u64) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = direction(cr, sw, faults.clone(), cuts.clone(), seed);
    let down = direction(sr, cw, faults, cuts, seed ^ 0x9e37_79b9_7f4a_7c15);
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Reads chunks from `rd` and hands them, stamped with when they may leave, to a writer that
/// waits for that moment; returns when either side ends or the connection is cut.
async fn direction<R, W>(mut rd: R, mut wr: W, mut faults: watch::Receiver<Faults>, cuts: Arc<AtomicU64>, seed: u64)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut rng = Rng::new(seed);
        let mut buf = vec![0u8; 16 * 1024];
        let mut last_due = Instant::now();
        loop {
            // A black hole holds everything where it is until lifted.
            while faults.borrow_and_update().blackhole {
                if faults.changed().await.is_err() {
                    return;
                }
            }
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let f = *faults.borrow();
            if f.cut_probability > 0.0 && rng.chance(f.cut_probability) {
                cuts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let mut due = Instant::now();
            if let Some((base, jitter)) = f.delay {
                let spread = jitter.as_micros() as u64 * 2;
                let offset = if spread == 0 { 0 } else { rng.below(spread + 1) };
                due += (base + Duration::from_micros(offset)).saturating_sub(jitter);
            }
            // Never overtake an earlier chunk: the stream's order is kept.
            last_due = last_due.max(due);
            if tx.send((last_due, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}
