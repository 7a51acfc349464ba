//! Test support: four network namespaces (core1, shell1, shell2, core2) joined by veth
//! pairs, the daemons started inside them as processes, applications as threads that
//! enter a namespace, and readiness waits (log lines, control-socket state, stats file
//! generations) instead of sleeps.
//!
//! Topology (198.18.0.0/15 only):
//!
//! ```text
//!  core1 .1 ---- .2 shell1 .5 ---- .6 shell2 .9 ---- .10 core2
//!    .13 ------------------ direct link ------------------ .14
//! ```
//!
//! Everything made here is removed in `Drop`: processes killed by pid, namespaces
//! deleted.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

pub const CORE1_SHELL: &str = "198.18.0.1";
pub const SHELL1_CORE: &str = "198.18.0.2";
pub const SHELL1_SHELL: &str = "198.18.0.5";
pub const SHELL2_SHELL: &str = "198.18.0.6";
pub const SHELL2_CORE: &str = "198.18.0.9";
pub const CORE2_SHELL: &str = "198.18.0.10";
pub const CORE1_DIRECT: &str = "198.18.0.13";
pub const CORE2_DIRECT: &str = "198.18.0.14";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {:?}: {e}. These tests need root and iproute2 \
                 (apt-get install iproute2)",
                args[0]
            )
        });
    assert!(
        out.status.success(),
        "{args:?} failed: {}. These tests need root (CAP_NET_ADMIN) and iproute2 with \
         network-namespace support (apt-get install iproute2)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The four namespaces, their links, and a scratch directory.
pub struct Net {
    pub core1: String,
    pub shell1: String,
    pub shell2: String,
    pub core2: String,
    pub dir: PathBuf,
}

impl Net {
    pub fn new() -> Net {
        let tag = format!(
            "sc{}x{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("stitch-conduit-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let net = Net {
            core1: format!("{tag}c1"),
            shell1: format!("{tag}s1"),
            shell2: format!("{tag}s2"),
            core2: format!("{tag}c2"),
            dir,
        };
        for ns in net.all() {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        net.link(&net.core1, CORE1_SHELL, &net.shell1, SHELL1_CORE);
        net.link(&net.shell1, SHELL1_SHELL, &net.shell2, SHELL2_SHELL);
        net.link(&net.shell2, SHELL2_CORE, &net.core2, CORE2_SHELL);
        net.link(&net.core1, CORE1_DIRECT, &net.core2, CORE2_DIRECT);
        net
    }

    fn all(&self) -> [&str; 4] {
        [&self.core1, &self.shell1, &self.shell2, &self.core2]
    }

    fn link(&self, a: &str, a_ip: &str, b: &str, b_ip: &str) {
        let last = |ip: &str| ip.rsplit('.').next().unwrap_or("0").to_string();
        let (ia, ib) = (format!("v{}", last(a_ip)), format!("v{}", last(b_ip)));
        sh(&[
            "ip", "link", "add", &ia, "netns", a, "type", "veth", "peer", "name", &ib, "netns", b,
        ]);
        for (ns, ifname, ip) in [(a, &ia, a_ip), (b, &ib, b_ip)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/30"),
                "dev",
                ifname,
            ]);
            sh(&["ip", "-n", ns, "link", "set", ifname, "up"]);
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts `stitch-conduit ARGS` inside `ns`, stderr to `<dir>/<name>.log`.
    pub fn spawn(&self, ns: &str, name: &str, args: &[&str]) -> Proc {
        let log = self.path(&format!("{name}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_stitch-conduit")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn stitch-conduit under ip netns exec");
        Proc {
            child: Some(child),
            log,
        }
    }

    /// Writes a file in the scratch directory and returns its path as a string.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write file");
        p.display().to_string()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.all() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A daemon process; killed by its pid when dropped.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `needle` in the log; fails with the log if the process exits first.
    pub fn wait_log(&mut self, needle: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            if self.log_text().contains(needle) {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "process exited ({st}) before {needle:?}:\n{}",
                        self.log_text()
                    );
                }
            }
            assert!(
                t0.elapsed() < limit,
                "no {needle:?} within {limit:?}:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// One control request, one JSON answer.
pub fn ctl(sock: &Path, req: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("control {sock:?}: {e}"));
    s.write_all(format!("{req}\n").as_bytes())
        .expect("control write");
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("control read");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("control answer {line:?}: {e}"))
}

/// The first connection in `list`.
pub fn first_conn(sock: &Path) -> Option<serde_json::Value> {
    ctl(sock, r#"{"cmd":"list"}"#)["connections"]
        .get(0)
        .cloned()
}

/// Polls `f` every 5 ms until it holds; fails naming `what` (and `context()`).
pub fn wait_for(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            context()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Relay stats file: (bytes c2s + s2c, generation).
pub fn relay_bytes(path: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return (0, 0);
    }
    (v[0] + v[1], v[3])
}

/// Relay bytes once the stats file has been rewritten twice after now (so it counts
/// everything relayed before this call).
pub fn relay_bytes_settled(path: &Path) -> u64 {
    let (_, g0) = relay_bytes(path);
    let mut out = 0;
    wait_for(
        "relay stats rewritten",
        Duration::from_secs(5),
        || {
            let (b, g) = relay_bytes(path);
            out = b;
            g >= g0 + 2
        },
        || format!("{path:?}"),
    );
    out
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// What one application end saw.
#[derive(Debug)]
pub struct AppResult {
    pub received: usize,
    /// Everything received, to check it is a prefix of what the peer sent.
    pub data: Vec<u8>,
    pub sha: [u8; 32],
    pub clean_eof: bool,
    pub ended_at: Instant,
}

/// An application end: writes `first`, waits for the gate, writes `second`, closes its
/// sending side; reads until EOF or error.
pub struct App {
    pub writer: JoinHandle<()>,
    pub reader: JoinHandle<AppResult>,
}

pub fn run_app(s: TcpStream, first: Vec<u8>, second: Vec<u8>, gate: mpsc::Receiver<()>) -> App {
    let mut w = s.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        if w.write_all(&first).is_err() {
            return;
        }
        if gate.recv().is_err() {
            return;
        }
        if w.write_all(&second).is_err() {
            return;
        }
        let _ = w.shutdown(Shutdown::Write);
    });
    let reader = thread::spawn(move || {
        let mut s = s;
        let mut h = Sha256::new();
        let mut data = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let clean_eof = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(k) => {
                    h.update(&buf[..k]);
                    data.extend_from_slice(&buf[..k]);
                }
                Err(_) => break false,
            }
        };
        AppResult {
            received: data.len(),
            data,
            sha: h.finalize().into(),
            clean_eof,
            ended_at: Instant::now(),
        }
    });
    App { writer, reader }
}

/// Accepts one connection on `addr` inside `ns`.
pub fn server_in(ns: &str, addr: &str) -> (JoinHandle<TcpStream>, mpsc::Receiver<()>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let addr = addr.to_string();
    let h = in_ns(ns, move || {
        let l = TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let _ = ready_tx.send(());
        let (s, _) = l.accept().expect("accept");
        s
    });
    (h, ready_rx)
}

/// Connects to `addr` inside `ns`.
pub fn connect_in(ns: &str, addr: &str) -> TcpStream {
    let addr = addr.to_string();
    in_ns(ns, move || {
        TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    })
    .join()
    .expect("connect thread")
}
