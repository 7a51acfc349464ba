//! Stitching live TCP between real Linux kernels: namespaces C (client), A (shell) and B
//! (core) on `net_tap` ports; a relay in A carries a connection, then hands it to stitchd
//! part way (prepare, freeze, drain, TCP_REPAIR, commit). Both directions move data the
//! whole time; what arrives hashes to what was sent. Linux defaults (timestamps, SACK,
//! window scaling) on.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pmd_tests::relay::{self, Relay};
use pmd_tests::shell::ShellProc;
use pmd_tests::{
    pattern, require_cmd, require_root, serial, sha256, sha256_of, unique_id, Netns, Stitchd,
};
use serde_json::{json, Value};

const MIB: usize = 1 << 20;
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

struct Net {
    sd: Stitchd,
    c: Netns,
    a: Netns,
    b: Netns,
}

fn net(app: &[&str]) -> Net {
    net_with(app, "")
}

/// [`net`] with more TOML appended to stitchd's configuration.
fn net_with(app: &[&str], extra: &str) -> Net {
    require_root();
    require_cmd("ip", "iproute2");
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let taps: Vec<String> = ["c", "a", "b"]
        .iter()
        .map(|n| format!("t{id}{n}"))
        .collect();
    // Taps, plus the agent protocol so stitch-shell can hand connections off.
    let mut text = String::new();
    for (i, t) in taps.iter().enumerate() {
        text.push_str(&format!("[[ports]]\ndevargs = \"net_tap{i},iface={t}\"\n"));
    }
    text.push_str(&format!(
        "[agent]\nipv4 = \"198.18.0.254\"\nipv6 = \"2001:db8::fe\"\nkeys = [{{ id = 7, key = \"{KEY}\" }}]\n"
    ));
    text.push_str(extra);
    let cfg = dir.join("s.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut args: Vec<String> = vec!["--config".into(), cfg.display().to_string()];
    args.extend(app.iter().map(|s| s.to_string()));
    let sd = Stitchd::start(&id, dir, &["-l".into(), "0-1".into()], &args);
    let c = Netns::new(&format!("st{id}c"));
    let a = Netns::new(&format!("st{id}a"));
    let b = Netns::new(&format!("st{id}b"));
    c.attach(&taps[0], Some("02:00:00:00:0c:01"), "198.18.0.1/24");
    a.attach(&taps[1], Some("02:00:00:00:0a:01"), "198.18.0.2/24");
    b.attach(&taps[2], Some("02:00:00:00:0b:01"), "198.18.0.3/24");
    for (ns, tap, addr) in [
        (&c, &taps[0], "2001:db8::1/64"),
        (&a, &taps[1], "2001:db8::2/64"),
        (&b, &taps[2], "2001:db8::3/64"),
    ] {
        ns.ip(&["-6", "addr", "add", addr, "dev", tap, "nodad"]);
    }
    Net { sd, c, a, b }
}

/// Sends `data` and reads until EOF at the same time; returns SHA-256 and length of what
/// was read.
fn duplex(s: TcpStream, data: Vec<u8>) -> (String, u64) {
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        w.write_all(&data).expect("write");
        w.shutdown(Shutdown::Write).expect("shutdown");
    });
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let got = sha256_of(&s);
    writer.join().expect("writer");
    got
}

struct Transfer {
    relay: Relay,
    client: std::thread::JoinHandle<(String, u64)>,
    core: std::thread::JoinHandle<(String, u64)>,
    want_at_core: String,
    want_at_client: String,
    c_to_b: usize,
    b_to_c: usize,
}

/// Starts the core server in B, the relay in A and the client in C; C sends `c_to_b`
/// bytes, B sends `b_to_c` bytes.
fn start_transfer(n: &Net, c_to_b: usize, b_to_c: usize) -> Transfer {
    start_transfer_on(n, c_to_b, b_to_c, "198.18.0.2:7000", "198.18.0.3:8000")
}

/// B: accepts one connection on `at` and runs [`duplex`] with `data`; returns once listening.
fn start_core(n: &Net, at: SocketAddr, data: Vec<u8>) -> std::thread::JoinHandle<(String, u64)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let core = n.b.run(move || {
        let l = TcpListener::bind(at).expect("core bind");
        ready_tx.send(()).ok();
        let (s, _) = l.accept().expect("core accept");
        duplex(s, data)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("core ready");
    core
}

/// C: connects to `to` and runs [`duplex`] with `data`.
fn start_client(n: &Net, to: SocketAddr, data: Vec<u8>) -> std::thread::JoinHandle<(String, u64)> {
    n.c.run(move || {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).expect("client connect");
        duplex(s, data)
    })
}

fn start_transfer_on(n: &Net, c_to_b: usize, b_to_c: usize, shell: &str, core: &str) -> Transfer {
    let core_addr: SocketAddr = core.parse().unwrap();
    let shell_addr: SocketAddr = shell.parse().unwrap();
    let x = pattern(c_to_b, 0xc11e);
    let y = pattern(b_to_c, 0xc0fe);
    let (want_at_core, want_at_client) = (sha256(&x), sha256(&y));
    let core = start_core(n, core_addr, y);
    let relay_rx = relay::spawn(&n.a, shell_addr, core_addr);
    let client = start_client(n, shell_addr, x);
    let relay = relay_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("relay connected");
    Transfer {
        relay,
        client,
        core,
        want_at_core,
        want_at_client,
        c_to_b,
        b_to_c,
    }
}

fn wait_relayed(t: &Transfer, each_way: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while t.relay.relayed[0].load(Ordering::SeqCst) < each_way
        || t.relay.relayed[1].load(Ordering::SeqCst) < each_way
    {
        assert!(Instant::now() < deadline, "relay moved too little data");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn finish(t: Transfer) -> Relay {
    let (at_client, n_client) = t.client.join().expect("client");
    let (at_core, n_core) = t.core.join().expect("core");
    assert_eq!(n_core, t.c_to_b as u64, "bytes C->B");
    assert_eq!(n_client, t.b_to_c as u64, "bytes B->C");
    assert_eq!(at_core, t.want_at_core, "SHA-256 of C->B differs");
    assert_eq!(at_client, t.want_at_client, "SHA-256 of B->C differs");
    t.relay
}

fn prepare(sd: &Stitchd, r: &Relay, teardown: &str, linger: u32) -> u64 {
    let mut p = r.prepare_params(teardown);
    p["linger"] = json!(linger);
    let v = sd.ok("stitch.prepare", Some(p));
    v["id"].as_u64().expect("id")
}

/// The whole flow with the real `stitch-shell` in namespace A (policy `after_bytes`
/// 8 MiB): C and B exchange data through it; part way the shell hands the connection to
/// stitchd over the agent protocol; everything arrives; the shell's byte counter stops at
/// the hand-off; the stitch goes after the close and the linger.
fn shell_scenario(
    n: &Net,
    c_to_b: usize,
    b_to_c: usize,
    teardown: &str,
    shell: &str,
    core: &str,
    switch: &str,
) -> Value {
    let cfg = format!(
        "[switch]\naddress = \"{switch}\"\nkey_id = 7\nkey = \"{KEY}\"\nagent_listen = \"{}\"\n\
         [[mapping]]\nlisten = \"{shell}\"\ncore = \"{core}\"\nbypass = {{ policy = \"after_bytes\", value = {} }}\n\
         teardown = \"{teardown}\"\nlinger_secs = 1\n",
        SocketAddr::new(shell.parse::<SocketAddr>().unwrap().ip(), 4791),
        8 * MIB
    );
    let sh = ShellProc::start(&n.a, &n.sd.dir, &cfg);
    assert_eq!(sh.status().stitching, "available", "{:?}", sh.status());
    let core_addr: SocketAddr = core.parse().unwrap();
    let shell_addr: SocketAddr = shell.parse().unwrap();
    let x = pattern(c_to_b, 0xc11e);
    let y = pattern(b_to_c, 0xc0fe);
    let (want_at_core, want_at_client) = (sha256(&x), sha256(&y));
    let core_t = start_core(n, core_addr, y);
    let client_t = start_client(n, shell_addr, x);
    let (at_client, n_client) = client_t.join().expect("client");
    let (at_core, n_core) = core_t.join().expect("core");
    assert_eq!(n_core, c_to_b as u64, "bytes C->B");
    assert_eq!(n_client, b_to_c as u64, "bytes B->C");
    assert_eq!(at_core, want_at_core, "SHA-256 of C->B differs");
    assert_eq!(at_client, want_at_client, "SHA-256 of B->C differs");
    let st = sh.status();
    let m = &st.mappings[0];
    assert_eq!(
        m.bypassed, 1,
        "not handed off: {:?}",
        m.last_failure_reasons
    );
    let by_shell = m.bytes_relayed_by_shell.c_to_b + m.bytes_relayed_by_shell.b_to_c;
    assert!(
        by_shell < (c_to_b + b_to_c) as u64 / 2,
        "the shell relayed {by_shell} bytes"
    );
    std::thread::sleep(Duration::from_millis(300));
    let later = sh.status().mappings[0].bytes_relayed_by_shell.c_to_b;
    assert_eq!(
        later, m.bytes_relayed_by_shell.c_to_b,
        "the shell's counter still grows"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !n.sd.ok("stitch.list", None)["stitches"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "stitch not removed after close + linger: {}",
            n.sd.ok("stitch.list", None)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sh.shutdown();
    json!({"relayed_by_shell": by_shell, "failed_handoffs": m.failed_handoffs})
}

#[test]
fn handoff_mid_transfer_moves_200_mib_each_way_byte_exact_and_client_close_tears_down() {
    let _g = serial();
    let n = net(&[]);
    const COUNTERS: [&str; 3] = ["TcpExtPAWSEstab", "TcpRetransSegs", "TcpExtTCPTimeouts"];
    let before: Vec<[u64; 3]> = [&n.c, &n.b]
        .iter()
        .map(|ns| COUNTERS.map(|c| ns.nstat(c)))
        .collect();
    // C sends less, so C's FIN comes first: a client-initiated close.
    let r = shell_scenario(
        &n,
        200 * MIB,
        220 * MIB,
        "4E",
        "198.18.0.2:7000",
        "198.18.0.3:8000",
        "198.18.0.254:4790",
    );
    eprintln!("{r}");
    let st = n.sd.ok("stats.get", None);
    let stitched: u64 = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["stitched"].as_u64().unwrap())
        .sum();
    assert!(stitched > 10_000, "too few packets translated: {st}");
    // The hand-off released the held segments with timestamps the receivers accept:
    // neither end dropped a segment as older than what it last saw (PAWS).
    for (ns, then) in [&n.c, &n.b].iter().zip(&before) {
        let now = COUNTERS.map(|c| ns.nstat(c));
        eprintln!(
            "{}: PAWSEstab +{}, RetransSegs +{}, TCPTimeouts +{}",
            ns.name,
            now[0] - then[0],
            now[1] - then[1],
            now[2] - then[2]
        );
        assert_eq!(now[0], then[0], "{}: segments dropped by PAWS", ns.name);
    }
}

#[test]
fn handoff_over_ipv6_moves_64_mib_each_way_byte_exact() {
    let _g = serial();
    let n = net(&[]);
    shell_scenario(
        &n,
        64 * MIB,
        48 * MIB,
        "4E",
        "[2001:db8::2]:7000",
        "[2001:db8::3]:8000",
        "[2001:db8::fe]:4790",
    );
}

#[test]
fn handoff_under_1pct_loss_and_reordering_then_core_closes_4c() {
    let _g = serial();
    let n = net(&[]);
    for port in 0..3 {
        n.sd.ok(
            "port.fault.set",
            Some(json!({"port": port, "drop_ppm": 10_000, "reorder_ppm": 10_000})),
        );
    }
    // B sends less, so B's FIN comes first: a core-initiated close.
    shell_scenario(
        &n,
        48 * MIB,
        40 * MIB,
        "4C",
        "198.18.0.2:7000",
        "198.18.0.3:8000",
        "198.18.0.254:4790",
    );
    assert!(n.sd.drops("fault_injected") > 0, "no loss was injected");
}

#[test]
fn abort_in_the_middle_of_a_transfer_loses_nothing() {
    let _g = serial();
    let n = net(&[]);
    let t = start_transfer(&n, 64 * MIB, 64 * MIB);
    wait_relayed(&t, 4 * MIB as u64);
    let id = prepare(&n.sd, &t.relay, "4E", 1);
    n.sd.ok("stitch.freeze", Some(json!({"id": id})));
    std::thread::sleep(Duration::from_millis(100)); // data piles up in the switch
    let held = n.sd.ok("stitch.get", Some(json!({"id": id})))["held"]
        .as_u64()
        .unwrap();
    let r = n.sd.ok("stitch.abort", Some(json!({"id": id})));
    assert_eq!(r["state"], "aborted");
    assert_eq!(r["released"].as_u64().unwrap(), held);
    assert!(n.sd.ok("stitch.list", None)["stitches"]
        .as_array()
        .unwrap()
        .is_empty());
    let before = t.relay.relayed_total();
    let relay = finish(t);
    assert!(
        relay.relayed_total() > before,
        "the relay carried on after the abort"
    );
}

#[test]
fn refusals_say_why_and_disturb_no_traffic() {
    let _g = serial();
    let n = net(&[]);
    let t = start_transfer(&n, 64 * MIB, 64 * MIB);
    wait_relayed(&t, 4 * MIB as u64);
    let id = prepare(&n.sd, &t.relay, "4E", 1);

    // The same legs again.
    let e =
        n.sd.call("stitch.prepare", Some(t.relay.prepare_params("4E")))
            .unwrap_err()
            .to_string();
    assert!(e.contains("already part of stitch"), "{e}");
    // Commit before freeze.
    let e =
        n.sd.call(
            "stitch.commit",
            Some(json!({"id": id, "s1": 1, "r1": 2, "s2": 3, "r2": 4})),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("freeze it before commit"), "{e}");
    n.sd.ok("stitch.freeze", Some(json!({"id": id})));
    // Wrong sequence state: nothing the shell really has.
    let e =
        n.sd.call(
            "stitch.commit",
            Some(json!({"id": id, "s1": 1, "r1": 2, "s2": 3, "r2": 4})),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("acknowledged up to"), "{e}");
    // Timestamps on one leg only.
    let e = n
        .sd
        .call("stitch.commit", Some(json!({"id": id, "s1": 1, "r1": 2, "s2": 3, "r2": 4, "timestamps": {"leg_a": true, "leg_b": false}})))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("acknowledged up to") || e.contains("timestamps"),
        "{e}"
    );
    // Unknown stitch, UDP-style commit of a TCP stitch.
    assert!(n
        .sd
        .call("stitch.get", Some(json!({"id": 999})))
        .unwrap_err()
        .to_string()
        .contains("no stitch 999"));
    let e =
        n.sd.call("stitch.commit", Some(json!({"id": id})))
            .unwrap_err()
            .to_string();
    assert!(e.contains("needs s1, r1, s2 and r2"), "{e}");
    // Legs of two address families cannot be stitched.
    let mut p = t.relay.prepare_params("4E");
    p["leg_a"]["client"] = json!("[2001:db8::1]:1");
    let e =
        n.sd.call("stitch.prepare", Some(p))
            .unwrap_err()
            .to_string();
    assert!(e.contains("one family"), "{e}");
    // After all that, give the connection back; nothing was lost.
    n.sd.ok("stitch.abort", Some(json!({"id": id})));
    finish(t);
}

#[test]
fn full_flow_table_refuses_a_stitch_with_a_reason_and_changes_nothing() {
    let _g = serial();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let cfg = dir.join("s.toml");
    std::fs::write(&cfg, "[[ports]]\ndevargs = \"net_ring0\"\n[[ports]]\ndevargs = \"net_ring1\"\n[stitch]\nflow_table_size = 4\n").unwrap();
    require_root();
    let sd = Stitchd::start(
        &id,
        dir,
        &["-l".into(), "0-1".into()],
        &["--config".into(), cfg.display().to_string()],
    );
    let legs = |p: u16| {
        json!({"leg_a": {"client": format!("198.18.0.1:{p}"), "shell": "198.18.0.2:7000"},
               "leg_b": {"shell": format!("198.18.0.2:{p}"), "core": "198.18.0.3:8000"}})
    };
    let first = sd.ok("stitch.prepare", Some(legs(40000)));
    let e = sd
        .call("stitch.prepare", Some(legs(40001)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("flow table full"), "{e}");
    let list = sd.ok("stitch.list", None);
    assert_eq!(list["stitches"].as_array().unwrap().len(), 1);
    assert_eq!(list["stitches"][0]["id"], first["id"]);
    assert_eq!(sd.ok("stats.get", None)["stitch"]["table_full"], 1);

    // A bulk install that runs out of room part way is all or nothing.
    sd.ok("stitch.delete", Some(json!({"id": first["id"]})));
    let install = json!({
        "leg_a": {"client": "198.18.0.1:20000", "shell": "198.18.0.2:7000"},
        "leg_b": {"shell": "198.18.0.2:20000", "core": "198.18.0.3:8000"},
        "macs": {"c": "02:00:00:00:0c:01", "a1": "02:00:00:00:0a:01", "a2": "02:00:00:00:0a:01", "b": "02:00:00:00:0b:01"},
        "ports": {"c": 0, "b": 1},
        "s1": 1, "r1": 1, "s2": 1, "r2": 1,
        "count": 2
    });
    let e = sd
        .call("stitch.install", Some(install))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing changed"), "{e}");
    let list = sd.ok("stitch.list", None);
    assert_eq!(list["stitches"].as_array().unwrap().len(), 0, "{list}");
    assert_eq!(sd.ok("stats.get", None)["stitch"]["flow_entries"], 0);
}

/// One budget of held packets for the whole switch, sized against the mempool: a frozen
/// stitch under a full-speed transfer holds at most that many (the rest is refused and
/// counted; the senders retransmit), the ports keep switching meanwhile, and after the
/// abort nothing is held and the transfer completes byte-exact.
#[test]
fn frozen_stitches_hold_at_most_the_switch_wide_budget_and_the_ports_keep_working() {
    let _g = serial();
    let n = net_with(&[], "[stitch]\nhold_budget = 100\n");
    let t = start_transfer(&n, 64 * MIB, 64 * MIB);
    wait_relayed(&t, 4 * MIB as u64);
    let id = prepare(&n.sd, &t.relay, "4E", 1);
    n.sd.ok("stitch.freeze", Some(json!({"id": id})));
    let stitch = |sd: &Stitchd| sd.ok("stats.get", None)["stitch"].clone();
    n.sd.wait_until(20, "the hold budget to be spent", |sd| {
        stitch(sd)["hold_refused"].as_u64() > Some(0)
    });
    let st = stitch(&n.sd);
    let budget = st["hold_budget"].as_u64().unwrap();
    assert_eq!(budget, 100, "{st}");
    assert!(st["held_now"].as_u64().unwrap() <= budget, "{st}");
    // RX still has buffers: the other hosts still reach each other through the switch.
    let out =
        n.c.exec("ping", &["-c", "2", "-i", "0.2", "-W", "2", "198.18.0.3"]);
    assert!(
        out.status.success(),
        "ping during a spent hold budget: {out:?}"
    );
    n.sd.ok("stitch.abort", Some(json!({"id": id})));
    assert_eq!(stitch(&n.sd)["held_now"], 0);
    let before = t.relay.relayed_total();
    let relay = finish(t);
    assert!(
        relay.relayed_total() > before,
        "the relay carried on after the abort"
    );
}
