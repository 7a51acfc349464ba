//! A port cannot claim what it does not own (seed 003; issue 9 items 19-20), on real
//! PMDs: with `move_policy = "deny"` a MAC learned on one port stays there when another
//! port sends from it (its frames dropped as `mac_owned`, the refusal counted and raised
//! as an event), and a port that floods random source MACs learns no more than its
//! `max_learned_macs` while the other ports still learn.

use pmd_tests::{pcap, require_root, serial, unique_id, Stitchd};
use serde_json::Value;

/// A minimal broadcast Ethernet frame from `src` (L2 does not look past the header).
fn frame(src: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    f.resize(60, 0);
    f
}

const OWNER: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0xcc, 0x01];

fn port_of(list: &Value, mac: &str) -> Option<u64> {
    list["entries"]
        .as_array()?
        .iter()
        .find(|e| e["mac"] == mac)
        .and_then(|e| e["port"].as_u64())
}

#[test]
fn a_port_cannot_take_over_another_ports_mac_and_a_mac_flood_is_capped_per_port() {
    require_root();
    let _g = serial();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    // Port 0: the owner. Port 1: the same MAC (a takeover attempt), then 300 random
    // source MACs. Port 2: an unrelated station, which must still be learned.
    let in0: Vec<Vec<u8>> = (0..5).map(|_| frame(OWNER)).collect();
    let mut in1: Vec<Vec<u8>> = (0..5).map(|_| frame(OWNER)).collect();
    in1.extend((0..300u16).map(|i| {
        let b = i.to_be_bytes();
        frame([0x02, 0, 0, 0x01, b[0], b[1]])
    }));
    let in2: Vec<Vec<u8>> = (0..5).map(|_| frame(OTHER)).collect();
    for (i, f) in [&in0, &in1, &in2].iter().enumerate() {
        pcap::write(&dir.join(format!("in{i}.pcap")), f);
    }
    let d = dir.display();
    let cfg = dir.join("stitchd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[l2]\nmove_policy = \"deny\"\n\
             [[ports]]\ndevargs = \"net_pcap0,rx_pcap={d}/in0.pcap,tx_pcap={d}/out0.pcap\"\n\
             [[ports]]\ndevargs = \"net_pcap1,rx_pcap={d}/in1.pcap,tx_pcap={d}/out1.pcap\"\nmax_learned_macs = 50\n\
             [[ports]]\ndevargs = \"net_pcap2,rx_pcap={d}/in2.pcap,tx_pcap={d}/out2.pcap\"\n"
        ),
    )
    .unwrap();
    let sd = Stitchd::start(
        &id,
        dir.clone(),
        &["-l".into(), "0-1".into()],
        &["--config".into(), cfg.display().to_string()],
    );
    let total = (in0.len() + in1.len() + in2.len()) as u64;
    sd.wait_until(
        20,
        "every frame received and every learn request applied",
        |s| {
            let st = s.ok("stats.get", None);
            s.worker_sum("rx_packets") >= total && st["slow_path"]["learn_pending"] == 0
        },
    );
    let st = sd.ok("stats.get", None);
    let list = sd.ok("mac.list", None);
    assert_eq!(
        port_of(&list, "02:00:00:00:aa:01"),
        Some(0),
        "the owner's MAC moved: {list}"
    );
    assert_eq!(
        port_of(&list, "02:00:00:00:cc:01"),
        Some(2),
        "port 2's station was not learned: {list}"
    );
    let on_port1 = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["port"] == 1)
        .count();
    assert_eq!(
        on_port1, 50,
        "port 1 learned {on_port1} MACs, its limit is 50"
    );
    let sp = &st["slow_path"];
    let refused = sp["move_refused"].as_u64().unwrap() + sd.drops("mac_owned");
    assert!(
        refused >= 1,
        "the takeover was neither refused nor dropped: {st}"
    );
    assert!(
        sp["port_limit"].as_u64().unwrap() >= 1,
        "no learn refused by the port limit: {st}"
    );
    assert_eq!(sp["moves"], 0, "a MAC moved: {st}");
}
