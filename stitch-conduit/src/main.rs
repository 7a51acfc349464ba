//! `stitch-conduit`: the conduit daemon, the centralized matching server, and a plain
//! TCP relay for tests. See `docs/source-switching.md`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Source switching (seed 000): conduits carry an application's TCP stream over a proxy
/// chain, publish descriptions to a matching scope, and move matched connections onto a
/// direct stitched connection after draining by sequence numbers.
#[derive(Parser)]
#[command(name = "stitch-conduit", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a conduit: application ports ([[route]], UDP [[udp_route]]), ports the proxy
    /// chain connects to ([[inbound]], UDP [[udp_inbound]]), the stitch listener, the
    /// matching socket and the Unix control socket (JSON lines: {"cmd":"list"}, {"cmd":"stitch","id":N[,"peer":"ADDR"]},
    /// {"cmd":"refuse","id":N},
    /// {"cmd":"scope_add","name":S,"key_id":N,"key":HEX,"members":[..]},
    /// {"cmd":"scope_remove","name":S}). Prints "conduit ready" on stderr once listening.
    Conduit {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the centralized matching server (UDP). Prints "matcher listening on ADDR"
    /// on stderr once bound; every verdict and refusal is logged on stderr and, with
    /// --control, shown by {"cmd":"stats"} on that Unix socket.
    Matcher {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Unix control socket path (JSON lines: {"cmd":"stats"}).
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Relay TCP connections (or UDP datagrams) from LISTEN to CONNECT (a stand-in proxy for tests),
    /// optionally writing byte counts ("c2s s2c connections generation") to a stats file.
    Relay {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Address to connect each accepted connection to.
        #[arg(long)]
        connect: SocketAddr,
        /// File rewritten every 20 ms with the byte counts.
        #[arg(long)]
        stats: Option<PathBuf>,
        /// Relay UDP datagrams instead of TCP connections.
        #[arg(long)]
        udp: bool,
        /// UDP only: forward each datagram this many milliseconds after it arrived (a
        /// slow proxy path).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Conduit { config } => {
            let cfg = stitch_conduit::config::ConduitConfig::load(&config)
                .with_context(|| format!("loading {}", config.display()))?;
            stitch_conduit::conduit::run(cfg)?;
        }
        Cmd::Matcher { config, control } => {
            let cfg = stitch_conduit::config::MatcherConfig::load(&config)
                .with_context(|| format!("loading {}", config.display()))?;
            stitch_conduit::matcher_server::run(cfg, control)?;
        }
        Cmd::Relay {
            listen,
            connect,
            stats,
            udp,
            delay_ms,
        } => stitch_conduit::relay::run(
            listen,
            connect,
            stats,
            udp,
            std::time::Duration::from_millis(delay_ms),
        )?,
    }
    Ok(())
}
