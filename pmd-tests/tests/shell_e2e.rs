//! The whole flow with real kernels: client C, shell A (running `stitch-shell`) and core B
//! (running `stitch-core`) in namespaces on `net_tap` ports of stitchd, which speaks the
//! agent protocol on its service address. Many concurrent connections with a bypass
//! policy; every teardown variant; a hand-off the switch refuses.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pmd_tests::shell::ShellProc;
use pmd_tests::{pattern, require_root, serial, sha256, sha256_of, unique_id, Netns, Stitchd};
use stitch_shell::ShellStatus;

use pmd_tests::shell::{AGENT_KEY as KEY, CORE_ADDR as CORE, SHELL_ADDR as SHELL};

struct World {
    sd: Stitchd,
    c: Netns,
    a: Netns,
    b: Netns,
}

fn world(linger: u32) -> World {
    require_root();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let taps: Vec<String> = ["c", "a", "b"]
        .iter()
        .map(|n| format!("t{id}{n}"))
        .collect();
    let cfg = dir.join("s.toml");
    let mut text = String::new();
    for (i, t) in taps.iter().enumerate() {
        text.push_str(&format!("[[ports]]\ndevargs = \"net_tap{i},iface={t}\"\n"));
    }
    text.push_str(&format!(
        "[agent]\nipv4 = \"198.18.0.254\"\nkeys = [{{ id = 7, key = \"{KEY}\" }}]\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    let _ = linger;
    let sd = Stitchd::start(
        &id,
        dir,
        &["-l".into(), "0-1".into()],
        &["--config".into(), cfg.display().to_string()],
    );
    let c = Netns::new(&format!("st{id}c"));
    let a = Netns::new(&format!("st{id}a"));
    let b = Netns::new(&format!("st{id}b"));
    c.attach(&taps[0], Some("02:00:00:00:0c:01"), "198.18.0.1/24");
    a.attach(&taps[1], Some("02:00:00:00:0a:01"), "198.18.0.2/24");
    b.attach(&taps[2], Some("02:00:00:00:0b:01"), "198.18.0.3/24");
    World { sd, c, a, b }
}

fn shell_config(policy: &str, value: u64, teardown: &str, linger: u32) -> String {
    let bypass = if value == 0 {
        format!("{{ policy = \"{policy}\" }}")
    } else {
        format!("{{ policy = \"{policy}\", value = {value} }}")
    };
    format!(
        "[switch]\naddress = \"198.18.0.254:4790\"\nkey_id = 7\nkey = \"{KEY}\"\nagent_listen = \"198.18.0.2:4791\"\n\
         probe_timeout_ms = 1000\n\
         [[mapping]]\nlisten = \"{SHELL}\"\ncore = \"{CORE}\"\nbypass = {bypass}\n\
         teardown = \"{teardown}\"\nlinger_secs = {linger}\n"
    )
}

fn start_shell(w: &World, cfg: String) -> ShellProc {
    ShellProc::start(&w.a, &w.sd.dir, &cfg)
}

fn start_core_agent(
    w: &World,
) -> (
    stitch_core::CoreAgent,
    std::sync::mpsc::Receiver<stitch_core::TeardownNotice>,
) {
    let cfg = stitch_core::CoreConfig::from_toml(&format!(
        "listen = \"198.18.0.3:4791\"\nkey_id = 7\nkey = \"{KEY}\"\n"
    ))
    .expect("core config");
    w.b.run(move || stitch_core::CoreAgent::start(&cfg))
        .join()
        .expect("core thread")
        .expect("core agent starts")
}

/// Client side: sends a header (bytes C->B, bytes B->C, seed), then its data, reads B's
/// data until EOF. Returns SHA-256 of what it read and the expected one.
fn client(send: usize, recv: usize, seed: u64) -> (String, String) {
    client_ordered(send, recv, seed, 0)
}

/// `order`: 0 both ends send at once; 1 the client sends and closes first, then the core;
/// 2 the core first.
fn client_ordered(send: usize, recv: usize, seed: u64, order: u64) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&SHELL.parse().unwrap(), Duration::from_secs(10))
        .expect("connect to shell");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&(send as u64).to_be_bytes());
    hdr.extend_from_slice(&(recv as u64).to_be_bytes());
    hdr.extend_from_slice(&seed.to_be_bytes());
    hdr.extend_from_slice(&order.to_be_bytes());
    s.write_all(&hdr).unwrap();
    let mut w = s.try_clone().unwrap();
    let data = pattern(send, seed);
    let mut write = move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    };
    let (got, n) = match order {
        1 => {
            write();
            sha256_of(&s)
        }
        2 => {
            let r = sha256_of(&s);
            write();
            r
        }
        _ => {
            let writer = std::thread::spawn(write);
            let r = sha256_of(&s);
            writer.join().unwrap();
            r
        }
    };
    assert_eq!(n, recv as u64, "client {seed}: bytes from core");
    (got, sha256(&pattern(recv, seed ^ 0xffff)))
}

/// Core side: one connection: reads the header, sends its data, reads C's until EOF;
/// returns (SHA-256 read, expected, local, peer).
fn serve_one(s: TcpStream) -> (String, String, SocketAddr, SocketAddr) {
    let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut hdr = [0u8; 32];
    (&s).read_exact(&mut hdr).unwrap();
    let send = u64::from_be_bytes(hdr[8..16].try_into().unwrap()) as usize;
    let recv = u64::from_be_bytes(hdr[..8].try_into().unwrap()) as usize;
    let seed = u64::from_be_bytes(hdr[16..24].try_into().unwrap());
    let order = u64::from_be_bytes(hdr[24..32].try_into().unwrap());
    let mut w = s.try_clone().unwrap();
    let data = pattern(send, seed ^ 0xffff);
    let mut write = move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    };
    let (got, n) = match order {
        1 => {
            let r = sha256_of(&s);
            write();
            r
        }
        2 => {
            write();
            sha256_of(&s)
        }
        _ => {
            let writer = std::thread::spawn(write);
            let r = sha256_of(&s);
            writer.join().unwrap();
            r
        }
    };
    assert_eq!(n, recv as u64, "core {seed}: bytes from client");
    (got, sha256(&pattern(recv, seed)), local, peer)
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hundred_concurrent_connections_long_ones_bypassed_short_ones_relayed_nothing_lost() {
    let _g = serial();
    let w = world(2);
    let shell = start_shell(&w, shell_config("after_bytes", 1 << 20, "4E", 2));
    assert_eq!(
        shell.status().stitching,
        "available",
        "{:?}",
        shell.status()
    );
    let conns = 100usize;
    let server = w.b.run(move || {
        let l = TcpListener::bind(CORE).unwrap();
        let mut handles = Vec::new();
        for _ in 0..conns {
            let (s, _) = l.accept().unwrap();
            handles.push(std::thread::spawn(move || serve_one(s)));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("core conn"))
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(200));
    // 20 long transfers (24 MiB each way), 80 short ones (64 KiB each way).
    let clients: Vec<_> = (0..conns)
        .map(|i| {
            let size = if i % 5 == 0 { 24 << 20 } else { 64 << 10 };
            w.c.run(move || client(size, size, 1000 + i as u64))
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let (got, want) = c.join().unwrap_or_else(|_| panic!("client {i} failed"));
        assert_eq!(got, want, "client {i}: SHA-256 of B->C differs");
    }
    for (got, want, _, peer) in server.join().expect("core") {
        assert_eq!(
            got, want,
            "core, connection from {peer}: SHA-256 of C->B differs"
        );
    }
    let st = shell.status();
    let m = &st.mappings[0];
    assert_eq!(m.connections, 100, "{st:?}");
    // Under load a hand-off may be refused for a reason that passes (the relay did not
    // drain in time; the switch had not yet seen a timestamp from every sender): the shell
    // retries, and every long connection must end up bypassed.
    assert!(
        m.last_failure_reasons
            .iter()
            .all(|r| r.contains("drain timeout") || r.contains("retry once traffic")),
        "{:?}",
        m.last_failure_reasons
    );
    assert_eq!(
        m.bypassed, 20,
        "the 20 long connections are handed off: {m:?}"
    );
    let total = 20 * 2 * (24u64 << 20) + 80 * 2 * (64u64 << 10);
    let by_shell = m.bytes_relayed_by_shell.c_to_b + m.bytes_relayed_by_shell.b_to_c;
    assert!(
        by_shell < total / 2,
        "the shell relayed {by_shell} of {total} bytes"
    );
    let stitched: u64 = w.sd.ok("stats.get", None)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["stitched"].as_u64().unwrap())
        .sum();
    assert!(
        stitched > 20 * 1000,
        "switch translated only {stitched} packets"
    );
    let before = shell.status().mappings[0].bytes_relayed_by_shell.c_to_b;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        shell.status().mappings[0].bytes_relayed_by_shell.c_to_b,
        before,
        "the shell's counter still grows"
    );
    wait_for("every stitch removed after linger", 15, || {
        w.sd.ok("stitch.list", None)["stitches"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    shell.shutdown();
}

/// One connection under `variant`: small transfer, immediate hand-off, client closes;
/// returns (shell status after, core agent notices, core-side connection addresses).
fn one_variant(
    variant: &str,
    order: u64,
) -> (ShellStatus, Vec<stitch_core::TeardownNotice>, Stitchd) {
    let w = world(1);
    let events = w.sd.events();
    let (core_agent, notices) = start_core_agent(&w);
    let shell = start_shell(&w, shell_config("after_bytes", 256 << 10, variant, 1));
    let four_c = variant == "4C";
    let server = w.b.run(move || {
        let l = TcpListener::bind(CORE).unwrap();
        let (s, _) = l.accept().unwrap();
        let r = serve_one(s);
        if four_c {
            // 4C: the core's application tells its agent, which tells the shell (from
            // the core host, inside its namespace).
            core_agent
                .connection_closed(r.2, r.3, agent_proto::Teardown::C)
                .expect("core tells shell");
        }
        r
    });
    let c =
        w.c.run(move || client_ordered(16 << 20, 8 << 20, 77, order));
    let (got, want) = c.join().expect("client");
    assert_eq!(got, want, "{variant}: B->C");
    let (got, want, _, _) = server.join().expect("core");
    assert_eq!(got, want, "{variant}: C->B");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = w.sd.ok("stitch.list", None);
        if list["stitches"].as_array().unwrap().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let id = list["stitches"][0]["id"].clone();
            panic!(
                "{variant}, order {order}: stitch not removed after linger: {}",
                w.sd.ok("stitch.get", Some(serde_json::json!({"id": id})))
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while shell.status().mappings[0].active_stitched != 0 {
        assert!(
            Instant::now() < deadline,
            "{variant}, order {order}: the shell did not free the stitch: {:?}\nswitch events: {:?}\nshell log: {}",
            shell.status(),
            events.try_iter().collect::<Vec<_>>(),
            shell.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = shell.status();
    assert_eq!(st.mappings[0].bypassed, 1, "{variant}: {st:?}");
    std::thread::sleep(Duration::from_millis(300));
    let got: Vec<_> = notices.try_iter().collect();
    shell.shutdown();
    drop(w.c);
    drop(w.a);
    drop(w.b);
    (st, got, w.sd)
}

#[test]
fn every_teardown_variant_closes_both_ends_and_notifies_as_the_variant_says() {
    let _g = serial();
    // Once with the client closing first, once with the core closing first.
    for order in [1u64, 2] {
        let who = if order == 1 {
            "client closes"
        } else {
            "core closes"
        };
        // 4B: the switch tells both agents.
        let (st, core, _) = one_variant("4B", order);
        assert!(
            st.teardown.notices >= 1,
            "4B, {who}: shell got no teardown message: {st:?}"
        );
        assert!(
            core.iter().any(|n| n.to == agent_proto::Side::Core),
            "4B, {who}: core agent got no message: {core:?}"
        );
        // 4C: the core tells the shell (the switch sends nothing).
        let (st, core, _) = one_variant("4C", order);
        assert!(
            st.teardown.notices >= 1,
            "4C, {who}: shell not told by the core: {st:?}"
        );
        // (A late RST after both ends closed — a retransmitted ACK meeting a socket that
        // already went away — is reported to both agents in every variant; only FIN
        // messages say how the variant notifies.)
        let fin = |n: &&stitch_core::TeardownNotice| n.kind == agent_proto::EndKind::Fin;
        assert!(
            !core.iter().any(|n| fin(&n)),
            "4C, {who}: the switch sent the core a FIN message: {core:?}"
        );
        // 4D: the shell sees the untranslated FIN and tells the core.
        let (st, core, _) = one_variant("4D", order);
        assert!(
            st.teardown.fins_seen >= 1,
            "4D, {who}: shell saw no FIN: {st:?}"
        );
        assert!(
            st.teardown.core_notified >= 1,
            "4D, {who}: shell did not tell the core: {st:?}"
        );
        assert!(
            core.iter().any(|n| n.to == agent_proto::Side::Core),
            "4D, {who}: core agent got nothing: {core:?}"
        );
        // 4E: the shell sees the untranslated FIN; the core saw the translated one (EOF).
        let (st, core, _) = one_variant("4E", order);
        assert!(
            st.teardown.fins_seen >= 1,
            "4E, {who}: shell saw no FIN: {st:?}"
        );
        assert!(
            !core.iter().any(|n| fin(&n)),
            "4E, {who}: the switch sent the core a FIN message: {core:?}"
        );
    }
}

/// One connection C -> shell -> B moving `bytes` each way at once; both directions must
/// arrive intact.
fn exchange(w: &World, bytes: usize, seed: u64) {
    let server = w.b.run(move || {
        let l = TcpListener::bind(CORE).unwrap();
        let (s, _) = l.accept().unwrap();
        serve_one(s)
    });
    let (got, want) =
        w.c.run(move || client(bytes, bytes, seed))
            .join()
            .expect("client");
    assert_eq!(got, want, "B->C");
    let (got, want, _, _) = server.join().expect("core");
    assert_eq!(got, want, "C->B");
}

#[test]
fn a_refused_commit_leaves_the_connection_with_the_shell_and_loses_nothing() {
    let _g = serial();
    let w = world(1);
    // Leg B without timestamps, leg A with: the switch must refuse the stitch.
    w.b.exec("sysctl", &["-qw", "net.ipv4.tcp_timestamps=0"]);
    let shell = start_shell(&w, shell_config("immediate", 0, "4E", 1));
    exchange(&w, 16 << 20, 5);
    let st = shell.status();
    let m = &st.mappings[0];
    assert_eq!(m.bypassed, 0, "{st:?}");
    assert!(m.failed_handoffs >= 1, "{st:?}");
    assert!(
        m.last_failure_reasons
            .iter()
            .any(|r| r.contains("timestamps")),
        "{:?}",
        m.last_failure_reasons
    );
    assert_eq!(
        m.bytes_relayed_by_shell.c_to_b,
        (16 << 20) + 32,
        "the shell carried everything"
    );
    shell.shutdown();
}

#[test]
fn a_shell_with_two_egress_interfaces_does_not_probe() {
    let _g = serial();
    let w = world(1);
    w.a.ip(&["link", "add", "sva", "type", "veth", "peer", "name", "svb"]);
    w.a.ip(&["addr", "add", "198.18.0.200/24", "dev", "sva"]);
    w.a.ip(&["link", "set", "sva", "up"]);
    w.a.ip(&["link", "set", "svb", "up"]);
    let shell = start_shell(&w, shell_config("immediate", 0, "4E", 1));
    let st = shell.status();
    assert!(st.stitching.starts_with("not available"), "{st:?}");
    assert!(st.stitching.contains("egress"), "{}", st.stitching);
    let probes = w.sd.ok("stats.get", None)["agent"]["counters"]["probes_answered"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(probes, 0, "the shell probed anyway");
    shell.shutdown();
}

#[test]
fn a_broadcast_probe_goes_out_of_the_one_egress_interface_without_a_default_route() {
    let _g = serial();
    let w = world(1);
    // The shell's namespace has only its connected route: no default route to send a
    // 255.255.255.255 probe by.
    let routes = String::from_utf8_lossy(&w.a.ip(&["route", "show", "default"]).stdout).to_string();
    assert!(
        routes.trim().is_empty(),
        "namespace A has a default route: {routes}"
    );
    // No switch address configured: the shell discovers by broadcast.
    let cfg =
        shell_config("immediate", 0, "4E", 1).replace("address = \"198.18.0.254:4790\"\n", "");
    assert!(!cfg.contains("198.18.0.254"), "{cfg}");
    let shell = start_shell(&w, cfg);
    let st = shell.status();
    assert_eq!(st.stitching, "available", "{st:?}");
    let probes = w.sd.ok("stats.get", None)["agent"]["counters"]["probes_answered"]
        .as_u64()
        .unwrap_or(0);
    assert!(probes >= 1, "the switch answered no probe");
    shell.shutdown();
}

#[test]
fn a_switch_that_stops_answering_leaves_the_connection_with_the_shell_and_loses_nothing() {
    let _g = serial();
    let w = world(1);
    let shell = start_shell(&w, shell_config("after_bytes", 4 << 20, "4E", 1));
    assert_eq!(shell.status().stitching, "available");
    // After discovery, the switch's service address becomes unreachable from the shell.
    w.a.ip(&["route", "add", "blackhole", "198.18.0.254/32"]);
    exchange(&w, 32 << 20, 9);
    let st = shell.status();
    let m = &st.mappings[0];
    assert_eq!(m.bypassed, 0, "{st:?}");
    assert!(m.failed_handoffs >= 1, "{st:?}");
    assert!(
        m.last_failure_reasons
            .iter()
            .all(|r| r.starts_with("prepare")),
        "{:?}",
        m.last_failure_reasons
    );
    assert!(
        w.sd.ok("stitch.list", None)["stitches"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a stitch was left behind"
    );
    shell.shutdown();
}
