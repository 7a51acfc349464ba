//! Port security with real hosts: a namespace that changes its MAC (spoofing) gets its
//! frames dropped and counted, from the configuration file and at run time.

use pmd_tests::{require_cmd, require_root, serial, unique_id, Netns, Stitchd};
use serde_json::json;

fn ping(ns: &Netns, to: &str) -> bool {
    ns.exec("ping", &["-c", "2", "-i", "0.2", "-W", "1", to])
        .status
        .success()
}

#[test]
fn spoofed_source_mac_is_dropped_and_counted_and_policy_changes_at_run_time() {
    require_root();
    require_cmd("ping", "iputils-ping");
    let _g = serial();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let (ta, tb) = (format!("t{id}a"), format!("t{id}b"));
    let cfg = dir.join("stitchd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[ports]]\ndevargs = \"net_tap0,iface={ta}\"\nallowed_macs = [\"02:00:00:00:aa:01\"]\n\
             [[ports]]\ndevargs = \"net_tap1,iface={tb}\"\n"
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
    a.attach(&ta, Some("02:00:00:00:aa:01"), "198.18.0.1/24");
    b.attach(&tb, Some("02:00:00:00:bb:01"), "198.18.0.2/24");

    assert!(
        ping(&a, "198.18.0.2"),
        "allowed MAC cannot ping:\n{}",
        sd.log_text()
    );
    // The tap may have sent a frame or two (IPv6 router solicitation) from the random MAC
    // it had before the test set one: those are rightly dropped; count from here.
    let before = sd.drops("port_security");

    // Spoof: same host, another source MAC.
    a.ip(&["link", "set", &ta, "address", "02:00:00:00:aa:66"]);
    a.ip(&["neigh", "flush", "all"]);
    b.ip(&["neigh", "flush", "all"]);
    assert!(!ping(&a, "198.18.0.2"), "spoofed MAC got through");
    let dropped = sd.drops("port_security");
    assert!(
        dropped > before,
        "spoofed frames not counted as port_security drops"
    );
    let table = sd.ok("mac.list", None);
    assert!(
        !table.to_string().contains("02:00:00:00:aa:66"),
        "spoofed MAC was learned: {table}"
    );

    // Run time: allow the new MAC, and it works.
    let r = sd.ok(
        "port.security.set",
        Some(json!({"port": 0, "allowed_macs": ["02:00:00:00:aa:66"]})),
    );
    assert_eq!(r["allowed_macs"], json!(["02:00:00:00:aa:66"]));
    assert!(ping(&a, "198.18.0.2"), "newly allowed MAC cannot ping");

    // Back to the old MAC only: the host is cut off again and the counter grows.
    sd.ok(
        "port.security.set",
        Some(json!({"port": 0, "allowed_macs": ["02:00:00:00:aa:01"]})),
    );
    a.ip(&["neigh", "flush", "all"]);
    b.ip(&["neigh", "flush", "all"]);
    assert!(
        !ping(&a, "198.18.0.2"),
        "MAC removed from the allow list still gets through"
    );
    assert!(sd.drops("port_security") > dropped);

    // Any source again.
    sd.ok(
        "port.security.set",
        Some(json!({"port": 0, "allowed_macs": null})),
    );
    assert!(ping(&a, "198.18.0.2"), "port open to any MAC still drops");
}
