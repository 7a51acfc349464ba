//! Test harness for stitchd on real DPDK PMDs and real Linux hosts.
//!
//! Every test that uses it: checks its prerequisites and fails saying what to install
//! (never skips); uses names unique to the process and call, so two runs never collide;
//! and cleans up in `Drop` (stitchd stopped by its pid, namespaces deleted,
//! `/var/run/dpdk/<prefix>` and the temporary directory removed) even when it fails.
//! DPDK tests in one test binary run one at a time ([`serial`]): on a 2-core machine two
//! busy-polling switches would starve each other.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use stitch_control::client::Client;

pub mod lb;
pub mod pcap;
pub mod relay;
pub mod shell;

static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Holds the DPDK test lock of this test binary.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails unless running as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "pmd-tests need root (DPDK, tap devices, network namespaces): run the README's test command as root"
    );
}

/// Fails unless `cmd` is on PATH, naming the Debian package to install.
pub fn require_cmd(cmd: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "'{cmd}' not found: install it with `apt-get install {package}` (or run scripts/setup.sh)"
    );
}

/// A short name unique to this process and call (interface names must stay <= 15 bytes).
pub fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{:05x}{n:x}", std::process::id() & 0xfffff)
}

/// Path of the stitchd binary built next to this test binary.
pub fn stitchd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STITCHD_BIN") {
        return PathBuf::from(p);
    }
    // Test binaries live in target/<profile>/deps, other binaries in target/<profile>.
    let exe = std::env::current_exe().expect("current_exe");
    let here = exe.parent().expect("exe dir");
    let dir = if here.join("stitchd").is_file() {
        here
    } else {
        here.parent().expect("target dir")
    };
    let bin = dir.join("stitchd");
    assert!(
        bin.is_file(),
        "{} not found: build it first with `cargo build --workspace --bins` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Runs a command; fails the test with its output when it fails.
pub fn sh(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "`{cmd} {}` failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running stitchd, stopped by its pid when dropped.
pub struct Stitchd {
    child: Option<Child>,
    /// The control socket.
    pub socket: PathBuf,
    /// Temporary directory for the socket, the log and test files.
    pub dir: PathBuf,
    prefix: String,
    log: PathBuf,
    /// The full argument list, for [`Stitchd::restart`].
    args: Vec<String>,
}

impl Stitchd {
    /// A fresh temporary directory for a run with id `id`.
    pub fn make_dir(id: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stitchd-test-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test dir");
        dir
    }

    /// Starts stitchd with EAL arguments `eal` (a unique `--file-prefix` and `--no-huge`
    /// are added) and app arguments `app` (the control socket is added), and waits until
    /// its control socket exists, which it creates only once every port is started.
    pub fn start(id: &str, dir: PathBuf, eal: &[String], app: &[String]) -> Stitchd {
        let prefix = format!("st{id}");
        let socket = dir.join("ctl.sock");
        let log = dir.join("stitchd.log");
        let mut args: Vec<String> = vec![
            "--no-huge".into(),
            "-m".into(),
            "512".into(),
            format!("--file-prefix={prefix}"),
        ];
        args.extend(eal.iter().cloned());
        args.push("--".into());
        args.push("--control-socket".into());
        args.push(socket.display().to_string());
        args.extend(app.iter().cloned());
        let logf = fs::File::create(&log).expect("create log");
        let child = Command::new(stitchd_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .expect("spawn stitchd");
        let mut s = Stitchd {
            child: Some(child),
            socket,
            dir,
            prefix,
            log,
            args: args.clone(),
        };
        s.wait_ready(&args);
        s
    }

    /// Stops this stitchd with `signal` (SIGTERM: a clean stop; SIGKILL: a crash), waits
    /// until it has exited, starts it again with the same arguments (its log appended)
    /// and waits until it is ready. Returns the old process's exit status.
    pub fn restart(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("stitchd is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("stitchd did not exit within 20 s of {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let logf = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(stitchd_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .expect("spawn stitchd");
        self.child = Some(child);
        let args = self.args.clone();
        self.wait_ready(&args);
        status
    }

    fn wait_ready(&mut self, args: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "stitchd {} exited with {st} before it was ready:\n{}",
                    args.join(" "),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "stitchd did not create {} within 30 s:\n{}",
            self.socket.display(),
            self.log_text()
        );
    }

    /// What stitchd printed so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// One JSON-RPC call on a new connection.
    pub fn call(
        &self,
        method: &str,
        params: Option<Value>,
    ) -> Result<Value, stitch_control::client::ClientError> {
        let mut c = Client::connect(&self.socket)?;
        c.call(method, params)
    }

    /// Like [`Stitchd::call`], failing the test on error.
    pub fn ok(&self, method: &str, params: Option<Value>) -> Value {
        self.call(method, params)
            .unwrap_or_else(|e| panic!("{method} failed: {e}\nstitchd log:\n{}", self.log_text()))
    }

    /// The `ADDR` of the first `MARKER http://ADDR/...` line stitchd logs (a listener
    /// bound to port 0 says where it is that way), waiting up to 10 s for it.
    pub fn logged_addr(&self, marker: &str) -> String {
        let needle = format!("{marker} http://");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if let Some(rest) = log.split(needle.as_str()).nth(1) {
                return rest.split('/').next().unwrap_or_default().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no '{needle}' line in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Subscribes to stitchd's events (`events.subscribe`): each event's params arrive on
    /// the channel, from a thread that ends when stitchd closes the stream.
    pub fn events(&self) -> std::sync::mpsc::Receiver<Value> {
        let mut s = UnixStream::connect(&self.socket).expect("connect");
        s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"events.subscribe\"}\n")
            .expect("subscribe");
        let mut r = BufReader::new(s);
        let mut first = String::new();
        r.read_line(&mut first).expect("subscription answer");
        assert!(first.contains("\"result\""), "events.subscribe: {first}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in r.lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    break;
                };
                if tx.send(v["params"].clone()).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Sends raw bytes on a connection and reads one response line.
    pub fn raw(&self, bytes: &[u8]) -> Value {
        let mut s = UnixStream::connect(&self.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(bytes).expect("write");
        let mut line = String::new();
        BufReader::new(&s)
            .read_line(&mut line)
            .expect("read response");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {line:?}"))
    }

    /// Sum of a worker counter over all workers.
    pub fn worker_sum(&self, field: &str) -> u64 {
        let st = self.ok("stats.get", None);
        st["workers"]
            .as_array()
            .map(|w| w.iter().map(|x| x[field].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0)
    }

    /// Sum of a drop reason over all workers.
    pub fn drops(&self, reason: &str) -> u64 {
        let st = self.ok("stats.get", None);
        st["workers"]
            .as_array()
            .map(|w| {
                w.iter()
                    .map(|x| x["drops"][reason].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Polls `f` until it is true or `secs` pass.
    pub fn wait_until(&self, secs: u64, what: &str, mut f: impl FnMut(&Stitchd) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}\nstats: {}\nstitchd log:\n{}",
            self.call("stats.get", None)
                .map(|v| v.to_string())
                .unwrap_or_default(),
            self.log_text()
        );
    }

    /// Stops stitchd: SIGTERM to its pid, SIGKILL after 15 s. Returns whether it exited
    /// cleanly (status 0).
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        wait_or_kill(&mut child, Duration::from_secs(15))
    }

    /// Waits for a stitchd that was told to shut down over the control socket.
    pub fn wait_exit(&mut self, secs: u64) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        wait_or_kill(&mut child, Duration::from_secs(secs))
    }
}

fn wait_or_kill(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return st.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl Drop for Stitchd {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(format!("/var/run/dpdk/{}", self.prefix));
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("stitchd log kept in {}", self.log.display());
        }
    }
}

/// Links a test made in the root namespace (persistent taps, bridges, veth ends),
/// deleted when dropped: a persistent tap outlives the stitchd that created it.
#[derive(Default)]
pub struct RootLinks {
    names: Vec<String>,
}

impl RootLinks {
    /// Connects the persistent tap `tap` (made by stitchd with `persist`, left in the root
    /// namespace so a restarted stitchd finds it again) to namespace `ns` through a veth
    /// pair and a bridge: the namespace's end `v<tap>` gets `mac` and `addr`. Frames cross
    /// the tap whole (a tap without a vnet header has no offloads, so the kernel
    /// segments and checksums before it hands them to stitchd).
    pub fn bridge_tap(&mut self, tap: &str, ns: &Netns, mac: &str, addr: &str) {
        let base = tap.trim_start_matches('t');
        let (br, root_end, ns_end) = (format!("b{base}"), format!("p{base}"), format!("v{base}"));
        self.names.push(tap.to_string());
        sh(
            "ip",
            &["link", "add", &br, "type", "bridge", "stp_state", "0"],
        );
        self.names.push(br.clone());
        sh(
            "ip",
            &[
                "link", "add", &root_end, "type", "veth", "peer", "name", &ns_end,
            ],
        );
        self.names.push(root_end.clone());
        for l in [&br, &root_end, tap] {
            let _ = Command::new("sysctl")
                .args(["-qw", &format!("net.ipv6.conf.{l}.disable_ipv6=1")])
                .output();
        }
        sh("ip", &["link", "set", tap, "master", &br]);
        sh("ip", &["link", "set", &root_end, "master", &br]);
        for l in [tap, &root_end, &br] {
            sh("ip", &["link", "set", l, "up"]);
        }
        ns.attach(&ns_end, Some(mac), addr);
    }
}

impl Drop for RootLinks {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["link", "del", n]).output();
        }
    }
}

/// A network namespace made by the test, deleted when dropped.
pub struct Netns {
    /// Its name (under /var/run/netns).
    pub name: String,
}

impl Netns {
    /// The namespace's kernel TCP counter `name` (as `nstat -az` prints it: absolute,
    /// history left alone), e.g. `TcpExtPAWSEstab`, `TcpRetransSegs`, `TcpExtTCPTimeouts`.
    pub fn nstat(&self, name: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nstat", "-asz", name])
            .output()
            .expect("run nstat (iproute2)");
        assert!(out.status.success(), "nstat failed in {}", self.name);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
            })
            .unwrap_or(0)
    }

    /// Creates a namespace with loopback up.
    pub fn new(name: &str) -> Netns {
        require_cmd("ip", "iproute2");
        sh("ip", &["netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME args...`, failing the test on error.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// Runs a command inside the namespace (not checked).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", &self.name, cmd];
        a.extend_from_slice(args);
        Command::new("ip")
            .args(&a)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd} in {}: {e}", self.name))
    }

    /// Moves interface `ifname` into this namespace, sets `mac` (if given) and `addr`, and
    /// brings it up.
    pub fn attach(&self, ifname: &str, mac: Option<&str>, addr: &str) {
        sh("ip", &["link", "set", ifname, "netns", &self.name]);
        if let Some(m) = mac {
            self.ip(&["link", "set", ifname, "address", m]);
        }
        self.ip(&["addr", "add", addr, "dev", ifname]);
        self.ip(&["link", "set", ifname, "up"]);
    }

    /// Runs `f` on a thread that has entered this namespace (its sockets live there).
    pub fn run<F, R>(&self, f: F) -> std::thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a transfer's content is known.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// SHA-256 of everything read from `r` until EOF, and the byte count.
pub fn sha256_of(mut r: impl Read) -> (String, u64) {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).expect("read");
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    (hex(&h.finalize()), n)
}

/// SHA-256 of a byte slice.
pub fn sha256(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(data))
}

/// Lower-case hex of `b` (how the SHA-256 helpers print digests).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
