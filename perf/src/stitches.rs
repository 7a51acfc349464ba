//! Stitched traffic from what `stitchctl --json stitch.list` prints:
//! `{"stitches":[{"id","state","proto","leg_a":{"client","shell"},"leg_b":{"shell","core"},"teardown"}]}`.
//!
//! For each stitch in state `stitched`, the generator sends leg A's client -> shell
//! direction (C -> A1: what enters the switch from the client's port); the switch
//! translates it into leg B (A2 -> B) and sends it out of B's port. The list holds no MACs
//! (the switch learned or was given them): the client's and the shell's MAC come from the
//! command line or the profile.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::packet::{FlowSpec, TcpFields, L4};

/// `stitch.list`'s result.
#[derive(Debug, Deserialize)]
pub struct StitchList {
    pub stitches: Vec<StitchSummary>,
}

/// One stitch as `stitch.list` shows it.
#[derive(Debug, Deserialize)]
pub struct StitchSummary {
    pub id: u32,
    pub state: String,
    pub proto: String,
    pub leg_a: LegA,
    pub leg_b: LegB,
    #[serde(default)]
    pub teardown: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LegA {
    pub client: SocketAddr,
    pub shell: SocketAddr,
}

#[derive(Debug, Deserialize)]
pub struct LegB {
    pub shell: SocketAddr,
    pub core: SocketAddr,
}

/// How to turn stitches into frames.
#[derive(Debug, Clone, Copy)]
pub struct StitchedTraffic {
    /// C's MAC (source of the frames).
    pub mac_c: [u8; 6],
    /// A1's MAC (the shell on leg A: destination of the frames).
    pub mac_a1: [u8; 6],
    /// TCP sequence and acknowledgment numbers the client uses (any value is translated;
    /// the defaults match `perf/bench-fastpath.sh`'s `r1` and `s1`-side numbers).
    pub seq: u32,
    pub ack: u32,
    /// Add a TCP timestamp option (stitches with `ts` shifts rewrite it).
    pub timestamps: bool,
}

impl Default for StitchedTraffic {
    fn default() -> Self {
        StitchedTraffic {
            mac_c: [2, 0, 0, 0, 0x0c, 1],
            mac_a1: [2, 0, 0, 0, 0x0a, 1],
            seq: 1000,
            ack: 2000,
            timestamps: true,
        }
    }
}

/// Parses a `stitch.list` JSON text (the result object itself, or a full JSON-RPC
/// response with it under `result`).
///
/// # Errors
/// When the text is not that shape.
pub fn parse_list(text: &str) -> Result<StitchList> {
    if let Ok(l) = serde_json::from_str::<StitchList>(text) {
        return Ok(l); // the common case, without building a Value of a million stitches
    }
    let v: serde_json::Value = serde_json::from_str(text).context("stitch list is not JSON")?;
    let v = if v.get("stitches").is_none() {
        v.get("result").cloned().unwrap_or(v)
    } else {
        v
    };
    serde_json::from_value(v).context("not the shape `stitchctl --json stitch.list` prints")
}

fn v4(a: SocketAddr, id: u32) -> Result<Ipv4Addr> {
    match a {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(_) => bail!("stitch {id}: IPv6 legs are not generated yet"),
    }
}

/// The C -> A1 flows of every stitched stitch in `list` (others are skipped: the switch
/// does not translate them). Returns the flows and how many stitches were skipped.
///
/// # Errors
/// IPv6 stitches, unknown protocols.
pub fn flows(list: &StitchList, t: &StitchedTraffic) -> Result<(Vec<FlowSpec>, usize)> {
    let mut out = Vec::with_capacity(list.stitches.len());
    let mut skipped = 0;
    for s in &list.stitches {
        if s.state != "stitched" {
            skipped += 1;
            continue;
        }
        let l4 = match s.proto.as_str() {
            "tcp" => L4::Tcp(TcpFields {
                seq: t.seq,
                ack: t.ack,
                window: 512,
                timestamps: t.timestamps.then_some((100, 50)),
            }),
            "udp" => L4::Udp,
            p => bail!("stitch {}: unknown proto '{p}'", s.id),
        };
        out.push(FlowSpec {
            src_mac: t.mac_c,
            dst_mac: t.mac_a1,
            src_ip: v4(s.leg_a.client, s.id)?,
            dst_ip: v4(s.leg_a.shell, s.id)?,
            src_port: s.leg_a.client.port(),
            dst_port: s.leg_a.shell.port(),
            l4,
        });
    }
    Ok((out, skipped))
}

/// The `i`th address counting from `a` as stitchd's `[[stitch.install]]` `count` does:
/// port + i % 50000 (wrapping past 65535, skipping 0), address + i / 50000.
pub fn nth_addr(a: SocketAddr, i: u32) -> SocketAddr {
    let port = ((u32::from(a.port()) + i % 50_000 - 1) % 65_535 + 1) as u16;
    let step = i / 50_000;
    match a {
        SocketAddr::V4(v) => SocketAddr::new(
            Ipv4Addr::from(u32::from(*v.ip()).wrapping_add(step)).into(),
            port,
        ),
        SocketAddr::V6(v) => SocketAddr::new(
            std::net::Ipv6Addr::from(u128::from(*v.ip()).wrapping_add(u128::from(step))).into(),
            port,
        ),
    }
}

/// Writes, in `stitch.list`'s shape, the stitches a `[[stitch.install]]` with `count`
/// installs (ids from 1): lets a benchmark with a million stitches skip listing them over
/// the control socket.
pub fn install_list_json(
    client: SocketAddr,
    shell_a: SocketAddr,
    shell_b: SocketAddr,
    core: SocketAddr,
    count: u32,
) -> String {
    let mut s = String::with_capacity(count as usize * 200 + 16);
    s.push_str("{\"stitches\":[");
    for i in 0..count {
        let (c, b) = if count == 1 {
            (client, shell_b)
        } else {
            (nth_addr(client, i), nth_addr(shell_b, i))
        };
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{},\"state\":\"stitched\",\"proto\":\"tcp\",\"leg_a\":{{\"client\":\"{c}\",\"shell\":\"{shell_a}\"}},\"leg_b\":{{\"shell\":\"{b}\",\"core\":\"{core}\"}},\"teardown\":\"4E\"}}",
            i + 1
        ));
    }
    s.push_str("]}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{build, read_signature};
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    const LIST: &str = r#"{"stitches":[
      {"id":1,"state":"stitched","proto":"tcp","leg_a":{"client":"198.18.0.1:10000","shell":"198.18.0.2:7000"},
       "leg_b":{"shell":"198.18.0.2:10000","core":"198.18.0.3:8000"},"teardown":"4E"},
      {"id":2,"state":"watching","proto":"tcp","leg_a":{"client":"198.18.0.1:10001","shell":"198.18.0.2:7000"},
       "leg_b":{"shell":"198.18.0.2:10001","core":"198.18.0.3:8000"},"teardown":"4E"},
      {"id":3,"state":"stitched","proto":"udp","leg_a":{"client":"198.18.0.9:53","shell":"198.18.0.2:5353"},
       "leg_b":{"shell":"198.18.0.2:20000","core":"198.18.0.3:53"},"teardown":"4C"}]}"#;

    #[test]
    fn stitched_segments_are_built_from_a_stitch_list() {
        let list = parse_list(LIST).unwrap();
        let t = StitchedTraffic::default();
        let (fl, skipped) = flows(&list, &t).unwrap();
        assert_eq!((fl.len(), skipped), (2, 1));
        let mut f = Vec::new();
        build(&fl[0], 64, &mut f).unwrap();
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(198, 18, 0, 2));
        let Some(TransportSlice::Tcp(tcp)) = p.transport else {
            panic!("not TCP")
        };
        assert_eq!((tcp.source_port(), tcp.destination_port()), (10000, 7000));
        assert_eq!(
            (tcp.sequence_number(), tcp.acknowledgment_number()),
            (1000, 2000)
        );
        assert!(tcp.ack() && !tcp.syn() && !tcp.fin() && !tcp.rst());
        assert!(tcp
            .options_iterator()
            .any(|o| matches!(o, Ok(etherparse::TcpOptionElement::Timestamp(_, _)))));
        assert_eq!((&f[6..12], &f[0..6]), (&t.mac_c[..], &t.mac_a1[..]));
        assert!(read_signature(&f).is_some());
        assert_eq!(fl[1].l4, L4::Udp);
        assert_eq!((fl[1].src_port, fl[1].dst_port), (53, 5353));
    }

    #[test]
    fn a_full_jsonrpc_response_is_accepted_and_other_shapes_refused() {
        let resp = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{LIST}}}");
        assert_eq!(parse_list(&resp).unwrap().stitches.len(), 3);
        assert!(parse_list(r#"{"stitches":[{"id":1}]}"#).is_err());
    }

    #[test]
    fn generated_install_list_follows_stitchds_count_addressing() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let j = install_list_json(
            a("198.18.0.1:10000"),
            a("198.18.0.2:7000"),
            a("198.18.0.2:10000"),
            a("198.18.0.3:8000"),
            50_002,
        );
        let list = parse_list(&j).unwrap();
        assert_eq!(list.stitches.len(), 50_002);
        assert_eq!(list.stitches[1].leg_a.client, a("198.18.0.1:10001"));
        assert_eq!(list.stitches[50_000].leg_a.client, a("198.18.0.2:10000"));
        assert_eq!(list.stitches[50_001].leg_b.shell, a("198.18.0.3:10001"));
        // Ports wrap past 65535, skipping 0.
        assert_eq!(nth_addr(a("1.1.1.1:15535"), 49_999).port(), 65534);
        assert_eq!(nth_addr(a("1.1.1.1:20000"), 45_536).port(), 1);
    }
}
