//! Golden and property tests of [`translate`]. Frames are built and checked
//! with etherparse, an implementation independent of `crate::wire`, and
//! every checksum is verified by a full recompute.

use super::*;
use crate::stitch::fuzz::{encode_input, fuzz_translate};
use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TcpHeader, TransportHeader, VlanId};
use proptest::prelude::*;

// ---------------------------------------------------------------- builders

const ACK: u8 = 0x10;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;

#[derive(Debug, Clone)]
enum Opt {
    Nop,
    Mss(u16),
    Ws(u8),
    SackPerm,
    Sack(Vec<(u32, u32)>),
    Ts(u32, u32),
}

impl Opt {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Opt::Nop => out.push(1),
            Opt::Mss(m) => out.extend_from_slice(&[2, 4, (m >> 8) as u8, *m as u8]),
            Opt::Ws(s) => out.extend_from_slice(&[3, 3, *s]),
            Opt::SackPerm => out.extend_from_slice(&[4, 2]),
            Opt::Sack(blocks) => {
                out.extend_from_slice(&[5, 2 + 8 * blocks.len() as u8]);
                for (l, r) in blocks {
                    out.extend_from_slice(&l.to_be_bytes());
                    out.extend_from_slice(&r.to_be_bytes());
                }
            }
            Opt::Ts(v, e) => {
                out.extend_from_slice(&[8, 10]);
                out.extend_from_slice(&v.to_be_bytes());
                out.extend_from_slice(&e.to_be_bytes());
            }
        }
    }
}

/// The options that fit in 40 bytes, in order, padded with `pad` (EOL or
/// NOP) to a multiple of 4.
fn options(opts: &[Opt], pad: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for o in opts {
        let mut one = Vec::new();
        o.encode(&mut one);
        if out.len() + one.len() <= 40 {
            out.extend_from_slice(&one);
        }
    }
    while out.len() % 4 != 0 {
        out.push(pad);
    }
    out
}

#[derive(Debug, Clone)]
enum L4 {
    Udp,
    Tcp {
        seq: u32,
        ack: u32,
        flags: u8,
        win: u16,
        options: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
struct Spec {
    vlan: bool,
    smac: [u8; 6],
    dmac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    l4: L4,
    payload: Vec<u8>,
}

fn build(s: &Spec) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(s.smac, s.dmac);
    let vlan = VlanId::try_new(42).unwrap();
    let ip = match (s.vlan, s.src, s.dst) {
        (false, IpAddr::V4(a), IpAddr::V4(b)) => eth.ipv4(a.octets(), b.octets(), 64),
        (true, IpAddr::V4(a), IpAddr::V4(b)) => {
            eth.single_vlan(vlan).ipv4(a.octets(), b.octets(), 64)
        }
        (false, IpAddr::V6(a), IpAddr::V6(b)) => eth.ipv6(a.octets(), b.octets(), 64),
        (true, IpAddr::V6(a), IpAddr::V6(b)) => {
            eth.single_vlan(vlan).ipv6(a.octets(), b.octets(), 64)
        }
        _ => panic!("mixed families in a spec"),
    };
    let mut out = Vec::new();
    match &s.l4 {
        L4::Udp => ip
            .udp(s.sport, s.dport)
            .write(&mut out, &s.payload)
            .unwrap(),
        L4::Tcp {
            seq,
            ack,
            flags,
            win,
            options,
        } => {
            let mut h = TcpHeader::new(s.sport, s.dport, *seq, *win);
            h.acknowledgment_number = *ack;
            h.fin = flags & 0x01 != 0;
            h.syn = flags & 0x02 != 0;
            h.rst = flags & 0x04 != 0;
            h.psh = flags & 0x08 != 0;
            h.ack = flags & 0x10 != 0;
            h.urg = flags & 0x20 != 0;
            h.ece = flags & 0x40 != 0;
            h.cwr = flags & 0x80 != 0;
            h.set_options_raw(options).unwrap();
            ip.tcp_header(h).write(&mut out, &s.payload).unwrap();
        }
    }
    out
}

// ---------------------------------------------------------------- checking

/// A frame as etherparse reads it, with every checksum recomputed in full.
struct Parsed {
    smac: [u8; 6],
    dmac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    ip_csum_ok: bool,
    tcp: Option<TcpHeader>,
    udp: Option<etherparse::UdpHeader>,
    l4_csum_ok: bool,
    payload: Vec<u8>,
}

fn parse(frame: &[u8]) -> Parsed {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("etherparse reads the frame");
    let eth = h.link.clone().and_then(|l| l.ethernet2()).unwrap();
    let payload = h.payload.slice().to_vec();
    let (src, dst, ip_csum_ok, l4_csum_ok, tcp, udp) = match (&h.net, &h.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Tcp(t))) => (
            IpAddr::V4(ip.source.into()),
            IpAddr::V4(ip.destination.into()),
            ip.header_checksum == ip.calc_header_checksum(),
            t.checksum == t.calc_checksum_ipv4(ip, &payload).unwrap(),
            Some(t.clone()),
            None,
        ),
        (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Tcp(t))) => (
            IpAddr::V6(ip.source.into()),
            IpAddr::V6(ip.destination.into()),
            true,
            t.checksum == t.calc_checksum_ipv6(ip, &payload).unwrap(),
            Some(t.clone()),
            None,
        ),
        (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Udp(u))) => (
            IpAddr::V4(ip.source.into()),
            IpAddr::V4(ip.destination.into()),
            ip.header_checksum == ip.calc_header_checksum(),
            u.checksum == u.calc_checksum_ipv4(ip, &payload).unwrap(),
            None,
            Some(u.clone()),
        ),
        (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Udp(u))) => (
            IpAddr::V6(ip.source.into()),
            IpAddr::V6(ip.destination.into()),
            true,
            u.checksum == u.calc_checksum_ipv6(ip, &payload).unwrap(),
            None,
            Some(u.clone()),
        ),
        other => panic!("unexpected headers {other:?}"),
    };
    Parsed {
        smac: eth.source,
        dmac: eth.destination,
        src,
        dst,
        ip_csum_ok,
        tcp,
        udp,
        l4_csum_ok,
        payload,
    }
}

/// The options of a TCP header, decoded by etherparse.
fn ep_options(t: &TcpHeader) -> Vec<etherparse::TcpOptionElement> {
    t.options_iterator().map(|o| o.unwrap()).collect()
}

// ---------------------------------------------------------------- fixtures

const C4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const A24: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 3);
const B4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 4);

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0xab, last)
}

const MAC_C: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 2];
const MAC_A2: [u8; 6] = [2, 0, 0, 0, 0, 3];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 4];

fn tcp_spec(src: IpAddr, dst: IpAddr, vlan: bool, l4: L4, payload: &[u8]) -> Spec {
    Spec {
        vlan,
        smac: MAC_C,
        dmac: MAC_A,
        src,
        dst,
        sport: 40000,
        dport: 80,
        l4,
        payload: payload.to_vec(),
    }
}

fn to_b(src: IpAddr, dst: IpAddr) -> Translation {
    Translation {
        eth_src: MacAddr(MAC_A2),
        eth_dst: MacAddr(MAC_B),
        src_ip: src,
        dst_ip: dst,
        src_port: 50000,
        dst_port: 8080,
        seq_delta: 0,
        ack_delta: 0,
        ts: None,
        window: WindowRescale::None,
        sack: SackMode::Keep,
    }
}

// ---------------------------------------------------------------- golden

#[test]
fn tcp_v4_golden_every_field_translated_and_checksums_recompute() {
    let opts = options(
        &[
            Opt::Nop,
            Opt::Nop,
            Opt::Ts(1000, 2000),
            Opt::Nop,
            Opt::Nop,
            Opt::Sack(vec![(100, 200), (300, 400)]),
        ],
        0,
    );
    let spec = tcp_spec(
        C4.into(),
        A4.into(),
        false,
        L4::Tcp {
            seq: 0x1000_0000,
            ack: 0x2000_0000,
            flags: ACK | PSH,
            win: 1000,
            options: opts,
        },
        b"hello, stitch",
    );
    let mut frame = build(&spec);
    let len = frame.len();
    let t = Translation {
        seq_delta: 0x8000_0001,
        ack_delta: 0x1234,
        ts: Some(TsShift {
            tsval_delta: 50,
            tsecr_delta: 7,
        }),
        window: WindowRescale::Rescale {
            from_shift: 7,
            to_shift: 9,
        },
        ..to_b(A24.into(), B4.into())
    };
    let out = translate(&mut frame, &t).unwrap();
    assert_eq!(frame.len(), len);

    let p = parse(&frame);
    assert_eq!((p.smac, p.dmac), (MAC_A2, MAC_B));
    assert_eq!((p.src, p.dst), (IpAddr::from(A24), IpAddr::from(B4)));
    assert!(p.ip_csum_ok, "IPv4 header checksum");
    assert!(p.l4_csum_ok, "TCP checksum");
    let tcp = p.tcp.unwrap();
    assert_eq!((tcp.source_port, tcp.destination_port), (50000, 8080));
    assert_eq!(tcp.sequence_number, 0x9000_0001);
    assert_eq!(tcp.acknowledgment_number, 0x2000_0000 - 0x1234);
    assert_eq!(tcp.window_size, (1000u32 * 128 / 512) as u16);
    use etherparse::TcpOptionElement as E;
    assert_eq!(
        ep_options(&tcp),
        vec![
            E::Noop,
            E::Noop,
            E::Timestamp(1050, 1993),
            E::Noop,
            E::Noop,
            E::SelectiveAcknowledgement(
                (100u32.wrapping_sub(0x1234), 200u32.wrapping_sub(0x1234)),
                [
                    Some((300u32.wrapping_sub(0x1234), 400u32.wrapping_sub(0x1234))),
                    None,
                    None
                ]
            ),
        ]
    );
    assert_eq!(p.payload, b"hello, stitch");
    assert_eq!(
        out,
        Translated {
            proto: 6,
            tcp_flags: ACK | PSH,
            payload_len: 13,
            seq: 0x9000_0001,
            ack: 0x2000_0000 - 0x1234,
            tsval: Some(1050),
        }
    );
}

#[test]
fn tcp_v6_vlan_golden_with_odd_aligned_options_and_seq_wrap() {
    // NOP, TS at option offset 1, SACK at offset 11: every rewritten field
    // straddles a 16-bit word boundary of the checksum.
    let opts = options(
        &[
            Opt::Nop,
            Opt::Ts(0xffff_fff0, 0x10),
            Opt::Sack(vec![(0xffff_fff0, 0x20)]),
        ],
        0,
    );
    assert_eq!(opts[1], 8);
    assert_eq!(opts[11], 5);
    let spec = tcp_spec(
        v6(1).into(),
        v6(2).into(),
        true,
        L4::Tcp {
            seq: 0xffff_fff0,
            ack: 0x5,
            flags: ACK,
            win: 65535,
            options: opts,
        },
        &[0xab; 101],
    );
    let mut frame = build(&spec);
    let t = Translation {
        seq_delta: 0x20,
        ack_delta: 0x10,
        ts: Some(TsShift {
            tsval_delta: 0x20,
            tsecr_delta: 0x11,
        }),
        ..to_b(v6(3).into(), v6(4).into())
    };
    let out = translate(&mut frame, &t).unwrap();
    let p = parse(&frame);
    assert_eq!((p.smac, p.dmac), (MAC_A2, MAC_B));
    assert_eq!((p.src, p.dst), (IpAddr::from(v6(3)), IpAddr::from(v6(4))));
    assert!(p.l4_csum_ok, "TCP checksum over IPv6");
    // The VLAN tag is kept.
    assert_eq!(&frame[12..16], &[0x81, 0x00, 0x00, 42]);
    let tcp = p.tcp.unwrap();
    assert_eq!(tcp.sequence_number, 0x10);
    assert_eq!(tcp.acknowledgment_number, 0xffff_fff5);
    assert_eq!(tcp.window_size, 65535);
    use etherparse::TcpOptionElement as E;
    assert_eq!(
        ep_options(&tcp),
        vec![
            E::Noop,
            E::Timestamp(0x10, 0xffff_ffff),
            E::SelectiveAcknowledgement((0xffff_ffe0, 0x10), [None; 3]),
        ]
    );
    assert_eq!(out.seq, 0x10);
    assert_eq!(out.tsval, Some(0x10));
    assert_eq!(out.payload_len, 101);
}

#[test]
fn udp_v4_and_v6_golden_ports_addresses_checksums() {
    for (vlan, src, dst, nsrc, ndst) in [
        (
            false,
            IpAddr::from(C4),
            IpAddr::from(A4),
            IpAddr::from(A24),
            IpAddr::from(B4),
        ),
        (true, C4.into(), A4.into(), A24.into(), B4.into()),
        (
            false,
            v6(1).into(),
            v6(2).into(),
            v6(3).into(),
            v6(4).into(),
        ),
        (true, v6(1).into(), v6(2).into(), v6(3).into(), v6(4).into()),
    ] {
        let mut spec = tcp_spec(src, dst, vlan, L4::Udp, b"datagram!");
        spec.sport = 5353;
        let mut frame = build(&spec);
        let t = Translation {
            // Sequence fields mean nothing to UDP and must not matter.
            seq_delta: 99,
            ack_delta: 99,
            ..to_b(nsrc, ndst)
        };
        let out = translate(&mut frame, &t).unwrap();
        let p = parse(&frame);
        assert_eq!((p.smac, p.dmac), (MAC_A2, MAC_B));
        assert_eq!((p.src, p.dst), (nsrc, ndst));
        assert!(p.ip_csum_ok && p.l4_csum_ok, "vlan {vlan} {src}");
        let udp = p.udp.unwrap();
        assert_eq!((udp.source_port, udp.destination_port), (50000, 8080));
        assert_eq!(p.payload, b"datagram!");
        assert_eq!(
            out,
            Translated {
                proto: 17,
                tcp_flags: 0,
                payload_len: 9,
                seq: 0,
                ack: 0,
                tsval: None
            }
        );
    }
}

#[test]
fn udp_v4_zero_checksum_means_none_and_stays_zero() {
    let spec = tcp_spec(C4.into(), A4.into(), false, L4::Udp, b"x");
    let mut frame = build(&spec);
    let csum_at = 14 + 20 + 6;
    frame[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    translate(&mut frame, &to_b(A24.into(), B4.into())).unwrap();
    assert_eq!(&frame[csum_at..csum_at + 2], &[0, 0]);
    assert!(parse(&frame).ip_csum_ok);
}

#[test]
fn udp_computed_zero_checksum_is_sent_as_ffff() {
    let spec = tcp_spec(C4.into(), A4.into(), false, L4::Udp, b"abc");
    let original = build(&spec);
    let csum_at = 14 + 20 + 6;
    // With source port 0 the checksum is c0, i.e. the data sums to !c0;
    // source port c0 then makes the sum 0xffff, whose checksum is 0.
    let mut probe = original.clone();
    let t0 = Translation {
        src_port: 0,
        ..to_b(A24.into(), B4.into())
    };
    translate(&mut probe, &t0).unwrap();
    let c0 = u16::from_be_bytes([probe[csum_at], probe[csum_at + 1]]);
    let mut frame = original.clone();
    translate(&mut frame, &Translation { src_port: c0, ..t0 }).unwrap();
    assert_eq!(&frame[csum_at..csum_at + 2], &[0xff, 0xff]);
    assert!(parse(&frame).l4_csum_ok);
}

#[test]
fn ack_flag_unset_leaves_ack_and_tsecr_alone_and_syn_window_unscaled() {
    let opts = options(
        &[
            Opt::Mss(1460),
            Opt::SackPerm,
            Opt::Ts(500, 777),
            Opt::Nop,
            Opt::Ws(7),
        ],
        0,
    );
    let spec = tcp_spec(
        C4.into(),
        A4.into(),
        false,
        L4::Tcp {
            seq: 1,
            ack: 0xdead_beef,
            flags: SYN,
            win: 64240,
            options: opts,
        },
        &[],
    );
    let mut frame = build(&spec);
    let t = Translation {
        seq_delta: 10,
        ack_delta: 20,
        ts: Some(TsShift {
            tsval_delta: 3,
            tsecr_delta: 4,
        }),
        window: WindowRescale::Rescale {
            from_shift: 0,
            to_shift: 14,
        },
        ..to_b(A24.into(), B4.into())
    };
    let out = translate(&mut frame, &t).unwrap();
    let p = parse(&frame);
    assert!(p.ip_csum_ok && p.l4_csum_ok);
    let tcp = p.tcp.unwrap();
    assert_eq!(tcp.sequence_number, 11);
    assert_eq!(
        tcp.acknowledgment_number, 0xdead_beef,
        "no ACK flag: ack untouched"
    );
    assert_eq!(tcp.window_size, 64240, "SYN windows are never scaled");
    use etherparse::TcpOptionElement as E;
    assert_eq!(
        ep_options(&tcp),
        vec![
            E::MaximumSegmentSize(1460),
            E::SelectiveAcknowledgementPermitted,
            E::Timestamp(503, 777),
            E::Noop,
            E::WindowScale(7),
        ]
    );
    assert_eq!((out.ack, out.tcp_flags), (0xdead_beef, SYN));
}

#[test]
fn syn_ack_window_is_not_rescaled_but_ack_is_translated() {
    let spec = tcp_spec(
        C4.into(),
        A4.into(),
        false,
        L4::Tcp {
            seq: 1,
            ack: 100,
            flags: SYN | ACK,
            win: 65535,
            options: options(&[Opt::Ws(9)], 1),
        },
        &[],
    );
    let mut frame = build(&spec);
    let t = Translation {
        ack_delta: 50,
        window: WindowRescale::Rescale {
            from_shift: 9,
            to_shift: 0,
        },
        ..to_b(A24.into(), B4.into())
    };
    translate(&mut frame, &t).unwrap();
    let tcp = parse(&frame).tcp.unwrap();
    assert_eq!(tcp.window_size, 65535);
    assert_eq!(tcp.acknowledgment_number, 50);
}

#[test]
fn tsecr_zero_is_not_translated() {
    let spec = tcp_spec(
        C4.into(),
        A4.into(),
        false,
        L4::Tcp {
            seq: 1,
            ack: 100,
            flags: ACK,
            win: 10,
            options: options(&[Opt::Nop, Opt::Nop, Opt::Ts(5, 0)], 0),
        },
        &[],
    );
    let mut frame = build(&spec);
    let t = Translation {
        ts: Some(TsShift {
            tsval_delta: 1,
            tsecr_delta: 1,
        }),
        ..to_b(A24.into(), B4.into())
    };
    translate(&mut frame, &t).unwrap();
    let p = parse(&frame);
    assert!(p.l4_csum_ok);
    assert!(ep_options(&p.tcp.unwrap()).contains(&etherparse::TcpOptionElement::Timestamp(6, 0)));
}

#[test]
fn sack_to_nops_keeps_header_length_and_other_options() {
    let opts = options(
        &[
            Opt::Nop,
            Opt::Nop,
            Opt::Ts(1, 2),
            Opt::Nop,
            Opt::Sack(vec![(10, 20), (30, 40), (50, 60)]),
        ],
        0,
    );
    let spec = tcp_spec(
        C4.into(),
        A4.into(),
        true,
        L4::Tcp {
            seq: 1,
            ack: 2,
            flags: ACK,
            win: 10,
            options: opts.clone(),
        },
        b"z",
    );
    let mut frame = build(&spec);
    let len = frame.len();
    let t = Translation {
        ack_delta: 1,
        ts: Some(TsShift {
            tsval_delta: 1,
            tsecr_delta: 1,
        }),
        sack: SackMode::ToNops,
        ..to_b(A24.into(), B4.into())
    };
    translate(&mut frame, &t).unwrap();
    assert_eq!(frame.len(), len);
    let p = parse(&frame);
    assert!(p.ip_csum_ok && p.l4_csum_ok);
    let tcp = p.tcp.unwrap();
    assert_eq!(tcp.header_len(), 20 + opts.len());
    let sack_at = 2 + 10 + 1;
    let sack_len = 2 + 3 * 8;
    assert!(tcp.options.as_slice()[sack_at..sack_at + sack_len]
        .iter()
        .all(|&b| b == 1));
    use etherparse::TcpOptionElement as E;
    let els = ep_options(&tcp);
    assert_eq!(&els[..3], &[E::Noop, E::Noop, E::Timestamp(2, 1)]);
    assert!(els[3..].iter().all(|e| *e == E::Noop));
    assert_eq!(p.payload, b"z");
}

#[test]
fn window_rescale_rounds_down_and_clamps() {
    let r = |from_shift, to_shift| WindowRescale::Rescale {
        from_shift,
        to_shift,
    };
    assert_eq!(
        r(7, 9).apply(1001),
        250,
        "1001 * 128 / 512 = 250.25, rounded down"
    );
    assert_eq!(r(9, 7).apply(20000), 65535, "80000 clamps to 65535");
    assert_eq!(r(14, 0).apply(1), 16384);
    assert_eq!(r(20, 0).apply(1), 16384, "shifts above 14 count as 14");
    assert_eq!(r(0, 14).apply(16383), 0);
    assert_eq!(WindowRescale::None.apply(12345), 12345);
}

#[test]
fn inverse_gives_back_the_original_bytes() {
    let opts = options(
        &[Opt::Nop, Opt::Ts(77, 88), Opt::Nop, Opt::Sack(vec![(1, 2)])],
        0,
    );
    let spec = tcp_spec(
        v6(1).into(),
        v6(2).into(),
        true,
        L4::Tcp {
            seq: 7,
            ack: 9,
            flags: ACK | PSH,
            win: 300,
            options: opts,
        },
        b"payload",
    );
    let original = build(&spec);
    let t = Translation {
        seq_delta: 0xfff0_0000,
        ack_delta: 0x1111,
        ts: Some(TsShift {
            tsval_delta: 5,
            tsecr_delta: 6,
        }),
        ..to_b(v6(3).into(), v6(4).into())
    };
    let endpoints = FlowEndpoints::of_frame(&original).unwrap();
    assert_eq!(endpoints.src_port, 40000);
    assert_eq!(endpoints.eth_dst, MacAddr(MAC_A));
    let mut frame = original.clone();
    translate(&mut frame, &t).unwrap();
    assert_ne!(frame, original);
    translate(&mut frame, &t.inverse(&endpoints)).unwrap();
    assert_eq!(frame, original);
}

// ---------------------------------------------------------------- errors

fn assert_refused(frame: &mut [u8], t: &Translation, want: TranslateError) {
    let before = frame.to_vec();
    assert_eq!(translate(frame, t), Err(want));
    assert_eq!(frame, &before[..], "frame changed on {want:?}");
}

fn good_v4_tcp(options_bytes: Vec<u8>) -> Vec<u8> {
    build(&tcp_spec(
        C4.into(),
        A4.into(),
        false,
        L4::Tcp {
            seq: 1,
            ack: 2,
            flags: ACK,
            win: 3,
            options: options_bytes,
        },
        b"data",
    ))
}

#[test]
fn refusals_leave_the_frame_untouched() {
    let t4 = to_b(A24.into(), B4.into());
    let t6 = to_b(v6(3).into(), v6(4).into());

    // ARP is not IP.
    let mut arp = good_v4_tcp(vec![]);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_refused(&mut arp, &t4, TranslateError::NotIp);
    // An IPv4 EtherType with version 6 inside.
    let mut v = good_v4_tcp(vec![]);
    v[14] = 0x65;
    assert_refused(&mut v, &t4, TranslateError::NotIp);
    // ICMP.
    let mut icmp = good_v4_tcp(vec![]);
    icmp[14 + 9] = 1;
    assert_refused(&mut icmp, &t4, TranslateError::NotTcpOrUdp);
    // Truncated: the IP total length runs past the frame.
    let mut short = good_v4_tcp(vec![]);
    short.truncate(short.len() - 1);
    assert_refused(&mut short, &t4, TranslateError::Truncated);
    assert_refused(&mut [0u8; 10], &t4, TranslateError::Truncated);
    // IHL < 5.
    let mut ihl = good_v4_tcp(vec![]);
    ihl[14] = 0x44;
    assert_refused(&mut ihl, &t4, TranslateError::Malformed("ipv4 ihl < 5"));
    // Fragments: MF set, or an offset.
    let mut frag = good_v4_tcp(vec![]);
    frag[14 + 6] |= 0x20;
    assert_refused(&mut frag, &t4, TranslateError::Fragment);
    let mut frag = good_v4_tcp(vec![]);
    frag[14 + 7] = 1;
    assert_refused(&mut frag, &t4, TranslateError::Fragment);
    // Family mismatch, both ways and half-way.
    let mut f = good_v4_tcp(vec![]);
    assert_refused(&mut f, &t6, TranslateError::FamilyMismatch);
    let half = Translation {
        dst_ip: v6(4).into(),
        ..t4
    };
    assert_refused(&mut f, &half, TranslateError::FamilyMismatch);
    // Bad options: a SACK of 11 bytes, an option of length 1, one running
    // past the header.
    let mut bad = good_v4_tcp(vec![5, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_refused(&mut bad, &t4, TranslateError::BadOptions);
    let mut bad = good_v4_tcp(vec![1, 1, 8, 1]);
    assert_refused(&mut bad, &t4, TranslateError::BadOptions);
    let mut bad = good_v4_tcp(vec![1, 1, 8, 10]);
    assert_refused(&mut bad, &t4, TranslateError::BadOptions);
    // IPv6 fragment header.
    let mut f6 = build(&tcp_spec(v6(1).into(), v6(2).into(), false, L4::Udp, b"x"));
    f6[14 + 6] = 44;
    assert_refused(&mut f6, &t6, TranslateError::Fragment);
    f6[14 + 6] = 0;
    assert_refused(&mut f6, &t6, TranslateError::NotTcpOrUdp);
    // UDP length below 8.
    let mut u = build(&tcp_spec(C4.into(), A4.into(), false, L4::Udp, b"x"));
    u[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&[0, 7]);
    assert_refused(&mut u, &t4, TranslateError::Malformed("udp length < 8"));
    // Options after EOL are padding and are not looked at.
    let mut eol = good_v4_tcp(vec![0, 5, 3, 9]);
    assert!(translate(&mut eol, &t4).is_ok());
}

#[test]
fn errors_say_what_is_wrong() {
    assert_eq!(
        TranslateError::Fragment.to_string(),
        "IP fragment: cannot translate without the whole L4 header"
    );
    assert!(TranslateError::Malformed("ipv4 ihl < 5")
        .to_string()
        .contains("ihl"));
}

// ---------------------------------------------------------------- properties

fn arb_opt() -> impl Strategy<Value = Opt> {
    prop_oneof![
        Just(Opt::Nop),
        any::<u16>().prop_map(Opt::Mss),
        (0u8..15).prop_map(Opt::Ws),
        Just(Opt::SackPerm),
        proptest::collection::vec(any::<(u32, u32)>(), 1..=4).prop_map(Opt::Sack),
        any::<(u32, u32)>().prop_map(|(v, e)| Opt::Ts(v, e)),
    ]
}

prop_compose! {
    fn arb_l4()(
        tcp in any::<bool>(),
        seq in any::<u32>(),
        ack in any::<u32>(),
        flags in any::<u8>(),
        win in any::<u16>(),
        opts in proptest::collection::vec(arb_opt(), 0..6),
        pad in prop_oneof![Just(0u8), Just(1u8)],
    ) -> L4 {
        if tcp {
            L4::Tcp { seq, ack, flags, win, options: options(&opts, pad) }
        } else {
            L4::Udp
        }
    }
}

prop_compose! {
    fn arb_spec()(
        is_v6 in any::<bool>(),
        vlan in any::<bool>(),
        smac in any::<[u8; 6]>(),
        dmac in any::<[u8; 6]>(),
        a4 in any::<[u32; 2]>(),
        a6 in any::<[u128; 2]>(),
        sport in any::<u16>(),
        dport in any::<u16>(),
        l4 in arb_l4(),
        payload in proptest::collection::vec(any::<u8>(), 0..80),
    ) -> Spec {
        let (src, dst) = if is_v6 {
            (IpAddr::V6(a6[0].into()), IpAddr::V6(a6[1].into()))
        } else {
            (IpAddr::V4(a4[0].into()), IpAddr::V4(a4[1].into()))
        };
        Spec { vlan, smac, dmac, src, dst, sport, dport, l4, payload }
    }
}

/// A translation for a frame of family `v6`; `lossy` allows window
/// rescaling and SACK blanking.
fn arb_translation(v6: bool, lossy: bool) -> impl Strategy<Value = Translation> {
    (
        any::<([u8; 6], [u8; 6], [u32; 2], [u128; 2], u16, u16)>(),
        any::<(u32, u32, Option<(u32, u32)>)>(),
        (any::<bool>(), 0u8..16, 0u8..16, any::<bool>()),
    )
        .prop_map(
            move |((sm, dm, a4, a6, sp, dp), (sd, ad, ts), (rs, from, to, nops))| {
                let (src_ip, dst_ip) = if v6 {
                    (IpAddr::V6(a6[0].into()), IpAddr::V6(a6[1].into()))
                } else {
                    (IpAddr::V4(a4[0].into()), IpAddr::V4(a4[1].into()))
                };
                Translation {
                    eth_src: MacAddr(sm),
                    eth_dst: MacAddr(dm),
                    src_ip,
                    dst_ip,
                    src_port: sp,
                    dst_port: dp,
                    seq_delta: sd,
                    ack_delta: ad,
                    ts: ts.map(|(v, e)| TsShift {
                        tsval_delta: v,
                        tsecr_delta: e,
                    }),
                    window: if lossy && rs {
                        WindowRescale::Rescale {
                            from_shift: from,
                            to_shift: to,
                        }
                    } else {
                        WindowRescale::None
                    },
                    sack: if lossy && nops {
                        SackMode::ToNops
                    } else {
                        SackMode::Keep
                    },
                }
            },
        )
}

fn spec_and_translation(lossy: bool) -> impl Strategy<Value = (Spec, Translation)> {
    arb_spec().prop_flat_map(move |s| {
        let v6 = s.src.is_ipv6();
        (Just(s), arb_translation(v6, lossy))
    })
}

fn zero_tsecr(frame: &[u8]) -> bool {
    parse(frame).tcp.is_some_and(|t| {
        ep_options(&t)
            .iter()
            .any(|o| matches!(o, etherparse::TcpOptionElement::Timestamp(_, 0)))
    })
}

proptest! {
    /// Without rescaling or SACK blanking, translating with T then with
    /// T.inverse gives the original bytes back.
    #[test]
    fn translate_then_inverse_is_identity((spec, t) in spec_and_translation(false)) {
        let original = build(&spec);
        let mut frame = original.clone();
        translate(&mut frame, &t).unwrap();
        // A TSecr that lands on 0 reads as "no echo" and is left alone
        // by the inverse (documented on `Translation::inverse`).
        prop_assume!(t.ts.is_none() || !zero_tsecr(&frame));
        let endpoints = FlowEndpoints::of_frame(&original).unwrap();
        translate(&mut frame, &t.inverse(&endpoints)).unwrap();
        prop_assert_eq!(frame, original);
    }

    /// Every incrementally patched checksum equals etherparse's full
    /// recompute, rescaling and SACK blanking included; lengths and
    /// payload never change.
    #[test]
    fn incremental_checksums_equal_full_recompute((spec, t) in spec_and_translation(true)) {
        let mut frame = build(&spec);
        let len = frame.len();
        let out = translate(&mut frame, &t).unwrap();
        prop_assert_eq!(frame.len(), len);
        let p = parse(&frame);
        prop_assert!(p.ip_csum_ok, "IPv4 header checksum differs from a full recompute");
        prop_assert!(p.l4_csum_ok, "L4 checksum differs from a full recompute");
        prop_assert_eq!(&p.payload, &spec.payload);
        prop_assert_eq!(out.payload_len, spec.payload.len());
        prop_assert_eq!((p.src, p.dst), (t.src_ip, t.dst_ip));
        prop_assert_eq!((MacAddr(p.smac), MacAddr(p.dmac)), (t.eth_src, t.eth_dst));
        if let (L4::Tcp { seq, .. }, Some(tcp)) = (&spec.l4, p.tcp) {
            prop_assert_eq!(tcp.sequence_number, seq.wrapping_add(t.seq_delta));
            prop_assert_eq!((tcp.source_port, tcp.destination_port), (t.src_port, t.dst_port));
        }
    }

    /// Random bytes never make translate panic; a refused frame is untouched.
    #[test]
    fn translate_never_panics_on_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..160),
        t in arb_translation(false, true),
        t6 in arb_translation(true, true),
    ) {
        for t in [t, t6] {
            let mut frame = bytes.clone();
            if translate(&mut frame, &t).is_err() {
                prop_assert_eq!(&frame, &bytes);
            }
        }
    }

    /// Valid frames with a few bytes flipped or cut reach the deep paths:
    /// still no panic, and a refusal leaves the frame alone.
    #[test]
    fn translate_never_panics_on_mutated_frames(
        (spec, t) in spec_and_translation(true),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut bytes = build(&spec);
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let mut frame = bytes.clone();
        if translate(&mut frame, &t).is_err() {
            prop_assert_eq!(frame, bytes);
        }
    }

    /// The fuzz harness holds on random input...
    #[test]
    fn fuzz_harness_holds_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzz_translate(&data);
    }

    /// ...and on valid or mutated frames behind a random translation.
    #[test]
    fn fuzz_harness_holds_on_valid_frames(
        (spec, t) in spec_and_translation(true),
        flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
        let mut frame = build(&spec);
        if let Some((at, v)) = flip {
            let i = at.index(frame.len());
            frame[i] = v;
        }
        fuzz_translate(&encode_input(&t, &frame));
    }
}

#[test]
fn fuzz_input_encoding_round_trips() {
    let t = Translation {
        ts: Some(TsShift {
            tsval_delta: 1,
            tsecr_delta: 2,
        }),
        window: WindowRescale::Rescale {
            from_shift: 3,
            to_shift: 4,
        },
        sack: SackMode::ToNops,
        ..to_b(v6(3).into(), v6(4).into())
    };
    let data = encode_input(&t, b"frame");
    let (back, frame) = crate::stitch::fuzz::decode_input(&data);
    assert_eq!(back, t);
    assert_eq!(frame, b"frame");
}

#[test]
fn fuzz_seed_corpus_is_accepted_and_holds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/translate");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/translate exists") {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
        {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let (t, frame) = crate::stitch::fuzz::decode_input(&data);
        let mut copy = frame.to_vec();
        translate(&mut copy, &t).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let p = parse(&copy);
        assert!(p.ip_csum_ok && p.l4_csum_ok, "{}", path.display());
        fuzz_translate(&data);
        seen += 1;
    }
    assert!(seen >= 6, "only {seen} seeds");
}

// ---------------------------------------------------------------- against the first version

/// A frame `spec` builds, with `flips` applied, cut to `cut` bytes if
/// `do_cut`, and its L4 checksum field forced to `csum` if given (0x0000
/// and 0xffff exercise the two ones-complement zeros).
fn mutate(
    spec: &Spec,
    flips: &[(prop::sample::Index, u8)],
    csum: Option<u16>,
    cut: Option<prop::sample::Index>,
) -> Vec<u8> {
    let mut bytes = build(spec);
    if let (Some(c), Ok(lay)) = (csum, layout(&bytes)) {
        let at = lay.l4.start + if lay.tcp { 16 } else { 6 };
        bytes[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    for (at, v) in flips {
        let i = at.index(bytes.len());
        bytes[i] = *v;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut.index(bytes.len() + 1));
    }
    bytes
}

/// The optimized and the first version on the same input: same result,
/// same bytes.
fn same_as_reference(bytes: &[u8], t: &Translation) -> Result<(), TestCaseError> {
    let mut fast = bytes.to_vec();
    let mut slow = bytes.to_vec();
    let got = translate(&mut fast, t);
    let want = reference::translate(&mut slow, t);
    prop_assert_eq!(got, want);
    prop_assert_eq!(fast, slow);
    Ok(())
}

/// Option areas that are mostly NOP NOP TS, sometimes followed or
/// preceded by others, sometimes random bytes.
fn arb_option_area() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<(u32, u32)>().prop_map(|(v, e)| options(&[Opt::Nop, Opt::Nop, Opt::Ts(v, e)], 0)),
        proptest::collection::vec(arb_opt(), 0..6)
            .prop_flat_map(|o| (Just(o), prop_oneof![Just(0u8), Just(1u8)]))
            .prop_map(|(o, pad)| options(&o, pad)),
        proptest::collection::vec(any::<u8>(), 0..=40),
        proptest::collection::vec(0u8..12, 0..=40),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Valid frames, any translation: the first version's bytes exactly.
    #[test]
    fn translate_matches_first_version_on_valid_frames(
        (spec, t) in spec_and_translation(true),
        csum in proptest::option::of(prop_oneof![Just(0u16), Just(0xffff), any::<u16>()]),
    ) {
        same_as_reference(&mutate(&spec, &[], csum, None), &t)?;
    }

    /// Damaged frames and wrong-family translations: the same refusal, or
    /// the same bytes.
    #[test]
    fn translate_matches_first_version_on_mutated_frames(
        (spec, t) in spec_and_translation(true),
        other in arb_translation(true, true),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        csum in proptest::option::of(prop_oneof![Just(0u16), Just(0xffff), any::<u16>()]),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let bytes = mutate(&spec, &flips, csum, cut);
        same_as_reference(&bytes, &t)?;
        same_as_reference(&bytes, &other)?;
    }

    /// Random option areas in a valid segment: the same refusal or the
    /// same bytes, SACK blanking and odd-aligned options included.
    #[test]
    fn translate_matches_first_version_on_any_option_area(
        (spec, t) in spec_and_translation(true),
        area in arb_option_area(),
    ) {
        let mut spec = spec;
        let area4 = {
            let mut a = area.clone();
            a.resize(area.len().div_ceil(4) * 4, 0);
            a
        };
        if let L4::Tcp { options, .. } = &mut spec.l4 {
            // etherparse writes any 4-byte multiple verbatim.
            *options = area4;
        }
        same_as_reference(&build(&spec), &t)?;
    }

    /// The option scan refuses exactly what `TcpOptionsIter` refuses, and
    /// the NOP NOP TS shortcut marks what the walk marks.
    #[test]
    fn option_scan_agrees_with_the_iterator_and_the_walk(area in arb_option_area()) {
        let iter_ok = crate::wire::TcpOptionsIter::new(&area).all(|o| o.is_ok());
        let walk = scan_options_walk(&area);
        prop_assert_eq!(walk.is_ok(), iter_ok);
        prop_assert_eq!(scan_options(&area).map(Opts::marks), walk);
    }

    /// The NOP NOP TS fast path writes the bytes and checksum terms the
    /// general walk writes.
    #[test]
    fn ts_fast_path_equals_general_walk(
        (v, e) in any::<(u32, u32)>(),
        t in arb_translation(false, true),
        ack_set in any::<bool>(),
    ) {
        let area = options(&[Opt::Nop, Opt::Nop, Opt::Ts(v, e)], 0);
        prop_assert_eq!(scan_options(&area), Ok(Opts::NopNopTs));
        let (mut fast, mut slow) = (area.clone(), area.clone());
        let (mut df, mut ds) = (0, 0);
        let tf = rewrite_ts_fast(&mut fast, &t, ack_set, &mut df);
        let ts = rewrite_options(&mut slow, Opts::NopNopTs.marks(), &t, ack_set, &mut ds);
        prop_assert_eq!((tf, df, fast), (ts, ds, slow));
    }

    /// The word sum of an IPv6 address is the checksum module's.
    #[test]
    fn word_sum128_is_the_checksum_sum(x in any::<u128>()) {
        let bytes = x.to_be_bytes();
        prop_assert_eq!(
            u32::from(fold(word_sum128(x))),
            crate::wire::checksum::sum(&bytes)
        );
    }
}

#[test]
fn ts_fast_path_is_taken_for_the_linux_layout_only() {
    let ts = options(&[Opt::Nop, Opt::Nop, Opt::Ts(1, 2)], 0);
    assert_eq!(scan_options(&ts), Ok(Opts::NopNopTs));
    let ts_sack = options(
        &[
            Opt::Nop,
            Opt::Nop,
            Opt::Ts(1, 2),
            Opt::Nop,
            Opt::Nop,
            Opt::Sack(vec![(3, 4)]),
        ],
        0,
    );
    assert_eq!(scan_options(&ts_sack), Ok(Opts::Marks(1 << 2 | 1 << 14)));
    let odd = options(&[Opt::Nop, Opt::Ts(1, 2)], 1);
    assert_eq!(scan_options(&odd), Ok(Opts::Marks(1 << 1)));
    // A one-block SACK is 10 bytes too: the same offsets, not the same layout.
    let sack = options(&[Opt::Nop, Opt::Nop, Opt::Sack(vec![(3, 4)])], 0);
    assert_eq!(scan_options(&sack), Ok(Opts::Marks(1 << 2)));
    assert_eq!(
        scan_options(&[1, 1, 8, 9, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(TranslateError::BadOptions)
    );
}

/// Specs in the common layouts (untagged; half of the TCP ones with NOP
/// NOP TS), for the fast paths.
fn common_spec_and_translation() -> impl Strategy<Value = (Spec, Translation)> {
    (spec_and_translation(true), any::<(u32, u32, bool)>()).prop_map(
        |((mut spec, t), (v, e, linux))| {
            spec.vlan = false;
            if let (L4::Tcp { options: o, .. }, true) = (&mut spec.l4, linux) {
                *o = options(&[Opt::Nop, Opt::Nop, Opt::Ts(v, e)], 0);
            }
            (spec, t)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// The common-layout recognizers accept only what `Located::parse`
    /// accepts, located the same way, and translate as the first version.
    #[test]
    fn common_layouts_are_located_as_parse_does_and_translated_the_same(
        (spec, t) in common_spec_and_translation(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        csum in proptest::option::of(prop_oneof![Just(0u16), Just(0xffff), any::<u16>()]),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        // Flip header bytes only, where the recognizers look.
        let mut bytes = mutate(&spec, &[], csum, cut);
        for (at, v) in &flips {
            let n = bytes.len().min(90);
            if n > 0 {
                bytes[at.index(n)] = *v;
            }
        }
        for fast in [Located::common_v4(&bytes), Located::common_v6(&bytes)].into_iter().flatten() {
            prop_assert_eq!(fast, Located::parse(&bytes));
        }
        same_as_reference(&bytes, &t)?;
    }
}

#[test]
fn common_layouts_are_recognized() {
    let ts = options(&[Opt::Nop, Opt::Nop, Opt::Ts(1, 2)], 0);
    let l4 = L4::Tcp {
        seq: 1,
        ack: 2,
        flags: ACK,
        win: 3,
        options: ts,
    };
    let v4 = build(&tcp_spec(C4.into(), A4.into(), false, l4.clone(), b"data"));
    let v6 = build(&tcp_spec(
        v6(1).into(),
        v6(2).into(),
        false,
        l4.clone(),
        b"",
    ));
    let tagged = build(&tcp_spec(C4.into(), A4.into(), true, l4, b""));
    let udp = build(&tcp_spec(C4.into(), A4.into(), false, L4::Udp, b"x"));
    let common = |f: &[u8]| (Located::common_v4(f), Located::common_v6(f));
    assert!(matches!(common(&v4), (Some(Ok(l)), None) if l.opts == Opts::NopNopTs));
    assert!(matches!(common(&v6), (None, Some(Ok(l))) if l.opts == Opts::NopNopTs));
    assert!(matches!(common(&udp), (Some(Ok(l)), None) if !l.tcp));
    assert!(matches!(common(&tagged), (None, None)));
    // A frame longer than the IP packet (Ethernet padding) is still common.
    let mut padded = v4.clone();
    padded.extend_from_slice(&[0; 8]);
    assert_eq!(
        Located::common_v4(&padded).map(|l| l.map(|l| l.l4)),
        Some(Ok(34..v4.len()))
    );
    // A bad option is refused by the common path as by the general one.
    let mut bad = v4.clone();
    bad[34 + 20 + 3] = 9;
    assert_eq!(
        Located::common_v4(&bad),
        Some(Err(TranslateError::BadOptions))
    );
    assert_eq!(Located::parse(&bad), Err(TranslateError::BadOptions));
}
