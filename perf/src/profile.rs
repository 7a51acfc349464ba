//! Traffic profiles: what the generator sends and how fast, from a TOML file or the
//! command line, and the frame templates built from them.
//!
//! ```toml
//! duration_secs = 10
//! pps = 1000000            # or: line_rate = 0.5 (of line_gbps); neither: as fast as possible
//! line_gbps = 10           # what "line rate" means on software ports
//! burst = 32
//!
//! [[stream]]               # one or more; several make a mix, interleaved by weight
//! kind = "udp"             # l2 | udp | tcp | stitched
//! size = 64                # on the wire, with FCS
//! weight = 1
//! flows = 1000             # distinct frames (default: the longest range)
//! src_mac = "02:00:01:00:00:01-02:00:01:00:03:e8"   # pktgen ranges: START[-END][/STEP]
//! dst_mac = "02:00:00:ff:00:01"
//! src_ip = "198.18.0.1-198.18.3.232"
//! dst_ip = "198.19.255.1"
//! src_port = "1024-2023"
//! dst_port = "80"
//!
//! [[stream]]
//! kind = "stitched"
//! stitches = "stitches.json"   # `stitchctl --json stitch.list > stitches.json`
//! mac_c = "02:00:00:00:0c:01"
//! mac_a1 = "02:00:00:00:0a:01"
//! size = 128
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::packet::{self, Csum, FlowSpec, TcpFields, FCS_LEN, L4, WIRE_OVERHEAD};
use crate::range::{parse_mac, IpRange, MacRange, PortRange};
use crate::stitches::{self, StitchedTraffic};

/// A profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default = "default_duration")]
    pub duration_secs: f64,
    /// Offered rate in packets per second.
    pub pps: Option<f64>,
    /// Offered rate as a fraction of `line_gbps`.
    pub line_rate: Option<f64>,
    #[serde(default = "default_line")]
    pub line_gbps: f64,
    #[serde(default = "default_burst")]
    pub burst: usize,
    #[serde(rename = "stream", default)]
    pub streams: Vec<Stream>,
}

fn default_duration() -> f64 {
    10.0
}
fn default_line() -> f64 {
    10.0
}
fn default_burst() -> usize {
    32
}

/// Kind of frames in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    L2,
    Udp,
    Tcp,
    Stitched,
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Kind> {
        Ok(match s {
            "l2" => Kind::L2,
            "udp" => Kind::Udp,
            "tcp" => Kind::Tcp,
            "stitched" => Kind::Stitched,
            _ => bail!("kind must be l2, udp, tcp or stitched, not '{s}'"),
        })
    }
}

/// One stream of a profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    pub kind: Kind,
    #[serde(default = "default_size")]
    pub size: usize,
    #[serde(default = "default_weight")]
    pub weight: u32,
    pub flows: Option<u64>,
    #[serde(default = "default_src_mac")]
    pub src_mac: MacRange,
    #[serde(default = "default_dst_mac")]
    pub dst_mac: MacRange,
    #[serde(default = "default_src_ip")]
    pub src_ip: IpRange,
    #[serde(default = "default_dst_ip")]
    pub dst_ip: IpRange,
    #[serde(default = "default_src_port")]
    pub src_port: PortRange,
    #[serde(default = "default_dst_port")]
    pub dst_port: PortRange,
    /// `stitched`: the `stitch.list` JSON file.
    pub stitches: Option<PathBuf>,
    /// `stitched`: C's and A1's MACs.
    pub mac_c: Option<String>,
    pub mac_a1: Option<String>,
    /// `stitched`: add TCP timestamps (default true).
    pub timestamps: Option<bool>,
}

fn default_size() -> usize {
    64
}
fn default_weight() -> u32 {
    1
}
fn default_src_mac() -> MacRange {
    "02:00:01:00:00:01".parse().expect("literal")
}
fn default_dst_mac() -> MacRange {
    "02:00:00:ff:00:01".parse().expect("literal")
}
fn default_src_ip() -> IpRange {
    "198.18.0.1".parse().expect("literal")
}
fn default_dst_ip() -> IpRange {
    "198.19.255.1".parse().expect("literal")
}
fn default_src_port() -> PortRange {
    "1024".parse().expect("literal")
}
fn default_dst_port() -> PortRange {
    "80".parse().expect("literal")
}

impl Stream {
    /// A stream with every field at its default.
    pub fn new(kind: Kind) -> Stream {
        Stream {
            kind,
            size: default_size(),
            weight: 1,
            flows: None,
            src_mac: default_src_mac(),
            dst_mac: default_dst_mac(),
            src_ip: default_src_ip(),
            dst_ip: default_dst_ip(),
            src_port: default_src_port(),
            dst_port: default_dst_port(),
            stitches: None,
            mac_c: None,
            mac_a1: None,
            timestamps: None,
        }
    }

    /// The flows of this stream: flow `i` takes value `i` of every range (pktgen range
    /// mode, each field stepping independently), or one per stitch.
    ///
    /// # Errors
    /// Unreadable stitch list, bad MACs.
    pub fn flows(&self) -> Result<Vec<FlowSpec>> {
        if self.kind == Kind::Stitched {
            let path = self
                .stitches
                .as_ref()
                .context("a stitched stream needs `stitches` (a stitch.list JSON file)")?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut t = StitchedTraffic::default();
            if let Some(m) = &self.mac_c {
                t.mac_c = parse_mac(m)?;
            }
            if let Some(m) = &self.mac_a1 {
                t.mac_a1 = parse_mac(m)?;
            }
            t.timestamps = self.timestamps.unwrap_or(true);
            let (fl, skipped) = stitches::flows(&stitches::parse_list(&text)?, &t)?;
            if skipped > 0 {
                eprintln!("stitch-gen: {skipped} stitches not in state 'stitched' skipped");
            }
            if fl.is_empty() {
                bail!("{}: no stitched stitch to send to", path.display());
            }
            let n = self.flows.map_or(fl.len(), |n| (n as usize).min(fl.len()));
            return Ok(fl.into_iter().take(n).collect());
        }
        let longest = [
            self.src_mac.0,
            self.dst_mac.0,
            self.src_ip.0,
            self.dst_ip.0,
            self.src_port.0,
            self.dst_port.0,
        ]
        .iter()
        .map(|r| r.len())
        .max()
        .unwrap_or(1);
        let n = self.flows.unwrap_or(longest);
        if n == 0 || n > 16_000_000 {
            bail!("flows = {n}: must be 1-16000000");
        }
        let l4 = match self.kind {
            Kind::L2 => L4::L2,
            Kind::Udp => L4::Udp,
            _ => L4::Tcp(TcpFields {
                seq: 1,
                ack: 1,
                window: 65535,
                timestamps: None,
            }),
        };
        Ok((0..n)
            .map(|i| FlowSpec {
                src_mac: self.src_mac.at(i),
                dst_mac: self.dst_mac.at(i),
                src_ip: self.src_ip.at(i),
                dst_ip: self.dst_ip.at(i),
                src_port: self.src_port.at(i),
                dst_port: self.dst_port.at(i),
                l4,
            })
            .collect())
    }
}

impl Profile {
    /// Reads a TOML profile.
    ///
    /// # Errors
    /// Unreadable file, unknown keys, bad values.
    pub fn from_file(path: &std::path::Path) -> Result<Profile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("profile {}", path.display()))
    }
}

/// One built frame in a [`Templates`] set.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef {
    pub off: u32,
    pub len: u16,
    pub csum: Csum,
}

/// Every frame the generator sends, built once, and the order streams take turns in.
#[derive(Debug, Default)]
pub struct Templates {
    pub bytes: Vec<u8>,
    /// Frames of each stream.
    pub streams: Vec<Vec<FrameRef>>,
    /// Stream index of each slot of one round (each stream `weight` times, spread out).
    pub pattern: Vec<u16>,
}

impl Templates {
    /// Builds the frames of `streams`.
    ///
    /// # Errors
    /// When a stream cannot be built.
    pub fn build(streams: &[Stream]) -> Result<Templates> {
        if streams.is_empty() {
            bail!("no stream to send");
        }
        let mut t = Templates::default();
        for s in streams {
            let mut frames = Vec::new();
            for f in s.flows()? {
                let off = t.bytes.len();
                let csum = packet::build(&f, s.size, &mut t.bytes)?;
                frames.push(FrameRef {
                    off: u32::try_from(off).context("templates above 4 GiB")?,
                    len: (t.bytes.len() - off) as u16,
                    csum,
                });
            }
            t.streams.push(frames);
        }
        t.pattern = interleave(&streams.iter().map(|s| s.weight.max(1)).collect::<Vec<_>>());
        Ok(t)
    }

    /// The frame bytes of `r`.
    #[inline]
    pub fn frame(&self, r: FrameRef) -> &[u8] {
        &self.bytes[r.off as usize..r.off as usize + usize::from(r.len)]
    }

    /// Mean on-the-wire size (with FCS) over one round of the pattern.
    pub fn mean_wire_size(&self) -> f64 {
        let total: f64 = self
            .pattern
            .iter()
            .map(|&s| {
                let fr = &self.streams[usize::from(s)];
                fr.iter().map(|r| f64::from(r.len)).sum::<f64>() / fr.len() as f64
            })
            .sum();
        total / self.pattern.len() as f64 + FCS_LEN as f64
    }

    /// Total number of flows.
    pub fn flows(&self) -> usize {
        self.streams.iter().map(Vec::len).sum()
    }
}

/// Packets per second for `fraction` of `gbps` with frames of `wire_size` (FCS included):
/// each frame takes `wire_size + 20` bytes of line time (preamble, SFD, gap).
pub fn line_rate_pps(gbps: f64, fraction: f64, wire_size: f64) -> f64 {
    gbps * 1e9 * fraction / ((wire_size + WIRE_OVERHEAD as f64) * 8.0)
}

/// A round of slots where stream `i` appears `w[i]` times, spread evenly (smooth weighted
/// round robin).
pub fn interleave(w: &[u32]) -> Vec<u16> {
    let total: i64 = w.iter().map(|&x| i64::from(x)).sum();
    let mut cur = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &x) in cur.iter_mut().zip(w) {
            *c += i64::from(x);
        }
        let (best, _) = cur
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, -(i as i64)))
            .unwrap_or((0, &0));
        cur[best] -= total;
        out.push(best as u16);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    #[test]
    fn every_value_of_every_range_appears_with_its_step() {
        let mut s = Stream::new(Kind::Udp);
        s.src_ip = "198.18.0.1-198.18.0.200/3".parse().unwrap(); // 67 values
        s.dst_port = "5000-5100/10".parse().unwrap(); // 11 values
        s.src_mac = "02:00:00:00:00:00-02:00:00:00:00:04".parse().unwrap(); // 5 values
        let t = Templates::build(&[s]).unwrap();
        assert_eq!(t.flows(), 67, "default flows = the longest range");
        let (mut ips, mut ports, mut macs) = (HashSet::new(), HashSet::new(), HashSet::new());
        for (i, r) in t.streams[0].iter().enumerate() {
            let p = SlicedPacket::from_ethernet(t.frame(*r)).unwrap();
            let Some(NetSlice::Ipv4(ip)) = p.net else {
                panic!()
            };
            let Some(TransportSlice::Udp(u)) = p.transport else {
                panic!()
            };
            let src = ip.header().source_addr();
            // pktgen range mode: each field steps independently and wraps to its start.
            assert_eq!(
                u32::from(src),
                u32::from(Ipv4Addr::new(198, 18, 0, 1)) + 3 * i as u32
            );
            assert_eq!(u.destination_port(), 5000 + 10 * (i as u16 % 11));
            ips.insert(src);
            ports.insert(u.destination_port());
            macs.insert(<[u8; 6]>::try_from(&t.frame(*r)[6..12]).unwrap());
        }
        assert_eq!((ips.len(), ports.len(), macs.len()), (67, 11, 5));
        assert!(ports.iter().all(|p| (p - 5000) % 10 == 0 && *p <= 5100));
        assert!(ips
            .iter()
            .all(|a| (u32::from(*a) - u32::from(Ipv4Addr::new(198, 18, 0, 1))) % 3 == 0));
    }

    #[test]
    fn toml_profile_with_a_mix_parses_and_unknown_keys_are_refused() {
        let p: Profile = toml::from_str(
            r#"
            pps = 1000
            [[stream]]
            kind = "udp"
            weight = 3
            src_port = "1-4"
            [[stream]]
            kind = "l2"
            size = 128
            "#,
        )
        .unwrap();
        let t = Templates::build(&p.streams).unwrap();
        assert_eq!(t.pattern, [0, 0, 1, 0]);
        assert_eq!(t.streams[0].len(), 4);
        assert_eq!(t.streams[1][0].len, 124);
        assert!((t.mean_wire_size() - (3.0 * 66.0 + 128.0) / 4.0).abs() < 1e-9);
        let bad = toml::from_str::<Profile>("[[stream]]\nkind = \"udp\"\nsrc_prot = \"1\"\n");
        assert!(bad.unwrap_err().to_string().contains("src_prot"));
    }

    #[test]
    fn line_rate_counts_preamble_and_gap() {
        // 10 Gbit/s of 64-byte frames is the classic 14.88 Mpps.
        let pps = line_rate_pps(10.0, 1.0, 64.0);
        assert!((pps - 14_880_952.38).abs() < 1.0);
        assert!((line_rate_pps(10.0, 0.5, 64.0) - pps / 2.0).abs() < 1e-6);
    }

    #[test]
    fn interleave_spreads_weights() {
        assert_eq!(interleave(&[1]), [0]);
        let p = interleave(&[2, 1, 1]);
        assert_eq!(p.len(), 4);
        assert_eq!(p.iter().filter(|&&s| s == 0).count(), 2);
    }
}
