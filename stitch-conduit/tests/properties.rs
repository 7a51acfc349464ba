//! Property tests for every decoder in the crate: arbitrary bytes never panic, and
//! encode-then-decode is the identity for arbitrary values.

use std::net::{IpAddr, SocketAddr};

use agent_proto::ReplayGuard;
use proptest::prelude::*;
use stitch_conduit::desc::{ConnDesc, Proto, Tuple};
use stitch_conduit::envelope::{open, seal};
use stitch_conduit::frame::{Frame, FrameReader};
use stitch_conduit::msg::{Message, Outcome, Reason};
use stitch_conduit::scope::{Scope, Scopes};
use stitch_conduit::udp::{self, Datagram};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn scopes() -> Scopes {
    Scopes::new([Scope::from_hex("blue", 7, KEY, vec![]).expect("key")])
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
    ]
}

fn desc() -> impl Strategy<Value = ConnDesc> {
    (any::<bool>(), addr(), addr(), any::<u64>(), any::<u64>()).prop_map(
        |(udp, src, dst, age, id)| ConnDesc {
            tuple: Tuple {
                proto: if udp { Proto::Udp } else { Proto::Tcp },
                src,
                dst,
            },
            age_ms: age,
            global_id: id,
            scope: 7,
        },
    )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (desc(), addr()).prop_map(|(desc, stitch_addr)| Message::Publish { desc, stitch_addr }),
        (desc(), any::<u8>()).prop_map(|(desc, r)| Message::Verdict {
            desc,
            outcome: Outcome::Pending(Reason::from_code(r)),
        }),
        (desc(), desc(), addr()).prop_map(|(desc, peer, peer_stitch)| Message::Verdict {
            desc,
            outcome: Outcome::Initiate { peer, peer_stitch },
        }),
        (desc(), desc()).prop_map(|(desc, peer)| Message::Verdict {
            desc,
            outcome: Outcome::PeerInitiates { peer },
        }),
        desc().prop_map(|desc| Message::Withdraw { desc }),
        (desc(), addr()).prop_map(|(desc, stitch_addr)| Message::StitchHello { desc, stitch_addr }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u64>(), any::<u32>(), addr(), addr()).prop_map(
            |(global_id, scope, app, service)| {
                Frame::Open {
                    global_id,
                    scope,
                    app,
                    service,
                }
            }
        ),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..256))
            .prop_map(|(seq, payload)| Frame::Data { seq, payload }),
        any::<u64>().prop_map(|seq| Frame::Fin { seq }),
        any::<u64>().prop_map(|n| Frame::Heartbeat { n }),
        any::<u64>().prop_map(|n| Frame::HeartbeatAck { n }),
        any::<u64>().prop_map(|last_received| Frame::DrainAck { last_received }),
        any::<u64>().prop_map(|last_sent| Frame::DrainComplete { last_sent }),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|sealed| Frame::StitchHello { sealed }),
        Just(Frame::StitchAccept),
        any::<u8>().prop_map(|r| Frame::StitchRefuse {
            reason: Reason::from_code(r)
        }),
        Just(Frame::Bye),
    ]
}

proptest! {
    #[test]
    fn sealed_messages_round_trip(m in message(), nonce in any::<[u8; 16]>()) {
        let s = scopes();
        let bytes = seal(&m, 7, 1_000_000, nonce, &s).expect("seal");
        let o = open(&bytes, &s, &mut ReplayGuard::new(4), 1_000_000).expect("open");
        prop_assert_eq!(o.msg, m);
    }

    #[test]
    fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), t in any::<u8>()) {
        let _ = open(&bytes, &scopes(), &mut ReplayGuard::new(4), 1_000_000);
        let _ = Message::decode_body(t, &bytes);
        let _ = Frame::decode(t, &bytes);
        let _ = udp::decode(&bytes);
        let _ = FrameReader::new(&bytes[..]).next_frame();
    }

    #[test]
    fn frames_round_trip(f in frame()) {
        let bytes = f.encode();
        prop_assert_eq!(FrameReader::new(&bytes[..]).next_frame().expect("frame"), f);
    }

    #[test]
    fn udp_datagrams_round_trip(app in addr(), seq in any::<u64>(), switch_seq in any::<u64>(),
                                payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let d = Datagram { seq, switch_seq, payload };
        prop_assert_eq!(udp::decode(&udp::encode(app, &d)).expect("decode"), (app, d));
    }
}
