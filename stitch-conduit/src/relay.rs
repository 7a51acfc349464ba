//! A plain TCP relay (a "shell" proxy in the seed's picture), for tests and
//! demonstrations: every connection accepted on `listen` is joined to a new connection
//! to `connect`, bytes copied both ways, half-closes passed on. With `udp`, datagrams
//! instead: each client address gets its own upstream socket, replies go back to it. It counts the bytes it
//! carried and rewrites a stats file (`c2s s2c connections generation`, one line) every 20 ms, so
//! a test can see that after the switch-over only heartbeats cross it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counts {
    c2s: AtomicU64,
    s2c: AtomicU64,
    conns: AtomicU64,
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn write_stats(counts: Arc<Counts>, path: PathBuf) {
    thread::spawn(move || {
        let tmp = path.with_extension("tmp");
        for generation in 0u64.. {
            let line = format!(
                "{} {} {} {generation}\n",
                counts.c2s.load(Ordering::Relaxed),
                counts.s2c.load(Ordering::Relaxed),
                counts.conns.load(Ordering::Relaxed)
            );
            if std::fs::write(&tmp, line).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
            thread::sleep(Duration::from_millis(20));
        }
    });
}

/// Binds `listen`, prints `relay ready` on stderr, relays forever (TCP, or UDP when
/// `udp`).
///
/// # Errors
/// The I/O error when `listen` cannot be bound.
pub fn run(
    listen: SocketAddr,
    connect: SocketAddr,
    stats: Option<PathBuf>,
    udp: bool,
    delay: Duration,
) -> io::Result<()> {
    let counts = Arc::new(Counts::default());
    if udp {
        let sock = UdpSocket::bind(listen)?;
        if let Some(path) = stats {
            write_stats(counts.clone(), path);
        }
        eprintln!("relay ready: udp {listen} -> {connect}");
        return relay_udp(sock, connect, counts, delay);
    }
    let l = TcpListener::bind(listen)?;
    if let Some(path) = stats {
        write_stats(counts.clone(), path);
    }
    eprintln!("relay ready: {listen} -> {connect}");
    for c in l.incoming().flatten() {
        let counts = counts.clone();
        thread::spawn(move || {
            let Ok(s) = TcpStream::connect(connect) else {
                return;
            };
            let _ = c.set_nodelay(true);
            let _ = s.set_nodelay(true);
            counts.conns.fetch_add(1, Ordering::Relaxed);
            let (Ok(c2), Ok(s2)) = (c.try_clone(), s.try_clone()) else {
                return;
            };
            let k = counts.clone();
            let t = thread::spawn(move || pump(c2, s2, &k.c2s));
            pump(s, c, &counts.s2c);
            let _ = t.join();
        });
    }
    Ok(())
}

/// A datagram waiting in the delay line.
struct Delayed {
    arrived: Instant,
    data: Vec<u8>,
    sock: Arc<UdpSocket>,
    /// `None`: the socket is connected (upstream); `Some`: back to this client.
    to: Option<SocketAddr>,
}

/// Forwards datagrams `delay` after they arrived, in order (a slow proxy path), and
/// counts them.
fn delay_line(delay: Duration, counts: Arc<Counts>) -> Sender<Delayed> {
    let (tx, rx) = mpsc::channel::<Delayed>();
    thread::spawn(move || {
        for d in rx {
            let due = d.arrived + delay;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            let (sent, count) = match d.to {
                Some(a) => (d.sock.send_to(&d.data, a), &counts.s2c),
                None => (d.sock.send(&d.data), &counts.c2s),
            };
            if sent.is_ok() {
                count.fetch_add(d.data.len() as u64, Ordering::Relaxed);
            }
        }
    });
    tx
}

fn relay_udp(
    sock: UdpSocket,
    connect: SocketAddr,
    counts: Arc<Counts>,
    delay: Duration,
) -> io::Result<()> {
    let out = delay_line(delay, counts.clone());
    crate::udp::big_receive_buffer(&sock);
    let sock = Arc::new(sock);
    let mut ups: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let any: SocketAddr = if connect.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, client) = sock.recv_from(&mut buf)?;
        let up = match ups.entry(client) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => {
                let up = UdpSocket::bind(any)?;
                up.connect(connect)?;
                crate::udp::big_receive_buffer(&up);
                let up = Arc::new(up);
                let (back, r, out) = (sock.clone(), up.clone(), out.clone());
                thread::spawn(move || {
                    let mut b = vec![0u8; 65_536];
                    while let Ok(m) = r.recv(&mut b) {
                        let d = Delayed {
                            arrived: Instant::now(),
                            data: b[..m].to_vec(),
                            sock: back.clone(),
                            to: Some(client),
                        };
                        if out.send(d).is_err() {
                            return;
                        }
                    }
                });
                counts.conns.fetch_add(1, Ordering::Relaxed);
                e.insert(up).clone()
            }
        };
        let d = Delayed {
            arrived: Instant::now(),
            data: buf[..n].to_vec(),
            sock: up,
            to: None,
        };
        if out.send(d).is_err() {
            return Ok(());
        }
    }
}
