//! Quiescent-state based reclamation (QSBR) for the flow table.
//!
//! What it does: each reader (a worker) owns one counter and bumps it once per poll
//! loop, at a point where it holds no reference into the table (a *quiescent state*).
//! The writer (the slow path), after unpublishing something, takes a [`Snapshot`] of
//! every counter; once every online reader's counter has moved past its snapshot value,
//! no reader can still hold a reference taken before the unpublish, and the memory may
//! be reused.
//!
//! Why this and not reference counts: a reader pays one store and one fence per loop
//! (per burst of up to 32 packets on each of its queues), never a locked
//! read-modify-write per lookup, so the misses of a burst's lookups overlap.
//!
//! The ordering argument (both sides use `SeqCst` fences):
//! - reader, at a quiescent state: `counter = c + 1` (Release), then a `SeqCst` fence,
//!   then the next loop's loads of the table;
//! - writer: unpublish (a store), a `SeqCst` fence, then load every counter (Acquire).
//!
//! Either the writer's fence comes first in the single total order of `SeqCst` fences
//! (then every load the reader makes after its fence sees the unpublish), or the
//! reader's does (then the writer's snapshot already holds `c + 1`, and it waits for
//! `c + 2`, the end of the loop that might have seen the old value). A reader's reads
//! before its counter store happen before the writer's Acquire load that sees the new
//! value, so the writer's reuse comes after them.
//!
//! Counter value 0 means offline (not reading): an offline reader never delays
//! reclamation. What it must not do: block a reader, allocate on the reader side, or
//! read clocks.

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

/// One reader's counter, alone on its cache line (readers write it every loop).
#[repr(align(64))]
struct ReaderSlot {
    counter: AtomicU64,
    taken: AtomicBool,
}

/// The registry of readers: fixed size, chosen when the table is built.
pub struct Qsbr {
    slots: Box<[ReaderSlot]>,
}

/// Every reader's counter at one instant, taken by the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(Vec<u64>);

impl Qsbr {
    /// Room for `max_readers` readers.
    pub fn new(max_readers: usize) -> Qsbr {
        Qsbr {
            slots: (0..max_readers)
                .map(|_| ReaderSlot {
                    counter: AtomicU64::new(0),
                    taken: AtomicBool::new(false),
                })
                .collect(),
        }
    }

    /// Takes a free reader slot and puts it online; `None` when all are taken.
    pub fn register(&self) -> Option<usize> {
        for (i, s) in self.slots.iter().enumerate() {
            if s.taken
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.online(i);
                return Some(i);
            }
        }
        None
    }

    /// Gives a reader slot back (the reader holds no reference any more).
    pub fn unregister(&self, id: usize) {
        self.offline(id);
        self.slots[id].taken.store(false, Ordering::Release);
    }

    /// Reader `id` passes a quiescent state: it holds no reference into the table.
    #[inline]
    pub fn quiescent(&self, id: usize) {
        let c = &self.slots[id].counter;
        let next = c.load(Ordering::Relaxed).wrapping_add(1).max(1);
        c.store(next, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Reader `id` stops reading (its counter no longer delays the writer).
    pub fn offline(&self, id: usize) {
        self.slots[id].counter.store(0, Ordering::Release);
    }

    /// Reader `id` starts reading again.
    pub fn online(&self, id: usize) {
        self.quiescent(id);
    }

    /// The writer, after unpublishing: every counter, ordered after the unpublish.
    pub fn snapshot(&self) -> Snapshot {
        fence(Ordering::SeqCst);
        Snapshot(
            self.slots
                .iter()
                .map(|s| s.counter.load(Ordering::Acquire))
                .collect(),
        )
    }

    /// True once every reader that was online at `snap` has passed a quiescent state
    /// since (or gone offline): what was unpublished before `snap` is unreachable.
    pub fn passed(&self, snap: &Snapshot) -> bool {
        self.slots.iter().zip(&snap.0).all(|(s, &then)| {
            then == 0 || {
                let now = s.counter.load(Ordering::Acquire);
                now != then
            }
        })
    }

    /// Readers currently registered.
    pub fn readers(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.taken.load(Ordering::Relaxed))
            .count()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn an_offline_or_absent_reader_never_delays_the_writer() {
        let q = Qsbr::new(4);
        let snap = q.snapshot();
        assert!(q.passed(&snap));
        let r = q.register().unwrap();
        let snap = q.snapshot();
        assert!(!q.passed(&snap), "online reader has not passed yet");
        q.offline(r);
        assert!(q.passed(&snap));
    }

    #[test]
    fn a_quiescent_state_after_the_snapshot_lets_the_writer_go() {
        let q = Qsbr::new(2);
        let a = q.register().unwrap();
        let b = q.register().unwrap();
        assert_eq!(q.register(), None, "only two slots");
        let snap = q.snapshot();
        q.quiescent(a);
        assert!(!q.passed(&snap), "b is still in its loop");
        q.quiescent(b);
        assert!(q.passed(&snap));
        q.unregister(a);
        assert_eq!(q.readers(), 1);
        assert_eq!(q.register(), Some(a), "a freed slot is reused");
    }
}

/// Model test of the protocol with loom: `RUSTFLAGS="--cfg loom" cargo test -p
/// switch-core --release --lib flow::qsbr::loom_tests` explores every interleaving (and
/// the weak-memory reorderings loom models) of one reader against a writer that
/// unpublishes an entry, waits for a grace period and reuses its memory.
#[cfg(all(test, loom))]
#[allow(unsafe_code)]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;

    /// Two entry slots; `published` holds the index + 1 of the live one (0: none).
    struct Table {
        q: Qsbr,
        published: AtomicUsize,
        entries: [UnsafeCell<u64>; 2],
    }

    #[test]
    fn a_reused_entry_is_never_read_by_a_reader_that_could_see_it_published() {
        loom::model(|| {
            let t = Arc::new(Table {
                q: Qsbr::new(1),
                published: AtomicUsize::new(1),
                entries: [UnsafeCell::new(7), UnsafeCell::new(0)],
            });
            let id = t.q.register().unwrap();
            let r = {
                let t = Arc::clone(&t);
                loom::thread::spawn(move || {
                    for _ in 0..2 {
                        let p = t.published.load(Ordering::Acquire);
                        if p != 0 {
                            // loom reports a data race if the writer may be writing it.
                            // SAFETY: the protocol under test: a published entry is not
                            // written until every reader has passed a quiescent state.
                            let v = t.entries[p - 1].with(|v| unsafe { *v });
                            assert!(v == 7 || v == 9, "saw a torn or reused entry: {v}");
                        }
                        t.q.quiescent(id);
                    }
                    t.q.offline(id);
                })
            };
            // Writer: publish entry 1 (value 9) in place of entry 0, then reuse entry 0.
            // SAFETY: entry 1 is not published yet: no reader reaches it.
            t.entries[1].with_mut(|v| unsafe { *v = 9 });
            t.published.store(2, Ordering::Release);
            let snap = t.q.snapshot();
            while !t.q.passed(&snap) {
                loom::thread::yield_now();
            }
            // SAFETY: entry 0 was unpublished and the reader passed a quiescent state.
            t.entries[0].with_mut(|v| unsafe { *v = 1234 });
            r.join().unwrap();
        });
    }
}
