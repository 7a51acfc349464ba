//! What `stitch-shell --status` prints: one JSON object, read from the running shell's
//! Unix status socket (the shell writes it and closes the connection).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stitch_core::CountersSnapshot;

use crate::ifaces::IfaceCount;

/// Bytes per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    /// Client to core.
    pub c_to_b: u64,
    /// Core to client.
    pub b_to_c: u64,
}

/// The switch that answered the last probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchInfo {
    /// Where requests go.
    pub request_addr: String,
    /// Its name.
    pub switch_id: String,
    /// Its capability bits.
    pub caps: u32,
    /// Stitches it could still take when it answered.
    pub free_flows: u32,
}

/// Teardown handling counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeardownCounts {
    /// Teardown notices received (acknowledged) on the agent socket.
    pub notices: u64,
    /// Notices that matched no live stitch when they arrived (each is kept 30 s and
    /// applied if its stitch is recorded meanwhile: the switch can end a stitch before
    /// the commit's answer reaches the shell).
    pub unmatched: u64,
    /// FINs of stitched connections seen by the watcher.
    pub fins_seen: u64,
    /// RSTs of stitched connections seen by the watcher.
    pub rsts_seen: u64,
    /// 4D notices the core agent acknowledged.
    pub core_notified: u64,
    /// 4D notices the core agent never acknowledged.
    pub core_notify_failed: u64,
    /// Stitches freed because the switch no longer knew them (heartbeat).
    pub forgotten_by_switch: u64,
    /// Stitches freed because only one FIN was seen for `half_close_secs`.
    pub half_close_expired: u64,
}

/// Upper bounds (milliseconds) of the hand-off time histogram's buckets; one more bucket
/// counts the slower ones.
pub const HANDOFF_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

/// A histogram of durations with fixed buckets, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Upper bounds of the buckets (inclusive), ascending.
    pub bounds_ms: Vec<u64>,
    /// Per bucket (not cumulative): `counts[i]` durations above `bounds_ms[i - 1]` and at
    /// most `bounds_ms[i]`; one entry more than `bounds_ms`, the last for what is above
    /// the largest bound.
    pub counts: Vec<u64>,
    /// Durations recorded.
    pub count: u64,
    /// Their sum.
    pub sum_ms: f64,
    /// The longest.
    pub max_ms: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds_ms: HANDOFF_BOUNDS_MS.to_vec(),
            counts: vec![0; HANDOFF_BOUNDS_MS.len() + 1],
            count: 0,
            sum_ms: 0.0,
            max_ms: 0.0,
        }
    }
}

impl Histogram {
    /// Counts one duration.
    pub fn record(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = self
            .bounds_ms
            .iter()
            .position(|b| ms <= *b as f64)
            .unwrap_or(self.bounds_ms.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.count += 1;
        self.sum_ms += ms;
        self.max_ms = self.max_ms.max(ms);
    }
}

/// What became of a mapping's hand-off attempts.
///
/// `attempted` = `committed` + `failed` + `deferred_not_ready` + the attempts under way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandoffCounts {
    /// Attempts started (a Prepare sent).
    pub attempted: u64,
    /// Attempts that ended with the stitch live (the same as `bypassed`).
    pub committed: u64,
    /// Attempts that failed, all reasons.
    pub failed: u64,
    /// Failed attempts by reason: `<step>_refused_<code>` (the switch said no to
    /// prepare, freeze or commit; e.g. `commit_refused_bad_state`, which is what "no
    /// packet seen yet" is), `<step>_no_reply`, `<step>_error`, `drain_timeout`,
    /// `closing`, `socket_error`, `agent_socket`. Every one after the freeze cost a
    /// stall of the connection.
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Attempts given back without a freeze because the switch would not have seen
    /// both ends within `handoff_ready_wait_ms`.
    pub deferred_not_ready: u64,
    /// Connections the shell stopped trying after `max_handoff_attempts`; relayed to
    /// their end.
    pub given_up: u64,
    /// Committed hand-offs, from the Freeze request to the Commit's answer (the time
    /// the switch may hold the connection's packets).
    pub freeze_to_commit_ms: Histogram,
}

/// One mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingStatus {
    /// A1, as bound.
    pub listen: String,
    /// B.
    pub core: String,
    /// The bypass policy.
    pub policy: String,
    /// The teardown variant.
    pub teardown: String,
    /// "available" or "not available: reason" for this mapping.
    pub stitching: String,
    /// Connections accepted (and connected to the core).
    pub connections: u64,
    /// Connections currently relayed by the shell.
    pub active_relayed: u64,
    /// Connections that closed while relayed.
    pub relayed: u64,
    /// Connections handed off to the switch.
    pub bypassed: u64,
    /// Hand-offs that failed (the connection carried on through the shell); the same
    /// as `handoffs.failed`.
    pub failed_handoffs: u64,
    /// The most recent failure reasons, oldest first (at most 8; every one is also
    /// logged).
    pub last_failure_reasons: Vec<String>,
    /// Hand-off outcomes and times.
    pub handoffs: HandoffCounts,
    /// Connections the core refused or did not answer.
    pub core_connect_failures: u64,
    /// Bytes the shell itself relayed.
    pub bytes_relayed_by_shell: Bytes,
    /// Bytes the switch carried: the `bytes` of teardown notices of finished stitches
    /// (or, without one, the estimate from the FINs' sequence numbers), plus the
    /// estimates known so far for live stitches.
    pub bytes_by_switch: Bytes,
    /// Stitches live now (sockets held silent in repair mode).
    pub active_stitched: u64,
}

/// The whole status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShellStatus {
    /// "available" (for at least one mapping) or "not available: reason".
    pub stitching: String,
    /// The switch that answered the last probe.
    pub switch: Option<SwitchInfo>,
    /// The last interface count (absent when not checked).
    pub interfaces: Option<IfaceCount>,
    /// CPU time of the shell process, seconds (user + system).
    pub cpu_seconds: f64,
    /// CPU use over the last second, percent of one CPU.
    pub cpu_percent: f64,
    /// "off", "running" or "error: ..." (the 4D/4E FIN watcher).
    pub fin_watcher: String,
    /// Where teardown notices arrive.
    pub agent_listen: String,
    /// Agent socket counters.
    pub agent: CountersSnapshot,
    /// Teardown handling.
    pub teardown: TeardownCounts,
    /// Per mapping.
    pub mappings: Vec<MappingStatus>,
}

/// Reads the status JSON from a running shell's status socket.
///
/// # Errors
/// When the socket cannot be reached or read.
pub fn fetch(path: &Path) -> io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let mut h = Histogram::default();
        for ms in [0.5, 1.0, 1.5, 5000.0, 5000.5, 60_000.0] {
            h.record(Duration::from_secs_f64(ms / 1000.0));
        }
        assert_eq!(h.counts.len(), h.bounds_ms.len() + 1);
        assert_eq!(
            (h.counts[0], h.counts[1]),
            (2, 1),
            "0.5 and 1 <= 1; 1.5 <= 2"
        );
        assert_eq!(h.counts[11], 1, "5000 <= 5000");
        assert_eq!(h.counts[12], 2, "above the largest bound");
        assert_eq!(h.count, 6);
        assert!((h.max_ms - 60_000.0).abs() < 1e-6);
        assert!((h.sum_ms - 70_003.5).abs() < 1e-3);
    }
}
