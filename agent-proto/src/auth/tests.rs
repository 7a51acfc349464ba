//! Tests of sealing and opening: byte-exact encoding, every failure reason of `open`,
//! retransmission and idempotency, and property tests over arbitrary input.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::*;
use crate::message::{
    error_code, CapFlags, Capabilities, CommitReq, Heartbeat, PrepareReq, Probe, Reply, TeardownMsg,
};
use crate::reply_cache::{CacheInsert, ReplyCache};
use crate::wire::{EndKind, Proto, Side, Teardown};

const KEY_ID: u32 = 7;
const NOW: u64 = 1_700_000_000_000;

fn key() -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    k
}

fn keys() -> Keyring {
    let mut ring = Keyring::new();
    ring.add(KEY_ID, key());
    ring
}

fn fields(request_id: u64, response: bool, nonce_byte: u8) -> HeaderFields {
    HeaderFields {
        request_id,
        response,
        timestamp_ms: NOW,
        nonce: [nonce_byte; 16],
        key_id: KEY_ID,
    }
}

fn guard() -> ReplayGuard {
    ReplayGuard::new(1024)
}

fn v4(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One message of every variant, with IPv4 or IPv6 addresses.
fn every_message(v6: bool) -> Vec<Message> {
    let a = |v4s: &str, v6s: &str| if v6 { v4(v6s) } else { v4(v4s) };
    vec![
        Message::Probe(Probe {
            ingress_ifaces: 1,
            egress_ifaces: 1,
            want: CapFlags::TCP | CapFlags::IPV6,
        }),
        Message::ProbeReply(Capabilities {
            flags: CapFlags::all(),
            free_flows: 65_000,
            request_addr: a("192.0.2.1:4790", "[2001:db8::1]:4790"),
            switch_id: "stitchd-rack7".into(),
        }),
        Message::Prepare(PrepareReq {
            client: a("198.51.100.7:40000", "[2001:db8:1::7]:40000"),
            shell_a: a("192.0.2.10:443", "[2001:db8::10]:443"),
            shell_b: a("198.18.1.10:51000", "[2001:db8:1::10]:51000"),
            core: a("198.18.1.20:8443", "[2001:db8:1::20]:8443"),
            proto: Proto::Tcp,
            teardown: Teardown::E,
            idle_timeout_s: Some(300),
            linger_s: None,
        }),
        Message::Freeze { stitch_id: 11 },
        Message::Commit(CommitReq {
            stitch_id: 11,
            s1: 0xFFFF_FFF0,
            r1: 1,
            s2: 2,
            r2: 0x8000_0000,
            wscale: Some([7, 9, 9, 14]),
            mss: Some([1460, 1460, 8960, 1220]),
            timestamps: Some((true, false)),
            sack: None,
        }),
        Message::Abort { stitch_id: 12 },
        Message::Delete { stitch_id: 13 },
        Message::Reply(Reply::ok(Some(11))),
        Message::Reply(Reply::error(None, error_code::BUSY, "flow table full")),
        Message::Teardown(TeardownMsg {
            stitch_id: 11,
            from: Side::Client,
            kind: EndKind::Fin,
            variant: Teardown::B,
            to: Side::Core,
            legs: None,
            bytes: None,
        }),
        Message::Teardown(TeardownMsg {
            stitch_id: 12,
            from: Side::Core,
            kind: EndKind::Fin,
            variant: Teardown::C,
            to: Side::Shell,
            legs: Some([
                "198.18.0.1:40000".parse().unwrap(),
                "198.18.0.2:7000".parse().unwrap(),
                "[2001:db8::2]:45000".parse().unwrap(),
                "[2001:db8::3]:8000".parse().unwrap(),
            ]),
            bytes: Some((123, u64::MAX)),
        }),
        Message::Heartbeat(Heartbeat {
            stitch_ids: vec![1, 2, 3, u32::MAX],
        }),
        Message::Heartbeat(Heartbeat { stitch_ids: vec![] }),
    ]
}

fn is_response(m: &Message) -> bool {
    matches!(m, Message::ProbeReply(_) | Message::Reply(_))
}

fn seal_one(m: &Message, nonce_byte: u8) -> Vec<u8> {
    seal(m, fields(42, is_response(m), nonce_byte), &keys()).unwrap()
}

#[test]
fn every_variant_round_trips_with_v4_and_v6_addresses() {
    let mut g = guard();
    let mut n = 0u8;
    for v6 in [false, true] {
        for m in every_message(v6) {
            n += 1;
            let d = seal_one(&m, n);
            let opened = open(&d, &keys(), &mut g, NOW).unwrap();
            assert_eq!(opened.msg, m);
            assert_eq!(opened.header.msg_type, m.msg_type());
            assert_eq!(opened.header.request_id, 42);
            assert_eq!(opened.header.is_response(), is_response(&m));
            assert_eq!(opened.header.nonce, [n; 16]);
            assert_eq!(opened.header.key_id, KEY_ID);
        }
    }
}

#[test]
fn probe_seals_to_known_bytes() {
    let probe = Message::Probe(Probe {
        ingress_ifaces: 1,
        egress_ifaces: 1,
        want: CapFlags::TCP | CapFlags::IPV4 | CapFlags::TEARDOWN_4E,
    });
    let hdr = HeaderFields {
        request_id: 0x0102_0304_0506_0708,
        response: false,
        timestamp_ms: NOW,
        nonce: [0xA5; 16],
        key_id: KEY_ID,
    };
    // Tag computed independently (Python hmac + hashlib.sha256, key = bytes 0..32).
    #[rustfmt::skip]
    let expected: [u8; 92] = [
        b'S', b'T', b'C', b'H',                         // magic
        1,                                              // version
        1,                                              // type: Probe
        0x00, 0x00,                                     // flags: request
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // request_id
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // timestamp_ms 1_700_000_000_000
        0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, // nonce
        0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5, 0xa5,
        0x00, 0x00, 0x00, 0x07,                         // key_id 7
        0x00, 0x0e,                                     // body_len 14
        0x80, 0x12, 0x00, 0x02, 0x01, 0x01,             // IFACES: 1 in, 1 out
        0x80, 0x13, 0x00, 0x04, 0x00, 0x00, 0x00, 0x85, // WANT_CAPS: TCP|IPV4|4E
        0x2c, 0x35, 0x63, 0x1a, 0x35, 0xf3, 0xb0, 0xa1, // HMAC-SHA256
        0x2d, 0x44, 0x66, 0x24, 0x9e, 0x54, 0x74, 0x43,
        0x1a, 0xd3, 0x88, 0x28, 0x21, 0x52, 0x6c, 0x9a,
        0xc9, 0x3a, 0xf1, 0xd0, 0x65, 0x44, 0x85, 0x5d,
    ];
    let sealed = seal(&probe, hdr, &keys()).unwrap();
    assert_eq!(sealed, expected);
    assert_eq!(
        open(&expected, &keys(), &mut guard(), NOW).unwrap().msg,
        probe
    );
}

#[test]
fn every_truncation_is_refused_as_truncated() {
    for m in every_message(true) {
        let d = seal_one(&m, 1);
        for len in 0..d.len() {
            assert_eq!(
                open(&d[..len], &keys(), &mut guard(), NOW),
                Err(AgentError::Truncated),
                "{m:?} cut to {len}"
            );
        }
    }
}

#[test]
fn flipping_any_single_bit_is_refused() {
    let mut g = guard();
    for m in every_message(false).into_iter().chain(every_message(true)) {
        let d = seal_one(&m, 9);
        for bit in 0..d.len() * 8 {
            let mut bad = d.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let err = open(&bad, &keys(), &mut g, NOW).unwrap_err();
            assert!(
                matches!(
                    err,
                    AgentError::BadMac
                        | AgentError::BadMagic
                        | AgentError::BadVersion(_)
                        | AgentError::UnknownKey(_)
                        | AgentError::Truncated
                        | AgentError::Malformed("bytes after the tag")
                ),
                "bit {bit} of {m:?}: {err:?}"
            );
        }
    }
    // None of those got far enough to record a nonce.
    assert!(g.is_empty());
}

#[test]
fn wrong_key_is_bad_mac_and_missing_key_is_unknown_key() {
    let d = seal_one(&Message::Freeze { stitch_id: 1 }, 1);
    let mut other = Keyring::new();
    other.add(KEY_ID, [0x55; 32]);
    assert_eq!(open(&d, &other, &mut guard(), NOW), Err(AgentError::BadMac));
    let mut elsewhere = Keyring::new();
    elsewhere.add(8, key());
    assert_eq!(
        open(&d, &elsewhere, &mut guard(), NOW),
        Err(AgentError::UnknownKey(KEY_ID))
    );
    assert_eq!(
        seal(
            &Message::Freeze { stitch_id: 1 },
            fields(1, false, 1),
            &elsewhere
        ),
        Err(AgentError::UnknownKey(KEY_ID))
    );
}

#[test]
fn old_or_future_timestamps_are_stale() {
    let d = seal_one(&Message::Abort { stitch_id: 1 }, 1);
    assert_eq!(
        open(&d, &keys(), &mut guard(), NOW + 30_001),
        Err(AgentError::Stale { skew_ms: -30_001 })
    );
    assert_eq!(
        open(&d, &keys(), &mut guard(), NOW - 30_001),
        Err(AgentError::Stale { skew_ms: 30_001 })
    );
    assert!(open(&d, &keys(), &mut guard(), NOW + 30_000).is_ok());
    let mut narrow = ReplayGuard::with_window(16, 1_000);
    assert_eq!(
        open(&d, &keys(), &mut narrow, NOW + 1_001),
        Err(AgentError::Stale { skew_ms: -1_001 })
    );
}

#[test]
fn the_same_datagram_twice_is_replayed() {
    let mut g = guard();
    let d = seal_one(&Message::Delete { stitch_id: 5 }, 1);
    assert!(open(&d, &keys(), &mut g, NOW).is_ok());
    assert_eq!(
        open(&d, &keys(), &mut g, NOW + 10),
        Err(AgentError::Replayed)
    );
}

#[test]
fn forged_datagram_does_not_burn_the_nonce() {
    let mut g = guard();
    let d = seal_one(&Message::Delete { stitch_id: 5 }, 1);
    let mut forged = d.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0xFF;
    assert_eq!(open(&forged, &keys(), &mut g, NOW), Err(AgentError::BadMac));
    assert!(open(&d, &keys(), &mut g, NOW).is_ok());
}

#[test]
fn tag_is_checked_before_the_body_is_parsed() {
    let body = [0x80, 0x01, 0x00, 0x09]; // TLV overrunning the body
    let mut d = seal_raw(
        MsgType::Freeze,
        HeaderFlags::empty(),
        &fields(1, false, 1),
        &body,
        &keys(),
    )
    .unwrap();
    assert!(matches!(
        open(&d, &keys(), &mut guard(), NOW),
        Err(AgentError::Malformed(_))
    ));
    let last = d.len() - 1;
    d[last] ^= 1;
    assert_eq!(
        open(&d, &keys(), &mut guard(), NOW),
        Err(AgentError::BadMac)
    );
}

#[test]
fn retransmission_with_fresh_nonce_is_accepted_and_answered_from_the_cache() {
    let requester_keys = keys();
    let responder_keys = keys();
    let mut responder_guard = guard();
    let mut requester_guard = guard();
    let mut cache = ReplyCache::new(16);
    let prepare = every_message(false)[2].clone();
    let mut acted = 0;

    // The responder's loop: answer from the cache, or act once and remember the answer.
    let mut serve = |d: &[u8], now: u64| -> Result<Vec<u8>, AgentError> {
        let req = open(d, &responder_keys, &mut responder_guard, now)?;
        if let Some(cached) = cache.get(req.header.key_id, req.header.request_id, now) {
            return Ok(cached.to_vec());
        }
        acted += 1;
        let hdr = HeaderFields {
            request_id: req.header.request_id,
            response: true,
            timestamp_ms: now,
            nonce: [0xEE; 16],
            key_id: req.header.key_id,
        };
        let reply = seal(&Message::Reply(Reply::ok(Some(77))), hdr, &responder_keys)?;
        assert_eq!(
            cache.put(req.header.key_id, req.header.request_id, reply.clone(), now),
            CacheInsert::Inserted
        );
        Ok(reply)
    };

    let first = seal(&prepare, fields(1000, false, 1), &requester_keys).unwrap();
    let lost_reply = serve(&first, NOW).unwrap();
    // The reply is lost; 100 ms later the requester re-seals: same id, fresh nonce and time.
    let retry_hdr = HeaderFields {
        timestamp_ms: NOW + 100,
        ..fields(1000, false, 2)
    };
    let retry = seal(&prepare, retry_hdr, &requester_keys).unwrap();
    let second_reply = serve(&retry, NOW + 100).unwrap();
    assert_eq!(second_reply, lost_reply, "the same answer, byte for byte");
    // A byte-identical resend is refused outright.
    assert_eq!(serve(&first, NOW + 150), Err(AgentError::Replayed));
    assert_eq!(acted, 1, "the request was carried out once");

    let got = open(
        &second_reply,
        &requester_keys,
        &mut requester_guard,
        NOW + 120,
    )
    .unwrap();
    assert_eq!(got.header.request_id, 1000);
    assert_eq!(got.msg, Message::Reply(Reply::ok(Some(77))));
    // If the lost reply turns up late, the requester's guard drops the duplicate.
    assert_eq!(
        open(
            &lost_reply,
            &requester_keys,
            &mut requester_guard,
            NOW + 130
        ),
        Err(AgentError::Replayed)
    );
}

fn freeze_body_with(extra_type: u16) -> Vec<u8> {
    let mut body = crate::message::encode_body(&Message::Freeze { stitch_id: 3 }).unwrap();
    body.extend_from_slice(&extra_type.to_be_bytes());
    body.extend_from_slice(&[0x00, 0x03, b'n', b'e', b'w']);
    body
}

#[test]
fn unknown_noncritical_tlv_is_skipped() {
    let body = freeze_body_with(0x7ABC);
    let d = seal_raw(
        MsgType::Freeze,
        HeaderFlags::empty(),
        &fields(1, false, 1),
        &body,
        &keys(),
    )
    .unwrap();
    assert_eq!(
        open(&d, &keys(), &mut guard(), NOW).unwrap().msg,
        Message::Freeze { stitch_id: 3 }
    );
}

#[test]
fn unknown_critical_tlv_is_rejected() {
    let body = freeze_body_with(0x8ABC);
    let d = seal_raw(
        MsgType::Freeze,
        HeaderFlags::empty(),
        &fields(1, false, 1),
        &body,
        &keys(),
    )
    .unwrap();
    assert_eq!(
        open(&d, &keys(), &mut guard(), NOW),
        Err(AgentError::UnknownCritical(0x8ABC))
    );
}

#[test]
fn duplicate_tlv_is_malformed() {
    let mut body = crate::message::encode_body(&Message::Freeze { stitch_id: 3 }).unwrap();
    body.extend_from_slice(&body.clone());
    let d = seal_raw(
        MsgType::Freeze,
        HeaderFlags::empty(),
        &fields(1, false, 1),
        &body,
        &keys(),
    )
    .unwrap();
    assert_eq!(
        open(&d, &keys(), &mut guard(), NOW),
        Err(AgentError::Malformed("duplicate TLV"))
    );
}

#[test]
fn unknown_message_type_is_rejected_after_authentication() {
    let d = seal_raw(
        MsgType::Unknown(99),
        HeaderFlags::empty(),
        &fields(1, false, 1),
        &[],
        &keys(),
    )
    .unwrap();
    assert_eq!(
        open(&d, &keys(), &mut guard(), NOW),
        Err(AgentError::UnknownType(99))
    );
}

#[test]
fn response_flag_must_match_the_message_type() {
    assert!(matches!(
        seal(
            &Message::Reply(Reply::ok(None)),
            fields(1, false, 1),
            &keys()
        ),
        Err(AgentError::Malformed(_))
    ));
    assert!(matches!(
        seal(
            &Message::Freeze { stitch_id: 1 },
            fields(1, true, 1),
            &keys()
        ),
        Err(AgentError::Malformed(_))
    ));
    let body = crate::message::encode_body(&Message::Freeze { stitch_id: 1 }).unwrap();
    let d = seal_raw(
        MsgType::Freeze,
        HeaderFlags::RESPONSE,
        &fields(1, true, 1),
        &body,
        &keys(),
    )
    .unwrap();
    assert!(matches!(
        open(&d, &keys(), &mut guard(), NOW),
        Err(AgentError::Malformed(_))
    ));
}

#[test]
fn largest_datagram_is_accepted_and_one_byte_more_is_too_large() {
    let mut body = crate::message::encode_body(&Message::Freeze { stitch_id: 3 }).unwrap();
    let pad = MAX_DATAGRAM - HEADER_LEN - TAG_LEN - body.len() - 4;
    body.extend_from_slice(&0x0042u16.to_be_bytes());
    body.extend_from_slice(&(pad as u16).to_be_bytes());
    body.resize(body.len() + pad, 0);
    let d = seal_raw(
        MsgType::Freeze,
        HeaderFlags::empty(),
        &fields(1, false, 1),
        &body,
        &keys(),
    )
    .unwrap();
    assert_eq!(d.len(), MAX_DATAGRAM);
    assert_eq!(
        open(&d, &keys(), &mut guard(), NOW).unwrap().msg,
        Message::Freeze { stitch_id: 3 }
    );

    body.push(0);
    assert_eq!(
        seal_raw(
            MsgType::Freeze,
            HeaderFlags::empty(),
            &fields(1, false, 2),
            &body,
            &keys()
        ),
        Err(AgentError::TooLarge(MAX_DATAGRAM + 1))
    );
    let mut long = d.clone();
    long.push(0);
    assert_eq!(
        open(&long, &keys(), &mut guard(), NOW),
        Err(AgentError::TooLarge(MAX_DATAGRAM + 1))
    );
}

#[test]
fn keyring_debug_shows_ids_not_keys() {
    let mut ring = Keyring::new();
    ring.add(9, [0xAB; 32]);
    ring.add(1, [0xCD; 32]);
    assert_eq!(format!("{ring:?}"), "Keyring { key_ids: [1, 9], .. }");
}

#[test]
fn keyring_from_hex_matches_raw_key_and_rejects_bad_text() {
    let hex: String = key().iter().map(|b| format!("{b:02X}")).collect();
    let ring = Keyring::from_hex([(KEY_ID, hex.as_str())]).unwrap();
    assert_eq!(ring.len(), 1);
    let d = seal(
        &Message::Freeze { stitch_id: 1 },
        fields(1, false, 1),
        &ring,
    )
    .unwrap();
    assert!(open(&d, &keys(), &mut guard(), NOW).is_ok());

    assert_eq!(
        Keyring::from_hex([(1, "abcd")]).unwrap_err(),
        KeyError::BadLength(4)
    );
    let bad = format!("{}zz", &hex[..62]);
    assert_eq!(
        Keyring::from_hex([(1, bad.as_str())]).unwrap_err(),
        KeyError::BadHexDigit
    );
    let mut ring = Keyring::new();
    assert!(!ring.add(1, [0; 32]));
    assert!(ring.add(1, [1; 32]));
    assert!(ring.remove(1));
    assert!(ring.is_empty());
}

// ---- property tests ----

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(o, p)| SocketAddr::new(IpAddr::from(o), p)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(o, p)| SocketAddr::new(IpAddr::from(o), p)),
    ]
}

fn arb_flags() -> impl Strategy<Value = CapFlags> {
    any::<u32>().prop_map(CapFlags::from_bits_retain)
}

fn arb_message() -> impl Strategy<Value = Message> {
    let probe = (any::<u8>(), any::<u8>(), arb_flags()).prop_map(|(i, e, want)| {
        Message::Probe(Probe {
            ingress_ifaces: i,
            egress_ifaces: e,
            want,
        })
    });
    let probe_reply = (arb_flags(), any::<u32>(), arb_addr(), "[ -~]{0,64}").prop_map(
        |(flags, free_flows, request_addr, switch_id)| {
            Message::ProbeReply(Capabilities {
                flags,
                free_flows,
                request_addr,
                switch_id,
            })
        },
    );
    let prepare = (
        arb_addr(),
        arb_addr(),
        arb_addr(),
        arb_addr(),
        any::<u8>(),
        any::<u8>(),
        any::<Option<u32>>(),
        any::<Option<u32>>(),
    )
        .prop_map(|(client, shell_a, shell_b, core, p, t, idle, linger)| {
            Message::Prepare(PrepareReq {
                client,
                shell_a,
                shell_b,
                core,
                proto: Proto::from(p),
                teardown: Teardown::from(t),
                idle_timeout_s: idle,
                linger_s: linger,
            })
        });
    let commit = (
        any::<u32>(),
        any::<[u32; 4]>(),
        any::<Option<[u8; 4]>>(),
        any::<Option<[u16; 4]>>(),
        any::<Option<(bool, bool)>>(),
        any::<Option<(bool, bool)>>(),
    )
        .prop_map(
            |(stitch_id, [s1, r1, s2, r2], wscale, mss, timestamps, sack)| {
                Message::Commit(CommitReq {
                    stitch_id,
                    s1,
                    r1,
                    s2,
                    r2,
                    wscale,
                    mss,
                    timestamps,
                    sack,
                })
            },
        );
    let reply = (
        any::<bool>(),
        any::<Option<u32>>(),
        any::<u16>(),
        "\\PC{0,128}",
    )
        .prop_map(|(ok, stitch_id, error_code, message)| {
            Message::Reply(Reply {
                ok,
                stitch_id,
                error_code,
                message,
            })
        });
    let teardown = (any::<u32>(), any::<[u8; 4]>()).prop_map(|(stitch_id, [f, k, v, t])| {
        Message::Teardown(TeardownMsg {
            stitch_id,
            from: Side::from(f),
            kind: EndKind::from(k),
            variant: Teardown::from(v),
            to: Side::from(t),
            legs: None,
            bytes: Some((u64::from(stitch_id), 7)),
        })
    });
    let heartbeat = prop::collection::vec(any::<u32>(), 0..=crate::MAX_HEARTBEAT_IDS)
        .prop_map(|stitch_ids| Message::Heartbeat(Heartbeat { stitch_ids }));
    prop_oneof![
        probe,
        probe_reply,
        prepare,
        any::<u32>().prop_map(|stitch_id| Message::Freeze { stitch_id }),
        commit,
        any::<u32>().prop_map(|stitch_id| Message::Abort { stitch_id }),
        any::<u32>().prop_map(|stitch_id| Message::Delete { stitch_id }),
        reply,
        teardown,
        heartbeat,
    ]
}

proptest! {
    #[test]
    fn open_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1500)) {
        let _ = open(&bytes, &keys(), &mut guard(), NOW);
    }

    #[test]
    fn open_never_panics_on_authentic_arbitrary_bodies(
        msg_type in any::<u8>(),
        flags in any::<u16>(),
        body in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let d = seal_raw(
            MsgType::from(msg_type),
            HeaderFlags::from_bits_retain(flags),
            &fields(1, false, 1),
            &body,
            &keys(),
        ).unwrap();
        let _ = open(&d, &keys(), &mut guard(), NOW);
    }

    #[test]
    fn seal_then_open_is_identity(
        msg in arb_message(),
        request_id in any::<u64>(),
        nonce in any::<[u8; 16]>(),
        skew in -30_000i64..=30_000,
    ) {
        let response = is_response(&msg);
        let hdr = HeaderFields {
            request_id,
            response,
            timestamp_ms: NOW.wrapping_add_signed(skew),
            nonce,
            key_id: KEY_ID,
        };
        let d = seal(&msg, hdr, &keys()).unwrap();
        prop_assert!(d.len() <= MAX_DATAGRAM);
        let opened = open(&d, &keys(), &mut guard(), NOW).unwrap();
        prop_assert_eq!(opened.header.request_id, request_id);
        prop_assert_eq!(opened.header.timestamp_ms, hdr.timestamp_ms);
        prop_assert_eq!(opened.header.nonce, nonce);
        prop_assert_eq!(opened.header.is_response(), response);
        prop_assert_eq!(opened.msg, msg);
    }
}
