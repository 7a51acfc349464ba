//! A bounded single-producer single-consumer ring of fixed-size frame slots, built from
//! atomics alone (no `unsafe`): the worker copies a frame in, the slow path copies it out.
//!
//! Why this and not a DPDK `rte_ring` of mbuf clones: a clone bumps the mbuf's refcount
//! per packet and keeps the mbuf (and its mempool slot) alive until the slow path gets to
//! it, so a capture could starve the mempool that forwarding needs; and a frame that is
//! translated in place after it was cloned would change under the capture. Copying up to
//! the snap length into memory the capture owns costs the worker a short memcpy per
//! captured frame and nothing else, leaves the mbuf to forwarding at once, and keeps the
//! whole mechanism in safe, unit-tested Rust.
//!
//! Layout: `slots` (a power of two) slots of `2 + ceil(snaplen / 8)` 64-bit words; word 0
//! holds the frame's original length (low 32 bits) and the captured length (high 32 bits),
//! word 1 the producer's timestamp, the rest the captured bytes, little-endian.
//!
//! The ordering argument: `head` counts slots written (stored only by the producer),
//! `tail` slots read (stored only by the consumer). The producer writes a slot's words
//! (Relaxed) and then publishes it with a Release store of `head`; the consumer's Acquire
//! load of `head` that sees it makes those words visible. The consumer reads the words and
//! then frees the slot with a Release store of `tail`; the producer's Acquire load of
//! `tail` that sees it orders its next writes of that slot after the reads. So a slot is
//! never read while it is written: a frame comes out whole, exactly as it went in (the
//! loom test below checks it under every interleaving loom explores).
//!
//! What it guarantees: `push` never blocks, never allocates, and fails (counting
//! `dropped`) when the ring is full; `pop` never blocks. With more than one producer (or
//! consumer) at once frames could come out garbled, but memory safety holds regardless:
//! everything is an atomic word.

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Words before a slot's data: lengths, timestamp.
const HEADER_WORDS: usize = 2;

/// A counter alone on its cache line: the producer's and the consumer's indices never
/// share one, so neither side's stores invalidate the line the other polls.
#[repr(align(64))]
struct Line<T>(T);

/// What a popped frame was: the lengths and the producer's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// How many of its bytes were kept (at most the ring's snap length).
    pub cap_len: u32,
    /// The producer's timestamp (stitchd: the worker's TSC at the start of its poll round).
    pub stamp: u64,
}

/// The ring. Share it (in an `Arc`) between exactly one producer and one consumer.
pub struct FrameRing {
    buf: Box<[AtomicU64]>,
    mask: usize,
    snaplen: u32,
    words_per_slot: usize,
    head: Line<AtomicUsize>,
    tail: Line<AtomicUsize>,
    dropped: Line<AtomicU64>,
}

impl std::fmt::Debug for FrameRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameRing")
            .field("slots", &self.slots())
            .field("snaplen", &self.snaplen)
            .field("len", &self.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl FrameRing {
    /// A ring of `slots` slots (rounded up to a power of two, at least 2), each keeping up
    /// to `snaplen` bytes of a frame. All memory is allocated here, none later.
    pub fn new(slots: usize, snaplen: u32) -> FrameRing {
        let slots = slots.max(2).next_power_of_two();
        let words_per_slot = HEADER_WORDS + (snaplen as usize).div_ceil(8);
        FrameRing {
            buf: (0..slots * words_per_slot)
                .map(|_| AtomicU64::new(0))
                .collect(),
            mask: slots - 1,
            snaplen,
            words_per_slot,
            head: Line(AtomicUsize::new(0)),
            tail: Line(AtomicUsize::new(0)),
            dropped: Line(AtomicU64::new(0)),
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.mask + 1
    }

    /// Most bytes kept of a frame.
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    /// Frames waiting to be popped (a snapshot).
    pub fn len(&self) -> usize {
        let head = self.head.0.load(Ordering::Acquire);
        head.wrapping_sub(self.tail.0.load(Ordering::Acquire))
    }

    /// Whether no frame waits (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames refused because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.0.load(Ordering::Relaxed)
    }

    /// Producer: copies the first `snaplen` bytes of `frame` into the next slot, with
    /// `orig_len` (the frame's length on the wire, which may exceed `frame.len()` for a
    /// multi-segment frame) and `stamp`. Returns false, and counts a drop, when the ring
    /// is full. Never blocks, never allocates.
    #[inline]
    pub fn push(&self, frame: &[u8], orig_len: u32, stamp: u64) -> bool {
        let head = self.head.0.load(Ordering::Relaxed);
        let tail = self.tail.0.load(Ordering::Acquire);
        if head.wrapping_sub(tail) > self.mask {
            // Only the producer writes `dropped`: load + store, no locked add.
            let d = &self.dropped.0;
            d.store(d.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
            return false;
        }
        let kept = frame.len().min(self.snaplen as usize);
        let base = (head & self.mask) * self.words_per_slot;
        let slot = &self.buf[base..base + self.words_per_slot];
        slot[0].store(u64::from(orig_len) | (kept as u64) << 32, Ordering::Relaxed);
        slot[1].store(stamp, Ordering::Relaxed);
        let data = &slot[HEADER_WORDS..];
        let mut chunks = frame[..kept].chunks_exact(8);
        for (w, c) in data.iter().zip(&mut chunks) {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            data[kept / 8].store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        self.head.0.store(head.wrapping_add(1), Ordering::Release);
        true
    }

    /// Consumer: takes the oldest frame, replacing `out`'s contents with its captured
    /// bytes; `None` when the ring is empty. `out` keeps its capacity, so a consumer that
    /// reuses one buffer allocates only until it has grown to the snap length.
    pub fn pop(&self, out: &mut Vec<u8>) -> Option<FrameMeta> {
        let tail = self.tail.0.load(Ordering::Relaxed);
        let head = self.head.0.load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        let base = (tail & self.mask) * self.words_per_slot;
        let slot = &self.buf[base..base + self.words_per_slot];
        let lens = slot[0].load(Ordering::Relaxed);
        let stamp = slot[1].load(Ordering::Relaxed);
        let orig_len = lens as u32;
        // Never more than the slot holds, whatever the header word says.
        let cap_len = ((lens >> 32) as u32).min(self.snaplen);
        out.clear();
        let words = (cap_len as usize).div_ceil(8);
        for w in &slot[HEADER_WORDS..HEADER_WORDS + words] {
            out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        out.truncate(cap_len as usize);
        self.tail.0.store(tail.wrapping_add(1), Ordering::Release);
        Some(FrameMeta {
            orig_len,
            cap_len,
            stamp,
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn frames_come_out_in_order_and_whole_up_to_the_snap_length() {
        let r = FrameRing::new(8, 20);
        assert!(r.push(&frame(7, 1), 7, 100));
        assert!(r.push(&frame(20, 2), 20, 101));
        assert!(r.push(&frame(60, 3), 1514, 102));
        assert!(r.push(&[], 0, 103));
        let mut out = Vec::new();
        let m = r.pop(&mut out).unwrap();
        assert_eq!((m.orig_len, m.cap_len, m.stamp), (7, 7, 100));
        assert_eq!(out, frame(7, 1));
        let m = r.pop(&mut out).unwrap();
        assert_eq!((m.orig_len, m.cap_len, m.stamp), (20, 20, 101));
        assert_eq!(out, frame(20, 2));
        let m = r.pop(&mut out).unwrap();
        assert_eq!((m.orig_len, m.cap_len, m.stamp), (1514, 20, 102));
        assert_eq!(out, frame(20, 3), "cut at the snap length");
        let m = r.pop(&mut out).unwrap();
        assert_eq!((m.orig_len, m.cap_len), (0, 0));
        assert!(out.is_empty());
        assert_eq!(r.pop(&mut out), None);
        assert_eq!(r.dropped(), 0);
    }

    #[test]
    fn a_full_ring_refuses_and_counts_and_frees_up_as_it_is_drained() {
        let r = FrameRing::new(3, 64);
        assert_eq!(r.slots(), 4, "rounded up to a power of two");
        for i in 0..4u8 {
            assert!(r.push(&frame(10, i), 10, u64::from(i)));
        }
        assert!(!r.push(&frame(10, 9), 10, 9));
        assert!(!r.push(&frame(10, 9), 10, 9));
        assert_eq!((r.len(), r.dropped()), (4, 2));
        let mut out = Vec::new();
        assert_eq!(r.pop(&mut out).unwrap().stamp, 0);
        assert!(r.push(&frame(10, 4), 10, 4));
        // Wraps around many times without losing order.
        for i in 1..1000u64 {
            let m = r.pop(&mut out).unwrap();
            assert_eq!(m.stamp, i);
            assert_eq!(out, frame(10, i as u8));
            assert!(r.push(&frame(10, (i + 4) as u8), 10, i + 4));
        }
        assert_eq!(r.len(), 4);
        assert_eq!(r.dropped(), 2);
    }

    #[test]
    fn a_producer_and_a_consumer_thread_agree_on_every_frame() {
        use std::sync::Arc;
        let r = Arc::new(FrameRing::new(64, 100));
        let p = {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                for i in 0..20_000u64 {
                    let f = frame((i % 150) as usize, i as u8);
                    if r.push(&f, f.len() as u32, i) {
                        sent.push(i);
                    }
                }
                sent
            })
        };
        let mut got = Vec::new();
        let mut out = Vec::new();
        loop {
            match r.pop(&mut out) {
                Some(m) => {
                    let len = (m.stamp % 150) as usize;
                    assert_eq!(m.orig_len as usize, len);
                    assert_eq!(out, frame(len.min(100), m.stamp as u8));
                    got.push(m.stamp);
                }
                None if p.is_finished() && r.is_empty() => break,
                None => std::thread::yield_now(),
            }
        }
        let sent = p.join().unwrap();
        assert_eq!(got, sent, "every frame pushed is popped once, in order");
        assert_eq!(sent.len() as u64 + r.dropped(), 20_000);
    }
}

/// Model test with loom: `RUSTFLAGS="--cfg loom" cargo test -p switch-core --release --lib
/// capture::ring::loom_tests` explores the interleavings (and the weak-memory reorderings
/// loom models) of a producer pushing three frames through a two-slot ring (so a slot is
/// reused while the consumer may still be reading the previous frame) and a consumer
/// draining it: every frame comes out exactly once, whole, in order.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    const FRAMES: u8 = 3;

    #[test]
    fn popped_frames_are_whole_and_in_order() {
        loom::model(|| {
            let r = Arc::new(FrameRing::new(2, 16));
            let p = {
                let r = r.clone();
                loom::thread::spawn(move || {
                    for i in 1..=FRAMES {
                        // Full: wait for the consumer (a worker would drop and count).
                        while !r.push(&[i; 16], 16, u64::from(i)) {
                            loom::thread::yield_now();
                        }
                    }
                })
            };
            let mut out = Vec::new();
            let mut next = 1;
            while next <= FRAMES {
                match r.pop(&mut out) {
                    Some(m) => {
                        assert_eq!(m.stamp, u64::from(next), "out of order");
                        assert_eq!((m.orig_len, m.cap_len), (16, 16));
                        assert_eq!(out, [next; 16], "torn frame");
                        next += 1;
                    }
                    None => loom::thread::yield_now(),
                }
            }
            p.join().unwrap();
            assert!(r.is_empty());
        });
    }
}
