//! Micro-benchmark of [`switch_core::stitch::translate`] on representative
//! stitched segments: the per-packet cost quoted in `stitch/translate.rs`.
//!
//! Run with `cargo bench -p switch-core --bench translate`. Each case
//! translates a frame alternately with a translation and its inverse (so
//! every address, port and sequence field really changes on every call),
//! `ITERS` calls per run, and reports the best of `RUNS` runs: ns per call
//! and cycles per call at the nominal clock read from `/proc/cpuinfo` (set
//! `BENCH_MHZ` to override; virtual machines often hide the cycle
//! counter). The best run is the one least disturbed by other tenants of
//! the machine.
//!
//! Two figures per case: "burst" goes through `BURST` copies of the frame
//! in turn, as a worker goes through a burst of mbufs (the throughput
//! figure); "chained" translates one frame over and over, so each call
//! waits for the stores of the previous one (closer to latency).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use etherparse::{PacketBuilder, TcpHeader};
use switch_core::stitch::{
    translate, FlowEndpoints, SackMode, Translation, TsShift, WindowRescale,
};
use switch_core::MacAddr;

/// Calls per run and runs (`BENCH_ITERS`, `BENCH_RUNS` override, e.g. to
/// count instructions under `valgrind --tool=callgrind`).
const ITERS: u32 = 1_000_000;
const RUNS: u32 = 15;
const BURST: usize = 32;

const MAC_C: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

/// NOP NOP TS: what Linux puts on every established segment.
fn opts_ts() -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    o.extend_from_slice(&0x0abc_def0u32.to_be_bytes());
    o
}

/// NOP NOP TS NOP NOP SACK with two blocks: a duplicate ACK after loss.
fn opts_ts_sack2() -> Vec<u8> {
    let mut o = opts_ts();
    o.extend_from_slice(&[1, 1, 5, 18]);
    for e in [1_000_000u32, 1_001_448, 1_002_896, 1_004_344] {
        o.extend_from_slice(&e.to_be_bytes());
    }
    o
}

fn tcp_frame(src: IpAddr, dst: IpAddr, options: &[u8], payload: usize) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(MAC_C, MAC_A);
    let ip = match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => eth.ipv4(a.octets(), b.octets(), 64),
        (IpAddr::V6(a), IpAddr::V6(b)) => eth.ipv6(a.octets(), b.octets(), 64),
        _ => unreachable!("mixed families"),
    };
    let mut h = TcpHeader::new(40000, 80, 0x1000_0000, 502);
    h.acknowledgment_number = 0x2000_0000;
    h.ack = true;
    h.psh = payload > 0;
    h.set_options_raw(options).expect("options fit");
    let mut out = Vec::new();
    ip.tcp_header(h)
        .write(&mut out, &vec![0x5a; payload])
        .expect("frame builds");
    out
}

fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_C, MAC_A)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, 4789)
        .write(&mut out, &vec![0x5a; payload])
        .expect("frame builds");
    out
}

fn to_b(src: IpAddr, dst: IpAddr) -> Translation {
    Translation {
        eth_src: MacAddr([0x02, 0, 0, 0, 0, 0xa2]),
        eth_dst: MacAddr([0x02, 0, 0, 0, 0, 0x0b]),
        src_ip: src,
        dst_ip: dst,
        src_port: 50000,
        dst_port: 8080,
        seq_delta: 0x3c1f_9a77,
        ack_delta: 0x0102_0304,
        ts: Some(TsShift {
            tsval_delta: 1_000_003,
            tsecr_delta: 77_777,
        }),
        window: WindowRescale::None,
        sack: SackMode::Keep,
    }
}

fn mhz() -> f64 {
    if let Some(m) = std::env::var("BENCH_MHZ").ok().and_then(|s| s.parse().ok()) {
        return m;
    }
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Best ns per call over `RUNS` runs of `f`, which makes `calls` calls.
fn best_ns(calls: u32, mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..env_u32("BENCH_RUNS", RUNS) {
        let start = Instant::now();
        f();
        best = best.min(start.elapsed().as_secs_f64() * 1e9 / f64::from(calls));
    }
    best
}

fn env_u32(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn bench(name: &str, frame: Vec<u8>, t: Translation, mhz: f64) {
    // `cargo bench -p switch-core --bench translate -- v6` runs the cases
    // whose name contains "v6".
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        return;
    }
    let iters = env_u32("BENCH_ITERS", ITERS).max(2 * BURST as u32);
    let back = t.inverse(&FlowEndpoints::of_frame(&frame).expect("frame is translatable"));
    let original = frame.clone();

    // A burst of distinct mbufs, as a worker sees them: no call waits for
    // the previous one's stores.
    let mut burst = vec![frame.clone(); BURST];
    let burst_ns = best_ns(iters, || {
        for _ in 0..iters / (2 * BURST as u32) {
            for tr in [&t, &back] {
                for f in burst.iter_mut() {
                    let r = translate(black_box(f.as_mut_slice()), black_box(tr));
                    black_box(r.is_ok());
                }
            }
        }
    });

    // One frame over and over: each call reads what the previous wrote.
    let mut one = frame.clone();
    let chain_ns = best_ns(iters, || {
        for _ in 0..iters / 2 {
            for tr in [&t, &back] {
                let r = translate(black_box(one.as_mut_slice()), black_box(tr));
                black_box(r.is_ok());
            }
        }
    });

    // Translate-then-inverse is exact here, so the frames must be back.
    assert!(
        burst.iter().all(|f| *f == original),
        "{name}: no round trip"
    );
    assert_eq!(one, original, "{name}: frame did not round-trip");
    println!(
        "{name:<34} {:>4} B | burst {burst_ns:>6.2} ns {:>6.1} cyc | chained {chain_ns:>6.2} ns {:>6.1} cyc",
        frame.len(),
        burst_ns * mhz / 1000.0,
        chain_ns * mhz / 1000.0,
    )
}

fn main() {
    let mhz = mhz();
    println!(
        "translate: best of {} runs of {} calls, cycles at {mhz:.0} MHz",
        env_u32("BENCH_RUNS", RUNS),
        env_u32("BENCH_ITERS", ITERS)
    );
    let (c4, a4) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
    let (a24, b4) = (Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 1, 7, 9));
    let t4 = to_b(a24.into(), b4.into());
    let v6 = |s: &str| -> IpAddr { s.parse::<Ipv6Addr>().expect("address").into() };

    bench(
        "v4 tcp NOP NOP TS, no payload",
        tcp_frame(c4.into(), a4.into(), &opts_ts(), 0),
        t4,
        mhz,
    );
    bench(
        "v4 tcp NOP NOP TS, 1400 B payload",
        tcp_frame(c4.into(), a4.into(), &opts_ts(), 1400),
        t4,
        mhz,
    );
    bench(
        "v4 tcp TS + SACK 2 blocks",
        tcp_frame(c4.into(), a4.into(), &opts_ts_sack2(), 0),
        t4,
        mhz,
    );
    bench(
        "v6 tcp NOP NOP TS",
        tcp_frame(v6("2001:db8::c"), v6("2001:db8::a1"), &opts_ts(), 0),
        to_b(v6("2001:db8:1::a2"), v6("2001:db8:1::b")),
        mhz,
    );
    bench("v4 udp, 18 B payload", udp_frame(c4, a4, 18), t4, mhz);
}
