//! The flow table: [`FlowKey`] -> `Arc<FlowEntry<R>>`, one writer, lock-free
//! readers.
//!
//! What it does: a bounded, pre-sized, open-addressing hash table (linear
//! probing over a bounded window) that the slow path writes ([`FlowTableWriter`],
//! the only writer: `Send`, not `Clone`) and that every worker reads per burst
//! ([`FlowTableReader`], `Clone + Send + Sync`). No lock and no `unsafe`: the
//! slot words are `std::sync::atomic`, the entry pointers are
//! [`arc_swap::ArcSwapOption`].
//!
//! # Layout
//!
//! One 16-byte, 16-aligned slot per bucket (four to a cache line), so a hit
//! at the home slot costs one line for the slot and one for the entry:
//!
//! ```text
//! slot: | tag: AtomicU64 | entry: ArcSwapOption<FlowEntry<R>> (one pointer) |
//! tag:  0 = empty, 1 = tombstone, otherwise hash(key) | 1 << 63 (live)
//! ```
//!
//! The tag holds 63 bits of the key's hash, so a reader rejects a slot of
//! another key without touching its entry; it loads the entry (an `arc-swap`
//! guard: no reference-count traffic, no allocation) only on a tag match and
//! then compares the full key, so a tag collision is never a wrong answer.
//! Slots: `next_power_of_two(capacity * 3 / 2)` (at least 8), so a full
//! table is 33 % to 67 % loaded. Why not 5/4: linear probing at 80 % load
//! grows clusters past any reasonable probe bound (measured: a random fill of
//! 2^20 slots to 80 % hits a 256-slot window full of live entries before
//! capacity), while at 2/3 the longest displacement measured is under 100. At a
//! capacity of 2^20 that is 2^21 slots, 32 bytes of slot array per entry (48
//! at worst, for a capacity just above a power of two times 2/3), plus one
//! `Arc` allocation per live entry (16 bytes of counts +
//! `size_of::<FlowEntry<R>>()`, 48 for a `u64` rule: 64 in all).
//!
//! # Writes (slow path only)
//!
//! * **insert** of a new key: the entry pointer is stored first, then the tag
//!   is published with `Release`; the first tombstone or empty slot of the
//!   key's probe window is used. [`FlowInsert::Full`] when the table already
//!   holds `capacity()` entries or the whole window is live: counted, nothing
//!   changes.
//! * **replace** (insert of a present key): the entry pointer is swapped in
//!   place; the tag does not change. The old entry is retired.
//! * **remove**: the tag becomes a tombstone, then the pointer is cleared and
//!   the old entry retired. A run of tombstones that ends at an empty slot is
//!   turned back into empty slots: no live entry's probe path can cross it
//!   (such a path would also cross that empty slot). Entries never move.
//!
//! # What a reader can see
//!
//! * Never a torn or freed entry: it gets a complete, immutable
//!   `FlowEntry<R>` (old or new) or nothing, and the entry stays alive as
//!   long as the reader holds it, whatever the writer does meanwhile.
//! * A key that stays in the table (inserted before the lookup started, in
//!   the happens-before sense, and not removed) is **always found**, also
//!   while it is being replaced (the reader gets the old or the new entry)
//!   and while other keys are inserted and removed around it: tags on its
//!   probe path are never emptied and its slot never changes.
//! * A key being inserted or removed concurrently may be found or missed; a
//!   key removed and re-inserted during the lookup may be missed once
//!   (transient miss: the packet goes to the slow path, never to a wrong
//!   rule).
//! * A key that is not in the table is never found.
//!
//! # Reclamation and the reader contract
//!
//! Removed and replaced entries go to the writer's retire list; the writer
//! drops its reference only in [`FlowTableWriter::reclaim`], once the entry
//! has been retired for at least `grace_ms` of the caller's clock (default
//! [`DEFAULT_GRACE_MS`]). Time is an input: an entry retired since the last
//! `reclaim` call is stamped with the `now_ms` of the next call, and dropped
//! by the first call at or after `stamp + grace_ms`.
//!
//! **Readers hold an entry ([`FlowRef`], an `Arc` from
//! [`FlowTableReader::lookup`], or the reference inside a closure) for at most
//! one burst, well under `grace_ms`.** Memory safety does not depend on it
//! (a held entry stays valid forever), but then the last reference may be
//! dropped, and the entry (and its `R`) freed, on the worker's hot path.
//!
//! What it must not do: allocate, lock or block on the read side (the first
//! lookup on a thread registers it with `arc-swap`: one allocation per thread,
//! so do one warm-up lookup before the loop); grow; relocate entries; drop a
//! retired entry before its grace period (dropping the writer drops its
//! retire list at once). A reader holds at most 8 guards for free (the
//! per-thread `arc-swap` debt slots); a ninth held at the same time costs one
//! reference-count increment, still lock-free: that is why
//! [`FlowTableReader::for_each_bulk`] exists.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwapOption, Guard};

use super::key::{hash_with_seed, FlowKey, DEFAULT_SEED};

/// The longest probe sequence, in slots (64 cache lines). Bounds the cost of
/// a miss; at the highest load factor (2/3) a table filled with random keys
/// to capacity stays well inside it (see the tests), so `Full` before
/// `capacity()` takes keys aimed at one window (hence the seed).
pub const PROBE_LEN: usize = 256;
/// The burst size the bulk lookups work in (hashes kept on the stack).
pub const MAX_BURST: usize = 32;
/// The default grace period before a retired entry is dropped.
pub const DEFAULT_GRACE_MS: u64 = 100;
/// The largest capacity a table can have; larger requests are clamped.
pub const MAX_CAPACITY: usize = 1 << 30;

const EMPTY: u64 = 0;
const TOMBSTONE: u64 = 1;
const LIVE: u64 = 1 << 63;

#[inline]
fn live_tag(h: u64) -> u64 {
    h | LIVE
}

/// One flow: its key and the caller's immutable rule.
///
/// `R` may hold atomics for per-flow counters and flags; everything else in
/// it is fixed for the entry's life (a change is a replace).
#[derive(Debug)]
pub struct FlowEntry<R> {
    /// The key the entry is stored under.
    pub key: FlowKey,
    /// What to do with the flow.
    pub rule: R,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowInsert {
    /// The key was new and is now in the table.
    Inserted,
    /// The key was present; its entry was replaced (the old one retired).
    Replaced,
    /// The table holds `capacity()` entries, or the key's probe window is all
    /// live: nothing changed, the refusal is counted in
    /// [`FlowTableWriter::full_count`].
    Full,
}

/// How a table is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTableConfig {
    /// Entries the table accepts (clamped to [`MAX_CAPACITY`]).
    pub capacity: usize,
    /// Minimum time a retired entry is kept before the writer drops it.
    pub grace_ms: u64,
    /// Hash seed. Give a random one (an input, like time) to a table that
    /// keys untrusted traffic.
    pub seed: u64,
}

impl FlowTableConfig {
    /// `capacity` entries, [`DEFAULT_GRACE_MS`], [`DEFAULT_SEED`].
    pub fn new(capacity: usize) -> FlowTableConfig {
        FlowTableConfig {
            capacity,
            grace_ms: DEFAULT_GRACE_MS,
            seed: DEFAULT_SEED,
        }
    }
}

#[repr(align(16))]
struct Slot<R> {
    tag: AtomicU64,
    entry: ArcSwapOption<FlowEntry<R>>,
}

struct Shared<R> {
    slots: Box<[Slot<R>]>,
    mask: usize,
    probe: usize,
    seed: u64,
}

/// Where a key is, for the writer.
enum Locate {
    Found(usize),
    /// Not present; the slot an insert would use, if any.
    Absent(Option<usize>),
}

type EntryGuard<R> = Guard<Option<Arc<FlowEntry<R>>>>;

impl<R> Shared<R> {
    #[inline]
    fn hash(&self, key: &FlowKey) -> u64 {
        hash_with_seed(key, self.seed)
    }

    #[inline]
    fn slot(&self, i: usize) -> &Slot<R> {
        &self.slots[i & self.mask]
    }

    /// The reader's probe, given the tag already loaded from the home slot.
    #[inline]
    fn find_from(&self, key: &FlowKey, h: u64, home_tag: u64) -> Option<EntryGuard<R>> {
        let want = live_tag(h);
        let home = h as usize;
        let mut t = home_tag;
        let mut i = 0;
        loop {
            if t == want {
                let g = self.slot(home.wrapping_add(i)).entry.load();
                if matches!(&*g, Some(e) if e.key == *key) {
                    return Some(g);
                }
            } else if t == EMPTY {
                return None;
            }
            i += 1;
            if i == self.probe {
                return None;
            }
            t = self.slot(home.wrapping_add(i)).tag.load(Ordering::Acquire);
        }
    }

    #[inline]
    fn find(&self, key: &FlowKey) -> Option<EntryGuard<R>> {
        let h = self.hash(key);
        let t = self.slot(h as usize).tag.load(Ordering::Acquire);
        self.find_from(key, h, t)
    }

    /// The writer's probe: the key's slot, or the first reusable one.
    fn locate(&self, key: &FlowKey, h: u64) -> Locate {
        let want = live_tag(h);
        let home = h as usize;
        let mut free = None;
        for i in 0..self.probe {
            let idx = home.wrapping_add(i) & self.mask;
            let slot = &self.slots[idx];
            match slot.tag.load(Ordering::Relaxed) {
                EMPTY => return Locate::Absent(free.or(Some(idx))),
                TOMBSTONE => {
                    free = free.or(Some(idx));
                }
                t if t == want => {
                    if matches!(&*slot.entry.load(), Some(e) if e.key == *key) {
                        return Locate::Found(idx);
                    }
                }
                _ => {}
            }
        }
        Locate::Absent(free)
    }
}

/// Builds a table of `capacity` entries with the default grace period and
/// seed. See [`flow_table_with`].
pub fn flow_table<R: Send + Sync + 'static>(
    capacity: usize,
) -> (FlowTableWriter<R>, FlowTableReader<R>) {
    flow_table_with(FlowTableConfig::new(capacity))
}

/// Builds a table: the one writer, and a reader to clone for each worker.
/// All memory for the slots is allocated here; later only entries are.
pub fn flow_table_with<R: Send + Sync + 'static>(
    config: FlowTableConfig,
) -> (FlowTableWriter<R>, FlowTableReader<R>) {
    let capacity = config.capacity.min(MAX_CAPACITY);
    let n = (capacity + capacity / 2).max(8).next_power_of_two();
    let slots: Box<[Slot<R>]> = (0..n)
        .map(|_| Slot {
            tag: AtomicU64::new(EMPTY),
            entry: ArcSwapOption::empty(),
        })
        .collect();
    let shared = Arc::new(Shared {
        slots,
        mask: n - 1,
        probe: PROBE_LEN.min(n),
        seed: config.seed,
    });
    let writer = FlowTableWriter {
        shared: Arc::clone(&shared),
        len: 0,
        capacity,
        full: 0,
        grace_ms: config.grace_ms,
        pending: Vec::new(),
        retired: VecDeque::new(),
    };
    (writer, FlowTableReader { shared })
}

/// A held entry: derefs to [`FlowEntry`]. Holding it costs no
/// reference-count traffic (up to 8 per thread at once; see the module
/// docs). Hold it for one burst at most.
pub struct FlowRef<R>(EntryGuard<R>);

impl<R> FlowRef<R> {
    /// An owned reference (one reference-count increment, unless this guard
    /// already had to take one).
    pub fn into_arc(self) -> Arc<FlowEntry<R>> {
        match Guard::into_inner(self.0) {
            Some(e) => e,
            None => unreachable!("a FlowRef is only built from a loaded entry"),
        }
    }
}

impl<R> Deref for FlowRef<R> {
    type Target = FlowEntry<R>;

    #[inline]
    fn deref(&self) -> &FlowEntry<R> {
        match &*self.0 {
            Some(e) => e,
            // A guard never changes what it points to, and FlowRef is only
            // built from a `Some` guard.
            None => unreachable!("a FlowRef is only built from a loaded entry"),
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for FlowRef<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// The workers' handle: lock-free, allocation-free lookups.
pub struct FlowTableReader<R> {
    shared: Arc<Shared<R>>,
}

impl<R> Clone for FlowTableReader<R> {
    fn clone(&self) -> Self {
        FlowTableReader {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R> fmt::Debug for FlowTableReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowTableReader")
            .field("slots", &self.shared.slots.len())
            .finish()
    }
}

impl<R> FlowTableReader<R> {
    /// The entry of `key`, held by a guard (no reference-count traffic).
    #[inline]
    pub fn get(&self, key: &FlowKey) -> Option<FlowRef<R>> {
        self.shared.find(key).map(FlowRef)
    }

    /// Runs `f` on the entry of `key`, if present, and returns its result.
    #[inline]
    pub fn with<F, T>(&self, key: &FlowKey, f: F) -> Option<T>
    where
        F: FnOnce(&FlowEntry<R>) -> T,
    {
        self.shared.find(key).and_then(|g| g.as_deref().map(f))
    }

    /// An owned reference to the entry of `key`: one atomic increment on the
    /// entry's shared counter (and a decrement when dropped). Prefer
    /// [`FlowTableReader::get`] or [`FlowTableReader::with`] per packet.
    pub fn lookup(&self, key: &FlowKey) -> Option<Arc<FlowEntry<R>>> {
        self.shared.find(key).and_then(Guard::into_inner)
    }

    /// True if `key` is in the table.
    #[inline]
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.shared.find(key).is_some()
    }

    /// Looks up `keys[i]` into `out[i]` (for `i < min(keys.len(), out.len())`)
    /// and returns how many were found.
    ///
    /// Per chunk of [`MAX_BURST`] keys: first every hash is computed and every
    /// home slot loaded, so the cache misses of the whole burst overlap
    /// (independent loads, the out-of-order core's prefetch: an explicit
    /// `_mm_prefetch` needs `unsafe`, which this crate forbids); then each
    /// key is resolved. Holding more than 8 results at once costs one
    /// reference-count increment per extra hit; see
    /// [`FlowTableReader::for_each_bulk`].
    pub fn lookup_bulk(&self, keys: &[FlowKey], out: &mut [Option<FlowRef<R>>]) -> usize {
        let n = keys.len().min(out.len());
        let mut hits = 0;
        for (kc, oc) in keys[..n]
            .chunks(MAX_BURST)
            .zip(out[..n].chunks_mut(MAX_BURST))
        {
            let mut hashes = [0u64; MAX_BURST];
            let mut tags = [0u64; MAX_BURST];
            self.stage(kc, &mut hashes, &mut tags);
            for (i, (k, o)) in kc.iter().zip(oc.iter_mut()).enumerate() {
                *o = self.shared.find_from(k, hashes[i], tags[i]).map(FlowRef);
                hits += usize::from(o.is_some());
            }
        }
        hits
    }

    /// Like [`FlowTableReader::lookup_bulk`], but calls `f(i, entry)` for each
    /// key in order, holding one entry at a time: never any reference-count
    /// traffic, whatever the burst size.
    pub fn for_each_bulk<F>(&self, keys: &[FlowKey], mut f: F)
    where
        F: FnMut(usize, Option<&FlowEntry<R>>),
    {
        for (c, kc) in keys.chunks(MAX_BURST).enumerate() {
            let mut hashes = [0u64; MAX_BURST];
            let mut tags = [0u64; MAX_BURST];
            self.stage(kc, &mut hashes, &mut tags);
            for (i, k) in kc.iter().enumerate() {
                let g = self.shared.find_from(k, hashes[i], tags[i]);
                f(c * MAX_BURST + i, g.as_ref().and_then(|g| g.as_deref()));
            }
        }
    }

    /// Stage one of a bulk lookup: hashes, and the home slot of each key
    /// loaded (`Acquire`, as the probe itself would).
    #[inline]
    fn stage(&self, keys: &[FlowKey], hashes: &mut [u64; MAX_BURST], tags: &mut [u64; MAX_BURST]) {
        for (i, k) in keys.iter().enumerate() {
            hashes[i] = self.shared.hash(k);
        }
        for i in 0..keys.len() {
            tags[i] = self
                .shared
                .slot(hashes[i] as usize)
                .tag
                .load(Ordering::Acquire);
        }
    }
}

/// The slow path's handle: the only one that changes the table.
pub struct FlowTableWriter<R> {
    shared: Arc<Shared<R>>,
    len: usize,
    capacity: usize,
    full: u64,
    grace_ms: u64,
    /// Retired since the last `reclaim`, not yet stamped.
    pending: Vec<Arc<FlowEntry<R>>>,
    /// Retired, with the `now_ms` of the first `reclaim` after retirement.
    retired: VecDeque<(u64, Arc<FlowEntry<R>>)>,
}

impl<R> fmt::Debug for FlowTableWriter<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowTableWriter")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("slots", &self.shared.slots.len())
            .field("full_count", &self.full)
            .field("retired", &self.retired_len())
            .finish()
    }
}

impl<R> FlowTableWriter<R> {
    /// Inserts or replaces the entry of `key`.
    ///
    /// Returns [`FlowInsert::Full`] (and counts it) when the key is new and
    /// the table holds `capacity()` entries or its probe window is all live;
    /// the table is then unchanged and `rule` is dropped.
    pub fn insert(&mut self, key: FlowKey, rule: R) -> FlowInsert {
        let h = self.shared.hash(&key);
        match self.shared.locate(&key, h) {
            Locate::Found(idx) => {
                let new = Arc::new(FlowEntry { key, rule });
                if let Some(old) = self.shared.slots[idx].entry.swap(Some(new)) {
                    self.pending.push(old);
                }
                FlowInsert::Replaced
            }
            Locate::Absent(Some(idx)) if self.len < self.capacity => {
                let slot = &self.shared.slots[idx];
                if let Some(old) = slot.entry.swap(Some(Arc::new(FlowEntry { key, rule }))) {
                    // Removal clears the pointer; keep the invariant anyway.
                    self.pending.push(old);
                }
                slot.tag.store(live_tag(h), Ordering::Release);
                self.len += 1;
                FlowInsert::Inserted
            }
            Locate::Absent(_) => {
                self.full += 1;
                FlowInsert::Full
            }
        }
    }

    /// Removes the entry of `key`; true if there was one. The entry is
    /// retired, not dropped: see [`FlowTableWriter::reclaim`].
    pub fn remove(&mut self, key: &FlowKey) -> bool {
        let h = self.shared.hash(key);
        match self.shared.locate(key, h) {
            Locate::Found(idx) => {
                self.remove_at(idx);
                true
            }
            Locate::Absent(_) => false,
        }
    }

    fn remove_at(&mut self, idx: usize) {
        let slot = &self.shared.slots[idx];
        slot.tag.store(TOMBSTONE, Ordering::Release);
        if let Some(old) = slot.entry.swap(None) {
            self.pending.push(old);
        }
        self.len -= 1;
        self.sweep_tombstones(idx);
    }

    /// Turns the run of tombstones ending at `idx` back into empty slots if
    /// the slot after `idx` is empty (no live probe path can cross them).
    fn sweep_tombstones(&self, idx: usize) {
        let s = &self.shared;
        if s.slot(idx.wrapping_add(1)).tag.load(Ordering::Relaxed) != EMPTY {
            return;
        }
        let mut j = idx;
        for _ in 0..s.slots.len() {
            let tag = &s.slot(j).tag;
            if tag.load(Ordering::Relaxed) != TOMBSTONE {
                break;
            }
            tag.store(EMPTY, Ordering::Release);
            j = j.wrapping_sub(1);
        }
    }

    /// Removes every entry for which `keep` returns false (aging, flushes)
    /// and returns how many were removed. Entries are retired.
    pub fn retain<F>(&mut self, mut keep: F) -> usize
    where
        F: FnMut(&FlowEntry<R>) -> bool,
    {
        let mut removed = 0;
        for idx in 0..self.shared.slots.len() {
            let slot = &self.shared.slots[idx];
            if slot.tag.load(Ordering::Relaxed) & LIVE == 0 {
                continue;
            }
            let drop_it = matches!(&*slot.entry.load(), Some(e) if !keep(e));
            if drop_it {
                self.remove_at(idx);
                removed += 1;
            }
        }
        removed
    }

    /// The entry of `key` (slow path: an owned reference).
    pub fn get(&self, key: &FlowKey) -> Option<Arc<FlowEntry<R>>> {
        self.shared.find(key).and_then(Guard::into_inner)
    }

    /// True if `key` is in the table.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.shared.find(key).is_some()
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries the table accepts before inserts return [`FlowInsert::Full`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots allocated (a power of two, 1.5 to 3 times the capacity).
    pub fn slots(&self) -> usize {
        self.shared.slots.len()
    }

    /// Inserts refused with [`FlowInsert::Full`] since the table was built.
    pub fn full_count(&self) -> u64 {
        self.full
    }

    /// The grace period, in milliseconds.
    pub fn grace_ms(&self) -> u64 {
        self.grace_ms
    }

    /// Every live entry, in slot order (slow path: collects).
    pub fn iter(&self) -> impl Iterator<Item = Arc<FlowEntry<R>>> {
        let v: Vec<_> = self
            .shared
            .slots
            .iter()
            .filter(|s| s.tag.load(Ordering::Relaxed) & LIVE != 0)
            .filter_map(|s| s.entry.load_full())
            .collect();
        v.into_iter()
    }

    /// Another reader handle.
    pub fn reader(&self) -> FlowTableReader<R> {
        FlowTableReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Drops the retired entries that have waited `grace_ms` (see the module
    /// docs for how retirement is stamped) and returns how many it dropped.
    /// Call it from the slow path's loop, with a monotonic `now_ms`.
    pub fn reclaim(&mut self, now_ms: u64) -> usize {
        let mut dropped = 0;
        while let Some((stamp, _)) = self.retired.front() {
            if stamp.saturating_add(self.grace_ms) > now_ms {
                break;
            }
            self.retired.pop_front();
            dropped += 1;
        }
        self.retired
            .extend(self.pending.drain(..).map(|e| (now_ms, e)));
        dropped
    }

    /// Entries retired and not yet dropped.
    pub fn retired_len(&self) -> usize {
        self.pending.len() + self.retired.len()
    }

    #[cfg(test)]
    fn count_tags(&self, want: u64) -> usize {
        self.shared
            .slots
            .iter()
            .filter(|s| s.tag.load(Ordering::Relaxed) == want)
            .count()
    }

    /// The longest distance from a live entry's home slot to its slot.
    #[cfg(test)]
    fn max_displacement(&self) -> usize {
        let s = &self.shared;
        let mut max = 0;
        for (idx, slot) in s.slots.iter().enumerate() {
            let t = slot.tag.load(Ordering::Relaxed);
            if t & LIVE != 0 {
                let home = (t as usize) & s.mask;
                max = max.max(idx.wrapping_sub(home) & s.mask);
            }
        }
        max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::{PROTO_TCP, PROTO_UDP};
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    fn k4(i: u32) -> FlowKey {
        FlowKey::v4(
            Ipv4Addr::from(0xc612_0000 | (i >> 16)),
            (i & 0xffff) as u16,
            Ipv4Addr::new(198, 19, 0, 1),
            80,
            PROTO_TCP,
        )
    }

    fn k6(i: u32) -> FlowKey {
        let mut a = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0).octets();
        a[12..].copy_from_slice(&i.to_be_bytes());
        FlowKey::v6(
            Ipv6Addr::from(a),
            40000,
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1),
            443,
            PROTO_UDP,
        )
    }

    #[test]
    fn insert_lookup_replace_remove() {
        let (mut w, r) = flow_table::<u32>(16);
        assert_eq!(w.capacity(), 16);
        assert_eq!(w.slots(), 32);
        assert_eq!(w.insert(k4(1), 10), FlowInsert::Inserted);
        assert_eq!(w.insert(k4(2), 20), FlowInsert::Inserted);
        assert_eq!(r.with(&k4(1), |e| e.rule), Some(10));
        assert_eq!(r.get(&k4(2)).map(|e| e.rule), Some(20));
        assert_eq!(r.lookup(&k4(2)).map(|e| e.key), Some(k4(2)));
        assert_eq!(w.get(&k4(1)).map(|e| e.rule), Some(10));
        assert!(r.get(&k4(3)).is_none());
        assert_eq!(w.len(), 2);

        assert_eq!(w.insert(k4(1), 11), FlowInsert::Replaced);
        assert_eq!(r.with(&k4(1), |e| e.rule), Some(11));
        assert_eq!(w.len(), 2);
        assert_eq!(w.retired_len(), 1);

        assert!(w.remove(&k4(1)));
        assert!(!w.remove(&k4(1)));
        assert!(!r.contains(&k4(1)));
        assert!(r.contains(&k4(2)));
        assert_eq!(w.len(), 1);
        assert_eq!(w.retired_len(), 2);
        let all: Vec<_> = w.iter().map(|e| (e.key, e.rule)).collect();
        assert_eq!(all, vec![(k4(2), 20)]);
    }

    #[test]
    fn full_at_capacity_is_counted_and_leaves_the_table_intact() {
        let (mut w, r) = flow_table::<u32>(4);
        for i in 0..4 {
            assert_eq!(w.insert(k4(i), i), FlowInsert::Inserted);
        }
        assert_eq!(w.insert(k4(99), 99), FlowInsert::Full);
        assert_eq!(w.insert(k6(99), 99), FlowInsert::Full);
        assert_eq!(w.full_count(), 2);
        assert_eq!(w.len(), 4);
        assert!(!r.contains(&k4(99)));
        for i in 0..4 {
            assert_eq!(r.with(&k4(i), |e| e.rule), Some(i));
        }
        // Replacing at capacity is not an insert.
        assert_eq!(w.insert(k4(0), 100), FlowInsert::Replaced);
        assert!(w.remove(&k4(1)));
        assert_eq!(w.insert(k4(99), 99), FlowInsert::Inserted);
        assert_eq!(w.full_count(), 2);
    }

    #[test]
    fn zero_capacity_refuses_everything() {
        let (mut w, r) = flow_table::<()>(0);
        assert_eq!(w.insert(k4(1), ()), FlowInsert::Full);
        assert!(!r.contains(&k4(1)));
        assert_eq!(w.full_count(), 1);
    }

    #[test]
    fn v4_and_v6_keys_are_distinct_entries() {
        let (mut w, r) = flow_table::<&'static str>(8);
        let a = Ipv4Addr::new(198, 18, 0, 1);
        let b = Ipv4Addr::new(198, 18, 0, 2);
        let v4 = FlowKey::v4(a, 1, b, 2, PROTO_TCP);
        let v6 = FlowKey::v6(a.to_ipv6_mapped(), 1, b.to_ipv6_mapped(), 2, PROTO_TCP);
        assert_eq!(w.insert(v4, "v4"), FlowInsert::Inserted);
        assert!(!r.contains(&v6));
        assert_eq!(w.insert(v6, "v6"), FlowInsert::Inserted);
        assert_eq!(r.with(&v4, |e| e.rule), Some("v4"));
        assert_eq!(r.with(&v6, |e| e.rule), Some("v6"));
        assert!(!r.contains(&v4.reversed()));
    }

    #[test]
    fn churn_reuses_tombstones_and_never_fills_early() {
        let (mut w, r) = flow_table::<u32>(64);
        for round in 0..500u32 {
            for i in 0..64 {
                let k = k4(round * 64 + i);
                assert_eq!(w.insert(k, i), FlowInsert::Inserted, "round {round}");
            }
            for i in 0..64 {
                assert!(r.contains(&k4(round * 64 + i)));
            }
            // Remove all but one, in an order that leaves tombstone runs.
            for i in (1..63).step_by(2).rev().chain((0..63).step_by(2)) {
                assert!(w.remove(&k4(round * 64 + i)));
            }
            assert!(w.remove(&k4(round * 64 + 63)));
            assert!(w.is_empty());
        }
        assert_eq!(w.full_count(), 0);
        // With the table empty, every tombstone run ends at an empty slot.
        assert_eq!(w.count_tags(TOMBSTONE), 0);
    }

    #[test]
    fn retain_removes_and_retires_what_it_rejects() {
        let (mut w, r) = flow_table::<u32>(100);
        for i in 0..100 {
            w.insert(k4(i), i);
        }
        assert_eq!(w.retain(|e| matches!(e.rule % 3, 0)), 66);
        assert_eq!(w.len(), 34);
        assert_eq!(w.retired_len(), 66);
        for i in 0..100 {
            assert_eq!(r.contains(&k4(i)), matches!(i % 3, 0));
        }
    }

    struct Tracked(Arc<AtomicBool>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_retired_entry_is_not_dropped_before_the_grace_period() {
        let (mut w, r) = flow_table::<Tracked>(8);
        let removed = Arc::new(AtomicBool::new(false));
        let replaced = Arc::new(AtomicBool::new(false));
        w.insert(k4(1), Tracked(Arc::clone(&removed)));
        w.insert(k4(2), Tracked(Arc::clone(&replaced)));
        assert_eq!(w.reclaim(1_000), 0);

        // Retired at some point after t=1000; first seen by reclaim at 1050.
        assert!(w.remove(&k4(1)));
        assert_eq!(
            w.insert(k4(2), Tracked(Arc::new(AtomicBool::new(false)))),
            FlowInsert::Replaced
        );
        assert_eq!(w.retired_len(), 2);
        assert_eq!(w.reclaim(1_050), 0);
        assert_eq!(w.reclaim(1_149), 0);
        assert!(!removed.load(Ordering::SeqCst));
        assert!(!replaced.load(Ordering::SeqCst));
        assert_eq!(w.retired_len(), 2);
        assert_eq!(w.reclaim(1_150), 2);
        assert!(removed.load(Ordering::SeqCst));
        assert!(replaced.load(Ordering::SeqCst));
        assert_eq!(w.retired_len(), 0);
        drop(r);
    }

    #[test]
    fn an_entry_held_by_a_reader_outlives_its_reclamation() {
        let (mut w, r) = flow_table_with::<Tracked>(FlowTableConfig {
            grace_ms: 10,
            ..FlowTableConfig::new(8)
        });
        let dropped = Arc::new(AtomicBool::new(false));
        w.insert(k4(7), Tracked(Arc::clone(&dropped)));
        let held = r.get(&k4(7)).unwrap();
        assert!(w.remove(&k4(7)));
        w.reclaim(0);
        assert_eq!(w.reclaim(10), 1);
        // The reader broke the contract (held past the grace period): the
        // entry is still valid, and is freed when the reader lets go.
        assert_eq!(held.key, k4(7));
        assert!(!dropped.load(Ordering::SeqCst));
        drop(held);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn bulk_lookups_match_single_lookups() {
        let (mut w, r) = flow_table::<u32>(1000);
        for i in (0..1000).step_by(2) {
            w.insert(k4(i), i);
        }
        let keys: Vec<FlowKey> = (0..70).map(k4).chain((0..10).map(k6)).collect();
        let mut out: Vec<Option<FlowRef<u32>>> = (0..keys.len()).map(|_| None).collect();
        assert_eq!(r.lookup_bulk(&keys, &mut out), 35);
        for (k, o) in keys.iter().zip(&out) {
            assert_eq!(o.as_ref().map(|e| e.rule), r.with(k, |e| e.rule));
            if let Some(e) = o {
                assert_eq!(e.key, *k);
            }
        }
        drop(out);
        let mut seen = Vec::new();
        r.for_each_bulk(&keys, |i, e| seen.push((i, e.map(|e| e.rule))));
        let want: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i, r.with(k, |e| e.rule)))
            .collect();
        assert_eq!(seen, want);
        // A shorter `out` bounds the work.
        let mut short: Vec<Option<FlowRef<u32>>> = (0..3).map(|_| None).collect();
        assert_eq!(r.lookup_bulk(&keys, &mut short), 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        Lookup(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..40, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u8..40).prop_map(Op::Remove),
            (0u8..40).prop_map(Op::Lookup),
        ]
    }

    fn pkey(k: u8) -> FlowKey {
        if k & 1 == 0 {
            k4(u32::from(k))
        } else {
            k6(u32::from(k))
        }
    }

    proptest::proptest! {
        #[test]
        fn behaves_like_a_bounded_hashmap(cap in 0usize..24, ops in proptest::collection::vec(op(), 0..300)) {
            use proptest::prop_assert_eq;
            let (mut w, r) = flow_table::<u32>(cap);
            let mut model: HashMap<FlowKey, u32> = HashMap::new();
            let mut full = 0;
            for (t, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(k, v) => {
                        let k = pkey(k);
                        let want = if model.contains_key(&k) {
                            FlowInsert::Replaced
                        } else if model.len() >= cap {
                            full += 1;
                            FlowInsert::Full
                        } else {
                            FlowInsert::Inserted
                        };
                        if want != FlowInsert::Full {
                            model.insert(k, v);
                        }
                        prop_assert_eq!(w.insert(k, v), want);
                    }
                    Op::Remove(k) => {
                        let k = pkey(k);
                        prop_assert_eq!(w.remove(&k), model.remove(&k).is_some());
                    }
                    Op::Lookup(k) => {
                        let k = pkey(k);
                        prop_assert_eq!(r.with(&k, |e| e.rule), model.get(&k).copied());
                        prop_assert_eq!(w.get(&k).map(|e| e.rule), model.get(&k).copied());
                    }
                }
                prop_assert_eq!(w.len(), model.len());
                w.reclaim(t as u64 * 10);
            }
            prop_assert_eq!(w.full_count(), full);
            for k in 0..40 {
                let k = pkey(k);
                prop_assert_eq!(r.with(&k, |e| e.rule), model.get(&k).copied());
            }
            let mut all: Vec<_> = w.iter().map(|e| (e.key, e.rule)).collect();
            all.sort();
            let mut want: Vec<_> = model.into_iter().collect();
            want.sort();
            prop_assert_eq!(all, want);
        }
    }

    /// A rule whose integrity a reader can check: `check == !id`.
    struct Checked {
        id: u32,
        check: u32,
    }

    #[test]
    fn readers_always_find_stable_keys_while_the_writer_churns() {
        const STABLE: u32 = 200;
        const CHURN: u32 = 400;
        const ABSENT_BASE: u32 = 1_000_000;
        let (mut w, r) = flow_table_with::<Checked>(FlowTableConfig {
            grace_ms: 5,
            ..FlowTableConfig::new(512)
        });
        for i in 0..STABLE {
            w.insert(k4(i), Checked { id: i, check: !i });
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let mut readers = Vec::new();
            for t in 0..3u32 {
                let r = r.clone();
                let stop = &stop;
                readers.push(s.spawn(move || {
                    let mut rounds = 0u64;
                    let stable: Vec<FlowKey> = (0..STABLE).map(k4).collect();
                    while !stop.load(Ordering::Relaxed) || rounds < 20 {
                        for i in 0..STABLE {
                            let got = r.with(&k4(i), |e| (e.key, e.rule.id, e.rule.check));
                            assert_eq!(got, Some((k4(i), i, !i)), "reader {t} lost stable key {i}");
                        }
                        for i in 0..50 {
                            assert!(!r.contains(&k4(ABSENT_BASE + i)));
                            assert!(!r.contains(&k6(i)));
                        }
                        r.for_each_bulk(&stable, |i, e| {
                            let e = e.expect("stable key missing in bulk");
                            assert_eq!(
                                (e.key, e.rule.id, e.rule.check),
                                (stable[i], i as u32, !(i as u32))
                            );
                        });
                        // Churning keys: if found, they are whole.
                        for i in STABLE..STABLE + CHURN {
                            if let Some(got) = r.with(&k4(i), |e| (e.key, e.rule.id, e.rule.check))
                            {
                                assert_eq!(got.0, k4(i));
                                assert_eq!(got.2, !got.1);
                            }
                        }
                        rounds += 1;
                    }
                    rounds
                }));
            }
            // The writer: random inserts, replaces and removes of churning
            // keys, replaces of stable keys (same rule), reclaim on a fake
            // clock.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut now = 0;
            for step in 0..60_000u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = STABLE + (x % u64::from(CHURN)) as u32;
                match (x >> 32) % 4 {
                    0 | 1 => {
                        let res = w.insert(
                            k4(i),
                            Checked {
                                id: step,
                                check: !step,
                            },
                        );
                        assert_ne!(res, FlowInsert::Full);
                    }
                    2 => {
                        w.remove(&k4(i));
                    }
                    _ => {
                        let s = (x >> 40) as u32 % STABLE;
                        assert_eq!(
                            w.insert(k4(s), Checked { id: s, check: !s }),
                            FlowInsert::Replaced
                        );
                    }
                }
                if step & 63 == 0 {
                    now += 1;
                    w.reclaim(now);
                }
            }
            stop.store(true, Ordering::Relaxed);
            for h in readers {
                assert!(h.join().unwrap() >= 20);
            }
        });
        assert_eq!(w.full_count(), 0);
        // Two calls: the first stamps what was retired since the last one.
        w.reclaim(u64::MAX - 1);
        w.reclaim(u64::MAX);
        assert_eq!(w.retired_len(), 0);
    }

    #[test]
    fn a_table_at_its_highest_load_factor_fills_to_capacity() {
        // 699_050 * 3 / 2 rounds up to 2^20 slots: 2/3 load when full.
        let cap = (1 << 20) * 2 / 3;
        let (mut w, r) = flow_table::<u32>(cap);
        assert_eq!(w.slots(), 1 << 20);
        for i in 0..cap as u32 {
            assert_eq!(w.insert(k6(i), i), FlowInsert::Inserted);
        }
        assert_eq!(w.insert(k6(u32::MAX), 0), FlowInsert::Full);
        let max = w.max_displacement();
        println!("2/3 load: max displacement {max} of {PROBE_LEN}");
        assert!(max < PROBE_LEN / 2, "max displacement {max}");
        assert!(r.contains(&k6(12345)));
    }

    #[test]
    fn one_million_flows_insert_lookup_remove() {
        const N: u32 = 1 << 20;
        let (mut w, r) = flow_table::<u64>(N as usize);
        assert_eq!(w.capacity(), N as usize);
        let t = Instant::now();
        for i in 0..N {
            assert_eq!(w.insert(k4(i), u64::from(i)), FlowInsert::Inserted);
        }
        let insert_ns = t.elapsed().as_nanos() / u128::from(N);
        assert_eq!(w.insert(k4(N), 0), FlowInsert::Full);

        let keys: Vec<FlowKey> = (0..N)
            .map(|i| k4(i.wrapping_mul(0x9e37_79b1) % N))
            .collect();
        let t = Instant::now();
        let mut sum = 0u64;
        for k in &keys {
            sum += r.with(k, |e| e.rule).unwrap();
        }
        let single_ns = t.elapsed().as_nanos() / u128::from(N);

        let t = Instant::now();
        let mut sum_bulk = 0u64;
        for chunk in keys.chunks(MAX_BURST) {
            r.for_each_bulk(chunk, |_, e| sum_bulk += e.map_or(0, |e| e.rule));
        }
        let bulk_ns = t.elapsed().as_nanos() / u128::from(N);

        let t = Instant::now();
        let mut out: Vec<Option<FlowRef<u64>>> = (0..MAX_BURST).map(|_| None).collect();
        let mut hits = 0;
        for chunk in keys.chunks(MAX_BURST) {
            hits += r.lookup_bulk(chunk, &mut out);
        }
        drop(out);
        let guards_ns = t.elapsed().as_nanos() / u128::from(N);

        let misses: Vec<FlowKey> = (0..N / 8).map(k6).collect();
        let t = Instant::now();
        let found = misses.iter().filter(|k| r.contains(k)).count();
        let miss_ns = t.elapsed().as_nanos() / u128::from(N / 8);

        let want: u64 = (0..u64::from(N)).sum();
        assert_eq!((sum, sum_bulk, hits, found), (want, want, N as usize, 0));

        let per_slot = std::mem::size_of::<Slot<u64>>();
        let entry = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<FlowEntry<u64>>();
        println!(
            "1M flows: slots {} x {per_slot} B = {} B/entry + Arc<FlowEntry<u64>> {entry} B; \
             max displacement {}; ns: insert {insert_ns}, with {single_ns}, \
             for_each_bulk {bulk_ns}, lookup_bulk {guards_ns}, miss {miss_ns}",
            w.slots(),
            w.slots() * per_slot / N as usize,
            w.max_displacement(),
        );

        for i in 0..N {
            assert!(w.remove(&k4(i)));
        }
        assert!(w.is_empty());
        assert_eq!(w.count_tags(TOMBSTONE) + w.count_tags(EMPTY), w.slots());
        w.reclaim(0);
        assert_eq!(w.reclaim(DEFAULT_GRACE_MS), N as usize);
        assert!(!r.contains(&k4(0)));
    }

    #[test]
    fn readers_are_send_sync_clone_and_the_writer_is_send() {
        fn reader<T: Send + Sync + Clone>() {}
        fn writer<T: Send>() {}
        reader::<FlowTableReader<std::sync::atomic::AtomicU64>>();
        writer::<FlowTableWriter<std::sync::atomic::AtomicU64>>();
    }

    #[test]
    fn slots_are_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Slot<u64>>(), 16);
        assert_eq!(std::mem::align_of::<Slot<u64>>(), 16);
        assert_eq!(std::mem::size_of::<FlowKey>(), 38);
    }
}
