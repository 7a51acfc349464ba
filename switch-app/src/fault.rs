//! The fault injector (`port.fault.set`): drops, reorders and duplicates packets on a
//! port's TX, so tests can put real TCP through loss and reordering (this machine has no
//! `netem`). Off by default; each knob is parts per million, read by the workers with one
//! relaxed load per packet sent.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// Fault settings of one port.
#[derive(Debug, Default)]
pub struct PortFault {
    pub drop_ppm: AtomicU32,
    pub reorder_ppm: AtomicU32,
    pub duplicate_ppm: AtomicU32,
}

impl PortFault {
    /// True when any fault is on.
    #[inline]
    pub fn active(&self) -> bool {
        self.drop_ppm.load(Relaxed)
            | self.reorder_ppm.load(Relaxed)
            | self.duplicate_ppm.load(Relaxed)
            != 0
    }
}

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Drop,
    Reorder,
    Duplicate,
}

/// A per-worker xorshift generator: deterministic for a seed, no syscalls.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Next value in 0..1_000_000.
    #[inline]
    pub fn ppm(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x % 1_000_000) as u32
    }
}

/// Draws the fault for one packet.
#[inline]
pub fn draw(f: &PortFault, rng: &mut Rng) -> Fault {
    let r = rng.ppm();
    let d = f.drop_ppm.load(Relaxed);
    if r < d {
        return Fault::Drop;
    }
    let o = f.reorder_ppm.load(Relaxed);
    if r < d + o {
        return Fault::Reorder;
    }
    if r < d + o + f.duplicate_ppm.load(Relaxed) {
        return Fault::Duplicate;
    }
    Fault::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_out_near_what_was_asked() {
        let f = PortFault::default();
        f.drop_ppm.store(10_000, Relaxed);
        f.reorder_ppm.store(20_000, Relaxed);
        f.duplicate_ppm.store(30_000, Relaxed);
        let mut rng = Rng::new(42);
        let mut n = [0u32; 4];
        for _ in 0..1_000_000 {
            n[draw(&f, &mut rng) as usize] += 1;
        }
        assert!((9_000..11_000).contains(&n[1]), "{n:?}");
        assert!((18_000..22_000).contains(&n[2]), "{n:?}");
        assert!((27_000..33_000).contains(&n[3]), "{n:?}");
    }

    #[test]
    fn off_means_never() {
        let f = PortFault::default();
        assert!(!f.active());
        let mut rng = Rng::new(7);
        assert!((0..10_000).all(|_| draw(&f, &mut rng) == Fault::None));
    }
}
