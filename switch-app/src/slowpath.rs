//! The slow path on the main lcore: the only owner and writer of the switch's state.
//!
//! It applies learning requests from the workers, ages the MAC tables, publishes port
//! settings for the workers (copy, change, swap: workers see a whole snapshot between
//! bursts), and executes control-socket requests one at a time, so two clients can never
//! interleave half-applied changes. Control threads never touch DPDK or the tables; they
//! send a [`Request`] here and wait for the answer.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use dpdk::{Port, PortInfo};
use serde_json::{json, Value};
use stitch_control::protocol::{
    Mac, MacAddParams, MacDelParams, Method, PortSecurityParams, RpcError,
};
use stitch_control::server::Handler;
use switch_core::l2::pipeline::{L2Ports, LearnRequest};
use switch_core::l2::security::PortSecurity;
use switch_core::l2::table::{InsertOutcome, LearnOutcome, MacTableWriter};
use switch_core::{BridgeId, MacAddr, PortId};

use crate::config::Config;
use crate::fault::PortFault;
use crate::state::{L2Desired, PortPolicy};
use crate::stats::WorkerStats;
use crate::stitch::manager::{drain_punts, Io, SlowTx, Stitcher};
use crate::worker::Punt;

/// A control request and where its answer goes.
pub type Request = (Method, SyncSender<Result<Value, RpcError>>);

/// One started port, as `ports.list` shows it.
#[derive(Debug, Clone)]
pub struct PortState {
    pub port: Port,
    pub info: PortInfo,
    pub devargs: String,
    pub mac: MacAddr,
    pub rx_queues: u16,
    pub tx_queues: u16,
}

/// Slow-path counters (`stats.get` -> `slow_path`).
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    learned: u64,
    refreshed: u64,
    moves: u64,
    move_refused: u64,
    port_limit: u64,
    static_kept: u64,
    table_full: u64,
    invalid: u64,
    aged: u64,
}

/// The slow path's state.
pub struct SlowPath {
    pub dpdk_version: String,
    pub ports: Vec<PortState>,
    pub l2: L2Ports,
    pub l2_pub: Arc<ArcSwap<L2Ports>>,
    /// Most MACs each port (by id) may have learned at once.
    pub port_limits: Vec<Option<u32>>,
    pub writers: Vec<Option<MacTableWriter>>,
    pub learn_queues: Vec<Arc<ArrayQueue<LearnRequest>>>,
    pub worker_stats: Vec<Arc<WorkerStats>>,
    pub aging_secs: u32,
    pub tsc_start: u64,
    pub tsc_hz: u64,
    pub stop: Arc<AtomicBool>,
    /// Stitches and the flow table writer.
    pub stitcher: Stitcher,
    /// Held packets and notices from the workers.
    pub punt_queues: Vec<Arc<ArrayQueue<Punt>>>,
    /// How the slow path sends packets (through a worker).
    pub tx: SlowTx,
    /// Buffers for packets the slow path builds.
    pub pool: Arc<dpdk::Mempool>,
    /// Fault injection settings, read by the workers.
    pub faults: Arc<Vec<PortFault>>,
    /// The agent protocol endpoint, when configured.
    pub agent: Option<crate::agent::Agent>,
    /// The TOML the switch runs (`config.reload` re-reads `config_path`).
    pub config: Config,
    pub config_path: Option<PathBuf>,
    /// Set by SIGHUP: reload the configuration at the next round.
    pub reload: Arc<AtomicBool>,
    /// Packet captures: the rings' consumer and the pcap files' writer.
    pub capture: crate::capture::Captures,
    /// The load balancer's services.
    pub lb: crate::lb::LbManager,
    /// When the uplinks' TX counters were last read, and what they were.
    uplink_at: Option<Instant>,
    uplink_tx: Vec<u64>,
    counters: Counters,
    /// Snapshots replaced recently: kept alive a while so that the last reference is never
    /// dropped (and freed) by a worker on its hot path.
    retired: VecDeque<(Instant, Arc<L2Ports>)>,
}

impl SlowPath {
    /// Assembles the slow path; `l2` is what is already published in `l2_pub`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dpdk_version: String,
        ports: Vec<PortState>,
        l2: L2Ports,
        l2_pub: Arc<ArcSwap<L2Ports>>,
        writers: Vec<Option<MacTableWriter>>,
        aging_secs: u32,
        tsc_start: u64,
        tsc_hz: u64,
        stop: Arc<AtomicBool>,
        stitcher: Stitcher,
        tx: SlowTx,
        pool: Arc<dpdk::Mempool>,
        faults: Arc<Vec<PortFault>>,
    ) -> SlowPath {
        SlowPath {
            dpdk_version,
            ports,
            l2,
            l2_pub,
            port_limits: Vec::new(),
            writers,
            learn_queues: vec![],
            worker_stats: vec![],
            aging_secs,
            tsc_start,
            tsc_hz,
            stop,
            stitcher,
            punt_queues: vec![],
            tx,
            pool,
            faults,
            agent: None,
            config: Config::default(),
            config_path: None,
            reload: Arc::new(AtomicBool::new(false)),
            capture: crate::capture::Captures::new(0, tsc_hz),
            lb: crate::lb::LbManager::new(
                MacAddr([0x02, 0x53, 0x54, 0x4c, 0x42, 0x01]),
                0,
                None,
                None,
            ),
            uplink_at: None,
            uplink_tx: Vec::new(),
            counters: Counters::default(),
            retired: VecDeque::new(),
        }
    }

    fn now(&self) -> u32 {
        (dpdk::tsc().wrapping_sub(self.tsc_start) / self.tsc_hz.max(1)) as u32
    }

    /// Runs until the stop flag is set (signal or `shutdown`).
    pub fn run(&mut self, requests: &Receiver<Request>) {
        let mut last_age = self.now();
        while !self.stop.load(Ordering::Relaxed) {
            let learned = self.apply_learning() + self.apply_punts();
            self.measure_uplinks();
            for o in self.lb.tick(Instant::now()) {
                if let Ok(m) = dpdk::Mbuf::from_slice(&self.pool, &o.frame) {
                    self.tx.send(o.port, m);
                }
            }
            for e in std::mem::take(&mut self.lb.events) {
                self.stitcher.emit(e);
            }
            self.capture.poll(Instant::now());
            let now = self.now();
            if now != last_age {
                last_age = now;
                self.age(now);
                let mut io = Io {
                    tx: &self.tx,
                    pool: &self.pool,
                };
                self.stitcher.tick(&mut io);
                self.flush_notices();
                let cutoff = Instant::now() - Duration::from_secs(1);
                while self.retired.front().is_some_and(|(t, _)| *t < cutoff) {
                    self.retired.pop_front();
                }
            }
            // Wait for a control request, briefly: learning latency stays well under a
            // millisecond without burning the main lcore's CPU.
            let wait = if learned > 0 {
                Duration::from_micros(0)
            } else {
                Duration::from_micros(200)
            };
            if self.reload.swap(false, Ordering::Relaxed) {
                match self.reload_config() {
                    Ok(v) => {
                        eprintln!("stitchd: SIGHUP: configuration reloaded: {v}");
                        self.stitcher
                            .emit(json!({"event": "config_reloaded", "result": v}));
                    }
                    Err(e) => {
                        eprintln!("stitchd: SIGHUP: reload refused: {}", e.message);
                        self.stitcher
                            .emit(json!({"event": "config_reload_refused", "error": e.message}));
                    }
                }
            }
            match requests.recv_timeout(wait) {
                Ok((method, reply)) => {
                    let l2_change = matches!(
                        method,
                        Method::MacAdd(_) | Method::MacDel(_) | Method::PortSecuritySet(_)
                    );
                    let lb_change = matches!(
                        method,
                        Method::LbServiceAdd(_)
                            | Method::LbServiceDel(_)
                            | Method::LbBackendAdd(_)
                            | Method::LbBackendDel(_)
                            | Method::LbBackendSet(_)
                    );
                    let answer = self.handle(method);
                    if l2_change && answer.is_ok() {
                        self.save_l2_state();
                    }
                    if lb_change && answer.is_ok() {
                        self.save_lb_state();
                    }
                    self.flush_notices();
                    let _ = reply.send(answer);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_micros(200))
                }
            }
            self.stitcher.save_state_if_dirty();
        }
        // Files of captures still running end complete.
        self.capture.stop_all(Instant::now());
    }

    /// The static MACs and port policies the switch holds now.
    pub fn l2_desired(&self) -> L2Desired {
        let mut d = L2Desired::default();
        for w in self.writers.iter().flatten() {
            for e in w.entries().into_iter().filter(|e| e.is_static) {
                d.static_macs.insert(e.mac, e.port.0);
            }
        }
        for p in &self.ports {
            if let Some(l) = self.l2.get(PortId(p.port.0)) {
                d.ports.insert(
                    p.port.0,
                    PortPolicy {
                        allowed_macs: l.security.allowed().map(<[MacAddr]>::to_vec),
                        learning: l.security.learning(),
                    },
                );
            }
        }
        d
    }

    /// Makes the switch hold `want`: static MACs removed, added or moved, port policies
    /// set where they differ (through the same checks as the control requests).
    ///
    /// # Errors
    /// The first change refused (e.g. a full MAC table); what was applied before it stays
    /// and is saved.
    pub fn apply_l2_desired(&mut self, want: &L2Desired) -> Result<Value, RpcError> {
        let have = self.l2_desired();
        let (mut removed, mut added, mut policies) = (0, 0, 0);
        let mut r = Ok(());
        for mac in have.static_macs.keys() {
            if !want.static_macs.contains_key(mac) {
                r = r.and_then(|()| {
                    self.handle(Method::MacDel(MacDelParams {
                        mac: Mac(mac.0),
                        bridge: None,
                    }))
                    .map(|_| removed += 1)
                });
            }
        }
        for (mac, port) in &want.static_macs {
            if have.static_macs.get(mac) != Some(port) {
                r = r.and_then(|()| {
                    self.handle(Method::MacAdd(MacAddParams {
                        mac: Mac(mac.0),
                        port: *port,
                    }))
                    .map(|_| added += 1)
                });
            }
        }
        for (port, p) in &want.ports {
            if have.ports.get(port) != Some(p) {
                r = r.and_then(|()| {
                    self.handle(Method::PortSecuritySet(PortSecurityParams {
                        port: *port,
                        allowed_macs: p
                            .allowed_macs
                            .as_ref()
                            .map(|l| l.iter().map(|m| Mac(m.0)).collect()),
                        learning: p.learning,
                    }))
                    .map(|_| policies += 1)
                });
            }
        }
        self.save_l2_state();
        r.map(|()| {
            json!({"static_macs_removed": removed, "static_macs_set": added, "port_policies_set": policies})
        })
    }

    /// Records the switch's L2 settings in the state file (when configured) and writes it.
    /// Every 50 ms, the frames each uplink sent since the last look: the load the
    /// balancer's `uplink_select = "load"` compares.
    fn measure_uplinks(&mut self) {
        let now = Instant::now();
        if self
            .uplink_at
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(50))
            || self.lb.uplinks.ports.is_empty()
        {
            return;
        }
        self.uplink_at = Some(now);
        let ports: Vec<PortId> = self.lb.uplinks.ports.clone();
        self.uplink_tx.resize(ports.len(), 0);
        for (i, p) in ports.iter().enumerate() {
            let Some(ps) = self.ports.iter().find(|s| s.port.0 == p.0) else {
                continue;
            };
            let Ok(st) = ps.port.stats(0) else { continue };
            let delta = st.tx_packets.saturating_sub(self.uplink_tx[i]);
            self.uplink_tx[i] = st.tx_packets;
            if let Some(l) = self.lb.uplinks.load.get(i) {
                l.store(delta, Ordering::Relaxed);
            }
        }
    }

    /// Writes the balanced services into the state file (after an `lb.*` change).
    fn save_lb_state(&mut self) {
        let current = self.lb.list().services;
        match self.stitcher.state.as_mut() {
            Some(f) => f.lb.current = current,
            None => return,
        }
        self.stitcher.save_state();
    }

    fn save_l2_state(&mut self) {
        if self.stitcher.state.is_none() {
            return;
        }
        let current = self.l2_desired();
        if let Some(f) = self.stitcher.state.as_mut() {
            f.l2.current = current;
        }
        self.stitcher.save_state();
    }

    /// `config.reload` and SIGHUP: re-reads the TOML and applies what changed in the
    /// settings that can change live (static MACs, port policies); anything else that
    /// changed is refused with its name, and nothing is applied.
    pub fn reload_config(&mut self) -> Result<Value, RpcError> {
        let Some(path) = self.config_path.clone() else {
            return Err(RpcError::app(
                "stitchd was started without --config: there is no file to reload",
            ));
        };
        let new =
            Config::load(&path).map_err(|e| RpcError::app(format!("{e}; nothing was applied")))?;
        let fixed = fixed_sections_changed(&self.config, &new);
        if !fixed.is_empty() {
            return Err(RpcError::app(format!(
                "{} changed in {}: these take a restart; nothing was applied (live: l2.static_macs, ports[].allowed_macs, ports[].learning)",
                fixed.join(", "),
                path.display()
            )));
        }
        let old_base = L2Desired::from_config(&self.config);
        let new_base = L2Desired::from_config(&new);
        let want = self.l2_desired().rebase(&old_base, &new_base);
        self.config = new;
        if let Some(f) = self.stitcher.state.as_mut() {
            f.l2.base = new_base;
        }
        let mut v = self.apply_l2_desired(&want)?;
        v["file"] = json!(path.display().to_string());
        Ok(v)
    }

    fn apply_learning(&mut self) -> usize {
        let now = self.now();
        let mut n = 0;
        for q in &self.learn_queues {
            while let Some(req) = q.pop() {
                n += 1;
                let Some(bridge) = self.l2.get(req.port).and_then(|p| p.bridge) else {
                    continue;
                };
                let Some(Some(w)) = self.writers.get_mut(usize::from(bridge.0)) else {
                    continue;
                };
                let limit = self
                    .port_limits
                    .get(usize::from(req.port.0))
                    .copied()
                    .flatten();
                match w.learn_with(req.mac, req.port, now, self.l2.move_policy(), limit) {
                    LearnOutcome::Learned => self.counters.learned += 1,
                    LearnOutcome::Refreshed => self.counters.refreshed += 1,
                    LearnOutcome::Moved { from } => {
                        self.counters.moves += 1;
                        self.stitcher.emit(json!({
                            "event": "mac_moved", "mac": req.mac.to_string(),
                            "from": from.0, "to": req.port.0,
                        }));
                    }
                    LearnOutcome::MoveRefused { owner } => {
                        self.counters.move_refused += 1;
                        self.stitcher.emit(json!({
                            "event": "mac_move_refused", "mac": req.mac.to_string(),
                            "owner": owner.0, "claimed_by": req.port.0,
                        }));
                    }
                    LearnOutcome::PortLimit => self.counters.port_limit += 1,
                    LearnOutcome::StaticKept => self.counters.static_kept += 1,
                    LearnOutcome::Full => self.counters.table_full += 1,
                    LearnOutcome::Invalid => self.counters.invalid += 1,
                }
            }
        }
        n
    }

    fn apply_punts(&mut self) -> usize {
        let mut io = Io {
            tx: &self.tx,
            pool: &self.pool,
        };
        drain_punts(
            &self.punt_queues,
            &mut self.stitcher,
            &mut self.agent,
            &mut self.lb,
            &mut io,
        )
    }

    /// Sends the teardown messages the stitcher queued (after a control request or tick).
    fn flush_notices(&mut self) {
        let notices = std::mem::take(&mut self.stitcher.notices);
        if let Some(a) = self.agent.as_mut() {
            let io = Io {
                tx: &self.tx,
                pool: &self.pool,
            };
            for n in &notices {
                a.notify(n, &io);
            }
            a.tick(&io);
        }
    }

    fn age(&mut self, now: u32) {
        for w in self.writers.iter_mut().flatten() {
            self.counters.aged += w.age(now, self.aging_secs) as u64;
        }
    }

    fn port(&self, id: u16) -> Result<&PortState, RpcError> {
        self.ports.iter().find(|p| p.port.0 == id).ok_or_else(|| {
            RpcError::app(format!(
                "port {id} does not exist (ports: {})",
                self.port_ids()
            ))
        })
    }

    fn port_ids(&self) -> String {
        self.ports
            .iter()
            .map(|p| p.port.0.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn bridge_of(&self, port: u16) -> Result<BridgeId, RpcError> {
        self.port(port)?;
        self.l2
            .get(PortId(port))
            .and_then(|p| p.bridge)
            .ok_or_else(|| RpcError::app(format!("port {port} is in no bridge")))
    }

    fn publish(&mut self) {
        let old = self.l2_pub.swap(Arc::new(self.l2.clone()));
        self.retired.push_back((Instant::now(), old));
    }

    /// Executes one control request. A request that fails changes nothing.
    pub fn handle(&mut self, method: Method) -> Result<Value, RpcError> {
        match method {
            Method::Version => Ok(json!({
                "name": "stitchd",
                "version": env!("CARGO_PKG_VERSION"),
                "dpdk": self.dpdk_version,
            })),
            Method::PortsList => {
                let ports: Vec<Value> = self
                    .ports
                    .iter()
                    .map(|p| {
                        let link = match p.port.link() {
                            Ok(l) => json!({"up": l.up, "speed_mbps": l.speed_mbps, "duplex": if l.full_duplex {"full"} else {"half"}}),
                            Err(e) => json!({"error": e.to_string()}),
                        };
                        json!({
                            "id": p.port.0,
                            "name": p.info.name,
                            "driver": p.info.driver,
                            "devargs": p.devargs,
                            "mac": p.mac.to_string(),
                            "link": link,
                            "rx_queues": p.rx_queues,
                            "tx_queues": p.tx_queues,
                            "bridge": self.l2.get(PortId(p.port.0)).and_then(|l| l.bridge).map(|b| b.0),
                            "allowed_macs": self.l2.get(PortId(p.port.0)).and_then(|l| l.security.allowed()).map(|a| a.iter().map(ToString::to_string).collect::<Vec<_>>()),
                            "learning": self.l2.get(PortId(p.port.0)).is_none_or(|l| l.security.learning()),
                        })
                    })
                    .collect();
                Ok(json!({ "ports": ports }))
            }
            Method::PortsStats(p) => {
                let selected: Vec<&PortState> = match p.port {
                    Some(id) => vec![self.port(id)?],
                    None => self.ports.iter().collect(),
                };
                let mut out = Vec::new();
                for ps in selected {
                    let s = ps
                        .port
                        .stats(ps.rx_queues.max(ps.tx_queues))
                        .map_err(|e| RpcError::app(e.to_string()))?;
                    let queues: Vec<Value> = s
                        .queues
                        .iter()
                        .enumerate()
                        .map(|(q, qs)| json!({"queue": q, "rx_packets": qs.rx_packets, "rx_bytes": qs.rx_bytes, "tx_packets": qs.tx_packets, "tx_bytes": qs.tx_bytes, "errors": qs.errors}))
                        .collect();
                    out.push(json!({
                        "id": ps.port.0,
                        "name": ps.info.name,
                        "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes,
                        "rx_dropped": s.rx_missed, "rx_errors": s.rx_errors, "rx_nombuf": s.rx_nombuf,
                        "tx_packets": s.tx_packets, "tx_bytes": s.tx_bytes, "tx_errors": s.tx_errors,
                        "queues": queues,
                    }));
                }
                Ok(json!({ "ports": out }))
            }
            Method::StatsGet => {
                let workers: Vec<Value> = self.worker_stats.iter().map(|w| w.to_json()).collect();
                let c = self.counters;
                let pending: usize = self.learn_queues.iter().map(|q| q.len()).sum();
                Ok(json!({
                    "workers": workers,
                    "slow_path": {
                        "learned": c.learned, "refreshed": c.refreshed, "moves": c.moves,
                        "move_refused": c.move_refused, "port_limit": c.port_limit,
                        "static_kept": c.static_kept, "table_full": c.table_full,
                        "invalid": c.invalid, "aged": c.aged, "learn_pending": pending,
                    },
                    "stitch": self.stitcher.stats(),
                    "agent": self.agent.as_ref().map(crate::agent::Agent::stats),
                    "state_file": self.stitcher.state.as_ref().map(crate::state::StateFile::stats),
                    "capture": self.capture.status(None, Instant::now())["captures"],
                }))
            }
            Method::MacList(p) => {
                let now = self.now();
                let mut entries = Vec::new();
                let mut capacity = 0;
                for (b, w) in self.writers.iter().enumerate() {
                    let Some(w) = w else { continue };
                    if p.bridge.is_some_and(|x| usize::from(x) != b) {
                        continue;
                    }
                    capacity += w.capacity();
                    let mut es = w.entries();
                    es.sort_by_key(|e| (e.port, e.mac));
                    for e in es {
                        entries.push(json!({
                            "bridge": b, "mac": e.mac.to_string(), "port": e.port.0,
                            "static": e.is_static,
                            "age_secs": if e.is_static { 0 } else { now.saturating_sub(e.last_seen) },
                        }));
                    }
                }
                if let Some(b) = p.bridge {
                    if self.writers.get(usize::from(b)).is_none_or(Option::is_none) {
                        return Err(RpcError::app(format!("bridge {b} does not exist")));
                    }
                }
                Ok(json!({ "entries": entries, "capacity": capacity }))
            }
            Method::MacAdd(p) => {
                let mac = MacAddr(p.mac.0);
                if !mac.is_unicast() || mac.is_zero() {
                    return Err(RpcError::app(format!(
                        "{mac} is not a unicast address; only unicast MACs can be static entries"
                    )));
                }
                let bridge = self.bridge_of(p.port)?;
                let Some(Some(w)) = self.writers.get_mut(usize::from(bridge.0)) else {
                    return Err(RpcError::app(format!(
                        "bridge {} has no MAC table",
                        bridge.0
                    )));
                };
                match w.add_static(mac, PortId(p.port)) {
                    InsertOutcome::Inserted => Ok(
                        json!({"mac": mac.to_string(), "port": p.port, "bridge": bridge.0, "outcome": "inserted"}),
                    ),
                    InsertOutcome::Replaced => Ok(
                        json!({"mac": mac.to_string(), "port": p.port, "bridge": bridge.0, "outcome": "replaced"}),
                    ),
                    InsertOutcome::Invalid => Err(RpcError::app(format!(
                        "{mac} on port {} cannot be stored (unicast MAC and port < 4096 required)",
                        p.port
                    ))),
                    InsertOutcome::Full => Err(RpcError::app(format!(
                        "MAC table of bridge {} is full ({} entries); nothing was changed",
                        bridge.0,
                        w.capacity()
                    ))),
                }
            }
            Method::MacDel(p) => {
                let mac = MacAddr(p.mac.0);
                if let Some(b) = p.bridge {
                    if self.writers.get(usize::from(b)).is_none_or(Option::is_none) {
                        return Err(RpcError::app(format!("bridge {b} does not exist")));
                    }
                }
                let mut removed = 0;
                for (b, w) in self.writers.iter_mut().enumerate() {
                    let Some(w) = w else { continue };
                    if p.bridge.is_some_and(|x| usize::from(x) != b) {
                        continue;
                    }
                    if w.remove(mac) {
                        removed += 1;
                    }
                }
                if removed == 0 {
                    return Err(RpcError::app(format!("{mac} is not in the MAC table")));
                }
                Ok(json!({"mac": mac.to_string(), "removed": removed}))
            }
            Method::PortSecuritySet(p) => {
                self.port(p.port)?;
                let sec = match &p.allowed_macs {
                    None => PortSecurity::open(),
                    Some(list) => {
                        let macs: Vec<MacAddr> = list.iter().map(|m| MacAddr(m.0)).collect();
                        if let Some(bad) = macs.iter().find(|m| !m.is_unicast() || m.is_zero()) {
                            return Err(RpcError::app(format!(
                                "allowed_macs: {bad} is not a unicast address"
                            )));
                        }
                        PortSecurity::restricted(macs)
                            .map_err(|e| RpcError::app(format!("allowed_macs: {e}")))?
                    }
                }
                .with_learning(p.learning);
                let port = PortId(p.port);
                self.l2.set_security(port, sec.clone());
                self.publish();
                // Forget what was learned on the port under the old policy: a MAC the new
                // policy refuses must not keep receiving traffic.
                let mut flushed = 0;
                if let Some(Some(w)) = self
                    .l2
                    .get(port)
                    .and_then(|l| l.bridge)
                    .map(|b| self.writers.get_mut(usize::from(b.0)))
                {
                    if let Some(w) = w.as_mut() {
                        flushed = w.flush_port(port);
                    }
                }
                Ok(json!({
                    "port": p.port,
                    "allowed_macs": sec.allowed().map(|a| a.iter().map(ToString::to_string).collect::<Vec<_>>()),
                    "learning": sec.learning(),
                    "flushed": flushed,
                }))
            }
            Method::ConfigReload => self.reload_config(),
            Method::Shutdown => {
                self.stop.store(true, Ordering::SeqCst);
                Ok(json!({"shutting_down": true}))
            }
            Method::StitchPrepare(p) => self.stitcher.prepare(p),
            Method::StitchFreeze(p) => self.stitcher.freeze(p.id),
            Method::StitchCommit(p) => {
                let mut io = Io {
                    tx: &self.tx,
                    pool: &self.pool,
                };
                self.stitcher.commit(p, &mut io)
            }
            Method::StitchAbort(p) => {
                let mut io = Io {
                    tx: &self.tx,
                    pool: &self.pool,
                };
                self.stitcher.abort(p.id, &mut io)
            }
            Method::StitchDelete(p) => {
                let mut io = Io {
                    tx: &self.tx,
                    pool: &self.pool,
                };
                self.stitcher.delete(p.id, &mut io)
            }
            Method::StitchList => Ok(self.stitcher.list()),
            Method::StitchInstall(p) => {
                for port in [p.ports.c, p.ports.b] {
                    self.port(port)?;
                }
                self.stitcher.install(&p)
            }
            Method::StitchGet(p) => self.stitcher.get(p.id),
            Method::EventsSubscribe => Ok(json!({"subscribed": true})),
            Method::CaptureStart(p) => {
                self.port(p.port)?;
                self.capture.start(&p, Instant::now(), dpdk::tsc())
            }
            Method::CaptureStatus(p) => {
                if let Some(port) = p.port {
                    self.port(port)?;
                }
                Ok(self.capture.status(p.port, Instant::now()))
            }
            Method::LbServiceAdd(p) => self.lb.add(*p),
            Method::LbServiceDel(p) => self.lb.del(&p.name),
            Method::LbServiceList => Ok(serde_json::to_value(self.lb.list()).unwrap_or_default()),
            Method::LbServiceGet(p) => self
                .lb
                .get(&p.name)
                .map(|s| serde_json::to_value(s).unwrap_or_default()),
            Method::LbBackendAdd(p) => self.lb.backend_add(*p),
            Method::LbBackendDel(p) => self.lb.backend_del(p),
            Method::LbBackendSet(p) => self.lb.backend_set(p),
            Method::LbStats(p) => self
                .lb
                .stats(p.service.as_deref())
                .map(|s| serde_json::to_value(s).unwrap_or_default()),
            Method::CaptureStop(p) => {
                self.port(p.port)?;
                self.capture.stop(p.port, Instant::now())
            }
            Method::PortFaultSet(p) => {
                self.port(p.port)?;
                let total =
                    u64::from(p.drop_ppm) + u64::from(p.reorder_ppm) + u64::from(p.duplicate_ppm);
                if total > 1_000_000 {
                    return Err(RpcError::app(format!(
                        "drop_ppm + reorder_ppm + duplicate_ppm = {total}: at most 1000000"
                    )));
                }
                let f = &self.faults[usize::from(p.port)];
                f.drop_ppm.store(p.drop_ppm, Ordering::Relaxed);
                f.reorder_ppm.store(p.reorder_ppm, Ordering::Relaxed);
                f.duplicate_ppm.store(p.duplicate_ppm, Ordering::Relaxed);
                Ok(
                    json!({"port": p.port, "drop_ppm": p.drop_ppm, "reorder_ppm": p.reorder_ppm, "duplicate_ppm": p.duplicate_ppm}),
                )
            }
        }
    }
}

/// The control server's side: hands each request to the slow path and waits.
pub struct ControlBridge {
    pub tx: SyncSender<Request>,
    /// Where event subscribers register (shared with the stitcher).
    pub subscribers: Arc<std::sync::Mutex<Vec<std::sync::mpsc::Sender<Value>>>>,
}

impl Handler for ControlBridge {
    fn call(&self, method: Method) -> Result<Value, RpcError> {
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send((method, reply_tx))
            .map_err(|_| RpcError::app("stitchd is shutting down"))?;
        reply_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| {
                RpcError::app("stitchd did not answer within 10 s (shutting down or overloaded)")
            })?
    }

    fn subscribe(&self) -> Option<std::sync::mpsc::Receiver<Value>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tx);
        Some(rx)
    }
}

/// The sections of the configuration that differ between `a` and `b`, apart from the
/// settings that can change live.
fn fixed_sections_changed(a: &Config, b: &Config) -> Vec<&'static str> {
    let live_blanked = |c: &Config| {
        let mut c = c.clone();
        c.l2.static_macs.clear();
        for p in &mut c.ports {
            p.allowed_macs = None;
            p.learning = true;
        }
        c
    };
    let (a, b) = (live_blanked(a), live_blanked(b));
    let sections = [
        ("eal", a.eal != b.eal),
        (
            "ports (other than allowed_macs and learning)",
            a.ports != b.ports,
        ),
        ("mempool", a.mempool != b.mempool),
        ("control", a.control != b.control),
        ("l2 (other than static_macs)", a.l2 != b.l2),
        ("stitch", a.stitch != b.stitch),
        ("agent", a.agent != b.agent),
        ("metrics", a.metrics != b.metrics),
        ("state", a.state != b.state),
        ("lb (change services with lb.* methods)", a.lb != b.lb),
    ];
    let mut out: Vec<&'static str> = sections
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| *name)
        .collect();
    if out.is_empty() && a != b {
        out.push("other settings");
    }
    out
}
