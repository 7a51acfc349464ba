//! Packet capture on real PMDs: stitchd on two `net_tap` ports between two network
//! namespaces; while a TCP transfer runs, `stitchctl capture` takes 10,000 frames as
//! received on port 0 and 10,000 as sent out of port 1 (two captures at once). tshark
//! reads each file back: exactly the count stitchctl reported, every frame the test's
//! traffic (198.18.0.1 -> 198.18.0.2), and the transfer completes byte-exact. On an idle
//! port a capture with `--timeout` ends with 0 and says so; an interrupted one stops and
//! exits 130; bad params, a second capture on a port and unknown ports are refused with
//! nothing changed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pmd_tests::{
    pattern, require_cmd, require_root, serial, sha256_of, stitchd_bin, unique_id, Netns, Stitchd,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const COUNT: u64 = 10_000;

fn stitchctl() -> PathBuf {
    stitchd_bin().with_file_name("stitchctl")
}

fn require_tshark() {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("tshark").is_file()));
    assert!(
        found,
        "'tshark' not found: install tshark (scripts/setup.sh)"
    );
}

/// stitchd on two taps, each moved into a namespace of its own with IPv6 off and a
/// permanent neighbour entry for the other host (so the only frames on the wire are the
/// test's IPv4 ones), hosts 198.18.0.1 and 198.18.0.2.
fn setup(id: &str) -> (Stitchd, Vec<Netns>) {
    let dir = Stitchd::make_dir(id);
    let taps: Vec<String> = (0..2).map(|i| format!("c{id}{i}")).collect();
    let mut eal = vec!["-l".to_string(), "0-1".into(), "--no-pci".into()];
    for (i, t) in taps.iter().enumerate() {
        eal.push(format!("--vdev=net_tap{i},iface={t}"));
    }
    let sd = Stitchd::start(id, dir, &eal, &[]);
    let ns: Vec<Netns> = (0..2).map(|i| Netns::new(&format!("sc{id}{i}"))).collect();
    for (i, n) in ns.iter().enumerate() {
        let out = n.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
        assert!(out.status.success(), "sysctl in {}: {out:?}", n.name);
        n.attach(
            &taps[i],
            Some(&format!("02:00:00:00:03:0{}", i + 1)),
            &format!("198.18.0.{}/24", i + 1),
        );
        // Permanent neighbours: no ARP on the wire either, whenever the kernel would
        // re-check an entry.
        let peer = 2 - i;
        n.ip(&[
            "neigh",
            "replace",
            &format!("198.18.0.{peer}"),
            "lladdr",
            &format!("02:00:00:00:03:0{peer}"),
            "dev",
            &taps[i],
            "nud",
            "permanent",
        ]);
    }
    (sd, ns)
}

/// Starts `stitchctl --socket S capture ARGS...` with its output piped.
fn spawn_capture(sd: &Stitchd, args: &[&str], cwd: &Path) -> Child {
    Command::new(stitchctl())
        .arg("--socket")
        .arg(&sd.socket)
        .arg("capture")
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stitchctl capture")
}

/// Waits for `child` (killed by its pid after `secs`), returning its output.
fn wait_output(mut child: Child, secs: u64, what: &str, sd: &Stitchd) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "{what} did not end within {secs} s: {}\n{}\ncapture.status: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        sd.ok("capture.status", None),
        sd.log_text()
    );
}

/// From "captured X of N packets on port P (dir) into F; D dropped (capture ring full)":
/// (X, D).
fn reported(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("captured "))
        .unwrap_or_else(|| panic!("no 'captured' line in {stdout:?}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    let captured = w[1].parse().expect("captured count");
    let i = w.iter().position(|x| *x == "dropped").expect("dropped");
    let dropped = w[i - 1].parse().expect("dropped count");
    (captured, dropped)
}

/// `tshark -r FILE -T fields` with the given fields: one Vec per frame.
fn tshark(file: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["-n".to_string(), "-r".into(), file.display().to_string()];
    args.extend([
        "-T".into(),
        "fields".into(),
        "-E".into(),
        "separator=/t".into(),
    ]);
    for f in fields {
        args.push("-e".into());
        args.push((*f).into());
    }
    let out = Command::new("tshark")
        .args(&args)
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark -r {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[test]
fn ten_thousand_frames_captured_during_a_transfer_are_read_back_by_tshark_with_matching_counts() {
    require_root();
    require_tshark();
    let _g = serial();
    let id = unique_id();
    let (sd, ns) = setup(&id);
    let ping = ns[0].exec("ping", &["-c", "1", "-W", "2", "198.18.0.2"]);
    assert!(ping.status.success(), "ping: {ping:?}\n{}", sd.log_text());

    // The receiver: bound before the sender connects (the channel says so).
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let server = ns[1].run(move || {
        let l = TcpListener::bind("198.18.0.2:5201").expect("bind in ns1");
        bound_tx.send(()).expect("tell bound");
        let (s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        sha256_of(s)
    });
    bound_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server bound");

    // Two captures at once: rx of port 0 (what ns0 sends), tx of port 1 (what ns1 gets).
    let rx_file = sd.dir.join("rx.pcap");
    let tx_file = sd.dir.join("tx.pcap");
    let count = COUNT.to_string();
    let cap_rx = spawn_capture(
        &sd,
        &[
            "0",
            "--rx",
            "--count",
            &count,
            "-w",
            rx_file.to_str().unwrap(),
        ],
        &sd.dir,
    );
    let cap_tx = spawn_capture(
        &sd,
        &[
            "1",
            "--tx",
            "--count",
            &count,
            "-w",
            tx_file.to_str().unwrap(),
        ],
        &sd.dir,
    );
    // Both captures armed before the traffic starts (their status says running).
    sd.wait_until(10, "both captures running", |sd| {
        let st = sd.ok("capture.status", None);
        st["captures"]
            .as_array()
            .is_some_and(|c| c.iter().filter(|c| c["state"] == "running").count() == 2)
    });

    // The sender: streams until both captures ended (at most 60 s), then closes.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        ns[0].run(move || {
            let chunk = pattern(1 << 20, 0xcab);
            let mut s = TcpStream::connect_timeout(
                &"198.18.0.2:5201".parse().expect("addr"),
                Duration::from_secs(10),
            )
            .expect("connect to ns1");
            let mut h = Sha256::new();
            let mut sent = 0u64;
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                s.write_all(&chunk).expect("send");
                h.update(&chunk);
                sent += chunk.len() as u64;
            }
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            // Wait for the receiver to close: everything was delivered.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            (format!("{:x}", h.finalize()), sent)
        })
    };
    let out_rx = wait_output(cap_rx, 60, "stitchctl capture 0 --rx", &sd);
    let out_tx = wait_output(cap_tx, 60, "stitchctl capture 1 --tx", &sd);
    stop.store(true, Ordering::Relaxed);
    let (sent_sha, sent) = client.join().expect("client thread");
    let (got_sha, got) = server.join().expect("server thread");
    assert_eq!(got, sent, "bytes received vs sent");
    assert_eq!(
        got_sha, sent_sha,
        "SHA-256 of received bytes differs from sent"
    );

    let status = sd.ok("capture.status", None);
    let stats = sd.ok("stats.get", None);
    for (out, file, port, dir) in [(&out_rx, &rx_file, 0, "rx"), (&out_tx, &tx_file, 1, "tx")] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "capture {port} {dir}: {}\n{stdout}\n{stderr}",
            out.status
        );
        let (captured, dropped) = reported(&stdout);
        assert_eq!(captured, COUNT, "{stdout}");
        let frames = tshark(
            file,
            &[
                "frame.len",
                "frame.cap_len",
                "ip.src",
                "ip.dst",
                "frame.time_epoch",
            ],
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert_eq!(
            frames.len() as u64,
            captured,
            "tshark reads {} frames from {}, stitchctl reported {captured}",
            frames.len(),
            file.display()
        );
        for f in &frames {
            let len: u32 = f[0].parse().expect("frame.len");
            let cap: u32 = f[1].parse().expect("frame.cap_len");
            assert_eq!(cap, len.min(256), "snap length 256: {f:?}");
            assert!((60..=1514).contains(&len), "frame length: {f:?}");
            let t: f64 = f[4].parse().expect("frame.time_epoch");
            assert!(
                (now - 120.0..=now).contains(&t),
                "time stamp not of this run: {f:?}"
            );
            assert_eq!(
                (f[2].as_str(), f[3].as_str()),
                ("198.18.0.1", "198.18.0.2"),
                "a frame that is not the test's traffic from ns0 to ns1 in {}: {f:?}",
                file.display()
            );
        }
        // The same numbers in capture.status and in stats.get.
        for list in [&status["captures"], &stats["capture"]] {
            let c = list
                .as_array()
                .and_then(|a| a.iter().find(|c| c["port"] == port))
                .unwrap_or_else(|| panic!("port {port} not in {list}"));
            assert_eq!(
                (
                    &c["state"],
                    &c["end"],
                    &c["dir"],
                    c["captured"].as_u64(),
                    c["dropped"].as_u64()
                ),
                (
                    &json!("done"),
                    &json!("count"),
                    &json!(dir),
                    Some(captured),
                    Some(dropped)
                ),
                "{c}"
            );
        }
        eprintln!(
            "port {port} {dir}: {captured} captured, {dropped} dropped; tshark read {}",
            frames.len()
        );
    }
    drop(ns);
}

#[test]
fn a_capture_on_an_idle_port_with_a_timeout_ends_with_zero_and_bad_requests_change_nothing() {
    require_root();
    require_tshark();
    require_cmd("ip", "iproute2");
    let _g = serial();
    let id = unique_id();
    let (sd, ns) = setup(&id);

    // A relative -w is made absolute against stitchctl's working directory.
    let out = wait_output(
        spawn_capture(
            &sd,
            &["0", "--count", "10", "--timeout", "1", "-w", "idle.pcap"],
            &sd.dir,
        ),
        20,
        "stitchctl capture --timeout 1",
        &sd,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stdout}\n{stderr}", out.status);
    assert_eq!(reported(&stdout), (0, 0), "{stdout}");
    assert!(
        stderr.contains("no matching frames on port 0 within 1 s (timeout)"),
        "{stderr}"
    );
    let idle = sd.dir.join("idle.pcap");
    assert_eq!(
        std::fs::metadata(&idle).expect("idle.pcap").len(),
        24,
        "header only"
    );
    assert!(tshark(&idle, &["frame.len"]).is_empty());

    // Interrupted before its count: stopped, file kept, exit 130.
    let cap = spawn_capture(
        &sd,
        &[
            "1",
            "--count",
            "1000",
            "-w",
            sd.dir.join("int.pcap").to_str().unwrap(),
        ],
        &sd.dir,
    );
    let pid = nix::unistd::Pid::from_raw(cap.id() as i32);
    sd.wait_until(10, "capture on port 1 running", |sd| {
        sd.ok("capture.status", Some(json!({"port": 1})))["captures"][0]["state"] == "running"
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT stitchctl");
    let out = wait_output(cap, 20, "interrupted stitchctl capture", &sd);
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert_eq!(reported(&String::from_utf8_lossy(&out.stdout)).0, 0);
    let st = sd.ok("capture.status", Some(json!({"port": 1})));
    assert_eq!(st["captures"][0]["end"], "stopped", "{st}");

    // Bad requests: refused with the field and the reason; nothing changes.
    let before = sd.ok("capture.status", None);
    let path = sd.dir.join("x.pcap").display().to_string();
    let refused = |params: Value, want: &str| {
        let err = sd
            .call("capture.start", Some(params.clone()))
            .expect_err(&format!("{params} accepted"));
        assert!(err.to_string().contains(want), "{params}: {err}");
    };
    refused(
        json!({"port": 0, "count": 0, "path": path}),
        "'count': 0 is out of range",
    );
    refused(
        json!({"port": 0, "count": 5, "path": "x.pcap"}),
        "'path': 'x.pcap' is not absolute",
    );
    refused(
        json!({"port": 0, "count": 5, "snaplen": 5, "path": path}),
        "'snaplen'",
    );
    refused(
        json!({"port": 0, "count": 5, "dir": "up", "path": path}),
        "'dir'",
    );
    refused(
        json!({"port": 9, "count": 5, "path": path}),
        "port 9 does not exist",
    );
    refused(
        json!({"port": 0, "count": 5, "path": sd.dir.join("no/such/dir.pcap")}),
        "cannot create",
    );
    assert_eq!(
        sd.ok("capture.status", None),
        before,
        "a refused start changed something"
    );
    assert!(!Path::new(&path).exists());

    // One capture at a time per port; another port is fine.
    let a = sd.ok(
        "capture.start",
        Some(json!({"port": 0, "count": 5, "timeout_secs": 30, "path": path})),
    );
    refused(
        json!({"port": 0, "count": 5, "path": sd.dir.join("y.pcap")}),
        "port 0 already has a capture running",
    );
    let b = sd.ok(
        "capture.start",
        Some(json!({"port": 1, "dir": "tx", "count": 5, "path": sd.dir.join("z.pcap")})),
    );
    let st = sd.ok("capture.status", None);
    let running: Vec<u64> = st["captures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "running")
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        running,
        vec![a["id"].as_u64().unwrap(), b["id"].as_u64().unwrap()]
    );
    for port in [0, 1] {
        let s = sd.ok("capture.stop", Some(json!({"port": port})));
        assert_eq!(
            (&s["state"], &s["end"], &s["captured"]),
            (&json!("done"), &json!("stopped"), &json!(0)),
            "{s}"
        );
    }
    let err = sd
        .call("capture.stop", Some(json!({"port": 7})))
        .unwrap_err();
    assert!(err.to_string().contains("port 7 does not exist"), "{err}");
    drop(ns);
}
