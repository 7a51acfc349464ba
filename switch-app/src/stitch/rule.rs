//! What the flow table holds for a stitch: one entry per direction of each leg.
//!
//! The rule ([`FlowRule`], a few bytes) and the record the four directions share
//! ([`StitchRec`]) are immutable once published; what changes while a stitch is watched
//! lives in the shared [`DirState`]s (atomics): the freeze flag the slow path sets, and
//! the observations the worker that sees the direction writes. Translated traffic is
//! counted in per-worker arrays ([`COUNTERS`] per record), not in shared state.
//! Replacing the record at commit keeps the same `DirState`s, so nothing is lost.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde_json::{json, Value};
use switch_core::stitch::seq::SeqNumber;
use switch_core::stitch::translate::Translation;
use switch_core::PortId;

/// The four directions a stitch watches. Leg A is C <-> A1, leg B is A2 <-> B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to shell (leg A, towards the shell).
    CtoA,
    /// Shell to client.
    AtoC,
    /// Core to shell (leg B, towards the shell).
    BtoA,
    /// Shell to core.
    AtoB,
}

impl Dir {
    /// All four, in index order.
    pub const ALL: [Dir; 4] = [Dir::CtoA, Dir::AtoC, Dir::BtoA, Dir::AtoB];

    /// Index into per-direction arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Name in `stitch.get`.
    pub fn name(self) -> &'static str {
        match self {
            Dir::CtoA => "c_to_a",
            Dir::AtoC => "a_to_c",
            Dir::BtoA => "b_to_a",
            Dir::AtoB => "a_to_b",
        }
    }

    /// Towards the shell (data is held while frozen).
    pub fn towards_shell(self) -> bool {
        matches!(self, Dir::CtoA | Dir::BtoA)
    }
}

/// What a worker does with a packet of this direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Observe, then switch by L2 as usual (held instead when frozen and data-bearing).
    Watch,
    /// Rewrite in place with the record's translation for this direction and send out
    /// of `out_port`.
    Translate {
        /// Where the other end lives.
        out_port: PortId,
        /// Teardown 4E: a FIN also goes to the shell, untranslated.
        fin_to_shell: bool,
    },
    /// The shell's own sends after commit: dropped and counted.
    DropShell,
}

/// One direction's flow-table value: a few bytes, so an entry is one cache line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRule {
    /// Which direction.
    pub dir: Dir,
    /// What to do.
    pub action: Action,
}

/// The four directions' watch state.
pub type DirStates = [DirState; 4];

/// What a stitch's four flow-table entries share (the table's record): the stitch id,
/// the two translations once committed, and the watch state of a stitch that went
/// through prepare (none for one installed complete, so a million installed stitches
/// cost no watch state).
#[derive(Debug)]
pub struct StitchRec {
    /// The stitch id.
    pub stitch: u32,
    /// C->B and B->C rewrites, once committed.
    pub live: Option<[Translation; 2]>,
    /// Where C->B and B->C go out (B's port, C's port), once committed.
    pub out_ports: [PortId; 2],
    /// Observations and flags, written by the workers while watching.
    pub states: Option<Arc<DirStates>>,
}

impl StitchRec {
    /// The output port of a translated direction, once committed.
    #[inline]
    pub fn out_port(&self, d: Dir) -> Option<PortId> {
        self.live.as_ref()?;
        match d {
            Dir::CtoA => Some(self.out_ports[0]),
            Dir::BtoA => Some(self.out_ports[1]),
            _ => None,
        }
    }

    /// The translation of a translated direction (`CtoA` uses C->B, `BtoA` B->C).
    #[inline]
    pub fn translation(&self, d: Dir) -> Option<&Translation> {
        let live = self.live.as_ref()?;
        match d {
            Dir::CtoA => Some(&live[0]),
            Dir::BtoA => Some(&live[1]),
            _ => None,
        }
    }
}

/// Per-worker counters of translated traffic, per stitch record: `COUNTERS` words each
/// (packets C->B, bytes C->B, packets B->C, bytes B->C). Only the owning worker writes
/// its array; the slow path sums them and zeroes a record's words when it is reused
/// (after the table's grace period, so no worker still writes them).
pub const COUNTERS: usize = 4;

/// Index of a direction's packet counter within a record's words (`None`: not counted
/// per worker).
#[inline]
pub fn counter_slot(d: Dir) -> Option<usize> {
    match d {
        Dir::CtoA => Some(0),
        Dir::BtoA => Some(2),
        _ => None,
    }
}

/// Sentinel for "not seen".
const UNSEEN: u32 = u32::MAX;

/// Observations and counters of one direction, and its freeze flag.
#[derive(Debug)]
pub struct DirState {
    /// Set by the slow path at freeze (towards-shell directions only).
    pub frozen: AtomicBool,
    /// At least one packet seen.
    pub seen: AtomicBool,
    /// Port the last packet arrived on.
    pub in_port: AtomicU32,
    /// Source and destination MAC of the last packet (low 48 bits).
    pub src_mac: AtomicU64,
    pub dst_mac: AtomicU64,
    /// Highest sequence end (seq + payload + SYN/FIN) forwarded towards the peer.
    pub seq_end: AtomicU32,
    pub has_seq: AtomicBool,
    /// Latest acknowledgment number sent in this direction.
    pub ack: AtomicU32,
    pub has_ack: AtomicBool,
    /// Latest TSval sent in this direction (timestamps seen when set).
    pub tsval: AtomicU32,
    pub ts_seen: AtomicBool,
    /// Latest TSecr (non-zero, on an ACK) in this direction: the last TSval of the other
    /// end that this sender saw, which stands in for that end's TSval when the other end
    /// sent nothing since prepare.
    pub tsecr: AtomicU32,
    pub tsecr_seen: AtomicBool,
    /// From a SYN of this direction, when the switch saw one.
    pub syn_mss: AtomicU32,
    pub syn_wscale: AtomicU32,
    pub syn_sack: AtomicBool,
    pub syn_seen: AtomicBool,
    /// Counters.
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub held: AtomicU64,
    pub dropped: AtomicU64,
    pub fins: AtomicU64,
    pub rsts: AtomicU64,
}

impl Default for DirState {
    fn default() -> Self {
        DirState {
            frozen: AtomicBool::new(false),
            seen: AtomicBool::new(false),
            in_port: AtomicU32::new(UNSEEN),
            src_mac: AtomicU64::new(0),
            dst_mac: AtomicU64::new(0),
            seq_end: AtomicU32::new(0),
            has_seq: AtomicBool::new(false),
            ack: AtomicU32::new(0),
            has_ack: AtomicBool::new(false),
            tsval: AtomicU32::new(0),
            ts_seen: AtomicBool::new(false),
            tsecr: AtomicU32::new(0),
            tsecr_seen: AtomicBool::new(false),
            syn_mss: AtomicU32::new(0),
            syn_wscale: AtomicU32::new(UNSEEN),
            syn_sack: AtomicBool::new(false),
            syn_seen: AtomicBool::new(false),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            held: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            fins: AtomicU64::new(0),
            rsts: AtomicU64::new(0),
        }
    }
}

/// Adds to a counter. A direction's packets arrive on one queue (RSS keeps a flow on
/// one queue), so one worker writes each counter: a plain load and store, no locked
/// read-modify-write on the hot path. Were two queues to race, a count could be lost,
/// never state corrupted.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl DirState {
    /// Records `seq_end` if it is after the one recorded (modular comparison).
    pub fn advance_seq(&self, end: u32) {
        if !self.has_seq.load(Relaxed) {
            self.seq_end.store(end, Relaxed);
            self.has_seq.store(true, Relaxed);
            return;
        }
        let _ = self.seq_end.fetch_update(Relaxed, Relaxed, |cur| {
            SeqNumber(end).after(SeqNumber(cur)).then_some(end)
        });
    }

    /// Records an acknowledgment number if it is after the one recorded.
    pub fn advance_ack(&self, ack: u32) {
        if !self.has_ack.load(Relaxed) {
            self.ack.store(ack, Relaxed);
            self.has_ack.store(true, Relaxed);
            return;
        }
        let _ = self.ack.fetch_update(Relaxed, Relaxed, |cur| {
            SeqNumber(ack).after(SeqNumber(cur)).then_some(ack)
        });
    }

    /// The in-port, when seen.
    pub fn port(&self) -> Option<PortId> {
        let p = self.in_port.load(Relaxed);
        (p != UNSEEN).then_some(PortId(p as u16))
    }

    /// The last TSval `self` (one direction) is known to have sent: seen in its own
    /// packets, or else echoed back by the other end (`echo`, the reverse direction).
    pub fn last_tsval(&self, echo: &DirState) -> Option<u32> {
        if self.ts_seen.load(Relaxed) {
            Some(self.tsval.load(Relaxed))
        } else if echo.tsecr_seen.load(Relaxed) {
            Some(echo.tsecr.load(Relaxed))
        } else {
            None
        }
    }

    /// Window scale from a SYN, when seen.
    pub fn wscale(&self) -> Option<u8> {
        let w = self.syn_wscale.load(Relaxed);
        (w != UNSEEN).then_some(w as u8)
    }

    /// `stitch.get` view.
    pub fn to_json(&self) -> Value {
        let opt = |has: &AtomicBool, v: &AtomicU32| has.load(Relaxed).then(|| v.load(Relaxed));
        json!({
            "seen": self.seen.load(Relaxed),
            "frozen": self.frozen.load(Relaxed),
            "in_port": self.port().map(|p| p.0),
            "seq_end": opt(&self.has_seq, &self.seq_end),
            "ack": opt(&self.has_ack, &self.ack),
            "tsval": opt(&self.ts_seen, &self.tsval),
            "syn": self.syn_seen.load(Relaxed).then(|| json!({
                "mss": self.syn_mss.load(Relaxed),
                "wscale": self.wscale(),
                "sack_permitted": self.syn_sack.load(Relaxed),
            })),
            "packets": self.packets.load(Relaxed),
            "bytes": self.bytes.load(Relaxed),
            "held": self.held.load(Relaxed),
            "dropped": self.dropped.load(Relaxed),
            "fins": self.fins.load(Relaxed),
            "rsts": self.rsts.load(Relaxed),
        })
    }
}
