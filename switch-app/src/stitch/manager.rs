//! The stitch lifecycle, on the slow path: prepare -> freeze -> commit (or abort), then
//! teardown, linger and removal. The slow path is the only writer of the flow table; it
//! publishes rules and waits for the workers where a step needs it (freeze returns only
//! once every worker has finished the poll round it was in, so none still forwards data
//! to the shell under the old rule).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicUsize,
    Ordering::{Relaxed, Release},
};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use dpdk::{Mbuf, Mempool};
use serde_json::{json, Value};
use stitch_control::protocol::{
    Proto, RpcError, StitchCommitParams, StitchInstallParams, StitchPrepareParams, Teardown,
};
use switch_core::flow::key::{parse_flow, FlowKey};
use switch_core::flow::table::{FlowInsert, FlowTableReader, FlowTableWriter, RecordId};
use switch_core::stitch::pair::{
    check_compat, stitch_pair, Endpoint, MssParams, StitchCompat, StitchParams, TsParams,
    WscaleParams,
};
use switch_core::stitch::seq::SeqNumber;
use switch_core::stitch::translate::{translate, Translation};
use switch_core::wire::tcp::{TcpOption, TcpOptionsIter, TcpPacket};
use switch_core::{MacAddr, PortId};

use super::ack::{bare_fin, pure_ack};
use super::fastpath::{copy_fin, FinCopy};
use super::handoff::{HandoffsView, Outcome};
use super::rule::{counter_slot, Action, Dir, DirState, DirStates, FlowRule, StitchRec, COUNTERS};
use crate::agent::AgentNotice;
use crate::state::{SavedStitch, StateFile};
use crate::stats::WorkerStats;
use crate::worker::{Punt, PuntKind};
use agent_proto::{EndKind, Side};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;

/// Most packets a frozen stitch holds; beyond, data is dropped (the sender retransmits).
pub const MAX_HELD: usize = 4096;

/// Where a stitch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Watching both legs.
    Watching,
    /// Data towards the shell held.
    Frozen,
    /// Translating; the shell is out of the path.
    Stitched,
    /// Both FINs seen (or RST): lingering until removal.
    Closing,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Watching => "watching",
            Phase::Frozen => "frozen",
            Phase::Stitched => "stitched",
            Phase::Closing => "closing",
        }
    }
}

struct Stitch {
    id: u32,
    params: StitchPrepareParams,
    /// Watch state (shared with the workers through the record); one shared, never
    /// written set for installed stitches.
    states: Arc<DirStates>,
    /// The record the four entries point at (held by this stitch).
    rec: RecordId,
    phase: Phase,
    held: VecDeque<(Dir, Mbuf)>,
    held_dropped: u64,
    commit_info: Option<Value>,
    fin_from_c: bool,
    fin_from_b: bool,
    closing_since: Option<Instant>,
    /// When it was frozen (for the freeze-time histogram).
    frozen_at: Option<Instant>,
    last_packets: u64,
    last_activity: Instant,
}

impl Stitch {
    /// The four directions' flow keys (C->A1, A1->C, B->A2, A2->B), from the legs.
    fn keys(&self) -> [FlowKey; 4] {
        let (a, b) = (self.params.leg_a, self.params.leg_b);
        let proto = match self.params.proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        };
        [
            key_of(a.client, a.shell, proto),
            key_of(a.shell, a.client, proto),
            key_of(b.core, b.shell, proto),
            key_of(b.shell, b.core, proto),
        ]
    }

    fn state(&self, d: Dir) -> &DirState {
        &self.states[d.index()]
    }

    fn summary(&self) -> Value {
        json!({
            "id": self.id,
            "state": self.phase.name(),
            "proto": match self.params.proto { Proto::Tcp => "tcp", Proto::Udp => "udp" },
            "leg_a": {"client": self.params.leg_a.client.to_string(), "shell": self.params.leg_a.shell.to_string()},
            "leg_b": {"shell": self.params.leg_b.shell.to_string(), "core": self.params.leg_b.core.to_string()},
            "teardown": teardown_name(self.params.teardown),
        })
    }

    fn detail(&self, counts: &[(u64, u64); 4]) -> Value {
        let mut v = self.summary();
        let dirs: serde_json::Map<String, Value> = Dir::ALL
            .iter()
            .map(|d| {
                let mut j = self.state(*d).to_json();
                let (p, b) = counts[d.index()];
                j["packets"] = json!(p);
                j["bytes"] = json!(b);
                (d.name().to_string(), j)
            })
            .collect();
        v["directions"] = Value::Object(dirs);
        v["held"] = json!(self.held.len());
        v["held_dropped"] = json!(self.held_dropped);
        v["commit"] = self.commit_info.clone().unwrap_or(Value::Null);
        v["idle_timeout"] = json!(self.params.idle_timeout.unwrap_or(300));
        v["linger"] = json!(self.params.linger.unwrap_or(2));
        v
    }
}

fn teardown_name(t: Teardown) -> &'static str {
    match t {
        Teardown::B => "4B",
        Teardown::C => "4C",
        Teardown::D => "4D",
        Teardown::E => "4E",
    }
}

/// The slow path's way out: packets it sends (held packets released, pure ACKs) go to a
/// worker over a lock-free ring and leave through that worker's TX queues. Some PMDs
/// (net_tap) need as many TX as RX queues, so the slow path cannot have a queue of its own.
pub struct SlowTx {
    rings: Vec<Arc<ArrayQueue<(PortId, Mbuf)>>>,
    /// Packets dropped because the ring was full.
    pub dropped: std::sync::atomic::AtomicU64,
}

impl SlowTx {
    /// Sends through the workers owning `rings` (the first one).
    pub fn new(rings: Vec<Arc<ArrayQueue<(PortId, Mbuf)>>>) -> SlowTx {
        SlowTx {
            rings,
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Queues `m` for `port`; counted and freed when the ring is full.
    pub fn send(&self, port: PortId, m: Mbuf) {
        let ok = self
            .rings
            .first()
            .is_some_and(|r| r.push((port, m)).is_ok());
        if !ok {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Everything the stitcher needs from the slow path to act on packets.
pub struct Io<'a> {
    /// How the slow path sends: through a worker's TX queues.
    pub tx: &'a SlowTx,
    /// For building pure ACKs.
    pub pool: &'a Mempool,
}

/// The slow path's stitch state and the flow table's writer.
pub struct Stitcher {
    table: FlowTableWriter<FlowRule, StitchRec>,
    /// The workers' counters (per-record arrays of translated traffic).
    workers: Vec<Arc<WorkerStats>>,
    /// The watch state every installed stitch shows (never written: their records
    /// carry none).
    installed_states: Arc<DirStates>,
    count: Arc<AtomicUsize>,
    stitches: BTreeMap<u32, Stitch>,
    next_id: u32,
    /// Event subscribers (control connections that called `events.subscribe`).
    pub subscribers: Arc<Mutex<Vec<Sender<Value>>>>,
    /// Counters for `stats.get`.
    pub table_full: u64,
    pub held_total: u64,
    /// Packets held now over every frozen stitch, and how many may be: one budget for
    /// the whole switch, sized against the mempool, so that a few concurrent freezes
    /// can never take the mbufs every port's RX needs (the senders retransmit what is
    /// refused).
    pub held_now: usize,
    pub hold_budget: usize,
    /// Packets not held because the budget was spent.
    pub hold_refused: u64,
    pub acks_sent: u64,
    /// Whether the agent protocol is configured (teardown 4B and 4D need it).
    pub agents: bool,
    /// Teardown messages the agent endpoint must send (drained by the slow path).
    pub notices: Vec<AgentNotice>,
    /// The state file, when configured: written before a commit or an install is
    /// answered, and after removals at the end of the slow path's round.
    pub state: Option<StateFile>,
    /// A stitch went away since the state file was written.
    state_dirty: bool,
    /// Hand-off outcomes, removals by reason, freeze times.
    pub handoffs: HandoffsView,
}

fn err(msg: impl Into<String>) -> RpcError {
    RpcError::app(msg)
}

/// The rules of a live stitch: C->A1 translated out of B's port, B->A2 out of C's, the
/// shell's own sends dropped; FINs copied to the shell in 4D and 4E.
fn live_actions(b_port: PortId, c_port: PortId, teardown: Teardown) -> impl Fn(Dir) -> Action {
    let fin_to_shell = matches!(teardown, Teardown::D | Teardown::E);
    move |d: Dir| match d {
        Dir::CtoA => Action::Translate {
            out_port: b_port,
            fin_to_shell,
        },
        Dir::BtoA => Action::Translate {
            out_port: c_port,
            fin_to_shell,
        },
        Dir::AtoC | Dir::AtoB => Action::DropShell,
    }
}

fn key_of(from: SocketAddr, to: SocketAddr, proto: u8) -> FlowKey {
    FlowKey::new(from.ip(), from.port(), to.ip(), to.port(), proto)
}

impl Stitcher {
    /// A stitcher owning the flow table's writer; `count` mirrors the number of entries
    /// for the workers (0 lets them skip the lookup).
    pub fn new(table: FlowTableWriter<FlowRule, StitchRec>, count: Arc<AtomicUsize>) -> Stitcher {
        Stitcher {
            table,
            workers: Vec::new(),
            installed_states: Arc::new(Default::default()),
            count,
            stitches: BTreeMap::new(),
            next_id: 1,
            subscribers: Arc::new(Mutex::new(Vec::new())),
            table_full: 0,
            held_total: 0,
            held_now: 0,
            hold_budget: MAX_HELD,
            hold_refused: 0,
            acks_sent: 0,
            agents: false,
            notices: Vec::new(),
            state: None,
            state_dirty: false,
            handoffs: HandoffsView::default(),
        }
    }

    /// The committed stitches, as the state file keeps them.
    pub fn saved_stitches(&self) -> Vec<SavedStitch> {
        self.stitches
            .values()
            .filter(|s| matches!(s.phase, Phase::Stitched | Phase::Closing))
            .filter_map(|s| {
                let rec = self.table.record(s.rec)?;
                Some(SavedStitch {
                    id: s.id,
                    params: s.params.clone(),
                    live: rec.live?,
                    out_ports: [rec.out_ports[0].0, rec.out_ports[1].0],
                    fin_from_c: s.fin_from_c,
                    fin_from_b: s.fin_from_b,
                })
            })
            .collect()
    }

    /// Writes the state file now (when configured). A failed write is counted, reported
    /// as an event, and leaves the previous version in place; the switch goes on.
    pub fn save_state(&mut self) {
        self.state_dirty = false;
        let stitches = match &self.state {
            Some(_) => self.saved_stitches(),
            None => return,
        };
        if let Some(Err(e)) = self.state.as_mut().map(|f| f.write(stitches)) {
            eprintln!("stitchd: state file: {e}");
            self.emit(json!({"event": "state_save_failed", "error": e}));
        }
    }

    /// Writes the state file if a stitch went away since the last write.
    pub fn save_state_if_dirty(&mut self) {
        if self.state_dirty {
            self.save_state();
        }
    }

    /// Puts saved stitches back, live, with their ids (at start, before the workers
    /// run). All or nothing.
    ///
    /// # Errors
    /// A stitch that names a port that does not exist, or that cannot be installed
    /// (table full, overlapping another); nothing is then installed.
    pub fn restore(&mut self, saved: &[SavedStitch], n_ports: usize) -> Result<usize, String> {
        let mut done = Vec::new();
        for s in saved {
            let r = (|| {
                if let Some(p) = s.out_ports.iter().find(|p| usize::from(**p) >= n_ports) {
                    return Err(format!("port {p} does not exist"));
                }
                self.check_variant(s.params.teardown)
                    .map_err(|e| e.message.clone())?;
                if self.stitches.contains_key(&s.id) {
                    return Err("its id is used twice".into());
                }
                let (b_port, c_port) = (PortId(s.out_ports[0]), PortId(s.out_ports[1]));
                let actions = live_actions(b_port, c_port, s.params.teardown);
                let saved_next = self.next_id;
                self.next_id = s.id;
                let r = self.add(
                    s.params.clone(),
                    actions,
                    Phase::Stitched,
                    Some((s.live[0], b_port, s.live[1], c_port)),
                );
                self.next_id = saved_next.max(s.id.wrapping_add(1));
                r.map_err(|e| e.message)
            })();
            match r {
                Ok(id) => {
                    done.push(id);
                    if let Some(st) = self.stitches.get_mut(&id) {
                        st.fin_from_c = s.fin_from_c;
                        st.fin_from_b = s.fin_from_b;
                        if s.fin_from_c && s.fin_from_b {
                            st.phase = Phase::Closing;
                            st.closing_since = Some(Instant::now());
                        }
                    }
                }
                Err(e) => {
                    for id in done {
                        self.remove(id);
                    }
                    return Err(format!("stitch {}: {e}", s.id));
                }
            }
        }
        self.emit(json!({"event": "restored", "stitches": saved.len()}));
        Ok(saved.len())
    }

    fn sync_count(&self) {
        self.count.store(self.table.len(), Relaxed);
    }

    /// A reader of the flow table for a new worker, with the worker's counters (sized
    /// for every record). `None` when the table has no reader slot left.
    pub fn add_worker(
        &mut self,
        stats: Arc<WorkerStats>,
    ) -> Option<FlowTableReader<FlowRule, StitchRec>> {
        let r = self.table.reader()?;
        self.workers.push(stats);
        Some(r)
    }

    /// Words of per-worker counters a worker needs ([`COUNTERS`] per record).
    pub fn counter_words(&self) -> usize {
        self.table.record_capacity() * COUNTERS
    }

    /// Packets and bytes per direction: the watch state plus every worker's counters of
    /// translated traffic for the stitch's record.
    fn counts(&self, s: &Stitch) -> [(u64, u64); 4] {
        std::array::from_fn(|i| {
            let d = Dir::ALL[i];
            let st = s.state(d);
            let (mut p, mut b) = (st.packets.load(Relaxed), st.bytes.load(Relaxed));
            if let Some(slot) = counter_slot(d) {
                let base = s.rec.0 as usize * COUNTERS + slot;
                for w in &self.workers {
                    if let Some(c) = w.stitch.get(base..base + 2) {
                        p += c[0].load(Relaxed);
                        b += c[1].load(Relaxed);
                    }
                }
            }
            (p, b)
        })
    }

    fn packets(&self, s: &Stitch) -> u64 {
        self.counts(s).iter().map(|c| c.0).sum()
    }

    /// Stores a record and zeroes its per-worker counters (a reused index may carry an
    /// old stitch's counts; no worker writes them any more, the table's grace period
    /// has passed).
    fn new_record(&mut self, r: StitchRec) -> Result<RecordId, RpcError> {
        let id = self.table.add_record(r).map_err(|_| {
            self.table_full += 1;
            err(format!(
                "flow table full ({} entries): stitch refused, nothing changed",
                self.table.capacity()
            ))
        })?;
        let base = id.0 as usize * COUNTERS;
        for w in &self.workers {
            if let Some(c) = w.stitch.get(base..base + COUNTERS) {
                for x in c {
                    x.store(0, Relaxed);
                }
            }
        }
        Ok(id)
    }

    /// Sends an event to every subscriber; forgets the ones that went away.
    pub fn emit(&self, event: Value) {
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subs.retain(|s| s.send(event.clone()).is_ok());
    }

    /// Flow table facts for `stats.get`.
    pub fn stats(&self) -> Value {
        json!({
            "stitches": self.stitches.len(),
            "flow_entries": self.table.len(),
            "flow_capacity": self.table.capacity(),
            "flow_table_bytes": self.table.footprint(),
            "flow_buckets": self.table.buckets(),
            "records_live": self.table.records_live(),
            "records_capacity": self.table.record_capacity(),
            "table_full": self.table_full,
            "held_total": self.held_total,
            "held_now": self.held_now,
            "hold_budget": self.hold_budget,
            "hold_refused": self.hold_refused,
            "acks_to_shell": self.acks_sent,
            "handoffs": serde_json::to_value(&self.handoffs).unwrap_or_default(),
        })
    }

    /// `stitch.prepare`
    pub fn prepare(&mut self, p: StitchPrepareParams) -> Result<Value, RpcError> {
        self.check_variant(p.teardown)?;
        let id = self.add(p, |_| Action::Watch, Phase::Watching, None)?;
        self.handoffs.count(Outcome::Prepared);
        self.emit(json!({"event": "prepared", "id": id}));
        Ok(self.stitches[&id].summary())
    }

    /// `stitch.install` (and `[[stitch.install]]` at start): stitched flows from complete
    /// parameters, `count` of them.
    pub fn install(&mut self, p: &StitchInstallParams) -> Result<Value, RpcError> {
        let count = p.count.unwrap_or(1);
        if count == 0 || count > 4_000_000 {
            return Err(err(format!("count = {count}: must be 1-4000000")));
        }
        self.check_variant(p.teardown)?;
        let mac = |m: stitch_control::protocol::Mac| MacAddr(m.0);
        let ep = |mac: MacAddr, a: SocketAddr| Endpoint {
            mac,
            ip: a.ip(),
            port: a.port(),
        };
        let (mut first, mut last) = (None, None);
        for i in 0..count {
            let (client, shell_b) = if count == 1 {
                (p.leg_a.client, p.leg_b.shell)
            } else {
                (nth_addr(p.leg_a.client, i), nth_addr(p.leg_b.shell, i))
            };
            let sp = StitchParams {
                c: ep(mac(p.macs.c), client),
                a1: ep(mac(p.macs.a1), p.leg_a.shell),
                a2: ep(mac(p.macs.a2), shell_b),
                b: ep(mac(p.macs.b), p.leg_b.core),
                s1: SeqNumber(p.s1),
                r1: SeqNumber(p.r1),
                s2: SeqNumber(p.s2),
                r2: SeqNumber(p.r2),
                ts: p.ts.map(|t| TsParams {
                    c_to_b_tsval_delta: t.c_to_b,
                    b_to_c_tsval_delta: t.b_to_c,
                }),
                wscale: p.wscale.map(|w| WscaleParams {
                    c: w.c,
                    a1: w.a1,
                    a2: w.a2,
                    b: w.b,
                }),
                sack_c: p.sack.is_none_or(|s| s.leg_a),
                sack_b: p.sack.is_none_or(|s| s.leg_b),
            };
            let (t_cb, t_bc) = stitch_pair(&sp);
            let (b_port, c_port) = (PortId(p.ports.b), PortId(p.ports.c));
            let prep = StitchPrepareParams {
                leg_a: stitch_control::protocol::LegA {
                    client,
                    shell: p.leg_a.shell,
                },
                leg_b: stitch_control::protocol::LegB {
                    shell: shell_b,
                    core: p.leg_b.core,
                },
                proto: p.proto,
                teardown: p.teardown,
                idle_timeout: p.idle_timeout,
                linger: p.linger,
            };
            let actions = live_actions(b_port, c_port, p.teardown);
            let id = match self.add(
                prep,
                actions,
                Phase::Stitched,
                Some((t_cb, b_port, t_bc, c_port)),
            ) {
                Ok(id) => id,
                Err(e) if first.is_some() => {
                    // All or nothing: what this call installed goes again.
                    let (a, b) = (first.unwrap_or(0), last.unwrap_or(0));
                    for id in a..=b {
                        self.remove(id);
                    }
                    return Err(err(format!(
                        "{} (at stitch {} of {count}); the {} installed by this call were removed: nothing changed",
                        e.message,
                        b - a + 2,
                        b - a + 1
                    )));
                }
                Err(e) => return Err(e),
            };
            first.get_or_insert(id);
            last = Some(id);
        }
        self.emit(json!({"event": "installed", "first": first, "last": last}));
        self.save_state();
        Ok(json!({"installed": count, "first_id": first, "last_id": last}))
    }

    /// 4B and 4D tell the agents by message: refused without the agent protocol.
    fn check_variant(&self, t: Teardown) -> Result<(), RpcError> {
        if matches!(t, Teardown::B | Teardown::D) && !self.agents {
            return Err(err(format!(
                "teardown {} needs the in-band agent protocol ([agent] in the configuration); use 4C or 4E",
                teardown_name(t)
            )));
        }
        Ok(())
    }

    /// Room left, in stitches (four flow entries each).
    pub fn free_stitches(&self) -> u32 {
        (self.table.capacity().saturating_sub(self.table.len()) / 4).min(u32::MAX as usize) as u32
    }

    /// An agent's heartbeat: the stitch is alive. False when there is no such stitch.
    pub fn touch(&mut self, id: u32) -> bool {
        match self.stitches.get_mut(&id) {
            Some(s) => {
                s.last_activity = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Queues a teardown message about `s` for the agents named in `to`.
    fn notice(&mut self, s: &Stitch, from: Side, kind: EndKind, to: &[Side]) {
        if !self.agents {
            return;
        }
        let legs = [
            s.params.leg_a.client,
            s.params.leg_a.shell,
            s.params.leg_b.shell,
            s.params.leg_b.core,
        ];
        let mac = |v: &std::sync::atomic::AtomicU64| MacAddr::from_u64(v.load(Relaxed));
        let live = self
            .table
            .record(s.rec)
            .and_then(|r| Some((r.live.as_ref()?, r.out_ports)));
        let (shell, core) = match live {
            Some(([t_cb, t_bc], [b_port, _])) => (
                (t_bc.eth_src, s.state(Dir::AtoC).port()),
                (t_cb.eth_dst, Some(b_port)),
            ),
            None => (
                (mac(&s.state(Dir::CtoA).dst_mac), s.state(Dir::AtoC).port()),
                (mac(&s.state(Dir::BtoA).src_mac), s.state(Dir::BtoA).port()),
            ),
        };
        self.notices.push(AgentNotice {
            stitch_id: s.id,
            from,
            kind,
            variant: s.params.teardown,
            legs,
            bytes: {
                let c = self.counts(s);
                (c[Dir::CtoA.index()].1, c[Dir::BtoA.index()].1)
            },
            shell,
            core,
            to: to.to_vec(),
        });
    }

    /// Inserts a stitch's four entries (all or none) and records it.
    fn add(
        &mut self,
        p: StitchPrepareParams,
        action: impl Fn(Dir) -> Action,
        phase: Phase,
        live: Option<(Translation, PortId, Translation, PortId)>,
    ) -> Result<u32, RpcError> {
        let (a, b) = (p.leg_a, p.leg_b);
        let fam = |x: &SocketAddr| x.is_ipv6();
        if fam(&a.client) != fam(&a.shell)
            || fam(&b.shell) != fam(&b.core)
            || fam(&a.client) != fam(&b.core)
        {
            return Err(err(
                "all four addresses of a stitch must be of one family (IPv4 or IPv6)",
            ));
        }
        let proto = match p.proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        };
        let keys = [
            key_of(a.client, a.shell, proto),
            key_of(a.shell, a.client, proto),
            key_of(b.core, b.shell, proto),
            key_of(b.shell, b.core, proto),
        ];
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].contains(k) {
                return Err(err(format!(
                    "leg A and leg B must differ: {k} appears twice"
                )));
            }
            if self.table.contains(k) {
                let owner = self.table.get(k).map(|e| e.record.stitch);
                return Err(err(format!(
                    "{k} is already part of stitch {}; delete it first",
                    owner.map_or("?".into(), |o| o.to_string())
                )));
            }
        }
        let id = self.next_id;
        // A stitch that will be watched gets its own watch state; an installed one
        // shares the never-written set (its record carries none).
        let watched = live.is_none();
        let states: Arc<DirStates> = if watched {
            Arc::new(Default::default())
        } else {
            Arc::clone(&self.installed_states)
        };
        let rec = self.new_record(StitchRec {
            stitch: id,
            live: live.map(|(t_cb, _, t_bc, _)| [t_cb, t_bc]),
            out_ports: live.map_or([PortId(0); 2], |(_, b, _, c)| [b, c]),
            states: watched.then(|| Arc::clone(&states)),
        })?;
        let mut inserted = Vec::new();
        for (d, k) in Dir::ALL.iter().zip(keys) {
            let rule = FlowRule {
                dir: *d,
                action: action(*d),
            };
            match self.table.insert(k, rule, rec) {
                FlowInsert::Inserted | FlowInsert::Replaced => inserted.push(k),
                FlowInsert::Full => {
                    for k in &inserted {
                        self.table.remove(k);
                    }
                    self.table.release_record(rec);
                    self.table_full += 1;
                    self.sync_count();
                    return Err(err(format!(
                        "flow table full ({} entries): stitch refused, nothing changed",
                        self.table.capacity()
                    )));
                }
            }
        }
        self.next_id += 1;
        self.sync_count();
        let s = Stitch {
            id,
            params: p,
            states,
            rec,
            phase,
            held: VecDeque::new(),
            held_dropped: 0,
            commit_info: None,
            fin_from_c: false,
            fin_from_b: false,
            closing_since: None,
            frozen_at: None,
            last_packets: 0,
            last_activity: Instant::now(),
        };
        self.stitches.insert(id, s);
        Ok(id)
    }

    fn get_mut(&mut self, id: u32) -> Result<&mut Stitch, RpcError> {
        self.stitches
            .get_mut(&id)
            .ok_or_else(|| err(format!("no stitch {id}")))
    }

    /// `stitch.freeze`: returns once every worker has seen the flag.
    pub fn freeze(&mut self, id: u32) -> Result<Value, RpcError> {
        let s = self.get_mut(id)?;
        match s.phase {
            Phase::Watching => {}
            Phase::Frozen => return Ok(json!({"id": id, "state": "frozen"})),
            other => {
                return Err(err(format!(
                    "stitch {id} is {}; only a watching stitch can be frozen",
                    other.name()
                )))
            }
        }
        s.state(Dir::CtoA).frozen.store(true, Release);
        s.state(Dir::BtoA).frozen.store(true, Release);
        s.phase = Phase::Frozen;
        if let Err(e) = self.wait_readers() {
            // All or nothing: the stitch goes back to watching.
            if let Some(s) = self.stitches.get_mut(&id) {
                s.state(Dir::CtoA).frozen.store(false, Release);
                s.state(Dir::BtoA).frozen.store(false, Release);
                s.phase = Phase::Watching;
            }
            return Err(e);
        }
        if let Some(s) = self.stitches.get_mut(&id) {
            s.frozen_at = Some(Instant::now());
        }
        self.handoffs.count(Outcome::Frozen);
        self.emit(json!({"event": "frozen", "id": id}));
        Ok(json!({"id": id, "state": "frozen"}))
    }

    /// `stitch.commit`: checks the shell's state against what the switch saw, then goes
    /// live in both directions and releases what was held, translated.
    pub fn commit(&mut self, c: StitchCommitParams, io: &mut Io<'_>) -> Result<Value, RpcError> {
        let id = c.id;
        let frozen_at = self.stitches.get(&id).map(|s| s.frozen_at);
        let r = self.commit_checked(c, io);
        match (&r, frozen_at) {
            (Ok(v), Some(at)) if v.get("already_committed").is_none() => {
                self.handoffs.count(Outcome::Committed);
                if let Some(at) = at {
                    self.handoffs.frozen_for(at.elapsed());
                }
            }
            (Err(_), Some(_)) => self.handoffs.count(Outcome::CommitRefused),
            _ => {}
        }
        r
    }

    fn commit_checked(
        &mut self,
        c: StitchCommitParams,
        io: &mut Io<'_>,
    ) -> Result<Value, RpcError> {
        let id = c.id;
        let s = self
            .stitches
            .get(&id)
            .ok_or_else(|| err(format!("no stitch {id}")))?;
        let tcp = s.params.proto == Proto::Tcp;
        match s.phase {
            Phase::Frozen => {}
            Phase::Watching if !tcp => {}
            // A commit that is already live answers as it did: its answer may have been
            // lost with a stitchd that restarted from the state file (the agent's reply
            // cache went with it), and the shell retransmits the request. Refusing it
            // would make the shell take back a connection the switch carries.
            Phase::Stitched | Phase::Closing => {
                return Ok(json!({"id": id, "state": s.phase.name(), "already_committed": true}));
            }
            other => {
                return Err(err(format!(
                    "stitch {id} is {}; freeze it before commit",
                    other.name()
                )))
            }
        }
        let (ca, ac, ba, ab) = (
            s.state(Dir::CtoA),
            s.state(Dir::AtoC),
            s.state(Dir::BtoA),
            s.state(Dir::AtoB),
        );
        let (Some(c_port), Some(b_port)) = (ca.port(), ba.port()) else {
            // Say which end: the shell waits for that one (or provokes it) before it
            // freezes again.
            let (c, b) = (s.params.leg_a.client, s.params.leg_b.core);
            let missing = match (ca.port(), ba.port()) {
                (None, None) => format!("C ({c}) nor from B ({b})"),
                (None, Some(_)) => format!("C ({c}); B was seen"),
                _ => format!("B ({b}); C was seen"),
            };
            return Err(err(format!(
                "stitch {id}: no packet seen yet since prepare from {missing}; cannot learn where it is, retry once it has sent"
            )));
        };
        let mac = |v: &std::sync::atomic::AtomicU64| MacAddr::from_u64(v.load(Relaxed));
        let ep = |mac: MacAddr, a: SocketAddr| Endpoint {
            mac,
            ip: a.ip(),
            port: a.port(),
        };
        let (pa, pb) = (s.params.leg_a, s.params.leg_b);
        let mut sp = StitchParams {
            c: ep(mac(&ca.src_mac), pa.client),
            a1: ep(mac(&ca.dst_mac), pa.shell),
            a2: ep(mac(&ba.dst_mac), pb.shell),
            b: ep(mac(&ba.src_mac), pb.core),
            s1: SeqNumber(0),
            r1: SeqNumber(0),
            s2: SeqNumber(0),
            r2: SeqNumber(0),
            ts: None,
            wscale: None,
            sack_c: true,
            sack_b: true,
        };
        let mut info = json!({"c_port": c_port.0, "b_port": b_port.0});
        if tcp {
            let (Some(s1), Some(r1), Some(s2), Some(r2)) = (c.s1, c.r1, c.s2, c.r2) else {
                return Err(err(
                    "a TCP stitch needs s1, r1, s2 and r2 (the shell's sequence state)",
                ));
            };
            let verified_a = check_leg(ca, "C", "A", "leg A", s1, r1)?;
            let verified_b = check_leg(ba, "B", "A", "leg B", s2, r2)?;
            info["verified"] = json!({"leg_a": verified_a, "leg_b": verified_b});
            let ts_a = c
                .timestamps
                .map_or(ca.ts_seen.load(Relaxed) || ac.ts_seen.load(Relaxed), |t| {
                    t.leg_a
                });
            let ts_b = c
                .timestamps
                .map_or(ba.ts_seen.load(Relaxed) || ab.ts_seen.load(Relaxed), |t| {
                    t.leg_b
                });
            let wscale = c
                .wscale
                .map(|w| WscaleParams {
                    c: w.c,
                    a1: w.a1,
                    a2: w.a2,
                    b: w.b,
                })
                .or_else(|| {
                    Some(WscaleParams {
                        c: ca.wscale()?,
                        a1: ac.wscale()?,
                        a2: ab.wscale()?,
                        b: ba.wscale()?,
                    })
                });
            let mss = c.mss.map(|m| MssParams {
                c: m.c,
                a1: m.a1,
                a2: m.a2,
                b: m.b,
            });
            check_compat(&StitchCompat {
                ts_c: ts_a,
                ts_b,
                mss,
                wscale,
            })
            .map_err(|e| err(format!("stitch {id} refused: {e}")))?;
            if ts_a {
                // The deltas need the last TSval of each of the four senders since
                // prepare, seen in its packets or echoed by its peer: refuse, with the
                // reason, rather than guess (a wrong guess makes the receiver's PAWS
                // check drop everything).
                let mut last = [0u32; 4];
                for (i, (st, echo, who)) in [
                    (ca, ac, "C"),
                    (ac, ca, "the shell on leg A"),
                    (ba, ab, "B"),
                    (ab, ba, "the shell on leg B"),
                ]
                .into_iter()
                .enumerate()
                {
                    last[i] = st.last_tsval(echo).ok_or_else(|| {
                        err(format!(
                            "stitch {id}: no timestamp seen from {who} since prepare; retry once traffic has flowed both ways on both legs"
                        ))
                    })?;
                }
                let [ts_c, ts_a1, ts_b, ts_a2] = last;
                // TSval never goes backwards for the receiver: B last saw the shell's clock
                // (A->B). The shift maps the OLDEST TSval C may still send through the
                // switch onto it: the first packet held during the freeze (released at
                // commit), or else C's latest. Every released and later packet then
                // arrives at or after what B saw (PAWS keeps them all). Likewise for C.
                let ts_c = oldest_held_tsval(&s.held, Dir::CtoA).map_or(ts_c, |h| older(h, ts_c));
                let ts_b = oldest_held_tsval(&s.held, Dir::BtoA).map_or(ts_b, |h| older(h, ts_b));
                let d_cb = ts_a2.wrapping_sub(ts_c);
                let d_bc = ts_a1.wrapping_sub(ts_b);
                sp.ts = Some(TsParams {
                    c_to_b_tsval_delta: d_cb,
                    b_to_c_tsval_delta: d_bc,
                });
            }
            if let Some(sack) = c.sack {
                sp.sack_c = sack.leg_a;
                sp.sack_b = sack.leg_b;
            }
            sp.wscale = wscale;
            sp.s1 = SeqNumber(s1);
            sp.r1 = SeqNumber(r1);
            sp.s2 = SeqNumber(s2);
            sp.r2 = SeqNumber(r2);
            info["d_cb"] = json!(s2.wrapping_sub(r1));
            info["d_bc"] = json!(s1.wrapping_sub(r2));
            info["timestamps"] = json!(ts_a);
            info["ts"] = json!(sp
                .ts
                .map(|t| json!({"c_to_b": t.c_to_b_tsval_delta, "b_to_c": t.b_to_c_tsval_delta})));
            info["wscale"] = json!(wscale.map(|w| [w.c, w.a1, w.a2, w.b]));
        }
        let (t_cb, t_bc) = stitch_pair(&sp);
        let fin_to_shell = matches!(s.params.teardown, Teardown::D | Teardown::E);
        let states = s.states.clone();
        let keys = s.keys();
        // Both directions live, then the shell's own sends are dropped.
        let live = [
            (
                Dir::CtoA,
                Action::Translate {
                    out_port: b_port,
                    fin_to_shell,
                },
            ),
            (
                Dir::BtoA,
                Action::Translate {
                    out_port: c_port,
                    fin_to_shell,
                },
            ),
            (Dir::AtoC, Action::DropShell),
            (Dir::AtoB, Action::DropShell),
        ];
        // One new record with the translations and the same watch state; the four
        // entries are replaced to point at it, then the old record is released.
        let rec = self.new_record(StitchRec {
            stitch: id,
            live: Some([t_cb, t_bc]),
            out_ports: [b_port, c_port],
            states: Some(Arc::clone(&states)),
        })?;
        for (d, action) in live {
            self.table
                .insert(keys[d.index()], FlowRule { dir: d, action }, rec);
        }
        // Atomic for the traffic: until every worker has moved past the old watching
        // rules, a packet that still meets one is held (the freeze flag stays set), so
        // none reaches the silenced shell; what was held goes out translated below.
        let _ = self.wait_readers();
        for st in states.iter() {
            st.frozen.store(false, Release);
        }
        let s = self.get_mut(id)?;
        let old = std::mem::replace(&mut s.rec, rec);
        s.phase = Phase::Stitched;
        s.commit_info = Some(info.clone());
        let held: Vec<(Dir, Mbuf)> = s.held.drain(..).collect();
        let released = held.len();
        let fin_to_shell = matches!(s.params.teardown, Teardown::D | Teardown::E);
        self.held_now = self.held_now.saturating_sub(released);
        // A FIN or RST held during the freeze ends the stitch like one that arrives
        // later: the same notice goes through the teardown logic once it is sent on.
        let mut ends = Vec::new();
        for (d, m) in held {
            if let Some(l4) = parse_flow(m.data()).filter(|l| l.key.proto == 6) {
                if l4.tcp_flags & (FIN | RST) != 0 {
                    let mut fin = FinCopy::default();
                    if fin_to_shell && l4.tcp_flags & FIN != 0 {
                        copy_fin(m.data(), &l4, &mut fin);
                    }
                    ends.push(Punt {
                        stitch: id,
                        dir: d,
                        kind: PuntKind::Notice,
                        tcp_flags: l4.tcp_flags,
                        mbuf: None,
                        fin,
                    });
                }
            }
            self.send_live(id, d, m, io);
        }
        self.table.release_record(old);
        for p in ends {
            self.on_punt(p, io);
        }
        info["released"] = json!(released);
        info["id"] = json!(id);
        info["state"] = json!("stitched");
        self.emit(json!({"event": "committed", "id": id}));
        // Before the answer: a shell silences its sockets once it has it.
        self.save_state();
        Ok(info)
    }

    /// Translates a packet with the live rule of its direction and sends it.
    fn send_live(&mut self, id: u32, d: Dir, mut m: Mbuf, io: &mut Io<'_>) {
        let Some(s) = self.stitches.get(&id) else {
            return;
        };
        let Some(rec) = self.table.record(s.rec) else {
            return;
        };
        let (Some(t), Some(port)) = (rec.translation(d), rec.out_port(d)) else {
            return;
        };
        let Some(frame) = m.data_mut() else { return };
        if translate(frame, t).is_ok() {
            io.tx.send(port, m);
        }
    }

    /// Sends a packet to the shell as it was.
    fn send_to_shell(s: &Stitch, d: Dir, m: Mbuf, io: &mut Io<'_>) {
        // The shell lives where its own packets of the reverse direction came from.
        let shell_dir = if d == Dir::CtoA { Dir::AtoC } else { Dir::AtoB };
        if let Some(p) = s.state(shell_dir).port() {
            io.tx.send(p, m);
        }
    }

    /// `stitch.abort`: watching stops, held packets go to the shell unmodified.
    pub fn abort(&mut self, id: u32, io: &mut Io<'_>) -> Result<Value, RpcError> {
        let s = self
            .stitches
            .get(&id)
            .ok_or_else(|| err(format!("no stitch {id}")))?;
        if matches!(s.phase, Phase::Stitched | Phase::Closing) {
            return Err(err(format!(
                "stitch {id} is {}: too late to abort (use stitch.delete)",
                s.phase.name()
            )));
        }
        let s = self
            .remove(id)
            .ok_or_else(|| err(format!("no stitch {id}")))?;
        // No worker holds under the old rule any more before the held packets go back.
        let _ = self.wait_readers();
        let released = s.held.len();
        let mut s = s;
        for (d, m) in std::mem::take(&mut s.held) {
            Self::send_to_shell(&s, d, m, io);
        }
        self.handoffs.count(Outcome::Aborted);
        self.emit(json!({"event": "aborted", "id": id}));
        Ok(json!({"id": id, "state": "aborted", "released": released}))
    }

    /// Removes a stitch's entries and returns it.
    ///
    /// Memory needs no wait (the table reuses nothing before the workers have moved
    /// on); callers that hand held packets back wait first ([`Stitcher::wait_readers`]) so
    /// that no worker is still holding under the old rule. Bulk expiry does not wait at
    /// all: a stitched or closing stitch holds nothing.
    fn remove(&mut self, id: u32) -> Option<Stitch> {
        let s = self.stitches.remove(&id)?;
        // What it holds leaves the budget (the caller sends it on or drops it).
        self.held_now = self.held_now.saturating_sub(s.held.len());
        self.state_dirty |= matches!(s.phase, Phase::Stitched | Phase::Closing);
        for st in s.states.iter() {
            st.frozen.store(false, Release);
        }
        for k in &s.keys() {
            self.table.remove(k);
        }
        self.table.release_record(s.rec);
        self.sync_count();
        Some(s)
    }

    /// Waits until every worker has passed a quiescent state: every rule change and
    /// flag published before is seen by all of them, and none still uses an old rule.
    fn wait_readers(&self) -> Result<(), RpcError> {
        if self.table.wait_readers(Duration::from_secs(2)) {
            Ok(())
        } else {
            Err(err("workers did not pass a quiescent state within 2 s"))
        }
    }

    /// `stitch.delete`
    pub fn delete(&mut self, id: u32, io: &mut Io<'_>) -> Result<Value, RpcError> {
        let mut s = self
            .remove(id)
            .ok_or_else(|| err(format!("no stitch {id}")))?;
        let _ = self.wait_readers();
        let n = s.held.len();
        for (d, m) in std::mem::take(&mut s.held) {
            Self::send_to_shell(&s, d, m, io);
        }
        self.notice(
            &s,
            Side::Unknown(0),
            EndKind::Deleted,
            &[Side::Shell, Side::Core],
        );
        self.handoffs.removed("deleted");
        self.emit(json!({"event": "removed", "id": id, "reason": "deleted"}));
        Ok(json!({"id": id, "deleted": true, "released_to_shell": n}))
    }

    /// `stitch.list`
    pub fn list(&self) -> Value {
        json!({"stitches": self.stitches.values().map(Stitch::summary).collect::<Vec<_>>()})
    }

    /// `stitch.get`
    pub fn get(&self, id: u32) -> Result<Value, RpcError> {
        self.stitches
            .get(&id)
            .map(|s| s.detail(&self.counts(s)))
            .ok_or_else(|| err(format!("no stitch {id}")))
    }

    /// Handles what the workers punted.
    pub fn on_punt(&mut self, p: Punt, io: &mut Io<'_>) {
        let Some(s) = self.stitches.get_mut(&p.stitch) else {
            return; // stitch gone: a held packet is dropped; its sender retransmits
        };
        match p.kind {
            // Routed to the agent endpoint by drain_punts, never here.
            PuntKind::Agent | PuntKind::Neighbor | PuntKind::Health => {}
            PuntKind::Hold => {
                let Some(m) = p.mbuf else { return };
                match s.phase {
                    Phase::Frozen => {
                        if let Some(ack) = pure_ack(m.data()) {
                            if let Ok(a) = Mbuf::from_slice(io.pool, &ack) {
                                Self::send_to_shell(s, p.dir, a, io);
                                self.acks_sent += 1;
                            }
                        }
                        if s.held.len() < MAX_HELD && self.held_now < self.hold_budget {
                            s.held.push_back((p.dir, m));
                            self.held_now += 1;
                            self.held_total += 1;
                        } else {
                            s.held_dropped += 1;
                            if self.held_now >= self.hold_budget {
                                self.hold_refused += 1;
                            }
                        }
                    }
                    Phase::Stitched | Phase::Closing => self.send_live(p.stitch, p.dir, m, io),
                    Phase::Watching => Self::send_to_shell(s, p.dir, m, io),
                }
            }
            PuntKind::Notice => {
                let id = s.id;
                if p.tcp_flags & SYN != 0 {
                    // A new connection on a stitched 4-tuple: the old one is over.
                    let from = if p.dir == Dir::CtoA { "client" } else { "core" };
                    if let Some(s) = self.remove(id) {
                        self.notice(
                            &s,
                            Side::Unknown(0),
                            EndKind::Deleted,
                            &[Side::Shell, Side::Core],
                        );
                    }
                    self.emit(json!({"event": "syn", "id": id, "from": from}));
                    self.handoffs.removed("new_connection");
                    self.emit(json!({"event": "removed", "id": id, "reason": "new_connection"}));
                    return;
                }
                if p.tcp_flags & RST != 0 {
                    let from = if p.dir == Dir::CtoA { "client" } else { "core" };
                    if let Some(s) = self.remove(id) {
                        let side = if p.dir == Dir::CtoA {
                            Side::Client
                        } else {
                            Side::Core
                        };
                        self.notice(&s, side, EndKind::Rst, &[Side::Shell, Side::Core]);
                    }
                    self.emit(json!({"event": "rst", "id": id, "from": from}));
                    self.handoffs.removed("rst");
                    self.emit(json!({"event": "removed", "id": id, "reason": "rst"}));
                    return;
                }
                let variant = s.params.teardown;
                let (from, to) = match p.dir {
                    Dir::CtoA => {
                        s.fin_from_c = true;
                        ("client", "core")
                    }
                    _ => {
                        s.fin_from_b = true;
                        ("core", "client")
                    }
                };
                let both = s.fin_from_c && s.fin_from_b;
                if both && s.phase != Phase::Closing {
                    s.phase = Phase::Closing;
                    s.closing_since = Some(Instant::now());
                }
                // The FIN itself always went on, translated, to the other end: a real TCP
                // endpoint can be closed cleanly no other way. The variants differ in who
                // is told, and how (seed 001, figures 4B-4E):
                // 4B: the switch sends both agents a teardown message.
                // 4C: nothing more here; the core's agent tells the shell.
                // 4D: the shell gets the FIN as it arrived (untranslated) and tells the core.
                // 4E: the shell gets the untranslated FIN; the core has the translated one.
                let mut ev = json!({"event": "fin", "id": id, "from": from, "forwarded_to": to, "teardown": teardown_name(variant)});
                if variant == Teardown::B {
                    let side = if p.dir == Dir::CtoA {
                        Side::Client
                    } else {
                        Side::Core
                    };
                    let s = self.stitches.remove(&id);
                    if let Some(s) = s {
                        self.notice(&s, side, EndKind::Fin, &[Side::Shell, Side::Core]);
                        self.stitches.insert(id, s);
                    }
                    ev["notify"] = json!(["shell", "core"]);
                    self.emit(ev);
                    return;
                }
                let Some(s) = self.stitches.get(&id) else {
                    return;
                };
                if matches!(variant, Teardown::D | Teardown::E) && p.fin.len > 0 {
                    if let Some(f) = bare_fin(&p.fin.buf[..p.fin.len]) {
                        if let Ok(m) = Mbuf::from_slice(io.pool, &f) {
                            Self::send_to_shell(s, p.dir, m, io);
                            ev["untranslated_fin_to_shell"] = json!(true);
                        }
                    }
                }
                self.emit(ev);
            }
        }
    }

    /// Periodic work: expire lingering and idle stitches, reclaim retired rules.
    pub fn tick(&mut self, io: &mut Io<'_>) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let packets: Vec<u64> = self.stitches.values().map(|s| self.packets(s)).collect();
        for (s, pk) in self.stitches.values_mut().zip(packets) {
            if pk != s.last_packets {
                s.last_packets = pk;
                s.last_activity = now;
            }
            if let Some(since) = s.closing_since {
                if now.duration_since(since)
                    >= Duration::from_secs(u64::from(s.params.linger.unwrap_or(2)))
                {
                    expired.push((s.id, "closed"));
                    continue;
                }
            }
            if now.duration_since(s.last_activity)
                >= Duration::from_secs(u64::from(s.params.idle_timeout.unwrap_or(300)))
            {
                expired.push((s.id, "idle"));
            }
        }
        for (id, reason) in expired {
            if let Some(mut s) = self.remove(id) {
                for (d, m) in std::mem::take(&mut s.held) {
                    Self::send_to_shell(&s, d, m, io);
                }
                if reason == "idle" {
                    self.notice(
                        &s,
                        Side::Unknown(0),
                        EndKind::Idle,
                        &[Side::Shell, Side::Core],
                    );
                }
            }
            self.handoffs.removed(reason);
            self.emit(json!({"event": "removed", "id": id, "reason": reason}));
        }
        self.table.reclaim();
    }
}

/// The older of two TSvals (modular, as RFC 7323 compares them).
fn older(a: u32, b: u32) -> u32 {
    if SeqNumber(a).before(SeqNumber(b)) {
        a
    } else {
        b
    }
}

/// The oldest TSval among the packets held for direction `d` (they keep their arrival
/// order, but a retransmission may carry an older clock than what follows it).
fn oldest_held_tsval(held: &VecDeque<(Dir, Mbuf)>, d: Dir) -> Option<u32> {
    held.iter()
        .filter(|(hd, _)| *hd == d)
        .filter_map(|(_, m)| tsval_of(m.data()))
        .reduce(older)
}

/// The TSval of a TCP segment's timestamp option, if it has one.
fn tsval_of(frame: &[u8]) -> Option<u32> {
    let l4 = parse_flow(frame)?;
    if l4.key.proto != 6 {
        return None;
    }
    let tcp = TcpPacket::new_checked(frame.get(l4.l4_offset..)?).ok()?;
    TcpOptionsIter::new(tcp.options()).find_map(|o| match o {
        Ok(TcpOption::Timestamp { tsval, .. }) => Some(tsval),
        _ => None,
    })
}

/// The `i`th address counting from `a`: port + i % 50000, address + i / 50000.
fn nth_addr(a: SocketAddr, i: u32) -> SocketAddr {
    // Wraps past 65535 (skipping 0): the base port should be at most 15535.
    let port = ((u32::from(a.port()) + i % 50_000 - 1) % 65_535 + 1) as u16;
    let step = i / 50_000;
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V4((u32::from(v4).wrapping_add(step)).into()),
        std::net::IpAddr::V6(v6) => {
            std::net::IpAddr::V6((u128::from(v6).wrapping_add(u128::from(step))).into())
        }
    };
    SocketAddr::new(ip, port)
}

/// The commit checks for one leg (DESIGN.md, hand-off step 4): the peer acknowledged all
/// the shell sent (`s`), and the shell did not get beyond what the peer sent through the
/// switch (`r`). Bytes the switch forwarded but the shell never received are not lost: the
/// peer still has them and retransmits them, now translated.
fn check_leg(
    peer: &DirState,
    who: &str,
    shell: &str,
    leg: &str,
    s: u32,
    r: u32,
) -> Result<bool, RpcError> {
    // What the switch did not see, it cannot check: a peer that sent nothing through the
    // switch since prepare (a hand-off right after set-up) is taken at the shell's word,
    // which comes from the kernel (TCP_REPAIR) after the shell drained. Returns whether
    // both checks could be made.
    let (has_ack, has_seq) = (peer.has_ack.load(Relaxed), peer.has_seq.load(Relaxed));
    if has_ack {
        let acked = peer.ack.load(Relaxed);
        if acked != s {
            return Err(err(format!(
                "{leg}: {who} has acknowledged up to {acked} but the shell sent up to {s} ({} bytes unacknowledged); drain and retry",
                s.wrapping_sub(acked) as i32
            )));
        }
    }
    if has_seq {
        let sent = peer.seq_end.load(Relaxed);
        if SeqNumber(r).after(SeqNumber(sent)) {
            return Err(err(format!(
                "{leg}: {shell} expects {who}'s byte {r} but {who} has sent only up to {sent} through the switch; wrong sequence state"
            )));
        }
    }
    Ok(has_ack && has_seq)
}

/// Pops everything the workers punted.
pub fn drain_punts(
    queues: &[Arc<ArrayQueue<Punt>>],
    stitcher: &mut Stitcher,
    agent: &mut Option<crate::agent::Agent>,
    lb: &mut crate::lb::LbManager,
    io: &mut Io<'_>,
) -> usize {
    let mut n = 0;
    for q in queues {
        while let Some(p) = q.pop() {
            n += 1;
            match p.kind {
                PuntKind::Agent => {
                    if let (Some(a), Some(m)) = (agent.as_mut(), p.mbuf) {
                        a.on_frame(m, stitcher, io);
                    }
                }
                PuntKind::Neighbor => {
                    let Some(m) = p.mbuf else { continue };
                    if let Some(r) = lb.neighbor_reply(m.data()) {
                        if let Ok(reply) = Mbuf::from_slice(io.pool, &r) {
                            io.tx.send(PortId(m.port()), reply);
                        }
                    }
                }
                PuntKind::Health => {
                    let Some(m) = p.mbuf else { continue };
                    if let Some(o) = lb.on_health_frame(m.data()) {
                        if let Ok(out) = Mbuf::from_slice(io.pool, &o.frame) {
                            io.tx.send(o.port, out);
                        }
                    }
                }
                PuntKind::Hold | PuntKind::Notice => stitcher.on_punt(p, io),
            }
        }
    }
    if let Some(a) = agent.as_mut() {
        for notice in std::mem::take(&mut stitcher.notices) {
            a.notify(&notice, io);
        }
    }
    n
}
