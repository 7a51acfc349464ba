//! `stitch-shell`: the agent on the shell (A), a TCP relay proxy that bypasses itself.
//!
//! For each `[[mapping]]` the shell accepts clients on A1 and connects each to the core
//! B from A2, relaying bytes (seed 001, phase 2). Per connection a bypass policy
//! ([`config::Policy`]: immediately, after bytes / packets / seconds, above a CPU load)
//! decides when the shell should drop out of the path; when it does, and a switch one
//! hop away can stitch ([`discovery`], figure 5B), the connection is handed to the
//! switch without losing a byte ([`conn`]). After the commit the two sockets stay open
//! but silent (TCP_REPAIR) until the stitch ends, so the kernel cannot reuse A1/A2 for
//! a colliding connection.
//!
//! How the shell learns a stitch ended (figures 4B-4E):
//! - a `TeardownMsg` on the agent socket (4B and idle/deleted from the switch, 4C from
//!   the core agent, which names the connection by (A2, B)); acknowledged, frees it;
//! - the FIN watcher ([`tcp_repair::PacketWatcher`]) for 4D/4E: the switch copies each
//!   FIN untranslated to A1 or A2. In 4D the shell then tells the core agent. Both
//!   FINs seen, or an RST, frees the stitch; one FIN alone frees it after
//!   `half_close_secs`;
//! - Heartbeats: a stitch the switch no longer knows (`NO_SUCH_STITCH`) is freed.
//!
//! An end that arrives before the shell recorded its stitch (the commit answer is still
//! on its way) is kept for 30 s and applied when the stitch is recorded.
//!
//! A hand-off attempt (per connection, [`config::HandoffConfig`]): Prepare, then wait
//! until both C and B have sent through the switch (a quiet leg is provoked with a
//! keepalive, or after `handoff_ready_wait_ms` the stitch is given back unfrozen:
//! *deferred*), then freeze, drain, commit ([`conn`]). On ANY failure the connection
//! carries on through the shell; the next attempt waits `handoff_backoff_ms`, doubled
//! each time up to `handoff_backoff_max_ms`, and after `max_handoff_attempts` the shell
//! relays the connection to its end (*given up*). Every outcome is counted per mapping
//! (by reason for failures), freeze-to-commit times go into a histogram
//! ([`status::HandoffCounts`]), and every step is logged through the `log` facade
//! (targets `stitch_shell::handoff`, `stitch_shell::conn`, `stitch_shell::discovery`;
//! the binary installs [`logging::Logger`], text or JSON lines).
//!
//! [`Shell`] is the library handle (tests, embedding); the binary wraps it.

#![forbid(unsafe_code)]

pub mod config;
pub mod conn;
pub mod discovery;
pub mod ifaces;
pub mod logging;
pub mod status;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_proto::{
    error_code, Capabilities, EndKind, Heartbeat, Message, Side, Teardown, TeardownMsg,
};
use stitch_core::{expect_ok, names, AgentCounters, AgentKeys, Requester, Responder, SendError};
use thiserror::Error;

pub use config::{
    Bypass, ConfigError, ConnSample, HandoffConfig, LogFormat, Mapping, Policy, ShellConfig,
};
use conn::{Conn, Failure, HandedOff, LegsSeen, PrepareParams, Prepared};
use ifaces::{HostView, IfaceCount};
pub use status::{
    Bytes, HandoffCounts, Histogram, MappingStatus, ShellStatus, SwitchInfo, TeardownCounts,
};

/// Why the shell could not start.
#[derive(Debug, Error)]
pub enum ShellError {
    /// A listen address, the agent socket or the status socket could not be bound.
    #[error("{what}: {error}")]
    Bind {
        /// What was being bound.
        what: String,
        /// The OS error.
        error: std::io::Error,
    },
}

/// Most failure reasons kept per mapping.
const MAX_REASONS: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct MappingCounters {
    connections: AtomicU64,
    active_relayed: AtomicU64,
    relayed: AtomicU64,
    bypassed: AtomicU64,
    failed: AtomicU64,
    core_connect_failures: AtomicU64,
    active_stitched: AtomicU64,
    /// Hand-off attempts started (Prepare sent).
    attempted: AtomicU64,
    /// Attempts given back unfrozen: a leg stayed unseen for `ready_wait`.
    deferred: AtomicU64,
    /// Connections that used up `max_attempts`.
    given_up: AtomicU64,
}

#[derive(Debug)]
struct MappingRt {
    cfg: Mapping,
    listen: SocketAddr,
    counters: MappingCounters,
    /// Bytes the shell relayed: C->B, B->C.
    relayed_bytes: [Arc<AtomicU64>; 2],
    /// Bytes the switch carried for finished stitches.
    switch_bytes: Mutex<(u64, u64)>,
    reasons: Mutex<VecDeque<String>>,
    /// Failed attempts by [`Failure::key`].
    failed_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Freeze-to-commit times of committed hand-offs.
    handoff_time: Mutex<Histogram>,
    /// Where to send requests, or why stitching is not available.
    avail: Mutex<Result<SocketAddr, String>>,
}

#[derive(Debug)]
struct Stitched {
    h: HandedOff,
    mapping: usize,
    switch: SocketAddr,
    variant: Teardown,
    fin_client: bool,
    fin_core: bool,
    first_fin: Option<Instant>,
    /// Bytes the switch carried, estimated from FIN sequence numbers.
    estimate: (u64, u64),
}

#[derive(Debug, Default)]
struct TdCounters {
    notices: AtomicU64,
    unmatched: AtomicU64,
    fins: AtomicU64,
    rsts: AtomicU64,
    core_notified: AtomicU64,
    core_notify_failed: AtomicU64,
    forgotten: AtomicU64,
    half_close_expired: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    cfg: ShellConfig,
    keys: AgentKeys,
    stop: Arc<AtomicBool>,
    maps: Vec<MappingRt>,
    stitching: Mutex<String>,
    switch: Mutex<Option<Capabilities>>,
    ifaces: Mutex<Option<IfaceCount>>,
    stitched: Mutex<HashMap<u32, Stitched>>,
    cpu_percent: Mutex<f64>,
    watcher: Mutex<String>,
    agent_counters: Arc<AgentCounters>,
    agent_addr: SocketAddr,
    td: Arc<TdCounters>,
    live_conns: AtomicU64,
    /// Ends that matched no recorded stitch when they arrived, replayed when the stitch
    /// is recorded: the switch can send them before the commit's answer reaches the
    /// shell (a FIN held during the freeze is released at commit; a commit answer that
    /// is lost is retransmitted seconds later, while the stitched transfer finishes).
    early: Mutex<VecDeque<(Instant, Early)>>,
}

/// An end seen before the stitch it belongs to was recorded.
#[derive(Debug, Clone)]
enum Early {
    /// A FIN or RST copy from the watcher.
    Segment(tcp_repair::TcpSegment),
    /// A teardown message from the switch or the core agent.
    Notice(TeardownMsg),
}

/// How long an early end is kept, and how many at most (oldest dropped first).
const EARLY_KEEP: Duration = Duration::from_secs(30);
const EARLY_MAX: usize = 1024;

fn keep_early(s: &Shared, e: Early) {
    keep_early_since(s, Instant::now(), e);
}

fn keep_early_since(s: &Shared, since: Instant, e: Early) {
    let mut q = lock(&s.early);
    q.retain(|(t, _)| t.elapsed() <= EARLY_KEEP);
    while q.len() >= EARLY_MAX {
        q.pop_front();
    }
    q.push_back((since, e));
}

/// The running shell. Dropping it (or [`Shell::shutdown`]) stops it: relayed
/// connections are closed, silenced sockets freed.
#[derive(Debug)]
pub struct Shell {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Runs the shell until `shutdown` becomes true.
///
/// # Errors
/// When it cannot start ([`ShellError`]).
pub fn run(config: ShellConfig, shutdown: Arc<AtomicBool>) -> Result<(), ShellError> {
    let shell = Shell::start(config, shutdown.clone())?;
    while !shutdown.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    shell.shutdown();
    Ok(())
}

fn bind_err(what: String) -> impl FnOnce(std::io::Error) -> ShellError {
    move |error| ShellError::Bind { what, error }
}

impl Shell {
    /// Binds every listener and the agent socket, discovers the switch (figure 5B;
    /// this waits up to `probe_timeout_ms`), and starts the threads.
    ///
    /// # Errors
    /// [`ShellError::Bind`].
    pub fn start(cfg: ShellConfig, shutdown: Arc<AtomicBool>) -> Result<Shell, ShellError> {
        let keys = cfg.keys();
        let mut listeners = Vec::new();
        let mut maps = Vec::new();
        for m in &cfg.mappings {
            let l =
                TcpListener::bind(m.listen).map_err(bind_err(format!("listen {}", m.listen)))?;
            if let Some(mss) = m.mss {
                tcp_repair::set_mss(&l, mss)
                    .map_err(bind_err(format!("TCP_MAXSEG on {}", m.listen)))?;
            }
            l.set_nonblocking(true)
                .map_err(bind_err(format!("listen {}", m.listen)))?;
            let listen = l
                .local_addr()
                .map_err(bind_err(format!("listen {}", m.listen)))?;
            listeners.push(l);
            maps.push(MappingRt {
                cfg: m.clone(),
                listen,
                counters: MappingCounters::default(),
                relayed_bytes: [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))],
                switch_bytes: Mutex::new((0, 0)),
                reasons: Mutex::new(VecDeque::new()),
                failed_by_reason: Mutex::new(BTreeMap::new()),
                handoff_time: Mutex::new(Histogram::default()),
                avail: Mutex::new(Err("not probed yet".into())),
            });
        }
        let mut responder =
            Responder::bind(cfg.agent_listen, keys.clone(), Duration::from_millis(100))
                .map_err(bind_err(format!("agent socket {}", cfg.agent_listen)))?;
        let agent_addr = responder
            .local_addr()
            .map_err(bind_err(format!("agent socket {}", cfg.agent_listen)))?;
        let status_listener = match &cfg.status_socket {
            None => None,
            Some(p) => {
                if let Some(dir) = p.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = std::fs::remove_file(p);
                let l = UnixListener::bind(p)
                    .map_err(bind_err(format!("status socket {}", p.display())))?;
                l.set_nonblocking(true)
                    .map_err(bind_err(format!("status socket {}", p.display())))?;
                Some(l)
            }
        };
        let needs_watcher = cfg
            .mappings
            .iter()
            .any(|m| matches!(m.teardown, Teardown::D | Teardown::E));
        let watcher = if needs_watcher {
            match tcp_repair::PacketWatcher::open(
                tcp_repair::WatchFilter::FinRst,
                Duration::from_millis(100),
            ) {
                Ok(w) => Some(Ok(w)),
                Err(e) => Some(Err(format!("error: {e}"))),
            }
        } else {
            None
        };
        let watcher_state = match &watcher {
            None => "off".to_string(),
            Some(Ok(_)) => "running".to_string(),
            Some(Err(e)) => e.clone(),
        };
        let shared = Arc::new(Shared {
            keys,
            stop: shutdown,
            maps,
            stitching: Mutex::new("not available: not probed yet".into()),
            switch: Mutex::new(None),
            ifaces: Mutex::new(None),
            stitched: Mutex::new(HashMap::new()),
            cpu_percent: Mutex::new(0.0),
            watcher: Mutex::new(watcher_state),
            agent_counters: responder.counters(),
            agent_addr,
            td: Arc::default(),
            live_conns: AtomicU64::new(0),
            early: Mutex::new(VecDeque::new()),
            cfg,
        });
        for m in &shared.maps {
            log::info!(target: "stitch_shell", mapping:% = m.listen, core:% = m.cfg.core,
                policy = m.cfg.bypass.describe().as_str(),
                teardown = names::variant(m.cfg.teardown).as_str();
                "relaying {} -> {}", m.listen, m.cfg.core);
        }
        discover(&shared);
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(bind_err(format!("thread {name}")))
        };
        for (i, l) in listeners.into_iter().enumerate() {
            let s = shared.clone();
            threads.push(spawn("accept", Box::new(move || accept_loop(s, i, l)))?);
        }
        let s = shared.clone();
        threads.push(spawn(
            "agent",
            Box::new(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    match responder.poll() {
                        Ok(Some(r)) => on_teardown(&s, r.msg),
                        Ok(None) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }),
        )?);
        if let Some(Ok(w)) = watcher {
            let s = shared.clone();
            threads.push(spawn("fin-watcher", Box::new(move || watch_loop(s, w)))?);
        }
        let s = shared.clone();
        threads.push(spawn("housekeeping", Box::new(move || housekeeping(s)))?);
        if let Some(l) = status_listener {
            let s = shared.clone();
            threads.push(spawn("status", Box::new(move || status_loop(s, l)))?);
        }
        Ok(Shell { shared, threads })
    }

    /// The listen addresses as bound (useful with port 0), in mapping order.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.shared.maps.iter().map(|m| m.listen).collect()
    }

    /// Where teardown notices arrive.
    pub fn agent_addr(&self) -> SocketAddr {
        self.shared.agent_addr
    }

    /// Counts interfaces and probes again now (otherwise every `reprobe_secs`).
    pub fn rediscover(&self) {
        discover(&self.shared);
    }

    /// The current status (what `--status` prints).
    pub fn status(&self) -> ShellStatus {
        build_status(&self.shared)
    }

    /// Stops every thread, closes relayed connections, frees silenced sockets.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.live_conns.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        lock(&self.shared.stitched).clear();
        if let Some(p) = &self.shared.cfg.status_socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_all();
        }
    }
}

/// Figure 5B for every mapping; sets the availability strings and logs a change.
fn discover(s: &Shared) {
    let before = lock(&s.stitching).clone();
    discover_now(s);
    let after = lock(&s.stitching).clone();
    if after != before {
        let switch = lock(&s.switch)
            .as_ref()
            .map(|c| format!("{} ({})", c.request_addr, c.switch_id));
        if after == "available" {
            log::info!(target: "stitch_shell::discovery", switch = switch.as_deref();
                "stitching available");
        } else {
            log::warn!(target: "stitch_shell::discovery", switch = switch.as_deref();
                "stitching {after}");
        }
    }
}

fn discover_now(s: &Shared) {
    let set_all = |reason: &str| {
        for m in &s.maps {
            *lock(&m.avail) = Err(reason.to_string());
        }
        *lock(&s.stitching) = format!("not available: {reason}");
    };
    let listens: Vec<SocketAddr> = s.maps.iter().map(|m| m.listen).collect();
    let cores: Vec<SocketAddr> = s.maps.iter().map(|m| m.cfg.core).collect();
    let mut ifindex = 0;
    let mut egress: Option<String> = None;
    let mut counts = (1u8, 1u8);
    if s.cfg.check_interfaces {
        let view = match HostView::read(&s.cfg.sysfs_net, &s.cfg.proc_net) {
            Ok(v) => v,
            Err(e) => {
                *lock(&s.ifaces) = None;
                return set_all(&format!("cannot read interfaces: {e}"));
            }
        };
        let c = view.count(&listens, &cores);
        counts = (
            c.ingress.len().min(255) as u8,
            c.egress.len().min(255) as u8,
        );
        if let Some(name) = c.egress.first() {
            ifindex = view.ifindex(name).unwrap_or(0);
            egress = Some(name.clone());
        }
        let refusal = c.refusal();
        *lock(&s.ifaces) = Some(c);
        if let Some(r) = refusal {
            *lock(&s.switch) = None;
            return set_all(&r);
        }
    }
    let want = s
        .maps
        .iter()
        .fold(agent_proto::CapFlags::empty(), |acc, m| {
            acc | discovery::needed_caps(&m.cfg)
        });
    let all_v6 = s.maps.iter().all(|m| m.cfg.core.is_ipv6());
    let target = discovery::probe_target(s.cfg.switch, all_v6, ifindex);
    // Only a broadcast or link-scope probe is pinned to the egress interface; a
    // configured unicast address follows the routing table as before.
    let pin = match target.ip() {
        IpAddr::V4(ip) => ip.is_broadcast(),
        IpAddr::V6(ip) => ip.is_multicast(),
    };
    // (Discovery gets here only with exactly one egress interface.)
    let egress = egress.filter(|_| pin);
    let caps = match discovery::probe(
        &s.keys,
        target,
        counts,
        want,
        s.cfg.probe_timeout,
        egress.as_deref(),
    ) {
        Ok(c) => c,
        Err(reason) => {
            *lock(&s.switch) = None;
            return set_all(&reason);
        }
    };
    *lock(&s.switch) = Some(caps.clone());
    if caps.free_flows == 0 {
        return set_all("switch has no free flows");
    }
    let watcher = lock(&s.watcher).clone();
    let mut first_reason = None;
    let mut any = false;
    for m in &s.maps {
        let mut r = discovery::check_caps(&caps, &m.cfg).map(|()| caps.request_addr);
        if r.is_ok() && matches!(m.cfg.teardown, Teardown::D | Teardown::E) && watcher != "running"
        {
            r = Err(format!(
                "FIN watcher needed for {}: {watcher}",
                names::variant(m.cfg.teardown)
            ));
        }
        match &r {
            Ok(_) => any = true,
            Err(e) => {
                first_reason.get_or_insert_with(|| e.clone());
            }
        }
        *lock(&m.avail) = r;
    }
    *lock(&s.stitching) = if any {
        "available".into()
    } else {
        format!("not available: {}", first_reason.unwrap_or_default())
    };
}

fn accept_loop(s: Arc<Shared>, idx: usize, l: TcpListener) {
    while !s.stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((ca, _)) => {
                let s2 = s.clone();
                s.live_conns.fetch_add(1, Ordering::SeqCst);
                let r = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || {
                        run_conn(&s2, idx, ca);
                        s2.live_conns.fetch_sub(1, Ordering::SeqCst);
                    });
                if r.is_err() {
                    s.live_conns.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn push_reason(m: &MappingRt, reason: String) {
    let mut r = lock(&m.reasons);
    if r.len() == MAX_REASONS {
        r.pop_front();
    }
    r.push_back(reason);
}

fn run_conn(s: &Shared, idx: usize, ca: TcpStream) {
    let m = &s.maps[idx];
    let _ = ca.set_nonblocking(false);
    let ab = match tcp_repair::connect_with_mss(m.cfg.core, m.cfg.mss, Duration::from_secs(10)) {
        Ok(ab) => ab,
        Err(e) => {
            m.counters
                .core_connect_failures
                .fetch_add(1, Ordering::Relaxed);
            log::warn!(target: LOG_CONN, mapping:% = m.listen, core:% = m.cfg.core, error:% = e;
                "cannot connect to the core; client dropped");
            return;
        }
    };
    let client_port = ca.peer_addr().map(|a| a.port()).unwrap_or(0);
    let mut conn = match Conn::start(ca, ab, m.relayed_bytes.clone()) {
        Ok(c) => c,
        Err(_) => return,
    };
    let c = &m.counters;
    c.connections.fetch_add(1, Ordering::Relaxed);
    c.active_relayed.fetch_add(1, Ordering::Relaxed);
    let qualifies = m.cfg.bypass.qualifies(client_port);
    let hc = s.cfg.handoff;
    let job = Job {
        s,
        idx,
        m,
        client: conn.legs.client,
    };
    let mut tries = Attempts::new(Instant::now());
    // A stitch the switch watches for this connection, waiting for both legs to have
    // been seen; with its attempt number.
    let mut prepared: Option<(Prepared, u32)> = None;
    loop {
        if conn.closed() {
            if let Some((p, attempt)) = prepared.take() {
                let id = p.stitch_id;
                conn.abort(p);
                job.failed(&mut tries, attempt, Some(id), &Failure::Closing, None);
            }
            c.relayed.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if s.stop.load(Ordering::SeqCst) {
            if let Some((p, _)) = prepared.take() {
                conn.abort(p);
            }
            conn.stop();
            break;
        }
        let now = Instant::now();
        if let Some((p, attempt)) = prepared.take() {
            let id = p.stitch_id;
            let seen = conn.legs_seen(&p);
            if conn.half_closed() {
                conn.abort(p);
                job.failed(&mut tries, attempt, Some(id), &Failure::Closing, None);
            } else if seen.both() {
                log::debug!(target: LOG_HANDOFF, mapping:% = m.listen, client:% = job.client,
                    stitch_id = id, attempt, waited_ms = ms(p.at.elapsed());
                    "both legs seen; freezing");
                match conn.commit(p, s.cfg.drain_timeout) {
                    Ok(h) => {
                        job.committed(h, attempt);
                        return;
                    }
                    Err(e) => {
                        conn = *e.conn;
                        job.failed(&mut tries, attempt, Some(id), &e.failure, e.frozen_for);
                    }
                }
            } else if now.duration_since(p.at) >= hc.ready_wait {
                conn.abort(p);
                job.deferred(&mut tries, attempt, id, seen);
            } else {
                prepared = Some((p, attempt));
            }
        } else if qualifies && tries.may_start(&hc, now) && !conn.half_closed() {
            let sample = ConnSample {
                bytes: conn.bytes(),
                reads: conn.reads(),
                age: conn.started.elapsed(),
                cpu_percent: *lock(&s.cpu_percent),
            };
            let avail = lock(&m.avail).clone();
            if let (true, Ok(switch)) = (m.cfg.bypass.triggers(&sample), avail) {
                let attempt = tries.start();
                c.attempted.fetch_add(1, Ordering::Relaxed);
                log::info!(target: LOG_HANDOFF, mapping:% = m.listen, client:% = job.client,
                    core:% = m.cfg.core, attempt, bytes = sample.bytes, age_ms = ms(sample.age),
                    switch:% = switch; "hand-off start");
                let params = PrepareParams {
                    teardown: m.cfg.teardown,
                    idle_timeout_s: m.cfg.idle_timeout_s,
                    linger_s: m.cfg.linger_s,
                    provoke: hc.provoke_idle_legs,
                };
                match conn.prepare(&s.keys, switch, params) {
                    Ok(p) => {
                        log::debug!(target: LOG_HANDOFF, mapping:% = m.listen,
                            client:% = job.client, stitch_id = p.stitch_id, attempt;
                            "prepared; waiting for both legs to be seen");
                        prepared = Some((p, attempt));
                    }
                    Err(f) => job.failed(&mut tries, attempt, None, &f, None),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    c.active_relayed.fetch_sub(1, Ordering::Relaxed);
}

/// Log target of hand-off lines.
const LOG_HANDOFF: &str = "stitch_shell::handoff";
/// Log target of connection and stitch life lines.
const LOG_CONN: &str = "stitch_shell::conn";

/// Milliseconds, fractional, for logs.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Per connection: attempts made, and when the next may start (time is passed in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attempts {
    made: u32,
    failures: u32,
    next: Instant,
    gave_up: bool,
}

impl Attempts {
    fn new(now: Instant) -> Attempts {
        Attempts {
            made: 0,
            failures: 0,
            next: now,
            gave_up: false,
        }
    }

    /// Whether an attempt may start now.
    fn may_start(&self, hc: &HandoffConfig, now: Instant) -> bool {
        !self.gave_up && self.made < hc.max_attempts && now >= self.next
    }

    /// Records an attempt; returns its number (1-based).
    fn start(&mut self) -> u32 {
        self.made += 1;
        self.made
    }

    /// Records that the attempt failed or was deferred at `now`: the wait before the
    /// next one, or `None` when that was the last.
    fn failed(&mut self, hc: &HandoffConfig, now: Instant) -> Option<Duration> {
        self.failures += 1;
        if self.made >= hc.max_attempts {
            self.gave_up = true;
            return None;
        }
        let d = hc.delay(self.failures);
        self.next = now + d;
        Some(d)
    }
}

/// One connection's hand-off bookkeeping: counters, reasons, histogram, log lines.
struct Job<'a> {
    s: &'a Shared,
    idx: usize,
    m: &'a MappingRt,
    client: SocketAddr,
}

impl Job<'_> {
    fn committed(&self, h: HandedOff, attempt: u32) {
        let (s, m, c) = (self.s, self.m, &self.m.counters);
        c.active_relayed.fetch_sub(1, Ordering::Relaxed);
        c.bypassed.fetch_add(1, Ordering::Relaxed);
        c.active_stitched.fetch_add(1, Ordering::Relaxed);
        lock(&m.handoff_time).record(h.frozen_for);
        let id = h.stitch_id;
        log::info!(target: LOG_HANDOFF, mapping:% = m.listen, client:% = self.client,
            stitch_id = id, attempt, outcome = "committed",
            freeze_to_commit_ms = ms(h.frozen_for); "hand-off committed");
        let old = lock(&s.stitched).insert(
            id,
            Stitched {
                switch: h.switch,
                h,
                mapping: self.idx,
                variant: m.cfg.teardown,
                fin_client: false,
                fin_core: false,
                first_fin: None,
                estimate: (0, 0),
            },
        );
        if let Some(old) = old {
            finish(s, old, None, "replaced by a new stitch with the same id");
        }
        replay_early(s);
    }

    fn failed(
        &self,
        tries: &mut Attempts,
        attempt: u32,
        stitch_id: Option<u32>,
        f: &Failure,
        frozen_for: Option<Duration>,
    ) {
        let (s, m, c) = (self.s, self.m, &self.m.counters);
        c.failed.fetch_add(1, Ordering::Relaxed);
        let key = f.key();
        *lock(&m.failed_by_reason).entry(key.clone()).or_default() += 1;
        let reason = f.to_string();
        push_reason(m, reason.clone());
        // A connection that is ending gets no further attempt, and is not "given up".
        let closing = matches!(f, Failure::Closing);
        let retry = if closing {
            None
        } else {
            tries.failed(&s.cfg.handoff, Instant::now())
        };
        log::warn!(target: LOG_HANDOFF, mapping:% = m.listen, client:% = self.client,
            stitch_id, attempt, outcome = "failed", reason_key = key.as_str(),
            reason = reason.as_str(), frozen_ms = frozen_for.map(ms),
            retry_in_ms = retry.map(ms); "hand-off failed: {reason}");
        if !closing {
            self.maybe_gave_up(retry, attempt);
        }
    }

    fn deferred(&self, tries: &mut Attempts, attempt: u32, stitch_id: u32, seen: LegsSeen) {
        let (s, m) = (self.s, self.m);
        m.counters.deferred.fetch_add(1, Ordering::Relaxed);
        let retry = tries.failed(&s.cfg.handoff, Instant::now());
        log::info!(target: LOG_HANDOFF, mapping:% = m.listen, client:% = self.client,
            stitch_id, attempt, outcome = "deferred_not_ready", not_seen = seen.missing(),
            waited_ms = ms(s.cfg.handoff.ready_wait), retry_in_ms = retry.map(ms);
            "hand-off deferred: nothing seen from {} since prepare; given back without a freeze",
            seen.missing());
        self.maybe_gave_up(retry, attempt);
    }

    fn maybe_gave_up(&self, retry: Option<Duration>, attempts: u32) {
        if retry.is_none() {
            self.m.counters.given_up.fetch_add(1, Ordering::Relaxed);
            log::warn!(target: LOG_HANDOFF, mapping:% = self.m.listen, client:% = self.client,
                attempts, outcome = "given_up";
                "giving up hand-off after {attempts} attempts; the shell relays this connection to its end");
        }
    }
}

/// Accounts for a stitch that ended and drops its silenced sockets.
fn finish(s: &Shared, st: Stitched, bytes: Option<(u64, u64)>, why: &str) {
    let m = &s.maps[st.mapping];
    m.counters.active_stitched.fetch_sub(1, Ordering::Relaxed);
    let (cb, bc) = bytes.unwrap_or(st.estimate);
    log::info!(target: LOG_CONN, mapping:% = m.listen, client:% = st.h.legs.client,
        stitch_id = st.h.stitch_id, why, bytes_c_to_b = cb, bytes_b_to_c = bc,
        bytes_estimated = bytes.is_none(); "stitch ended: {why}");
    let mut sb = lock(&m.switch_bytes);
    sb.0 += cb;
    sb.1 += bc;
    // Dropping `st.h` closes the repair-mode sockets: no FIN, no RST.
}

fn free(s: &Shared, id: u32, bytes: Option<(u64, u64)>, why: &str) -> bool {
    let st = lock(&s.stitched).remove(&id);
    match st {
        Some(st) => {
            finish(s, st, bytes, why);
            true
        }
        None => false,
    }
}

fn on_teardown(s: &Shared, msg: TeardownMsg) {
    s.td.notices.fetch_add(1, Ordering::Relaxed);
    if !apply_notice(s, &msg) {
        s.td.unmatched.fetch_add(1, Ordering::Relaxed);
        keep_early(s, Early::Notice(msg));
    }
}

/// Frees the stitch a teardown message names; false if no recorded stitch matches.
fn apply_notice(s: &Shared, msg: &TeardownMsg) -> bool {
    let id = {
        let map = lock(&s.stitched);
        if msg.stitch_id != 0 && map.contains_key(&msg.stitch_id) {
            Some(msg.stitch_id)
        } else if let Some(l) = msg.legs {
            let known = |a: &SocketAddr, b: &SocketAddr| a.ip().is_unspecified() || a == b;
            map.iter()
                .find(|(_, st)| {
                    let g = &st.h.legs;
                    g.shell_b == l[2]
                        && g.core == l[3]
                        && known(&l[0], &g.client)
                        && known(&l[1], &g.shell_a)
                })
                .map(|(id, _)| *id)
        } else {
            None
        }
    };
    match id {
        Some(id) => {
            free(s, id, msg.bytes, "teardown notice");
            true
        }
        None => false,
    }
}

/// Applies the early ends that match a stitch recorded since they arrived.
fn replay_early(s: &Shared) {
    let pending: Vec<(Instant, Early)> = lock(&s.early).drain(..).collect();
    for (since, e) in pending {
        let matched = match &e {
            Early::Segment(seg) => apply_segment(s, seg),
            Early::Notice(msg) => apply_notice(s, msg),
        };
        if !matched {
            keep_early_since(s, since, e);
        }
    }
}

fn watch_loop(s: Arc<Shared>, mut w: tcp_repair::PacketWatcher) {
    while !s.stop.load(Ordering::SeqCst) {
        let o = match w.recv() {
            Ok(Some(o)) => o,
            Ok(None) => continue,
            Err(e) => {
                *lock(&s.watcher) = format!("error: {e}");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let seg = o.segment;
        if o.outgoing || !(seg.flags.fin() || seg.flags.rst()) {
            continue;
        }
        if !apply_segment(&s, &seg) {
            keep_early(&s, Early::Segment(seg));
        }
    }
}

/// Applies a FIN or RST copy to the stitch whose legs it belongs to; false if no
/// recorded stitch matches.
fn apply_segment(s: &Shared, seg: &tcp_repair::TcpSegment) -> bool {
    let mut notify = None;
    let mut done = None;
    {
        let mut map = lock(&s.stitched);
        let hit = map.iter_mut().find_map(|(id, st)| {
            let g = &st.h.legs;
            if seg.src == g.client && seg.dst == g.shell_a {
                Some((*id, Side::Client, st))
            } else if seg.src == g.core && seg.dst == g.shell_b {
                Some((*id, Side::Core, st))
            } else {
                None
            }
        });
        let Some((id, from, st)) = hit else {
            return false;
        };
        if seg.flags.rst() {
            s.td.rsts.fetch_add(1, Ordering::Relaxed);
            done = Some(id);
        } else {
            s.td.fins.fetch_add(1, Ordering::Relaxed);
            let q = st.h.seqs;
            let first_from_side = match from {
                Side::Client => {
                    st.estimate.0 = u64::from(seg.seq.wrapping_sub(q.r1));
                    if seg.flags.ack() {
                        st.estimate.1 = st.estimate.1.max(u64::from(seg.ack.wrapping_sub(q.s1)));
                    }
                    !std::mem::replace(&mut st.fin_client, true)
                }
                _ => {
                    st.estimate.1 = u64::from(seg.seq.wrapping_sub(q.r2));
                    if seg.flags.ack() {
                        st.estimate.0 = st.estimate.0.max(u64::from(seg.ack.wrapping_sub(q.s2)));
                    }
                    !std::mem::replace(&mut st.fin_core, true)
                }
            };
            st.first_fin.get_or_insert_with(Instant::now);
            if first_from_side && st.variant == Teardown::D {
                let core_agent =
                    SocketAddr::new(st.h.legs.core.ip(), s.maps[st.mapping].cfg.core_agent_port);
                notify = Some((
                    core_agent,
                    TeardownMsg {
                        stitch_id: id,
                        from,
                        kind: EndKind::Fin,
                        variant: Teardown::D,
                        to: Side::Core,
                        legs: Some(st.h.legs.array()),
                        bytes: None,
                    },
                ));
            }
            if st.fin_client && st.fin_core {
                done = Some(id);
            }
        }
    }
    if let Some((to, msg)) = notify {
        // Figure 4D, step 450: tell the core, off this thread (retransmits take
        // up to 3.1 s).
        let keys = s.keys.clone();
        let td = Arc::clone(&s.td);
        let _ = std::thread::Builder::new()
            .name("notify-core".into())
            .spawn(move || {
                let ok = Requester::for_peer(to, keys)
                    .map_err(SendError::Io)
                    .and_then(|mut r| r.request(to, &Message::Teardown(msg), None))
                    .and_then(|(answer, _)| expect_ok(answer));
                let c = if ok.is_ok() {
                    &td.core_notified
                } else {
                    &td.core_notify_failed
                };
                c.fetch_add(1, Ordering::Relaxed);
            });
    }
    if let Some(id) = done {
        let why = if seg.flags.rst() {
            "RST seen"
        } else {
            "FINs seen from both ends"
        };
        free(s, id, None, why);
    }
    true
}

fn housekeeping(s: Arc<Shared>) {
    let tick = Duration::from_millis(100);
    let mut last_cpu = (
        Instant::now(),
        tcp_repair::process_cpu_time().unwrap_or_default(),
    );
    let mut last_probe = Instant::now();
    let mut last_heartbeat = Instant::now();
    while !s.stop.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        if last_cpu.0.elapsed() >= Duration::from_secs(1) {
            let now = (
                Instant::now(),
                tcp_repair::process_cpu_time().unwrap_or_default(),
            );
            let wall = now.0.duration_since(last_cpu.0).as_secs_f64();
            let cpu = now.1.saturating_sub(last_cpu.1).as_secs_f64();
            *lock(&s.cpu_percent) = if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 };
            last_cpu = now;
        }
        if last_probe.elapsed() >= s.cfg.reprobe {
            discover(&s);
            last_probe = Instant::now();
        }
        // One FIN seen long ago and never the other: free the sockets anyway.
        let expired: Vec<u32> = lock(&s.stitched)
            .iter()
            .filter(|(_, st)| {
                st.first_fin
                    .is_some_and(|t| t.elapsed() >= s.maps[st.mapping].cfg.half_close)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if free(&s, id, None, "half-close timeout after one FIN") {
                s.td.half_close_expired.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !s.cfg.heartbeat.is_zero() && last_heartbeat.elapsed() >= s.cfg.heartbeat {
            last_heartbeat = Instant::now();
            heartbeat(&s);
        }
    }
}

/// Heartbeats every live stitch; frees those the switch no longer knows.
fn heartbeat(s: &Shared) {
    let mut by_switch: HashMap<SocketAddr, Vec<u32>> = HashMap::new();
    for (id, st) in lock(&s.stitched).iter() {
        by_switch.entry(st.switch).or_default().push(*id);
    }
    for (switch, ids) in by_switch {
        let Ok(mut req) = Requester::for_peer(switch, s.keys.clone()) else {
            continue;
        };
        // Whether the switch says it no longer has any of `ids` (None: no answer).
        let mut unknown = |ids: &[u32]| {
            let msg = Message::Heartbeat(Heartbeat {
                stitch_ids: ids.to_vec(),
            });
            match req.request(switch, &msg, Some(Duration::from_secs(1))) {
                Ok((Message::Reply(r), _)) => {
                    Some(!r.ok && r.error_code == error_code::NO_SUCH_STITCH)
                }
                _ => None,
            }
        };
        for chunk in ids.chunks(agent_proto::MAX_HEARTBEAT_IDS) {
            if unknown(chunk) != Some(true) {
                continue;
            }
            // The answer names the set, not each id: ask for each one alone.
            let gone: Vec<u32> = if chunk.len() == 1 {
                chunk.to_vec()
            } else {
                chunk
                    .iter()
                    .copied()
                    .filter(|id| unknown(&[*id]) == Some(true))
                    .collect()
            };
            for id in gone {
                if free(s, id, None, "the switch no longer knows it (heartbeat)") {
                    s.td.forgotten.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn status_loop(s: Arc<Shared>, l: UnixListener) {
    while !s.stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((mut c, _)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                let text = serde_json::to_string_pretty(&build_status(&s)).unwrap_or_default();
                let _ = c.write_all(text.as_bytes());
                let _ = c.write_all(b"\n");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn build_status(s: &Shared) -> ShellStatus {
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut live: Vec<(u64, u64)> = vec![(0, 0); s.maps.len()];
    for st in lock(&s.stitched).values() {
        live[st.mapping].0 += st.estimate.0;
        live[st.mapping].1 += st.estimate.1;
    }
    let mappings = s
        .maps
        .iter()
        .zip(live)
        .map(|(m, live)| {
            let c = &m.counters;
            let sb = *lock(&m.switch_bytes);
            MappingStatus {
                listen: m.listen.to_string(),
                core: m.cfg.core.to_string(),
                policy: m.cfg.bypass.describe(),
                teardown: names::variant(m.cfg.teardown),
                stitching: match &*lock(&m.avail) {
                    Ok(_) => "available".into(),
                    Err(e) => format!("not available: {e}"),
                },
                connections: ld(&c.connections),
                active_relayed: ld(&c.active_relayed),
                relayed: ld(&c.relayed),
                bypassed: ld(&c.bypassed),
                failed_handoffs: ld(&c.failed),
                last_failure_reasons: lock(&m.reasons).iter().cloned().collect(),
                handoffs: HandoffCounts {
                    attempted: ld(&c.attempted),
                    committed: ld(&c.bypassed),
                    failed: ld(&c.failed),
                    failed_by_reason: lock(&m.failed_by_reason).clone(),
                    deferred_not_ready: ld(&c.deferred),
                    given_up: ld(&c.given_up),
                    freeze_to_commit_ms: lock(&m.handoff_time).clone(),
                },
                core_connect_failures: ld(&c.core_connect_failures),
                bytes_relayed_by_shell: Bytes {
                    c_to_b: ld(&m.relayed_bytes[0]),
                    b_to_c: ld(&m.relayed_bytes[1]),
                },
                bytes_by_switch: Bytes {
                    c_to_b: sb.0 + live.0,
                    b_to_c: sb.1 + live.1,
                },
                active_stitched: ld(&c.active_stitched),
            }
        })
        .collect();
    let td = &s.td;
    ShellStatus {
        stitching: lock(&s.stitching).clone(),
        switch: lock(&s.switch).as_ref().map(|c| SwitchInfo {
            request_addr: c.request_addr.to_string(),
            switch_id: c.switch_id.clone(),
            caps: c.flags.bits(),
            free_flows: c.free_flows,
        }),
        interfaces: lock(&s.ifaces).clone(),
        cpu_seconds: tcp_repair::process_cpu_time()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        cpu_percent: *lock(&s.cpu_percent),
        fin_watcher: lock(&s.watcher).clone(),
        agent_listen: s.agent_addr.to_string(),
        agent: s.agent_counters.snapshot(),
        teardown: TeardownCounts {
            notices: ld(&td.notices),
            unmatched: ld(&td.unmatched),
            fins_seen: ld(&td.fins),
            rsts_seen: ld(&td.rsts),
            core_notified: ld(&td.core_notified),
            core_notify_failed: ld(&td.core_notify_failed),
            forgotten_by_switch: ld(&td.forgotten),
            half_close_expired: ld(&td.half_close_expired),
        },
        mappings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_wait_the_backoff_and_stop_at_the_bound() {
        let hc = HandoffConfig {
            max_attempts: 3,
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_millis(80),
            ..HandoffConfig::default()
        };
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut a = Attempts::new(t0);
        assert!(a.may_start(&hc, t0));
        assert_eq!(a.start(), 1);
        assert_eq!(a.failed(&hc, at(10)), Some(Duration::from_millis(50)));
        assert!(!a.may_start(&hc, at(59)));
        assert!(a.may_start(&hc, at(60)));
        assert_eq!(a.start(), 2);
        assert_eq!(
            a.failed(&hc, at(100)),
            Some(Duration::from_millis(80)),
            "capped"
        );
        assert!(!a.may_start(&hc, at(179)) && a.may_start(&hc, at(180)));
        assert_eq!(a.start(), 3);
        assert_eq!(a.failed(&hc, at(200)), None, "the third was the last");
        assert!(!a.may_start(&hc, at(100_000)));
    }
}
