//! pktgen-style field ranges: `start`, `end`, `step`. Packet (or flow) `i` takes
//! `start + (i mod len) * step`, where `len = (end - start) / step + 1`: the value counts up
//! by `step` and wraps back to `start` once it would pass `end`, as pktgen-dpdk's range mode
//! does for each field independently.
//!
//! Written as `START[-END][/STEP]`: `198.18.0.1-198.18.3.232`, `1024-2047/2`,
//! `02:00:00:00:00:01-02:00:00:00:03:e8`. A single value is a range of one.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// A range over a numeric field (addresses and MACs as integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
    pub step: u64,
}

impl Range {
    /// A range of one value.
    pub fn one(v: u64) -> Range {
        Range {
            start: v,
            end: v,
            step: 1,
        }
    }

    /// Number of distinct values.
    pub fn len(&self) -> u64 {
        (self.end - self.start) / self.step + 1
    }

    /// Never empty (a range holds at least `start`); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The value the `i`th packet or flow takes.
    pub fn value(&self, i: u64) -> u64 {
        self.start + (i % self.len()) * self.step
    }

    fn parse_with(s: &str, max: u64, one: impl Fn(&str) -> Result<u64>) -> Result<Range> {
        let (body, step) = match s.split_once('/') {
            Some((b, st)) => (
                b,
                st.trim()
                    .parse::<u64>()
                    .with_context(|| format!("step in '{s}'"))?,
            ),
            None => (s, 1),
        };
        let (start, end) = match body.split_once('-') {
            Some((a, b)) => (one(a.trim())?, one(b.trim())?),
            None => {
                let v = one(body.trim())?;
                (v, v)
            }
        };
        if step == 0 {
            bail!("step 0 in '{s}'");
        }
        if end < start {
            bail!("end before start in '{s}'");
        }
        if end > max {
            bail!("'{s}' is out of range");
        }
        Ok(Range { start, end, step })
    }
}

/// A range of IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange(pub Range);
/// A range of L4 ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub Range);
/// A range of MAC addresses (as 48-bit integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacRange(pub Range);

impl IpRange {
    pub fn at(&self, i: u64) -> Ipv4Addr {
        Ipv4Addr::from(self.0.value(i) as u32)
    }
}
impl PortRange {
    pub fn at(&self, i: u64) -> u16 {
        self.0.value(i) as u16
    }
}
impl MacRange {
    pub fn at(&self, i: u64) -> [u8; 6] {
        let b = self.0.value(i).to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC '{s}'"))?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("MAC needs 6 bytes: '{s}'"))
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn mac_u64(m: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&m);
    u64::from_be_bytes(b)
}

impl FromStr for IpRange {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Range::parse_with(s, u64::from(u32::MAX), |p| {
            Ok(u64::from(u32::from(
                p.parse::<Ipv4Addr>()
                    .with_context(|| format!("bad IPv4 address '{p}'"))?,
            )))
        })
        .map(IpRange)
    }
}
impl FromStr for PortRange {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Range::parse_with(s, 65535, |p| {
            Ok(u64::from(
                p.parse::<u16>()
                    .with_context(|| format!("bad port '{p}'"))?,
            ))
        })
        .map(PortRange)
    }
}
impl FromStr for MacRange {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Range::parse_with(s, (1 << 48) - 1, |p| parse_mac(p).map(mac_u64)).map(MacRange)
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        write!(
            f,
            "{}-{}/{}",
            Ipv4Addr::from(r.start as u32),
            Ipv4Addr::from(r.end as u32),
            r.step
        )
    }
}

/// serde support: ranges are written as strings in TOML profiles.
macro_rules! serde_str {
    ($t:ty) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse()
                    .map_err(|e: anyhow::Error| serde::de::Error::custom(format!("{e:#}")))
            }
        }
    };
}
serde_str!(IpRange);
serde_str!(PortRange);
serde_str!(MacRange);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_wraps_to_start_after_end() {
        let r: PortRange = "1000-1010/4".parse().unwrap();
        assert_eq!(r.0.len(), 3);
        let v: Vec<u16> = (0..7).map(|i| r.at(i)).collect();
        assert_eq!(v, [1000, 1004, 1008, 1000, 1004, 1008, 1000]);
    }

    #[test]
    fn ip_and_mac_ranges_parse_and_count() {
        let r: IpRange = "198.18.0.250-198.18.1.4".parse().unwrap();
        assert_eq!(r.0.len(), 11);
        assert_eq!(r.at(6), Ipv4Addr::new(198, 18, 1, 0));
        let m: MacRange = "02:00:00:00:00:fe-02:00:00:00:01:01".parse().unwrap();
        assert_eq!(m.at(2), [2, 0, 0, 0, 1, 0]);
        let one: IpRange = "198.19.2.3".parse().unwrap();
        assert_eq!(one.0.len(), 1);
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!("10-5".parse::<PortRange>().is_err());
        assert!("1-70000".parse::<PortRange>().is_err());
        assert!("1-5/0".parse::<PortRange>().is_err());
        assert!("1.2.3".parse::<IpRange>().is_err());
    }
}
