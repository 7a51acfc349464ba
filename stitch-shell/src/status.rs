//! What `stitch-shell --status` prints: one JSON object, read from the running shell's
//! Unix status socket (the shell writes it and closes the connection).

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
    /// Hand-offs that failed (the connection carried on through the shell).
    pub failed_handoffs: u64,
    /// The most recent failure reasons, oldest first (at most 8).
    pub last_failure_reasons: Vec<String>,
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
