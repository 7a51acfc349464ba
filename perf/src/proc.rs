//! Child processes of a benchmark or a test (DUTs, the generator): started with their
//! output in a log file, stopped by their own pid (SIGTERM, then SIGKILL), and their
//! DPDK runtime directory `/var/run/dpdk/<file-prefix>` removed when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails unless running as root (DPDK needs it here).
///
/// # Errors
/// When not root.
pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} needs root (DPDK): run it as root");
    }
    Ok(())
}

/// A short name unique to this process and call.
pub fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{:05x}{n:x}", std::process::id() & 0xfffff)
}

/// A binary of this workspace built next to the running one (`target/<profile>/NAME`; test
/// binaries live one level down in `deps/`). `$STITCH_BIN_DIR` overrides the directory.
///
/// # Errors
/// When it is not there.
pub fn sibling_bin(name: &str) -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("STITCH_BIN_DIR") {
        return Ok(PathBuf::from(d).join(name));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    if !bin.is_file() {
        bail!("{} not found: build it first (`cargo build -p perf -p switch-app -p stitch-control --bins`, or with --release)", bin.display());
    }
    Ok(bin)
}

/// Where a program is on PATH.
pub fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}

/// The CPU clock in MHz as /proc/cpuinfo reports it (for cycles per packet).
pub fn cpu_mhz() -> f64 {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Removes `/var/run/dpdk/<prefix>`.
pub fn remove_dpdk_runtime(prefix: &str) {
    if !prefix.is_empty() && !prefix.contains('/') {
        let _ = fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
    }
}

/// A running child, stopped by pid when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
    prefix: String,
}

impl Proc {
    /// Starts `cmd args`, stdin closed, stdout and stderr to `log`. `prefix` is its DPDK
    /// `--file-prefix` (cleaned up on drop; empty for none).
    ///
    /// # Errors
    /// When it cannot start.
    pub fn spawn(cmd: &Path, args: &[String], log: &Path, prefix: &str) -> Result<Proc> {
        let f = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(cmd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {}", cmd.display()))?;
        Ok(Proc {
            child: Some(child),
            name: cmd
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            log: log.to_path_buf(),
            prefix: prefix.to_owned(),
        })
    }

    /// The process id (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it printed so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for it to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends `sig` to its pid, waits up to `limit`, then SIGKILL. Returns its status.
    pub fn stop_with(
        &mut self,
        sig: nix::sys::signal::Signal,
        limit: Duration,
    ) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGTERM, then SIGKILL after 15 s.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        remove_dpdk_runtime(&self.prefix);
    }
}

/// The devargs of memif pair `i` of run `id`: the same socket name on both sides, one
/// `server`, one `client` (abstract sockets, DPDK 22.11's default: nothing on disk, and the
/// name is free again once both processes have closed it).
pub fn memif_devargs(index: u32, id: &str, pair: u32, server: bool) -> String {
    let role = if server { "server" } else { "client" };
    format!("net_memif{index},role={role},id=0,socket=/stitch-bench-{id}-{pair}.sock")
}
