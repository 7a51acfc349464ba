//! CoreAgent against real loopback sockets.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use agent_proto::{open, ReplayGuard};

use super::*;
use crate::transport::now_ms;

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_KEY: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn config() -> CoreConfig {
    CoreConfig::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\nkey_id = 7\nkey = \"{KEY}\"\n"
    ))
    .unwrap()
}

fn teardown(to: Side) -> TeardownMsg {
    TeardownMsg {
        stitch_id: 42,
        from: Side::Client,
        kind: EndKind::Fin,
        variant: Teardown::B,
        to,
        legs: Some([
            "198.18.0.1:40000".parse().unwrap(),
            "198.18.0.2:7000".parse().unwrap(),
            "198.18.0.2:50000".parse().unwrap(),
            "198.18.0.3:8000".parse().unwrap(),
        ]),
        bytes: Some((1000, 2000)),
    }
}

#[test]
fn config_refuses_unknown_keys_and_bad_hex() {
    assert!(matches!(
        CoreConfig::from_toml(&format!("key_id = 1\nkey = \"{KEY}\"\nbogus = 1\n")),
        Err(CoreError::Config(m)) if m.contains("bogus")
    ));
    assert!(matches!(
        CoreConfig::from_toml("key_id = 1\nkey = \"abcd\"\n"),
        Err(CoreError::Key(_))
    ));
    let c = CoreConfig::from_toml(&format!("key_id = 1\nkey = \"{KEY}\"\n")).unwrap();
    assert_eq!(c.listen, "0.0.0.0:4791".parse().unwrap());
    assert_eq!(c.shell_port, 4791);
}

#[test]
fn sealed_teardown_is_acked_and_delivered_once() {
    let (agent, rx) = CoreAgent::start(&config()).unwrap();
    let keys = AgentKeys::from_hex(7, KEY).unwrap();
    let mut req = Requester::for_peer(agent.local_addr(), keys).unwrap();
    let (answer, _) = req
        .request(
            agent.local_addr(),
            &Message::Teardown(teardown(Side::Core)),
            None,
        )
        .unwrap();
    expect_ok(answer).unwrap();
    let n = rx.recv_timeout(Duration::from_secs(2)).unwrap();
    assert_eq!(n.stitch_id, 42);
    assert_eq!(n.bytes, Some((1000, 2000)));
    assert_eq!(n.legs, teardown(Side::Core).legs);
    assert_eq!(
        (n.from, n.kind, n.variant, n.to),
        (Side::Client, EndKind::Fin, Teardown::B, Side::Core)
    );
    let j = n.to_json();
    assert_eq!(j["variant"], "4B");
    assert_eq!(j["bytes"]["b_to_c"], 2000);
    assert_eq!(j["legs"]["core"], "198.18.0.3:8000");
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(agent.counters().delivered, 1);
}

#[test]
fn wrong_key_and_replay_are_refused_and_counted() {
    let (agent, rx) = CoreAgent::start(&config()).unwrap();
    let to = agent.local_addr();
    // Same key id, different key: bad tag, no answer.
    let forged = AgentKeys::from_hex(7, OTHER_KEY).unwrap();
    let mut req = Requester::for_peer(to, forged).unwrap();
    let e = req
        .request(
            to,
            &Message::Teardown(teardown(Side::Core)),
            Some(Duration::from_millis(250)),
        )
        .unwrap_err();
    assert!(matches!(e, SendError::NoReply { .. }), "{e}");
    // Unknown key id.
    let other = AgentKeys::from_hex(8, KEY).unwrap();
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    raw.send_to(
        &other
            .seal(&Message::Teardown(teardown(Side::Core)), 1, false)
            .unwrap(),
        to,
    )
    .unwrap();
    // A byte-identical resend is a replay: delivered once, the copy dropped.
    let good = AgentKeys::from_hex(7, KEY).unwrap();
    let d = good
        .seal(&Message::Teardown(teardown(Side::Core)), 2, false)
        .unwrap();
    raw.send_to(&d, to).unwrap();
    raw.send_to(&d, to).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(2)).unwrap().stitch_id,
        42
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let c = agent.counters();
        let get = |k: &str| c.dropped.get(k).copied().unwrap_or(0);
        if get("replayed") == 1 && get("unknown_key") == 1 && get("bad_mac") >= 1 {
            assert_eq!(c.delivered, 1);
            break;
        }
        assert!(Instant::now() < deadline, "counters: {c:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rx.try_recv().is_err());
}

#[test]
fn connection_closed_sends_a_4c_notice_the_shell_can_open() {
    let keys = AgentKeys::from_hex(7, KEY).unwrap();
    let mut shell = Responder::bind(
        "127.0.0.1:0".parse().unwrap(),
        keys.clone(),
        Duration::from_millis(20),
    )
    .unwrap();
    let shell_port = shell.local_addr().unwrap().port();
    let mut cfg = config();
    cfg.shell_port = shell_port;
    let (agent, _rx) = CoreAgent::start(&cfg).unwrap();
    let local: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    // The core app saw its peer as an IPv4-mapped address (dual-stack socket).
    let peer: SocketAddr = "[::ffff:127.0.0.1]:50000".parse().unwrap();
    let t = std::thread::spawn(move || agent.connection_closed(local, peer, Teardown::C));
    let deadline = Instant::now() + Duration::from_secs(3);
    let got = loop {
        if let Some(r) = shell.poll().unwrap() {
            break r;
        }
        assert!(Instant::now() < deadline, "no notice");
    };
    t.join().unwrap().expect("acknowledged");
    assert_eq!(got.msg.to, Side::Shell);
    assert_eq!(got.msg.variant, Teardown::C);
    assert_eq!(got.msg.stitch_id, 0);
    let legs = got.msg.legs.unwrap();
    assert_eq!(legs[2], "127.0.0.1:50000".parse().unwrap());
    assert_eq!(legs[3], local);
    assert!(legs[0].ip().is_unspecified() && legs[1].ip().is_unspecified());
    // And a raw listener opens the same bytes with agent-proto alone.
    let _ = (open, ReplayGuard::new(1), now_ms());
}

#[test]
fn legs_tlv_encodes_as_documented_in_agent_protocol_md() {
    let keys = AgentKeys::from_hex(7, KEY).unwrap();
    let mut td = teardown(Side::Shell);
    td.bytes = None;
    td.legs = Some([
        "198.18.0.1:40000".parse().unwrap(),
        "198.18.0.2:7000".parse().unwrap(),
        "198.18.0.2:50000".parse().unwrap(),
        "198.18.0.3:8000".parse().unwrap(),
    ]);
    let d = keys.seal(&Message::Teardown(td), 1, false).unwrap();
    #[rustfmt::skip]
    let legs: [u8; 48] = [
        0x00, 0x06, 0x00, 44,
        0, 0, 0, 7, 4, 0xc6, 0x12, 0, 1, 0x9c, 0x40,
        0, 1, 0, 7, 4, 0xc6, 0x12, 0, 2, 0x1b, 0x58,
        0, 2, 0, 7, 4, 0xc6, 0x12, 0, 2, 0xc3, 0x50,
        0, 3, 0, 7, 4, 0xc6, 0x12, 0, 3, 0x1f, 0x40,
    ];
    assert!(
        d.windows(legs.len()).any(|w| w == legs),
        "LEGS TLV as documented"
    );
}
