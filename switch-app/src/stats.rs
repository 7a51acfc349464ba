//! Per-worker counters: written by exactly one worker (load + store, no locked
//! read-modify-write on the hot path), read by the control plane at any time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde_json::{json, Map, Value};
use switch_core::verdict::DropReason;

/// One worker's counters, on their own cache lines.
#[derive(Debug)]
#[repr(align(64))]
pub struct WorkerStats {
    /// EAL lcore the worker runs on.
    pub lcore: u32,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub flooded: AtomicU64,
    pub learn_requests: AtomicU64,
    pub learn_dropped: AtomicU64,
    /// Packets translated by a stitch rule.
    pub stitched: AtomicU64,
    /// Packets rewritten by the load balancer.
    pub balanced: AtomicU64,
    /// FINs and RSTs on stitched flows with a wrong TCP checksum: forwarded, not acted on.
    pub ignored_ends: AtomicU64,
    /// Packets handed to the slow path (held).
    pub punted: AtomicU64,
    pub fault_reordered: AtomicU64,
    pub fault_duplicated: AtomicU64,
    /// TSC cycles spent in rounds that received packets (from the round's start to its
    /// end): busy cycles over received packets is the cost per packet, without the idle
    /// polling a wall-clock figure counts (`stitchctl top`, the console, /metrics).
    pub busy_cycles: AtomicU64,
    /// Poll rounds completed: the slow path waits for every worker's count to move to
    /// know that a change it published is seen (freeze, rule removal).
    pub iterations: AtomicU64,
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Translated traffic per stitch record (`stitch::rule::COUNTERS` words each), so
    /// that no worker writes a shared entry per packet.
    pub stitch: Box<[AtomicU64]>,
}

/// Adds `n` to a counter only this thread writes.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }
}

impl WorkerStats {
    /// Zeroed counters for the worker on `lcore`, with `stitch_words` per-record
    /// counters.
    pub fn new(lcore: u32, stitch_words: usize) -> WorkerStats {
        WorkerStats {
            lcore,
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            flooded: AtomicU64::new(0),
            learn_requests: AtomicU64::new(0),
            learn_dropped: AtomicU64::new(0),
            stitched: AtomicU64::new(0),
            balanced: AtomicU64::new(0),
            ignored_ends: AtomicU64::new(0),
            punted: AtomicU64::new(0),
            fault_reordered: AtomicU64::new(0),
            fault_duplicated: AtomicU64::new(0),
            busy_cycles: AtomicU64::new(0),
            iterations: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            stitch: (0..stitch_words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The counters as `stats.get` reports them; every drop reason appears by name.
    pub fn to_json(&self) -> Value {
        let mut drops = Map::new();
        for r in DropReason::ALL {
            drops.insert(
                r.name().to_string(),
                json!(self.drops[r.index()].load(Relaxed)),
            );
        }
        json!({
            "lcore": self.lcore,
            "rx_packets": self.rx_packets.load(Relaxed),
            "rx_bytes": self.rx_bytes.load(Relaxed),
            "tx_packets": self.tx_packets.load(Relaxed),
            "flooded": self.flooded.load(Relaxed),
            "learn_requests": self.learn_requests.load(Relaxed),
            "learn_dropped": self.learn_dropped.load(Relaxed),
            "stitched": self.stitched.load(Relaxed),
            "balanced": self.balanced.load(Relaxed),
            "ignored_ends": self.ignored_ends.load(Relaxed),
            "punted": self.punted.load(Relaxed),
            "fault_reordered": self.fault_reordered.load(Relaxed),
            "fault_duplicated": self.fault_duplicated.load(Relaxed),
            "busy_cycles": self.busy_cycles.load(Relaxed),
            "drops": drops,
        })
    }
}
