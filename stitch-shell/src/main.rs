//! `stitch-shell`: the shell agent as a process, or a client of its status socket.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use stitch_shell::logging::Logger;
use stitch_shell::{status, LogFormat, ShellConfig};

const DEFAULT_STATUS_SOCKET: &str = "/run/stitch-shell/status.sock";

/// The stitchd shell agent: relays TCP connections for each [[mapping]] of the
/// configuration and, when the bypass policy says so and a switch one hop away can
/// stitch (figure 5B discovery), hands them to the switch without losing a byte (on
/// any failure it keeps relaying). Runs until SIGINT/SIGTERM.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration to run with (see the crate docs for every key).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the running shell's status as JSON (per mapping: connections, relayed,
    /// bypassed, failed hand-offs and reasons, hand-off outcomes - attempted, committed,
    /// failed by reason, deferred, given up - and a freeze-to-commit histogram, bytes
    /// relayed by the shell and carried by the switch, live stitches; process CPU
    /// seconds; stitching availability) and exit.
    #[arg(long)]
    status: bool,
    /// Status socket to query (default: the config's status_socket, else
    /// /run/stitch-shell/status.sock).
    #[arg(long, value_name = "PATH")]
    status_socket: Option<PathBuf>,
    /// Log one JSON object per line on standard error (the same as log_format = "json"
    /// in the configuration). Every hand-off is logged: start, outcome, reason,
    /// freeze-to-commit time.
    #[arg(long)]
    log_json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.status {
        let path = match (&args.status_socket, &args.config) {
            (Some(p), _) => p.clone(),
            (None, Some(c)) => ShellConfig::load(c)?
                .status_socket
                .context("the configuration disables the status socket")?,
            (None, None) => PathBuf::from(DEFAULT_STATUS_SOCKET),
        };
        let text =
            status::fetch(&path).with_context(|| format!("status socket {}", path.display()))?;
        print!("{text}");
        return Ok(());
    }
    let Some(config) = &args.config else {
        bail!("nothing to do: give --config FILE to run, or --status");
    };
    let mut config = ShellConfig::load(config)?;
    if let Some(p) = args.status_socket {
        config.status_socket = Some(p);
    }
    if args.log_json {
        config.log_format = LogFormat::Json;
    }
    Logger::stderr(config.log_format, config.log_level)
        .install()
        .context("logger")?;
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, shutdown.clone()).context("signal handler")?;
    }
    stitch_shell::run(config, shutdown)?;
    Ok(())
}
