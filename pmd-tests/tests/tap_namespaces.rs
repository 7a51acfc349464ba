//! Real Linux hosts in three network namespaces, each joined to stitchd by a `net_tap`
//! port: they ping each other and move 64 MiB over TCP through the switch, and what
//! arrives hashes to what was sent.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use pmd_tests::{
    pattern, require_cmd, require_root, serial, sha256, sha256_of, unique_id, Netns, Stitchd,
};

const MIB: usize = 1 << 20;

#[test]
fn three_hosts_ping_and_transfer_64_mib_over_tcp_through_stitchd_byte_exact() {
    require_root();
    require_cmd("ping", "iputils-ping");
    let _g = serial();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let taps: Vec<String> = (0..3).map(|i| format!("t{id}{i}")).collect();
    let mut eal = vec!["-l".to_string(), "0-1".into(), "--no-pci".into()];
    for (i, t) in taps.iter().enumerate() {
        eal.push(format!("--vdev=net_tap{i},iface={t}"));
    }
    let sd = Stitchd::start(&id, dir, &eal, &[]);
    // Namespaces only after the ports are started (the socket exists): see FIELD-NOTES.
    let ns: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("st{id}{i}"))).collect();
    let macs = [
        "02:00:00:00:01:01",
        "02:00:00:00:01:02",
        "02:00:00:00:01:03",
    ];
    for i in 0..3 {
        ns[i].attach(&taps[i], Some(macs[i]), &format!("198.18.0.{}/24", i + 1));
    }

    for (from, to) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
        let out = ns[from].exec(
            "ping",
            &[
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                &format!("198.18.0.{}", to + 1),
            ],
        );
        assert!(
            out.status.success(),
            "ping ns{from} -> ns{to} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            sd.log_text()
        );
    }

    let data = pattern(64 * MIB, 0x5eed);
    let want = sha256(&data);
    let server = ns[1].run(|| {
        let l = TcpListener::bind("198.18.0.2:5201").expect("bind in ns1");
        let (s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        sha256_of(s)
    });
    std::thread::sleep(Duration::from_millis(200));
    let client = ns[0].run(move || {
        let mut s = TcpStream::connect_timeout(
            &"198.18.0.2:5201".parse().expect("addr"),
            Duration::from_secs(10),
        )
        .expect("connect to ns1");
        s.write_all(&data).expect("send");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    });
    client.join().expect("client thread");
    let (got, n) = server.join().expect("server thread");
    assert_eq!(n, 64 * MIB as u64, "byte count");
    assert_eq!(got, want, "SHA-256 of received bytes differs from sent");

    // The switch learned each host on its own port and counted the traffic.
    let table = sd.ok("mac.list", None);
    for (i, m) in macs.iter().enumerate() {
        let ok = table["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == *m && e["port"] == i as u64);
        assert!(ok, "{m} not learned on port {i}: {table}");
    }
    let stats = sd.ok("ports.stats", None);
    let rx1 = stats["ports"][1]["tx_bytes"].as_u64().unwrap();
    assert!(
        rx1 >= 64 * MIB as u64,
        "port 1 sent {rx1} bytes, expected the whole transfer"
    );
    drop(ns);
}
