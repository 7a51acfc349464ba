//! A packet's fate, and why packets are dropped.
//!
//! What it does: names every outcome of the data path ([`Verdict`]) and every
//! reason to drop ([`DropReason`]), and counts drops per reason
//! ([`DropCounters`]) so that `stats` can show each one.
//!
//! What it guarantees: `DropReason` is a dense `#[repr(u8)]` enum, so
//! `DropReason::index` addresses a fixed array and counting is one add, with
//! no allocation, no hashing and no lock. Names are stable snake_case strings
//! for metrics.
//!
//! What it must not do: aggregate across cores. Each worker owns its
//! `DropCounters`; the stats reader sums them.

use serde::Serialize;

use crate::PortId;

/// Why the data path dropped a packet. Each has a per-core counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum DropReason {
    /// The frame is shorter than an Ethernet header (14 bytes).
    Truncated = 0,
    /// The source MAC is multicast, broadcast or zero: no station sends from
    /// such an address, so the frame is bogus and must not be learned.
    BadSrcMac = 1,
    /// The source MAC is not in the ingress port's allowed list.
    PortSecurity = 2,
    /// The destination was learned on the ingress port: the station is on the
    /// segment the frame came from, so sending it back would duplicate it.
    Hairpin = 3,
    /// The ingress port belongs to no bridge, or its bridge has no other port
    /// to send to.
    NoBridge = 4,
    /// The TX queue was full; the unsent mbuf was freed.
    TxFull = 5,
    /// The egress port's link is down.
    LinkDown = 6,
    /// The shell sent on a leg that is stitched: after commit only the switch speaks
    /// for the shell, so what the shell still sends is dropped.
    ShellAfterCommit = 7,
    /// A frozen stitch already holds as many packets as it may; the sender retransmits.
    HoldFull = 8,
    /// The queue to the slow path was full.
    PuntFull = 9,
    /// A stitched packet could not be translated (malformed options, wrong family).
    TranslateError = 10,
    /// Dropped on purpose by the fault injector (`port.fault.set`).
    FaultInjected = 11,
    /// The source MAC belongs to another port and the move policy keeps it there: a
    /// port cannot claim an address it does not own (seed 003).
    MacOwned = 12,
    /// A new connection to a balanced service found no usable destination.
    LbNoDest = 13,
    /// A TCP segment to a balanced service that belongs to no connection and does not
    /// open one (no SYN): dropped, as IPVS does.
    LbNoConn = 14,
    /// A worker's connection table was full: the new connection is refused.
    LbTableFull = 15,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 16;

    /// Every reason, in index order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Truncated,
        DropReason::BadSrcMac,
        DropReason::PortSecurity,
        DropReason::Hairpin,
        DropReason::NoBridge,
        DropReason::TxFull,
        DropReason::LinkDown,
        DropReason::ShellAfterCommit,
        DropReason::HoldFull,
        DropReason::PuntFull,
        DropReason::TranslateError,
        DropReason::FaultInjected,
        DropReason::MacOwned,
        DropReason::LbNoDest,
        DropReason::LbNoConn,
        DropReason::LbTableFull,
    ];

    /// The stable snake_case name used in stats and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadSrcMac => "bad_src_mac",
            DropReason::PortSecurity => "port_security",
            DropReason::Hairpin => "hairpin",
            DropReason::NoBridge => "no_bridge",
            DropReason::TxFull => "tx_full",
            DropReason::LinkDown => "link_down",
            DropReason::ShellAfterCommit => "shell_after_commit",
            DropReason::HoldFull => "hold_full",
            DropReason::PuntFull => "punt_full",
            DropReason::TranslateError => "translate_error",
            DropReason::FaultInjected => "fault_injected",
            DropReason::MacOwned => "mac_owned",
            DropReason::LbNoDest => "lb_no_dest",
            DropReason::LbNoConn => "lb_no_conn",
            DropReason::LbTableFull => "lb_table_full",
        }
    }

    /// Position in [`DropReason::ALL`] and in counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the data path does with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send out of this port.
    Forward(PortId),
    /// Send out of every other port of the ingress port's bridge.
    Flood,
    /// Free the packet and count the reason.
    Drop(DropReason),
    /// Hand the packet to the slow path (ARP, control traffic).
    SlowPath,
}

/// Per-core drop counters, one `u64` per [`DropReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounters {
    counts: [u64; DropReason::COUNT],
}

impl DropCounters {
    /// All zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `n` drops for `reason` (wrapping, never panicking).
    pub fn add(&mut self, reason: DropReason, n: u64) {
        let c = &mut self.counts[reason.index()];
        *c = c.wrapping_add(n);
    }

    /// The count for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    /// Every reason with its count, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(move |&r| (r, self.get(r)))
    }

    /// The sum over all reasons.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.wrapping_add(c))
    }

    /// Adds another core's counters into this one.
    pub fn merge(&mut self, other: &DropCounters) {
        for r in DropReason::ALL {
            self.add(r, other.get(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_dense_and_in_index_order() {
        assert_eq!(DropReason::ALL.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn names_are_snake_case_and_unique() {
        let names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            [
                "truncated",
                "bad_src_mac",
                "port_security",
                "hairpin",
                "no_bridge",
                "tx_full",
                "link_down",
                "shell_after_commit",
                "hold_full",
                "punt_full",
                "translate_error",
                "fault_injected",
                "mac_owned",
                "lb_no_dest",
                "lb_no_conn",
                "lb_table_full"
            ]
        );
        assert_eq!(
            serde_json::to_string(&DropReason::BadSrcMac).unwrap(),
            "\"bad_src_mac\""
        );
        assert_eq!(DropReason::TxFull.to_string(), "tx_full");
    }

    #[test]
    fn counters_add_get_iter_merge() {
        let mut c = DropCounters::default();
        c.add(DropReason::Hairpin, 3);
        c.add(DropReason::Hairpin, 2);
        c.add(DropReason::TxFull, 7);
        assert_eq!(c.get(DropReason::Hairpin), 5);
        assert_eq!(c.get(DropReason::Truncated), 0);
        assert_eq!(c.total(), 12);
        let nonzero: Vec<_> = c.iter().filter(|&(_, n)| n > 0).collect();
        assert_eq!(nonzero, [(DropReason::Hairpin, 5), (DropReason::TxFull, 7)]);
        let mut d = DropCounters::new();
        d.merge(&c);
        d.merge(&c);
        assert_eq!(d.get(DropReason::TxFull), 14);
    }
}
