//! The MAC table: MAC address -> port, one writer, lock-free readers.
//!
//! What it does: a bounded, pre-sized, open-addressing hash table (linear
//! probing) that the slow path writes (learning, static entries, aging,
//! flushes) and that every worker reads per packet, with no lock and no
//! `unsafe`: only `std::sync::atomic`.
//!
//! # Layout
//!
//! Each slot is one `AtomicU64` holding the whole entry, plus an `AtomicU32`
//! with the last time (coarse seconds) the source was seen:
//!
//! ```text
//!  63  62    61     60   59 .. 48   47 ............ 0
//! +---+-----+------+----+----------+-----------------+
//! | 0 |valid|tomb- |stat|  port    |   MAC address   |
//! |   |     |stone |ic  | (12 bit) |    (48 bit)     |
//! +---+-----+------+----+----------+-----------------+
//! ```
//!
//! `0` is an empty slot; `tombstone` alone marks a deleted entry. Because an
//! entry is written with one store and read with one load, a reader never
//! sees a MAC with another entry's port.
//!
//! # Why readers never miss a live entry
//!
//! A lookup walks from the MAC's home slot and stops at the first empty slot
//! (or after the probe window). An entry is only ever placed within the probe
//! window of its home, is never relocated, and while it is live every slot
//! between its home and its position is non-empty. Deleting writes a
//! tombstone (non-empty), so a delete cannot cut the path to another live
//! entry. A tombstone is turned back into an empty slot only when the slot
//! after it is empty: then no live entry's path runs through it (a path that
//! crossed it would also cross the empty slot after it). Inserts reuse the
//! first tombstone or empty slot of the window, so tombstones do not pile up.
//!
//! A reader can still miss an entry that is being removed and re-learned, or
//! moved by the writer while it looks: that is a transient miss, which only
//! causes one flood, never a wrong forward.
//!
//! # Last-seen
//!
//! Workers refresh `last_seen` from [`MacTableReader::check_source`], storing
//! only when the value differs, so a busy station costs one write per second
//! instead of one per packet (and its cache line is not bounced between
//! cores). The refresh may land on a slot that the writer just reused for
//! another MAC; the cost is that this new entry ages out up to a second late.
//!
//! What it must not do: allocate, lock or block on the read side; grow. When
//! no slot is free within the probe window an insert returns `Full` and
//! changes nothing.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::{MacAddr, PortId};

/// The longest probe sequence, in slots. Bounds the cost of a lookup miss.
pub const PROBE_LEN: usize = 32;
/// The highest port number the table can store (12 bits).
pub const MAX_PORT: u16 = 0x0fff;

const MAC_MASK: u64 = (1 << 48) - 1;
const PORT_SHIFT: u32 = 48;
const PORT_MASK: u64 = 0x0fff;
const STATIC_BIT: u64 = 1 << 60;
const TOMBSTONE: u64 = 1 << 61;
const VALID_BIT: u64 = 1 << 62;
const EMPTY: u64 = 0;

/// A decoded slot word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word {
    Empty,
    Tombstone,
    Live {
        mac: u64,
        port: PortId,
        is_static: bool,
    },
}

fn decode(w: u64) -> Word {
    if w & VALID_BIT != 0 {
        Word::Live {
            mac: w & MAC_MASK,
            port: PortId(((w >> PORT_SHIFT) & PORT_MASK) as u16),
            is_static: w & STATIC_BIT != 0,
        }
    } else if w == EMPTY {
        Word::Empty
    } else {
        Word::Tombstone
    }
}

fn encode(mac: MacAddr, port: PortId, is_static: bool) -> u64 {
    VALID_BIT
        | if is_static { STATIC_BIT } else { 0 }
        | ((u64::from(port.0) & PORT_MASK) << PORT_SHIFT)
        | mac.to_u64()
}

/// One slot; the two atomics share a cache line.
#[derive(Debug, Default)]
struct Slot {
    word: AtomicU64,
    last_seen: AtomicU32,
}

struct Shared {
    slots: Box<[Slot]>,
    mask: usize,
    /// `64 - log2(capacity)`: the home slot is the top bits of the product.
    shift: u32,
    probe: usize,
}

impl Shared {
    fn new(capacity: usize) -> Shared {
        let cap = capacity.max(1).next_power_of_two();
        let slots = (0..cap).map(|_| Slot::default()).collect();
        Shared {
            slots,
            mask: cap - 1,
            shift: 64 - cap.trailing_zeros(),
            probe: PROBE_LEN.min(cap),
        }
    }

    /// The home slot: Fibonacci hashing (the top bits of the product), so
    /// that sequential MACs (one vendor prefix, consecutive serials) spread
    /// evenly over the table.
    fn home(&self, mac: u64) -> usize {
        let h = mac.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h.checked_shr(self.shift).unwrap_or(0) as usize & self.mask
    }

    fn slot(&self, i: usize) -> &Slot {
        &self.slots[i & self.mask]
    }

    /// The slot index and decoded entry for `mac`, if live.
    fn find(&self, mac: MacAddr) -> Option<(usize, PortId, bool)> {
        let key = mac.to_u64();
        let home = self.home(key);
        for i in 0..self.probe {
            let idx = (home + i) & self.mask;
            match decode(self.slots[idx].word.load(Ordering::Acquire)) {
                Word::Empty => return None,
                Word::Tombstone => {}
                Word::Live {
                    mac: m,
                    port,
                    is_static,
                } => {
                    if m == key {
                        return Some((idx, port, is_static));
                    }
                }
            }
        }
        None
    }
}

/// What a worker learns about a frame's source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceCheck {
    /// Learned on this same port (last-seen refreshed).
    Known,
    /// Not in the table: the slow path should learn it.
    Unknown,
    /// Learned on another port: the station moved (or is spoofed).
    Moved {
        /// Where it was learned.
        from: PortId,
    },
    /// A static entry exists; static entries never move.
    Static {
        /// The port the static entry points at (may differ from ingress).
        port: PortId,
    },
}

/// What [`MacTableWriter::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnOutcome {
    /// A new entry.
    Learned,
    /// Already there on this port; last-seen updated.
    Refreshed,
    /// Was on another port; now on this one.
    Moved {
        /// The previous port.
        from: PortId,
    },
    /// A static entry exists for this MAC; it was left alone.
    StaticKept,
    /// No free slot within the probe window; nothing changed.
    Full,
    /// Multicast or zero MAC, or a port above [`MAX_PORT`]; nothing changed.
    Invalid,
}

/// What [`MacTableWriter::add_static`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A new entry.
    Inserted,
    /// An entry (dynamic or static) for this MAC was overwritten.
    Replaced,
    /// No free slot within the probe window; nothing changed.
    Full,
    /// Zero MAC or a port above [`MAX_PORT`]; nothing changed.
    Invalid,
}

/// One table entry, for `stats` and the control API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MacEntry {
    /// The address.
    pub mac: MacAddr,
    /// Where it lives.
    pub port: PortId,
    /// Configured (never ages, never moves) rather than learned.
    pub is_static: bool,
    /// Last time (coarse seconds) a frame came from it.
    pub last_seen: u32,
}

/// Creates a table with at least `capacity` slots (rounded up to a power of
/// two) and returns its only writer and a first reader.
pub fn mac_table(capacity: usize) -> (MacTableWriter, MacTableReader) {
    let shared = Arc::new(Shared::new(capacity));
    let reader = MacTableReader {
        shared: Arc::clone(&shared),
    };
    let writer = MacTableWriter {
        shared,
        len: 0,
        moves: 0,
        full: 0,
    };
    (writer, reader)
}

/// The read side, one clone per worker. Lookups are wait-free: a bounded
/// number of atomic loads.
#[derive(Clone)]
pub struct MacTableReader {
    shared: Arc<Shared>,
}

impl fmt::Debug for MacTableReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MacTableReader")
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl MacTableReader {
    /// Prefetches the home slot of `mac`, so that a burst's probes overlap their cache
    /// misses (call for every frame of a burst, then probe).
    #[inline]
    pub fn prefetch(&self, mac: MacAddr) {
        let s = &*self.shared;
        crate::flow::table::prefetch_ref(s.slot(s.home(mac.to_u64())));
    }

    /// The port `mac` was learned or configured on.
    pub fn lookup(&self, mac: MacAddr) -> Option<PortId> {
        self.shared.find(mac).map(|(_, port, _)| port)
    }

    /// Classifies a frame's source address arriving on `port` at `now`, and
    /// refreshes last-seen when it is [`SourceCheck::Known`].
    pub fn check_source(&self, mac: MacAddr, port: PortId, now: u32) -> SourceCheck {
        match self.shared.find(mac) {
            None => SourceCheck::Unknown,
            Some((_, p, true)) => SourceCheck::Static { port: p },
            Some((idx, p, false)) if p == port => {
                let seen = &self.shared.slot(idx).last_seen;
                if seen.load(Ordering::Relaxed) != now {
                    seen.store(now, Ordering::Relaxed);
                }
                SourceCheck::Known
            }
            Some((_, p, false)) => SourceCheck::Moved { from: p },
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.shared.slots.len()
    }
}

/// The write side: exactly one, owned by the slow path. Not `Clone`, so two
/// writers cannot race on the same slot.
pub struct MacTableWriter {
    shared: Arc<Shared>,
    len: usize,
    moves: u64,
    full: u64,
}

impl fmt::Debug for MacTableWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MacTableWriter")
            .field("capacity", &self.capacity())
            .field("len", &self.len)
            .field("moves", &self.moves)
            .field("full", &self.full)
            .finish()
    }
}

/// Where a MAC is, or where it could go.
enum Place {
    Found {
        idx: usize,
        port: PortId,
        is_static: bool,
    },
    Free(usize),
    NoRoom,
}

impl MacTableWriter {
    fn load(&self, idx: usize) -> Word {
        // Only this writer stores words, so it always sees its own latest.
        decode(self.shared.slot(idx).word.load(Ordering::Relaxed))
    }

    fn store(&self, idx: usize, word: u64) {
        self.shared.slot(idx).word.store(word, Ordering::Release);
    }

    fn place(&self, mac: MacAddr) -> Place {
        let key = mac.to_u64();
        let home = self.shared.home(key);
        let mut free = None;
        for i in 0..self.shared.probe {
            let idx = (home + i) & self.shared.mask;
            match self.load(idx) {
                Word::Empty => {
                    return Place::Free(free.unwrap_or(idx));
                }
                Word::Tombstone => {
                    free.get_or_insert(idx);
                }
                Word::Live {
                    mac: m,
                    port,
                    is_static,
                } => {
                    if m == key {
                        return Place::Found {
                            idx,
                            port,
                            is_static,
                        };
                    }
                }
            }
        }
        free.map_or(Place::NoRoom, Place::Free)
    }

    fn insert_at(&mut self, idx: usize, mac: MacAddr, port: PortId, is_static: bool, now: u32) {
        let slot = self.shared.slot(idx);
        slot.last_seen.store(now, Ordering::Relaxed);
        slot.word
            .store(encode(mac, port, is_static), Ordering::Release);
        self.len += 1;
    }

    /// Learns that `mac` was seen on `port` at `now`.
    pub fn learn(&mut self, mac: MacAddr, port: PortId, now: u32) -> LearnOutcome {
        if mac.is_multicast() || mac.is_zero() || port.0 > MAX_PORT {
            return LearnOutcome::Invalid;
        }
        match self.place(mac) {
            Place::Found {
                is_static: true, ..
            } => LearnOutcome::StaticKept,
            Place::Found { idx, port: p, .. } => {
                let slot = self.shared.slot(idx);
                slot.last_seen.store(now, Ordering::Relaxed);
                if p == port {
                    LearnOutcome::Refreshed
                } else {
                    self.store(idx, encode(mac, port, false));
                    self.moves += 1;
                    LearnOutcome::Moved { from: p }
                }
            }
            Place::Free(idx) => {
                self.insert_at(idx, mac, port, false, now);
                LearnOutcome::Learned
            }
            Place::NoRoom => {
                self.full += 1;
                LearnOutcome::Full
            }
        }
    }

    /// Adds a static entry, replacing any entry for `mac`. Static entries do
    /// not age, are not flushed with their port, and are never moved by
    /// learning. Multicast MACs are accepted (a static group entry).
    pub fn add_static(&mut self, mac: MacAddr, port: PortId) -> InsertOutcome {
        if mac.is_zero() || port.0 > MAX_PORT {
            return InsertOutcome::Invalid;
        }
        match self.place(mac) {
            Place::Found { idx, .. } => {
                self.store(idx, encode(mac, port, true));
                InsertOutcome::Replaced
            }
            Place::Free(idx) => {
                self.insert_at(idx, mac, port, true, 0);
                InsertOutcome::Inserted
            }
            Place::NoRoom => {
                self.full += 1;
                InsertOutcome::Full
            }
        }
    }

    /// Removes the entry at `idx` (tombstone, then cleanup).
    fn remove_at(&mut self, idx: usize) {
        self.store(idx, TOMBSTONE);
        self.len -= 1;
        // A tombstone followed by an empty slot is on no live entry's path:
        // turn it, and the tombstones right before it, back into empty slots.
        if self.load(idx + 1) != Word::Empty {
            return;
        }
        let mut s = idx;
        for _ in 0..self.shared.slots.len() {
            if self.load(s) != Word::Tombstone {
                break;
            }
            self.store(s, EMPTY);
            s = s.wrapping_sub(1) & self.shared.mask;
        }
    }

    /// Removes any entry (static or dynamic) for `mac`; true if there was one.
    pub fn remove(&mut self, mac: MacAddr) -> bool {
        match self.place(mac) {
            Place::Found { idx, .. } => {
                self.remove_at(idx);
                true
            }
            _ => false,
        }
    }

    /// Removes dynamic entries not seen for more than `max_age` seconds at
    /// `now`; returns how many. A last-seen slightly ahead of `now` (a worker
    /// with a newer clock reading) counts as fresh.
    pub fn age(&mut self, now: u32, max_age: u32) -> usize {
        let mut removed = 0;
        for idx in 0..self.shared.slots.len() {
            if let Word::Live {
                is_static: false, ..
            } = self.load(idx)
            {
                let seen = self.shared.slot(idx).last_seen.load(Ordering::Relaxed);
                let age = now.wrapping_sub(seen);
                if age > max_age && age < (1 << 31) {
                    self.remove_at(idx);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Removes the dynamic entries on `port` (link down, port removed from
    /// its bridge); returns how many.
    pub fn flush_port(&mut self, port: PortId) -> usize {
        let mut removed = 0;
        for idx in 0..self.shared.slots.len() {
            if let Word::Live {
                port: p,
                is_static: false,
                ..
            } = self.load(idx)
            {
                if p == port {
                    self.remove_at(idx);
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Every live entry, in slot order (allocates: control path only).
    pub fn entries(&self) -> Vec<MacEntry> {
        let mut out = Vec::with_capacity(self.len);
        for (idx, slot) in self.shared.slots.iter().enumerate() {
            if let Word::Live {
                mac,
                port,
                is_static,
            } = self.load(idx)
            {
                out.push(MacEntry {
                    mac: MacAddr::from_u64(mac),
                    port,
                    is_static,
                    last_seen: slot.last_seen.load(Ordering::Relaxed),
                });
            }
        }
        out
    }

    /// The port of `mac`, as a reader would see it.
    pub fn lookup(&self, mac: MacAddr) -> Option<PortId> {
        self.shared.find(mac).map(|(_, port, _)| port)
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no live entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.shared.slots.len()
    }

    /// A new reader for a worker.
    pub fn reader(&self) -> MacTableReader {
        MacTableReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// How many learns moved a MAC from one port to another.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// How many inserts found no free slot.
    pub fn full(&self) -> u64 {
        self.full
    }

    #[cfg(test)]
    fn tombstones(&self) -> usize {
        (0..self.capacity())
            .filter(|&i| self.load(i) == Word::Tombstone)
            .count()
    }

    #[cfg(test)]
    fn slot_of(&self, mac: MacAddr) -> Option<usize> {
        self.shared.find(mac).map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;

    /// Distinct unicast MACs for distinct `n`, scrambled (a bijection) so
    /// that they collide in the table like real addresses do; sequential
    /// ones would spread too evenly to exercise probing.
    fn mac(n: u32) -> MacAddr {
        let b = n.wrapping_mul(0x2545_f491).rotate_left(13).to_be_bytes();
        MacAddr([0x02, 0x00, b[0], b[1], b[2], b[3]])
    }

    fn same_home_macs(w: &MacTableWriter, count: usize) -> Vec<MacAddr> {
        let home = w.shared.home(mac(0).to_u64());
        (0..)
            .map(mac)
            .filter(|m| w.shared.home(m.to_u64()) == home)
            .take(count)
            .collect()
    }

    #[test]
    fn reader_is_shareable_and_writer_is_sendable() {
        fn send_sync_clone<T: Send + Sync + Clone>() {}
        fn send<T: Send>() {}
        send_sync_clone::<MacTableReader>();
        send::<MacTableWriter>();
    }

    #[test]
    fn capacity_rounds_up_to_power_of_two() {
        let (w, r) = mac_table(1000);
        assert_eq!(w.capacity(), 1024);
        assert_eq!(r.capacity(), 1024);
        assert_eq!(mac_table(0).0.capacity(), 1);
    }

    #[test]
    fn learn_then_lookup_and_refresh() {
        let (mut w, r) = mac_table(64);
        assert_eq!(w.learn(mac(1), PortId(3), 10), LearnOutcome::Learned);
        assert_eq!(r.lookup(mac(1)), Some(PortId(3)));
        assert_eq!(r.lookup(mac(2)), None);
        assert_eq!(w.learn(mac(1), PortId(3), 20), LearnOutcome::Refreshed);
        assert_eq!(w.entries()[0].last_seen, 20);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn learn_rejects_multicast_zero_and_wide_ports() {
        let (mut w, _) = mac_table(64);
        assert_eq!(
            w.learn(MacAddr::BROADCAST, PortId(0), 0),
            LearnOutcome::Invalid
        );
        assert_eq!(
            w.learn(MacAddr([1, 0, 0x5e, 0, 0, 1]), PortId(0), 0),
            LearnOutcome::Invalid
        );
        assert_eq!(w.learn(MacAddr::ZERO, PortId(0), 0), LearnOutcome::Invalid);
        assert_eq!(w.learn(mac(1), PortId(4096), 0), LearnOutcome::Invalid);
        assert_eq!(w.add_static(mac(1), PortId(4096)), InsertOutcome::Invalid);
        assert_eq!(w.learn(mac(1), PortId(4095), 0), LearnOutcome::Learned);
        assert_eq!(w.lookup(mac(1)), Some(PortId(4095)));
        assert!(!w.is_empty() && w.len() == 1);
    }

    #[test]
    fn check_source_known_refreshes_last_seen() {
        let (mut w, r) = mac_table(64);
        w.learn(mac(1), PortId(1), 5);
        assert_eq!(r.check_source(mac(1), PortId(1), 9), SourceCheck::Known);
        assert_eq!(w.entries()[0].last_seen, 9);
        assert_eq!(r.check_source(mac(2), PortId(1), 9), SourceCheck::Unknown);
        assert_eq!(
            r.check_source(mac(1), PortId(2), 9),
            SourceCheck::Moved { from: PortId(1) }
        );
    }

    #[test]
    fn age_removes_only_stale_dynamic_entries() {
        let (mut w, r) = mac_table(64);
        w.learn(mac(1), PortId(1), 0);
        w.learn(mac(2), PortId(1), 0);
        w.add_static(mac(3), PortId(2));
        r.check_source(mac(2), PortId(1), 250);
        assert_eq!(w.age(300, 300), 0);
        assert_eq!(w.age(301, 300), 1);
        assert_eq!(r.lookup(mac(1)), None);
        assert_eq!(r.lookup(mac(2)), Some(PortId(1)));
        assert_eq!(w.age(1_000_000, 300), 1);
        assert_eq!(r.lookup(mac(3)), Some(PortId(2)));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn last_seen_ahead_of_now_does_not_age() {
        let (mut w, r) = mac_table(64);
        w.learn(mac(1), PortId(1), 100);
        r.check_source(mac(1), PortId(1), 101);
        assert_eq!(w.age(100, 0), 0);
    }

    #[test]
    fn move_is_detected_and_counted() {
        let (mut w, r) = mac_table(64);
        w.learn(mac(1), PortId(1), 0);
        assert_eq!(
            w.learn(mac(1), PortId(2), 1),
            LearnOutcome::Moved { from: PortId(1) }
        );
        assert_eq!(r.lookup(mac(1)), Some(PortId(2)));
        assert_eq!(w.moves(), 1);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn static_wins_over_learning() {
        let (mut w, r) = mac_table(64);
        w.learn(mac(1), PortId(1), 0);
        assert_eq!(w.add_static(mac(1), PortId(5)), InsertOutcome::Replaced);
        assert_eq!(w.learn(mac(1), PortId(2), 1), LearnOutcome::StaticKept);
        assert_eq!(r.lookup(mac(1)), Some(PortId(5)));
        assert_eq!(
            r.check_source(mac(1), PortId(2), 1),
            SourceCheck::Static { port: PortId(5) }
        );
        assert_eq!(w.flush_port(PortId(5)), 0);
        assert_eq!(w.moves(), 0);
        assert_eq!(w.add_static(mac(9), PortId(5)), InsertOutcome::Inserted);
        assert!(w.entries().iter().all(|e| e.is_static));
    }

    #[test]
    fn full_table_returns_full_and_changes_nothing() {
        let (mut w, r) = mac_table(32);
        for i in 0..32 {
            assert_eq!(w.learn(mac(i), PortId(1), 0), LearnOutcome::Learned);
        }
        let before = w.entries();
        assert_eq!(w.learn(mac(100), PortId(2), 1), LearnOutcome::Full);
        assert_eq!(w.add_static(mac(101), PortId(2)), InsertOutcome::Full);
        assert_eq!(w.full(), 2);
        assert_eq!(w.entries(), before);
        assert_eq!(r.lookup(mac(100)), None);
        // Existing entries can still be refreshed and moved.
        assert_eq!(w.learn(mac(5), PortId(1), 2), LearnOutcome::Refreshed);
        assert_eq!(
            w.learn(mac(6), PortId(3), 2),
            LearnOutcome::Moved { from: PortId(1) }
        );
        // Freeing one slot makes room again.
        assert!(w.remove(mac(0)));
        assert_eq!(w.learn(mac(100), PortId(2), 3), LearnOutcome::Learned);
    }

    #[test]
    fn remove_and_flush_port() {
        let (mut w, r) = mac_table(64);
        w.learn(mac(1), PortId(1), 0);
        w.learn(mac(2), PortId(1), 0);
        w.learn(mac(3), PortId(2), 0);
        w.add_static(mac(4), PortId(1));
        assert!(w.remove(mac(3)));
        assert!(!w.remove(mac(3)));
        assert_eq!(r.lookup(mac(3)), None);
        assert_eq!(w.flush_port(PortId(1)), 2);
        assert_eq!(r.lookup(mac(4)), Some(PortId(1)));
        assert!(w.remove(mac(4)));
        assert!(w.is_empty());
    }

    #[test]
    fn tombstone_keeps_chain_and_is_reused() {
        let (mut w, r) = mac_table(64);
        let m = same_home_macs(&w, 3);
        w.learn(m[0], PortId(1), 0);
        w.learn(m[1], PortId(2), 0);
        let first = w.slot_of(m[0]).unwrap();
        assert_eq!(w.slot_of(m[1]), Some((first + 1) & 63));
        assert!(w.remove(m[0]));
        // m[1] lives past the tombstone and is still found.
        assert_eq!(w.tombstones(), 1);
        assert_eq!(r.lookup(m[1]), Some(PortId(2)));
        // A new MAC with the same home reuses the tombstone.
        assert_eq!(w.learn(m[2], PortId(3), 0), LearnOutcome::Learned);
        assert_eq!(w.slot_of(m[2]), Some(first));
        assert_eq!(w.tombstones(), 0);
    }

    #[test]
    fn trailing_tombstones_become_empty() {
        let (mut w, _) = mac_table(64);
        let m = same_home_macs(&w, 3);
        for (i, x) in m.iter().enumerate() {
            w.learn(*x, PortId(i as u16), 0);
        }
        assert!(w.remove(m[0]));
        assert!(w.remove(m[1]));
        assert_eq!(w.tombstones(), 2);
        assert!(w.remove(m[2]));
        assert_eq!(w.tombstones(), 0);
        assert!(w.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Learn(u32, u16),
        Static(u32, u16),
        Remove(u32),
        Flush(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..150u32, 0..4u16).prop_map(|(m, p)| Op::Learn(m, p)),
            1 => (0..150u32, 0..4u16).prop_map(|(m, p)| Op::Static(m, p)),
            4 => (0..150u32).prop_map(Op::Remove),
            1 => (0..4u16).prop_map(Op::Flush),
        ]
    }

    proptest! {
        #[test]
        fn matches_hashmap_model(ops in proptest::collection::vec(op(), 1..400)) {
            // 128 slots for up to 150 MACs, so Full happens too.
            let (mut w, r) = mac_table(128);
            let mut model: HashMap<MacAddr, (PortId, bool)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Learn(m, p) => {
                        let (m, p) = (mac(m), PortId(p));
                        let out = w.learn(m, p, 0);
                        match model.get(&m).copied() {
                            Some((_, true)) => prop_assert_eq!(out, LearnOutcome::StaticKept),
                            Some((old, false)) if old == p => prop_assert_eq!(out, LearnOutcome::Refreshed),
                            Some((old, false)) => {
                                prop_assert_eq!(out, LearnOutcome::Moved { from: old });
                                model.insert(m, (p, false));
                            }
                            None => {
                                if out == LearnOutcome::Learned {
                                    model.insert(m, (p, false));
                                } else {
                                    prop_assert_eq!(out, LearnOutcome::Full);
                                }
                            }
                        }
                    }
                    Op::Static(m, p) => {
                        let (m, p) = (mac(m), PortId(p));
                        let out = w.add_static(m, p);
                        let existed = model.contains_key(&m);
                        match out {
                            InsertOutcome::Replaced => prop_assert!(existed),
                            InsertOutcome::Inserted => prop_assert!(!existed),
                            other => {
                                prop_assert!(!existed);
                                prop_assert_eq!(other, InsertOutcome::Full);
                            }
                        }
                        if out != InsertOutcome::Full {
                            model.insert(m, (p, true));
                        }
                    }
                    Op::Remove(m) => {
                        let m = mac(m);
                        prop_assert_eq!(w.remove(m), model.remove(&m).is_some());
                    }
                    Op::Flush(p) => {
                        let before = model.len();
                        model.retain(|_, (port, st)| *st || port.0 != p);
                        prop_assert_eq!(w.flush_port(PortId(p)), before - model.len());
                    }
                }
                prop_assert_eq!(w.len(), model.len());
            }
            for m in 0..150 {
                prop_assert_eq!(r.lookup(mac(m)), model.get(&mac(m)).map(|e| e.0));
            }
            prop_assert_eq!(w.entries().len(), model.len());
        }
    }

    #[test]
    fn concurrent_readers_never_miss_stable_entries() {
        const STABLE: u32 = 200;
        const CHURN: u32 = 600;
        let (mut w, r) = mac_table(1024);
        // Churn entries first, so that many stable entries sit behind churn
        // entries in their probe chains: removing those must not hide them.
        for i in 0..CHURN {
            w.learn(mac(STABLE + i), PortId(16), 0);
        }
        for i in 0..STABLE {
            assert_eq!(
                w.learn(mac(i), PortId((i % 16) as u16), 0),
                LearnOutcome::Learned
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let r = r.clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut rounds = 0u64;
                    while !stop.load(Ordering::Relaxed) || rounds == 0 {
                        for i in 0..STABLE {
                            let want = PortId((i % 16) as u16);
                            assert_eq!(r.lookup(mac(i)), Some(want), "stable mac {i} missed");
                            assert_eq!(r.check_source(mac(i), want, 1), SourceCheck::Known);
                        }
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        let writer = std::thread::spawn(move || {
            let mut x: u32 = 12345;
            for step in 0..300_000u32 {
                // xorshift: deterministic churn around the stable entries.
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let m = mac(STABLE + x % CHURN);
                if (x >> 20) & 1 == 0 {
                    w.learn(m, PortId(16 + ((x >> 8) as u16 & 0x3f)), step);
                } else {
                    w.remove(m);
                }
                if step % 5000 == 0 {
                    w.flush_port(PortId(16 + (step / 5000) as u16 % 64));
                }
            }
            w
        });
        let w = writer.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        for t in readers {
            assert!(t.join().unwrap() > 0);
        }
        for i in 0..STABLE {
            assert_eq!(w.lookup(mac(i)), Some(PortId((i % 16) as u16)));
        }
    }
}
