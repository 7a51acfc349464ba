//! Prometheus exposition on a real PMD: stitchd on `net_pcap` with `[metrics]` on
//! replays a known pcap; `/metrics`, fetched with a plain TCP client and parsed here by
//! an independent text-format parser, agrees with `stats.get`, `ports.stats` and
//! `mac.list`. A `[metrics]` table with an unknown key is refused naming it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use etherparse::PacketBuilder;
use pmd_tests::{pcap, require_root, serial, stitchd_bin, unique_id, Stitchd};

const A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
const FRAMES: u64 = 600;
const TRUNCATED: u64 = 7;

fn frame(n: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(A, B)
        .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        .udp(4000 + n, 5000);
    let mut out = Vec::with_capacity(b.size(32));
    b.write(&mut out, &[0x5a; 32]).expect("build frame");
    out
}

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus / OpenMetrics text format strictly enough to catch a malformed
/// exposition: every sample belongs to a family declared by `# TYPE` before it, counter
/// samples are named `<family>_total`, label values are quoted, values are numbers, and
/// the text ends with `# EOF`.
fn parse(text: &str) -> Vec<Sample> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("# TYPE name type");
            assert!(
                ["counter", "gauge", "histogram", "info", "unknown"].contains(&ty),
                "bad type in {line:?}"
            );
            types.insert(name.to_string(), ty.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample: series value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value of {line:?}: {e}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label k=v");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
                    labels.insert(k.to_string(), v.to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
        let of_type = |suffixes: &[&str], ty: &str| {
            suffixes.iter().find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some(ty))
                    .map(str::to_string)
            })
        };
        let family = of_type(&["_total"], "counter")
            .or_else(|| of_type(&["_bucket", "_sum", "_count"], "histogram"))
            .unwrap_or_else(|| name.clone());
        let ty = types
            .get(&family)
            .unwrap_or_else(|| panic!("sample {name} before its # TYPE"));
        if ty == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter sample {name} without _total"
            );
        }
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> u64 {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(hits.len(), 1, "{name}{want:?}: {hits:?}");
    hits[0].value as u64
}

/// A plain HTTP/1.1 request; returns (status line, headers and body).
fn http(addr: &str, request_line: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "{request_line}\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let (status, rest) = resp.split_once("\r\n").expect("status line");
    (status.to_string(), rest.to_string())
}

#[test]
fn metrics_agree_with_stats_get_after_a_known_pcap_is_replayed() {
    require_root();
    let _g = serial();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let mut frames: Vec<Vec<u8>> = (0..FRAMES as u16).map(frame).collect();
    frames.extend((0..TRUNCATED).map(|_| vec![0u8; 10]));
    let in0 = dir.join("in0.pcap");
    let in1 = dir.join("in1.pcap");
    pcap::write(&in0, &frames);
    pcap::write(&in1, &[]);
    let cfg = dir.join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[ports]]\ndevargs = \"net_pcap0,rx_pcap={},tx_pcap={}\"\n\
             [[ports]]\ndevargs = \"net_pcap1,rx_pcap={},tx_pcap={}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            in0.display(),
            dir.join("out0.pcap").display(),
            in1.display(),
            dir.join("out1.pcap").display()
        ),
    )
    .unwrap();
    let sd = Stitchd::start(
        &id,
        dir.clone(),
        &["-l".into(), "0-1".into()],
        &["--config".into(), cfg.display().to_string()],
    );
    // The bound address (port 0 = any free port) is in the log.
    let addr = sd.logged_addr("metrics on");
    let total = FRAMES + TRUNCATED;
    sd.wait_until(20, "the pcap replayed", |s| {
        s.worker_sum("rx_packets") == total && s.worker_sum("tx_packets") == FRAMES
    });

    // One hand-off begun and given up: counted as prepared, and removed as deleted.
    let prep = sd.ok(
        "stitch.prepare",
        Some(serde_json::json!({
            "leg_a": {"client": "198.18.0.1:40000", "shell": "198.18.0.2:7000"},
            "leg_b": {"shell": "198.18.0.2:45000", "core": "198.18.0.3:8000"}
        })),
    );
    sd.ok("stitch.delete", Some(serde_json::json!({"id": prep["id"]})));
    let (status, rest) = http(&addr, "GET /metrics HTTP/1.1");
    assert_eq!(status, "HTTP/1.1 200 OK", "{rest}");
    let (head, body) = rest.split_once("\r\n\r\n").expect("head and body");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let m = parse(body);

    let stats = sd.ok("stats.get", None);
    let workers = stats["workers"].as_array().expect("workers");
    assert!(!workers.is_empty());
    let mut rx_sum = 0;
    for (i, w) in workers.iter().enumerate() {
        let wl = i.to_string();
        let lcore = w["lcore"].to_string();
        let labels = [("worker", wl.as_str()), ("lcore", lcore.as_str())];
        let rx = value(&m, "stitchd_worker_rx_packets_total", &labels);
        assert_eq!(rx, w["rx_packets"].as_u64().unwrap(), "worker {i} rx");
        rx_sum += rx;
        assert_eq!(
            value(&m, "stitchd_worker_tx_packets_total", &labels),
            w["tx_packets"].as_u64().unwrap(),
            "worker {i} tx"
        );
        for (reason, n) in w["drops"].as_object().expect("drops") {
            let mut l = labels.to_vec();
            l.push(("reason", reason.as_str()));
            assert_eq!(
                value(&m, "stitchd_worker_drops_total", &l),
                n.as_u64().unwrap(),
                "worker {i} drops {reason}"
            );
        }
    }
    assert_eq!(rx_sum, total, "every replayed frame counted once");
    let truncated: u64 = m
        .iter()
        .filter(|s| {
            s.name == "stitchd_worker_drops_total"
                && s.labels.get("reason").map(String::as_str) == Some("truncated")
        })
        .map(|s| s.value as u64)
        .sum();
    assert_eq!(truncated, TRUNCATED);

    let ports = sd.ok("ports.stats", None);
    for p in ports["ports"].as_array().expect("ports") {
        let id = p["id"].to_string();
        let l = [("port", id.as_str())];
        for (metric, field) in [
            ("stitchd_port_rx_packets_total", "rx_packets"),
            ("stitchd_port_rx_bytes_total", "rx_bytes"),
            ("stitchd_port_tx_packets_total", "tx_packets"),
            ("stitchd_port_tx_bytes_total", "tx_bytes"),
            ("stitchd_port_rx_errors_total", "rx_errors"),
            ("stitchd_port_tx_errors_total", "tx_errors"),
        ] {
            assert_eq!(
                value(&m, metric, &l),
                p[field].as_u64().unwrap(),
                "port {id} {field}"
            );
        }
    }
    assert_eq!(
        value(&m, "stitchd_port_rx_packets_total", &[("port", "0")]),
        total
    );
    assert_eq!(
        value(&m, "stitchd_port_tx_packets_total", &[("port", "1")]),
        FRAMES,
        "unknown unicast flooded to the other port"
    );

    let macs = sd.ok("mac.list", None);
    let entries = macs["entries"].as_array().expect("entries").len() as u64;
    assert_eq!(entries, 1, "A learned on port 0: {macs}");
    assert_eq!(
        value(&m, "stitchd_mac_table_entries", &[("bridge", "0")]),
        entries
    );
    assert_eq!(
        value(&m, "stitchd_mac_table_capacity", &[("bridge", "0")]),
        macs["capacity"].as_u64().unwrap()
    );
    let st = &stats["stitch"];
    assert_eq!(
        value(&m, "stitchd_flow_table_capacity", &[]),
        st["flow_capacity"].as_u64().unwrap()
    );
    assert_eq!(value(&m, "stitchd_flow_table_entries", &[]), 0);
    assert_eq!(value(&m, "stitchd_stitches", &[]), 0);
    let h = &st["handoffs"];
    for outcome in [
        "prepared",
        "frozen",
        "committed",
        "commit_refused",
        "aborted",
    ] {
        assert_eq!(
            value(&m, "stitchd_handoffs_total", &[("outcome", outcome)]),
            h[outcome].as_u64().unwrap(),
            "{outcome}"
        );
    }
    assert_eq!(h["prepared"], 1);
    assert_eq!(
        value(
            &m,
            "stitchd_stitches_removed_total",
            &[("reason", "deleted")]
        ),
        1
    );
    assert_eq!(
        value(&m, "stitchd_handoff_frozen_seconds_count", &[]),
        h["committed"].as_u64().unwrap()
    );
    assert_eq!(
        value(
            &m,
            "stitchd_handoff_frozen_seconds_bucket",
            &[("le", "+Inf")]
        ),
        h["committed"].as_u64().unwrap()
    );
    assert!(
        body.contains("# TYPE stitchd_stitches_by_state gauge"),
        "few stitches: counted by state"
    );
    assert_eq!(
        value(&m, "stitchd_mac_events_total", &[("event", "learned")]),
        stats["slow_path"]["learned"].as_u64().unwrap()
    );

    let (status, _) = http(&addr, "GET /nothing HTTP/1.1");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http(&addr, "POST /metrics HTTP/1.1");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
}

#[test]
fn a_metrics_table_with_an_unknown_key_is_refused_naming_it() {
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "[[ports]]\ndevargs = \"net_null0\"\n[metrics]\nlisten = \"127.0.0.1:9464\"\nlisen = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(stitchd_bin())
        .args(["--config", &cfg.display().to_string(), "--check-config"])
        .output()
        .expect("run stitchd --check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(err.contains("lisen"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
