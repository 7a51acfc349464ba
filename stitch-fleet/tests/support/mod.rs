//! Test support: a private prosody per test (temp dir, free port, accounts
//! written into its data directory, stopped by pid), fleet processes whose
//! log lines the tests wait on, and clean-up guards.
//!
//! Tests synchronise on readiness — a port that accepts, a log line — never
//! on sleeps. Waits have generous deadlines so a loaded machine only makes a
//! test slower, and a deadline that passes fails the test with the log.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Deadline for any single wait.
pub const WAIT: Duration = Duration::from_secs(40);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short tag for names (namespaces, veths): `[a-z0-9]`, 7 chars,
/// unique within this test process (and across processes unless their
/// pids agree modulo 4096).
pub fn tag() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{:03x}{:04x}", std::process::id() % 4096, n % 0x1_0000)
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!(
            "stitch-fleet-{what}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fails (never skips) with what to install when a tool is missing.
pub fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "'{tool}' not found: install the Debian package '{package}' (scripts/setup-fleet.sh)"
    );
}

/// A private prosody in its own temp dir (removed after it stops).
pub struct Prosody {
    inner: stitch_fleet::prosody::Prosody,
    _dir: TempDir,
}

impl Prosody {
    /// Starts prosody serving `hosts`, with `accounts` as (user, host,
    /// password); with `tls` (certificate, key) it requires STARTTLS.
    pub fn start(
        hosts: &[&str],
        accounts: &[(&str, &str, &str)],
        tls: Option<(&Path, &Path)>,
    ) -> Prosody {
        let dir = TempDir::new("prosody");
        let inner = stitch_fleet::prosody::Prosody::start(dir.path(), hosts, accounts, tls)
            .unwrap_or_else(|e| panic!("{e}"));
        Prosody { inner, _dir: dir }
    }

    pub fn addr(&self) -> String {
        self.inner.addr()
    }

    pub fn restart(&mut self) {
        self.inner.restart().unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn kill(&mut self) {
        self.inner.kill();
    }
}

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    closed: bool,
}

/// A fleet process whose standard error is collected line by line.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    lines: Arc<(Mutex<Lines>, Condvar)>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stitch-fleet")
}

impl Proc {
    pub fn spawn(name: &str, args: &[String]) -> Proc {
        Proc::spawn_env(name, args, &[])
    }

    pub fn spawn_env(name: &str, args: &[String], env: &[(String, String)]) -> Proc {
        let mut child = Command::new(bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stitch-fleet");
        let stderr = child.stderr.take().expect("stderr");
        let lines: Arc<(Mutex<Lines>, Condvar)> = Arc::default();
        let l2 = lines.clone();
        let echo = std::env::var_os("FLEET_TEST_ECHO").is_some();
        let n2 = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[{n2}] {line}");
                }
                let (m, cv) = &*l2;
                m.lock().unwrap_or_else(|p| p.into_inner()).lines.push(line);
                cv.notify_all();
            }
            let (m, cv) = &*l2;
            m.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            cv.notify_all();
        });
        Proc {
            name: name.to_owned(),
            child: Some(child),
            lines,
        }
    }

    /// Waits for the first line after index `from` containing `needle`;
    /// returns its index and text.
    pub fn wait_from(&self, from: usize, needle: &str) -> (usize, String) {
        let (m, cv) = &*self.lines;
        let deadline = Instant::now() + WAIT;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some((i, l)) = g
                .lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| l.contains(needle))
            {
                return (i, l.clone());
            }
            let now = Instant::now();
            assert!(
                now < deadline && !g.closed,
                "{}: no line containing {needle:?} (closed: {}); log:\n{}",
                self.name,
                g.closed,
                g.lines.join("\n")
            );
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Waits for a line containing `needle` (from the start of the log).
    pub fn wait(&self, needle: &str) -> String {
        self.wait_from(0, needle).1
    }

    /// Number of lines so far.
    pub fn len(&self) -> usize {
        self.lines
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines
            .len()
    }

    /// Lines containing `needle` among the first `upto` (None: all).
    pub fn count(&self, needle: &str, upto: Option<usize>) -> usize {
        let g = self.lines.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = upto.unwrap_or(g.lines.len()).min(g.lines.len());
        g.lines[..n].iter().filter(|l| l.contains(needle)).count()
    }

    /// Every line containing `needle`.
    pub fn grep(&self, needle: &str) -> Vec<String> {
        let g = self.lines.0.lock().unwrap_or_else(|p| p.into_inner());
        g.lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    pub fn log(&self) -> String {
        self.lines
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines
            .join("\n")
    }

    /// Asks it to stop (SIGTERM, by pid) and waits until it has exited;
    /// SIGKILL if it has not within the deadline.
    pub fn terminate(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill();
    }

    /// Stops it by pid.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The Unix-ms stamp at the start of a log line.
pub fn stamp(line: &str) -> u128 {
    line.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no stamp in {line:?}"))
}

pub fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Namespaces whose name starts with `prefix-`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect()
}

/// Removes what an agent killed by the test left: processes in its
/// namespaces (by pid) and the namespaces it created (by their unique names).
pub struct NetnsGuard(pub String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for ns in netns_with_prefix(&self.0) {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// REST helper: returns (status, body as JSON).
pub fn rest(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let r = stitch_fleet::http::call(addr, method, path, body).expect("REST call");
    let v = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("{method} {path}: body not JSON ({e}): {}", r.body));
    (r.status, v)
}

/// A test CA and a server certificate (signed by it) for `hosts`, made with
/// the openssl command: (CA file, certificate, key).
pub fn make_certs(dir: &Path, hosts: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    require("openssl", "openssl");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=stitch-fleet test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=fleet.test",
    ]);
    let sans: Vec<String> = hosts.iter().map(|h| format!("DNS:{h}")).collect();
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
            sans.join(",")
        ),
    )
    .expect("write ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}
