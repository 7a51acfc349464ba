//! Golden packets through the stitch engine on `net_pcap`: stitches installed at start
//! (TCP over IPv4 and IPv6, UDP), hand-built segments with timestamps, SACK blocks and
//! windows replayed from one pcap per side, and every output frame compared byte for byte
//! with a frame built independently by etherparse from values computed here by hand
//! (so every checksum is checked too).

use etherparse::{PacketBuilder, TcpOptionElement};
use pmd_tests::{pcap, require_root, serial, unique_id, Stitchd};

const C_MAC: [u8; 6] = [2, 0, 0, 0, 0x0c, 1];
const A_MAC: [u8; 6] = [2, 0, 0, 0, 0x0a, 1];
const B_MAC: [u8; 6] = [2, 0, 0, 0, 0x0b, 1];

// The shell's state at commit, chosen so that sequence numbers wrap.
const S1: u32 = 0x1000_0000;
const R1: u32 = 0xffff_fff0;
const S2: u32 = 0x0000_0100;
const R2: u32 = 0x7000_0000;
const D_CB: u32 = S2.wrapping_sub(R1); // C->B seq shift
const D_BC: u32 = S1.wrapping_sub(R2); // B->C seq shift
const TS_CB: u32 = 1_000_000; // C->B TSval shift
const TS_BC: u32 = 3_000_000_000; // B->C TSval shift (wraps)
                                  // Window shifts announced: C 7, A1 9, A2 5, B 7.
const WS: (u8, u8, u8, u8) = (7, 9, 5, 7);

struct Seg<'a> {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    window: u16,
    ts: (u32, u32),
    sack: &'a [(u32, u32)],
    rst: bool,
    payload: &'a [u8],
}

/// Offset of the TCP checksum in an untagged IPv4 frame without IP options.
const TCP_CSUM_V4: usize = 14 + 20 + 16;

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[..4].copy_from_slice(&a);
    o
}

fn tcp(s: &Seg) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(s.src_mac, s.dst_mac);
    let ip = if s.v6 {
        eth.ipv6(s.src, s.dst, 64)
    } else {
        eth.ipv4(
            s.src[..4].try_into().unwrap(),
            s.dst[..4].try_into().unwrap(),
            64,
        )
    };
    let mut t = ip.tcp(s.sport, s.dport, s.seq, s.window).ack(s.ack);
    if s.rst {
        t = t.rst();
    } else {
        t = t.psh();
    }
    let mut opts = vec![
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::Timestamp(s.ts.0, s.ts.1),
    ];
    if !s.sack.is_empty() {
        let first = s.sack[0];
        let mut rest = [None, None, None];
        for (i, b) in s.sack[1..].iter().enumerate() {
            rest[i] = Some(*b);
        }
        opts.extend([
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::SelectiveAcknowledgement(first, rest),
        ]);
    }
    let t = t.options(&opts).expect("options");
    let mut out = Vec::new();
    t.write(&mut out, s.payload).expect("build");
    out
}

fn udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build");
    out
}

fn rescale(win: u16, from: u8, to: u8) -> u16 {
    ((u32::from(win) << from) >> to).min(65535) as u16
}

const C4: [u8; 4] = [198, 18, 0, 1];
const A4: [u8; 4] = [198, 18, 0, 2];
const B4: [u8; 4] = [198, 18, 0, 3];

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0x20;
    a[1] = 0x01;
    a[2] = 0x0d;
    a[3] = 0xb8;
    a[15] = last;
    a
}

#[test]
fn stitched_segments_match_independently_built_golden_frames() {
    require_root();
    let _g = serial();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let data = vec![b'c'; 100];
    let back = vec![b'b'; 60];

    // Leg A as C sends it (to A1), and leg B as B sends it (to A2).
    let c1 = Seg {
        src_mac: C_MAC,
        dst_mac: A_MAC,
        v6: false,
        src: v4(C4),
        dst: v4(A4),
        sport: 40000,
        dport: 7000,
        seq: R1,
        ack: S1,
        window: 1000,
        ts: (5000, 9000),
        sack: &[],
        rst: false,
        payload: &data,
    };
    let c2 = Seg {
        seq: R1.wrapping_add(100),
        sack: &[
            (S1.wrapping_add(1000), S1.wrapping_add(2000)),
            (S1.wrapping_add(3000), S1.wrapping_add(3500)),
        ],
        payload: &[],
        ts: (5001, 9001),
        ..c1
    };
    let c6 = Seg {
        v6: true,
        src: v6(0x0c),
        dst: v6(0x0a),
        ts: (6000, 9500),
        ..c1
    };
    let b1 = Seg {
        src_mac: B_MAC,
        dst_mac: A_MAC,
        v6: false,
        src: v4(B4),
        dst: v4(A4),
        sport: 8000,
        dport: 45000,
        seq: R2,
        ack: S2.wrapping_add(100),
        window: 4000,
        ts: (777, 5000u32.wrapping_add(TS_CB)),
        sack: &[],
        rst: false,
        payload: &back,
    };
    let b6 = Seg {
        v6: true,
        src: v6(0x0b),
        dst: v6(0x0a),
        ..b1
    };
    let brst = Seg {
        seq: R2.wrapping_add(60),
        rst: true,
        payload: &[],
        ts: (778, 5001u32.wrapping_add(TS_CB)),
        ..b1
    };
    let cu = udp(C_MAC, A_MAC, C4, A4, 5353, 7001, b"udp from c");
    let bu = udp(B_MAC, A_MAC, B4, A4, 8001, 45001, b"udp from b");

    // The same segments as they must come out.
    let x_c1 = Seg {
        src_mac: A_MAC,
        dst_mac: B_MAC,
        src: v4(A4),
        dst: v4(B4),
        sport: 45000,
        dport: 8000,
        seq: R1.wrapping_add(D_CB),
        ack: S1.wrapping_sub(D_BC),
        window: rescale(1000, WS.0, WS.2),
        ts: (5000 + TS_CB, 9000u32.wrapping_sub(TS_BC)),
        ..c1
    };
    let x_c2 = Seg {
        seq: R1.wrapping_add(100).wrapping_add(D_CB),
        ts: (5001 + TS_CB, 9001u32.wrapping_sub(TS_BC)),
        sack: &[
            (R2.wrapping_add(1000), R2.wrapping_add(2000)),
            (R2.wrapping_add(3000), R2.wrapping_add(3500)),
        ],
        payload: &[],
        ..x_c1
    };
    let x_c6 = Seg {
        v6: true,
        src: v6(0x0a),
        dst: v6(0x0b),
        ts: (6000 + TS_CB, 9500u32.wrapping_sub(TS_BC)),
        ..x_c1
    };
    let x_b1 = Seg {
        src_mac: A_MAC,
        dst_mac: C_MAC,
        src: v4(A4),
        dst: v4(C4),
        sport: 7000,
        dport: 40000,
        seq: S1,
        ack: R1.wrapping_add(100),
        window: rescale(4000, WS.3, WS.1),
        ts: (777u32.wrapping_add(TS_BC), 5000),
        ..b1
    };
    let x_b6 = Seg {
        v6: true,
        src: v6(0x0a),
        dst: v6(0x0c),
        ..x_b1
    };
    let x_brst = Seg {
        seq: S1.wrapping_add(60),
        rst: true,
        payload: &[],
        ts: (778u32.wrapping_add(TS_BC), 5001),
        ..x_b1
    };
    let x_cu = udp(A_MAC, B_MAC, A4, B4, 45001, 8001, b"udp from c");
    let x_bu = udp(A_MAC, C_MAC, A4, C4, 7001, 5353, b"udp from b");

    let in0 = [tcp(&c1), tcp(&c2), tcp(&c6), cu];
    // A RST whose TCP checksum is wrong (the receiver would drop it): translated and
    // forwarded, but it must not end the stitch; the valid RST after it does.
    let mut bad_rst = tcp(&brst);
    bad_rst[TCP_CSUM_V4] ^= 0x5a;
    let in1 = [tcp(&b1), tcp(&b6), bu, bad_rst, tcp(&brst)];
    pcap::write(&dir.join("in0.pcap"), &in0);
    pcap::write(&dir.join("in1.pcap"), &in1);

    let install = |client: &str, shell_a: &str, shell_b: &str, core: &str, proto: &str| {
        format!(
            "[[stitch.install]]\nleg_a = {{ client = \"{client}\", shell = \"{shell_a}\" }}\n\
             leg_b = {{ shell = \"{shell_b}\", core = \"{core}\" }}\nproto = \"{proto}\"\nteardown = \"4C\"\n\
             macs = {{ c = \"02:00:00:00:0c:01\", a1 = \"02:00:00:00:0a:01\", a2 = \"02:00:00:00:0a:01\", b = \"02:00:00:00:0b:01\" }}\n\
             ports = {{ c = 0, b = 1 }}\ns1 = {S1}\nr1 = {R1}\ns2 = {S2}\nr2 = {R2}\n\
             wscale = {{ c = {}, a1 = {}, a2 = {}, b = {} }}\nts = {{ c_to_b = {TS_CB}, b_to_c = {TS_BC} }}\n",
            WS.0, WS.1, WS.2, WS.3
        )
    };
    let cfg = format!(
        "[[ports]]\ndevargs = \"net_pcap0,rx_pcap={d}/in0.pcap,tx_pcap={d}/out0.pcap\"\n\
         [[ports]]\ndevargs = \"net_pcap1,rx_pcap={d}/in1.pcap,tx_pcap={d}/out1.pcap\"\n{}{}{}",
        install(
            "198.18.0.1:40000",
            "198.18.0.2:7000",
            "198.18.0.2:45000",
            "198.18.0.3:8000",
            "tcp"
        ),
        install(
            "[2001:db8::c]:40000",
            "[2001:db8::a]:7000",
            "[2001:db8::a]:45000",
            "[2001:db8::b]:8000",
            "tcp"
        ),
        install(
            "198.18.0.1:5353",
            "198.18.0.2:7001",
            "198.18.0.2:45001",
            "198.18.0.3:8001",
            "udp"
        ),
        d = dir.display()
    );
    let cfg_path = dir.join("stitchd.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut sd = Stitchd::start(
        &id,
        dir.clone(),
        &["-l".into(), "0-1".into()],
        &["--config".into(), cfg_path.display().to_string()],
    );
    sd.wait_until(20, "9 frames translated", |s| {
        s.worker_sum("stitched") >= 9 && s.worker_sum("tx_packets") >= 9
    });
    // The RST (last on port 1) removes its stitch at once.
    sd.wait_until(10, "stitch 1 removed after RST", |s| {
        s.ok("stitch.list", None)["stitches"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
    });
    assert_eq!(
        sd.worker_sum("ignored_ends"),
        1,
        "the RST with a wrong checksum was not counted as ignored"
    );
    sd.ok("shutdown", None);
    assert!(
        sd.wait_exit(20),
        "stitchd did not exit cleanly:\n{}",
        sd.log_text()
    );

    let want0 = [tcp(&x_b1), tcp(&x_b6), x_bu, tcp(&x_brst), tcp(&x_brst)];
    let want1 = [tcp(&x_c1), tcp(&x_c2), tcp(&x_c6), x_cu];
    for (port, want) in [(0, &want0[..]), (1, &want1[..])] {
        let got = pcap::read(&dir.join(format!("out{port}.pcap")));
        assert_eq!(
            got.len(),
            want.len(),
            "port {port}: {} frames out, {} expected",
            got.len(),
            want.len()
        );
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            // The corrupted RST: the same bytes but for its (still wrong) checksum.
            let (mut g, mut w) = (g.clone(), w.clone());
            if port == 0 && k == 3 {
                assert_ne!(
                    g[TCP_CSUM_V4..TCP_CSUM_V4 + 2],
                    w[TCP_CSUM_V4..TCP_CSUM_V4 + 2]
                );
                g[TCP_CSUM_V4..TCP_CSUM_V4 + 2].fill(0);
                w[TCP_CSUM_V4..TCP_CSUM_V4 + 2].fill(0);
            }
            if g != w {
                let diff: Vec<usize> = g
                    .iter()
                    .zip(w.iter())
                    .enumerate()
                    .filter(|(_, (a, b))| a != b)
                    .map(|(i, _)| i)
                    .collect();
                panic!("port {port} frame {k} differs at byte offsets {diff:?}\n got {g:02x?}\nwant {w:02x?}");
            }
        }
    }
}
