//! Golden test on `net_pcap`: frames replayed from one rx pcap per port come out of the
//! tx pcaps exactly as L2 switching demands, packet by packet: broadcast, multicast and
//! unknown unicast flooded to every other port, learned unicast to one port, hairpin,
//! bad source and truncated frames dropped and counted.

use etherparse::PacketBuilder;
use pmd_tests::{pcap, require_root, serial, unique_id, Stitchd};
use serde_json::json;

const A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
const C: [u8; 6] = [2, 0, 0, 0, 0, 0x0c];
const D: [u8; 6] = [2, 0, 0, 0, 0, 0x0d];
const BCAST: [u8; 6] = [0xff; 6];
const MCAST: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];

/// A UDP frame whose payload names it, so a mix-up is visible in the failure message.
fn frame(n: u8, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let payload = format!("golden frame {n}");
    let b = PacketBuilder::ethernet2(src, dst)
        .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        .udp(4000 + u16::from(n), 5000);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload.as_bytes()).expect("build frame");
    out
}

#[test]
fn l2_flooding_learning_and_drops_match_golden_output_packet_by_packet() {
    require_root();
    let _g = serial();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let f1 = frame(1, A, BCAST);
    let f2 = frame(2, A, C);
    let f3 = frame(3, A, MCAST);
    let f4 = frame(4, B, A);
    let f5 = frame(5, B, D);
    let f6 = frame(6, C, B);
    let f7 = frame(7, C, A);
    let f8 = frame(8, C, C); // C is learned on port 2 by frame 6: hairpin
    let f9 = frame(9, MCAST, A); // multicast source
    let f10 = vec![0u8; 10]; // shorter than an Ethernet header
    let inputs = [
        vec![f1.clone(), f2.clone(), f3.clone()],
        vec![f4.clone(), f5.clone()],
        vec![f6.clone(), f7.clone(), f8, f9, f10],
    ];
    let mut eal = vec!["-l".to_string(), "0-1".into(), "--no-pci".into()];
    for (i, frames) in inputs.iter().enumerate() {
        let rx = dir.join(format!("in{i}.pcap"));
        pcap::write(&rx, frames);
        eal.push(format!(
            "--vdev=net_pcap{i},rx_pcap={},tx_pcap={}",
            rx.display(),
            dir.join(format!("out{i}.pcap")).display()
        ));
    }
    let mut sd = Stitchd::start(&id, dir.clone(), &eal, &[]);
    sd.wait_until(20, "11 frames sent", |s| s.worker_sum("tx_packets") >= 11);
    sd.wait_until(10, "A, B and C learned", |s| {
        s.ok("mac.list", None)["entries"]
            .as_array()
            .map_or(0, Vec::len)
            >= 3
    });

    let macs = sd.ok("mac.list", None);
    let learned: Vec<(String, u64)> = macs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["mac"].as_str().unwrap().to_string(),
                e["port"].as_u64().unwrap(),
            )
        })
        .collect();
    for (mac, port) in [
        ("02:00:00:00:00:0a", 0),
        ("02:00:00:00:00:0b", 1),
        ("02:00:00:00:00:0c", 2),
    ] {
        assert!(
            learned.contains(&(mac.to_string(), port)),
            "{mac} not learned on port {port}: {learned:?}"
        );
    }
    assert_eq!(learned.len(), 3, "only A, B, C may be learned: {learned:?}");
    assert_eq!(sd.drops("hairpin"), 1);
    assert_eq!(sd.drops("bad_src_mac"), 1);
    assert_eq!(sd.drops("truncated"), 1);
    assert_eq!(sd.worker_sum("rx_packets"), 10);
    assert_eq!(sd.worker_sum("flooded"), 4);

    let bye = sd.ok("shutdown", None);
    assert_eq!(bye, json!({"shutting_down": true}));
    assert!(
        sd.wait_exit(20),
        "stitchd did not exit cleanly after shutdown:\n{}",
        sd.log_text()
    );
    assert!(!sd.socket.exists(), "control socket left behind");

    let expected = [
        vec![f4, f5.clone(), f7],
        vec![f1.clone(), f2.clone(), f3.clone(), f6],
        vec![f1, f2, f3, f5],
    ];
    for (i, want) in expected.iter().enumerate() {
        let got = pcap::read(&dir.join(format!("out{i}.pcap")));
        let names = |v: &[Vec<u8>]| {
            v.iter()
                .map(|f| String::from_utf8_lossy(&f[f.len().saturating_sub(15)..]).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            got.len(),
            want.len(),
            "port {i}: got {:?}, want {:?}",
            names(&got),
            names(want)
        );
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(
                g,
                w,
                "port {i} frame {k} differs: got {:?}, want {:?}",
                names(&got),
                names(want)
            );
        }
    }
}
