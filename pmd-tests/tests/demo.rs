//! The README's demo, run as CI runs it: `scripts/demo.sh` with the binaries built next
//! to this test (no release build), checked by its own exit status and its "SHA-256
//! match" line, and within the minute the issue allows.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pmd_tests::{require_cmd, require_root, serial, stitchd_bin};

#[test]
fn demo_moves_a_transfer_through_the_hand_off_and_the_sha256_matches() {
    let _g = serial();
    require_root();
    require_cmd("ip", "iproute2");
    require_cmd("ping", "iputils-ping");
    require_cmd("python3", "python3");
    let bin_dir = stitchd_bin().parent().expect("binary dir").to_path_buf();
    for b in ["stitchctl", "stitch-shell", "stitch-core"] {
        assert!(
            bin_dir.join(b).is_file(),
            "{b} not found in {}: cargo build --workspace --bins",
            bin_dir.display()
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .env("STITCHD_BIN_DIR", &bin_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo.sh exited with {}:\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.lines().any(|l| l == "SHA-256 match"),
        "no \"SHA-256 match\" line:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("stitched (id "),
        "the table does not show a live stitch:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("STITCH ")),
        "stitchctl top in the demo shows no stitch:\n{stdout}"
    );
    assert!(
        took < Duration::from_secs(60),
        "the demo took {took:?}, over a minute:\n{stdout}"
    );
}

/// The load-balancer demo (`scripts/demo-lb.sh`), as the README shows it: real HTTP
/// servers and curl, checked by its own exit status and its closing line.
#[test]
fn demo_lb_balances_a_service_and_takes_a_dead_backend_out() {
    let _g = serial();
    require_root();
    require_cmd("ip", "iproute2");
    require_cmd("curl", "curl");
    require_cmd("python3", "python3");
    let bin_dir = stitchd_bin().parent().expect("binary dir").to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo-lb.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("STITCHD_BIN_DIR", &bin_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo-lb.sh exited with {}:\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("== demo-lb OK")),
        "no OK line:\n{stdout}"
    );
    assert!(
        stdout.contains("down: "),
        "lb.stats shows no dead backend:\n{stdout}"
    );
}
