//! `stitchctl top` against a running stitchd with live traffic (`net_pcap` replaying a
//! pcap forever into port 0, flooded to `net_null` port 1): without a terminal it prints
//! one block of plain lines per refresh, with a row per port and per worker, and the
//! rates it shows are those of the traffic.

use std::process::{Command, Stdio};

use etherparse::PacketBuilder;
use pmd_tests::{pcap, require_root, serial, stitchd_bin, unique_id, Stitchd};

fn frame(n: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x0a], [2, 0, 0, 0, 0, 0x0b])
        .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        .udp(4000 + n, 5000);
    let mut out = Vec::with_capacity(b.size(18));
    b.write(&mut out, &[0x5a; 18]).expect("build frame");
    out
}

#[test]
fn top_without_a_terminal_prints_port_and_worker_rows_with_live_rates() {
    require_root();
    let _g = serial();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let rx = dir.join("in.pcap");
    pcap::write(&rx, &(0..64).map(frame).collect::<Vec<_>>());
    let eal = vec![
        "-l".to_string(),
        "0-1".into(),
        "--no-pci".into(),
        format!("--vdev=net_pcap0,rx_pcap={},infinite_rx=1", rx.display()),
        "--vdev=net_null0,no-rx=1".into(),
    ];
    let sd = Stitchd::start(&id, dir, &eal, &[]);
    sd.wait_until(20, "traffic", |s| s.worker_sum("rx_packets") > 1000);

    let ctl = stitchd_bin().with_file_name("stitchctl");
    let out = Command::new(&ctl)
        .args([
            "--socket",
            &sd.socket.display().to_string(),
            "top",
            "--count",
            "2",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", ctl.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stitchctl top failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains('\x1b'),
        "escape codes without a terminal:\n{text}"
    );
    let blocks: Vec<&str> = text
        .split("stitchd top: ")
        .filter(|b| !b.is_empty())
        .collect();
    assert_eq!(blocks.len(), 2, "two refreshes:\n{text}");
    for b in blocks {
        assert!(b.starts_with("2 ports, 1 workers"), "{b}");
        let lines: Vec<&str> = b.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("PORT"))
            .unwrap_or_else(|| panic!("no PORT header:\n{b}"));
        let port0: Vec<&str> = lines[header + 1].split_whitespace().collect();
        let port1: Vec<&str> = lines[header + 2].split_whitespace().collect();
        assert_eq!(port0[0], "0", "{b}");
        assert_eq!(port1[0], "1", "{b}");
        assert_ne!(port0[2], "0", "port 0 receives the replayed pcap:\n{b}");
        assert_ne!(port1[4], "0", "port 1 sends the flooded frames:\n{b}");
        let worker = lines
            .iter()
            .position(|l| l.starts_with("WORKER"))
            .unwrap_or_else(|| panic!("no WORKER header:\n{b}"));
        let w0: Vec<&str> = lines[worker + 1].split_whitespace().collect();
        assert_eq!(w0[..2], ["0", "1"], "worker 0 on lcore 1:\n{b}");
        assert_ne!(w0[2], "0", "the worker receives:\n{b}");
    }
}
