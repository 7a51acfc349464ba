//! The poll-mode worker: one per set of (port, rx queue), pinned to its lcore.
//!
//! rx_burst -> L2 decision (switch-core) -> per-output-port TX buffer; buffers go out when
//! full or when ~100 us passed since the last drain. Learning requests go to the slow path
//! over a lock-free queue. No allocation, no lock, no syscall, no log in the loop: the
//! published port settings are read through `arc_swap` once per poll round.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use dpdk::{Port, RxBurst, TxBuffer};
use switch_core::l2::pipeline::{classify, L2Outcome, L2Ports, LearnCache, LearnRequest};
use switch_core::l2::table::MacTableReader;
use switch_core::verdict::DropReason;
use switch_core::PortId;

use crate::stats::{bump, WorkerStats};

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
    /// Counters.
    pub stats: Arc<WorkerStats>,
    /// Set by the main lcore to stop.
    pub stop: Arc<AtomicBool>,
    /// TSC at start and TSC rate, for the coarse clock the L2 table ages by.
    pub tsc_start: u64,
    pub tsc_hz: u64,
}

/// Drain interval: the longest a packet waits in a TX buffer.
const DRAIN_US: u64 = 100;

impl Worker {
    /// Polls until told to stop; then sends what is buffered. Returns 0 (lcore exit code).
    pub fn run(mut self) -> i32 {
        let mut burst = RxBurst::default();
        let mut cache = LearnCache::new();
        let mut targets = [PortId(0); 32];
        let drain_cycles = (self.tsc_hz / 1_000_000).max(1) * DRAIN_US;
        let mut last_drain = dpdk::tsc();
        let hz = self.tsc_hz.max(1);
        while !self.stop.load(Ordering::Relaxed) {
            let ports = self.l2.load();
            let now_tsc = dpdk::tsc();
            let now = (now_tsc.wrapping_sub(self.tsc_start) / hz) as u32;
            let (
                mut rx_pkts,
                mut rx_bytes,
                mut tx_pkts,
                mut flooded,
                mut learn_req,
                mut learn_drop,
            ) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
            let mut drops = [0u64; DropReason::COUNT];
            for &(port, queue) in &self.rx {
                if burst.rx(port, queue) == 0 {
                    continue;
                }
                let in_port = PortId(port.0);
                let table = ports
                    .get(in_port)
                    .and_then(|p| p.bridge)
                    .and_then(|b| self.tables.get(usize::from(b.0)))
                    .and_then(Option::as_ref);
                for m in burst.drain() {
                    rx_pkts += 1;
                    rx_bytes += u64::from(m.pkt_len());
                    let Some(table) = table else {
                        drops[DropReason::NoBridge.index()] += 1;
                        continue;
                    };
                    let mut learn = None;
                    let outcome = classify(
                        m.data(),
                        in_port,
                        &ports,
                        table,
                        &mut cache,
                        now,
                        &mut learn,
                    );
                    if let Some(req) = learn {
                        if self.learn.push(req).is_ok() {
                            learn_req += 1;
                        } else {
                            learn_drop += 1;
                        }
                    }
                    match outcome {
                        L2Outcome::Forward(out) => match self.tx.get_mut(usize::from(out.0)) {
                            Some(tx) => {
                                let r = tx.push(m);
                                tx_pkts += u64::from(r.sent);
                                drops[DropReason::TxFull.index()] += u64::from(r.dropped);
                            }
                            None => drops[DropReason::NoBridge.index()] += 1,
                        },
                        L2Outcome::Flood => {
                            let k = ports.flood_targets(in_port, &mut targets);
                            if k == 0 {
                                drops[DropReason::NoBridge.index()] += 1;
                                continue;
                            }
                            flooded += 1;
                            for t in &targets[..k - 1] {
                                let r = self.tx[usize::from(t.0)].push(m.share());
                                tx_pkts += u64::from(r.sent);
                                drops[DropReason::TxFull.index()] += u64::from(r.dropped);
                            }
                            let r = self.tx[usize::from(targets[k - 1].0)].push(m);
                            tx_pkts += u64::from(r.sent);
                            drops[DropReason::TxFull.index()] += u64::from(r.dropped);
                        }
                        L2Outcome::Drop(reason) => drops[reason.index()] += 1,
                    }
                }
            }
            if now_tsc.wrapping_sub(last_drain) >= drain_cycles {
                for tx in &mut self.tx {
                    let r = tx.flush();
                    tx_pkts += u64::from(r.sent);
                    drops[DropReason::TxFull.index()] += u64::from(r.dropped);
                }
                last_drain = now_tsc;
            }
            let s = &self.stats;
            bump(&s.rx_packets, rx_pkts);
            bump(&s.rx_bytes, rx_bytes);
            bump(&s.tx_packets, tx_pkts);
            bump(&s.flooded, flooded);
            bump(&s.learn_requests, learn_req);
            bump(&s.learn_dropped, learn_drop);
            for (c, n) in s.drops.iter().zip(drops) {
                bump(c, n);
            }
        }
        for tx in &mut self.tx {
            let r = tx.flush();
            bump(&self.stats.tx_packets, u64::from(r.sent));
            bump(
                &self.stats.drops[DropReason::TxFull.index()],
                u64::from(r.dropped),
            );
        }
        0
    }
}
