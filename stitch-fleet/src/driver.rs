//! The process driver: a "virtual machine" is a process in its own network
//! namespace, with a veth pair whose host end (`<prefix>v<n>`) is where the
//! switch attaches (stitchd's `net_af_packet`/`net_tap` port, or a bridge).
//!
//! Everything is done by running `ip` and by pid; nothing is looked up by
//! name except the namespace we created. A VM that fails to start leaves
//! nothing behind.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::proto::Template;

/// Why a VM could not be defined or removed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// An `ip` command failed.
    #[error("'{cmd}' failed: {stderr}")]
    Ip {
        /// The command line.
        cmd: String,
        /// Its error output.
        stderr: String,
    },
    /// The VM's process could not be started.
    #[error("cannot start the VM's process: {0}")]
    Spawn(std::io::Error),
    /// The VM's process exited before it was ready.
    #[error("the VM's process exited before printing its ready line '{0}'")]
    ExitedEarly(String),
    /// The VM did not print its ready line in time.
    #[error("the VM did not print its ready line '{line}' within {} s", timeout.as_secs())]
    NotReady {
        /// Expected line.
        line: String,
        /// Timeout.
        timeout: Duration,
    },
}

/// A running VM.
#[derive(Debug)]
pub struct Vm {
    /// Its network namespace.
    pub netns: String,
    /// Host end of its veth pair.
    pub veth: String,
    /// Its process (`None`: a VM of the null driver, which only counts).
    pub child: Option<Child>,
}

impl Vm {
    /// A VM of the null driver: nothing runs, it only takes a slot (the
    /// simulation's thousands of agents).
    pub fn null(n: u32) -> Vm {
        Vm {
            netns: format!("null-{n}"),
            veth: format!("null{n}"),
            child: None,
        }
    }
}

/// Runs `ip args...`.
async fn ip(args: &[&str]) -> Result<(), DriverError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| DriverError::Ip {
            cmd: format!("ip {}", args.join(" ")),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DriverError::Ip {
            cmd: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Defines a VM: namespace, veth pair, process; waits for the template's
/// ready line (when it has one) up to `ready_timeout`.
///
/// # Errors
///
/// [`DriverError`]; then nothing is left behind.
pub async fn define(
    netns: &str,
    veth: &str,
    template: &Template,
    ready_timeout: Duration,
) -> Result<Vm, DriverError> {
    ip(&["netns", "add", netns]).await?;
    match start(netns, veth, template, ready_timeout).await {
        Ok(vm) => Ok(vm),
        Err(e) => {
            kill_netns_pids(netns).await;
            let _ = ip(&["netns", "del", netns]).await;
            Err(e)
        }
    }
}

async fn start(
    netns: &str,
    veth: &str,
    template: &Template,
    ready_timeout: Duration,
) -> Result<Vm, DriverError> {
    ip(&[
        "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
    ])
    .await?;
    ip(&["link", "set", veth, "up"]).await?;
    ip(&["-n", netns, "link", "set", "lo", "up"]).await?;
    ip(&["-n", netns, "link", "set", "eth0", "up"]).await?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c", &template.command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(DriverError::Spawn)?;
    let Some(stdout) = child.stdout.take() else {
        return Err(DriverError::Spawn(std::io::Error::other("no stdout pipe")));
    };
    let mut lines = BufReader::new(stdout).lines();
    if let Some(want) = &template.ready_line {
        let wait = async {
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) if l.trim_end() == want => return Ok(()),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return Err(DriverError::ExitedEarly(want.clone())),
                }
            }
        };
        let res = tokio::time::timeout(ready_timeout, wait).await;
        let res = res.unwrap_or_else(|_| {
            Err(DriverError::NotReady {
                line: want.clone(),
                timeout: ready_timeout,
            })
        });
        if let Err(e) = res {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(e);
        }
    }
    // Keep draining its output so the VM never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Vm {
        netns: netns.to_owned(),
        veth: veth.to_owned(),
        child: Some(child),
    })
}

/// Kills every process in `netns` (by pid, as `ip netns pids` lists them).
async fn kill_netns_pids(netns: &str) {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .await
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if pid.bytes().all(|b| b.is_ascii_digit()) {
            let _ = Command::new("kill").args(["-KILL", pid]).status().await;
        }
    }
}

/// Stops a VM and removes its namespace (which removes its veth pair).
///
/// # Errors
///
/// [`DriverError::Ip`] when the namespace cannot be removed.
pub async fn remove(vm: Vm) -> Result<(), DriverError> {
    let Some(mut child) = vm.child else {
        return Ok(());
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    kill_netns_pids(&vm.netns).await;
    ip(&["netns", "del", &vm.netns]).await
}
