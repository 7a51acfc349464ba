//! UDP flows switched over with real Linux UDP in namespaces: core1 <-> shell1 <->
//! shell2 <-> core2 with `stitch-conduit relay --udp` in the shells, peer-to-peer
//! matching; shell1 delays every datagram by 20 ms. Both applications send numbered
//! datagrams both ways; we count what arrives twice, out of order, or not at all.
//! Drop-below: none of those. Stand-off longer than the delay: none either. Stand-off of
//! 0 ms (too short on purpose): nothing twice, and every loss is one the receiving
//! conduit counted as `late_dropped` (reported).
//!
//! Needs root and iproute2 (`ip netns`); fails, never skips, when they are missing.

mod support;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::*;

const N: u64 = 3000;
const SIZE: usize = 1000;
const LIMIT: Duration = Duration::from_secs(20);
/// shell1 forwards each datagram this late: the original path is much slower than the
/// stitched one, so a short stand-off visibly loses what was still in flight.
const DELAY_MS: u64 = 20;

fn conduit(id: u64, ctl: &str, direct: &str, peer: &str, port: &str) -> String {
    format!(
        r#"global_id = {id}
control = "{ctl}"
stitch_listen = "{direct}:7200"
match_listen = "{direct}:7300"
heartbeat_interval_ms = 100
heartbeat_timeout_ms = 1000
publish_after_bytes = 1000000
republish_ms = 200
matching = {{ mode = "peer", peers = ["{peer}:7300"] }}
[[scope]]
name = "blue"
key_id = 1
key = "{KEY}"
members = [1, 2]
{port}"#
    )
}

struct UdpWorld {
    c1: Proc,
    c2: Proc,
    _r1: Proc,
    _r2: Proc,
    ctl1: std::path::PathBuf,
    ctl2: std::path::PathBuf,
    stats1: std::path::PathBuf,
    net: Net,
}

fn start(drain: &str) -> UdpWorld {
    let net = Net::new();
    let ctl1 = net.path("c1.sock");
    let ctl2 = net.path("c2.sock");
    let stats1 = net.path("relay1.stats");
    let port1 = format!(
        "[[udp_route]]\nlisten = \"127.0.0.1:7001\"\nforward = \"{SHELL1_CORE}:8001\"\n\
         service = \"{CORE2_SHELL}:9100\"\nscope = \"blue\"\n{drain}\n"
    );
    let port2 = format!(
        "[[udp_inbound]]\nlisten = \"{CORE2_SHELL}:8001\"\nforward = \"127.0.0.1:9100\"\n\
         service = \"{CORE2_SHELL}:9100\"\nscope = \"blue\"\n{drain}\n"
    );
    let cfg1 = net.file(
        "c1.toml",
        &conduit(
            1,
            &ctl1.display().to_string(),
            CORE1_DIRECT,
            CORE2_DIRECT,
            &port1,
        ),
    );
    let cfg2 = net.file(
        "c2.toml",
        &conduit(
            2,
            &ctl2.display().to_string(),
            CORE2_DIRECT,
            CORE1_DIRECT,
            &port2,
        ),
    );
    let mut c2 = net.spawn(&net.core2, "conduit2", &["conduit", "--config", &cfg2]);
    let mut c1 = net.spawn(&net.core1, "conduit1", &["conduit", "--config", &cfg1]);
    let s1 = stats1.display().to_string();
    let mut r2 = net.spawn(
        &net.shell2,
        "relay2",
        &[
            "relay",
            "--udp",
            "--listen",
            &format!("{SHELL2_SHELL}:8001"),
            "--connect",
            &format!("{CORE2_SHELL}:8001"),
        ],
    );
    let mut r1 = net.spawn(
        &net.shell1,
        "relay1",
        &[
            "relay",
            "--udp",
            "--listen",
            &format!("{SHELL1_CORE}:8001"),
            "--connect",
            &format!("{SHELL2_SHELL}:8001"),
            "--stats",
            &s1,
            "--delay-ms",
            &DELAY_MS.to_string(),
        ],
    );
    c1.wait_log("conduit ready", LIMIT);
    c2.wait_log("conduit ready", LIMIT);
    r1.wait_log("relay ready", LIMIT);
    r2.wait_log("relay ready", LIMIT);
    UdpWorld {
        c1,
        c2,
        _r1: r1,
        _r2: r2,
        ctl1,
        ctl2,
        stats1,
        net,
    }
}

/// 4 MiB receive buffer (root may exceed rmem_max), so the test applications' own
/// sockets do not lose what the conduits delivered.
fn big_buffer(s: &UdpSocket) {
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::RcvBufForce, &(4 << 20))
        .expect("SO_RCVBUFFORCE (needs root)");
}

fn datagram(seq: u64) -> Vec<u8> {
    let mut d = vec![(seq % 251) as u8; SIZE];
    d[..8].copy_from_slice(&seq.to_be_bytes());
    d
}

/// Sends N numbered datagrams, paced (pacing, not synchronisation).
fn send_all(s: &UdpSocket, to: Option<&str>) {
    for seq in 1..=N {
        let d = datagram(seq);
        let _ = match to {
            Some(a) => s.send_to(&d, a),
            None => s.send(&d),
        };
        thread::sleep(Duration::from_micros(100));
    }
}

/// Receives until N arrived, or 1 s of silence after `done` says the sender finished.
fn receive_all(s: &UdpSocket, done: &AtomicBool) -> Vec<u64> {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut idle = 0;
    while (got.len() as u64) < N {
        match s.recv(&mut buf) {
            Ok(n) if n >= 8 => {
                idle = 0;
                got.push(u64::from_be_bytes(buf[..8].try_into().unwrap_or([0; 8])));
            }
            _ => {
                if done.load(Ordering::SeqCst) {
                    idle += 1;
                    if idle >= 5 {
                        break;
                    }
                }
            }
        }
    }
    got
}

/// (arrived twice, arrived out of order, never arrived)
fn count(got: &[u64]) -> (u64, u64, u64) {
    let mut seen = vec![false; N as usize + 1];
    let (mut dup, mut late, mut highest) = (0, 0, 0);
    for &s in got {
        let i = s as usize;
        if i == 0 || i > N as usize {
            continue;
        }
        if seen[i] {
            dup += 1;
        }
        seen[i] = true;
        if s < highest {
            late += 1;
        }
        highest = highest.max(s);
    }
    let missing = seen[1..].iter().filter(|x| !**x).count() as u64;
    (dup, late, missing)
}

/// Runs both flows; returns what the client and the server received.
fn exchange(w: &UdpWorld) -> (Vec<u64>, Vec<u64>) {
    let client_done = Arc::new(AtomicBool::new(false));
    let server_done = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (cd, sd) = (client_done.clone(), server_done.clone());
    let server = in_ns(&w.net.core2, move || {
        let s = UdpSocket::bind("127.0.0.1:9100").expect("bind service");
        big_buffer(&s);
        let _ = ready_tx.send(());
        let mut first = [0u8; 65_536];
        let (n, peer) = s.recv_from(&mut first).expect("first datagram");
        let sender = s.try_clone().expect("clone");
        let sd2 = sd.clone();
        let t = thread::spawn(move || {
            send_all(&sender, Some(&peer.to_string()));
            sd2.store(true, Ordering::SeqCst);
        });
        let mut got = vec![u64::from_be_bytes(first[..8].try_into().unwrap_or([0; 8]))];
        let _ = n;
        got.extend(receive_all(&s, &cd));
        let _ = t.join();
        got
    });
    ready_rx.recv().expect("service ready");
    let (cd, sd) = (client_done.clone(), server_done.clone());
    let client = in_ns(&w.net.core1, move || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        big_buffer(&s);
        s.connect("127.0.0.1:7001").expect("connect");
        let sender = s.try_clone().expect("clone");
        let t = thread::spawn(move || {
            send_all(&sender, None);
            cd.store(true, Ordering::SeqCst);
        });
        let got = receive_all(&s, &sd);
        let _ = t.join();
        got
    });
    let c = client.join().expect("client");
    let s = server.join().expect("server");
    (c, s)
}

fn conn(sock: &std::path::Path) -> serde_json::Value {
    first_conn(sock).unwrap_or(serde_json::Value::Null)
}

fn logs(w: &UdpWorld) -> String {
    format!(
        "--- c1\n{}\n--- c2\n{}\nc1: {}\nc2: {}",
        w.c1.log_text(),
        w.c2.log_text(),
        conn(&w.ctl1),
        conn(&w.ctl2)
    )
}

#[test]
fn udp_drop_below_switches_part_way_with_nothing_lost_duplicated_or_reordered() {
    let w = start("drain = \"drop_below\"\nwait_ms = 500");
    let (client, server) = exchange(&w);
    let (cd, cl, cm) = count(&client);
    let (sd, sl, sm) = count(&server);
    eprintln!(
        "measure: udp drop_below client dup/late/missing {cd}/{cl}/{cm}, server {sd}/{sl}/{sm}"
    );
    assert_eq!((cd, cl, cm, sd, sl, sm), (0, 0, 0, 0, 0, 0), "{}", logs(&w));
    for sock in [&w.ctl1, &w.ctl2] {
        let c = conn(sock);
        assert_eq!(c["phase"], "stitched", "{}", logs(&w));
        assert_eq!(c["desc"]["tuple"]["proto"], "udp");
        let tx = c["stats"]["tx_stitched_bytes"].as_u64().unwrap_or(0);
        let tx_orig = c["stats"]["tx_original_bytes"].as_u64().unwrap_or(0);
        assert!(tx > 0 && tx_orig > 0, "switched part way: {c}");
    }
    let relayed = relay_bytes_settled(&w.stats1);
    let total = 2 * N * SIZE as u64;
    assert!(relayed < total, "the relay carried {relayed} of {total}");
}

#[test]
fn udp_stand_off_longer_than_the_original_path_delay_loses_nothing() {
    let w = start("drain = \"stand_off\"\nstandoff_ms = 80");
    let (client, server) = exchange(&w);
    let (c, s) = (count(&client), count(&server));
    eprintln!(
        "measure: udp stand_off 80 ms: client dup/late/missing {c:?}, server {s:?}; conduit 1 {}, conduit 2 {}",
        conn(&w.ctl1)["udp"],
        conn(&w.ctl2)["udp"]
    );
    assert_eq!((c, s), ((0, 0, 0), (0, 0, 0)), "{}", logs(&w));
}

#[test]
fn udp_stand_off_too_short_reports_what_it_lost_and_never_duplicates() {
    let w = start("drain = \"stand_off\"\nstandoff_ms = 0");
    let (client, server) = exchange(&w);
    let (cd, cl, cm) = count(&client);
    let (sd, sl, sm) = count(&server);
    // The conduit receiving each direction counts the datagrams it dropped as late.
    let late = |sock: &std::path::Path| conn(sock)["udp"]["late_dropped"].as_u64().unwrap_or(0);
    let (late1, late2) = (late(&w.ctl1), late(&w.ctl2));
    eprintln!(
        "measure: udp stand_off 0 ms: client dup/late/missing {cd}/{cl}/{cm} (conduit 1 late_dropped {late1}), \
         server {sd}/{sl}/{sm} (conduit 2 late_dropped {late2})"
    );
    assert_eq!((cd, sd), (0, 0), "{}", logs(&w));
    assert!(
        cm + sm > 0,
        "a 0 ms stand-off against a 20 ms path loses something"
    );
    assert_eq!(
        cm,
        late1,
        "every loss towards the client is a late drop\n{}",
        logs(&w)
    );
    assert_eq!(
        sm,
        late2,
        "every loss towards the server is a late drop\n{}",
        logs(&w)
    );
    for sock in [&w.ctl1, &w.ctl2] {
        assert_eq!(conn(sock)["phase"], "stitched", "{}", logs(&w));
    }
}
