//! The shell against a fake switch on loopback (no DPDK): hand-off failures leave the
//! relay carrying every byte, a connection is frozen only once both legs have sent since
//! prepare (a quiet one is provoked, or given back unfrozen), failed attempts back off
//! and end in a bound, every outcome is counted and logged, discovery without an answer
//! disables stitching, teardown notices (4B from the switch, 4C from the core agent) and
//! the FIN watcher (4D) free silenced sockets, and the status socket prints what the docs
//! say.
//!
//! Needs root (TCP_REPAIR, AF_PACKET), like the tcp-repair tests.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_proto::{
    error_code, open, CapFlags, Capabilities, EndKind, Message, ReplayGuard, Reply, Side, Teardown,
    TeardownMsg,
};
use sha2::{Digest, Sha256};
use stitch_core::transport::now_ms;
use stitch_core::{expect_ok, AgentKeys, CoreAgent, CoreConfig, Requester};
use stitch_shell::logging::Logger;
use stitch_shell::{LogFormat, Shell, ShellConfig, ShellStatus};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY_ID: u32 = 7;

fn keys() -> AgentKeys {
    AgentKeys::from_hex(KEY_ID, KEY).unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum CommitAnswer {
    Refuse,
    Accept,
    /// Refuse this many commits, then accept.
    RefuseFirst(u32),
}

/// A switch's agent service in a thread: answers Probe, Prepare, Freeze, Commit, Abort,
/// Heartbeat; records what it received, and when.
struct FakeSwitch {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<(Instant, Message)>>>,
    /// When set: on Commit, first send this shell agent a 4B teardown notice for the
    /// stitch (and wait for its acknowledgement), then answer the commit.
    notice_before_commit: Arc<Mutex<Option<SocketAddr>>>,
    /// When set: every heartbeat is answered NO_SUCH_STITCH (the switch forgot them).
    forget: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeSwitch {
    /// `request_addr`: what the ProbeReply tells the shell (None: this switch).
    fn start(commit: CommitAnswer, request_addr: Option<SocketAddr>) -> FakeSwitch {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let notice_before_commit = Arc::new(Mutex::new(None::<SocketAddr>));
        let nbc = notice_before_commit.clone();
        let forget = Arc::new(AtomicBool::new(false));
        let forget2 = forget.clone();
        let next_id = AtomicU32::new(100);
        let commits = AtomicU32::new(0);
        let thread = std::thread::spawn(move || {
            let k = keys();
            let mut guard = ReplayGuard::new(4096);
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(o) = open(&buf[..n], &k.ring, &mut guard, now_ms()) else {
                    continue;
                };
                log2.lock().unwrap().push((Instant::now(), o.msg.clone()));
                let refuse = match (&o.msg, commit) {
                    (Message::Commit(_), CommitAnswer::Refuse) => true,
                    (Message::Commit(_), CommitAnswer::RefuseFirst(n)) => {
                        commits.fetch_add(1, Ordering::SeqCst) < n
                    }
                    _ => false,
                };
                let reply = match o.msg {
                    Message::Probe(_) => Message::ProbeReply(Capabilities {
                        flags: CapFlags::all(),
                        free_flows: 1000,
                        request_addr: request_addr.unwrap_or(addr),
                        switch_id: "fake".into(),
                    }),
                    Message::Prepare(_) => {
                        Message::Reply(Reply::ok(Some(next_id.fetch_add(1, Ordering::SeqCst))))
                    }
                    Message::Commit(c) if nbc.lock().unwrap().is_some() => {
                        let to = nbc.lock().unwrap().unwrap();
                        let td = TeardownMsg {
                            stitch_id: c.stitch_id,
                            from: Side::Client,
                            kind: EndKind::Fin,
                            variant: Teardown::B,
                            to: Side::Shell,
                            legs: None,
                            bytes: Some((333, 444)),
                        };
                        let mut req = Requester::for_peer(to, keys()).unwrap();
                        let (answer, _) = req.request(to, &Message::Teardown(td), None).unwrap();
                        expect_ok(answer).unwrap();
                        Message::Reply(Reply::ok(None))
                    }
                    Message::Heartbeat(_) if forget2.load(Ordering::SeqCst) => Message::Reply(
                        Reply::error(None, error_code::NO_SUCH_STITCH, "test forgot every stitch"),
                    ),
                    Message::Commit(c) if refuse => Message::Reply(Reply::error(
                        Some(c.stitch_id),
                        error_code::SEQ_MISMATCH,
                        "test refuses commit",
                    )),
                    _ => Message::Reply(Reply::ok(None)),
                };
                let response = matches!(reply, Message::ProbeReply(_) | Message::Reply(_));
                let d = k.seal(&reply, o.header.request_id, response).unwrap();
                sock.send_to(&d, from).unwrap();
            }
        });
        FakeSwitch {
            addr,
            log,
            notice_before_commit,
            forget,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self, f: impl Fn(&Message) -> bool) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| f(m))
            .count()
    }

    /// What it received, in order.
    fn messages(&self) -> Vec<Message> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// When it received each message that `f` picks.
    fn times(&self, f: impl Fn(&Message) -> bool) -> Vec<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| f(m))
            .map(|(t, _)| *t)
            .collect()
    }
}

fn is_prepare(m: &Message) -> bool {
    matches!(m, Message::Prepare(_))
}

fn is_freeze(m: &Message) -> bool {
    matches!(m, Message::Freeze { .. })
}

fn is_commit(m: &Message) -> bool {
    matches!(m, Message::Commit(_))
}

fn is_abort(m: &Message) -> bool {
    matches!(m, Message::Abort { .. })
}

/// The process's log, captured: every test's shell logs into it (JSON lines, debug and
/// up); tests pick their own lines by the mapping's listen address.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        Logger::new(
            LogFormat::Json,
            log::LevelFilter::Debug,
            Box::new(Sink(buf.clone())),
        )
        .install()
        .expect("the only logger");
        buf
    })
    .clone()
}

/// The captured log lines about mapping `listen`, parsed.
fn log_lines(listen: SocketAddr) -> Vec<serde_json::Value> {
    let text = String::from_utf8(captured_log().lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object per line"))
        .filter(|v| v["mapping"] == listen.to_string())
        .collect()
}

/// The lines with `outcome` (or, for "start", the hand-off start lines).
fn outcomes(lines: &[serde_json::Value], outcome: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter(|v| {
            if outcome == "start" {
                v["msg"] == "hand-off start"
            } else {
                v["outcome"] == outcome
            }
        })
        .cloned()
        .collect()
}

impl Drop for FakeSwitch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn shell_config(
    switch: SocketAddr,
    core: SocketAddr,
    status: &std::path::Path,
    mapping_extra: &str,
) -> ShellConfig {
    ShellConfig::from_toml(&format!(
        r#"
[switch]
address = "{switch}"
key_id = {KEY_ID}
key = "{KEY}"
agent_listen = "127.0.0.1:0"
status_socket = "{}"
probe_timeout_ms = 300
check_interfaces = false
drain_timeout_ms = 3000
heartbeat_secs = 0

[[mapping]]
listen = "127.0.0.1:0"
core = "{core}"
{mapping_extra}
"#,
        status.display()
    ))
    .unwrap()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Deterministic pseudo-random bytes.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `a`, waits for `gate`, writes `b`, half-closes.
fn writer(mut s: TcpStream, a: Vec<u8>, b: Vec<u8>, gate: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        s.write_all(&a).unwrap();
        while !gate.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        s.write_all(&b).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    })
}

/// Reads to EOF; returns (bytes, SHA-256).
fn reader(mut s: TcpStream) -> JoinHandle<(usize, Vec<u8>)> {
    std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n;
        }
        (total, h.finalize().to_vec())
    })
}

fn sha(parts: &[&[u8]]) -> Vec<u8> {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().to_vec()
}

/// A 2 x `half` byte transfer each way through the shell, pausing after the first half
/// until `resume_when` says so. Checks every byte arrived, in order.
fn transfer_through(
    shell: &Shell,
    core: TcpListener,
    half: usize,
    resume_when: impl Fn(&ShellStatus) -> bool,
) {
    let (c1, c2) = (data(1, half), data(2, half));
    let (b1, b2) = (data(3, half), data(4, half));
    let (to_core, to_client) = (sha(&[&c1, &c2]), sha(&[&b1, &b2]));
    let gate = Arc::new(AtomicBool::new(false));
    let client = TcpStream::connect(shell.listen_addrs()[0]).unwrap();
    let (server, _) = core.accept().unwrap();
    let cw = writer(client.try_clone().unwrap(), c1, c2, gate.clone());
    let cr = reader(client);
    let sw = writer(server.try_clone().unwrap(), b1, b2, gate.clone());
    let sr = reader(server);
    wait_for("the hand-off attempt", Duration::from_secs(30), || {
        resume_when(&shell.status())
    });
    gate.store(true, Ordering::SeqCst);
    cw.join().unwrap();
    sw.join().unwrap();
    let (n_core, h_core) = sr.join().unwrap();
    let (n_client, h_client) = cr.join().unwrap();
    assert_eq!((n_core, n_client), (2 * half, 2 * half));
    assert_eq!(h_core, to_core, "C->B stream intact");
    assert_eq!(h_client, to_client, "B->C stream intact");
}

#[test]
fn refused_commit_resumes_relaying_without_losing_a_byte() {
    let (_dir, sw, core, shell) = start_relay(
        CommitAnswer::Refuse,
        "bypass = { policy = \"after_bytes\", value = 5000000 }\nteardown = \"4B\"",
        |_| {},
    );
    transfer_through(&shell, core, 10 << 20, |s| {
        s.mappings[0].failed_handoffs >= 1
    });
    wait_for("the connection to close", Duration::from_secs(10), || {
        shell.status().mappings[0].relayed == 1
    });
    let st = shell.status();
    let m = &st.mappings[0];
    // A refused hand-off is retried (at most 5 attempts in all) while the connection lasts.
    assert!((1..=5).contains(&m.failed_handoffs), "{m:?}");
    assert_eq!((m.connections, m.bypassed, m.active_stitched), (1, 0, 0));
    assert!(
        m.last_failure_reasons[0].contains("commit refused (code 7): test refuses commit"),
        "{:?}",
        m.last_failure_reasons
    );
    assert_eq!(m.bytes_relayed_by_shell.c_to_b, 20 << 20);
    assert_eq!(m.bytes_relayed_by_shell.b_to_c, 20 << 20);
    // The shell went through the whole protocol (at least once; a later attempt may stop
    // earlier, e.g. when the connection is closing), then gave the stitch back each time.
    let tries = m.failed_handoffs as usize;
    let count = |f: fn(&Message) -> bool| sw.count(f);
    let log = sw.messages();
    let commits = count(|m| matches!(m, Message::Commit(_)));
    assert!(
        (1..=tries).contains(&commits),
        "{commits} commits in {tries} tries"
    );
    assert!((commits..=tries).contains(&count(|m| matches!(m, Message::Prepare(_)))));
    assert!((commits..=tries).contains(&count(|m| matches!(m, Message::Freeze { .. }))));
    assert!(count(|m| matches!(m, Message::Abort { stitch_id: 100 })) >= commits);
    let Some(Message::Prepare(p)) = log.iter().find(|m| matches!(m, Message::Prepare(_))) else {
        unreachable!()
    };
    assert_eq!(p.teardown, Teardown::B);
    assert_eq!(p.shell_a, shell.listen_addrs()[0]);
    assert_eq!(
        p.core.port(),
        m.core.rsplit(':').next().unwrap().parse::<u16>().unwrap()
    );
}

#[test]
fn unreachable_switch_times_out_and_the_transfer_completes() {
    let dir = tempfile::tempdir().unwrap();
    let black_hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sw = FakeSwitch::start(CommitAnswer::Accept, Some(black_hole.local_addr().unwrap()));
    let core = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = shell_config(
        sw.addr,
        core.local_addr().unwrap(),
        &dir.path().join("s.sock"),
        "bypass = { policy = \"immediate\" }",
    );
    let shell = Shell::start(cfg, Arc::new(AtomicBool::new(false))).unwrap();
    transfer_through(&shell, core, 1 << 20, |s| {
        s.mappings[0].failed_handoffs >= 1
    });
    let st = shell.status();
    let m = &st.mappings[0];
    assert_eq!(m.bypassed, 0);
    assert!((1..=5).contains(&m.failed_handoffs), "{m:?}");
    assert!(
        m.last_failure_reasons[0].starts_with("prepare: no reply from"),
        "{:?}",
        m.last_failure_reasons
    );
}

#[test]
fn silent_switch_means_stitching_not_available_and_plain_relaying() {
    let dir = tempfile::tempdir().unwrap();
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let core = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = shell_config(
        silent.local_addr().unwrap(),
        core.local_addr().unwrap(),
        &dir.path().join("s.sock"),
        "bypass = { policy = \"immediate\" }",
    );
    let t = Instant::now();
    let shell = Shell::start(cfg, Arc::new(AtomicBool::new(false))).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "waited probe_timeout_ms"
    );
    let st = shell.status();
    assert!(
        st.stitching.starts_with("not available: no reply to probe"),
        "{}",
        st.stitching
    );
    assert!(st.mappings[0].stitching.starts_with("not available"));
    assert!(st.switch.is_none());
    transfer_through(&shell, core, 256 << 10, |s| s.mappings[0].connections == 1);
    let m = &shell.status().mappings[0];
    assert_eq!((m.bypassed, m.failed_handoffs), (0, 0));
}

/// Starts a shell with an accepting fake switch, opens one connection and waits until
/// it is handed off. Returns the shell, the switch, the client and core sockets.
fn stitched(
    variant: &str,
    extra: &str,
) -> (tempfile::TempDir, FakeSwitch, Shell, TcpStream, TcpStream) {
    stitched_with(variant, extra, |_| {})
}

/// [`stitched`], with `tweak` applied to the shell's configuration before it starts.
fn stitched_with(
    variant: &str,
    extra: &str,
    tweak: impl FnOnce(&mut ShellConfig),
) -> (tempfile::TempDir, FakeSwitch, Shell, TcpStream, TcpStream) {
    let (dir, sw, core, shell) = start_relay(
        CommitAnswer::Accept,
        &format!(
            "bypass = {{ policy = \"after_bytes\", value = 6 }}\nteardown = \"{variant}\"\n{extra}"
        ),
        tweak,
    );
    let (client, server) = hello(&shell, &core);
    wait_for("the hand-off", Duration::from_secs(10), || {
        shell.status().mappings[0].active_stitched == 1
    });
    (dir, sw, shell, client, server)
}

/// A fake switch answering commits with `answer`, a core listener, and a shell between
/// them with `mapping_extra` in its mapping (and `tweak` applied); stitching available.
fn start_relay(
    answer: CommitAnswer,
    mapping_extra: &str,
    tweak: impl FnOnce(&mut ShellConfig),
) -> (tempfile::TempDir, FakeSwitch, TcpListener, Shell) {
    let dir = tempfile::tempdir().unwrap();
    captured_log();
    let sw = FakeSwitch::start(answer, None);
    let core = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = shell_config(
        sw.addr,
        core.local_addr().unwrap(),
        &dir.path().join("s.sock"),
        mapping_extra,
    );
    tweak(&mut cfg);
    let shell = Shell::start(cfg, Arc::new(AtomicBool::new(false))).unwrap();
    assert_eq!(
        shell.status().stitching,
        "available",
        "{:?}",
        shell.status()
    );
    (dir, sw, core, shell)
}

/// One connection through the shell carrying "hello!" to the core: (client, core side).
fn hello(shell: &Shell, core: &TcpListener) -> (TcpStream, TcpStream) {
    let mut client = TcpStream::connect(shell.listen_addrs()[0]).unwrap();
    let (mut server, _) = core.accept().unwrap();
    client.write_all(b"hello!").unwrap();
    let mut buf = [0u8; 6];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello!");
    (client, server)
}

#[test]
fn committed_stitch_is_freed_by_an_acked_teardown_notice() {
    let (_dir, sw, shell, _client, _server) = stitched("4B", "");
    let log = sw.messages();
    let Some(Message::Commit(c)) = log.iter().find(|m| matches!(m, Message::Commit(_))) else {
        panic!("no commit")
    };
    // The relay is pure: what the shell expects from C next (r1) and sends to B next
    // (s2) are 6 bytes past their starts; nothing else is checkable here.
    assert_eq!(c.stitch_id, 100);
    assert_eq!(c.timestamps, Some((true, true)));
    let st = shell.status();
    assert_eq!(
        (st.mappings[0].bypassed, st.mappings[0].active_relayed),
        (1, 0)
    );
    // 4B: the switch tells the shell, with the bytes it carried.
    let mut req = Requester::for_peer(shell.agent_addr(), keys()).unwrap();
    let td = TeardownMsg {
        stitch_id: 100,
        from: Side::Client,
        kind: EndKind::Fin,
        variant: Teardown::B,
        to: Side::Shell,
        legs: None,
        bytes: Some((111, 222)),
    };
    let (answer, _) = req
        .request(shell.agent_addr(), &Message::Teardown(td.clone()), None)
        .unwrap();
    expect_ok(answer).unwrap();
    // The acknowledgement goes out on receipt; freeing follows at once.
    wait_for("the stitch to be freed", Duration::from_secs(2), || {
        shell.status().mappings[0].active_stitched == 0
    });
    let st = shell.status();
    let m = &st.mappings[0];
    assert_eq!(
        (m.bytes_by_switch.c_to_b, m.bytes_by_switch.b_to_c),
        (111, 222)
    );
    assert_eq!(st.teardown.notices, 1);
    // A notice for a stitch the shell does not hold is still acknowledged, and counted.
    let (answer, _) = req
        .request(shell.agent_addr(), &Message::Teardown(td), None)
        .unwrap();
    expect_ok(answer).unwrap();
    wait_for("the unmatched count", Duration::from_secs(2), || {
        shell.status().teardown.unmatched == 1
    });
}

#[test]
fn a_teardown_notice_that_overtakes_the_commit_answer_still_frees_the_stitch() {
    // The switch can end a stitch before the shell has the commit's answer (a FIN held
    // during the freeze goes out at commit; a lost answer is retransmitted seconds later):
    // the early notice is kept and applied once the stitch is recorded.
    let (_dir, sw, core, shell) = start_relay(
        CommitAnswer::Accept,
        "bypass = { policy = \"after_bytes\", value = 6 }\nteardown = \"4B\"\n",
        |_| {},
    );
    *sw.notice_before_commit.lock().unwrap() = Some(shell.agent_addr());
    let (_client, _server) = hello(&shell, &core);
    wait_for("the hand-off", Duration::from_secs(10), || {
        shell.status().mappings[0].bypassed == 1
    });
    wait_for("the stitch to be freed", Duration::from_secs(2), || {
        shell.status().mappings[0].active_stitched == 0
    });
    let st = shell.status();
    let m = &st.mappings[0];
    assert_eq!(
        (m.bytes_by_switch.c_to_b, m.bytes_by_switch.b_to_c),
        (333, 444),
        "{st:?}"
    );
    // Counted as unmatched when it arrived, then applied.
    assert_eq!((st.teardown.notices, st.teardown.unmatched), (1, 1));
}

#[test]
fn a_stitch_the_switch_forgot_is_freed_by_the_next_heartbeat() {
    // 4E: only FIN copies end it; if they never arrive, the heartbeat must.
    let (_dir, sw, shell, _client, _server) = stitched_with("4E", "", |c| {
        c.heartbeat = Duration::from_secs(1);
    });
    assert_eq!(shell.status().teardown.forgotten_by_switch, 0);
    sw.forget.store(true, Ordering::SeqCst);
    wait_for(
        "the heartbeat to free the stitch",
        Duration::from_secs(5),
        || shell.status().mappings[0].active_stitched == 0,
    );
    assert_eq!(shell.status().teardown.forgotten_by_switch, 1);
}

#[test]
fn core_agent_4c_notice_frees_the_stitch_by_its_legs() {
    let (_dir, _sw, shell, _client, server) = stitched("4C", "");
    let core_cfg = CoreConfig::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\nkey_id = {KEY_ID}\nkey = \"{KEY}\"\nshell_port = {}\n",
        shell.agent_addr().port()
    ))
    .unwrap();
    let (agent, _rx) = CoreAgent::start(&core_cfg).unwrap();
    agent
        .connection_closed(
            server.local_addr().unwrap(),
            server.peer_addr().unwrap(),
            Teardown::C,
        )
        .unwrap();
    wait_for("the stitch to be freed", Duration::from_secs(2), || {
        shell.status().mappings[0].active_stitched == 0
    });
    let st = shell.status();
    assert_eq!((st.teardown.notices, st.teardown.unmatched), (1, 0));
}

#[test]
fn fin_watcher_in_4d_tells_the_core_and_frees_after_both_fins() {
    let core_cfg = CoreConfig::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\nkey_id = {KEY_ID}\nkey = \"{KEY}\"\n"
    ))
    .unwrap();
    let (agent, rx) = CoreAgent::start(&core_cfg).unwrap();
    let (_dir, _sw, shell, client, server) = stitched(
        "4D",
        &format!("core_agent_port = {}", agent.local_addr().port()),
    );
    assert_eq!(shell.status().fin_watcher, "running");
    let (client_addr, a1) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    // The client closes: its FIN reaches A1 (on loopback nothing translates it, which
    // is exactly the untranslated copy of figure 4D).
    drop(client);
    let n = rx.recv_timeout(Duration::from_secs(5)).expect("core told");
    assert_eq!(
        (n.from, n.kind, n.variant, n.to),
        (Side::Client, EndKind::Fin, Teardown::D, Side::Core)
    );
    assert_eq!(n.stitch_id, 100);
    let legs = n.legs.unwrap();
    assert_eq!((legs[0], legs[1]), (client_addr, a1));
    assert_eq!(legs[3], server.local_addr().unwrap());
    assert_eq!(
        shell.status().mappings[0].active_stitched,
        1,
        "half-closed: kept"
    );
    drop(server);
    wait_for("both FINs", Duration::from_secs(5), || {
        shell.status().mappings[0].active_stitched == 0
    });
    let st = shell.status();
    assert!(st.teardown.fins_seen >= 2);
    wait_for("the 4D notice ack", Duration::from_secs(5), || {
        shell.status().teardown.core_notified >= 1
    });
}

#[test]
fn status_socket_prints_the_documented_shape() {
    let (dir, _sw, shell, _client, _server) = stitched("4B", "");
    let text = stitch_shell::status::fetch(&dir.path().join("s.sock")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["stitching"], "available");
    assert!(v["cpu_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(v["switch"]["switch_id"], "fake");
    let m = &v["mappings"][0];
    for k in [
        "connections",
        "relayed",
        "bypassed",
        "failed_handoffs",
        "active_stitched",
    ] {
        assert!(m[k].is_u64(), "{k} in {m}");
    }
    assert_eq!(m["bypassed"], 1);
    assert_eq!(m["bytes_relayed_by_shell"]["c_to_b"], 6);
    assert!(m["bytes_by_switch"]["b_to_c"].is_u64());
    assert!(m["last_failure_reasons"].is_array());
    let h = &m["handoffs"];
    assert_eq!(
        (h["attempted"].as_u64(), h["committed"].as_u64()),
        (Some(1), Some(1))
    );
    for k in ["failed", "deferred_not_ready", "given_up"] {
        assert_eq!(h[k], 0, "{k} in {h}");
    }
    assert!(h["failed_by_reason"].is_object());
    let t = &h["freeze_to_commit_ms"];
    assert_eq!(t["count"], 1);
    assert_eq!(
        t["counts"].as_array().unwrap().len(),
        t["bounds_ms"].as_array().unwrap().len() + 1
    );
    // And it parses back into the typed status.
    let typed: ShellStatus = serde_json::from_str(&text).unwrap();
    assert_eq!(typed.mappings[0].bypassed, 1);
    drop(shell);
    assert!(
        !dir.path().join("s.sock").exists(),
        "socket removed at shutdown"
    );
}

/// Echoes everything the core side receives until EOF.
fn echo(mut s: TcpStream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Sends `len` bytes (from `seed`) through the shell to an echoing core and checks they
/// come back exactly.
fn ping(client: &mut TcpStream, seed: u64, len: usize) {
    let out = data(seed, len);
    client.write_all(&out).unwrap();
    let mut back = vec![0u8; len];
    client.read_exact(&mut back).unwrap();
    assert!(back == out, "echo {seed} intact");
}

/// `len` bytes through the shell to an echoing core and back, written and read at
/// the same time; checks the SHA-256 of what came back.
fn bulk_echo(client: &TcpStream, len: usize) {
    let out = data(99, len);
    let want = sha(&[&out]);
    let mut w = client.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&out).unwrap());
    let mut r = client.try_clone().unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    while got < len {
        let n = r.read(&mut buf[..(len - got).min(65536)]).unwrap();
        assert!(n > 0, "early EOF after {got} bytes");
        h.update(&buf[..n]);
        got += n;
    }
    writer.join().unwrap();
    assert_eq!(h.finalize().to_vec(), want, "{len} bytes echoed intact");
}

const AFTER_6_BYTES: &str = "bypass = { policy = \"after_bytes\", value = 6 }\nteardown = \"4B\"";

#[test]
fn a_quiet_connection_is_not_frozen_until_both_legs_have_sent() {
    let (_dir, sw, core, shell) = start_relay(CommitAnswer::Accept, AFTER_6_BYTES, |c| {
        c.handoff.provoke_idle_legs = false;
        c.handoff.ready_wait = Duration::from_secs(30);
    });
    let (mut client, mut server) = hello(&shell, &core);
    wait_for("the prepare", Duration::from_secs(10), || {
        sw.count(is_prepare) == 1
    });
    // Request/response between requests: neither end sends. The switch could not
    // commit, so the shell does not freeze.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        sw.count(is_freeze),
        0,
        "nothing seen since prepare: no freeze"
    );
    let m = shell.status().mappings[0].clone();
    assert_eq!(
        (m.handoffs.attempted, m.bypassed, m.failed_handoffs),
        (1, 0, 0),
        "{m:?}"
    );
    assert_eq!(m.handoffs.deferred_not_ready, 0);
    // The next request: C sends, B acknowledges what the shell relays. Both seen.
    let resumed = Instant::now();
    client.write_all(b"again!").unwrap();
    let mut buf = [0u8; 6];
    server.read_exact(&mut buf).unwrap();
    wait_for("the hand-off", Duration::from_secs(10), || {
        shell.status().mappings[0].active_stitched == 1
    });
    let frozen = sw.times(is_freeze);
    assert_eq!(frozen.len(), 1);
    assert!(frozen[0] >= resumed, "frozen only after both legs sent");
    assert_eq!(
        sw.count(is_prepare),
        1,
        "the stitch prepared first was used"
    );
    let m = shell.status().mappings[0].clone();
    assert_eq!((m.handoffs.attempted, m.handoffs.committed), (1, 1));
}

#[test]
fn a_quiet_leg_is_provoked_by_a_keepalive_and_the_hand_off_completes() {
    let (_dir, sw, core, shell) = start_relay(CommitAnswer::Accept, AFTER_6_BYTES, |c| {
        c.handoff.ready_wait = Duration::from_secs(10);
    });
    let (_client, _server) = hello(&shell, &core);
    // Nothing more is sent by either application.
    wait_for("the hand-off", Duration::from_secs(10), || {
        shell.status().mappings[0].active_stitched == 1
    });
    let (prepared, frozen) = (sw.times(is_prepare), sw.times(is_freeze));
    assert_eq!((prepared.len(), frozen.len()), (1, 1));
    // C was quiet since prepare; the keepalive (1 s idle) made it answer.
    let waited = frozen[0].duration_since(prepared[0]);
    assert!(
        waited >= Duration::from_millis(900),
        "froze after {waited:?}"
    );
    let m = shell.status().mappings[0].clone();
    assert_eq!(
        (
            m.handoffs.attempted,
            m.handoffs.committed,
            m.handoffs.deferred_not_ready
        ),
        (1, 1, 0)
    );
}

#[test]
fn a_leg_that_stays_quiet_is_given_back_unfrozen_and_the_shell_gives_up_after_the_bound() {
    let (_dir, sw, core, shell) = start_relay(CommitAnswer::Accept, AFTER_6_BYTES, |c| {
        c.handoff.provoke_idle_legs = false;
        c.handoff.ready_wait = Duration::from_millis(200);
        c.handoff.max_attempts = 3;
        c.handoff.backoff = Duration::from_millis(50);
    });
    let (mut client, server) = hello(&shell, &core);
    wait_for("the shell to give up", Duration::from_secs(10), || {
        shell.status().mappings[0].handoffs.given_up == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let m = shell.status().mappings[0].clone();
    let h = &m.handoffs;
    assert_eq!(
        (h.attempted, h.deferred_not_ready, h.failed, h.committed),
        (3, 3, 0, 0),
        "{m:?}"
    );
    // Each attempt: Prepare, then Abort; never a Freeze. None after the bound.
    assert_eq!(
        (
            sw.count(is_prepare),
            sw.count(is_abort),
            sw.count(is_freeze)
        ),
        (3, 3, 0)
    );
    // The connection is relayed, every byte.
    let echoing = echo(server);
    ping(&mut client, 1, 1000);
    bulk_echo(&client, 2 << 20);
    assert_eq!(sw.count(is_prepare), 3, "no attempt after giving up");
    drop(client);
    echoing.join().unwrap();
    let lines = log_lines(shell.listen_addrs()[0]);
    assert_eq!(outcomes(&lines, "start").len(), 3);
    let deferred = outcomes(&lines, "deferred_not_ready");
    assert_eq!(deferred.len(), 3, "{lines:?}");
    assert!(deferred
        .iter()
        .all(|l| l["not_seen"].as_str().is_some_and(|s| !s.is_empty())));
    assert_eq!(outcomes(&lines, "given_up").len(), 1);
}

#[test]
fn refused_commits_back_off_doubling_to_the_cap_then_the_shell_gives_up_and_relays_every_byte() {
    let (_dir, sw, core, shell) = start_relay(CommitAnswer::Refuse, AFTER_6_BYTES, |c| {
        c.handoff.max_attempts = 5;
        c.handoff.backoff = Duration::from_millis(100);
        c.handoff.backoff_max = Duration::from_millis(400);
    });
    let (mut client, server) = hello(&shell, &core);
    let echoing = echo(server);
    // A request every 100 ms: both legs are seen soon after each prepare, and the relay
    // is quiet long enough between requests to drain.
    let t = Instant::now();
    let mut n = 0;
    while shell.status().mappings[0].handoffs.given_up == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "never gave up");
        ping(&mut client, n, 200);
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (prepares, aborts) = (sw.times(is_prepare), sw.times(is_abort));
    assert_eq!(prepares.len(), 5);
    assert!(aborts.len() >= 4);
    // From the Abort of attempt i to the Prepare of attempt i + 1: at least the back-off
    // (the schedule itself is in the log lines below; an upper bound only catches gross
    // errors, this machine is shared).
    let gaps: Vec<Duration> = (0..4)
        .map(|i| prepares[i + 1].duration_since(aborts[i]))
        .collect();
    for (gap, want) in gaps.iter().zip([100u64, 200, 400, 400]) {
        let want = Duration::from_millis(want);
        assert!(
            *gap >= want && *gap < want + Duration::from_secs(1),
            "gaps {gaps:?}: want about {want:?}"
        );
    }
    let m = shell.status().mappings[0].clone();
    let h = &m.handoffs;
    assert_eq!(
        (h.attempted, h.failed, h.committed, h.given_up),
        (5, 5, 0, 1)
    );
    assert_eq!(
        h.failed_by_reason.get("commit_refused_seq_mismatch"),
        Some(&5),
        "{h:?}"
    );
    assert_eq!(m.failed_handoffs, 5);
    // Still relayed, byte-exact, and no more attempts.
    bulk_echo(&client, 4 << 20);
    ping(&mut client, 1000, 1);
    assert_eq!(sw.count(is_prepare), 5);
    assert_eq!(sw.count(is_commit), 5);
    drop(client);
    echoing.join().unwrap();
    let lines = log_lines(shell.listen_addrs()[0]);
    let failed = outcomes(&lines, "failed");
    assert_eq!(failed.len(), 5, "{lines:?}");
    // Doubling from 100 ms to the 400 ms cap; none after the last attempt.
    let retry: Vec<Option<f64>> = failed.iter().map(|l| l["retry_in_ms"].as_f64()).collect();
    assert_eq!(
        retry,
        [Some(100.0), Some(200.0), Some(400.0), Some(400.0), None]
    );
    for l in &failed {
        assert_eq!(l["reason_key"], "commit_refused_seq_mismatch");
        assert!(l["reason"]
            .as_str()
            .unwrap()
            .contains("commit refused (code 7): test refuses commit"));
        assert!(l["frozen_ms"].as_f64().is_some(), "{l}");
    }
    assert_eq!(outcomes(&lines, "given_up").len(), 1);
}

#[test]
fn every_hand_off_outcome_is_counted_logged_as_json_and_timed() {
    let (_dir, _sw, core, shell) = start_relay(CommitAnswer::RefuseFirst(1), AFTER_6_BYTES, |_| {});
    let (client, _server) = hello(&shell, &core);
    wait_for(
        "the second attempt to commit",
        Duration::from_secs(20),
        || shell.status().mappings[0].active_stitched == 1,
    );
    let m = shell.status().mappings[0].clone();
    let h = &m.handoffs;
    assert_eq!(
        (
            h.attempted,
            h.committed,
            h.failed,
            h.deferred_not_ready,
            h.given_up
        ),
        (2, 1, 1, 0, 0),
        "{m:?}"
    );
    assert_eq!(m.bypassed, 1);
    assert_eq!(
        h.failed_by_reason.iter().collect::<Vec<_>>(),
        [(&"commit_refused_seq_mismatch".to_string(), &1)]
    );
    let t = &h.freeze_to_commit_ms;
    assert_eq!((t.count, t.counts.iter().sum::<u64>()), (1, 1));
    assert_eq!(t.counts.len(), t.bounds_ms.len() + 1);
    assert!(t.max_ms > 0.0 && t.sum_ms == t.max_ms);
    let lines = log_lines(shell.listen_addrs()[0]);
    for l in &lines {
        assert!(l["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
        assert!(l["level"].is_string() && l["target"].is_string() && l["msg"].is_string());
    }
    let me = client.local_addr().unwrap().to_string();
    let starts = outcomes(&lines, "start");
    assert_eq!(starts.len(), 2, "{lines:?}");
    assert_eq!(
        (starts[0]["attempt"].as_u64(), starts[1]["attempt"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(starts.iter().all(|l| l["client"] == me));
    let failed = outcomes(&lines, "failed");
    assert_eq!(failed.len(), 1);
    let f = &failed[0];
    assert_eq!(
        (f["stitch_id"].as_u64(), f["attempt"].as_u64()),
        (Some(100), Some(1))
    );
    assert_eq!(f["reason_key"], "commit_refused_seq_mismatch");
    assert!(f["reason"]
        .as_str()
        .unwrap()
        .contains("test refuses commit"));
    assert_eq!(f["retry_in_ms"].as_f64(), Some(50.0));
    assert_eq!(f["level"], "WARN");
    let committed = outcomes(&lines, "committed");
    assert_eq!(committed.len(), 1);
    let c = &committed[0];
    assert_eq!(
        (c["stitch_id"].as_u64(), c["attempt"].as_u64()),
        (Some(101), Some(2))
    );
    let ms = c["freeze_to_commit_ms"].as_f64().unwrap();
    assert!(ms > 0.0 && (ms - t.max_ms).abs() < 0.01, "{c} vs {t:?}");
}
