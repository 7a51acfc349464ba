//! State that survives (issue 14): stitchd restarted with SIGTERM, then killed with
//! SIGKILL, in the middle of a stitched transfer between real Linux TCP ends; the stitch
//! comes back from the state file, the ends retransmit across the gap, and the transfer
//! completes SHA-256-exact. A corrupt state file is refused with a clear error and left as
//! it is; `--state-reset` moves it aside. `config.reload` (and SIGHUP) applies static MACs
//! and port policies under traffic and refuses what needs a restart.
//!
//! The ports are persistent taps (`net_tap...,persist`) kept in the root namespace and
//! bridged to a veth end in each namespace, so a restarted stitchd finds the same
//! interfaces, as it would find the same NICs on a real box.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pmd_tests::shell::ShellProc;
use pmd_tests::{
    hex, pattern, require_root, serial, sha256_of, stitchd_bin, unique_id, Netns, RootLinks,
    Stitchd,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use pmd_tests::shell::{AGENT_KEY as KEY, CORE_ADDR as CORE, SHELL_ADDR as SHELL};

struct World {
    sd: Stitchd,
    c: Netns,
    a: Netns,
    b: Netns,
    // Dropped after the namespaces and stitchd: the taps go last.
    _links: RootLinks,
    cfg: std::path::PathBuf,
    state: std::path::PathBuf,
}

fn config_text(taps: &[String], state: &std::path::Path, extra: &str) -> String {
    let mut text = String::new();
    for (i, t) in taps.iter().enumerate() {
        text.push_str(&format!(
            "[[ports]]\ndevargs = \"net_tap{i},iface={t},persist\"\n"
        ));
    }
    text.push_str(&format!(
        "[agent]\nipv4 = \"198.18.0.254\"\nkeys = [{{ id = 7, key = \"{KEY}\" }}]\n\
         [state]\nfile = \"{}\"\n{extra}",
        state.display()
    ));
    text
}

fn world() -> World {
    require_root();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let taps: Vec<String> = ["c", "a", "b"]
        .iter()
        .map(|n| format!("t{id}{n}"))
        .collect();
    let cfg = dir.join("s.toml");
    let state = dir.join("state.json");
    std::fs::write(&cfg, config_text(&taps, &state, "")).unwrap();
    let mut links = RootLinks::default();
    let sd = Stitchd::start(
        &id,
        dir,
        &["-l".into(), "0-1".into()],
        &["--config".into(), cfg.display().to_string()],
    );
    let c = Netns::new(&format!("sf{id}c"));
    let a = Netns::new(&format!("sf{id}a"));
    let b = Netns::new(&format!("sf{id}b"));
    links.bridge_tap(&taps[0], &c, "02:00:00:00:0c:01", "198.18.0.1/24");
    links.bridge_tap(&taps[1], &a, "02:00:00:00:0a:01", "198.18.0.2/24");
    links.bridge_tap(&taps[2], &b, "02:00:00:00:0b:01", "198.18.0.3/24");
    World {
        sd,
        c,
        a,
        b,
        _links: links,
        cfg,
        state,
    }
}

/// Sends the deterministic stream `seed` in paced chunks until `stop`, then closes its
/// sending side; returns SHA-256 and length of what it sent.
fn send_until(mut s: TcpStream, seed: u64, stop: Arc<AtomicBool>) -> (String, u64) {
    let chunk = pattern(16 << 10, seed);
    let mut h = Sha256::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        s.write_all(&chunk).expect("send");
        h.update(&chunk);
        n += chunk.len() as u64;
        // About 8 MB/s: the transfer is still running through both restarts.
        std::thread::sleep(Duration::from_millis(2));
    }
    s.shutdown(Shutdown::Write).expect("shutdown write");
    (hex(&h.finalize()), n)
}

/// Reads to EOF; SHA-256 and length.
fn recv_all(s: TcpStream) -> (String, u64) {
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    sha256_of(s)
}

/// Both directions at once on one connection: (sent, received).
fn both_ways(s: TcpStream, seed: u64, stop: Arc<AtomicBool>) -> ((String, u64), (String, u64)) {
    let r = s.try_clone().unwrap();
    let rx = std::thread::spawn(move || recv_all(r));
    let sent = send_until(s, seed, stop);
    (sent, rx.join().expect("receiver"))
}

fn stitch_states(sd: &Stitchd) -> Vec<(u64, String)> {
    sd.ok("stitch.list", None)["stitches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().unwrap(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_restart_during_a_stitched_transfer_sigterm_then_sigkill_loses_nothing() {
    let _g = serial();
    let mut w = world();
    // Run-time L2 changes that must survive too.
    w.sd.ok(
        "mac.add",
        Some(json!({"mac": "02:00:00:00:00:99", "port": 2})),
    );
    w.sd.ok(
        "port.security.set",
        Some(json!({"port": 0, "allowed_macs": ["02:00:00:00:0c:01"], "learning": true})),
    );
    let shell = ShellProc::start(
        &w.a,
        &w.sd.dir,
        &format!(
            "[switch]\naddress = \"198.18.0.254:4790\"\nkey_id = 7\nkey = \"{KEY}\"\n\
             agent_listen = \"198.18.0.2:4791\"\nprobe_timeout_ms = 1000\n\
             [[mapping]]\nlisten = \"{SHELL}\"\ncore = \"{CORE}\"\n\
             bypass = {{ policy = \"after_bytes\", value = 262144 }}\nteardown = \"4E\"\n"
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let listening = Arc::new(AtomicBool::new(false));
    let (st, l2) = (stop.clone(), listening.clone());
    let core = w.b.run(move || {
        let l = TcpListener::bind(CORE).unwrap();
        l2.store(true, Ordering::SeqCst);
        let (s, _) = l.accept().unwrap();
        both_ways(s, 2, st)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "core never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = stop.clone();
    let client = w.c.run(move || {
        let s = TcpStream::connect_timeout(&SHELL.parse().unwrap(), Duration::from_secs(10))
            .expect("connect to the shell");
        both_ways(s, 1, st)
    });
    w.sd.wait_until(30, "the connection to be stitched", |sd| {
        stitch_states(sd).iter().any(|(_, s)| s == "stitched")
    });
    let id = stitch_states(&w.sd)[0].0;
    let saved = std::fs::read_to_string(&w.state).expect("state file written");
    assert!(saved.contains("02:00:00:00:00:99"), "{saved}");
    for sig in [Signal::SIGTERM, Signal::SIGKILL] {
        let status = w.sd.restart(sig);
        if sig == Signal::SIGTERM {
            assert!(status.success(), "SIGTERM: stitchd exited with {status}");
        }
        assert_eq!(
            stitch_states(&w.sd),
            vec![(id, "stitched".to_string())],
            "after {sig}: the stitch is back, live\n{}",
            w.sd.log_text()
        );
        // Traffic is translated by the new process: the ends retransmitted across the gap.
        let deadline = Instant::now() + Duration::from_secs(60);
        while w.sd.worker_sum("stitched") <= 2000 {
            if Instant::now() > deadline {
                let n = |ns: &Netns| {
                    [
                        "TcpRetransSegs",
                        "TcpExtPAWSEstab",
                        "TcpExtTCPTimeouts",
                        "TcpInSegs",
                        "TcpExtTCPACKSkippedPAWS",
                        "TcpExtTCPOFOQueue",
                    ]
                    .map(|k| format!("{k}={}", ns.nstat(k)))
                    .join(" ")
                };
                panic!(
                    "after {sig}: no translated traffic\nC: {}\nB: {}\nA: {}\nshell: {:?}\nshell log: {}\nstate: {}\nstitch: {}",
                    n(&w.c),
                    n(&w.b),
                    n(&w.a),
                    shell.status(),
                    shell.log_text(),
                    std::fs::read_to_string(&w.state).unwrap_or_default(),
                    w.sd.ok("stitch.get", Some(json!({"id": id})))
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (c_sent, c_got) = client.join().expect("client");
    let (b_sent, b_got) = core.join().expect("core");
    assert_eq!(c_sent, b_got, "client -> core differs");
    assert_eq!(b_sent, c_got, "core -> client differs");
    assert!(
        c_sent.1 > 1 << 20 && b_sent.1 > 1 << 20,
        "{c_sent:?} {b_sent:?}"
    );
    let s = shell.status();
    assert_eq!(s.mappings[0].bypassed, 1, "{s:?}");
    // The L2 changes made on the control socket came back with it.
    let macs = w.sd.ok("mac.list", None);
    assert!(
        macs["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == "02:00:00:00:00:99" && e["port"] == 2 && e["static"] == true),
        "{macs}"
    );
    let ports = w.sd.ok("ports.list", None);
    assert_eq!(
        ports["ports"][0]["allowed_macs"],
        json!(["02:00:00:00:0c:01"]),
        "port 0's allow list: {ports}"
    );
    let stats = w.sd.ok("stats.get", None);
    assert_eq!(stats["state_file"]["failures"], 0, "{stats}");
    shell.shutdown();
    drop((w.c, w.a, w.b));
}

/// Runs stitchd with `app` arguments expecting it to refuse to start: its output.
fn refused_start(id: &str, app: &[String]) -> String {
    let mut args: Vec<String> = vec![
        "--no-huge".into(),
        "-m".into(),
        "512".into(),
        format!("--file-prefix=sr{id}"),
        "-l".into(),
        "0-1".into(),
        "--".into(),
    ];
    args.extend(app.iter().cloned());
    let mut child = Command::new(stitchd_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stitchd");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            assert!(!st.success(), "stitchd started: {out}");
            return out;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stitchd with a bad state file neither started nor exited");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_corrupt_state_file_is_refused_and_kept_until_told_to_start_empty() {
    let _g = serial();
    let mut w = world();
    w.sd.ok(
        "mac.add",
        Some(json!({"mac": "02:00:00:00:00:77", "port": 1})),
    );
    let good = std::fs::read_to_string(&w.state).unwrap();
    assert!(good.contains("02:00:00:00:00:77"));
    assert!(w.sd.stop(), "clean stop");
    let truncated = &good[..good.len() / 2];
    std::fs::write(&w.state, truncated).unwrap();
    let id = unique_id();
    let sock = w.sd.dir.join("other.sock");
    let app = vec!["--config".to_string(), w.cfg.display().to_string()];
    let with_socket = |a: &[String]| {
        let mut v = a.to_vec();
        v.extend(["--control-socket".to_string(), sock.display().to_string()]);
        v
    };
    let out = refused_start(&id, &with_socket(&app));
    assert!(
        out.contains("is not a valid state file") && out.contains("--state-reset"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(&w.state).unwrap(),
        truncated,
        "the bad file was touched"
    );
    // The version before the last write is there for the operator.
    let prev = std::fs::read_to_string(format!("{}.prev", w.state.display())).unwrap();
    assert!(prev.contains("\"version\": 1"), "{prev}");
    // A newer format is named as such.
    std::fs::write(&w.state, "{\"version\": 9}").unwrap();
    let out = refused_start(&id, &with_socket(&app));
    assert!(out.contains("format version 9"), "{out}");
    // Told to, it moves the file aside and starts from the configuration alone.
    let mut app2 = app.clone();
    app2.push("--state-reset".into());
    let sd2 = Stitchd::start(&id, w.sd.dir.clone(), &["-l".into(), "0-1".into()], &app2);
    let macs = sd2.ok("mac.list", None);
    assert!(!macs.to_string().contains("02:00:00:00:00:77"), "{macs}");
    let aside: Vec<_> = std::fs::read_dir(&w.sd.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.bad-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the bad file moved aside");
    assert!(
        sd2.log_text().contains("--state-reset"),
        "{}",
        sd2.log_text()
    );
    // And writes a fresh, valid file.
    let fresh = std::fs::read_to_string(&w.state).unwrap();
    assert!(fresh.contains("\"version\": 1"), "{fresh}");
    drop(sd2);
}

#[test]
fn config_reload_applies_static_macs_and_port_policies_under_traffic_and_refuses_the_rest() {
    let _g = serial();
    let w = world();
    let taps: Vec<String> = {
        let text = std::fs::read_to_string(&w.cfg).unwrap();
        text.lines()
            .filter_map(|l| l.split("iface=").nth(1))
            .map(|r| r.split(',').next().unwrap().to_string())
            .collect()
    };
    // Traffic between C and B the whole time: a ping every 10 ms.
    let ping = {
        let ns = w.c.name.clone();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "ping",
                "-q",
                "-i",
                "0.01",
                "-w",
                "120",
                "198.18.0.3",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ping")
    };
    w.sd.wait_until(10, "C and B learned", |sd| {
        let m = sd.ok("mac.list", None).to_string();
        m.contains("02:00:00:00:0c:01") && m.contains("02:00:00:00:0b:01")
    });
    let learned_before = w.sd.ok("mac.list", None)["entries"]
        .as_array()
        .unwrap()
        .len();
    // A static MAC and a port policy (A's port: learning off) added in the TOML.
    let extra = "[[l2.static_macs]]\nmac = \"02:00:00:00:00:55\"\nport = 1\n";
    let mut text = config_text(&taps, &w.state, extra);
    text = text.replacen(
        &format!("iface={},persist\"\n", taps[1]),
        &format!("iface={},persist\"\nlearning = false\n", taps[1]),
        1,
    );
    std::fs::write(&w.cfg, &text).unwrap();
    let r = w.sd.ok("config.reload", None);
    assert_eq!(r["static_macs_set"], 1, "{r}");
    assert_eq!(r["port_policies_set"], 1, "{r}");
    let macs = w.sd.ok("mac.list", None);
    let entries = macs["entries"].as_array().unwrap();
    assert!(entries
        .iter()
        .any(|e| e["mac"] == "02:00:00:00:00:55" && e["static"] == true));
    // Nothing else moved: C and B are still where they were.
    for m in ["02:00:00:00:0c:01", "02:00:00:00:0b:01"] {
        assert!(
            entries.iter().any(|e| e["mac"] == m),
            "{m} forgotten: {macs}"
        );
    }
    assert!(entries.len() > learned_before.min(2), "{macs}");
    let saved = std::fs::read_to_string(&w.state).unwrap();
    assert!(
        saved.contains("02:00:00:00:00:55"),
        "state file not updated: {saved}"
    );
    // Removed from the TOML again, by SIGHUP this time.
    std::fs::write(&w.cfg, config_text(&taps, &w.state, "")).unwrap();
    let pid = nix::unistd::Pid::from_raw(w.sd.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    w.sd.wait_until(10, "the SIGHUP reload", |sd| {
        !sd.ok("mac.list", None)
            .to_string()
            .contains("02:00:00:00:00:55")
    });
    // A change that takes a restart is refused by name, and nothing in the file applies.
    let bad =
        config_text(&taps, &w.state, extra).replace("[agent]", "[mempool]\nmbufs = 9000\n[agent]");
    std::fs::write(&w.cfg, bad).unwrap();
    let e = w.sd.call("config.reload", None).unwrap_err().to_string();
    assert!(e.contains("mempool") && e.contains("restart"), "{e}");
    assert!(!w
        .sd
        .ok("mac.list", None)
        .to_string()
        .contains("02:00:00:00:00:55"));
    // A file that does not parse: refused, nothing changed.
    std::fs::write(&w.cfg, "[[ports]]\nbogus = 1\n").unwrap();
    let e = w.sd.call("config.reload", None).unwrap_err().to_string();
    assert!(e.contains("nothing was applied"), "{e}");
    // The ping never lost a packet across all of it (SIGINT: it prints its summary).
    let ping_pid = nix::unistd::Pid::from_raw(ping.id() as i32);
    nix::sys::signal::kill(ping_pid, Signal::SIGINT).unwrap();
    let out = ping.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0% packet loss"), "{text}");
}

/// Balanced services changed on the control socket are in the state file: after a crash
/// (SIGKILL) the restarted switch has them, and clients reach the backend through them.
#[test]
fn balanced_services_survive_a_crash() {
    let _g = serial();
    let mut w = world();
    let dir = w.sd.dir.clone();
    let _srv = pmd_tests::lb::HttpBackend::start(&w.b, &dir, "b", &[8080]);
    w.sd.ok(
        "lb.service.add",
        Some(
            json!({"name": "web", "vip": "198.18.0.100", "port": 80, "scheduler": "rr",
            "backends": [{"name": "b", "port": 2, "mac": "02:00:00:00:0b:01",
                "ip": "198.18.0.3", "soft_ports": [8080]}]}),
        ),
    );
    w.sd.ok(
        "lb.backend.set",
        Some(json!({"service": "web", "name": "b", "weight": 5})),
    );
    let url = "http://198.18.0.100/";
    assert_eq!(
        pmd_tests::lb::curl_many(&w.c, url, 2),
        vec!["b:8080", "b:8080"]
    );
    let before = w.sd.ok("lb.service.list", None);
    assert!(std::fs::read_to_string(&w.state)
        .unwrap()
        .contains("\"web\""));
    w.sd.restart(Signal::SIGKILL);
    assert_eq!(
        w.sd.ok("lb.service.list", None),
        before,
        "services after the crash"
    );
    assert_eq!(
        pmd_tests::lb::curl_many(&w.c, url, 2),
        vec!["b:8080", "b:8080"]
    );
}
