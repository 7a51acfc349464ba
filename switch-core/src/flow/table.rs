//! The flow table (v2): [`FlowKey`] -> a small `Copy` value plus a shared record, one
//! writer, lock-free readers, built for the cache.
//!
//! What it does: a bounded, pre-sized hash table that the slow path writes
//! ([`FlowTableWriter`], the only writer) and that each worker reads per burst through
//! its own registered [`FlowTableReader`]. Every entry carries a value `V` (the per-
//! direction rule: a few bytes) and points at a **record** `R` that several entries
//! may share (a stitch's four directions share one record holding its translations).
//!
//! # Layout (the arithmetic is in `docs/flow-table.md`)
//!
//! - **Buckets** of one cache line: 7 slots of `sig:32 | entry index + 1:32` and one
//!   word counting the keys whose first-choice bucket this is but which live in their
//!   second choice. A key has two candidate buckets (`h` and a hash of its signature);
//!   it goes to the first unless that is full. A lookup reads the first bucket and
//!   reads the second only when the first has overflowed: a miss costs one line.
//! - **Entries** in a pre-sized pool addressed by index, 64 bytes each (aligned):
//!   key, value, record index. No allocation per entry, no reference count.
//! - **Records** in a pre-sized pool addressed by index; the writer counts the entries
//!   that point at each one and retires it when the count drops to zero.
//!
//! Buckets: `ceil(capacity * 5 / 4 / 7)` (80 % of the slots at most are live; one per
//! key up to 4096 keys). When both of a key's buckets are full, one key of theirs moves
//! to its other bucket (one level of cuckoo displacement, readers never miss it). The
//! entry pool has `capacity + capacity / 8 + 64` slots, so a burst of replaces (each
//! takes a fresh entry before the old one is reclaimed) does not refuse inserts.
//!
//! # Bulk lookup
//!
//! [`FlowTableReader::for_each_bulk`] works in stages over up to [`MAX_BURST`] keys:
//! hash every key and prefetch its first bucket; scan every bucket for the signature
//! and prefetch the candidate entry; compare keys and prefetch the record; then hand
//! each hit to the caller in order. The cache misses of the whole burst overlap.
//!
//! # Writes (slow path only)
//!
//! * insert of a new key: the entry is written into a free pool slot, then the bucket
//!   word is published with `Release`. [`FlowInsert::Full`] (counted, nothing changed)
//!   when `capacity()` keys are live, both buckets are full, or the pools are
//!   exhausted.
//! * replace: a new entry is written into a free slot and the bucket word swapped to it
//!   in one store: a reader sees the old entry or the new, never neither.
//! * remove: the bucket word is cleared. Entries never move between buckets.
//!
//! Removed or replaced entries and released records are **retired**, then reused only
//! once every reader has passed a quiescent state ([`qsbr`](super::qsbr)):
//! [`FlowTableWriter::reclaim`] does that bookkeeping, with no clock.
//!
//! # What a reader can see
//!
//! * Never a torn or reused entry or record: what it gets stays as it was until the
//!   reader's next [`FlowTableReader::quiescent`] (which takes `&mut self`, so the
//!   borrow checker ends every reference before it).
//! * A key that stays in the table is always found, also while it is replaced and
//!   while other keys come and go. A key not in the table is never found.
//! * A key being inserted or removed concurrently may be found or missed.
//!
//! # The `unsafe` in this module (the documented exception of `switch-core`)
//!
//! Entries and records are plain data in `UnsafeCell`s: the writer writes a slot only
//! while no reader can reach it (never published, or retired and past a grace period),
//! and readers reach a slot only through a published bucket word (Acquire) or a
//! published entry. Prefetch uses the SSE intrinsic (a hint: it never faults).
//! Everything else is safe Rust; the rest of the crate denies `unsafe` (`flow/mod.rs`
//! allows it for this module only).

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::fmt;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::key::{hash_with_seed, FlowKey, DEFAULT_SEED};
use super::qsbr::{Qsbr, Snapshot};

/// The burst size the bulk lookups work in.
pub const MAX_BURST: usize = 32;
/// Key slots per bucket (the eighth word of the line is the overflow count).
pub const BUCKET_SLOTS: usize = 7;
/// The largest capacity a table can have; larger requests are clamped.
pub const MAX_CAPACITY: usize = 1 << 28;
/// Longest cuckoo path an insert tries when both buckets of a key are full.
pub const CUCKOO_DEPTH: u32 = 3;
/// How long an insert waits for readers to pass a quiescent state when a pool is
/// exhausted by retired slots, before it refuses.
pub const WAIT_FOR_READERS: std::time::Duration = std::time::Duration::from_millis(50);
/// Readers that can be registered unless configured otherwise.
pub const DEFAULT_MAX_READERS: usize = 64;

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowInsert {
    /// The key was new and is now in the table.
    Inserted,
    /// The key was present; its entry was replaced (the old one retired).
    Replaced,
    /// No room (capacity reached, both buckets full, or the pools exhausted): nothing
    /// changed; counted in [`FlowTableWriter::full_count`].
    Full,
}

/// How a table is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTableConfig {
    /// Keys the table accepts (clamped to [`MAX_CAPACITY`]).
    pub capacity: usize,
    /// Records the table can hold at once (live or awaiting reclamation).
    pub records: usize,
    /// Hash seed. Give a random one (an input, like time) to a table that keys
    /// untrusted traffic.
    pub seed: u64,
    /// Readers that can be registered at once.
    pub max_readers: usize,
}

impl FlowTableConfig {
    /// `capacity` keys, one record per key, [`DEFAULT_SEED`], [`DEFAULT_MAX_READERS`].
    pub fn new(capacity: usize) -> FlowTableConfig {
        FlowTableConfig {
            capacity,
            records: capacity + 64,
            seed: DEFAULT_SEED,
            max_readers: DEFAULT_MAX_READERS,
        }
    }
}

/// A record handle, from [`FlowTableWriter::add_record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub u32);

/// One live entry, as a reader sees it (valid until its next quiescent state).
#[derive(Debug)]
pub struct Hit<'a, V, R> {
    /// The key the entry is stored under.
    pub key: &'a FlowKey,
    /// The entry's value.
    pub value: &'a V,
    /// The record the entry points at.
    pub record: &'a R,
    /// The record's index (stable while the record is live): for per-worker arrays.
    pub record_id: RecordId,
}

impl<V, R> Clone for Hit<'_, V, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V, R> Copy for Hit<'_, V, R> {}

#[repr(C, align(64))]
struct Entry<V> {
    key: FlowKey,
    value: V,
    record: u32,
}

#[repr(C, align(64))]
struct Bucket {
    w: [AtomicU64; BUCKET_SLOTS + 1],
}

const OVERFLOW: usize = BUCKET_SLOTS;

struct Cell<T>(UnsafeCell<MaybeUninit<T>>);

// SAFETY: a cell is written by the one writer only while no reader can reach it, and
// read by readers only while published (module docs); `T: Send + Sync` is required of
// what is shared.
unsafe impl<T: Send + Sync> Sync for Cell<T> {}

impl<T> Cell<T> {
    fn empty() -> Cell<T> {
        Cell(UnsafeCell::new(MaybeUninit::uninit()))
    }
}

struct Shared<V, R> {
    buckets: Box<[Bucket]>,
    entries: Box<[Cell<Entry<V>>]>,
    records: Box<[Cell<R>]>,
    seed: u64,
    qsbr: Qsbr,
}

#[inline]
fn range(x: u32, n: usize) -> usize {
    ((u64::from(x) * n as u64) >> 32) as usize
}

#[inline]
fn alt_of(sig: u32) -> u32 {
    (sig ^ 0x5bd1_e995)
        .wrapping_mul(0x9e37_79b1)
        .rotate_left(13)
}

#[inline]
fn word(sig: u32, idx: u32) -> u64 {
    u64::from(sig) << 32 | u64::from(idx + 1)
}

/// Asks the CPU to bring the cache line holding `r` in (a hint: it never faults and
/// changes nothing), for the pipelined lookups of the MAC table and the workers.
#[inline]
pub fn prefetch_ref<T>(r: &T) {
    prefetch(r as *const T);
}

#[inline]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "sse")]
        fn pf(p: *const i8) {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
        }
        // SAFETY: SSE is part of the x86_64 baseline; a prefetch is a hint and never
        // faults, whatever the address.
        unsafe { pf(p.cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl<V: Copy, R> Shared<V, R> {
    #[inline]
    fn hash(&self, key: &FlowKey) -> u64 {
        hash_with_seed(key, self.seed)
    }

    #[inline]
    fn homes(&self, h: u64) -> (u32, usize, usize) {
        let sig = (h >> 32) as u32;
        let n = self.buckets.len();
        (sig, range(h as u32, n), range(alt_of(sig), n))
    }

    /// The entry at `idx`.
    ///
    /// # Safety
    /// `idx` was read from a published bucket word (Acquire) by a reader that has not
    /// passed a quiescent state since, or by the writer.
    #[inline]
    unsafe fn entry(&self, idx: u32) -> &Entry<V> {
        // SAFETY: the caller's contract: the slot was initialised before its bucket word
        // was published and is not rewritten until every reader has moved on.
        unsafe { (*self.entries[idx as usize].0.get()).assume_init_ref() }
    }

    /// # Safety
    /// `idx` is the record of an entry obtained as [`Shared::entry`] requires.
    #[inline]
    unsafe fn record(&self, idx: u32) -> &R {
        // SAFETY: a record outlives (in the QSBR sense) every entry that points at it.
        unsafe { (*self.records[idx as usize].0.get()).assume_init_ref() }
    }

    /// Scans one bucket for `key`; the entry index if found.
    #[inline]
    fn scan(&self, b: usize, sig: u32, key: &FlowKey) -> Option<u32> {
        for w in &self.buckets[b].w[..BUCKET_SLOTS] {
            let x = w.load(Ordering::Acquire);
            if x != 0 && (x >> 32) as u32 == sig {
                let idx = (x as u32) - 1;
                // SAFETY: idx comes from a published word just loaded with Acquire.
                if unsafe { self.entry(idx) }.key == *key {
                    return Some(idx);
                }
            }
        }
        None
    }

    #[inline]
    fn find_h(&self, key: &FlowKey, h: u64) -> Option<u32> {
        let (sig, b1, b2) = self.homes(h);
        self.scan(b1, sig, key).or_else(|| {
            if self.buckets[b1].w[OVERFLOW].load(Ordering::Acquire) != 0 && b2 != b1 {
                self.scan(b2, sig, key)
            } else {
                None
            }
        })
    }

    #[inline]
    fn hit(&self, idx: u32) -> Hit<'_, V, R> {
        // SAFETY: idx was found through a published word by the caller (reader or writer).
        let e = unsafe { self.entry(idx) };
        Hit {
            key: &e.key,
            value: &e.value,
            // SAFETY: the record of a reachable entry is reachable.
            record: unsafe { self.record(e.record) },
            record_id: RecordId(e.record),
        }
    }
}

/// Builds a table of `capacity` keys with default settings. See [`flow_table_with`].
pub fn flow_table<V: Copy + Send + Sync + 'static, R: Send + Sync + 'static>(
    capacity: usize,
) -> FlowTableWriter<V, R> {
    flow_table_with(FlowTableConfig::new(capacity))
}

/// Builds a table: the one writer, from which readers are registered. All memory is
/// allocated here (entry and record pools stay untouched until used).
pub fn flow_table_with<V: Copy + Send + Sync + 'static, R: Send + Sync + 'static>(
    config: FlowTableConfig,
) -> FlowTableWriter<V, R> {
    let capacity = config.capacity.min(MAX_CAPACITY);
    // Small tables get more room: with few buckets, the chance that too many keys
    // share both of their buckets is not negligible, and the memory is nothing.
    let n_buckets = if capacity <= 4096 {
        capacity.max(1)
    } else {
        (capacity * 5 / 4).div_ceil(BUCKET_SLOTS)
    };
    let n_entries = capacity + capacity / 8 + 64;
    let n_records = config.records.clamp(1, MAX_CAPACITY);
    let shared = Arc::new(Shared {
        buckets: (0..n_buckets)
            .map(|_| Bucket {
                w: Default::default(),
            })
            .collect(),
        entries: (0..n_entries).map(|_| Cell::empty()).collect(),
        records: (0..n_records).map(|_| Cell::empty()).collect(),
        seed: config.seed,
        qsbr: Qsbr::new(config.max_readers),
    });
    FlowTableWriter {
        shared,
        len: 0,
        capacity,
        full: 0,
        free_entries: (0..n_entries as u32).rev().collect(),
        free_records: (0..n_records as u32).rev().collect(),
        record_refs: vec![0; n_records],
        pending: Vec::new(),
        batches: VecDeque::new(),
    }
}

/// A worker's handle: lock-free, allocation-free lookups. Not `Clone`: each reader
/// has its own quiescent-state counter ([`FlowTableWriter::reader`]).
pub struct FlowTableReader<V, R> {
    shared: Arc<Shared<V, R>>,
    id: usize,
}

impl<V, R> fmt::Debug for FlowTableReader<V, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowTableReader")
            .field("id", &self.id)
            .finish()
    }
}

impl<V, R> Drop for FlowTableReader<V, R> {
    fn drop(&mut self) {
        self.shared.qsbr.unregister(self.id);
    }
}

impl<V: Copy, R> FlowTableReader<V, R> {
    /// The entry of `key`.
    #[inline]
    pub fn get(&self, key: &FlowKey) -> Option<Hit<'_, V, R>> {
        let s = &*self.shared;
        s.find_h(key, s.hash(key)).map(|i| s.hit(i))
    }

    /// True if `key` is in the table.
    #[inline]
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.get(key).is_some()
    }

    /// Looks up every key and calls `f(i, hit)` for `keys[i]`, in order. The misses of
    /// a chunk of [`MAX_BURST`] keys overlap (module docs: the stages).
    pub fn for_each_bulk<'a, F>(&'a self, keys: &[FlowKey], f: F)
    where
        F: FnMut(usize, Option<Hit<'a, V, R>>),
    {
        self.for_each_bulk_by(keys, |k| k, f);
    }

    /// [`FlowTableReader::for_each_bulk`] over items that hold their key (`key`
    /// extracts it), so a caller's parse results need not be copied into a key array.
    #[inline]
    pub fn for_each_bulk_by<'a, T, K, F>(&'a self, items: &[T], key: K, mut f: F)
    where
        K: Fn(&T) -> &FlowKey,
        F: FnMut(usize, Option<Hit<'a, V, R>>),
    {
        let s = &*self.shared;
        for (c, kc) in items.chunks(MAX_BURST).enumerate() {
            let mut hs = [0u64; MAX_BURST];
            let mut found = [u32::MAX; MAX_BURST];
            // Stage 1: hash, prefetch the first bucket.
            for (i, k) in kc.iter().enumerate() {
                hs[i] = s.hash(key(k));
                let (_, b1, _) = s.homes(hs[i]);
                prefetch(&s.buckets[b1]);
            }
            // Stage 2: the first signature match in the first bucket; prefetch its entry.
            for i in 0..kc.len() {
                let (sig, b1, _) = s.homes(hs[i]);
                for w in &s.buckets[b1].w[..BUCKET_SLOTS] {
                    let x = w.load(Ordering::Acquire);
                    if x != 0 && (x >> 32) as u32 == sig {
                        found[i] = (x as u32) - 1;
                        prefetch(s.entries[found[i] as usize].0.get());
                        break;
                    }
                }
            }
            // Stage 3: confirm the key (else the full probe); prefetch the record.
            for (i, k) in kc.iter().enumerate() {
                let k = key(k);
                let idx = found[i];
                // SAFETY: idx came from a published word loaded with Acquire in stage 2.
                let ok = idx != u32::MAX && unsafe { s.entry(idx) }.key == *k;
                found[i] = if ok {
                    idx
                } else {
                    s.find_h(k, hs[i]).unwrap_or(u32::MAX)
                };
                if found[i] != u32::MAX {
                    // SAFETY: as above.
                    let rec = unsafe { s.entry(found[i]) }.record;
                    let p = s.records[rec as usize].0.get().cast::<u8>();
                    for line in (0..std::mem::size_of::<R>()).step_by(64) {
                        prefetch(p.wrapping_add(line));
                    }
                }
            }
            // Stage 4: hand out, in order.
            for (i, &idx) in found[..kc.len()].iter().enumerate() {
                f(c * MAX_BURST + i, (idx != u32::MAX).then(|| s.hit(idx)));
            }
        }
    }

    /// A quiescent state: this reader holds no reference into the table (the `&mut`
    /// borrow proves it). Call once per poll loop.
    #[inline]
    pub fn quiescent(&mut self) {
        self.shared.qsbr.quiescent(self.id);
    }

    /// Goes offline (e.g. before sleeping): the writer stops waiting for this reader.
    /// Lookups are impossible until [`OfflineReader::online`].
    pub fn offline(self) -> OfflineReader<V, R> {
        self.shared.qsbr.offline(self.id);
        let r = OfflineReader {
            shared: Arc::clone(&self.shared),
            id: self.id,
        };
        std::mem::forget(self);
        r
    }
}

/// A reader that is offline: it cannot look up, and never delays reclamation.
pub struct OfflineReader<V, R> {
    shared: Arc<Shared<V, R>>,
    id: usize,
}

impl<V, R> fmt::Debug for OfflineReader<V, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfflineReader")
            .field("id", &self.id)
            .finish()
    }
}

impl<V, R> OfflineReader<V, R> {
    /// Back online.
    pub fn online(self) -> FlowTableReader<V, R> {
        self.shared.qsbr.online(self.id);
        let r = FlowTableReader {
            shared: Arc::clone(&self.shared),
            id: self.id,
        };
        std::mem::forget(self);
        r
    }
}

impl<V, R> Drop for OfflineReader<V, R> {
    fn drop(&mut self) {
        self.shared.qsbr.unregister(self.id);
    }
}

enum Retired {
    Entry(u32),
    Record(u32),
}

/// The slow path's handle: the only one that changes the table.
pub struct FlowTableWriter<V, R> {
    shared: Arc<Shared<V, R>>,
    len: usize,
    capacity: usize,
    full: u64,
    free_entries: Vec<u32>,
    free_records: Vec<u32>,
    /// Per record: entries pointing at it, plus one while the caller's handle holds it.
    record_refs: Vec<u32>,
    /// Unpublished since the last `reclaim`.
    pending: Vec<Retired>,
    /// Unpublished, with the readers' counters taken after.
    batches: VecDeque<(Snapshot, Vec<Retired>)>,
}

impl<V, R> fmt::Debug for FlowTableWriter<V, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowTableWriter")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("buckets", &self.shared.buckets.len())
            .field("full_count", &self.full)
            .finish()
    }
}

impl<V: Copy + Send + Sync + 'static, R: Send + Sync + 'static> FlowTableWriter<V, R> {
    /// Registers a reader (one per worker); `None` when `max_readers` are registered.
    pub fn reader(&self) -> Option<FlowTableReader<V, R>> {
        self.shared.qsbr.register().map(|id| FlowTableReader {
            shared: Arc::clone(&self.shared),
            id,
        })
    }

    /// Stores a record; the returned handle holds it until
    /// [`FlowTableWriter::release_record`]. `Err(r)` when the record pool is exhausted
    /// (counted as a refusal).
    pub fn add_record(&mut self, r: R) -> Result<RecordId, R> {
        if self.free_records.is_empty() {
            self.wait_for_free(|w| !w.free_records.is_empty());
        }
        let Some(idx) = self.free_records.pop() else {
            self.full += 1;
            return Err(r);
        };
        // SAFETY: a free slot is unreachable by readers (never published, or retired and
        // past its grace period); the writer is the only one writing.
        unsafe { (*self.shared.records[idx as usize].0.get()).write(r) };
        self.record_refs[idx as usize] = 1;
        Ok(RecordId(idx))
    }

    /// Drops the caller's hold on a record; it is retired once no entry points at it.
    pub fn release_record(&mut self, id: RecordId) {
        self.unref_record(id.0);
    }

    /// The record behind a handle (writer side).
    pub fn record(&self, id: RecordId) -> Option<&R> {
        (self.record_refs.get(id.0 as usize).copied().unwrap_or(0) > 0)
            // SAFETY: a record with references is initialised; only the writer writes.
            .then(|| unsafe { self.shared.record(id.0) })
    }

    fn unref_record(&mut self, idx: u32) {
        let r = &mut self.record_refs[idx as usize];
        debug_assert!(*r > 0, "record {idx} released twice");
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.pending.push(Retired::Record(idx));
        }
    }

    /// Inserts or replaces the entry of `key`, pointing at `record` (which must be
    /// held or referenced).
    ///
    /// Returns [`FlowInsert::Full`] (and counts it) when the key is new and there is no
    /// room; the table is then unchanged.
    pub fn insert(&mut self, key: FlowKey, value: V, record: RecordId) -> FlowInsert {
        assert!(
            self.record_refs
                .get(record.0 as usize)
                .is_some_and(|&r| r > 0),
            "insert with a record that is not held"
        );
        let s = Arc::clone(&self.shared);
        let h = s.hash(&key);
        let (sig, b1, b2) = s.homes(h);
        let existing = s.find_h(&key, h);
        if existing.is_none() && self.len >= self.capacity {
            self.full += 1;
            return FlowInsert::Full;
        }
        // Where the word goes: the existing one's place, or a free slot.
        let place = match existing {
            Some(idx) => self.word_of(b1, b2, sig, idx),
            None => {
                let free = |b: usize| {
                    s.buckets[b].w[..BUCKET_SLOTS]
                        .iter()
                        .position(|w| w.load(Ordering::Relaxed) == 0)
                        .map(|i| (b, i))
                };
                free(b1)
                    .or_else(|| free(b2))
                    .or_else(|| self.make_room(b1, b2))
            }
        };
        let Some((b, slot)) = place else {
            self.full += 1;
            return FlowInsert::Full;
        };
        if self.free_entries.is_empty() {
            self.wait_for_free(|w| !w.free_entries.is_empty());
        }
        let Some(idx) = self.free_entries.pop() else {
            self.full += 1;
            return FlowInsert::Full;
        };
        // SAFETY: a free entry slot is unreachable by readers; only the writer writes.
        unsafe {
            (*s.entries[idx as usize].0.get()).write(Entry {
                key,
                value,
                record: record.0,
            })
        };
        self.record_refs[record.0 as usize] += 1;
        s.buckets[b].w[slot].store(word(sig, idx), Ordering::Release);
        match existing {
            Some(old) => {
                self.retire_entry(old);
                FlowInsert::Replaced
            }
            None => {
                if b != b1 {
                    let o = &s.buckets[b1].w[OVERFLOW];
                    o.store(o.load(Ordering::Relaxed) + 1, Ordering::Release);
                }
                self.len += 1;
                FlowInsert::Inserted
            }
        }
    }

    /// Both candidate buckets are full: moves one of their keys to its other bucket,
    /// making room there first if needed (a cuckoo path of up to [`CUCKOO_DEPTH`]
    /// moves), and returns the slot it freed.
    fn make_room(&self, b1: usize, b2: usize) -> Option<(usize, usize)> {
        (0..=CUCKOO_DEPTH).find_map(|depth| {
            [b1, b2]
                .into_iter()
                .find_map(|b| self.free_in(b, depth).map(|slot| (b, slot)))
        })
    }

    /// Frees a slot of bucket `b` by moving one of its keys to that key's other bucket,
    /// freeing a slot there first (recursively) when `depth > 0`.
    fn free_in(&self, b: usize, depth: u32) -> Option<usize> {
        let s = &*self.shared;
        for slot in 0..BUCKET_SLOTS {
            let x = s.buckets[b].w[slot].load(Ordering::Relaxed);
            if x == 0 {
                return Some(slot);
            }
            // SAFETY: the writer reads its own published entries.
            let key = unsafe { s.entry((x as u32) - 1) }.key;
            let (_, p, a) = s.homes(s.hash(&key));
            let other = if b == p { a } else { p };
            if other == b {
                continue;
            }
            let free = s.buckets[other].w[..BUCKET_SLOTS]
                .iter()
                .position(|w| w.load(Ordering::Relaxed) == 0)
                .or_else(|| {
                    (depth > 0)
                        .then(|| self.free_in(other, depth - 1))
                        .flatten()
                });
            let Some(to) = free else {
                continue;
            };
            self.move_word(x, (b, slot), (other, to), p);
            return Some(slot);
        }
        None
    }

    /// Moves word `x` from `from` to `to` (an empty slot of the key's other bucket),
    /// keeping the key visible to readers all along: towards its second bucket, the
    /// overflow count of its first bucket (`primary`) is raised and the new word stored
    /// before the old one is cleared; back to its first bucket, the new word is stored
    /// before the old one is cleared and the count lowered. A reader finds it in one
    /// place or the other (the stores are `Release`, the reader's loads `Acquire`).
    fn move_word(&self, x: u64, from: (usize, usize), to: (usize, usize), primary: usize) {
        let s = &*self.shared;
        let over = &s.buckets[primary].w[OVERFLOW];
        if to.0 != primary {
            over.store(over.load(Ordering::Relaxed) + 1, Ordering::Release);
            s.buckets[to.0].w[to.1].store(x, Ordering::Release);
            s.buckets[from.0].w[from.1].store(0, Ordering::Release);
        } else {
            s.buckets[to.0].w[to.1].store(x, Ordering::Release);
            s.buckets[from.0].w[from.1].store(0, Ordering::Release);
            over.store(
                over.load(Ordering::Relaxed).saturating_sub(1),
                Ordering::Release,
            );
        }
    }

    /// Bucket and slot of the word pointing at entry `idx`.
    fn word_of(&self, b1: usize, b2: usize, sig: u32, idx: u32) -> Option<(usize, usize)> {
        let want = word(sig, idx);
        [b1, b2].into_iter().find_map(|b| {
            self.shared.buckets[b].w[..BUCKET_SLOTS]
                .iter()
                .position(|w| w.load(Ordering::Relaxed) == want)
                .map(|i| (b, i))
        })
    }

    fn retire_entry(&mut self, idx: u32) {
        // SAFETY: the writer reads its own entries.
        let rec = unsafe { self.shared.entry(idx) }.record;
        self.pending.push(Retired::Entry(idx));
        self.unref_record(rec);
    }

    /// Removes the entry of `key`; true if there was one.
    pub fn remove(&mut self, key: &FlowKey) -> bool {
        let s = Arc::clone(&self.shared);
        let h = s.hash(key);
        let (sig, b1, b2) = s.homes(h);
        let Some(idx) = s.find_h(key, h) else {
            return false;
        };
        let Some((b, slot)) = self.word_of(b1, b2, sig, idx) else {
            return false;
        };
        s.buckets[b].w[slot].store(0, Ordering::Release);
        if b != b1 {
            let o = &s.buckets[b1].w[OVERFLOW];
            o.store(
                o.load(Ordering::Relaxed).saturating_sub(1),
                Ordering::Release,
            );
        }
        self.len -= 1;
        self.retire_entry(idx);
        true
    }

    /// The entry of `key` (writer side).
    pub fn get(&self, key: &FlowKey) -> Option<Hit<'_, V, R>> {
        let s = &*self.shared;
        s.find_h(key, s.hash(key)).map(|i| s.hit(i))
    }

    /// True if `key` is in the table.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.get(key).is_some()
    }

    /// Makes retired entries and records reusable once every reader has passed a
    /// quiescent state since they were unpublished. Returns how many were freed. Call
    /// it from the slow path's loop; it never waits.
    pub fn reclaim(&mut self) -> usize {
        if !self.pending.is_empty() {
            let snap = self.shared.qsbr.snapshot();
            self.batches
                .push_back((snap, std::mem::take(&mut self.pending)));
        }
        let mut freed = 0;
        while let Some((snap, _)) = self.batches.front() {
            if !self.shared.qsbr.passed(snap) {
                break;
            }
            let Some((_, items)) = self.batches.pop_front() else {
                break;
            };
            for it in items {
                freed += 1;
                match it {
                    Retired::Entry(i) => self.free_entries.push(i),
                    Retired::Record(i) => {
                        // SAFETY: unreachable by every reader (past the grace period);
                        // initialised when it was added; dropped once, here.
                        unsafe { (*self.shared.records[i as usize].0.get()).assume_init_drop() };
                        self.free_records.push(i);
                    }
                }
            }
        }
        freed
    }

    /// A pool is empty but retired slots wait for the readers: reclaims, yielding the
    /// CPU between tries, for at most [`WAIT_FOR_READERS`] (workers pass a quiescent
    /// state every poll loop, microseconds apart; a reader stuck longer means a refusal).
    fn wait_for_free(&mut self, ready: impl Fn(&Self) -> bool) {
        let start = std::time::Instant::now();
        loop {
            self.reclaim();
            if ready(self) || self.batches.is_empty() || start.elapsed() > WAIT_FOR_READERS {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Waits until every online reader has passed a quiescent state after this call:
    /// then no reader still holds an entry that was unpublished or replaced before it,
    /// and every reader sees every store the writer made before it (the QSBR fences give
    /// the happens-before). Yields the CPU between checks; false after `timeout`.
    pub fn wait_readers(&self, timeout: std::time::Duration) -> bool {
        let snap = self.shared.qsbr.snapshot();
        let start = std::time::Instant::now();
        loop {
            if self.shared.qsbr.passed(&snap) {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// Waits (spinning, at most `max_spins` rounds of `reclaim`) until everything
    /// retired so far is reusable; true if it got there.
    pub fn synchronize(&mut self, max_spins: usize) -> bool {
        for _ in 0..max_spins {
            self.reclaim();
            if self.retired_len() == 0 {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys the table accepts before inserts return [`FlowInsert::Full`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records the table can hold at once (indices are below this).
    pub fn record_capacity(&self) -> usize {
        self.record_refs.len()
    }

    /// Buckets allocated.
    pub fn buckets(&self) -> usize {
        self.shared.buckets.len()
    }

    /// Inserts and records refused since the table was built.
    pub fn full_count(&self) -> u64 {
        self.full
    }

    /// Entries and records retired and not yet reusable.
    pub fn retired_len(&self) -> usize {
        self.pending.len() + self.batches.iter().map(|(_, v)| v.len()).sum::<usize>()
    }

    /// Readers registered.
    pub fn readers(&self) -> usize {
        self.shared.qsbr.readers()
    }

    /// Records held or referenced.
    pub fn records_live(&self) -> usize {
        self.record_refs.iter().filter(|&&r| r > 0).count()
    }

    /// Bytes allocated for buckets, entries and records (the table's whole footprint;
    /// pool pages are resident only once touched).
    pub fn footprint(&self) -> usize {
        let s = &*self.shared;
        std::mem::size_of_val(&*s.buckets)
            + std::mem::size_of_val(&*s.entries)
            + std::mem::size_of_val(&*s.records)
            + self.record_refs.len() * 4
            + (self.free_entries.capacity() + self.free_records.capacity()) * 4
    }

    /// The big allocations (address, length), for advising huge pages.
    pub fn regions(&self) -> [(usize, usize); 3] {
        let s = &*self.shared;
        [
            (
                s.buckets.as_ptr() as usize,
                std::mem::size_of_val(&*s.buckets),
            ),
            (
                s.entries.as_ptr() as usize,
                std::mem::size_of_val(&*s.entries),
            ),
            (
                s.records.as_ptr() as usize,
                std::mem::size_of_val(&*s.records),
            ),
        ]
    }

    /// Calls `f` on every live entry, in bucket order (slow path).
    pub fn for_each(&self, mut f: impl FnMut(Hit<'_, V, R>)) {
        let s = &*self.shared;
        for b in s.buckets.iter() {
            for w in &b.w[..BUCKET_SLOTS] {
                let x = w.load(Ordering::Relaxed);
                if x != 0 {
                    f(s.hit((x as u32) - 1));
                }
            }
        }
    }
}

impl<V, R> Drop for FlowTableWriter<V, R> {
    fn drop(&mut self) {
        // Records still initialised: held, referenced, or retired and not yet freed.
        // Readers may still hold the shared part (it outlives the writer), so drop
        // only when this is the last owner.
        if Arc::strong_count(&self.shared) != 1 {
            return;
        }
        let mut live: Vec<u32> = self
            .record_refs
            .iter()
            .enumerate()
            .filter(|(_, &r)| r > 0)
            .map(|(i, _)| i as u32)
            .collect();
        for it in self
            .pending
            .iter()
            .chain(self.batches.iter().flat_map(|(_, v)| v.iter()))
        {
            if let Retired::Record(i) = it {
                live.push(*i);
            }
        }
        for i in live {
            // SAFETY: no reader exists (last owner); each index is initialised and
            // listed once (a retired record has no references left).
            unsafe { (*self.shared.records[i as usize].0.get()).assume_init_drop() };
        }
    }
}

#[cfg(test)]
mod tests;
