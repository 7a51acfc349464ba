//! End to end over real PMDs: stitch-gen -> (memif) -> stitchd translating installed
//! stitches -> (memif) -> stitch-gen's sink. A few seconds at 10k pps: every frame must
//! come back translated, none lost or duplicated, with latency under 100 ms. Needs root
//! (fails saying so, never skips) and stitchd built next to this test binary
//! (`cargo build -p switch-app`), as pmd-tests does.
//!
//! Pinning (FIELD-NOTES: two busy-polling processes on one CPU collapse): the generator's
//! main lcore and its one TX+RX worker on CPU 0, stitchd's main lcore on CPU 0 and its
//! worker on CPU 1.

use std::path::PathBuf;
use std::time::Duration;

use perf::proc::{memif_devargs, require_root, sibling_bin, unique_id, Proc};
use perf::report::Trial;
use serde_json::Value;
use stitch_control::client::Client;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("logs kept in {}", self.0.display());
        }
    }
}

fn call(sock: &std::path::Path, method: &str) -> Value {
    Client::connect(sock)
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()))
        .call(method, None)
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

fn worker_sum(v: &Value, field: &str) -> u64 {
    v["workers"]
        .as_array()
        .map(|w| w.iter().map(|x| x[field].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

#[test]
fn generated_stitched_segments_cross_stitchd_over_memif_without_loss() {
    require_root("the stitch-gen smoke test").unwrap_or_else(|e| panic!("{e:#}"));
    let stitchd_bin =
        sibling_bin("stitchd").unwrap_or_else(|e| panic!("{e:#} (cargo build -p switch-app)"));
    let id = unique_id();
    let dir = Dir(std::env::temp_dir().join(format!("stitch-gen-smoke-{id}")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let sock = dir.0.join("ctl.sock");
    let dut_prefix = format!("sgs{id}d");
    let conf = format!(
        r#"[eal]
file_prefix = "{dut_prefix}"
lcores = "0,1"
hugepages = "off"
memory_mb = 512
[mempool]
mbufs = 8191
[[ports]]
devargs = "{p0}"
[[ports]]
devargs = "{p1}"
[control]
socket = "{sock}"
[stitch]
flow_table_size = 1024
[[stitch.install]]
leg_a = {{ client = "198.18.0.1:10000", shell = "198.18.0.2:7000" }}
leg_b = {{ shell = "198.18.0.2:10000", core = "198.18.0.3:8000" }}
macs = {{ c = "02:00:00:00:0c:01", a1 = "02:00:00:00:0a:01", a2 = "02:00:00:00:0a:01", b = "02:00:00:00:0b:01" }}
ports = {{ c = 0, b = 1 }}
s1 = 1000
r1 = 1000
s2 = 5000
r2 = 2000
ts = {{ c_to_b = 7, b_to_c = 9 }}
count = 100
"#,
        p0 = memif_devargs(0, &id, 0, true),
        p1 = memif_devargs(1, &id, 1, true),
        sock = sock.display()
    );
    let conf_path = dir.0.join("stitchd.toml");
    std::fs::write(&conf_path, conf).unwrap();
    let mut dut = Proc::spawn(
        &stitchd_bin,
        &["--config".into(), conf_path.display().to_string()],
        &dir.0.join("stitchd.log"),
        &dut_prefix,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        if let Some(st) = dut.exited() {
            panic!(
                "stitchd exited ({st}) before it was ready:\n{}",
                dut.log_text()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stitchd not ready in 30 s:\n{}",
            dut.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The stitch list exactly as `stitchctl --json stitch.list` prints it.
    let list = call(&sock, "stitch.list");
    assert_eq!(list["stitches"].as_array().map(Vec::len), Some(100));
    let list_path = dir.0.join("stitches.json");
    std::fs::write(&list_path, list.to_string()).unwrap();

    let gen_prefix = format!("sgs{id}g");
    let out = dir.0.join("summary.json");
    let args: Vec<String> = [
        "--lcores",
        "0@0,1@0",
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        &format!("--file-prefix={gen_prefix}"),
        &format!("--vdev={}", memif_devargs(0, &id, 0, false)),
        &format!("--vdev={}", memif_devargs(1, &id, 1, false)),
        "--",
        "--kind",
        "stitched",
        "--stitches",
        &list_path.display().to_string(),
        "--mac-c",
        "02:00:00:00:0c:01",
        "--mac-a1",
        "02:00:00:00:0a:01",
        "--size",
        "128",
        "--pps",
        "10000",
        "--duration",
        "2",
        "--warmup",
        "0.3",
        "--mbufs",
        "4095",
        "--out",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut gen = Proc::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_stitch-gen")),
        &args,
        &dir.0.join("gen.log"),
        &gen_prefix,
    )
    .unwrap();
    let st = gen
        .wait(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("stitch-gen did not finish in 60 s:\n{}", gen.log_text()));
    assert!(
        st.success(),
        "stitch-gen failed ({st}):\n{}\nstitchd:\n{}",
        gen.log_text(),
        dut.log_text()
    );
    let t: Trial = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let stats = call(&sock, "stats.get");
    let stitched = worker_sum(&stats, "stitched");
    drop(dut); // SIGTERM by pid, /var/run/dpdk/<prefix> removed
    drop(gen);
    for p in [&dut_prefix, &gen_prefix] {
        assert!(
            !std::path::Path::new(&format!("/var/run/dpdk/{p}")).exists(),
            "{p} left behind"
        );
    }
    let log = std::fs::read_to_string(dir.0.join("gen.log")).unwrap_or_default();
    assert!(
        log.contains("stitch-gen:") && log.contains("Mpps"),
        "no progress line:\n{log}"
    );
    assert!(
        t.tx_packets > 10_000,
        "sent only {} frames in 2 s at 10k pps",
        t.tx_packets
    );
    assert_eq!(t.flows, 100);
    assert_eq!((t.lost, t.duplicates, t.tx_refused), (0, 0, 0), "{t:?}");
    assert_eq!(t.rx_packets, t.tx_packets);
    assert_eq!(t.rx_other, 0, "frames without signature came back");
    assert!(
        stitched >= t.tx_packets,
        "stitchd translated {stitched} < {} sent",
        t.tx_packets
    );
    assert!(
        t.latency_ns.max > 0 && t.latency_ns.max < 100_000_000,
        "latency {:?}",
        t.latency_ns
    );
    assert!(t.latency_ns.p50 <= t.latency_ns.p99 && t.latency_ns.p99 <= t.latency_ns.max);
}
