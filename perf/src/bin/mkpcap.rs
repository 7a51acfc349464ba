//! `stitch-mkpcap`: writes a pcap of TCP frames for throughput runs (`net_pcap`
//! `infinite_rx=1` replays it forever).
//!
//! Usage: `stitch-mkpcap OUT.pcap [FLOWS] [FRAME_SIZE] [DST_MAC]`: FLOWS frames (default
//! 1000), each a different flow with its own source MAC (02:00:01:xx:xx:xx), source address
//! in 198.18.0.0/15 and source port, all to DST_MAC (default 02:00:00:ff:00:01); FRAME_SIZE
//! bytes without FCS (default 60, i.e. 64 on the wire).
//!
//! `stitch-mkpcap --stitched OUT.pcap STITCHES [FRAMES=16384] [FRAME_SIZE=60]`: TCP data
//! segments C -> A1 of stitches installed by `stitch.install` with `count = STITCHES`,
//! client 198.18.0.1:10000, shell 198.18.0.2:7000, C's MAC 02:00:00:00:0c:01, A1's MAC
//! 02:00:00:00:0a:01 (the addressing `count` uses: port + i % 50000, address + i / 50000),
//! FRAMES of them spread evenly over the stitches.
//!
//! `stitch-mkpcap --lb KIND OUT.pcap FLOWS [FRAMES=FLOWS] [FRAME_SIZE=60]`: TCP frames of
//! FLOWS distinct clients of a load-balanced service, VIP 198.18.100.1:80, client `i` =
//! 198.19.0.1 + i / 50000, port 10000 + i % 50000 (MAC 02:00:00:00:0c:01, frames to the
//! balancer's MAC 02:53:54:4c:42:01). Every frame is FRAME_SIZE bytes (SYN and RST padded).
//! KIND: `syn`: one SYN per flow (a pass that opens every connection); `ack`: FRAMES data
//! segments (ACK, payload FRAME_SIZE - 54 bytes) spread over the flows (flow `j % FLOWS`
//! when FRAMES >= FLOWS, so a burst touches distinct flows; flow `j * FLOWS / FRAMES`
//! otherwise); `synrst`: per flow a SYN and then an RST, the SYNs of all flows first and
//! then their RSTs (so a flow's SYN and RST never share a burst: a replay reopens each
//! closed connection as a new one).

use anyhow::{bail, Context, Result};
use etherparse::{PacketBuilder, PacketBuilderStep, TcpHeader};

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .context("bad MAC")?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("MAC needs 6 bytes: {s}"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--stitched") {
        return stitched(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some("--lb") {
        return lb(&args[2..]);
    }
    if args.len() < 2 || args[1] == "--help" || args[1] == "-h" {
        println!("usage: stitch-mkpcap OUT.pcap [FLOWS=1000] [FRAME_SIZE=60] [DST_MAC=02:00:00:ff:00:01]");
        println!(
            "       stitch-mkpcap --stitched OUT.pcap STITCHES [FRAMES=16384] [FRAME_SIZE=60]"
        );
        println!("       stitch-mkpcap --lb syn|ack|synrst OUT.pcap FLOWS [FRAMES=FLOWS] [FRAME_SIZE=60]");
        return Ok(());
    }
    let flows: u32 = opt(&args, 2, "FLOWS", 1000)?;
    let size: usize = opt(&args, 3, "FRAME_SIZE", 60)?;
    let dst = parse_mac(args.get(4).map_or("02:00:00:ff:00:01", String::as_str))?;
    if !(54..=1514).contains(&size) {
        bail!("FRAME_SIZE must be 54-1514");
    }
    let mut frames = Vec::with_capacity(flows as usize);
    for i in 0..flows {
        let b = i.to_be_bytes();
        let src_mac = [2, 0, 1, b[1], b[2], b[3]];
        let src_ip = [198, 18 + (b[1] & 1), b[2], b[3]];
        let builder = PacketBuilder::ethernet2(src_mac, dst)
            .ipv4(src_ip, [198, 19, 255, 1], 64)
            .tcp(1024 + (i % 60000) as u16, 80, i.wrapping_mul(7919), 65535);
        let payload = vec![0u8; size.saturating_sub(54)];
        let mut frame = Vec::with_capacity(size);
        builder.write(&mut frame, &payload)?;
        frames.push(frame);
    }
    write_pcap(&args[1], &frames)
}

fn write_pcap(path: &str, frames: &[Vec<u8>]) -> Result<()> {
    let mut out = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        for v in [i as u32, 0, f.len() as u32, f.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).with_context(|| format!("writing {path}"))
}

fn stitched(args: &[String]) -> Result<()> {
    let out = args
        .first()
        .context("usage: stitch-mkpcap --stitched OUT.pcap STITCHES [FRAMES] [FRAME_SIZE]")?;
    let n: u32 = args
        .get(1)
        .context("STITCHES")?
        .parse()
        .context("STITCHES")?;
    let frames: u32 = opt(args, 2, "FRAMES", 16384)?;
    let size: usize = opt(args, 3, "FRAME_SIZE", 60)?;
    if n == 0 || frames == 0 || !(66..=1514).contains(&size.max(66)) {
        bail!("STITCHES and FRAMES must be > 0");
    }
    let mut v = Vec::with_capacity(frames as usize);
    for j in 0..frames {
        let i = (u64::from(j) * u64::from(n) / u64::from(frames)) as u32;
        let ip = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 1)) + i / 50_000;
        let port = ((10_000 + i % 50_000 - 1) % 65_535 + 1) as u16;
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0x0c, 1], [2, 0, 0, 0, 0x0a, 1])
            .ipv4(ip.to_be_bytes(), [198, 18, 0, 2], 64)
            .tcp(port, 7000, 1000 + j, 512)
            .ack(2000)
            .options(&[
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Timestamp(100 + j, 50),
            ])?;
        let payload = vec![0u8; size.saturating_sub(66)];
        let mut f = Vec::new();
        b.write(&mut f, &payload)?;
        v.push(f);
    }
    write_pcap(out, &v)
}

/// The load balancer's client `i` (see the module docs): address and port.
fn lb_client(i: u32) -> ([u8; 4], u16) {
    let ip = u32::from(std::net::Ipv4Addr::new(198, 19, 0, 1)) + i / 50_000;
    (ip.to_be_bytes(), (10_000 + i % 50_000) as u16)
}

/// One TCP frame of client `i` to the VIP, padded to `size` bytes.
fn lb_frame(
    i: u32,
    seq: u32,
    size: usize,
    payload: usize,
    flags: impl FnOnce(PacketBuilderStep<TcpHeader>) -> PacketBuilderStep<TcpHeader>,
) -> Result<Vec<u8>> {
    let (ip, port) = lb_client(i);
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0x0c, 1], [0x02, 0x53, 0x54, 0x4c, 0x42, 0x01])
        .ipv4(ip, [198, 18, 100, 1], 64)
        .tcp(port, 80, seq, 65535);
    let mut v = Vec::with_capacity(size);
    flags(b).write(&mut v, &vec![0u8; payload])?;
    if v.len() < size {
        v.resize(size, 0);
    }
    Ok(v)
}

/// Client `i`'s initial sequence number.
fn isn(i: u32) -> u32 {
    i.wrapping_mul(7919)
}

fn lb(args: &[String]) -> Result<()> {
    let usage =
        "usage: stitch-mkpcap --lb syn|ack|synrst OUT.pcap FLOWS [FRAMES=FLOWS] [FRAME_SIZE=60]";
    let kind = args.first().context(usage)?.as_str();
    let out = args.get(1).context(usage)?;
    let flows: u32 = args.get(2).context(usage)?.parse().context("FLOWS")?;
    let frames: u32 = opt(args, 3, "FRAMES", flows)?;
    let size: usize = opt(args, 4, "FRAME_SIZE", 60)?;
    if flows == 0 || frames == 0 || !(60..=1514).contains(&size) {
        bail!("FLOWS and FRAMES must be > 0, FRAME_SIZE 60-1514");
    }
    let payload = size - 54;
    let mut v = Vec::new();
    match kind {
        "syn" => {
            for i in 0..flows {
                v.push(lb_frame(i, isn(i), size, 0, |b| b.syn())?);
            }
        }
        "synrst" => {
            for i in 0..flows {
                v.push(lb_frame(i, isn(i), size, 0, |b| b.syn())?);
            }
            for i in 0..flows {
                v.push(lb_frame(i, isn(i).wrapping_add(1), size, 0, |b| b.rst())?);
            }
        }
        "ack" => {
            for j in 0..frames {
                let (i, round) = if frames >= flows {
                    (j % flows, j / flows)
                } else {
                    (
                        (u64::from(j) * u64::from(flows) / u64::from(frames)) as u32,
                        0,
                    )
                };
                let seq = isn(i)
                    .wrapping_add(1)
                    .wrapping_add(round.wrapping_mul(payload as u32));
                v.push(lb_frame(i, seq, size, payload, |b| b.ack(1))?);
            }
        }
        _ => bail!("{usage}"),
    }
    write_pcap(out, &v)
}

/// Argument `i` parsed as `T`, or `default` when absent; the error names the argument.
fn opt<T: std::str::FromStr>(args: &[String], i: usize, name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    args.get(i)
        .map(|s| s.parse::<T>())
        .transpose()
        .with_context(|| name.to_string())
        .map(|v| v.unwrap_or(default))
}
