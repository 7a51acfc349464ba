//! stitchd: the switch daemon.
//!
//! Start-up order matters: EAL, mempool, ports configured and started, tables and port
//! settings published, workers launched, and only then the control socket is created, so a
//! socket that exists means every port is started (tests and scripts wait for it).
//! Shutdown (SIGINT, SIGTERM or `shutdown`) runs it backwards: workers stop and flush,
//! ports stop and close, the socket is removed, the EAL is cleaned up.

mod agent;
mod capture;
mod config;
mod console;
mod fault;
mod http;
mod lb;
mod metrics;
mod neighbor;
mod slowpath;
mod state;
mod stats;
mod stitch;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use clap::Parser;
use crossbeam_queue::ArrayQueue;
use dpdk::{Eal, Mempool, Port, PortConfig as DpdkPortConfig, TxBuffer};
use stitch_control::server::ControlServer;
use switch_core::l2::pipeline::{L2Ports, PortL2};
use switch_core::l2::security::PortSecurity;
use switch_core::l2::table::{mac_table_seeded, InsertOutcome, MacTableWriter};
use switch_core::{BridgeId, MacAddr, PortId};

use switch_core::flow::table::{flow_table_with, FlowTableConfig};

use crate::config::Config;
use crate::fault::PortFault;
use crate::slowpath::{ControlBridge, PortState, SlowPath};
use crate::stats::WorkerStats;
use crate::stitch::manager::{SlowTx, Stitcher};
use crate::stitch::rule::{FlowRule, StitchRec};
use crate::worker::Worker;

const AFTER_HELP: &str = "\
USAGE FORMS:
  stitchd --config FILE                      ports, lcores and EAL settings from FILE
  stitchd [EAL args] -- [OPTIONS]            DPDK style: EAL arguments before `--`

Without --config, every DPDK port the EAL finds (e.g. from --vdev) joins bridge 0 with
defaults (1 rx queue, learning on, any source MAC). The first lcore is the main lcore
(slow path and control socket); every other lcore is a poll-mode worker. With no
free hugepages, stitchd adds `--no-huge -m 1024` unless --no-huge is given.

EXAMPLE:
  stitchd --no-huge -m 1024 --no-pci -l 0-1 --vdev=net_tap0 --vdev=net_tap1 -- \\
          --control-socket /tmp/s.sock

Stop with SIGINT/SIGTERM or `stitchctl shutdown`. SIGHUP (or `stitchctl config reload`)
re-reads --config and applies changed static MACs and port policies. With a state file
([state] file or --state-file), committed stitches, static MACs and port policies survive a
restart (docs/state.md).";

/// stitchd: a DPDK userspace L2 switch that can stitch TCP connections.
#[derive(Debug, Parser)]
#[command(name = "stitchd", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// TOML configuration file (see README "Configuration").
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Control socket path (overrides the config; default /run/stitchd/stitchd.sock).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Parse and validate the configuration, print the EAL arguments, and exit.
    #[arg(long)]
    check_config: bool,
    /// State file (overrides `[state] file`): static MACs, port policies and committed
    /// stitches are written there on every change and restored at start.
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,
    /// If the state file cannot be read, move it aside (FILE.bad-SECS) and start from
    /// the configuration alone. Without it, stitchd refuses to start and leaves the file
    /// as it is.
    #[arg(long)]
    state_reset: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("stitchd: error: {e:#}");
        std::process::exit(1);
    }
}

/// Splits `argv[1..]` into EAL arguments (before `--`) and stitchd's own (after). Without
/// `--`, everything is stitchd's own.
fn split_args(args: Vec<String>) -> (Vec<String>, Vec<String>) {
    match args.iter().position(|a| a == "--") {
        Some(i) => (args[..i].to_vec(), args[i + 1..].to_vec()),
        None => (vec![], args),
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args();
    let prog = args.next().unwrap_or_else(|| "stitchd".into());
    let (cli_eal, own) = split_args(args.collect());
    let cli = Cli::parse_from(std::iter::once(prog).chain(own));

    let cfg = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let eal_args = cfg.eal_args(&cli_eal, config::hugepages_available());
    if cli.check_config {
        println!(
            "configuration ok; EAL arguments: {}",
            eal_args[1..].join(" ")
        );
        return Ok(());
    }
    let socket = cli
        .control_socket
        .clone()
        .unwrap_or_else(|| cfg.control.socket.clone());

    let state_path = cli
        .state_file
        .clone()
        .or_else(|| cfg.state.as_ref().map(|s| s.file.clone()));
    // Read before the EAL starts: a bad file stops stitchd before it touches a port.
    let saved = match &state_path {
        None => None,
        Some(p) => match state::load(p) {
            Ok(s) => s,
            Err(e) if cli.state_reset => {
                let to = state::move_aside(p, state::unix_now())
                    .with_context(|| format!("{e}; and moving it aside failed"))?;
                eprintln!(
                    "stitchd: warning: {e}; moved it to {} and starting from the configuration alone (--state-reset)",
                    to.display()
                );
                None
            }
            Err(e) => bail!(
                "{e}. The file is left as it is: fix it, or copy {}.prev (the version before \
                 the last write) over it, or start with --state-reset to move it aside and \
                 start from the configuration alone",
                p.display()
            ),
        },
    };
    let boot = Boot {
        config_path: cli.config.clone(),
        state_path,
        saved,
    };
    let eal = Eal::init(&eal_args)
        .with_context(|| format!("EAL arguments were: {}", eal_args[1..].join(" ")))?;
    let result = run_with_eal(&eal, &cfg, socket, boot);
    drop(eal);
    result
}

/// What start-up needs besides the configuration: where it came from and the state
/// read from the state file.
struct Boot {
    config_path: Option<PathBuf>,
    state_path: Option<PathBuf>,
    saved: Option<state::State>,
}

/// A port to set up: its DPDK handle and its settings.
struct Planned {
    port: Port,
    devargs: String,
    rx_queues: u16,
    rx_desc: u16,
    tx_desc: u16,
    l2: PortL2,
    /// Most MACs the port may have learned at once.
    max_learned: Option<u32>,
}

fn plan_ports(eal: &Eal, cfg: &Config) -> Result<Vec<Planned>> {
    if cfg.ports.is_empty() {
        let ports = Port::all(eal);
        if ports.is_empty() {
            bail!("no DPDK ports: give --vdev=... EAL arguments (before `--`) or [[ports]] in a --config file");
        }
        return ports
            .into_iter()
            .map(|p| {
                let name = p.info()?.name;
                Ok(Planned {
                    port: p,
                    devargs: name,
                    rx_queues: 1,
                    rx_desc: 1024,
                    tx_desc: 1024,
                    l2: PortL2 {
                        bridge: Some(BridgeId(0)),
                        security: PortSecurity::open(),
                    },
                    max_learned: None,
                })
            })
            .collect();
    }
    cfg.ports
        .iter()
        .map(|pc| {
            let port = Port::by_name(eal, pc.device_name())?;
            let security = match &pc.allowed_macs {
                None => PortSecurity::open(),
                Some(m) => PortSecurity::restricted(m.clone())
                    .map_err(|e| anyhow::anyhow!("port {}: {e}", pc.devargs))?,
            }
            .with_learning(pc.learning);
            Ok(Planned {
                port,
                devargs: pc.devargs.clone(),
                rx_queues: pc.rx_queues,
                rx_desc: pc.rx_desc,
                tx_desc: pc.tx_desc,
                l2: PortL2 {
                    bridge: Some(BridgeId(pc.bridge)),
                    security,
                },
                max_learned: pc.max_learned_macs,
            })
        })
        .collect()
}

fn run_with_eal(eal: &Eal, cfg: &Config, socket: PathBuf, boot: Boot) -> Result<()> {
    let lcores = eal.worker_lcores();
    if lcores.is_empty() {
        bail!("no worker lcore: stitchd needs at least two lcores (e.g. -l 0-1); the first runs the slow path");
    }
    let planned = plan_ports(eal, cfg)?;
    // Every (port, rx queue), dealt round-robin to the workers; workers left without a
    // queue are not started.
    let mut assignment: Vec<Vec<(Port, u16)>> = vec![vec![]; lcores.len()];
    let mut k = 0;
    for p in &planned {
        for q in 0..p.rx_queues {
            assignment[k % lcores.len()].push((p.port, q));
            k += 1;
        }
    }
    let active: Vec<(dpdk::Lcore, Vec<(Port, u16)>)> = lcores
        .into_iter()
        .zip(assignment)
        .filter(|(_, a)| !a.is_empty())
        .collect();
    let n_workers = active.len() as u16;

    let pool = Arc::new(Mempool::new(
        eal,
        "stitchd_mbufs",
        cfg.mempool.mbufs,
        cfg.mempool.cache,
        eal.socket_id(),
    )?);
    let mut started: Vec<Port> = Vec::new();
    let outcome = (|| -> Result<()> {
        let mut states = Vec::new();
        for p in &planned {
            // One TX queue per worker (net_tap wants as many TX as RX queues).
            let pc = DpdkPortConfig {
                rx_queues: p.rx_queues,
                tx_queues: n_workers.max(p.rx_queues),
                rx_desc: p.rx_desc,
                tx_desc: p.tx_desc,
                promiscuous: true,
            };
            p.port
                .configure(&pc, &pool)
                .with_context(|| format!("setting up port {} ({})", p.port.0, p.devargs))?;
            p.port
                .start()
                .with_context(|| format!("starting port {} ({})", p.port.0, p.devargs))?;
            started.push(p.port);
            states.push(PortState {
                port: p.port,
                info: p.port.info()?,
                devargs: p.devargs.clone(),
                mac: MacAddr(p.port.mac()?),
                rx_queues: p.rx_queues,
                tx_queues: n_workers.max(p.rx_queues),
            });
        }
        serve(
            eal,
            cfg,
            socket,
            &planned,
            states,
            active,
            pool.clone(),
            boot,
        )
    })();
    for p in started {
        if let Err(e) = p.stop() {
            eprintln!("stitchd: warning: {e}");
        }
        if let Err(e) = p.close() {
            eprintln!("stitchd: warning: {e}");
        }
    }
    drop(pool);
    outcome
}

#[allow(clippy::too_many_arguments)]
fn serve(
    eal: &Eal,
    cfg: &Config,
    socket: PathBuf,
    planned: &[Planned],
    states: Vec<PortState>,
    active: Vec<(dpdk::Lcore, Vec<(Port, u16)>)>,
    pool: Arc<Mempool>,
    boot: Boot,
) -> Result<()> {
    let max_port = planned
        .iter()
        .map(|p| usize::from(p.port.0))
        .max()
        .unwrap_or(0);
    let mut l2_ports = vec![
        PortL2 {
            bridge: None,
            security: PortSecurity::open()
        };
        max_port + 1
    ];
    for p in planned {
        l2_ports[usize::from(p.port.0)] = p.l2.clone();
    }
    let l2 = L2Ports::new(l2_ports).with_move_policy(cfg.l2.move_policy());
    let l2_pub = Arc::new(ArcSwap::from_pointee(l2.clone()));

    let max_bridge = planned
        .iter()
        .filter_map(|p| p.l2.bridge)
        .map(|b| usize::from(b.0))
        .max()
        .unwrap_or(0);
    let mut writers: Vec<Option<MacTableWriter>> = (0..=max_bridge).map(|_| None).collect();
    for p in planned {
        if let Some(b) = p.l2.bridge {
            if writers[usize::from(b.0)].is_none() {
                writers[usize::from(b.0)] =
                    Some(mac_table_seeded(cfg.l2.mac_table_size, random_seed()).0);
            }
        }
    }
    for s in &cfg.l2.static_macs {
        let p = &planned[usize::from(s.port)];
        let b = p.l2.bridge.map(|b| usize::from(b.0)).unwrap_or(0);
        if let Some(Some(w)) = writers.get_mut(b) {
            match w.add_static(s.mac, PortId(p.port.0)) {
                InsertOutcome::Full => bail!("l2.static_macs: MAC table full adding {}", s.mac),
                InsertOutcome::Invalid => {
                    bail!("l2.static_macs: {} cannot be a static entry", s.mac)
                }
                InsertOutcome::Inserted | InsertOutcome::Replaced => {}
            }
        }
    }
    let readers: Vec<Option<_>> = writers
        .iter()
        .map(|w| w.as_ref().map(MacTableWriter::reader))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())
        .context("installing SIGINT handler")?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())
        .context("installing SIGTERM handler")?;
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing SIGHUP handler")?;

    let tsc_hz = dpdk::tsc_hz();
    let tsc_start = dpdk::tsc();
    let n_ports = max_port + 1;
    let n_workers = active.len();
    let flow_writer = flow_table_with::<FlowRule, StitchRec>(FlowTableConfig {
        // One record per stitch (four entries), with room for the records retired at
        // commit and removal until the workers have moved on.
        records: cfg.stitch.flow_table_size / 4 + cfg.stitch.flow_table_size / 16 + 64,
        ..FlowTableConfig::new(cfg.stitch.flow_table_size)
    });
    let flow_count = Arc::new(AtomicUsize::new(0));
    let stitcher = Stitcher::new(flow_writer, flow_count.clone());
    let subscribers = stitcher.subscribers.clone();
    let faults: Arc<Vec<PortFault>> =
        Arc::new((0..n_ports).map(|_| PortFault::default()).collect());
    let inject: Vec<Arc<ArrayQueue<(PortId, dpdk::Mbuf)>>> = (0..n_workers)
        .map(|_| Arc::new(ArrayQueue::new(8192)))
        .collect();
    let slow_tx = SlowTx::new(inject.clone());
    let mut slow = SlowPath::new(
        eal.version(),
        states,
        l2,
        l2_pub.clone(),
        writers,
        cfg.l2.aging_secs,
        tsc_start,
        tsc_hz,
        stop.clone(),
        stitcher,
        slow_tx,
        pool,
        faults.clone(),
    );

    slow.capture = capture::Captures::new(n_workers, tsc_hz);
    // A quarter of the pool may wait in frozen stitches; the rest keeps RX going.
    slow.stitcher.hold_budget = cfg
        .stitch
        .hold_budget
        .unwrap_or((cfg.mempool.mbufs as usize / 4).max(64));
    slow.port_limits = vec![None; n_ports];
    for p in planned {
        slow.port_limits[usize::from(p.port.0)] = p.max_learned;
    }
    if let Some(a) = &cfg.agent {
        let all: Vec<PortId> = planned.iter().map(|p| PortId(p.port.0)).collect();
        slow.agent = Some(agent::Agent::new(a, all).map_err(anyhow::Error::msg)?);
        slow.stitcher.agents = true;
    }
    let agent_addrs = slow.agent.as_ref().map(agent::Agent::addrs);
    slow.lb = lb::LbManager::new(cfg.lb.mac, n_ports, cfg.lb.health_ipv4, cfg.lb.health_ipv6);
    if let Some(u) = cfg.lb.uplinks.iter().find(|u| usize::from(**u) >= n_ports) {
        bail!("lb.uplinks: port {u} does not exist");
    }
    slow.lb.set_uplinks(
        &cfg.lb.uplinks,
        cfg.lb.uplink_select == config::UplinkSelectName::Load,
    );
    slow.lb
        .add_configured(&cfg.lb.services)
        .map_err(anyhow::Error::msg)?;
    for (i, inst) in cfg.stitch.install.iter().enumerate() {
        for port in [inst.ports.c, inst.ports.b] {
            if usize::from(port) >= n_ports {
                bail!("stitch.install[{i}]: port {port} does not exist");
            }
        }
        slow.stitcher
            .install(inst)
            .map_err(|e| anyhow::anyhow!("stitch.install[{i}]: {}", e.message))?;
    }

    slow.config = cfg.clone();
    slow.config_path = boot.config_path;
    slow.reload = reload;
    if let Some(path) = boot.state_path {
        restore_state(&mut slow, cfg, path, boot.saved, n_ports)?;
    }

    // The control socket before the workers: if it cannot be created, nothing has run yet.
    let server = ControlServer::bind(&socket)
        .with_context(|| format!("creating control socket {}", socket.display()))?;
    let (req_tx, req_rx) = std::sync::mpsc::sync_channel(64);
    let metrics_server = match &cfg.metrics {
        Some(m) => Some(
            http::HttpServer::bind(m.listen)
                .with_context(|| format!("metrics.listen: binding {}", m.listen))?,
        ),
        None => None,
    };

    for (i, (lcore, rx)) in active.into_iter().enumerate() {
        let learn = Arc::new(ArrayQueue::new(4096));
        let punt = Arc::new(ArrayQueue::new(4096));
        let stats = Arc::new(WorkerStats::new(lcore.id, slow.stitcher.counter_words()));
        let flows = slow
            .stitcher
            .add_worker(stats.clone())
            .context("more workers than flow-table reader slots")?;
        slow.learn_queues.push(learn.clone());
        slow.punt_queues.push(punt.clone());
        slow.worker_stats.push(stats.clone());
        let lb_counters = Arc::new(switch_core::lb::balancer::LbCounters::default());
        slow.lb.counters.push(lb_counters.clone());
        // The connection table's hash seed: per worker and per run, so clients cannot
        // aim at one probe run.
        let seed = tsc_start ^ u64::from(std::process::id()).rotate_left(32) ^ (i as u64) << 48;
        let w = Worker {
            rx,
            tx: (0..n_ports)
                .map(|p| TxBuffer::new(Port(p as u16), i as u16))
                .collect(),
            l2: l2_pub.clone(),
            tables: readers.clone(),
            learn,
            inject: inject[i].clone(),
            flows,
            flow_count: flow_count.clone(),
            punt,
            faults: faults.clone(),
            agent: agent_addrs,
            stats,
            stop: stop.clone(),
            tsc_start,
            tsc_hz,
            capture: capture::CaptureTap::new(slow.capture.ctl(), i),
            lb: slow.lb.table.clone(),
            balancer: switch_core::lb::balancer::Balancer::new(cfg.lb.connections, seed),
            lb_counters,
        };
        if let Err(e) = eal.launch(lcore, move || w.run()) {
            stop.store(true, Ordering::SeqCst);
            eal.wait_workers();
            return Err(e).context(format!("launching worker on lcore {}", lcore.id));
        }
    }
    let metrics_thread = match metrics_server {
        Some(ms) => {
            let addr = ms.local_addr().context("metrics listener")?;
            let bridge: Arc<dyn stitch_control::server::Handler> = Arc::new(ControlBridge {
                tx: req_tx.clone(),
                subscribers: subscribers.clone(),
            });
            let exporter = metrics::Exporter {
                workers: slow.worker_stats.clone(),
                slow: bridge.clone(),
                mac_capacity: cfg.l2.mac_table_size as u64,
            };
            let console_on = cfg.metrics.as_ref().is_some_and(|m| m.console);
            let console = console_on.then(|| Arc::new(console::Console::new(bridge)));
            let t = ms
                .spawn(http::Services { exporter, console }, stop.clone())
                .context("starting the metrics / console threads")?;
            println!("stitchd: metrics on http://{addr}/metrics");
            if console_on {
                println!("stitchd: web console on http://{addr}/ (read-only, unauthenticated)");
            }
            Some(t)
        }
        None => None,
    };
    let handle = server.serve(Arc::new(ControlBridge {
        tx: req_tx,
        subscribers,
    }));
    println!(
        "stitchd ready: {} ports, {} workers, control socket {}",
        slow.ports.len(),
        slow.worker_stats.len(),
        socket.display()
    );
    slow.run(&req_rx);
    slow.stitcher.emit(serde_json::json!({"event": "shutdown"}));
    // Ends every event stream: their senders go away.
    slow.stitcher
        .subscribers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
    eprintln!("stitchd: stopping");
    stop.store(true, Ordering::SeqCst);
    eal.wait_workers();
    handle.shutdown();
    if let Some(t) = metrics_thread {
        // It sees `stop` within 100 ms; a scrape in flight gets "shutting down".
        drop(req_rx);
        let _ = t.join();
    }
    Ok(())
}

/// Applies the saved state on top of what the configuration set up (the TOML's changes
/// since the state was written included), puts the committed stitches back, and writes
/// the file once, so it holds what the switch now runs.
fn restore_state(
    slow: &mut SlowPath,
    cfg: &Config,
    path: PathBuf,
    saved: Option<state::State>,
    n_ports: usize,
) -> Result<()> {
    let base = state::L2Desired::from_config(cfg);
    let (current, stitches, lb_current) = match saved {
        Some(st) => (
            st.l2.current.rebase(&st.l2.base, &base),
            st.stitches,
            state::LbState::rebase(&st.lb.current, &st.lb.base, &cfg.lb.services),
        ),
        None => (slow.l2_desired(), Vec::new(), cfg.lb.services.clone()),
    };
    slow.lb.replace_all(&lb_current).map_err(|e| {
        anyhow::anyhow!(
            "state file {}: its balanced services cannot be applied: {e}",
            path.display()
        )
    })?;
    slow.stitcher.state = Some(state::StateFile {
        path: path.clone(),
        l2: state::L2State {
            base,
            current: current.clone(),
        },
        lb: state::LbState {
            base: cfg.lb.services.clone(),
            current: lb_current.clone(),
        },
        writes: 0,
        failures: 0,
        last_error: None,
    });
    slow.apply_l2_desired(&current).map_err(|e| {
        anyhow::anyhow!(
            "state file {}: its L2 settings cannot be applied: {}",
            path.display(),
            e.message
        )
    })?;
    let n = slow
        .stitcher
        .restore(&stitches, n_ports)
        .map_err(|e| anyhow::anyhow!("state file {}: {e}", path.display()))?;
    slow.stitcher.save_state();
    println!(
        "stitchd: state file {}: {} static MACs, {} stitches, {} balanced services restored",
        path.display(),
        current.static_macs.len(),
        n,
        lb_current.len()
    );
    Ok(())
}

/// A random hash key for the MAC tables (randomness is an input, read once at start):
/// nobody outside can choose source addresses that all land in one probe window.
fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    match ok {
        Ok(()) => u64::from_le_bytes(b) | 1,
        // No urandom: the TSC is still not predictable from outside the box.
        Err(_) => dpdk::tsc() | 1,
    }
}
