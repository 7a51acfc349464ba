//! `stitch-core`: the core-side agent as a process.
//!
//! Listens for teardown notices and prints each as one JSON line on stdout; with
//! `--exec CMD` also runs `sh -c CMD` per notice with the notice in environment
//! variables. With `--closed LOCAL,PEER` it instead tells the shell (figure 4C) that
//! the core's connection LOCAL <-> PEER ended, and exits.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use stitch_core::{names, CoreAgent, CoreConfig, TeardownNotice};

/// The stitchd core agent: receives teardown notices for stitched connections (figures
/// 4B, 4D), and tells the shell when the core's connection closed (4C).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration: listen, key_id, key, shell_port.
    #[arg(long)]
    config: PathBuf,
    /// Run `sh -c CMD` for every notice, with STITCH_ID, STITCH_FROM, STITCH_KIND,
    /// STITCH_VARIANT, STITCH_TO, STITCH_SENDER, STITCH_CLIENT, STITCH_SHELL_A,
    /// STITCH_SHELL_B, STITCH_CORE, STITCH_BYTES_C_TO_B, STITCH_BYTES_B_TO_C set (legs
    /// and bytes empty when unknown).
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// Instead of listening: tell the shell agent that the core's connection LOCAL (B)
    /// <-> PEER (A2) closed, wait for its acknowledgement, and exit (4C).
    #[arg(long, value_name = "LOCAL,PEER")]
    closed: Option<String>,
    /// Teardown variant named in a --closed notice.
    #[arg(long, default_value = "4C")]
    variant: String,
}

fn env_of(n: &TeardownNotice) -> Vec<(&'static str, String)> {
    let leg = |i: usize| n.legs.map(|l| l[i].to_string()).unwrap_or_default();
    vec![
        ("STITCH_ID", n.stitch_id.to_string()),
        ("STITCH_FROM", names::side(n.from)),
        ("STITCH_KIND", names::end_kind(n.kind)),
        ("STITCH_VARIANT", names::variant(n.variant)),
        ("STITCH_TO", names::side(n.to)),
        ("STITCH_SENDER", n.sender.to_string()),
        ("STITCH_CLIENT", leg(0)),
        ("STITCH_SHELL_A", leg(1)),
        ("STITCH_SHELL_B", leg(2)),
        ("STITCH_CORE", leg(3)),
        (
            "STITCH_BYTES_C_TO_B",
            n.bytes.map(|b| b.0.to_string()).unwrap_or_default(),
        ),
        (
            "STITCH_BYTES_B_TO_C",
            n.bytes.map(|b| b.1.to_string()).unwrap_or_default(),
        ),
    ]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = CoreConfig::load(&args.config)?;
    let (agent, rx) = CoreAgent::start(&config)?;
    if let Some(pair) = &args.closed {
        let (local, peer) = pair
            .split_once(',')
            .ok_or_else(|| anyhow!("--closed wants LOCAL,PEER"))?;
        let local: SocketAddr = local.trim().parse().context("LOCAL")?;
        let peer: SocketAddr = peer.trim().parse().context("PEER")?;
        let variant = names::parse_variant(&args.variant)
            .ok_or_else(|| anyhow!("unknown variant {:?} (4B..4E)", args.variant))?;
        agent.connection_closed(local, peer, variant)?;
        return Ok(());
    }
    eprintln!("stitch-core: listening on {}", agent.local_addr());
    for notice in rx {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", notice.to_json())?;
        out.flush()?;
        if let Some(cmd) = &args.exec {
            match Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .envs(env_of(&notice))
                .status()
            {
                Ok(s) if !s.success() => eprintln!("stitch-core: --exec exited with {s}"),
                Ok(_) => {}
                Err(e) => eprintln!("stitch-core: --exec: {e}"),
            }
        }
    }
    Ok(())
}
