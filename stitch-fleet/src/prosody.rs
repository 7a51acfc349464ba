//! A private prosody (Debian's XMPP server) for tests, the simulation and
//! demos: its own config, data and log in a directory the caller owns, one
//! loopback port, accounts written straight into its data directory
//! (`internal_plain` storage), started in the foreground and stopped by pid.
//!
//! Plain TCP only, no TLS, no server-to-server: each instance serves its
//! virtual hosts alone, as one "server of the XMPP cluster".

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why prosody could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProsodyError {
    /// The binary is missing.
    #[error("'prosody' not found: install the Debian package 'prosody' (scripts/setup-fleet.sh)")]
    Missing,
    /// Writing its files failed.
    #[error("cannot write prosody's files in {dir}: {source}")]
    Files {
        /// Directory.
        dir: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// It exited or never listened.
    #[error("prosody did not start: {0}")]
    Start(String),
}

/// A running (or stopped) private prosody.
#[derive(Debug)]
pub struct Prosody {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// Prosody's file-name encoding of hosts and user names.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

fn free_port() -> Result<u16, std::io::Error> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Prosody {
    /// Writes a config for `hosts` with `accounts` (user, host, password)
    /// into `dir` and starts prosody; returns once its port accepts. With
    /// `tls` (certificate, key), clients must use STARTTLS.
    ///
    /// # Errors
    ///
    /// [`ProsodyError`].
    pub fn start(
        dir: &Path,
        hosts: &[&str],
        accounts: &[(&str, &str, &str)],
        tls: Option<(&Path, &Path)>,
    ) -> Result<Prosody, ProsodyError> {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("prosody").is_file()))
            .unwrap_or(false);
        if !found {
            return Err(ProsodyError::Missing);
        }
        let files = |source| ProsodyError::Files {
            dir: dir.to_owned(),
            source,
        };
        let port = free_port().map_err(files)?;
        std::fs::create_dir_all(dir.join("data")).map_err(files)?;
        std::fs::create_dir_all(dir.join("certs")).map_err(files)?;
        let d = dir.display();
        // mod_tls offers STARTTLS; without a certificate it stays off.
        let (enable, disable, require) = if tls.is_some() {
            ("\"tls\"; ", "", "true")
        } else {
            ("", "\"tls\"; ", "false")
        };
        let mut cfg = format!(
            r#"pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
certificates = "{d}/certs"
run_as_root = true
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{d}/prosody.log" }} }}
modules_enabled = {{ {enable}"roster"; "saslauth"; "disco"; "ping"; "posix" }}
modules_disabled = {{ "s2s"; "offline"; {disable}"admin_shell"; "http"; "c2s_direct_tls" }}
c2s_ports = {{ {port} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
c2s_require_encryption = {require}
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
"#
        );
        if let Some((cert, key)) = tls {
            cfg.push_str(&format!(
                "ssl = {{ certificate = \"{}\"; key = \"{}\"; }}\n",
                cert.display(),
                key.display()
            ));
        }
        for h in hosts {
            cfg.push_str(&format!("VirtualHost \"{h}\"\n"));
        }
        std::fs::write(dir.join("prosody.cfg.lua"), cfg).map_err(files)?;
        for (user, host, pw) in accounts {
            let acc = dir.join("data").join(encode(host)).join("accounts");
            std::fs::create_dir_all(&acc).map_err(files)?;
            std::fs::write(
                acc.join(format!("{}.dat", encode(user))),
                format!("return {{\n\t[\"password\"] = \"{pw}\";\n}};\n"),
            )
            .map_err(files)?;
        }
        let mut p = Prosody {
            dir: dir.to_owned(),
            port,
            child: None,
        };
        p.restart()?;
        Ok(p)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts it (after [`Prosody::kill`]) and waits until its port
    /// accepts.
    ///
    /// # Errors
    ///
    /// [`ProsodyError::Start`] with its log.
    pub fn restart(&mut self) -> Result<(), ProsodyError> {
        if self.child.is_some() {
            return Ok(());
        }
        let files = |source| ProsodyError::Files {
            dir: self.dir.clone(),
            source,
        };
        let log = std::fs::File::create(self.dir.join("stdout.log")).map_err(files)?;
        let child = Command::new("prosody")
            .arg("--config")
            .arg(self.dir.join("prosody.cfg.lua"))
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(files)?)
            .stderr(log)
            .spawn()
            .map_err(|e| ProsodyError::Start(e.to_string()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(40);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(ProsodyError::Start(format!(
                    "exited ({st}): {}",
                    self.log()
                )));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(ProsodyError::Start(format!(
                    "never listened: {}",
                    self.log()
                )));
            }
            // Readiness poll of a local port: prosody has no other signal.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills it (SIGKILL, by pid): an XMPP server failure.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prosody.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.kill();
    }
}
