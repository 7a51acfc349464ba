//! One-hop discovery and the agent protocol's defences, with a real Linux host in a
//! namespace talking UDP to stitchd's service address (ARP and neighbour discovery
//! answered by the switch): a probe sent with TTL 1 gets the switch's capabilities; a
//! probe with TTL 2 gets nothing; a wrong HMAC and a replayed datagram are dropped and
//! counted, never answered.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use agent_proto::{open, seal, CapFlags, HeaderFields, Keyring, Message, Probe, ReplayGuard};
use pmd_tests::{require_root, serial, unique_id, Netns, Stitchd};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_KEY: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn probe(key: &str, request_id: u64, nonce: u8) -> Vec<u8> {
    let mut keys = Keyring::new();
    keys.add_hex(7, key).unwrap();
    let msg = Message::Probe(Probe {
        ingress_ifaces: 1,
        egress_ifaces: 1,
        want: CapFlags::TCP | CapFlags::IPV4,
    });
    let fields = HeaderFields {
        request_id,
        response: false,
        timestamp_ms: now_ms(),
        nonce: [nonce; 16],
        key_id: 7,
    };
    seal(&msg, fields, &keys).unwrap()
}

fn ask(sock: &UdpSocket, to: SocketAddr, ttl: u32, datagram: &[u8]) -> Option<Message> {
    if to.is_ipv4() {
        sock.set_ttl(ttl).unwrap();
    } else {
        nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::Ipv6Ttl, &(ttl as i32))
            .unwrap();
    }
    sock.send_to(datagram, to).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let mut keys = Keyring::new();
    keys.add_hex(7, KEY).unwrap();
    let mut guard = ReplayGuard::new(64);
    Some(
        open(&buf[..n], &keys, &mut guard, now_ms())
            .expect("reply authenticates")
            .msg,
    )
}

fn counter(sd: &Stitchd, name: &str) -> u64 {
    sd.ok("stats.get", None)["agent"]["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn one_hop_probe_is_answered_and_ttl2_wrong_hmac_and_replays_are_dropped_and_counted() {
    require_root();
    let _g = serial();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let (ta, tb) = (format!("t{id}a"), format!("t{id}b"));
    let cfg = dir.join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[ports]]\ndevargs = \"net_tap0,iface={ta}\"\n[[ports]]\ndevargs = \"net_tap1,iface={tb}\"\n\
             [agent]\nipv4 = \"198.18.0.254\"\nipv6 = \"2001:db8::fe\"\nswitch_id = \"golden-switch\"\n\
             keys = [{{ id = 7, key = \"{KEY}\" }}]\n"
        ),
    )
    .unwrap();
    let sd = Stitchd::start(
        &id,
        dir,
        &["-l".into(), "0-1".into()],
        &["--config".into(), cfg.display().to_string()],
    );
    let a = Netns::new(&format!("st{id}a"));
    let b = Netns::new(&format!("st{id}b"));
    a.attach(&ta, Some("02:00:00:00:0a:01"), "198.18.0.2/24");
    a.ip(&["-6", "addr", "add", "2001:db8::2/64", "dev", &ta, "nodad"]);
    b.attach(&tb, Some("02:00:00:00:0b:01"), "198.18.0.3/24");

    let results = a
        .run(move || {
            let sock = UdpSocket::bind("198.18.0.2:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            let service: SocketAddr = "198.18.0.254:4790".parse().unwrap();
            let one_hop = ask(&sock, service, 1, &probe(KEY, 1, 1));
            let two_hops = ask(&sock, service, 2, &probe(KEY, 2, 2));
            let wrong_key = ask(&sock, service, 1, &probe(OTHER_KEY, 3, 3));
            let valid = probe(KEY, 4, 4);
            let first = ask(&sock, service, 1, &valid);
            let replayed = ask(&sock, service, 1, &valid);
            sock.set_broadcast(true).unwrap();
            let broadcast = ask(
                &sock,
                "255.255.255.255:4790".parse().unwrap(),
                1,
                &probe(KEY, 5, 5),
            );
            let sock6 = UdpSocket::bind("[2001:db8::2]:0").unwrap();
            sock6
                .set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            let v6 = ask(
                &sock6,
                "[2001:db8::fe]:4790".parse().unwrap(),
                1,
                &probe(KEY, 6, 6),
            );
            (one_hop, two_hops, wrong_key, first, replayed, broadcast, v6)
        })
        .join()
        .unwrap();
    let (one_hop, two_hops, wrong_key, first, replayed, broadcast, v6) = results;
    let Some(Message::ProbeReply(caps)) = one_hop else {
        panic!(
            "no reply to a one-hop probe: {one_hop:?}\n{}",
            sd.log_text()
        )
    };
    assert!(caps.flags.contains(
        CapFlags::TCP | CapFlags::UDP | CapFlags::IPV4 | CapFlags::IPV6 | CapFlags::TEARDOWN_4E
    ));
    assert_eq!(
        caps.request_addr,
        "198.18.0.254:4790".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(caps.switch_id, "golden-switch");
    assert!(caps.free_flows > 0);
    assert!(two_hops.is_none(), "a probe with TTL 2 was answered");
    assert!(
        wrong_key.is_none(),
        "a probe with a wrong HMAC was answered"
    );
    assert!(matches!(first, Some(Message::ProbeReply(_))));
    assert!(replayed.is_none(), "a replayed probe was answered");
    assert!(
        matches!(broadcast, Some(Message::ProbeReply(_))),
        "broadcast probe: {broadcast:?}"
    );
    let Some(Message::ProbeReply(c6)) = v6 else {
        panic!("no reply over IPv6: {v6:?}\n{}", sd.ok("stats.get", None))
    };
    assert_eq!(
        c6.request_addr,
        "[2001:db8::fe]:4790".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(counter(&sd, "probe_ttl_not_1"), 1);
    assert_eq!(counter(&sd, "bad_mac"), 1);
    assert_eq!(counter(&sd, "replayed"), 1);
    assert!(counter(&sd, "arp_replies") >= 1);
    assert!(counter(&sd, "nd_replies") >= 1);
    assert_eq!(counter(&sd, "probes_answered"), 4);
}
