//! dh and sh: `net/netfilter/ipvs/ip_vs_dh.c` and `ip_vs_sh.c` (current kernels, where
//! both hash with `hash_32`).
//!
//! Both keep a 256-bucket table (`IP_VS_DH_TAB_BITS` = `IP_VS_SH_TAB_BITS` = 8) filled
//! on every dest change from the service's dest list, all dests included whatever their
//! weight or flags; the address picks a bucket and the bucket's dest is returned if it
//! is available, else no dest at all (IPVS's default: no `sh-fallback` flag, and no
//! `sh-port` flag, so sh hashes the source address alone).

use std::net::IpAddr;

use super::{eligible, Dest, SchedKind, SchedTables};

/// `CONFIG_IP_VS_DH_TAB_BITS` default.
pub const IP_VS_DH_TAB_BITS: u32 = 8;
/// `IP_VS_DH_TAB_SIZE`.
pub const IP_VS_DH_TAB_SIZE: usize = 1 << IP_VS_DH_TAB_BITS;
/// `CONFIG_IP_VS_SH_TAB_BITS` default.
pub const IP_VS_SH_TAB_BITS: u32 = 8;
/// `IP_VS_SH_TAB_SIZE`.
pub const IP_VS_SH_TAB_SIZE: usize = 1 << IP_VS_SH_TAB_BITS;
/// `GOLDEN_RATIO_32` (include/linux/hash.h).
pub const GOLDEN_RATIO_32: u32 = 0x61C8_8647;

/// An empty bucket in [`SchedTables`]'s dh/sh table (`b->dest == NULL`).
pub(super) const NO_DEST: u32 = u32::MAX;

/// `hash_32` (include/linux/hash.h, generic version): `(val * GOLDEN_RATIO_32) >> (32 -
/// bits)`, the high bits of the product. `bits` must be 1..=32.
pub fn hash_32(val: u32, bits: u32) -> u32 {
    val.wrapping_mul(GOLDEN_RATIO_32) >> (32 - bits)
}

/// The address as the dh/sh/lblc hash keys fold it, in host order: `ntohl(addr->ip)`
/// for IPv4, `ntohl(ip6[0] ^ ip6[1] ^ ip6[2] ^ ip6[3])` for IPv6 (the XOR of the four
/// big-endian 32-bit words).
pub fn addr_fold(addr: &IpAddr) -> u32 {
    match addr {
        IpAddr::V4(a) => u32::from(*a),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            w(0) ^ w(4) ^ w(8) ^ w(12)
        }
    }
}

/// `ip_vs_dh_hashkey`: `hash_32(ntohl(addr_fold), IP_VS_DH_TAB_BITS)`.
pub fn dh_bucket(addr: &IpAddr) -> usize {
    hash_32(addr_fold(addr), IP_VS_DH_TAB_BITS) as usize
}

/// `ip_vs_sh_hashkey` with offset 0: `hash_32(ntohs(port) + ntohl(addr_fold),
/// IP_VS_SH_TAB_BITS)`; `port` is 0 unless the service has the `sh-port` flag (not
/// offered here).
pub fn sh_bucket(addr: &IpAddr, port: u16) -> usize {
    hash_32(
        u32::from(port).wrapping_add(addr_fold(addr)),
        IP_VS_SH_TAB_BITS,
    ) as usize
}

/// `ip_vs_dh_reassign`: bucket `i` gets dest `i mod n`, the list walked round and
/// round; all empty without dests.
pub(super) fn dh_assign(dests: &[Dest]) -> Vec<u32> {
    (0..IP_VS_DH_TAB_SIZE)
        .map(|i| dh_dest_of_bucket(dests, i).map_or(NO_DEST, |d| d as u32))
        .collect()
}

/// Bucket `b`'s dest: the `(b mod n)`-th of the `n` dests that are not holes (a hole is
/// a removed destination whose index is kept; IPVS's list no longer has it).
fn dh_dest_of_bucket(dests: &[Dest], b: usize) -> Option<usize> {
    let n = dests.iter().filter(|d| !d.is_hole()).count();
    if n == 0 {
        return None;
    }
    dests
        .iter()
        .enumerate()
        .filter(|(_, d)| !d.is_hole())
        .nth(b % n)
        .map(|(i, _)| i)
}

/// `ip_vs_sh_reassign`: the list walked round and round, each dest filling as many
/// consecutive buckets as its weight ("Don't move to next dest until filling weight"),
/// a weight-0 dest still one bucket (`++d_count >= 0`). Calls `f(bucket, dest)` for
/// buckets `0..=last`; nothing without dests.
fn sh_walk(dests: &[Dest], last: usize, mut f: impl FnMut(usize, usize)) {
    let n = dests.len();
    if !dests.iter().any(|d| !d.is_hole()) {
        return;
    }
    // The next dest at or after `p` that is not a hole, round and round.
    let present = |mut p: usize| loop {
        if p >= n {
            p = 0;
        }
        if !dests[p].is_hole() {
            return p;
        }
        p += 1;
    };
    let mut p = present(0);
    let mut d_count = 0u64;
    for i in 0..=last.min(IP_VS_SH_TAB_SIZE - 1) {
        f(i, p);
        d_count += 1;
        if d_count >= u64::from(dests[p].weight) {
            p = present(p + 1);
            d_count = 0;
        }
    }
}

/// The whole sh table, as [`sh_walk`] fills it.
pub(super) fn sh_assign(dests: &[Dest]) -> Vec<u32> {
    let mut t = vec![NO_DEST; IP_VS_SH_TAB_SIZE];
    sh_walk(dests, IP_VS_SH_TAB_SIZE - 1, |b, d| t[b] = d as u32);
    t
}

/// The dest a bucket holds: from the tables when they are this generation's, else
/// recomputed on the spot (no allocation: dh is `b mod n`, sh a walk of at most 256
/// steps).
fn bucket_dest(tables: &SchedTables, kind: SchedKind, dests: &[Dest], b: usize) -> Option<usize> {
    if tables.is_built_for(kind, dests) {
        return tables.bucket(b);
    }
    match kind {
        SchedKind::Dh => dh_dest_of_bucket(dests, b),
        _ => {
            let mut found = None;
            sh_walk(dests, b, |i, d| {
                if i == b {
                    found = Some(d);
                }
            });
            found
        }
    }
}

/// The bucket's dest if it may take connections (`!dest || !AVAILABLE || weight <= 0 ||
/// OVERLOAD` gives NULL in both schedulers).
fn available(dests: &[Dest], d: Option<usize>) -> Option<usize> {
    d.filter(|&i| dests.get(i).is_some_and(eligible))
}

/// Destination hashing, mirroring `ip_vs_dh_schedule`: the bucket of the destination
/// address.
pub(super) fn dh(tables: &SchedTables, dests: &[Dest], daddr: &IpAddr) -> Option<usize> {
    let b = dh_bucket(daddr);
    available(dests, bucket_dest(tables, SchedKind::Dh, dests, b))
}

/// Source hashing, mirroring `ip_vs_sh_schedule` without flags (`ip_vs_sh_get`): the
/// bucket of the source address.
pub(super) fn sh(tables: &SchedTables, dests: &[Dest], saddr: &IpAddr) -> Option<usize> {
    let b = sh_bucket(saddr, 0);
    available(dests, bucket_dest(tables, SchedKind::Sh, dests, b))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;

    #[test]
    fn a_hole_is_not_in_the_dh_or_sh_tables() {
        let mk = |backend: u16, weight: u32| Dest {
            addr: v4(198, 18, 0, backend as u8),
            port: 80,
            backend,
            weight,
            usable: backend != Dest::HOLE,
        };
        // [a, hole, c] deals its buckets as [a, c] would.
        let with_hole = [mk(0, 1), mk(Dest::HOLE, 0), mk(2, 1)];
        let dh = dh_assign(&with_hole);
        assert!(
            dh.iter().step_by(2).all(|&d| d == 0) && dh.iter().skip(1).step_by(2).all(|&d| d == 2)
        );
        let sh = sh_assign(&with_hole);
        assert!(sh.iter().all(|&d| d == 0 || d == 2), "{sh:?}");
        assert_eq!(sh.iter().filter(|&&d| d == 0).count(), 128);
    }

    #[test]
    fn hash_32_is_the_kernels() {
        // Values computed by hand from include/linux/hash.h: (val * 0x61C88647) >> 24.
        assert_eq!(hash_32(0, 8), 0);
        // 1 * 0x61C88647 = 0x61C88647 -> 0x61.
        assert_eq!(hash_32(1, 8), 0x61);
        // 2 * 0x61C88647 = 0xC3910C8E -> 0xC3.
        assert_eq!(hash_32(2, 8), 0xC3);
        // 3 * 0x61C88647 = 0x1_255992D5 -> 0x255992D5 (mod 2^32) -> 0x25.
        assert_eq!(hash_32(3, 8), 0x25);
        assert_eq!(hash_32(3, 32), 0x2559_92D5);
        // 198.18.0.1 = 0xC6120001 -> 0xC6120001 * 0x61C88647 = 0x...BC... -> bucket 0xBC.
        assert_eq!(hash_32(0xC612_0001, 8), 0xBC);
    }

    #[test]
    fn addresses_fold_as_the_kernel_does() {
        assert_eq!(addr_fold(&v4(198, 18, 0, 1)), 0xC612_0001);
        // 2001:db8::1 -> 0x20010db8 ^ 0 ^ 0 ^ 0x00000001.
        let a = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);
        assert_eq!(addr_fold(&a), 0x2001_0db9);
        // sh adds the port (0 here) before hashing; dh does not.
        assert_eq!(
            sh_bucket(&v4(198, 18, 0, 1), 0),
            dh_bucket(&v4(198, 18, 0, 1))
        );
        assert_eq!(
            dh_bucket(&v4(198, 18, 0, 1)),
            (0xC612_0001u32.wrapping_mul(0x61C8_8647) >> 24) as usize
        );
        assert_eq!(
            sh_bucket(&v4(198, 18, 0, 1), 5),
            (0xC612_0006u32.wrapping_mul(0x61C8_8647) >> 24) as usize
        );
    }

    #[test]
    fn dh_table_is_round_robin_over_the_list() {
        let ds = dests(&[5, 0, 1]);
        let t = SchedTables::build(SchedKind::Dh, &ds);
        for b in 0..IP_VS_DH_TAB_SIZE {
            assert_eq!(t.bucket(b), Some(b % 3));
        }
        let empty = SchedTables::build(SchedKind::Dh, &[]);
        assert_eq!(empty.bucket(0), None);
    }

    #[test]
    fn sh_table_repeats_a_dest_by_its_weight() {
        // Weights 3, 0, 2: a a a b c c | a a a b c c | ... (b with weight 0 still gets
        // one bucket, as `++d_count >= 0` moves on after it).
        let ds = dests(&[3, 0, 2]);
        let t = SchedTables::build(SchedKind::Sh, &ds);
        let cycle = [0, 0, 0, 1, 2, 2];
        for b in 0..IP_VS_SH_TAB_SIZE {
            assert_eq!(t.bucket(b), Some(cycle[b % 6]), "bucket {b}");
        }
        // A weight above 256 takes every bucket.
        let t = SchedTables::build(SchedKind::Sh, &dests(&[300, 1]));
        assert!((0..IP_VS_SH_TAB_SIZE).all(|b| t.bucket(b) == Some(0)));
        // 200 + 100: 200 buckets for a, the last 56 for b.
        let t = SchedTables::build(SchedKind::Sh, &dests(&[200, 100]));
        assert_eq!((0..256).filter(|&b| t.bucket(b) == Some(0)).count(), 200);
        assert_eq!(t.bucket(255), Some(1));
    }

    fn pick(kind: SchedKind, t: &SchedTables, ds: &[Dest], c: &Client) -> Option<usize> {
        let mut s = SchedState::new(kind);
        let load = vec![DestLoad::default(); ds.len()];
        schedule(kind, t, &mut s, ds, &load, c, 0)
    }

    #[test]
    fn dh_and_sh_are_deterministic_and_key_on_the_right_address() {
        let ds = dests(&[1, 1, 1, 1]);
        let tdh = SchedTables::build(SchedKind::Dh, &ds);
        let tsh = SchedTables::build(SchedKind::Sh, &ds);
        let mut rng = Rng(5);
        for _ in 0..500 {
            let a = v4(
                rng.below(256) as u8,
                rng.below(256) as u8,
                7,
                rng.below(256) as u8,
            );
            let b = v4(rng.below(256) as u8, 1, 2, rng.below(256) as u8);
            // dh: the destination address alone decides.
            let c1 = Client {
                dst: a,
                ..client_from(b)
            };
            let c2 = Client {
                dst: a,
                src_port: 1,
                ..client_from(v4(9, 9, 9, 9))
            };
            let want = Some(dh_bucket(&a) % 4);
            assert_eq!(pick(SchedKind::Dh, &tdh, &ds, &c1), want);
            assert_eq!(pick(SchedKind::Dh, &tdh, &ds, &c2), want);
            // sh: the source address alone decides.
            let c3 = client_from(b);
            let c4 = Client {
                dst: a,
                src_port: 2,
                ..client_from(b)
            };
            let want = Some(sh_bucket(&b, 0) % 4);
            assert_eq!(pick(SchedKind::Sh, &tsh, &ds, &c3), want);
            assert_eq!(pick(SchedKind::Sh, &tsh, &ds, &c4), want);
            // Without tables (or stale ones) the same answer, computed on the spot.
            let none = SchedTables::default();
            assert_eq!(pick(SchedKind::Sh, &none, &ds, &c3), want);
            assert_eq!(
                pick(SchedKind::Dh, &none, &ds, &c1),
                Some(dh_bucket(&a) % 4)
            );
        }
    }

    #[test]
    fn the_hashes_spread_addresses_over_the_buckets() {
        // 65536 consecutive IPv4 addresses (a /16) fill the 256 buckets evenly: the
        // multiplicative hash of consecutive keys is equidistributed.
        let mut dh = [0u32; 256];
        let mut sh = [0u32; 256];
        for i in 0..65536u32 {
            let a = IpAddr::V4((0xC633_0000 | i).into());
            dh[dh_bucket(&a)] += 1;
            sh[sh_bucket(&a, 0)] += 1;
        }
        for c in dh.iter().chain(sh.iter()) {
            assert!((200..=312).contains(c), "{c}");
        }
        // Random IPv6 addresses too.
        let mut rng = Rng(11);
        let mut b6 = [0u32; 256];
        for _ in 0..25600 {
            let mut s = [0u16; 8];
            for x in &mut s {
                *x = rng.below(65536) as u16;
            }
            b6[sh_bucket(&v6(s), 0)] += 1;
        }
        for c in b6 {
            assert!((50..=160).contains(&c), "{c}");
        }
    }

    #[test]
    fn an_unavailable_dest_gives_no_dest_not_another() {
        let mut ds = dests(&[1, 1, 1]);
        ds[1].usable = false;
        let t = SchedTables::build(SchedKind::Sh, &ds);
        let tdh = SchedTables::build(SchedKind::Dh, &ds);
        let mut rng = Rng(3);
        for _ in 0..300 {
            let a = v4(172, 16, rng.below(256) as u8, rng.below(256) as u8);
            let got = pick(SchedKind::Sh, &t, &ds, &client_from(a));
            match t.bucket(sh_bucket(&a, 0)) {
                Some(1) => assert_eq!(got, None),
                other => assert_eq!(got, other),
            }
            let c = Client {
                dst: a,
                ..client_from(a)
            };
            let got = pick(SchedKind::Dh, &tdh, &ds, &c);
            match tdh.bucket(dh_bucket(&a)) {
                Some(1) => assert_eq!(got, None),
                other => assert_eq!(got, other),
            }
        }
    }

    #[test]
    fn sh_weights_shift_the_share_of_source_addresses() {
        let ds = dests(&[3, 1]);
        let t = SchedTables::build(SchedKind::Sh, &ds);
        let mut counts = [0u32; 2];
        for i in 0..65536u32 {
            let a = IpAddr::V4((0x0A00_0000 | i).into());
            counts[pick(SchedKind::Sh, &t, &ds, &client_from(a)).unwrap()] += 1;
        }
        // 192 of 256 buckets for the weight-3 dest: 75% of an evenly spread /16.
        let share = f64::from(counts[0]) / 65536.0;
        assert!((0.72..0.78).contains(&share), "{share}");
    }
}
