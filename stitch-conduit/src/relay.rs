//! A plain TCP relay (a "shell" proxy in the seed's picture), for tests and
//! demonstrations: every connection accepted on `listen` is joined to a new connection
//! to `connect`, bytes copied both ways, half-closes passed on. It counts the bytes it
//! carried and rewrites a stats file (`c2s s2c connections generation`, one line) every 20 ms, so
//! a test can see that after the switch-over only heartbeats cross it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

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

/// Binds `listen`, prints `relay ready` on stderr, relays forever.
///
/// # Errors
/// The I/O error when `listen` cannot be bound.
pub fn run(listen: SocketAddr, connect: SocketAddr, stats: Option<PathBuf>) -> io::Result<()> {
    let l = TcpListener::bind(listen)?;
    let counts = Arc::new(Counts::default());
    if let Some(path) = stats {
        let counts = counts.clone();
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
