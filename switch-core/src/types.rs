//! Identifier newtypes shared by every stitchd crate.
//!
//! What it does: gives MAC addresses, ports, queues, lcores and bridges their
//! own types so that a queue number can never be passed where a port number is
//! expected, and so that logs and `stats` print them the same way everywhere
//! (`port0`, `q1`, `lcore2`, `br0`, `aa:bb:cc:dd:ee:ff`).
//!
//! What it guarantees: every type is `Copy`, hashable, ordered, and serializes
//! the way an operator writes it in a config file (ids as plain numbers, MAC
//! addresses as strings).
//!
//! What it must not do: carry behaviour that belongs to a layer (no DPDK
//! lookups, no table logic); these are plain values.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit IEEE 802 MAC address, most significant octet first (wire order).
#[derive(Copy, Clone, Eq, PartialEq, Hash, Ord, PartialOrd, Debug, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`, delivered to every port of a bridge.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// `00:00:00:00:00:00`, never a valid source; used as "no address".
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// True for `ff:ff:ff:ff:ff:ff`.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// True when the I/G bit (lowest bit of the first octet) is set: the frame
    /// is for a group. Broadcast is a multicast address by this definition.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True when the I/G bit is clear. Note that [`MacAddr::ZERO`] is unicast
    /// by this definition; check [`MacAddr::is_zero`] separately.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// True for `00:00:00:00:00:00`.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// The address as an integer, first octet in bits 47..40, so that integer
    /// order equals byte order. Used to pack addresses into table words.
    pub fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// Inverse of [`MacAddr::to_u64`]; bits above 47 are ignored.
    pub fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseMacError {
    /// The string is not 17 characters long (six two-digit groups and five separators).
    #[error("MAC address must be 17 characters like aa:bb:cc:dd:ee:ff, got {0}")]
    Length(usize),
    /// A separator is neither `:` nor `-`, or the string mixes the two.
    #[error("MAC address separator at character {0} must be ':' or '-', the same throughout")]
    Separator(usize),
    /// An octet is not two hexadecimal digits.
    #[error("MAC address octet {0} is not two hexadecimal digits")]
    Hex(usize),
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Accepts `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 17 {
            return Err(ParseMacError::Length(s.chars().count()));
        }
        let sep = bytes[2];
        if sep != b':' && sep != b'-' {
            return Err(ParseMacError::Separator(2));
        }
        let mut out = [0u8; 6];
        for (i, octet) in out.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && bytes[at - 1] != sep {
                return Err(ParseMacError::Separator(at - 1));
            }
            let hi = hex_digit(bytes[at]).ok_or(ParseMacError::Hex(i))?;
            let lo = hex_digit(bytes[at + 1]).ok_or(ParseMacError::Hex(i))?;
            *octet = (hi << 4) | lo;
        }
        Ok(MacAddr(out))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MacAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address like \"aa:bb:cc:dd:ee:ff\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MacAddr, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Copy, Clone, Eq, PartialEq, Hash, Ord, PartialOrd, Debug, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                $name(v)
            }
        }
    };
}

id_newtype!(
    /// A DPDK ethdev port number. Prints as `port0`.
    PortId(u16),
    "port"
);
id_newtype!(
    /// An RX or TX queue number of one port. Prints as `q1`.
    QueueId(u16),
    "q"
);
id_newtype!(
    /// A DPDK logical core id. Prints as `lcore2`.
    LcoreId(u32),
    "lcore"
);
id_newtype!(
    /// A bridge (broadcast domain) number. Prints as `br0`.
    BridgeId(u16),
    "br"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_display_is_lowercase_colon_separated() {
        let m = MacAddr([0xAA, 0xbb, 0x0c, 0, 0xEE, 0xff]);
        assert_eq!(m.to_string(), "aa:bb:0c:00:ee:ff");
    }

    #[test]
    fn mac_parses_upper_lower_and_dash() {
        let want = MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
        assert_eq!("aa:bb:cc:dd:ee:ff".parse::<MacAddr>(), Ok(want));
        assert_eq!("AA:BB:CC:DD:EE:FF".parse::<MacAddr>(), Ok(want));
        assert_eq!("aa-bb-cc-dd-ee-ff".parse::<MacAddr>(), Ok(want));
    }

    #[test]
    fn mac_parse_errors_say_what_is_wrong() {
        assert_eq!("aa:bb".parse::<MacAddr>(), Err(ParseMacError::Length(5)));
        assert_eq!(
            "aa:bb-cc:dd:ee:ff".parse::<MacAddr>(),
            Err(ParseMacError::Separator(5))
        );
        assert_eq!(
            "aa.bb.cc.dd.ee.ff".parse::<MacAddr>(),
            Err(ParseMacError::Separator(2))
        );
        assert_eq!(
            "aa:bb:cc:dd:ee:fg".parse::<MacAddr>(),
            Err(ParseMacError::Hex(5))
        );
        assert_eq!(
            "ä:bb:cc:dd:ee:ff".parse::<MacAddr>().unwrap_err(),
            ParseMacError::Hex(0)
        );
        assert!(ParseMacError::Hex(5).to_string().contains("octet 5"));
    }

    #[test]
    fn mac_classification() {
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_broadcast());
        assert!(MacAddr([0x02, 0, 0, 0, 0, 1]).is_unicast());
        assert!(MacAddr::ZERO.is_zero());
        assert!(!MacAddr([0x02, 0, 0, 0, 0, 1]).is_zero());
    }

    #[test]
    fn mac_u64_round_trip_is_big_endian() {
        let m = MacAddr([1, 2, 3, 4, 5, 6]);
        assert_eq!(m.to_u64(), 0x0102_0304_0506);
        assert_eq!(MacAddr::from_u64(0xffff_0102_0304_0506), m);
    }

    #[test]
    fn mac_serde_is_a_string() {
        let m = MacAddr([0xde, 0xad, 0xbe, 0xef, 0, 1]);
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(s, "\"de:ad:be:ef:00:01\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&s).unwrap(), m);
        assert!(serde_json::from_str::<MacAddr>("\"de:ad\"").is_err());
        assert_eq!(serde_json::to_string(&PortId(3)).unwrap(), "3");
    }

    #[test]
    fn ids_display_with_prefix() {
        assert_eq!(PortId(0).to_string(), "port0");
        assert_eq!(QueueId(1).to_string(), "q1");
        assert_eq!(LcoreId(2).to_string(), "lcore2");
        assert_eq!(BridgeId(0).to_string(), "br0");
    }
}
