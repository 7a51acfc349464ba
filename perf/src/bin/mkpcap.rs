//! `stitch-mkpcap`: writes a pcap of TCP frames for throughput runs (`net_pcap`
//! `infinite_rx=1` replays it forever).
//!
//! Usage: `stitch-mkpcap OUT.pcap [FLOWS] [FRAME_SIZE] [DST_MAC]`: FLOWS frames (default
//! 1000), each a different flow with its own source MAC (02:00:01:xx:xx:xx), source address
//! in 198.18.0.0/15 and source port, all to DST_MAC (default 02:00:00:ff:00:01); FRAME_SIZE
//! bytes without FCS (default 60, i.e. 64 on the wire).

use anyhow::{bail, Context, Result};
use etherparse::PacketBuilder;

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
    if args.len() < 2 || args[1] == "--help" || args[1] == "-h" {
        println!("usage: stitch-mkpcap OUT.pcap [FLOWS=1000] [FRAME_SIZE=60] [DST_MAC=02:00:00:ff:00:01]");
        return Ok(());
    }
    let flows: u32 = args
        .get(2)
        .map(|s| s.parse())
        .transpose()
        .context("FLOWS")?
        .unwrap_or(1000);
    let size: usize = args
        .get(3)
        .map(|s| s.parse())
        .transpose()
        .context("FRAME_SIZE")?
        .unwrap_or(60);
    let dst = parse_mac(args.get(4).map_or("02:00:00:ff:00:01", String::as_str))?;
    if !(54..=1514).contains(&size) {
        bail!("FRAME_SIZE must be 54-1514");
    }
    let mut out = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
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
        for v in [i, 0, frame.len() as u32, frame.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&frame);
    }
    std::fs::write(&args[1], out).with_context(|| format!("writing {}", args[1]))?;
    Ok(())
}
