//! `stitchctl`: query and configure a running stitchd over its control socket.
//!
//! Subcommands are named exactly like the JSON-RPC methods, so what an
//! operator types is what shows up in the daemon's logs and in scripts that
//! speak to the socket directly. Results print as aligned tables by default;
//! `--json` prints the raw `result` for scripts. Any result whose shape this
//! version does not recognise prints as JSON rather than failing, so a newer
//! daemon stays usable with an older stitchctl.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use stitch_control::capture::{
    CaptureEnd, CaptureInfo, CaptureList, CaptureStartParams, CaptureStatusParams,
    CaptureStopParams,
};
use stitch_control::protocol::{
    MacAddParams, MacDelParams, MacListParams, PerEndpoint, PortFaultParams, PortSecurityParams,
    PortsStatsParams, StitchCommitParams, StitchIdParams,
};
use stitch_control::{Client, Mac, Method, DEFAULT_SOCKET_PATH};

#[derive(Parser, Debug)]
#[command(
    name = "stitchctl",
    version,
    about = "Query and configure a running stitchd through its control socket",
    after_help = "Subcommands are the control socket's JSON-RPC methods; `call` sends any method with raw JSON params."
)]
struct Cli {
    /// Path of stitchd's control socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "STITCHD_SOCKET",
        hide_env_values = true,
        default_value = DEFAULT_SOCKET_PATH
    )]
    socket: PathBuf,

    /// Print the raw JSON result instead of a table.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Cmd,
}

/// `stitchctl config ACTION`
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ConfigAction {
    /// Re-read the TOML and apply what can change live.
    Reload,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the daemon's name, version and DPDK version.
    #[command(name = "version")]
    Version,

    /// List ports with their MAC, link state, queues and bridge.
    #[command(name = "ports.list")]
    PortsList,

    /// Show per-port and per-queue packet counters.
    #[command(name = "ports.stats")]
    PortsStats {
        /// Only this port (default: every port).
        #[arg(long, value_name = "N")]
        port: Option<u16>,
    },

    /// Show per-worker counters, non-zero drop reasons and slow-path counters.
    #[command(name = "stats.get")]
    StatsGet,

    /// List MAC table entries (learned and static).
    #[command(name = "mac.list")]
    MacList {
        /// Only this bridge (default: every bridge).
        #[arg(long, value_name = "N")]
        bridge: Option<u16>,
    },

    /// Add a static MAC entry: frames to MAC go out of PORT.
    #[command(name = "mac.add")]
    MacAdd {
        /// Destination MAC address, aa:bb:cc:dd:ee:ff.
        mac: Mac,
        /// Port id to forward it to.
        port: u16,
    },

    /// Remove a MAC entry, static or learned.
    #[command(name = "mac.del")]
    MacDel {
        /// MAC address to remove, aa:bb:cc:dd:ee:ff.
        mac: Mac,
        /// Only from this bridge (default: from every bridge).
        #[arg(long, value_name = "N")]
        bridge: Option<u16>,
    },

    /// Set which source MACs a port accepts and whether it learns.
    ///
    /// Replaces the port's whole policy: give --allow once per permitted
    /// source MAC, or --any to accept every source.
    #[command(name = "port.security.set")]
    PortSecuritySet {
        /// Port id.
        port: u16,
        /// Accept frames from this source MAC (repeat for several).
        #[arg(long = "allow", value_name = "MAC", conflicts_with = "any")]
        allow: Vec<Mac>,
        /// Accept frames from any source MAC.
        #[arg(long)]
        any: bool,
        /// Do not learn source MACs seen on this port.
        #[arg(long)]
        no_learning: bool,
    },

    /// Ask stitchd to shut down cleanly.
    #[command(name = "shutdown")]
    Shutdown,

    /// Re-read stitchd's TOML and apply changed static MACs and port policies, live.
    ///
    /// `stitchctl config reload` (or `config.reload`, or SIGHUP to stitchd). Other
    /// changed settings are refused by name (they take a restart) and nothing is applied.
    #[command(name = "config")]
    Config {
        /// What to do: `reload`.
        #[arg(value_enum)]
        action: ConfigAction,
    },

    /// Same as `config reload`.
    #[command(name = "config.reload")]
    ConfigReload,

    /// Start watching two TCP (or UDP) legs for a stitch; prints the stitch id.
    ///
    /// Leg A is client C <-> shell A (A1); leg B is shell A (A2) <-> core B. Addresses
    /// are ip:port as the packets carry them ([v6]:port for IPv6).
    #[command(name = "stitch.prepare")]
    StitchPrepare {
        /// C's address, e.g. 198.18.0.1:40000.
        #[arg(long, value_name = "IP:PORT")]
        client: std::net::SocketAddr,
        /// The shell's address on leg A (A1), e.g. 198.18.0.2:7000.
        #[arg(long, value_name = "IP:PORT")]
        shell_a: std::net::SocketAddr,
        /// The shell's address on leg B (A2).
        #[arg(long, value_name = "IP:PORT")]
        shell_b: std::net::SocketAddr,
        /// The core's address, e.g. 198.18.0.3:8000.
        #[arg(long, value_name = "IP:PORT")]
        core: std::net::SocketAddr,
        /// tcp or udp.
        #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
        proto: String,
        /// Teardown variant: 4B, 4C, 4D or 4E.
        #[arg(long, default_value = "4E", value_parser = ["4B", "4C", "4D", "4E"])]
        teardown: String,
        /// Seconds without packets before the stitch is removed (default 300).
        #[arg(long, value_name = "SECS")]
        idle_timeout: Option<u32>,
        /// Seconds the entry lingers after both FINs (default 2).
        #[arg(long, value_name = "SECS")]
        linger: Option<u32>,
    },

    /// Hold data towards the shell (pure ACKs still reach it); returns once every worker applies it.
    #[command(name = "stitch.freeze")]
    StitchFreeze {
        /// Stitch id.
        id: u32,
    },

    /// Check the shell's sequence state and go live (TCP: --s1 --r1 --s2 --r2 required).
    #[command(name = "stitch.commit")]
    StitchCommit {
        /// Stitch id.
        id: u32,
        /// Next sequence number the shell sends on leg A.
        #[arg(long)]
        s1: Option<u32>,
        /// Next sequence number the shell expects on leg A.
        #[arg(long)]
        r1: Option<u32>,
        /// Next sequence number the shell sends on leg B.
        #[arg(long)]
        s2: Option<u32>,
        /// Next sequence number the shell expects on leg B.
        #[arg(long)]
        r2: Option<u32>,
        /// Window-scale shifts announced by C,A1,A2,B (e.g. 7,7,7,7).
        #[arg(long, value_name = "C,A1,A2,B")]
        wscale: Option<String>,
        /// MSS announced by C,A1,A2,B.
        #[arg(long, value_name = "C,A1,A2,B")]
        mss: Option<String>,
    },

    /// Give the connection back to the shell; held packets are released untouched.
    #[command(name = "stitch.abort")]
    StitchAbort {
        /// Stitch id.
        id: u32,
    },

    /// List stitches.
    #[command(name = "stitch.list")]
    StitchList,

    /// Show one stitch: state, learned options, deltas, per-direction counters.
    #[command(name = "stitch.get")]
    StitchGet {
        /// Stitch id.
        id: u32,
    },

    /// Remove a stitch now.
    #[command(name = "stitch.delete")]
    StitchDelete {
        /// Stitch id.
        id: u32,
    },

    /// Print stitch events as they happen (one JSON object a line) until interrupted.
    #[command(name = "events.subscribe")]
    EventsSubscribe,

    /// Inject faults on a port's TX (parts per million); all zero turns them off.
    #[command(name = "port.fault.set")]
    PortFaultSet {
        /// Port id.
        port: u16,
        /// Drop this many packets per million.
        #[arg(long, default_value_t = 0)]
        drop_ppm: u32,
        /// Delay this many packets per million behind the next one.
        #[arg(long, default_value_t = 0)]
        reorder_ppm: u32,
        /// Send this many packets per million twice.
        #[arg(long, default_value_t = 0)]
        duplicate_ppm: u32,
    },

    /// Live view, refreshed every interval: packet and bit rates per port, rates and
    /// drops (by reason) per worker, stitches by state and flow table fill. On a terminal
    /// the screen is redrawn and `q` quits; otherwise one block of plain lines per
    /// refresh.
    #[command(name = "top")]
    Top {
        /// Stop after N refreshes (default: until `q`, or until interrupted).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Seconds between refreshes (0.1-3600).
        #[arg(long, default_value_t = 1.0, value_name = "SECS")]
        interval: f64,
    },

    /// Capture a port's frames into a pcap file, readable by tshark and Wireshark.
    ///
    /// stitchd's workers copy the frames (up to --snaplen bytes of each, with their
    /// original length and time) into per-worker rings and stitchd itself writes FILE:
    /// the path is opened by the daemon, as its user, on its host (a relative FILE is made
    /// absolute against this command's working directory; under systemd's PrivateTmp the
    /// daemon's /tmp is not yours). An existing FILE is replaced. Forwarding is never
    /// delayed: a frame that finds its ring full is not captured and counted as dropped.
    ///
    /// Ends after --count frames (exit 0), or after --timeout seconds with what it has
    /// (exit 0). Interrupted (Ctrl-C, SIGTERM) before that, it stops the capture, keeps the
    /// file and exits 130. Prints how many frames were captured and dropped. One capture
    /// at a time per port.
    #[command(name = "capture")]
    Capture {
        /// Port id.
        port: u16,
        /// Only frames received on the port (default: both directions).
        #[arg(long, conflicts_with = "tx")]
        rx: bool,
        /// Only frames sent out of the port, after translation (default: both).
        #[arg(long)]
        tx: bool,
        /// Stop after this many frames.
        #[arg(long, value_name = "N")]
        count: u64,
        /// Bytes kept of each frame (14-9216; 1514 keeps whole standard frames).
        #[arg(long, value_name = "B", default_value_t = stitch_control::capture::DEFAULT_SNAPLEN)]
        snaplen: u32,
        /// The pcap file stitchd writes.
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        file: PathBuf,
        /// Stop after this many seconds with what was captured (exit 0).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u32>,
    },

    /// Show captures (running, or the last one of each port) with their counters.
    #[command(name = "capture.status")]
    CaptureStatus {
        /// Only this port (default: every port).
        #[arg(long, value_name = "N")]
        port: Option<u16>,
    },

    /// Stop a port's capture now; the file keeps what was written.
    #[command(name = "capture.stop")]
    CaptureStop {
        /// Port id.
        port: u16,
    },

    /// Add a balanced service: clients connect to VIP:PORT (ipvsadm -A).
    ///
    /// Backends join with lb.backend.add (or give the whole service as JSON with
    /// `stitchctl call lb.service.add '{...}'`). See docs/lb.md.
    #[command(name = "lb.service.add")]
    LbServiceAdd {
        /// Service name (letters, digits, '-', '_', '.').
        name: String,
        /// The service address and port: 198.18.100.1:80 or [2001:db8::1]:80.
        vip: std::net::SocketAddr,
        /// Last port of a port range (inclusive).
        #[arg(long, value_name = "PORT")]
        port_end: Option<u16>,
        /// tcp or udp.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// nat (addresses and ports rewritten both ways) or dr (MAC only; the backend
        /// owns the VIP on a loopback).
        #[arg(long, default_value = "nat")]
        mode: String,
        /// rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, maglev or queue.
        #[arg(long, default_value = "wlc")]
        scheduler: String,
        /// Seconds an idle connection is kept (default 900).
        #[arg(long, value_name = "SECS")]
        idle_timeout: Option<u32>,
        /// Seconds a connection is kept after both FINs or an RST (default 10).
        #[arg(long, value_name = "SECS")]
        linger: Option<u32>,
    },

    /// Remove a service; its connections are forgotten as they expire.
    #[command(name = "lb.service.del")]
    LbServiceDel {
        /// Service name.
        name: String,
    },

    /// List the services with their backends.
    #[command(name = "lb.service.list")]
    LbServiceList,

    /// Show one service as configured (JSON).
    #[command(name = "lb.service.get")]
    LbServiceGet {
        /// Service name.
        name: String,
    },

    /// Add a backend to a service (ipvsadm -a).
    #[command(name = "lb.backend.add")]
    LbBackendAdd {
        /// Service name.
        service: String,
        /// Backend name, unique within the service.
        name: String,
        /// The switch port the backend is behind.
        #[arg(long)]
        port: u16,
        /// The backend's MAC address.
        #[arg(long)]
        mac: Mac,
        /// The backend's IP address.
        #[arg(long)]
        ip: std::net::IpAddr,
        /// Ports the application listens on, comma-separated (default: the service port).
        #[arg(long, value_delimiter = ',', value_name = "PORT,...")]
        soft_ports: Vec<u16>,
        /// Relative share (0: no new connections).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Failover rank (lower first).
        #[arg(long, default_value_t = 0)]
        rank: u32,
        /// active, draining or disabled.
        #[arg(long, default_value = "active")]
        state: String,
    },

    /// Remove a backend from a service.
    #[command(name = "lb.backend.del")]
    LbBackendDel {
        /// Service name.
        service: String,
        /// Backend name.
        name: String,
    },

    /// Change a backend's weight, rank or state (the others stay).
    #[command(name = "lb.backend.set")]
    LbBackendSet {
        /// Service name.
        service: String,
        /// Backend name.
        name: String,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        rank: Option<u32>,
        /// active, draining or disabled.
        #[arg(long)]
        state: Option<String>,
    },

    /// Connections and counters per service and destination (ipvsadm -L --stats).
    #[command(name = "lb.stats")]
    LbStats {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
    },

    /// Call any method with raw JSON params and print the JSON result.
    Call {
        /// Method name, e.g. ports.list.
        method: String,
        /// Params as a JSON object, e.g. '{"port":1}'.
        params: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Capture { .. } = cli.command {
        return capture(cli);
    }
    match run(cli) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("stitchctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What to call: a typed method (rendered as a table) or a raw one.
enum Call {
    Typed(Method),
    Raw(String, Option<Value>),
}

fn run(cli: Cli) -> Result<String> {
    let call = match cli.command {
        Cmd::Version => Call::Typed(Method::Version),
        Cmd::PortsList => Call::Typed(Method::PortsList),
        Cmd::PortsStats { port } => Call::Typed(Method::PortsStats(PortsStatsParams { port })),
        Cmd::StatsGet => Call::Typed(Method::StatsGet),
        Cmd::MacList { bridge } => Call::Typed(Method::MacList(MacListParams { bridge })),
        Cmd::MacAdd { mac, port } => Call::Typed(Method::MacAdd(MacAddParams { mac, port })),
        Cmd::MacDel { mac, bridge } => Call::Typed(Method::MacDel(MacDelParams { mac, bridge })),
        Cmd::PortSecuritySet {
            port,
            allow,
            any,
            no_learning,
        } => {
            if allow.is_empty() && !any {
                usage_error(
                    "port.security.set",
                    "port.security.set needs a source policy: give --allow MAC (repeatable) \
                     to accept only those source MACs, or --any to accept every source",
                );
            }
            Call::Typed(Method::PortSecuritySet(PortSecurityParams {
                port,
                allowed_macs: if any { None } else { Some(allow) },
                learning: !no_learning,
            }))
        }
        Cmd::Shutdown => Call::Typed(Method::Shutdown),
        Cmd::Config {
            action: ConfigAction::Reload,
        }
        | Cmd::ConfigReload => Call::Typed(Method::ConfigReload),
        Cmd::StitchPrepare {
            client,
            shell_a,
            shell_b,
            core,
            proto,
            teardown,
            idle_timeout,
            linger,
        } => {
            let params = serde_json::json!({
                "leg_a": {"client": client, "shell": shell_a},
                "leg_b": {"shell": shell_b, "core": core},
                "proto": proto, "teardown": teardown,
                "idle_timeout": idle_timeout, "linger": linger,
            });
            let params = strip_nulls(params);
            Call::Typed(
                Method::parse("stitch.prepare", Some(params))
                    .map_err(|e| anyhow::anyhow!(e.message))?,
            )
        }
        Cmd::StitchFreeze { id } => Call::Typed(Method::StitchFreeze(StitchIdParams { id })),
        Cmd::StitchCommit {
            id,
            s1,
            r1,
            s2,
            r2,
            wscale,
            mss,
        } => {
            let wscale = wscale.map(|w| four::<u8>(&w, "--wscale")).transpose()?;
            let mss = mss.map(|m| four::<u16>(&m, "--mss")).transpose()?;
            Call::Typed(Method::StitchCommit(StitchCommitParams {
                id,
                s1,
                r1,
                s2,
                r2,
                wscale,
                mss,
                timestamps: None,
                sack: None,
            }))
        }
        Cmd::StitchAbort { id } => Call::Typed(Method::StitchAbort(StitchIdParams { id })),
        Cmd::StitchList => Call::Typed(Method::StitchList),
        Cmd::StitchGet { id } => Call::Typed(Method::StitchGet(StitchIdParams { id })),
        Cmd::StitchDelete { id } => Call::Typed(Method::StitchDelete(StitchIdParams { id })),
        Cmd::EventsSubscribe => return subscribe(&cli.socket),
        Cmd::Capture { .. } => anyhow::bail!("capture is handled by capture()"),
        Cmd::CaptureStatus { port } => {
            Call::Typed(Method::CaptureStatus(CaptureStatusParams { port }))
        }
        Cmd::CaptureStop { port } => Call::Typed(Method::CaptureStop(CaptureStopParams { port })),
        Cmd::LbServiceAdd {
            name,
            vip,
            port_end,
            proto,
            mode,
            scheduler,
            idle_timeout,
            linger,
        } => typed(
            "lb.service.add",
            serde_json::json!({
                "name": name, "vip": vip.ip(), "port": vip.port(), "port_end": port_end,
                "proto": proto, "mode": mode, "scheduler": scheduler,
                "idle_timeout_secs": idle_timeout, "linger_secs": linger,
            }),
        )?,
        Cmd::LbServiceDel { name } => typed("lb.service.del", serde_json::json!({"name": name}))?,
        Cmd::LbServiceList => Call::Typed(Method::LbServiceList),
        Cmd::LbServiceGet { name } => typed("lb.service.get", serde_json::json!({"name": name}))?,
        Cmd::LbBackendAdd {
            service,
            name,
            port,
            mac,
            ip,
            soft_ports,
            weight,
            rank,
            state,
        } => typed(
            "lb.backend.add",
            serde_json::json!({"service": service, "backend": {
                "name": name, "port": port, "mac": mac, "ip": ip, "soft_ports": soft_ports,
                "weight": weight, "rank": rank, "state": state,
            }}),
        )?,
        Cmd::LbBackendDel { service, name } => typed(
            "lb.backend.del",
            serde_json::json!({"service": service, "name": name}),
        )?,
        Cmd::LbBackendSet {
            service,
            name,
            weight,
            rank,
            state,
        } => typed(
            "lb.backend.set",
            serde_json::json!({"service": service, "name": name, "weight": weight,
                               "rank": rank, "state": state}),
        )?,
        Cmd::LbStats { service } => {
            Call::Typed(Method::LbStats(stitch_control::lb::LbStatsParams {
                service,
            }))
        }
        Cmd::Top { count, interval } => return top(&cli.socket, count, interval),
        Cmd::PortFaultSet {
            port,
            drop_ppm,
            reorder_ppm,
            duplicate_ppm,
        } => Call::Typed(Method::PortFaultSet(PortFaultParams {
            port,
            drop_ppm,
            reorder_ppm,
            duplicate_ppm,
        })),
        Cmd::Call { method, params } => {
            let params = params
                .map(|p| serde_json::from_str::<Value>(&p))
                .transpose()
                .context("PARAMS_JSON is not valid JSON")?;
            Call::Raw(method, params)
        }
    };

    let mut client = Client::connect(&cli.socket)?;
    let (result, method) = match call {
        Call::Typed(m) => (client.call(m.name(), m.params())?, Some(m)),
        Call::Raw(name, params) => (client.call(&name, params)?, None),
    };
    Ok(match method {
        Some(m) if !cli.json => render(&m, &result),
        _ => pretty(&result),
    })
}

/// Exits with clap's usage-error status (2) and the subcommand's usage line,
/// for rules clap's derive attributes can't express with a helpful message.
fn usage_error(subcommand: &str, message: &str) -> ! {
    let mut cmd = Cli::command();
    cmd.build();
    let kind = clap::error::ErrorKind::MissingRequiredArgument;
    match cmd.find_subcommand_mut(subcommand) {
        Some(sub) => sub.error(kind, message).exit(),
        None => cmd.error(kind, message).exit(),
    }
}

/// Drops null members so optional params are simply absent.
/// A typed call from JSON built here, checked exactly as the daemon checks it.
fn typed(method: &str, params: Value) -> Result<Call> {
    Ok(Call::Typed(
        Method::parse(method, Some(strip_nulls(params))).map_err(|e| anyhow::anyhow!(e.message))?,
    ))
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

/// Parses "c,a1,a2,b".
fn four<T: std::str::FromStr>(s: &str, what: &str) -> Result<PerEndpoint<T>> {
    let v: Vec<T> = s
        .split(',')
        .map(|x| x.trim().parse::<T>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("{what} wants four numbers C,A1,A2,B, got '{s}'"))?;
    let [c, a1, a2, b]: [T; 4] = v
        .try_into()
        .map_err(|_| anyhow::anyhow!("{what} wants four numbers C,A1,A2,B, got '{s}'"))?;
    Ok(PerEndpoint { c, a1, a2, b })
}

/// The terminal in non-canonical, no-echo mode (so `q` arrives without Enter) until
/// dropped; set and restored with `stty`, so no terminal library is needed.
struct RawTerminal {
    saved: String,
}

impl RawTerminal {
    fn stty(args: &[&str]) -> Option<String> {
        let out = std::process::Command::new("stty")
            .args(args)
            .stdin(std::process::Stdio::inherit())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn enter() -> Option<RawTerminal> {
        let saved = Self::stty(&["-g"])?;
        Self::stty(&["-icanon", "-echo", "-isig", "min", "1", "time", "0"])?;
        print!("\x1b[?25l");
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        print!("\x1b[?25h");
        let _ = Self::stty(&[&self.saved]);
    }
}

/// `top`: samples every `interval` seconds and prints the view of each interval.
fn top(socket: &std::path::Path, count: Option<u64>, interval: f64) -> Result<String> {
    use std::io::{IsTerminal, Read, Write};
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::{Duration, Instant};
    use stitch_control::top::{render, Sample};

    if !(0.1..=3600.0).contains(&interval) {
        anyhow::bail!("--interval {interval}: must be 0.1-3600 seconds");
    }
    // A connection per sample: the daemon closes idle control connections, and a
    // restarted daemon is picked up again (its counters start over: rates show 0 once).
    let sample = || -> Result<Sample> { Ok(Sample::fetch(&mut Client::connect(socket)?)?) };
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    // On a terminal: keys from a reader thread; Ctrl-C (0x03, signals are off) also quits.
    let (_raw, keys) = if interactive {
        let raw = RawTerminal::enter();
        let (tx, rx) = std::sync::mpsc::channel::<u8>();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            while let Ok(1) = std::io::stdin().read(&mut b) {
                if tx.send(b[0]).is_err() {
                    break;
                }
            }
        });
        (raw, Some(rx))
    } else {
        (None, None)
    };
    let step = Duration::from_secs_f64(interval);
    let mut prev = sample()?;
    let mut t_prev = Instant::now();
    let mut done = 0u64;
    let mut stdout = std::io::stdout();
    while count.is_none_or(|n| done < n) {
        let deadline = t_prev + step;
        match &keys {
            Some(rx) => loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(b'q' | b'Q' | 0x03) | Err(RecvTimeoutError::Disconnected) => {
                        return Ok(String::new())
                    }
                    Ok(_) => continue,
                    Err(RecvTimeoutError::Timeout) => break,
                }
            },
            None => std::thread::sleep(deadline.saturating_duration_since(Instant::now())),
        }
        let cur = sample()?;
        let now = Instant::now();
        let view = render(&prev, &cur, now.duration_since(t_prev).as_secs_f64());
        if interactive {
            write!(stdout, "\x1b[H\x1b[2J{view}q quits")?;
        } else {
            writeln!(stdout, "{view}")?;
        }
        stdout.flush()?;
        prev = cur;
        t_prev = now;
        done += 1;
    }
    if interactive {
        writeln!(stdout)?;
    }
    Ok(String::new())
}

/// `capture`: starts a capture, waits for its end, prints its counts. Exit status: 0
/// when it ended by count or timeout, 130 when interrupted, 1 on any error (or when it
/// was stopped or failed in the daemon).
fn capture(cli: Cli) -> ExitCode {
    let Cmd::Capture {
        port,
        rx,
        tx,
        count,
        snaplen,
        file,
        timeout,
    } = cli.command
    else {
        return ExitCode::FAILURE;
    };
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("stitchctl: capture: {e}");
        ExitCode::FAILURE
    };
    let path = match std::path::absolute(&file) {
        Ok(p) => p,
        Err(e) => return fail(&format!("{}: {e}", file.display())),
    };
    let Some(path) = path.to_str().map(str::to_owned) else {
        return fail(&format!("{}: not valid UTF-8", path.display()));
    };
    let dir = match (rx, tx) {
        (true, _) => "rx",
        (_, true) => "tx",
        _ => "both",
    };
    let raw = strip_nulls(serde_json::json!({
        "port": port, "dir": dir, "count": count, "snaplen": snaplen, "path": path,
        "timeout_secs": timeout,
    }));
    // The same checks the daemon makes, with the same messages, before connecting.
    let params = match Method::parse("capture.start", Some(raw)) {
        Ok(Method::CaptureStart(p)) => p,
        Ok(_) => return ExitCode::FAILURE,
        Err(e) => return fail(&e.message),
    };
    let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, interrupt.clone()) {
            return fail(&format!("installing a signal handler: {e}"));
        }
    }
    let outcome = Client::connect(&cli.socket)
        .and_then(|mut c| run_capture_verbose(&mut c, &params, &interrupt));
    let out = match outcome {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    let info = &out.info;
    if cli.json {
        print!(
            "{}",
            pretty(&serde_json::to_value(info).unwrap_or_default())
        );
    } else {
        println!("{}", info.summary());
    }
    match (out.interrupted, info.end) {
        (true, _) => {
            eprintln!(
                "stitchctl: capture: interrupted before {} packets; the file keeps the {} written",
                info.count, info.captured
            );
            ExitCode::from(130)
        }
        (false, Some(CaptureEnd::Count)) => ExitCode::SUCCESS,
        (false, Some(CaptureEnd::Timeout)) => {
            if info.captured == 0 {
                eprintln!(
                    "stitchctl: capture: no {} frames on port {} within {} s (timeout); the file has no packets",
                    if dir == "both" { "matching" } else { dir },
                    info.port,
                    info.timeout_secs.unwrap_or(0)
                );
            } else {
                eprintln!(
                    "stitchctl: capture: timeout after {} s",
                    info.timeout_secs.unwrap_or(0)
                );
            }
            ExitCode::SUCCESS
        }
        (false, Some(CaptureEnd::Error)) => fail(&format!(
            "failed in stitchd: {}",
            info.error.as_deref().unwrap_or("unknown error")
        )),
        (false, _) => fail(&"stopped in stitchd (capture.stop or shutdown) before the count"),
    }
}

fn run_capture_verbose(
    c: &mut Client,
    p: &CaptureStartParams,
    interrupt: &std::sync::atomic::AtomicBool,
) -> Result<stitch_control::capture::CaptureOutcome, stitch_control::ClientError> {
    eprintln!(
        "stitchctl: capturing {} packets on port {} ({}) into {} (written by stitchd)",
        p.count,
        p.port,
        p.dir.name(),
        p.path
    );
    stitch_control::capture::run_capture(c, p, interrupt)
}

fn render_captures(list: CaptureList) -> String {
    let mut t = Table::new(&[
        "ID", "PORT", "DIR", "STATE", "END", "CAPTURED", "COUNT", "DROPPED", "SNAPLEN", "SECS",
        "FILE",
    ]);
    for c in &list.captures {
        t.row(vec![
            c.id.to_string(),
            c.port.to_string(),
            c.dir.name().into(),
            format!("{:?}", c.state).to_lowercase(),
            c.end
                .map_or_else(|| "-".into(), |e| format!("{e:?}").to_lowercase()),
            c.captured.to_string(),
            c.count.to_string(),
            c.dropped.to_string(),
            c.snaplen.to_string(),
            format!("{:.1}", c.elapsed_secs),
            c.path.clone(),
        ]);
    }
    t.render()
}

/// `events.subscribe`: prints each event as one JSON line until the daemon or the user ends it.
fn subscribe(socket: &std::path::Path) -> Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to stitchd control socket {} (is stitchd running? use --socket)",
            socket.display()
        )
    })?;
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"events.subscribe\"}\n")?;
    let mut lines = BufReader::new(s).lines();
    let first = lines.next().context("stitchd closed the connection")??;
    let v: Value = serde_json::from_str(&first).context("bad response")?;
    if let Some(e) = v.get("error") {
        anyhow::bail!(
            "{}",
            e["message"].as_str().unwrap_or("events.subscribe failed")
        );
    }
    let stdout = std::io::stdout();
    for line in lines {
        let line = line?;
        let v: Value = serde_json::from_str(&line).context("bad event line")?;
        let mut out = stdout.lock();
        writeln!(out, "{}", v["params"])?;
        out.flush()?;
    }
    Ok(String::new())
}

#[derive(Deserialize)]
struct StitchRow {
    id: u32,
    state: String,
    proto: String,
    leg_a: Value,
    leg_b: Value,
    teardown: String,
}

#[derive(Deserialize)]
struct StitchListResult {
    stitches: Vec<StitchRow>,
}

fn render_stitches(r: StitchListResult) -> String {
    let ep = |v: &Value, k: &str| v[k].as_str().unwrap_or("?").to_string();
    let mut rows = vec![vec![
        "ID".to_string(),
        "STATE".into(),
        "PROTO".into(),
        "CLIENT".into(),
        "SHELL_A".into(),
        "SHELL_B".into(),
        "CORE".into(),
        "TEARDOWN".into(),
    ]];
    for s in &r.stitches {
        rows.push(vec![
            s.id.to_string(),
            s.state.clone(),
            s.proto.clone(),
            ep(&s.leg_a, "client"),
            ep(&s.leg_a, "shell"),
            ep(&s.leg_b, "shell"),
            ep(&s.leg_b, "core"),
            s.teardown.clone(),
        ]);
    }
    let mut out = table(rows);
    out.push_str(&format!("{} stitches\n", r.stitches.len()));
    out
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// Renders a typed result as text; any shape mismatch falls back to JSON.
fn render(method: &Method, result: &Value) -> String {
    let text = match method {
        Method::Version => shaped(result, render_version),
        Method::PortsList => shaped(result, render_ports),
        Method::PortsStats(_) => shaped(result, render_port_stats),
        Method::StatsGet => shaped(result, render_stats),
        Method::MacList(_) => shaped(result, render_macs),
        Method::MacAdd(_)
        | Method::MacDel(_)
        | Method::PortSecuritySet(_)
        | Method::Shutdown
        | Method::ConfigReload
        | Method::StitchPrepare(_)
        | Method::StitchFreeze(_)
        | Method::StitchCommit(_)
        | Method::StitchAbort(_)
        | Method::StitchDelete(_)
        | Method::EventsSubscribe
        | Method::PortFaultSet(_)
        | Method::StitchInstall(_) => Some(render_ok(result)),
        Method::StitchList => shaped(result, render_stitches),
        Method::StitchGet(_) => None,
        Method::CaptureStart(_) | Method::CaptureStop(_) => {
            shaped(result, |c: CaptureInfo| format!("{}\n", c.summary()))
        }
        Method::CaptureStatus(_) => shaped(result, render_captures),
        Method::LbServiceAdd(_)
        | Method::LbServiceDel(_)
        | Method::LbBackendAdd(_)
        | Method::LbBackendDel(_)
        | Method::LbBackendSet(_) => Some(render_ok(result)),
        Method::LbServiceGet(_) => None,
        Method::LbServiceList => shaped(result, render_lb_services),
        Method::LbStats(_) => shaped(result, render_lb_stats),
    };
    text.unwrap_or_else(|| pretty(result))
}

fn shaped<T: DeserializeOwned>(result: &Value, f: fn(T) -> String) -> Option<String> {
    T::deserialize(result).ok().map(f)
}

#[derive(Deserialize)]
struct VersionInfo {
    name: String,
    version: String,
    #[serde(default)]
    dpdk: Option<String>,
}

fn render_version(v: VersionInfo) -> String {
    match v.dpdk {
        Some(dpdk) => format!("{} {} ({dpdk})\n", v.name, v.version),
        None => format!("{} {}\n", v.name, v.version),
    }
}

#[derive(Deserialize)]
struct PortList {
    ports: Vec<PortInfo>,
}

#[derive(Deserialize)]
struct PortInfo {
    id: u64,
    name: String,
    #[serde(default)]
    devargs: Option<String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    link: Option<LinkInfo>,
    #[serde(default)]
    rx_queues: Option<u64>,
    #[serde(default)]
    tx_queues: Option<u64>,
    #[serde(default)]
    bridge: Option<u64>,
}

#[derive(Deserialize)]
struct LinkInfo {
    up: bool,
    #[serde(default)]
    speed_mbps: Option<u64>,
    #[serde(default)]
    duplex: Option<String>,
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn render_ports(list: PortList) -> String {
    let mut t = Table::new(&[
        "ID", "NAME", "MAC", "LINK", "SPEED", "DUPLEX", "RXQ", "TXQ", "BRIDGE", "DEVARGS",
    ]);
    for p in list.ports {
        let (link, speed, duplex) = match p.link {
            Some(l) => (
                if l.up { "up" } else { "down" }.to_owned(),
                l.speed_mbps.map_or_else(|| "-".to_owned(), format_speed),
                opt(l.duplex),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        t.row(vec![
            p.id.to_string(),
            p.name,
            opt(p.mac),
            link,
            speed,
            duplex,
            opt(p.rx_queues),
            opt(p.tx_queues),
            opt(p.bridge),
            opt(p.devargs),
        ]);
    }
    t.render()
}

fn format_speed(mbps: u64) -> String {
    match (mbps / 1000, mbps % 1000) {
        (0, 0) => "-".into(),
        (gbps, 0) => format!("{gbps}G"),
        _ => format!("{mbps}M"),
    }
}

#[derive(Deserialize)]
struct PortStatsList {
    ports: Vec<PortStats>,
}

#[derive(Deserialize)]
struct PortStats {
    id: u64,
    rx_packets: u64,
    rx_bytes: u64,
    #[serde(default)]
    rx_dropped: u64,
    #[serde(default)]
    rx_errors: u64,
    #[serde(default)]
    rx_nombuf: u64,
    tx_packets: u64,
    tx_bytes: u64,
    #[serde(default)]
    tx_errors: u64,
    #[serde(default)]
    queues: Vec<QueueStats>,
}

#[derive(Deserialize)]
struct QueueStats {
    queue: u64,
    #[serde(default)]
    rx_packets: u64,
    #[serde(default)]
    rx_bytes: u64,
    #[serde(default)]
    tx_packets: u64,
    #[serde(default)]
    tx_bytes: u64,
}

fn render_port_stats(list: PortStatsList) -> String {
    let mut ports = Table::new(&[
        "PORT",
        "RX_PKTS",
        "RX_BYTES",
        "RX_DROPPED",
        "RX_ERRORS",
        "RX_NOMBUF",
        "TX_PKTS",
        "TX_BYTES",
        "TX_ERRORS",
    ]);
    let mut queues = Table::new(&[
        "PORT", "QUEUE", "RX_PKTS", "RX_BYTES", "TX_PKTS", "TX_BYTES",
    ]);
    for p in &list.ports {
        ports.row(vec![
            p.id.to_string(),
            p.rx_packets.to_string(),
            p.rx_bytes.to_string(),
            p.rx_dropped.to_string(),
            p.rx_errors.to_string(),
            p.rx_nombuf.to_string(),
            p.tx_packets.to_string(),
            p.tx_bytes.to_string(),
            p.tx_errors.to_string(),
        ]);
        for q in &p.queues {
            queues.row(vec![
                p.id.to_string(),
                q.queue.to_string(),
                q.rx_packets.to_string(),
                q.rx_bytes.to_string(),
                q.tx_packets.to_string(),
                q.tx_bytes.to_string(),
            ]);
        }
    }
    let mut out = ports.render();
    if !queues.rows.is_empty() {
        out.push('\n');
        out.push_str(&queues.render());
    }
    out
}

#[derive(Deserialize)]
struct SwitchStats {
    workers: Vec<WorkerStats>,
    #[serde(default)]
    slow_path: Option<BTreeMap<String, u64>>,
}

#[derive(Deserialize)]
struct WorkerStats {
    lcore: u64,
    rx_packets: u64,
    tx_packets: u64,
    #[serde(default)]
    flooded: u64,
    #[serde(default)]
    learn_requests: u64,
    #[serde(default)]
    learn_dropped: u64,
    #[serde(default)]
    drops: BTreeMap<String, u64>,
}

fn render_drops(drops: &BTreeMap<String, u64>) -> String {
    let nonzero: Vec<String> = drops
        .iter()
        .filter(|(_, &n)| n != 0)
        .map(|(reason, n)| format!("{reason}={n}"))
        .collect();
    if nonzero.is_empty() {
        "-".into()
    } else {
        nonzero.join(" ")
    }
}

fn render_stats(stats: SwitchStats) -> String {
    let mut t = Table::new(&[
        "LCORE",
        "RX_PKTS",
        "TX_PKTS",
        "FLOODED",
        "LEARN_REQ",
        "LEARN_DROP",
        "DROPS",
    ]);
    let (mut rx, mut tx, mut flooded, mut learn, mut learn_dropped) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    for w in &stats.workers {
        t.row(vec![
            w.lcore.to_string(),
            w.rx_packets.to_string(),
            w.tx_packets.to_string(),
            w.flooded.to_string(),
            w.learn_requests.to_string(),
            w.learn_dropped.to_string(),
            render_drops(&w.drops),
        ]);
        rx = rx.saturating_add(w.rx_packets);
        tx = tx.saturating_add(w.tx_packets);
        flooded = flooded.saturating_add(w.flooded);
        learn = learn.saturating_add(w.learn_requests);
        learn_dropped = learn_dropped.saturating_add(w.learn_dropped);
        for (reason, n) in &w.drops {
            let total = drops.entry(reason.clone()).or_default();
            *total = total.saturating_add(*n);
        }
    }
    t.row(vec![
        "total".into(),
        rx.to_string(),
        tx.to_string(),
        flooded.to_string(),
        learn.to_string(),
        learn_dropped.to_string(),
        render_drops(&drops),
    ]);
    let mut out = t.render();
    if let Some(slow) = stats.slow_path {
        let fields: Vec<String> = slow.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("\nslow path: {}\n", fields.join(" ")));
    }
    out
}

#[derive(Deserialize)]
struct MacTable {
    entries: Vec<MacEntry>,
    #[serde(default)]
    capacity: Option<u64>,
}

#[derive(Deserialize)]
struct MacEntry {
    bridge: u64,
    mac: String,
    port: u64,
    #[serde(default, rename = "static")]
    is_static: bool,
    #[serde(default)]
    age_secs: Option<u64>,
}

fn render_macs(table: MacTable) -> String {
    let mut t = Table::new(&["BRIDGE", "MAC", "PORT", "TYPE", "AGE_S"]);
    let count = table.entries.len();
    for e in table.entries {
        t.row(vec![
            e.bridge.to_string(),
            e.mac,
            e.port.to_string(),
            if e.is_static { "static" } else { "learned" }.into(),
            opt(e.age_secs),
        ]);
    }
    let mut out = t.render();
    match table.capacity {
        Some(cap) => out.push_str(&format!("{count} entries (capacity {cap})\n")),
        None => out.push_str(&format!("{count} entries\n")),
    }
    out
}

/// Acknowledgements: "ok", then the object's fields one per line.
fn table(rows: Vec<Vec<String>>) -> String {
    let mut widths = vec![0; rows.iter().map(Vec::len).max().unwrap_or(0)];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn render_lb_services(l: stitch_control::lb::LbServiceList) -> String {
    let mut rows = vec![[
        "SERVICE",
        "ADDRESS",
        "PROTO",
        "MODE",
        "SCHED",
        "BACKEND",
        "AT",
        "SOFT PORTS",
        "WEIGHT",
        "RANK",
        "STATE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for s in &l.services {
        let addr = match s.port_end {
            Some(e) => format!("{}:{}-{e}", bracket(s.vip), s.port),
            None => format!("{}:{}", bracket(s.vip), s.port),
        };
        let head = vec![
            s.name.clone(),
            addr,
            wire_name(&s.proto),
            wire_name(&s.mode),
            wire_name(&s.scheduler),
        ];
        if s.backends.is_empty() {
            let mut r = head.clone();
            r.push("-".into());
            rows.push(r);
        }
        for (i, b) in s.backends.iter().enumerate() {
            let mut r = if i == 0 {
                head.clone()
            } else {
                vec![String::new(); 5]
            };
            let ports = b
                .ports(s.port)
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",");
            r.extend([
                b.name.clone(),
                format!("{} {} port {}", b.ip, b.mac, b.port),
                ports,
                b.weight.to_string(),
                b.rank.to_string(),
                wire_name(&b.state),
            ]);
            rows.push(r);
        }
    }
    let mut out = table(rows);
    out.push_str(&format!("{} services\n", l.services.len()));
    out
}

fn bracket(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}

/// The wire name of a unit enum.
fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => "?".into(),
    }
}

fn render_lb_stats(st: stitch_control::lb::LbStats) -> String {
    let mut out = String::new();
    for s in &st.services {
        out.push_str(&format!(
            "{}: {} connections ({} now), refused: {} no destination, {} table full; \
             {} segments of no connection; ranks in use {:?}\n",
            s.name, s.conns, s.conns_now, s.no_dest, s.table_full, s.no_conn, s.ranks_in_use
        ));
        if s.held + s.launches > 0 {
            out.push_str(&format!(
                "  launch on demand: {} hooks run; {} connections held, {} released, {} dropped, {} held now\n",
                s.launches, s.held, s.released, s.held_dropped, s.held_now
            ));
        }
        let head = [
            "  BACKEND",
            "DEST",
            "STATE",
            "CONNS",
            "ACTIVE",
            "INACTIVE",
            "INFLIGHT",
            "RESP_US",
            "PKTS_IN",
            "PKTS_OUT",
        ];
        let mut rows = vec![head.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
        for d in &s.dests {
            rows.push(vec![
                format!("  {}", d.backend),
                format!("{}:{}", bracket(d.ip), d.soft_port),
                if d.up {
                    "up".to_string()
                } else {
                    format!("down: {}", d.reason)
                },
                d.conns.to_string(),
                d.active.to_string(),
                d.inactive.to_string(),
                d.inflight.to_string(),
                d.resp_ewma_us.to_string(),
                d.packets_in.to_string(),
                d.packets_out.to_string(),
            ]);
        }
        out.push_str(&table(rows));
    }
    if st.services.is_empty() {
        out.push_str("no services\n");
    }
    out
}

fn render_ok(result: &Value) -> String {
    let mut out = String::from("ok\n");
    if let Value::Object(map) = result {
        for (k, v) in map {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("  {k}: {v}\n"));
        }
    }
    out
}

/// A minimal column-aligned table: numeric columns right-aligned, others left,
/// two spaces between columns.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let cols = self.header.len();
        let cell = |row: &Vec<String>, i: usize| row.get(i).cloned().unwrap_or_default();
        let widths: Vec<usize> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .chain([self.header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let numeric: Vec<bool> = (0..cols)
            .map(|i| {
                !self.rows.is_empty()
                    && self.rows.iter().all(|r| {
                        let c = cell(r, i);
                        c == "-" || c.parse::<f64>().is_ok()
                    })
            })
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for i in 0..cols {
                let c = cell(row, i);
                if i > 0 {
                    line.push_str("  ");
                }
                if numeric[i] {
                    line.push_str(&format!("{c:>w$}", w = widths[i]));
                } else {
                    line.push_str(&format!("{c:<w$}", w = widths[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_right_aligns_numbers() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["1".into(), "a".into()]);
        t.row(vec!["100".into(), "long-name".into()]);
        assert_eq!(t.render(), " ID  NAME\n  1  a\n100  long-name\n");
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
