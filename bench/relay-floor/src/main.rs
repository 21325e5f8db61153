//! A transparent TCP relay on io_uring: the least a WebSocket relay's I/O can cost here.
//!
//! It forwards bytes both ways and does nothing else: no frame parsing, no timers, no limits,
//! no accounting. Each worker thread owns a ring (single issuer, deferred task work, so
//! completions are reaped in batches inside one `io_uring_enter`); each direction of a
//! connection has one 32 KiB buffer and always one operation in flight: a receive, then the
//! send of what it got, then the next receive. The acceptor thread accepts, connects to the
//! backend (blocking: handshakes are not what this measures) and hands both sockets to a
//! worker through a channel and an eventfd.
//!
//! Usage: relay-floor LISTEN BACKEND [WORKERS]

use std::net::{TcpListener, TcpStream};
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::mpsc;

use io_uring::{opcode, squeue, types, IoUring};

const BUF: usize = 32 * 1024;
/// The eventfd's read, which says new connections are waiting in the channel.
const NEW_CONNECTIONS: u64 = u64::MAX;

/// One direction: bytes read from `from` go to `to`.
struct Dir {
    from: RawFd,
    to: RawFd,
    buf: Box<[u8]>,
    len: usize,
    sent: usize,
}

struct Conn {
    dirs: [Dir; 2],
    in_flight: u32,
    closing: bool,
}

/// An operation's tag: the connection's slot, the direction and whether it is a send.
fn tag(slot: usize, dir: usize, send: bool) -> u64 {
    ((slot as u64) << 2) | ((dir as u64) << 1) | send as u64
}

fn recv(d: &mut Dir, slot: usize, dir: usize) -> squeue::Entry {
    opcode::Recv::new(types::Fd(d.from), d.buf.as_mut_ptr(), BUF as u32).build().user_data(tag(slot, dir, false))
}

fn send(d: &Dir, slot: usize, dir: usize) -> squeue::Entry {
    let rest = &d.buf[d.sent..d.len];
    opcode::Send::new(types::Fd(d.to), rest.as_ptr(), rest.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(tag(slot, dir, true))
}

fn push(ring: &mut IoUring, e: squeue::Entry) {
    // SAFETY: every buffer an entry points at (a connection's direction buffer, the eventfd
    // counter) stays put until that entry's completion is reaped: a connection is freed only
    // with no operation in flight, and the counter lives as long as the worker.
    while unsafe { ring.submission().push(&e) }.is_err() {
        ring.submit().expect("io_uring submit");
    }
}

fn worker(rx: mpsc::Receiver<(RawFd, RawFd)>, efd: RawFd) {
    let mut ring = IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(4096).expect("io_uring");
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut counter = [0u8; 8];
    let wait_new = |ring: &mut IoUring, counter: &mut [u8; 8]| {
        push(ring, opcode::Read::new(types::Fd(efd), counter.as_mut_ptr(), 8).build().user_data(NEW_CONNECTIONS));
    };
    wait_new(&mut ring, &mut counter);
    let mut done = Vec::new();
    loop {
        ring.submit_and_wait(1).expect("io_uring wait");
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for (t, res) in done.drain(..) {
            if t == NEW_CONNECTIONS {
                while let Ok((client, backend)) = rx.try_recv() {
                    let slot = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    let dir = |from, to| Dir { from, to, buf: vec![0u8; BUF].into_boxed_slice(), len: 0, sent: 0 };
                    let c = conns[slot].insert(Conn {
                        dirs: [dir(client, backend), dir(backend, client)],
                        in_flight: 2,
                        closing: false,
                    });
                    for d in 0..2 {
                        let e = recv(&mut c.dirs[d], slot, d);
                        push(&mut ring, e);
                    }
                }
                wait_new(&mut ring, &mut counter);
                continue;
            }
            let (slot, d, was_send) = ((t >> 2) as usize, ((t >> 1) & 1) as usize, t & 1 == 1);
            let c = conns[slot].as_mut().expect("a completion for a live connection");
            c.in_flight -= 1;
            if !c.closing {
                let dir = &mut c.dirs[d];
                let next = match (res, was_send) {
                    (..=0, _) => None,
                    (n, false) => {
                        (dir.len, dir.sent) = (n as usize, 0);
                        Some(send(dir, slot, d))
                    }
                    (n, true) => {
                        dir.sent += n as usize;
                        Some(if dir.sent < dir.len { send(dir, slot, d) } else { recv(dir, slot, d) })
                    }
                };
                match next {
                    Some(e) => {
                        c.in_flight += 1;
                        push(&mut ring, e);
                    }
                    None => {
                        // End or error on one side: both sockets are shut down, which completes
                        // whatever is still in flight on them.
                        c.closing = true;
                        for d in &c.dirs {
                            // SAFETY: a plain syscall on descriptors this connection owns.
                            unsafe { libc::shutdown(d.from, libc::SHUT_RDWR) };
                        }
                    }
                }
            }
            if c.closing && c.in_flight == 0 {
                for d in &c.dirs {
                    // SAFETY: nothing is in flight on them any more, and they are closed once.
                    unsafe { libc::close(d.from) };
                }
                conns[slot] = None;
                free.push(slot);
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(backend)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: relay-floor LISTEN BACKEND [WORKERS]");
        std::process::exit(2);
    };
    let n: usize = args.get(3).map_or(2, |s| s.parse().expect("WORKERS: a number"));
    let listener = TcpListener::bind(listen).expect("bind");
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let (tx, rx) = mpsc::channel();
            // SAFETY: a plain syscall.
            let efd = unsafe { libc::eventfd(0, 0) };
            assert!(efd >= 0, "eventfd");
            std::thread::spawn(move || worker(rx, efd));
            (tx, efd)
        })
        .collect();
    for (i, client) in listener.incoming().enumerate() {
        let Ok(client) = client else { continue };
        let Ok(to) = TcpStream::connect(backend) else { continue };
        let _ = (client.set_nodelay(true), to.set_nodelay(true));
        let (tx, efd) = &workers[i % n];
        tx.send((client.into_raw_fd(), to.into_raw_fd())).expect("worker");
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to the worker's eventfd.
        unsafe { libc::write(*efd, one.as_ptr().cast(), 8) };
    }
}
