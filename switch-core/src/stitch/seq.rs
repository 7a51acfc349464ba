//! TCP sequence numbers: arithmetic modulo 2^32 (RFC 9293 section 3.4, RFC 1982).
//!
//! What it does: [`SeqNumber`] wraps the 32-bit sequence (or acknowledgment,
//! or SACK edge) value and gives it the only operations that make sense on a
//! circle of 2^32 points: moving forward or back by a byte count, the
//! distance between two points, and the "is before / is after" comparison of
//! RFC 1982 serial-number arithmetic.
//!
//! What it guarantees: every operation wraps; nothing panics or overflows,
//! whatever the values. `a.before(b)` is true exactly when `b` is less than
//! 2^31 bytes ahead of `a`, so comparisons stay right across the wrap (a
//! connection crossing `0xffff_ffff -> 0` keeps its order).
//!
//! What it must not do: implement `PartialOrd`/`Ord`. Modular "before" is
//! not transitive over the whole circle (`0 < 2^30 < 2^31 < 3 * 2^30 < 0`),
//! so it cannot be a total order, and a derived integer order would be
//! silently wrong across the wrap. Use [`SeqNumber::before`],
//! [`SeqNumber::after`], [`SeqNumber::max_seq`] instead.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

use serde::{Deserialize, Serialize};

/// A TCP sequence number: a point on the circle of 2^32 byte positions.
///
/// `seq + n` and `seq - n` move by `n: u32` bytes (wrapping);
/// `later - earlier` is the forward distance as a `u32` (also wrapping), which
/// is exactly the constant a stitch adds (`d_cb = S2 - R1`).
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// The signed distance from `other` to `self`: positive when `self` is
    /// after `other`, in `-2^31 ..= 2^31 - 1`.
    pub const fn diff(self, other: SeqNumber) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// True when `self` comes strictly before `other` (RFC 1982: `other` is
    /// 1 to 2^31 - 1 bytes ahead).
    pub const fn before(self, other: SeqNumber) -> bool {
        other.diff(self) > 0
    }

    /// True when `self` comes strictly after `other`.
    pub const fn after(self, other: SeqNumber) -> bool {
        self.diff(other) > 0
    }

    /// True when `self` is `other` or comes before it.
    pub const fn before_eq(self, other: SeqNumber) -> bool {
        other.diff(self) >= 0
    }

    /// True when `self` is `other` or comes after it.
    pub const fn after_eq(self, other: SeqNumber) -> bool {
        self.diff(other) >= 0
    }

    /// The later of the two (`self` when they are equal).
    pub const fn max_seq(self, other: SeqNumber) -> SeqNumber {
        if other.after(self) {
            other
        } else {
            self
        }
    }

    /// The earlier of the two (`self` when they are equal).
    pub const fn min_seq(self, other: SeqNumber) -> SeqNumber {
        if other.before(self) {
            other
        } else {
            self
        }
    }

    /// True when `self` lies in the half-open window `[start, start + len)`,
    /// measured forward from `start` (so it works across the wrap).
    pub const fn in_window(self, start: SeqNumber, len: u32) -> bool {
        self.0.wrapping_sub(start.0) < len
    }
}

impl From<u32> for SeqNumber {
    fn from(v: u32) -> Self {
        SeqNumber(v)
    }
}

impl From<SeqNumber> for u32 {
    fn from(s: SeqNumber) -> u32 {
        s.0
    }
}

impl Add<u32> for SeqNumber {
    type Output = SeqNumber;
    fn add(self, rhs: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(rhs))
    }
}

impl AddAssign<u32> for SeqNumber {
    fn add_assign(&mut self, rhs: u32) {
        self.0 = self.0.wrapping_add(rhs);
    }
}

impl Sub<u32> for SeqNumber {
    type Output = SeqNumber;
    fn sub(self, rhs: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_sub(rhs))
    }
}

impl SubAssign<u32> for SeqNumber {
    fn sub_assign(&mut self, rhs: u32) {
        self.0 = self.0.wrapping_sub(rhs);
    }
}

impl Sub<SeqNumber> for SeqNumber {
    /// The forward distance from `rhs` to `self`, modulo 2^32: the `d` with
    /// `rhs + d == self`.
    type Output = u32;
    fn sub(self, rhs: SeqNumber) -> u32 {
        self.0.wrapping_sub(rhs.0)
    }
}

impl fmt::Display for SeqNumber {
    /// The plain decimal value, as `tcpdump -S` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOP: SeqNumber = SeqNumber(u32::MAX);

    #[test]
    fn add_and_sub_wrap_around_zero() {
        assert_eq!(TOP + 1, SeqNumber(0));
        assert_eq!(TOP + 10, SeqNumber(9));
        assert_eq!(SeqNumber(0) - 1, TOP);
        assert_eq!(SeqNumber(5) - 10, SeqNumber(u32::MAX - 4));
        let mut s = SeqNumber(u32::MAX - 1);
        s += 3;
        assert_eq!(s, SeqNumber(1));
        s -= 3;
        assert_eq!(s, SeqNumber(u32::MAX - 1));
    }

    #[test]
    fn distance_is_forward_modulo_2_32() {
        assert_eq!(SeqNumber(3) - TOP, 4);
        assert_eq!(TOP - SeqNumber(3), u32::MAX - 3);
        let (s2, r1) = (SeqNumber(100), SeqNumber(u32::MAX - 99));
        let d = s2 - r1;
        assert_eq!(r1 + d, s2);
        assert_eq!(SeqNumber(3).diff(TOP), 4);
        assert_eq!(TOP.diff(SeqNumber(3)), -4);
    }

    #[test]
    fn comparison_holds_across_the_wrap() {
        assert!(TOP.before(SeqNumber(0)));
        assert!(SeqNumber(0).after(TOP));
        assert!(SeqNumber(u32::MAX - 1000).before(SeqNumber(1000)));
        assert!(!SeqNumber(1000).before(SeqNumber(u32::MAX - 1000)));
        assert!(SeqNumber(7).before_eq(SeqNumber(7)));
        assert!(SeqNumber(7).after_eq(SeqNumber(7)));
        assert!(!SeqNumber(7).before(SeqNumber(7)));
        assert!(!SeqNumber(7).after(SeqNumber(7)));
        assert_eq!(TOP.max_seq(SeqNumber(2)), SeqNumber(2));
        assert_eq!(SeqNumber(2).max_seq(TOP), SeqNumber(2));
        assert_eq!(TOP.min_seq(SeqNumber(2)), TOP);
        assert!(SeqNumber(1).in_window(SeqNumber(u32::MAX - 1), 4));
        assert!(!SeqNumber(2).in_window(SeqNumber(u32::MAX - 1), 4));
    }

    #[test]
    fn half_circle_is_neither_before_nor_after_consistently() {
        // Exactly 2^31 apart: RFC 1982 leaves this undefined; we say "after"
        // for neither, so the result never depends on the argument order.
        let a = SeqNumber(0);
        let b = SeqNumber(1 << 31);
        assert!(!(a.before(b) && b.before(a)));
        assert!(!(a.after(b) && b.after(a)));
    }

    #[test]
    fn display_and_serde_are_the_plain_number() {
        assert_eq!(SeqNumber(4_294_967_295).to_string(), "4294967295");
        let j = serde_json::to_string(&SeqNumber(42)).unwrap();
        assert_eq!(j, "42");
        assert_eq!(
            serde_json::from_str::<SeqNumber>(&j).unwrap(),
            SeqNumber(42)
        );
    }

    proptest! {
        #[test]
        fn add_then_sub_is_identity(a in any::<u32>(), d in any::<u32>()) {
            let s = SeqNumber(a);
            prop_assert_eq!(s + d - d, s);
            prop_assert_eq!((s + d) - s, d);
        }

        #[test]
        fn before_and_after_are_mirror_images(a in any::<u32>(), b in any::<u32>()) {
            let (a, b) = (SeqNumber(a), SeqNumber(b));
            prop_assert_eq!(a.before(b), b.after(a));
            prop_assert!(!(a.before(b) && a.after(b)));
            // Exactly half a circle apart, neither is after the other.
            prop_assume!(a - b != 1 << 31);
            let m = a.max_seq(b);
            prop_assert!(m == a || m == b);
            prop_assert!(a.before_eq(m) && b.before_eq(m));
        }

        #[test]
        fn small_forward_steps_are_after(a in any::<u32>(), n in 1u32..(1 << 31)) {
            let s = SeqNumber(a);
            prop_assert!((s + n).after(s));
            prop_assert!(s.before(s + n));
            prop_assert_eq!(s.max_seq(s + n), s + n);
        }
    }
}
