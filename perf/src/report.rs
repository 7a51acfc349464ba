//! The JSON `stitch-gen` prints: one trial's summary, or an RFC 2544 search (the
//! trials it ran, the highest rate with loss under the threshold, and latency at
//! fractions of it).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::seq::SeqCounts;

/// Latency percentiles in ns.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// One trial.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Trial {
    /// Offered rate asked for (None: as fast as the generator can).
    pub offered_pps: Option<f64>,
    pub duration_secs: f64,
    pub flows: usize,
    /// Mean frame size on the wire (FCS included).
    pub frame_size: f64,
    pub tx_packets: u64,
    /// Frames the TX port refused (full ring) or that found no free mbuf: not sent, not
    /// counted as loss.
    pub tx_refused: u64,
    /// Frames received carrying a signature of this trial.
    pub rx_packets: u64,
    /// Frames received without a signature (ARP, floods, ...).
    pub rx_other: u64,
    pub tx_mpps: f64,
    pub rx_mpps: f64,
    /// Received frames and FCS, in Gbit/s.
    pub rx_gbps: f64,
    /// The same with preamble and inter-frame gap (line rate).
    pub rx_gbps_line: f64,
    /// Sent but never received (distinct sequence numbers).
    pub lost: u64,
    pub loss_ratio: f64,
    pub reordered: u64,
    pub duplicates: u64,
    /// More than the tracker's window late (counted as received).
    pub late: u64,
    pub latency_ns: Latency,
    /// Latency CDF: (percentile, ns) points.
    pub cdf: Vec<(f64, u64)>,
}

/// An RFC 2544 throughput search with latency at fractions of the result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Search {
    /// Loss ratio under which a rate passes.
    pub loss_threshold: f64,
    /// The unthrottled trial: the saturation throughput.
    pub saturation: Trial,
    /// Every search trial, in order.
    pub steps: Vec<Trial>,
    /// The highest offered rate that passed (0 when none did).
    pub max_pps: f64,
    /// The trial at `max_pps` (received rate, Gbit/s, latency).
    pub max: Option<Trial>,
    /// (fraction of max, trial) for each latency fraction.
    pub latency_at: Vec<(f64, Trial)>,
}

/// Percentiles the CDF is sampled at: 0-90 by 5, then 1 - 10^-k/10 up to 99.999, and 100.
pub fn cdf_points() -> Vec<f64> {
    let mut v: Vec<f64> = (0..=18).map(|i| f64::from(i) * 5.0).collect();
    for k in 11..=50 {
        v.push(100.0 * (1.0 - 10f64.powf(-f64::from(k) / 10.0)));
    }
    v.push(100.0);
    v
}

/// Latency summary and CDF of a histogram in ns.
pub fn latency(h: &Histogram<u64>) -> (Latency, Vec<(f64, u64)>) {
    if h.is_empty() {
        return (Latency::default(), Vec::new());
    }
    let l = Latency {
        min: h.min(),
        mean: h.mean(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    };
    let cdf = cdf_points()
        .into_iter()
        .map(|p| (p, h.value_at_quantile(p / 100.0)))
        .collect();
    (l, cdf)
}

/// What one trial measured, before it is turned into a [`Trial`].
#[derive(Debug, Clone, Default)]
pub struct Raw {
    pub offered_pps: Option<f64>,
    pub secs: f64,
    pub flows: usize,
    pub frame_size: f64,
    pub tx: u64,
    pub tx_refused: u64,
    pub rx_other: u64,
    pub rx_bytes: u64,
    pub seq: SeqCounts,
}

impl Trial {
    /// Combines counters and the latency histogram.
    pub fn from_raw(r: &Raw, h: &Histogram<u64>) -> Trial {
        let secs = r.secs.max(1e-9);
        let rx = r.seq.unique;
        let lost = r.tx.saturating_sub(rx);
        let (latency_ns, cdf) = latency(h);
        let rx_pps = rx as f64 / secs;
        let wire_bytes = r.rx_bytes as f64 + rx as f64 * crate::packet::FCS_LEN as f64;
        Trial {
            offered_pps: r.offered_pps,
            duration_secs: r.secs,
            flows: r.flows,
            frame_size: r.frame_size,
            tx_packets: r.tx,
            tx_refused: r.tx_refused,
            rx_packets: rx,
            rx_other: r.rx_other,
            tx_mpps: r.tx as f64 / secs / 1e6,
            rx_mpps: rx_pps / 1e6,
            rx_gbps: wire_bytes * 8.0 / secs / 1e9,
            rx_gbps_line: (wire_bytes + rx as f64 * crate::packet::WIRE_OVERHEAD as f64) * 8.0
                / secs
                / 1e9,
            lost,
            loss_ratio: if r.tx == 0 {
                0.0
            } else {
                lost as f64 / r.tx as f64
            },
            reordered: r.seq.reordered,
            duplicates: r.seq.duplicates,
            late: r.seq.late,
            latency_ns,
            cdf,
        }
    }
}

/// The next rate of a binary search between `lo` (passed) and `hi` (failed), or None
/// when they are within `resolution` (relative) of each other.
pub fn bisect(lo: f64, hi: f64, resolution: f64) -> Option<f64> {
    if hi - lo <= hi * resolution {
        None
    } else {
        Some((lo + hi) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trial_counts_loss_from_distinct_sequence_numbers() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let raw = Raw {
            secs: 2.0,
            tx: 1010,
            rx_bytes: 1000 * 60,
            seq: SeqCounts {
                unique: 1000,
                duplicates: 5,
                ..Default::default()
            },
            ..Default::default()
        };
        let t = Trial::from_raw(&raw, &h);
        assert_eq!((t.lost, t.rx_packets, t.duplicates), (10, 1000, 5));
        assert!((t.loss_ratio - 10.0 / 1010.0).abs() < 1e-12);
        assert!((t.rx_gbps - 1000.0 * 64.0 * 8.0 / 2.0 / 1e9).abs() < 1e-12);
        assert!((t.latency_ns.p50 as f64 - 500_000.0).abs() < 1000.0);
        assert_eq!(t.latency_ns.max, h.max());
        assert!(t
            .cdf
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let j = serde_json::to_string(&t).unwrap();
        let back: Trial = serde_json::from_str(&j).unwrap();
        assert_eq!(back.latency_ns, t.latency_ns);
    }

    #[test]
    fn bisect_stops_at_resolution() {
        assert_eq!(bisect(0.0, 100.0, 0.01), Some(50.0));
        assert_eq!(bisect(99.5, 100.0, 0.01), None);
    }
}
