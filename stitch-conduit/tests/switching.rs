//! Source switching end to end with real Linux TCP: core1 <-> shell1 <-> shell2 <->
//! core2 in network namespaces, the shells running `stitch-conduit relay`, the cores
//! running conduits (and, centralized, the matcher in core1). A long transfer both ways
//! is switched part way; both ends' SHA-256 must match what the other sent, and after
//! the switch-over the relays carry only heartbeats. Negative cases show their reason;
//! a dead or frozen proxy ends both applications' connections within the heartbeat
//! timeout.
//!
//! Needs root and iproute2 (`ip netns`); fails, never skips, when they are missing.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use agent_proto::ReplayGuard;
use stitch_conduit::desc::{ConnDesc, Proto, Tuple};
use stitch_conduit::envelope::{open, seal};
use stitch_conduit::msg::{Message, Outcome, Reason};
use stitch_conduit::scope::{Scope, Scopes};
use support::*;

const PART1: usize = 2 << 20;
const PART2: usize = 4 << 20;
const HB_INTERVAL_MS: u64 = 100;
const HB_TIMEOUT_MS: u64 = 1000;
const LIMIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq)]
enum Matching {
    Centralized,
    Peer,
    None,
}

#[derive(Clone, Copy)]
struct Setup {
    matching: Matching,
    /// (scope name, key id, key) of each conduit.
    c1_scope: (&'static str, u32, &'static str),
    c2_scope: (&'static str, u32, &'static str),
    /// The service port conduit 2 names in its descriptions (9000 is symmetric).
    c2_service_port: u16,
    auto: bool,
    preconfigured: bool,
}

const BLUE: (&str, u32, &str) = ("blue", 1, KEY);

impl Setup {
    fn new(matching: Matching) -> Setup {
        Setup {
            matching,
            c1_scope: BLUE,
            c2_scope: BLUE,
            c2_service_port: 9000,
            auto: true,
            preconfigured: false,
        }
    }
}

struct World {
    _matcher: Option<Proc>,
    relay1: Proc,
    relay2: Proc,
    c1: Proc,
    c2: Proc,
    ctl1: PathBuf,
    ctl2: PathBuf,
    stats1: PathBuf,
    net: Net,
}

fn matching_toml(m: Matching, peer: &str) -> String {
    match m {
        Matching::Centralized => {
            format!("{{ mode = \"centralized\", matcher = \"{CORE1_DIRECT}:7400\" }}")
        }
        Matching::Peer => format!("{{ mode = \"peer\", peers = [\"{peer}:7300\"] }}"),
        Matching::None => "{ mode = \"none\" }".into(),
    }
}

fn common(id: u64, ctl: &str, direct: &str, m: &str, scope: (&str, u32, &str)) -> String {
    let (name, key_id, key) = scope;
    format!(
        r#"global_id = {id}
control = "{ctl}"
stitch_listen = "{direct}:7200"
match_listen = "{direct}:7300"
heartbeat_interval_ms = {HB_INTERVAL_MS}
heartbeat_timeout_ms = {HB_TIMEOUT_MS}
drain_timeout_ms = 2000
publish_after_bytes = 1000000
republish_ms = 200
matching = {m}
[[scope]]
name = "{name}"
key_id = {key_id}
key = "{key}"
members = [1, 2, 3]
"#
    )
}

fn start(s: Setup) -> World {
    let net = Net::new();
    let ctl1 = net.path("c1.sock");
    let ctl2 = net.path("c2.sock");
    let stats1 = net.path("relay1.stats");
    let stats2 = net.path("relay2.stats");
    let matcher = (s.matching == Matching::Centralized).then(|| {
        let cfg = net.file(
            "matcher.toml",
            &format!(
                "listen = \"{CORE1_DIRECT}:7400\"\n\
                 [[scope]]\nname = \"blue\"\nkey_id = 1\nkey = \"{KEY}\"\nmembers = [1, 2, 3]\n\
                 [[scope]]\nname = \"red\"\nkey_id = 2\nkey = \"{KEY}\"\nmembers = [1, 2, 3]\n"
            ),
        );
        let ctl = net.path("matcher.sock").display().to_string();
        let mut p = net.spawn(
            &net.core1,
            "matcher",
            &["matcher", "--config", &cfg, "--control", &ctl],
        );
        p.wait_log("matcher listening", LIMIT);
        p
    });
    let mut c2 = {
        let mut t = common(
            2,
            &ctl2.display().to_string(),
            CORE2_DIRECT,
            &matching_toml(s.matching, CORE1_DIRECT),
            s.c2_scope,
        );
        t += &format!(
            "[[inbound]]\nlisten = \"{CORE2_SHELL}:8000\"\ntarget = \"127.0.0.1:9000\"\n\
             service = \"{CORE2_SHELL}:{}\"\nscope = \"{}\"\nauto = {}\n",
            s.c2_service_port, s.c2_scope.0, s.auto
        );
        let cfg = net.file("c2.toml", &t);
        net.spawn(&net.core2, "conduit2", &["conduit", "--config", &cfg])
    };
    let mut c1 = {
        let mut t = common(
            1,
            &ctl1.display().to_string(),
            CORE1_DIRECT,
            &matching_toml(s.matching, CORE2_DIRECT),
            s.c1_scope,
        );
        t += &format!(
            "[[route]]\nlisten = \"127.0.0.1:7000\"\nupstream = \"{SHELL1_CORE}:8000\"\n\
             service = \"{CORE2_SHELL}:9000\"\nscope = \"{}\"\nauto = {}\n",
            s.c1_scope.0, s.auto
        );
        if s.preconfigured {
            t += &format!("preconfigured_peer = \"{CORE2_DIRECT}:7200\"\n");
        }
        let cfg = net.file("c1.toml", &t);
        net.spawn(&net.core1, "conduit1", &["conduit", "--config", &cfg])
    };
    let s2 = stats2.display().to_string();
    let mut relay2 = net.spawn(
        &net.shell2,
        "relay2",
        &[
            "relay",
            "--listen",
            &format!("{SHELL2_SHELL}:8000"),
            "--connect",
            &format!("{CORE2_SHELL}:8000"),
            "--stats",
            &s2,
        ],
    );
    let s1 = stats1.display().to_string();
    let mut relay1 = net.spawn(
        &net.shell1,
        "relay1",
        &[
            "relay",
            "--listen",
            &format!("{SHELL1_CORE}:8000"),
            "--connect",
            &format!("{SHELL2_SHELL}:8000"),
            "--stats",
            &s1,
        ],
    );
    for p in [&mut c1, &mut c2] {
        p.wait_log("conduit ready", LIMIT);
    }
    for p in [&mut relay1, &mut relay2] {
        p.wait_log("relay ready", LIMIT);
    }
    World {
        _matcher: matcher,
        relay1,
        relay2,
        c1,
        c2,
        ctl1,
        ctl2,
        stats1,
        net,
    }
}

impl World {
    fn logs(&self) -> String {
        format!(
            "--- conduit1\n{}\n--- conduit2\n{}\n--- relay1\n{}\n--- relay2\n{}\n--- matcher\n{}",
            self.c1.log_text(),
            self.c2.log_text(),
            self.relay1.log_text(),
            self.relay2.log_text(),
            self._matcher
                .as_ref()
                .map(|m| m.log_text())
                .unwrap_or_default()
        )
    }

    fn conn(&self, which: u8) -> serde_json::Value {
        let sock = if which == 1 { &self.ctl1 } else { &self.ctl2 };
        first_conn(sock).unwrap_or(serde_json::Value::Null)
    }

    fn wait_conn(&self, which: u8, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
        wait_for(
            what,
            LIMIT,
            || f(&self.conn(which)),
            || format!("conn: {}\n{}", self.conn(which), self.logs()),
        );
    }
}

/// A running transfer: client in core1 through conduit 1, server in core2 behind
/// conduit 2. Each side writes PART1, waits for its gate, writes PART2.
struct Transfer {
    client: App,
    server: App,
    gates: Vec<mpsc::Sender<()>>,
    a: [Vec<u8>; 2],
    b: [Vec<u8>; 2],
}

fn transfer(w: &World) -> Transfer {
    transfer_sized(w, PART1, PART2)
}

fn transfer_sized(w: &World, part1: usize, part2: usize) -> Transfer {
    let (srv, ready) = server_in(&w.net.core2, "127.0.0.1:9000");
    ready.recv().expect("server ready");
    let client_sock = connect_in(&w.net.core1, "127.0.0.1:7000");
    let server_sock = srv.join().expect("server accept");
    let a = [pattern(1, part1), pattern(2, part2)];
    let b = [pattern(3, part1), pattern(4, part2)];
    let (g1, r1) = mpsc::channel();
    let (g2, r2) = mpsc::channel();
    let client = run_app(client_sock, a[0].clone(), a[1].clone(), r1);
    let server = run_app(server_sock, b[0].clone(), b[1].clone(), r2);
    Transfer {
        client,
        server,
        gates: vec![g1, g2],
        a,
        b,
    }
}

impl Transfer {
    /// Opens the gates and checks both ends received exactly what the other sent.
    fn finish(self, w: &World) {
        for g in &self.gates {
            let _ = g.send(());
        }
        let c = self.client.reader.join().expect("client reader");
        let s = self.server.reader.join().expect("server reader");
        let _ = self.client.writer.join();
        let _ = self.server.writer.join();
        let ctx = || w.logs();
        assert!(
            c.clean_eof && s.clean_eof,
            "streams ended cleanly\n{}",
            ctx()
        );
        let total = self.a[0].len() + self.a[1].len();
        assert_eq!(c.received, total, "client bytes\n{}", ctx());
        assert_eq!(s.received, total, "server bytes\n{}", ctx());
        assert!(c.sha == sha(&[&self.b[0], &self.b[1]]), "client SHA-256");
        assert!(s.sha == sha(&[&self.a[0], &self.a[1]]), "server SHA-256");
    }
}

fn phase_is(v: &serde_json::Value, p: &str) -> bool {
    v["phase"] == p
}

/// Switched part way: waits for both sides stitched, then checks the rest crosses the
/// direct link only. Returns (match_to_ready_us, drain_us) of conduit 1.
fn switched_transfer(w: &World, t: Transfer) -> (u64, u64) {
    for which in [1, 2] {
        w.wait_conn(which, "stitched", |v| phase_is(v, "stitched"));
    }
    let before = relay_bytes_settled(&w.stats1);
    t.finish(w);
    let after = relay_bytes_settled(&w.stats1);
    let crossed = after - before;
    // Only heartbeats (13-byte frames), their acks and the closing Byes.
    assert!(
        crossed <= 8192,
        "relay carried {crossed} bytes after the switch-over\n{}",
        w.logs()
    );
    let c1 = w.conn(1);
    let c2 = w.conn(2);
    for c in [&c1, &c2] {
        let tx = c["stats"]["tx_stitched_bytes"].as_u64().unwrap_or(0);
        assert!(tx >= PART2 as u64, "stitched bytes {tx}: {c}");
        assert_eq!(c["stats"]["duplicates"], 0, "{c}");
    }
    let m2r = c1["match_to_ready_us"].as_u64().unwrap_or(0);
    let drain = c1["stats"]["drain_us"].as_u64().unwrap_or(0);
    eprintln!(
        "measure: match_to_ready_us={m2r} drain_us={drain} (conduit 2: {} / {}), relay bytes after switch-over {crossed}",
        c2["match_to_ready_us"], c2["stats"]["drain_us"]
    );
    (m2r, drain)
}

#[test]
fn centralized_match_switches_a_long_transfer_and_refuses_a_third_claimant() {
    let w = start(Setup::new(Matching::Centralized));
    let t = transfer(&w);
    w.wait_conn(1, "conduit 1 is the initiator", |v| {
        v["matching"]["state"] == "matched" && v["matching"]["initiator"] == true
    });
    w.wait_conn(2, "conduit 2 waits for the peer", |v| {
        v["matching"]["state"] == "matched" && v["matching"]["initiator"] == false
    });
    // A third member claiming conduit 2's view of the pair is refused: already stitched.
    let c1 = w.conn(1);
    let app: SocketAddr = c1["desc"]["tuple"]["src"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("app address in list");
    let verdict = in_ns(&w.net.core1, move || {
        let scopes = Scopes::new([Scope::from_hex("blue", 1, KEY, vec![]).expect("key")]);
        let desc = ConnDesc {
            tuple: Tuple {
                proto: Proto::Tcp,
                src: format!("{CORE2_SHELL}:9000").parse().expect("addr"),
                dst: app,
            },
            age_ms: 1,
            global_id: 3,
            scope: 1,
        };
        let m = Message::Publish {
            desc,
            stitch_addr: format!("{CORE1_DIRECT}:7999").parse().expect("addr"),
        };
        let now = stitch_conduit::conduit::unix_ms();
        let bytes = seal(&m, 1, now, [0x33; 16], &scopes).expect("seal");
        let u = UdpSocket::bind(format!("{CORE1_DIRECT}:0")).expect("udp");
        u.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        u.send_to(&bytes, format!("{CORE1_DIRECT}:7400"))
            .expect("send");
        let mut buf = [0u8; 2048];
        let (n, _) = u.recv_from(&mut buf).expect("verdict from the matcher");
        open(&buf[..n], &scopes, &mut ReplayGuard::new(16), now).map(|o| o.msg)
    })
    .join()
    .expect("claimant thread");
    assert!(
        matches!(
            verdict,
            Ok(Message::Verdict {
                outcome: Outcome::Refused(Reason::AlreadyStitched),
                ..
            })
        ),
        "{verdict:?}"
    );
    switched_transfer(&w, t);
    let m = w
        ._matcher
        .as_ref()
        .map(|m| m.log_text())
        .unwrap_or_default();
    assert!(m.contains("Refused(AlreadyStitched)"), "{m}");
    let st = ctl(&w.net.path("matcher.sock"), r#"{"cmd":"stats"}"#);
    assert_eq!(st["stats"]["matched"], 1, "{st}");
    // The conduit lists its scopes, never their keys.
    let list = ctl(&w.ctl1, r#"{"cmd":"list"}"#);
    assert_eq!(list["scopes"][0]["name"], "blue", "{list}");
    assert!(!list.to_string().contains(KEY), "{list}");
    let bad = ctl(&w.ctl1, r#"{"cmd":"stitch"}"#);
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(st["stats"]["already_stitched"], 1, "{st}");
}

#[test]
fn peer_to_peer_match_switches_a_long_transfer() {
    let w = start(Setup::new(Matching::Peer));
    let t = transfer(&w);
    switched_transfer(&w, t);
    assert!(w.c1.log_text().contains("peer publication from"));
    assert!(w.c2.log_text().contains("peer publication from"));
}

#[test]
fn preconfigured_port_is_stitched_without_publishing() {
    let mut s = Setup::new(Matching::None);
    s.preconfigured = true;
    let w = start(s);
    let t = transfer(&w);
    switched_transfer(&w, t);
    assert!(w.c1.log_text().contains("pre-configured port"));
    assert!(!w.c1.log_text().contains("verdict"));
}

#[test]
fn api_requests_from_both_sides_at_once_make_exactly_one_stitch() {
    let mut s = Setup::new(Matching::None);
    s.auto = false;
    let w = start(s);
    let t = transfer(&w);
    w.wait_conn(1, "connection listed", |v| v["id"].is_u64());
    w.wait_conn(2, "connection listed", |v| v["id"].is_u64());
    let id1 = w.conn(1)["id"].as_u64().unwrap_or(0);
    let id2 = w.conn(2)["id"].as_u64().unwrap_or(0);
    let (ctl1, ctl2) = (w.ctl1.clone(), w.ctl2.clone());
    let a = thread::spawn(move || {
        ctl(
            &ctl1,
            &format!(r#"{{"cmd":"stitch","id":{id1},"peer":"{CORE2_DIRECT}:7200"}}"#),
        )
    });
    let b = thread::spawn(move || {
        ctl(
            &ctl2,
            &format!(r#"{{"cmd":"stitch","id":{id2},"peer":"{CORE1_DIRECT}:7200"}}"#),
        )
    });
    let (ra, rb) = (a.join().expect("api 1"), b.join().expect("api 2"));
    assert!(ra["ok"] == true || rb["ok"] == true, "{ra} {rb}");
    switched_transfer(&w, t);
    let accepted = w.c1.log_text().matches("accepted stitch from").count()
        + w.c2.log_text().matches("accepted stitch from").count();
    assert_eq!(accepted, 1, "{}", w.logs());
    // Scopes are policy that can change at run time; keys never come back out.
    let add = ctl(
        &w.ctl1,
        &format!(
            r#"{{"cmd":"scope_add","name":"green","key_id":9,"key":"{OTHER_KEY}","members":[1,2]}}"#
        ),
    );
    assert_eq!(add["ok"], true, "{add}");
    let list = ctl(&w.ctl1, r#"{"cmd":"list"}"#);
    assert!(
        list["scopes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["name"] == "green")),
        "{list}"
    );
    assert!(!list.to_string().contains(OTHER_KEY), "{list}");
    let bad = ctl(
        &w.ctl1,
        r#"{"cmd":"scope_add","name":"x","key_id":10,"key":"00"}"#,
    );
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("64 hex digits")),
        "{bad}"
    );
    assert_eq!(
        ctl(&w.ctl1, r#"{"cmd":"scope_remove","name":"green"}"#)["ok"],
        true
    );
    assert_eq!(
        ctl(&w.ctl1, r#"{"cmd":"scope_remove","name":"green"}"#)["ok"],
        false
    );
    // Asking again: refused, with the reason.
    let again = ctl(
        &w.ctl1,
        &format!(r#"{{"cmd":"stitch","id":{id1},"peer":"{CORE2_DIRECT}:7200"}}"#),
    );
    assert_eq!(again["ok"], false, "{again}");
    let err = again["error"].as_str().unwrap_or("");
    assert!(
        err.contains("already stitched") || err.contains("ended"),
        "{again}"
    );
}

/// A negative case: no stitch happens, the reason shows on the control socket, and the
/// whole transfer still arrives over the proxies.
fn not_stitched(s: Setup, reasons: &[(u8, &str)]) -> World {
    let w = start(s);
    let t = transfer(&w);
    for &(which, reason) in reasons {
        w.wait_conn(which, reason, |v| {
            v["last_reason"]
                .as_str()
                .is_some_and(|r| r.contains(reason))
        });
    }
    let before = relay_bytes_settled(&w.stats1);
    t.finish(&w);
    let after = relay_bytes_settled(&w.stats1);
    assert!(
        after - before >= 2 * PART2 as u64,
        "the proxies carried the rest"
    );
    for c in [w.conn(1), w.conn(2)] {
        assert_eq!(c["stitch"], "free", "{c}");
        assert_eq!(c["stats"]["tx_stitched_bytes"], 0, "{c}");
    }
    w
}

#[test]
fn descriptions_that_are_not_symmetric_are_not_stitched() {
    let mut s = Setup::new(Matching::Centralized);
    s.c2_service_port = 9001;
    let w = not_stitched(s, &[(1, "no symmetric description")]);
    assert!(w.conn(2)["last_reason"]
        .as_str()
        .is_some_and(|r| r.contains("no symmetric description")));
}

#[test]
fn different_scopes_are_not_stitched() {
    let mut s = Setup::new(Matching::Centralized);
    s.c2_scope = ("red", 2, KEY);
    let w = not_stitched(s, &[(1, "different scope")]);
    assert!(w.conn(2)["last_reason"]
        .as_str()
        .is_some_and(|r| r.contains("different scope")));
}

#[test]
fn a_wrong_key_is_refused_by_the_matcher_and_nothing_is_stitched() {
    let mut s = Setup::new(Matching::Centralized);
    s.c2_scope = ("blue", 1, OTHER_KEY);
    // The conduit whose key is wrong hears nothing, and says what that may mean.
    let w = not_stitched(
        s,
        &[
            (1, "no symmetric description"),
            (2, "no verdict from the matcher"),
        ],
    );
    let m = w
        ._matcher
        .as_ref()
        .map(|m| m.log_text())
        .unwrap_or_default();
    assert!(
        m.contains(&format!(
            "refused datagram from {CORE2_DIRECT}:7300: bad message authentication tag"
        )),
        "{m}"
    );
    // The matcher's control socket shows it too.
    let st = ctl(&w.net.path("matcher.sock"), r#"{"cmd":"stats"}"#);
    assert!(st["refused"]["bad_mac"].as_u64().unwrap_or(0) >= 1, "{st}");
    assert_eq!(st["stats"]["matched"], 0, "{st}");
}

#[test]
fn killing_shell2_ends_both_applications_within_the_heartbeat_timeout() {
    let w = start(Setup::new(Matching::Peer));
    let mut w = w;
    let t = transfer(&w);
    for which in [1, 2] {
        w.wait_conn(which, "stitched", |v| phase_is(v, "stitched"));
    }
    let killed = Instant::now();
    w.relay2.kill();
    let c = t.client.reader.join().expect("client reader");
    let s = t.server.reader.join().expect("server reader");
    drop(t.gates);
    let limit = Duration::from_millis(HB_TIMEOUT_MS);
    for r in [&c, &s] {
        let took = r.ended_at.duration_since(killed);
        assert!(took <= limit, "ended {took:?} after the kill\n{}", w.logs());
        assert!(r.received < PART1 + PART2);
    }
    // The side whose original path closed first closes the stitched connection, so
    // the other may see either end first.
    for which in [1, 2] {
        w.wait_conn(which, "ended abnormally", |v| {
            v["ended"] == "original_closed" || v["ended"] == "stitched_closed"
        });
    }
    assert!([w.conn(1), w.conn(2)]
        .iter()
        .any(|v| v["ended"] == "original_closed"));
}

#[test]
fn a_frozen_proxy_ends_both_applications_by_heartbeat_timeout() {
    let w = start(Setup::new(Matching::Centralized));
    let t = transfer(&w);
    for which in [1, 2] {
        w.wait_conn(which, "stitched", |v| phase_is(v, "stitched"));
    }
    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.relay2.pid()),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("SIGSTOP relay2");
    let c = t.client.reader.join().expect("client reader");
    let s = t.server.reader.join().expect("server reader");
    drop(t.gates);
    // Declared dead after the timeout, noticed within one loop turn after it.
    let limit = Duration::from_millis(HB_TIMEOUT_MS + 2 * HB_INTERVAL_MS + 200);
    for r in [&c, &s] {
        let took = r.ended_at.duration_since(stopped);
        assert!(
            took <= limit,
            "ended {took:?} after the freeze\n{}",
            w.logs()
        );
    }
    for which in [1, 2] {
        w.wait_conn(which, "ended abnormally", |v| {
            v["ended"] == "heartbeat_timeout" || v["ended"] == "stitched_closed"
        });
    }
    assert!([w.conn(1), w.conn(2)]
        .iter()
        .any(|v| v["ended"] == "heartbeat_timeout"));
}

#[test]
fn killing_shell2_during_the_drain_ends_both_cleanly_with_nothing_lost_or_duplicated() {
    let mut s = Setup::new(Matching::None);
    s.auto = false;
    let mut w = start(s);
    let t = transfer(&w);
    w.wait_conn(1, "connection listed", |v| v["id"].is_u64());
    w.wait_conn(2, "connection listed", |v| v["id"].is_u64());
    // Freeze shell2 so the drain cannot finish, then stitch.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.relay2.pid()),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("SIGSTOP relay2");
    let id1 = w.conn(1)["id"].as_u64().unwrap_or(0);
    let r = ctl(
        &w.ctl1,
        &format!(r#"{{"cmd":"stitch","id":{id1},"peer":"{CORE2_DIRECT}:7200"}}"#),
    );
    assert_eq!(r["ok"], true, "{r}");
    for which in [1, 2] {
        w.wait_conn(which, "draining", |v| phase_is(v, "draining"));
    }
    let killed = Instant::now();
    w.relay2.kill();
    let c = t.client.reader.join().expect("client reader");
    let s = t.server.reader.join().expect("server reader");
    drop(t.gates);
    let sent_by_server: Vec<u8> = [t.b[0].as_slice(), t.b[1].as_slice()].concat();
    let sent_by_client: Vec<u8> = [t.a[0].as_slice(), t.a[1].as_slice()].concat();
    assert!(
        sent_by_server.starts_with(&c.data),
        "client got a prefix, nothing twice"
    );
    assert!(
        sent_by_client.starts_with(&s.data),
        "server got a prefix, nothing twice"
    );
    for r in [&c, &s] {
        let took = r.ended_at.duration_since(killed);
        assert!(
            took <= Duration::from_millis(HB_TIMEOUT_MS),
            "ended {took:?} after the kill"
        );
    }
    for which in [1, 2] {
        w.wait_conn(which, "ended abnormally", |v| {
            !v["ended"].is_null() && v["ended"] != "normal"
        });
    }
    eprintln!(
        "measure: killed during the drain: client got {} of {} bytes, server {} of {}",
        c.received,
        PART1 + PART2,
        s.received,
        PART1 + PART2
    );
}

fn percentile(v: &mut [u64], p: usize) -> u64 {
    v.sort_unstable();
    v.get((v.len().saturating_sub(1)) * p / 100)
        .copied()
        .unwrap_or(0)
}

/// Twenty connections, each stitched by an API request while its first megabyte is
/// still in flight and the rest follows at once: prints p50/p99 of match-to-ready,
/// the drain, and match-to-first-stitched-byte (run with `--nocapture`).
#[test]
fn repeated_api_stitches_with_data_in_flight_report_latency_percentiles() {
    let mut s = Setup::new(Matching::None);
    s.auto = false;
    let w = start(s);
    let (mut ready, mut drain, mut first) = (Vec::new(), Vec::new(), Vec::new());
    let newest = |sock: &std::path::Path| {
        ctl(sock, r#"{"cmd":"list"}"#)["connections"]
            .as_array()
            .and_then(|a| a.last().cloned())
            .unwrap_or(serde_json::Value::Null)
    };
    for _ in 0..20 {
        let t = transfer_sized(&w, 1 << 20, 2 << 20);
        let mut c1 = serde_json::Value::Null;
        wait_for(
            "new connection on both conduits",
            LIMIT,
            || {
                c1 = newest(&w.ctl1);
                let c2 = newest(&w.ctl2);
                c1["ended"].is_null() && c2["ended"].is_null() && c2["id"].is_u64()
            },
            || w.logs(),
        );
        let id = c1["id"].as_u64().unwrap_or(0);
        let r = ctl(
            &w.ctl1,
            &format!(r#"{{"cmd":"stitch","id":{id},"peer":"{CORE2_DIRECT}:7200"}}"#),
        );
        assert_eq!(r["ok"], true, "{r}");
        for g in &t.gates {
            let _ = g.send(());
        }
        t.finish(&w);
        let mut done = serde_json::Value::Null;
        wait_for(
            "connection ended on conduit 1",
            LIMIT,
            || {
                done = newest(&w.ctl1);
                !done["ended"].is_null()
            },
            || w.logs(),
        );
        assert_eq!(done["ended"], "normal", "{done}");
        if done["stitch"] == "established" {
            let m2r = done["match_to_ready_us"].as_u64().unwrap_or(0);
            ready.push(m2r);
            drain.push(done["stats"]["drain_us"].as_u64().unwrap_or(0));
            if let Some(f) = done["stats"]["first_stitched_byte_us"].as_u64() {
                first.push(m2r + f);
            }
        }
    }
    assert!(
        ready.len() >= 10,
        "most connections were stitched: {}",
        ready.len()
    );
    eprintln!(
        "measure: {} stitches: match->ready p50 {} us p99 {} us; drain p50 {} us p99 {} us; \
         match->first stitched byte p50 {} us p99 {} us ({} samples)",
        ready.len(),
        percentile(&mut ready, 50),
        percentile(&mut ready, 99),
        percentile(&mut drain, 50),
        percentile(&mut drain, 99),
        percentile(&mut first, 50),
        percentile(&mut first, 99),
        first.len()
    );
}
