//! Maglev consistent hashing: the lookup table of Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer" (NSDI 2016), section 3.4.
//!
//! What it does: [`Maglev::build`] fills a table of [`MAGLEV_TABLE_SIZE`] entries (M =
//! 65537, a prime, as the paper's larger size; well above 100 times the number of dests
//! a service has) with dest indices; [`Maglev::lookup`] maps a connection's 5-tuple hash
//! to `table[hash % M]`.
//!
//! How the table is filled (the paper's `Populate`): each dest has a permutation of the
//! table's slots, `offset + j * skip (mod M)` with `offset = h1(name) mod M` and `skip =
//! h2(name) mod (M - 1) + 1`, where the name is the dest's address and port (4 or 16
//! address bytes, then the port big-endian) and h1, h2 two seeded 64-bit hashes
//! (FNV-1a, then the MurmurHash3 finaliser). Since M is prime every `skip` visits every
//! slot. Dests take turns, in list order, each claiming its next preferred slot that is
//! still empty, until the table is full.
//!
//! Weights: the paper's turns are one slot per dest per round. Here a dest earns its
//! weight in credit each round and claims one slot per `max_weight` of credit, so the
//! heaviest dests claim one slot every round and a dest of weight w one every
//! `max_weight / w` rounds: its share of the table is `w / sum(w)` (within a slot or
//! two), the claims of light dests spread evenly over the rounds. Equal weights give the
//! paper's algorithm exactly. (Linux's `ip_vs_mh` instead gives each dest `w / gcd`
//! consecutive turns per round.)
//!
//! Which dests: only those that may take connections (usable, weight > 0) and whose
//! index fits the table's 16-bit entries (below 65535). The paper rebuilds the table
//! without a backend when it fails; here the dest list of a service generation carries
//! `usable`, so the slow path rebuilds the table when a dest goes down or comes back,
//! and the permutations keep the disruption near the minimum (about the removed dest's
//! share of entries, see the tests).
//!
//! What it guarantees: the table is a pure function of the dests' names, weights and
//! order, so every worker (and every stitchd) builds the same one; [`Maglev::lookup`]
//! does not allocate.

use std::fmt;
use std::net::IpAddr;

use super::sched::Dest;

/// M: the number of entries (a prime).
pub const MAGLEV_TABLE_SIZE: usize = 65537;
/// An entry no dest has claimed (only while building).
const EMPTY: u16 = u16::MAX;
/// The seeds of h1 (offset) and h2 (skip).
const SEED_OFFSET: u64 = 0x6D61_676C_6576_3031; // "maglev01"
const SEED_SKIP: u64 = 0x6D61_676C_6576_3032; // "maglev02"

/// A Maglev lookup table; empty when no dest may take connections.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Maglev {
    table: Vec<u16>,
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("entries", &self.table.len())
            .finish_non_exhaustive()
    }
}

/// The dest's name as hashed: address bytes then port, big-endian.
fn name(d: &Dest) -> ([u8; 18], usize) {
    let mut b = [0u8; 18];
    let n = match d.addr {
        IpAddr::V4(a) => {
            b[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            b[..16].copy_from_slice(&a.octets());
            16
        }
    };
    b[n..n + 2].copy_from_slice(&d.port.to_be_bytes());
    (b, n + 2)
}

/// Seeded FNV-1a over `bytes`, then the MurmurHash3 64-bit finaliser.
fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ seed;
    for &x in bytes {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// The dest's permutation: `(offset, skip)`, slot j of its preference list being
/// `(offset + j * skip) mod M`.
pub fn permutation(d: &Dest) -> (usize, usize) {
    let (b, n) = name(d);
    let m = MAGLEV_TABLE_SIZE as u64;
    let offset = hash64(&b[..n], SEED_OFFSET) % m;
    let skip = hash64(&b[..n], SEED_SKIP) % (m - 1) + 1;
    (offset as usize, skip as usize)
}

impl Maglev {
    /// Fills the table from the dests that may take connections (module docs).
    pub fn build(dests: &[Dest]) -> Maglev {
        struct Cand {
            index: u16,
            pos: usize,
            skip: usize,
            weight: u64,
            credit: u64,
        }
        let mut cands: Vec<Cand> = dests
            .iter()
            .enumerate()
            .filter(|(i, d)| d.usable && d.weight > 0 && *i < usize::from(EMPTY))
            .map(|(i, d)| {
                let (offset, skip) = permutation(d);
                Cand {
                    index: i as u16,
                    pos: offset,
                    skip,
                    weight: u64::from(d.weight),
                    credit: 0,
                }
            })
            .collect();
        let Some(max_w) = cands.iter().map(|c| c.weight).max() else {
            return Maglev::default();
        };
        let m = MAGLEV_TABLE_SIZE;
        let mut table = vec![EMPTY; m];
        let mut filled = 0;
        // Each round the heaviest dests claim a slot, so this ends after at most M
        // rounds; a claim walks a permutation, which visits every slot.
        'fill: loop {
            for c in &mut cands {
                c.credit += c.weight;
                if c.credit < max_w {
                    continue;
                }
                c.credit -= max_w;
                let mut p = c.pos;
                while table[p] != EMPTY {
                    p = (p + c.skip) % m;
                }
                table[p] = c.index;
                c.pos = (p + c.skip) % m;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Maglev { table }
    }

    /// The dest for a connection of 5-tuple hash `hash`: `table[hash % M]`.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let e = self.table[(hash % MAGLEV_TABLE_SIZE as u64) as usize];
        Some(usize::from(e))
    }

    /// True when no dest may take connections.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The table's entries (dest indices): M of them, or none.
    pub fn entries(&self) -> impl Iterator<Item = usize> + '_ {
        self.table.iter().map(|&e| usize::from(e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sched::testutil::*;
    use super::*;

    fn counts(t: &Maglev, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for e in t.entries() {
            c[e] += 1;
        }
        c
    }

    #[test]
    fn empty_and_single() {
        assert!(Maglev::build(&[]).is_empty());
        assert_eq!(Maglev::build(&[]).lookup(5), None);
        let mut ds = dests(&[1, 1]);
        ds[0].usable = false;
        ds[1].weight = 0;
        assert!(Maglev::build(&ds).is_empty());
        let one = Maglev::build(&dests(&[3]));
        assert_eq!(one.entries().count(), MAGLEV_TABLE_SIZE);
        assert!(one.entries().all(|e| e == 0));
    }

    #[test]
    fn permutations_cover_the_table() {
        for i in 0..50 {
            let (offset, skip) = permutation(&dest(i, 1));
            assert!(offset < MAGLEV_TABLE_SIZE);
            assert!((1..MAGLEV_TABLE_SIZE).contains(&skip));
        }
        // Different names, different permutations.
        assert_ne!(permutation(&dest(0, 1)), permutation(&dest(1, 1)));
        let mut d = dest(0, 1);
        d.port = 81;
        assert_ne!(permutation(&d), permutation(&dest(0, 1)));
    }

    #[test]
    fn equal_weights_balance_to_one_entry() {
        for n in [2, 3, 7, 10, 33] {
            let t = Maglev::build(&dests(&vec![1; n]));
            let c = counts(&t, n);
            let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(hi - lo <= 1, "n {n}: {c:?}");
        }
    }

    #[test]
    fn weights_set_the_share() {
        let w = [1u32, 2, 3, 10];
        let t = Maglev::build(&dests(&w));
        let c = counts(&t, w.len());
        let total: u32 = w.iter().sum();
        for (i, &wi) in w.iter().enumerate() {
            let want = MAGLEV_TABLE_SIZE as f64 * f64::from(wi) / f64::from(total);
            assert!((c[i] as f64 - want).abs() <= 2.0, "{c:?}");
        }
    }

    fn changed(a: &Maglev, da: &[Dest], b: &Maglev, db: &[Dest]) -> f64 {
        let n = a
            .entries()
            .zip(b.entries())
            .filter(|&(x, y)| (da[x].addr, da[x].port) != (db[y].addr, db[y].port))
            .count();
        n as f64 / MAGLEV_TABLE_SIZE as f64
    }

    #[test]
    fn removing_one_of_n_dests_moves_about_one_nth() {
        for n in [3, 5, 10, 20] {
            let ds = dests(&vec![1; n]);
            let before = Maglev::build(&ds);
            for k in [0, n / 2, n - 1] {
                // Taken out of the list (later dests change index) ...
                let mut fewer = ds.clone();
                fewer.remove(k);
                let after = Maglev::build(&fewer);
                let f = changed(&before, &ds, &after, &fewer);
                assert!(f < 1.0 / n as f64 + 0.02, "n {n} k {k}: {f}");
                // ... or marked unusable (indices stay): the same.
                let mut down = ds.clone();
                down[k].usable = false;
                let after = Maglev::build(&down);
                let f2 = changed(&before, &ds, &after, &down);
                assert!(f2 < 1.0 / n as f64 + 0.02, "n {n} k {k}: {f2}");
                // The remaining dests stay balanced.
                let c = counts(&after, n);
                let live: Vec<usize> = (0..n).filter(|&i| i != k).map(|i| c[i]).collect();
                let (lo, hi) = (live.iter().min().unwrap(), live.iter().max().unwrap());
                assert!(hi - lo <= 1, "{c:?}");
            }
        }
    }

    #[test]
    fn adding_a_dest_moves_about_its_share() {
        for n in [4, 9, 19] {
            let ds = dests(&vec![1; n]);
            let mut more = ds.clone();
            more.push(dest(n, 1));
            let a = Maglev::build(&ds);
            let b = Maglev::build(&more);
            let f = changed(&a, &ds, &b, &more);
            assert!(f < 1.0 / (n + 1) as f64 + 0.02, "n {n}: {f}");
        }
    }

    #[test]
    fn lookup_is_hash_mod_m_and_deterministic() {
        let ds = dests(&[1, 1, 1, 1, 1]);
        let t = Maglev::build(&ds);
        assert_eq!(t, Maglev::build(&ds));
        let entries: Vec<usize> = t.entries().collect();
        let mut rng = Rng(77);
        for _ in 0..1000 {
            let h = rng.next();
            assert_eq!(
                t.lookup(h),
                Some(entries[(h % MAGLEV_TABLE_SIZE as u64) as usize])
            );
        }
        assert_eq!(t.lookup(MAGLEV_TABLE_SIZE as u64 + 3), t.lookup(3));
    }
}
