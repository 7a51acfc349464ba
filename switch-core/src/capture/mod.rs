//! Packet capture: what the workers copy frames into and how the slow path writes them.
//!
//! What it does: a [`CaptureSet`] says, per port, whether frames received on it (rx),
//! sent out of it (tx) or both are captured, and holds for each such port one
//! [`FrameRing`] per worker (each worker is the only producer of its ring, the slow path
//! the only consumer). [`pcap`] writes what comes out as a pcap file.
//!
//! What it guarantees: the set is immutable once published (the slow path builds a new
//! one for every start and stop and swaps it in), so a worker reads it without any
//! synchronisation beyond getting the pointer; capturing a frame never blocks, never
//! allocates and never delays forwarding (a full ring refuses the frame and counts it).
//!
//! What it must not do: read clocks, touch DPDK, or keep a reference to a frame.

pub mod pcap;
pub mod ring;

use std::fmt;
use std::sync::Arc;

pub use ring::{FrameMeta, FrameRing};

use crate::PortId;

/// Which frames of a port are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Frames as received on the port, before any decision or translation.
    Rx,
    /// Frames as sent out of the port, after translation (stitched flows).
    Tx,
    /// Both.
    Both,
}

impl Direction {
    /// Whether received frames are captured.
    pub fn rx(self) -> bool {
        matches!(self, Direction::Rx | Direction::Both)
    }

    /// Whether sent frames are captured.
    pub fn tx(self) -> bool {
        matches!(self, Direction::Tx | Direction::Both)
    }

    /// The name used on the control socket.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Rx => "rx",
            Direction::Tx => "tx",
            Direction::Both => "both",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Most memory one worker's ring of a capture may take; the slot count follows from the
/// snap length (at least [`MIN_SLOTS`], at most [`MAX_SLOTS`]).
pub const RING_BYTES: usize = 4 << 20;
/// Fewest slots per ring (at the largest snap length).
pub const MIN_SLOTS: usize = 256;
/// Most slots per ring (at small snap lengths).
pub const MAX_SLOTS: usize = 8192;

/// Slots per ring for `snaplen`: as many as fit [`RING_BYTES`], a power of two within
/// [`MIN_SLOTS`]..=[`MAX_SLOTS`].
pub fn ring_slots(snaplen: u32) -> usize {
    let slot = 16 + (snaplen as usize).div_ceil(8) * 8;
    let fit = (RING_BYTES / slot).max(1);
    // The largest power of two that fits.
    let pow = 1usize << (usize::BITS - 1 - fit.leading_zeros());
    pow.clamp(MIN_SLOTS, MAX_SLOTS)
}

/// One port's capture: its direction and one ring per worker.
#[derive(Debug)]
pub struct PortCapture {
    /// Which frames are taken.
    pub dir: Direction,
    rings: Box<[FrameRing]>,
}

impl PortCapture {
    /// A capture of `dir` frames with `workers` rings of `slots` slots of `snaplen` bytes.
    pub fn new(dir: Direction, workers: usize, slots: usize, snaplen: u32) -> PortCapture {
        PortCapture {
            dir,
            rings: (0..workers)
                .map(|_| FrameRing::new(slots, snaplen))
                .collect(),
        }
    }

    /// Worker `w`'s ring.
    pub fn ring(&self, w: usize) -> Option<&FrameRing> {
        self.rings.get(w)
    }

    /// Every worker's ring.
    pub fn rings(&self) -> &[FrameRing] {
        &self.rings
    }

    /// Frames refused by full rings, over all workers.
    pub fn dropped(&self) -> u64 {
        self.rings.iter().map(FrameRing::dropped).sum()
    }
}

/// Every port's capture, indexed by port id: what the workers read.
#[derive(Debug, Default, Clone)]
pub struct CaptureSet {
    by_port: Vec<Option<Arc<PortCapture>>>,
}

impl CaptureSet {
    /// A copy of this set with `port` capturing through `cap` (or not at all: `None`).
    #[must_use]
    pub fn with(&self, port: PortId, cap: Option<Arc<PortCapture>>) -> CaptureSet {
        let mut by_port = self.by_port.clone();
        let i = usize::from(port.0);
        if by_port.len() <= i {
            by_port.resize(i + 1, None);
        }
        by_port[i] = cap;
        while by_port.last().is_some_and(Option::is_none) {
            by_port.pop();
        }
        CaptureSet { by_port }
    }

    /// Whether no port is captured.
    pub fn is_empty(&self) -> bool {
        self.by_port.is_empty()
    }

    /// Worker `w`'s ring for frames received on `port`, if they are captured.
    #[inline]
    pub fn rx(&self, port: PortId, w: usize) -> Option<&FrameRing> {
        self.get(port).filter(|c| c.dir.rx())?.ring(w)
    }

    /// Worker `w`'s ring for frames sent out of `port`, if they are captured.
    #[inline]
    pub fn tx(&self, port: PortId, w: usize) -> Option<&FrameRing> {
        self.get(port).filter(|c| c.dir.tx())?.ring(w)
    }

    fn get(&self, port: PortId) -> Option<&PortCapture> {
        self.by_port.get(usize::from(port.0))?.as_deref()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_set_routes_each_direction_to_the_workers_own_ring() {
        let rx = Arc::new(PortCapture::new(Direction::Rx, 2, 4, 64));
        let both = Arc::new(PortCapture::new(Direction::Both, 2, 4, 64));
        let set = CaptureSet::default()
            .with(PortId(1), Some(rx.clone()))
            .with(PortId(3), Some(both.clone()));
        assert!(set.rx(PortId(0), 0).is_none());
        assert!(set.rx(PortId(1), 0).is_some());
        assert!(set.tx(PortId(1), 0).is_none(), "rx only");
        assert!(set.rx(PortId(1), 2).is_none(), "no third worker");
        assert!(std::ptr::eq(
            set.rx(PortId(3), 1).unwrap(),
            &both.rings()[1]
        ));
        assert!(std::ptr::eq(
            set.tx(PortId(3), 1).unwrap(),
            &both.rings()[1]
        ));
        assert!(set.tx(PortId(9), 0).is_none());
        let set = set.with(PortId(3), None).with(PortId(1), None);
        assert!(set.is_empty());
    }

    #[test]
    fn ring_slots_fit_the_budget_within_bounds() {
        assert_eq!(ring_slots(256), 8192);
        assert_eq!(ring_slots(1514), 2048);
        assert_eq!(ring_slots(9216), 256);
        for s in [14, 64, 100, 256, 1000, 1514, 4000, 9216] {
            let n = ring_slots(s);
            assert!(n.is_power_of_two() && (MIN_SLOTS..=MAX_SLOTS).contains(&n));
            let slot = 16 + (s as usize).div_ceil(8) * 8;
            assert!(n == MIN_SLOTS || n * slot <= RING_BYTES, "{s}: {n}");
        }
    }
}
