//! `stitch-shell` as its own process inside a namespace (`ip netns exec`, so it sees that
//! namespace's interfaces in /sys and /proc, as on a real shell host), stopped by its pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use stitch_shell::ShellStatus;

use crate::{stitchd_bin, Netns};

/// The agent key the shell tests give stitchd (`[agent] keys`, id 7), the shell and the
/// core agent.
pub const AGENT_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
/// Where the shell listens (namespace A, 198.18.0.2) in the C / A / B layout of the tests.
pub const SHELL_ADDR: &str = "198.18.0.2:7000";
/// Where the core listens (namespace B, 198.18.0.3).
pub const CORE_ADDR: &str = "198.18.0.3:8000";

/// A running stitch-shell.
pub struct ShellProc {
    child: Child,
    /// Its status socket.
    pub status_socket: PathBuf,
    log: PathBuf,
}

impl ShellProc {
    /// Starts `stitch-shell --config` with `cfg` (TOML without `status_socket`, which is
    /// added) in namespace `ns`, files in `dir`; waits for its status socket and for
    /// discovery (one probe timeout).
    pub fn start(ns: &Netns, dir: &Path, cfg: &str) -> ShellProc {
        let status_socket = dir.join("shell.sock");
        let _ = std::fs::remove_file(&status_socket);
        let cfg_path = dir.join("shell.toml");
        std::fs::write(
            &cfg_path,
            format!("status_socket = \"{}\"\n{cfg}", status_socket.display()),
        )
        .expect("write shell config");
        let log = dir.join("shell.log");
        let bin = stitchd_bin().with_file_name("stitch-shell");
        assert!(
            bin.is_file(),
            "{} not found: cargo build --workspace --bins",
            bin.display()
        );
        let logf = std::fs::File::create(&log).expect("shell log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&bin)
            .arg("--config")
            .arg(&cfg_path)
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf)
            .spawn()
            .expect("spawn stitch-shell");
        let p = ShellProc {
            child,
            status_socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.status_socket.exists() {
            assert!(
                Instant::now() < deadline,
                "stitch-shell did not start:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Discovery runs at start; give it its probe timeout.
        std::thread::sleep(Duration::from_millis(1200));
        p
    }

    /// What the shell printed.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its `--status`.
    pub fn status(&self) -> ShellStatus {
        let text = stitch_shell::status::fetch(&self.status_socket)
            .unwrap_or_else(|e| panic!("shell status: {e}\n{}", self.log_text()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("shell status JSON ({e}): {text}"))
    }

    /// Stops it (SIGTERM by pid, SIGKILL after 5 s).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ShellProc {
    fn drop(&mut self) {
        self.stop();
    }
}
