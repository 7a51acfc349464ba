//! The poll-mode worker: one per set of (port, rx queue), pinned to its lcore.
//!
//! rx_burst -> (stitch rule? translate / hold / drop) -> else L2 decision (switch-core)
//! -> per-output-port TX buffer; buffers go out when full, at the end of a round in which
//! no queue returned a full burst (the input keeps up: send now), or when ~100 us passed
//! since the last drain. Learning requests, held packets and teardown notices go to the slow
//! path over lock-free queues. No allocation, no lock, no syscall, no log in the loop: the
//! published port settings are read through `arc_swap` once per poll round, and the flow
//! table is looked up only while at least one stitch exists.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use dpdk::{Mbuf, Port, RxBurst, TxBuffer, TxResult, MAX_BURST};
use switch_core::flow::key::{parse_flow, FlowKey, L4Info};
use switch_core::flow::table::FlowTableReader;
use switch_core::l2::pipeline::{classify, L2Outcome, L2Ports, LearnCache, LearnRequest};
use switch_core::l2::table::MacTableReader;
use switch_core::lb::balancer::{Balancer, LbCounters, LbVerdict};
use switch_core::lb::table::LbTable;
use switch_core::verdict::DropReason;
use switch_core::{MacAddr, PortId};

use crate::agent::{for_agent, AgentAddrs};
use crate::capture::CaptureTap;
use crate::fault::{draw, Fault, PortFault, Rng};
use crate::lb::hold::{Held, HoldQueue, Pushed};
use crate::stats::{bump, WorkerStats};
use crate::stitch::fastpath::{process, FinCopy, StitchVerdict};
use crate::stitch::rule::{Dir, FlowRule, StitchRec, COUNTERS};
use switch_core::lb::balancer::{SVC_HELD, SVC_HELD_DROPPED, SVC_HELD_NOW, SVC_RELEASED};

/// Why a packet went to the slow path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PuntKind {
    /// Held: data towards the shell of a frozen stitch.
    Hold,
    /// A FIN or RST on a stitched flow (the packet itself was sent on; `mbuf` is None).
    Notice,
    /// For the switch's own service address (ARP, ND, agent protocol).
    Agent,
    /// An ARP request or neighbour solicitation for a balanced service's address.
    Neighbor,
    /// For one of the balancer's own addresses (a health check's answer).
    Health,
}

/// One item on a worker's queue to the slow path.
#[derive(Debug)]
pub struct Punt {
    pub stitch: u32,
    pub dir: Dir,
    pub kind: PuntKind,
    pub tcp_flags: u8,
    pub mbuf: Option<Mbuf>,
    /// For a FIN under teardown 4E: its headers before translation (`len` 0: none).
    /// Inline, so punting never allocates.
    pub fin: FinCopy,
}

/// Everything a worker owns or reads.
pub struct Worker {
    /// Queues this worker polls.
    pub rx: Vec<(Port, u16)>,
    /// One TX buffer per port id (this worker's own TX queue on each port).
    pub tx: Vec<TxBuffer>,
    /// Port settings, published by the slow path.
    pub l2: Arc<ArcSwap<L2Ports>>,
    /// MAC table readers, by bridge id.
    pub tables: Vec<Option<MacTableReader>>,
    /// Learning requests to the slow path.
    pub learn: Arc<ArrayQueue<LearnRequest>>,
    /// Packets the slow path asks this worker to send.
    pub inject: Arc<ArrayQueue<(PortId, Mbuf)>>,
    /// The stitch flow table (this worker's registered reader), and how many entries it
    /// has (0: skip the lookup).
    pub flows: FlowTableReader<FlowRule, StitchRec>,
    pub flow_count: Arc<AtomicUsize>,
    /// Held packets and notices to the slow path.
    pub punt: Arc<ArrayQueue<Punt>>,
    /// Fault injection per port id.
    pub faults: Arc<Vec<PortFault>>,
    /// The agent service address, when configured.
    pub agent: Option<AgentAddrs>,
    /// Counters.
    pub stats: Arc<WorkerStats>,
    /// Set by the main lcore to stop.
    pub stop: Arc<AtomicBool>,
    /// TSC at start and TSC rate, for the coarse clock the L2 table ages by.
    pub tsc_start: u64,
    pub tsc_hz: u64,
    /// Packet capture: one load per poll round while none is armed.
    pub capture: CaptureTap,
    /// The balanced services (published by the slow path), this worker's balancer and
    /// its counters.
    pub lb: Arc<ArcSwap<LbTable>>,
    pub balancer: Balancer,
    pub lb_counters: Arc<LbCounters>,
}

/// Drain interval: the longest a packet waits in a TX buffer.
const DRAIN_US: u64 = 100;

/// Per-round counters, added to the shared ones once per round.
#[derive(Default)]
struct Round {
    rx_pkts: u64,
    busy_cycles: u64,
    rx_bytes: u64,
    tx_pkts: u64,
    flooded: u64,
    learn_req: u64,
    learn_drop: u64,
    stitched: u64,
    balanced: u64,
    ignored_ends: u64,
    punted: u64,
    fault_reordered: u64,
    fault_duplicated: u64,
    drops: [u64; DropReason::COUNT],
}

impl Round {
    /// Counts what a TX push or flush did: sent, or refused by a full queue (freed).
    #[inline]
    fn sent(&mut self, res: TxResult) {
        self.tx_pkts += u64::from(res.sent);
        self.drops[DropReason::TxFull.index()] += u64::from(res.dropped);
    }
}

/// TX side of a worker: buffers, the packets the fault injector delays, its generator.
struct Output {
    tx: Vec<TxBuffer>,
    delayed: Vec<Option<Mbuf>>,
    faults: Arc<Vec<PortFault>>,
    /// Any port's fault injection on: read once per poll round, so the production path
    /// (no faults) pays one predictable branch per packet, never an atomic load.
    faulty: bool,
    rng: Rng,
    /// Captures frames as they are handed to a port (tx), and bursts as received (rx).
    tap: CaptureTap,
}

impl Output {
    /// Reads the fault settings (once per poll round).
    fn refresh_faults(&mut self) {
        self.faulty = self.faults.iter().any(PortFault::active);
    }

    #[inline]
    fn push(&mut self, port: usize, m: Mbuf, r: &mut Round) {
        self.tap.tx(port, &m);
        let Some(tx) = self.tx.get_mut(port) else {
            r.drops[DropReason::NoBridge.index()] += 1;
            return;
        };
        if !self.faulty {
            r.sent(tx.push(m));
            return;
        }
        if let Some(f) = self.faults.get(port).filter(|f| f.active()) {
            match draw(f, &mut self.rng) {
                Fault::Drop => {
                    r.drops[DropReason::FaultInjected.index()] += 1;
                    return;
                }
                Fault::Reorder if self.delayed[port].is_none() => {
                    // Sent after the next packet for this port (or at the next drain).
                    self.delayed[port] = Some(m);
                    r.fault_reordered += 1;
                    return;
                }
                Fault::Duplicate => {
                    r.sent(tx.push(m.share()));
                    r.fault_duplicated += 1;
                }
                _ => {}
            }
        }
        r.sent(tx.push(m));
        if let Some(d) = self.delayed[port].take() {
            r.sent(tx.push(d));
        }
    }

    /// Sends what waits in every TX buffer (packets the fault injector delays stay
    /// delayed until the next timed drain, so reordering still happens at low load).
    fn flush(&mut self, r: &mut Round) {
        for tx in &mut self.tx {
            r.sent(tx.flush());
        }
    }

    fn drain(&mut self, r: &mut Round) {
        for (port, tx) in self.tx.iter_mut().enumerate() {
            if let Some(d) = self.delayed[port].take() {
                r.sent(tx.push(d));
            }
            r.sent(tx.flush());
        }
    }
}

impl Worker {
    /// Polls until told to stop; then sends what is buffered. Returns 0 (lcore exit code).
    pub fn run(self) -> i32 {
        let Worker {
            rx,
            tx,
            l2,
            tables,
            learn,
            inject,
            mut flows,
            flow_count,
            punt,
            faults,
            agent,
            stats,
            stop,
            tsc_start,
            tsc_hz,
            capture,
            lb,
            mut balancer,
            lb_counters,
        } = self;
        let n_ports = tx.len();
        let mut out = Output {
            tx,
            delayed: (0..n_ports).map(|_| None).collect(),
            faults,
            faulty: false,
            rng: Rng::new(tsc_start ^ u64::from(stats.lcore)),
            tap: capture,
        };
        let mut burst = RxBurst::default();
        let mut cache = LearnCache::new();
        let mut fin_copy = FinCopy::default();
        // Filler for unused key slots of a burst.
        let no_key = FlowKey::v4(
            std::net::Ipv4Addr::UNSPECIFIED,
            0,
            std::net::Ipv4Addr::UNSPECIFIED,
            0,
            0,
        );
        // Per-burst staging, reused (not re-initialised) burst after burst: the parse
        // of each packet (key and offsets, looked up and then used by the rewrite) and
        // where the packet sits in the burst.
        let mut l4s = [L4Info {
            key: no_key,
            l3_offset: 0,
            l4_offset: 0,
            tcp_flags: 0,
            payload_len: 0,
        }; MAX_BURST];
        let mut idx = [0u8; MAX_BURST];
        let drain_cycles = (tsc_hz / 1_000_000).max(1) * DRAIN_US;
        let mut last_drain = dpdk::tsc();
        let hz = tsc_hz.max(1);
        let tsc_per_us = (hz / 1_000_000).max(1);
        let _ = l2.load();
        let mut lb_seen = 0usize;
        // Launch on demand: first frames held until a destination comes up; the scratch
        // list is where they wait while being offered again (both allocated here, once).
        let mut hold = HoldQueue::new();
        let mut retry: Vec<Held> = Vec::with_capacity(crate::lb::hold::CAPACITY);
        let mut last_retry_us = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let ports = l2.load();
            let now_tsc = dpdk::tsc();
            let now = (now_tsc.wrapping_sub(tsc_start) / hz) as u32;
            let stitching = flow_count.load(Ordering::Relaxed) > 0;
            let lbt = lb.load();
            let now_us = now_tsc.wrapping_sub(tsc_start) / tsc_per_us;
            let balancing = !lbt.is_empty();
            let lb_changed = Arc::as_ptr(&*lbt) as usize != lb_seen;
            if lb_changed {
                lb_seen = Arc::as_ptr(&*lbt) as usize;
                balancer.sync(&lbt, &lb_counters);
            }
            if balancing || !balancer.is_empty() {
                balancer.tick(&lbt, now_us, &lb_counters);
            }
            let mut r = Round::default();
            out.refresh_faults();
            out.tap.refresh(now_tsc);
            while let Some((p, m)) = inject.pop() {
                out.push(usize::from(p.0), m, &mut r);
            }
            // A round in which no queue returned a full burst means the input is
            // keeping up: what waits in the TX buffers goes out now, not after the
            // drain interval (low latency at low load; full bursts under load).
            let mut full_burst = false;
            for &(port, queue) in &rx {
                let got = burst.rx(port, queue);
                full_burst |= got == MAX_BURST;
                if got == 0 {
                    continue;
                }
                let in_port = PortId(port.0);
                let in_l2 = ports.get(in_port);
                let table = in_l2
                    .and_then(|p| p.bridge)
                    .and_then(|b| tables.get(usize::from(b.0)))
                    .and_then(Option::as_ref);
                // Stage 1: take the burst, and for stitching parse every packet's flow.
                let mut pkts: [Option<Mbuf>; MAX_BURST] = Default::default();
                let mut n = 0;
                for m in burst.drain() {
                    m.prefetch_data();
                    r.rx_pkts += 1;
                    r.rx_bytes += u64::from(m.pkt_len());
                    pkts[n] = Some(m);
                    n += 1;
                }
                out.tap.rx_burst(in_port, pkts[..n].iter().flatten());
                let mut hits = [None; MAX_BURST];
                let mut k = 0;
                if stitching || balancing {
                    for (i, slot) in pkts[..n].iter_mut().enumerate() {
                        let Some(m) = slot else { continue };
                        let Some(l4) = parse_flow(m.data()) else {
                            continue;
                        };
                        let d = m.data();
                        let src = MacAddr([d[6], d[7], d[8], d[9], d[10], d[11]]);
                        if in_l2.is_some_and(|p| !p.security.permits(src)) {
                            r.drops[DropReason::PortSecurity.index()] += 1;
                            *slot = None;
                            continue;
                        }
                        l4s[k] = l4;
                        idx[k] = i as u8;
                        k += 1;
                    }
                }
                if stitching {
                    // Stage 2: one bulk lookup for the burst (the table overlaps the
                    // cache misses); the per-record counters this worker will write are
                    // prefetched as the hits come; then each hit is handled in order.
                    flows.for_each_bulk_by(
                        &l4s[..k],
                        |l| &l.key,
                        |j, e| {
                            if let Some(e) = e {
                                let c = e.record_id.0 as usize * COUNTERS;
                                if let Some(w) = stats.stitch.get(c) {
                                    dpdk::prefetch(w);
                                }
                            }
                            hits[j] = e;
                        },
                    );
                    for (j, e) in hits[..k].iter().enumerate() {
                        let Some(e) = *e else {
                            continue;
                        };
                        let l4 = &l4s[j];
                        let slot = &mut pkts[usize::from(idx[j])];
                        let Some(m) = slot.as_mut() else { continue };
                        let Some(frame) = m.data_mut() else { continue };
                        fin_copy.len = 0;
                        let dec = process(frame, l4, e, in_port, &mut fin_copy, &stats.stitch);
                        let (stitch, dir) = (e.record.stitch, e.value.dir);
                        r.ignored_ends += u64::from(dec.ignored_end);
                        if dec.notify {
                            let note = Punt {
                                stitch,
                                dir,
                                kind: PuntKind::Notice,
                                tcp_flags: l4.tcp_flags,
                                mbuf: None,
                                fin: fin_copy,
                            };
                            if punt.push(note).is_err() {
                                r.drops[DropReason::PuntFull.index()] += 1;
                            }
                        }
                        match dec.verdict {
                            StitchVerdict::L2 => {}
                            StitchVerdict::Out(p) => {
                                if let Some(m) = slot.take() {
                                    r.stitched += 1;
                                    out.push(usize::from(p.0), m, &mut r);
                                }
                            }
                            StitchVerdict::Hold => {
                                let h = Punt {
                                    stitch,
                                    dir,
                                    kind: PuntKind::Hold,
                                    tcp_flags: l4.tcp_flags,
                                    mbuf: slot.take(),
                                    fin: FinCopy::default(),
                                };
                                match punt.push(h) {
                                    Ok(()) => r.punted += 1,
                                    Err(_) => r.drops[DropReason::PuntFull.index()] += 1,
                                }
                            }
                            StitchVerdict::Drop(reason) => {
                                *slot = None;
                                r.drops[reason.index()] += 1;
                            }
                        }
                    }
                }
                // Stage 2b: frames of balanced services (and their NAT replies) that no
                // stitch took.
                if balancing || !balancer.is_empty() {
                    // Hash the burst's keys and prefetch their index words first, so the
                    // connection table's misses overlap instead of following one another.
                    let mut hashes = [0u64; MAX_BURST];
                    for j in 0..k {
                        if hits[j].is_none() {
                            hashes[j] = balancer.hash(&l4s[j].key);
                            balancer.prefetch(hashes[j]);
                        }
                    }
                    for j in 0..k {
                        if hits[j].is_some() {
                            continue;
                        }
                        let slot = &mut pkts[usize::from(idx[j])];
                        if lbt.is_own(l4s[j].key.dst_ip()) {
                            if let Some(m) = slot.take() {
                                punt_frame(&punt, PuntKind::Health, l4s[j].tcp_flags, m, &mut r);
                            }
                            continue;
                        }
                        let Some(m) = slot.as_mut() else { continue };
                        let Some(frame) = m.data_mut() else { continue };
                        match balancer.process_hashed(
                            frame,
                            &l4s[j],
                            hashes[j],
                            in_port,
                            &lbt,
                            now_us,
                            &lb_counters,
                        ) {
                            LbVerdict::NotMine => {}
                            LbVerdict::Out(p) => {
                                if let Some(m) = slot.take() {
                                    r.balanced += 1;
                                    out.push(usize::from(p.0), m, &mut r);
                                }
                            }
                            LbVerdict::Drop(reason) => {
                                *slot = None;
                                r.drops[reason.index()] += 1;
                            }
                            LbVerdict::Hold {
                                slot: s,
                                deadline_us,
                            } => {
                                let Some(m) = slot.take() else { continue };
                                hold_frame(
                                    &mut hold,
                                    Held {
                                        mbuf: m,
                                        in_port,
                                        slot: s,
                                        deadline_us,
                                    },
                                    &lbt,
                                    &lb_counters,
                                    &mut r,
                                    true,
                                );
                            }
                        }
                    }
                }
                // Stage 3: everything else is switched by L2. First the MAC table slots
                // of every frame's source and destination are prefetched, so the probes'
                // misses overlap (as the flow table's bulk lookup does).
                if let Some(t) = table {
                    for m in pkts[..n].iter().flatten() {
                        if let Some(h) = m.data().first_chunk::<12>() {
                            t.prefetch(MacAddr([h[0], h[1], h[2], h[3], h[4], h[5]]));
                            t.prefetch(MacAddr([h[6], h[7], h[8], h[9], h[10], h[11]]));
                        }
                    }
                }
                for m in pkts[..n].iter_mut().filter_map(Option::take) {
                    if balancing
                        && crate::neighbor::query_target(m.data()).is_some_and(|ip| lbt.is_vip(ip))
                    {
                        punt_frame(&punt, PuntKind::Neighbor, 0, m, &mut r);
                        continue;
                    }
                    if let Some(a) = &agent {
                        if for_agent(m.data(), a) {
                            punt_frame(&punt, PuntKind::Agent, 0, m, &mut r);
                            continue;
                        }
                    }
                    let Some(table) = table else {
                        r.drops[DropReason::NoBridge.index()] += 1;
                        continue;
                    };
                    let mut learn_req = None;
                    let outcome = classify(
                        m.data(),
                        in_port,
                        &ports,
                        table,
                        &mut cache,
                        now,
                        &mut learn_req,
                    );
                    if let Some(req) = learn_req {
                        if learn.push(req).is_ok() {
                            r.learn_req += 1;
                        } else {
                            r.learn_drop += 1;
                        }
                    }
                    match outcome {
                        L2Outcome::Forward(p) => out.push(usize::from(p.0), m, &mut r),
                        L2Outcome::Flood => {
                            let targets = ports.flood_list(in_port);
                            let Some((last, rest)) = targets.split_last() else {
                                r.drops[DropReason::NoBridge.index()] += 1;
                                continue;
                            };
                            r.flooded += 1;
                            for t in rest {
                                out.push(usize::from(t.0), m.share(), &mut r);
                            }
                            out.push(usize::from(last.0), m, &mut r);
                        }
                        L2Outcome::Drop(reason) => r.drops[reason.index()] += 1,
                    }
                }
            }
            // Held connections are offered again when the services change (a backend came
            // up) and every millisecond; those past their time are dropped.
            if !hold.is_empty() && (lb_changed || now_us.saturating_sub(last_retry_us) >= 1000) {
                last_retry_us = now_us;
                hold.drain_into(&mut retry);
                for h in retry.drain(..) {
                    let s = usize::from(h.slot);
                    if now_us >= h.deadline_us {
                        lb_counters.add_svc(s, SVC_HELD_DROPPED, 1);
                        r.drops[DropReason::LbNoDest.index()] += 1;
                        continue;
                    }
                    let Held {
                        mut mbuf,
                        in_port,
                        slot,
                        deadline_us,
                    } = h;
                    let Some(l4) = parse_flow(mbuf.data()) else {
                        continue;
                    };
                    let Some(frame) = mbuf.data_mut() else {
                        continue;
                    };
                    match balancer.process(frame, &l4, in_port, &lbt, now_us, &lb_counters) {
                        LbVerdict::Out(p) => {
                            lb_counters.add_svc(s, SVC_RELEASED, 1);
                            r.balanced += 1;
                            out.push(usize::from(p.0), mbuf, &mut r);
                        }
                        LbVerdict::Hold { .. } => {
                            let h = Held {
                                mbuf,
                                in_port,
                                slot,
                                deadline_us,
                            };
                            hold_frame(&mut hold, h, &lbt, &lb_counters, &mut r, false);
                        }
                        LbVerdict::NotMine => {
                            r.drops[DropReason::LbNoDest.index()] += 1;
                        }
                        LbVerdict::Drop(reason) => r.drops[reason.index()] += 1,
                    }
                }
                for (s, svc) in lbt.services.iter().enumerate() {
                    if svc.is_some() {
                        lb_counters.set_svc(s, SVC_HELD_NOW, u64::from(hold.held(s as u16)));
                    }
                }
            }
            if now_tsc.wrapping_sub(last_drain) >= drain_cycles {
                out.drain(&mut r);
                last_drain = now_tsc;
            } else if !full_burst {
                out.flush(&mut r);
            }
            if r.rx_pkts > 0 {
                // One TSC read per round that did work (not per packet).
                r.busy_cycles = dpdk::tsc().wrapping_sub(now_tsc);
            }
            publish(&stats, &r);
            // No reference into the flow table survives this point.
            flows.quiescent();
        }
        let mut r = Round::default();
        out.drain(&mut r);
        publish(&stats, &r);
        0
    }
}

/// Hands a frame for the switch itself (agent protocol, ARP/ND for its addresses, a
/// health check's answer) to the slow path; a full queue drops and counts it.
#[inline]
fn punt_frame(punt: &ArrayQueue<Punt>, kind: PuntKind, tcp_flags: u8, m: Mbuf, r: &mut Round) {
    let p = Punt {
        stitch: 0,
        dir: Dir::CtoA,
        kind,
        tcp_flags,
        mbuf: Some(m),
        fin: FinCopy::default(),
    };
    match punt.push(p) {
        Ok(()) => r.punted += 1,
        Err(_) => r.drops[DropReason::PuntFull.index()] += 1,
    }
}

/// Holds a connection's first frame (launch on demand), counted once (`first`), or drops
/// it when the service's share of this worker's hold queue is full.
fn hold_frame(
    hold: &mut HoldQueue,
    h: Held,
    lbt: &LbTable,
    c: &LbCounters,
    r: &mut Round,
    first: bool,
) {
    let s = usize::from(h.slot);
    let max = lbt
        .services
        .get(s)
        .and_then(Option::as_ref)
        .map_or(0, |x| x.hold_max);
    match hold.push(h, max) {
        Pushed::Held => {
            if first {
                c.add_svc(s, SVC_HELD, 1);
            }
        }
        Pushed::Full(_m) => {
            c.add_svc(s, SVC_HELD_DROPPED, 1);
            r.drops[DropReason::LbNoDest.index()] += 1;
        }
    }
    c.set_svc(s, SVC_HELD_NOW, u64::from(hold.held(s as u16)));
}

fn publish(s: &WorkerStats, r: &Round) {
    bump(&s.iterations, 1);
    bump(&s.rx_packets, r.rx_pkts);
    bump(&s.busy_cycles, r.busy_cycles);
    bump(&s.rx_bytes, r.rx_bytes);
    bump(&s.tx_packets, r.tx_pkts);
    bump(&s.flooded, r.flooded);
    bump(&s.learn_requests, r.learn_req);
    bump(&s.learn_dropped, r.learn_drop);
    bump(&s.stitched, r.stitched);
    bump(&s.balanced, r.balanced);
    bump(&s.ignored_ends, r.ignored_ends);
    bump(&s.punted, r.punted);
    bump(&s.fault_reordered, r.fault_reordered);
    bump(&s.fault_duplicated, r.fault_duplicated);
    for (c, n) in s.drops.iter().zip(r.drops) {
        bump(c, n);
    }
}
