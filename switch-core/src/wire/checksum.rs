//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! What it does: full sums for the slow path and for verification, and
//! incremental updates so that the fast path can rewrite an address, a port
//! or a TTL and patch the checksum in a few instructions instead of summing
//! the whole packet again.
//!
//! What it guarantees: `update16`, `update32` and `update_bytes` give the same
//! checksum a full recompute would (property-tested below), for any header
//! that is not entirely zero after the change. They use RFC 1624 equation 3,
//! `HC' = ~(~HC + ~m + m')`, which avoids the `-0` pitfall of RFC 1141.
//!
//! What it must not do: allocate or panic. Sums are accumulated in `u64` and
//! folded, so even a 64 KiB jumbo buffer cannot overflow.
//!
//! Conventions: [`sum`] and the `pseudo_header_*` functions return a partial
//! sum (already folded to at most 16 significant bits, but not complemented)
//! that can be added to other partial sums in a `u32`; [`fold`] folds the
//! carries of such an addition; the value written to a checksum field is
//! `!fold(..)`. A correct header sums (checksum field included) to `0xffff`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::IpProtocol;

/// The ones-complement sum of `data` as big-endian 16-bit words; an odd last
/// byte is padded with a zero byte on the right (RFC 1071).
///
/// The result is folded to 16 bits, so adding a few of them in a `u32` cannot
/// overflow.
pub fn sum(data: &[u8]) -> u32 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// Folds the carries of a ones-complement sum into 16 bits (not complemented).
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum field value for `data` alone: `!fold(sum(data))`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Partial sum of the IPv4 pseudo-header (RFC 793 / RFC 768): source,
/// destination, zero, protocol, upper-layer length.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, len: u16) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    let words = [
        u16::from_be_bytes([s[0], s[1]]),
        u16::from_be_bytes([s[2], s[3]]),
        u16::from_be_bytes([d[0], d[1]]),
        u16::from_be_bytes([d[2], d[3]]),
        u16::from(u8::from(proto)),
        len,
    ];
    u32::from(fold(words.iter().map(|&w| u32::from(w)).sum()))
}

/// Partial sum of the IPv6 pseudo-header (RFC 8200 section 8.1): source,
/// destination, 32-bit upper-layer length, three zero bytes, next header.
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: IpProtocol, len: u32) -> u32 {
    let total = sum(&src.octets())
        + sum(&dst.octets())
        + (len >> 16)
        + (len & 0xffff)
        + u32::from(u8::from(proto));
    u32::from(fold(total))
}

/// RFC 1624 incremental update for one 16-bit field that changed from `old`
/// to `new`: returns the new checksum field value.
pub fn update16(old_csum: u16, old: u16, new: u16) -> u16 {
    let s = u32::from(!old_csum) + u32::from(!old) + u32::from(new);
    !fold(s)
}

/// RFC 1624 incremental update for a 32-bit field (two adjacent 16-bit words,
/// such as a TCP sequence number or an IPv4 address stored at an even offset).
pub fn update32(old_csum: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(!old_csum)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    !fold(s)
}

/// RFC 1624 incremental update for a field of any even length at an even
/// offset (an IPv6 address, a MAC address inside a checksummed payload).
///
/// `old` and `new` must have the same length; the result is meaningless (but
/// there is no panic) otherwise.
pub fn update_bytes(old_csum: u16, old: &[u8], new: &[u8]) -> u16 {
    let s = u32::from(!old_csum) + u32::from(!fold(sum(old))) + sum(new);
    !fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example_sum() {
        // RFC 1071 section 3 example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_right() {
        assert_eq!(sum(&[0x12]), 0x1200);
        assert_eq!(sum(&[0x00, 0x01, 0x02]), 0x0201);
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // Wikipedia's IPv4 header checksum example: checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(fold(sum(&h)), 0xffff);
    }

    #[test]
    fn rfc1624_minus_zero_case() {
        // RFC 1624 section 4: header checksum 0xdd2f, a field 0x5555 -> 0x3285
        // must give 0x0000, not 0xffff.
        assert_eq!(update16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn large_buffer_does_not_overflow() {
        let data = vec![0xffu8; 65536 * 3];
        assert_eq!(fold(sum(&data)), 0xffff);
    }

    /// A buffer with a fixed non-zero first word (so it is never all zero,
    /// the one case where ones-complement has two representations) followed
    /// by random bytes.
    fn buffer() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 8..200).prop_map(|mut v| {
            v[0] = 0x45;
            v
        })
    }

    /// The offset (even, after the fixed word and the checksum word) of a
    /// `width`-byte field inside `len` bytes.
    fn field_at(len: usize, pick: usize, width: usize) -> usize {
        let slots = (len - 4 - width) / 2 + 1;
        4 + 2 * (pick % slots)
    }

    proptest! {
        #[test]
        fn update16_matches_full_recompute(mut buf in buffer(), pick in any::<usize>(), new in any::<u16>()) {
            buf[2] = 0;
            buf[3] = 0;
            let c = checksum(&buf);
            buf[2..4].copy_from_slice(&c.to_be_bytes());
            let at = field_at(buf.len(), pick, 2);
            let old = u16::from_be_bytes([buf[at], buf[at + 1]]);
            buf[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let inc = update16(c, old, new);
            buf[2] = 0;
            buf[3] = 0;
            prop_assert_eq!(inc, checksum(&buf));
        }

        #[test]
        fn update32_matches_full_recompute(mut buf in buffer(), pick in any::<usize>(), new in any::<u32>()) {
            buf[2] = 0;
            buf[3] = 0;
            let c = checksum(&buf);
            let at = field_at(buf.len(), pick, 4);
            let old = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            buf[at..at + 4].copy_from_slice(&new.to_be_bytes());
            prop_assert_eq!(update32(c, old, new), checksum(&buf));
        }

        #[test]
        fn update_bytes_matches_full_recompute(
            mut buf in proptest::collection::vec(any::<u8>(), 24..200),
            pick in any::<usize>(),
            new in any::<[u8; 16]>(),
        ) {
            buf[0] = 0x60;
            buf[2] = 0;
            buf[3] = 0;
            let c = checksum(&buf);
            let at = field_at(buf.len(), pick, 16);
            let old = buf[at..at + 16].to_vec();
            buf[at..at + 16].copy_from_slice(&new);
            prop_assert_eq!(update_bytes(c, &old, &new), checksum(&buf));
        }

        #[test]
        fn updated_checksum_verifies(mut buf in buffer(), pick in any::<usize>(), new in any::<u16>()) {
            buf[2] = 0;
            buf[3] = 0;
            let c = checksum(&buf);
            buf[2..4].copy_from_slice(&c.to_be_bytes());
            let at = field_at(buf.len(), pick, 2);
            let old = u16::from_be_bytes([buf[at], buf[at + 1]]);
            buf[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let inc = update16(c, old, new);
            buf[2..4].copy_from_slice(&inc.to_be_bytes());
            prop_assert_eq!(fold(sum(&buf)), 0xffff);
        }
    }
}
