//! The centralized matching server: a UDP socket around a [`Matcher`].
//!
//! Every datagram is opened with the scope keys and the replay guard before anything
//! else; a refused datagram is logged with its reason (wrong key shows as "bad message
//! authentication tag") and counted. Publications go to the matcher with the arrival
//! time; verdicts are sealed with the scope's key and sent back. Every verdict is
//! logged on stderr, so refusals are visible.

use std::collections::BTreeMap;
use std::io;
use std::net::UdpSocket;

use agent_proto::ReplayGuard;

use crate::conduit::unix_ms;
use crate::config::MatcherConfig;
use crate::envelope::{fresh_nonce, open, seal};
use crate::matcher::Matcher;
use crate::msg::Message;

/// Binds, prints `matcher listening on ADDR` on stderr, and serves forever.
///
/// # Errors
/// The I/O error when the socket cannot be bound.
pub fn run(cfg: MatcherConfig) -> io::Result<()> {
    let sock = UdpSocket::bind(cfg.file.listen)?;
    let scopes = cfg.scopes.clone();
    let mut matcher = Matcher::new(cfg.scopes, cfg.file.capacity, cfg.file.ttl_ms);
    let mut guard = ReplayGuard::new(cfg.file.capacity.max(1024));
    let mut refused: BTreeMap<&'static str, u64> = BTreeMap::new();
    eprintln!("matcher listening on {}", sock.local_addr()?);
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let now = unix_ms();
        let o = match open(&buf[..n], &scopes, &mut guard, now) {
            Ok(o) => o,
            Err(e) => {
                *refused.entry(e.counter_name()).or_default() += 1;
                eprintln!(
                    "matcher: refused datagram from {from}: {e} (refused so far: {refused:?})"
                );
                continue;
            }
        };
        match o.msg {
            Message::Publish { desc, stitch_addr } => {
                eprintln!(
                    "matcher: publish from {from}: {} global id {} scope {}",
                    desc.tuple,
                    desc.global_id,
                    scopes.name_of(desc.scope)
                );
                for (to, v) in matcher.publish(from, o.key_id, desc, stitch_addr, now) {
                    if let Message::Verdict { desc, outcome } = &v {
                        eprintln!("matcher: verdict to {to} for {}: {outcome:?}", desc.tuple);
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
                        Err(e) => eprintln!("matcher: cannot seal verdict: {e}"),
                    }
                }
                eprintln!("matcher: stats {:?}", matcher.stats());
            }
            Message::Withdraw { desc } => {
                eprintln!("matcher: withdraw from {from}: {}", desc.tuple);
                matcher.withdraw(o.key_id, desc);
            }
            other => eprintln!("matcher: ignored {other:?} from {from}"),
        }
    }
}
