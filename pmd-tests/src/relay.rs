//! A bare TCP relay (C -> A1 ... A2 -> B) for the stitch engine's step-by-step tests
//! (freeze then abort, refusals), which drive the lifecycle over the control socket
//! themselves. The hand-off (drain, TCP_REPAIR, commit) exists once, in `stitch-shell`,
//! which the whole-flow tests use.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::Netns;

/// A relayed connection: the two sockets and the two pump threads.
pub struct Relay {
    /// Socket on leg A (accepted from C).
    pub ca: TcpStream,
    /// Socket on leg B (connected to B).
    pub ab: TcpStream,
    /// C's address as the relay saw it.
    pub client: SocketAddr,
    /// The relay's listening address (A1).
    pub shell_a: SocketAddr,
    /// The relay's address on leg B (A2).
    pub shell_b: SocketAddr,
    /// B's address.
    pub core: SocketAddr,
    /// Bytes relayed C->B and B->C by the relay itself.
    pub relayed: [Arc<AtomicU64>; 2],
    stop: Arc<AtomicBool>,
    pumps: Vec<JoinHandle<()>>,
    /// The sockets are in repair mode (the switch carries the connection).
    pub handed_off: bool,
}

/// Accepts one connection on `listen` (inside `ns`), connects to `core`, and relays.
/// Returns once the listener is bound; the relay itself arrives on the receiver.
pub fn spawn(ns: &Netns, listen: SocketAddr, core: SocketAddr) -> std::sync::mpsc::Receiver<Relay> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    ns.run(move || {
        let l = TcpListener::bind(listen).expect("relay bind");
        bound_tx.send(()).expect("bound");
        let (ca, client) = l.accept().expect("relay accept");
        let ab = TcpStream::connect_timeout(&core, Duration::from_secs(10))
            .expect("relay connect to core");
        let shell_b = ab.local_addr().expect("local addr");
        let mut r = Relay {
            ca,
            ab,
            client,
            shell_a: listen,
            shell_b,
            core,
            relayed: [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))],
            stop: Arc::new(AtomicBool::new(false)),
            pumps: vec![],
            handed_off: false,
        };
        r.start_pumps();
        tx.send(r).ok();
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("relay did not bind");
    rx
}

fn pump(mut from: TcpStream, mut to: TcpStream, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    from.set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    while !stop.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => {
                // The peer closed: pass the close on (this relay handles close itself
                // only when it still carries the connection).
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
                count.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

impl Relay {
    fn start_pumps(&mut self) {
        self.stop.store(false, Ordering::SeqCst);
        let pairs = [
            (self.ca.try_clone(), self.ab.try_clone(), 0),
            (self.ab.try_clone(), self.ca.try_clone(), 1),
        ];
        for (from, to, i) in pairs {
            let (from, to) = (from.expect("clone"), to.expect("clone"));
            let stop = self.stop.clone();
            let count = self.relayed[i].clone();
            self.pumps
                .push(std::thread::spawn(move || pump(from, to, stop, count)));
        }
    }

    fn stop_pumps(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
    }

    /// `stitch.prepare` params for this connection.
    pub fn prepare_params(&self, teardown: &str) -> Value {
        json!({
            "leg_a": {"client": self.client.to_string(), "shell": self.shell_a.to_string()},
            "leg_b": {"shell": self.shell_b.to_string(), "core": self.core.to_string()},
            "teardown": teardown,
        })
    }

    /// Bytes relayed by the relay itself, both directions.
    pub fn relayed_total(&self) -> u64 {
        self.relayed[0].load(Ordering::SeqCst) + self.relayed[1].load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop_pumps();
        // Sockets in repair mode close silently (no FIN, no RST).
    }
}
