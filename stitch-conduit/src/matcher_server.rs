//! The centralized matching server: a UDP socket around a [`Matcher`], and an optional
//! Unix control socket.
//!
//! Every datagram is opened with the scope keys and the replay guard before anything
//! else; a refused datagram is logged with its reason (a wrong key shows as "bad message
//! authentication tag") and counted per reason. Publications go to the matcher with the
//! arrival time; verdicts are sealed with the key of the receiver's scope and sent back.
//! Every verdict and refusal is logged on stderr and kept in a bounded list of recent
//! events that the control socket shows (`{"cmd":"stats"}`), so refusals are visible
//! both ways.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

use agent_proto::ReplayGuard;
use serde::Serialize;

use crate::conduit::unix_ms;
use crate::config::MatcherConfig;
use crate::envelope::{fresh_nonce, open, seal};
use crate::matcher::{Matcher, MatcherStats};
use crate::msg::Message;

/// Recent events kept for the control socket.
pub const RECENT_EVENTS: usize = 128;

/// What the control socket shows.
#[derive(Debug, Default, Serialize)]
struct Status {
    stats: MatcherStats,
    /// Datagrams refused before matching, by reason.
    refused: BTreeMap<&'static str, u64>,
    /// The last [`RECENT_EVENTS`] verdicts and refusals, oldest first.
    recent: VecDeque<String>,
}

impl Status {
    fn event(&mut self, line: String) {
        eprintln!("matcher: {line}");
        if self.recent.len() >= RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }
}

fn status(s: &Mutex<Status>) -> std::sync::MutexGuard<'_, Status> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds (and the control socket when given), prints `matcher listening on ADDR` on
/// stderr, and serves forever.
///
/// # Errors
/// The I/O error when a socket cannot be bound.
pub fn run(cfg: MatcherConfig, control: Option<PathBuf>) -> io::Result<()> {
    let named = |what: String| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let sock = UdpSocket::bind(cfg.file.listen)
        .map_err(named(format!("cannot bind {}", cfg.file.listen)))?;
    let shared = Arc::new(Mutex::new(Status::default()));
    if let Some(path) = control {
        let _ = std::fs::remove_file(&path);
        let l =
            UnixListener::bind(&path).map_err(named(format!("cannot bind {}", path.display())))?;
        let shared = shared.clone();
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                let shared = shared.clone();
                thread::spawn(move || control_conn(&shared, c));
            }
        });
    }
    let scopes = cfg.scopes.clone();
    let mut matcher = Matcher::new(cfg.scopes, cfg.file.capacity, cfg.file.ttl_ms);
    let mut guard = ReplayGuard::new(cfg.file.capacity.max(1024));
    eprintln!("matcher listening on {}", sock.local_addr()?);
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let now = unix_ms();
        let o = match open(&buf[..n], &scopes, &mut guard, now) {
            Ok(o) => o,
            Err(e) => {
                let mut st = status(&shared);
                *st.refused.entry(e.counter_name()).or_default() += 1;
                st.event(format!("refused datagram from {from}: {e}"));
                continue;
            }
        };
        match o.msg {
            Message::Publish { desc, stitch_addr } => {
                let verdicts = matcher.publish(from, o.key_id, desc, stitch_addr, now);
                let mut st = status(&shared);
                st.event(format!(
                    "publish from {from}: {} global id {} scope {}",
                    desc.tuple,
                    desc.global_id,
                    scopes.name_of(desc.scope)
                ));
                for (to, v) in verdicts {
                    if let Message::Verdict { desc, outcome } = &v {
                        st.event(format!("verdict to {to} for {}: {outcome:?}", desc.tuple));
                    }
                    // Sealed with the key of the receiver's own scope (a different-scope
                    // notice goes to a member of the other scope).
                    let key_id = match &v {
                        Message::Verdict { desc, .. } => desc.scope,
                        _ => o.key_id,
                    };
                    let sealed = fresh_nonce().and_then(|nonce| {
                        seal(&v, key_id, unix_ms(), nonce, &scopes)
                            .map_err(|e| io::Error::other(e.to_string()))
                    });
                    match sealed {
                        Ok(b) => {
                            let _ = sock.send_to(&b, to);
                        }
                        Err(e) => st.event(format!("cannot seal verdict: {e}")),
                    }
                }
                st.stats = matcher.stats();
            }
            Message::Withdraw { desc } => {
                matcher.withdraw(o.key_id, desc);
                status(&shared).event(format!("withdraw from {from}: {}", desc.tuple));
            }
            other => status(&shared).event(format!("ignored {other:?} from {from}")),
        }
    }
}

fn control_conn(shared: &Mutex<Status>, c: UnixStream) {
    let Ok(mut w) = c.try_clone() else { return };
    for line in BufReader::new(c).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) if v["cmd"] == "stats" => {
                let st = status(shared);
                serde_json::json!({ "ok": true, "stats": st.stats, "refused": st.refused, "recent": st.recent })
            }
            Ok(_) => {
                serde_json::json!({ "ok": false, "error": "unknown command (try {\"cmd\":\"stats\"})" })
            }
            Err(e) => serde_json::json!({ "ok": false, "error": format!("bad request: {e}") }),
        };
        if w.write_all(format!("{answer}\n").as_bytes()).is_err() {
            return;
        }
    }
}
