//! `stitch-core`: the agent on the core (B) of a stitched connection, and the
//! agent-protocol transport both endpoint agents share.
//!
//! Once the switch has stitched C <-> A <-> B into C <-> B, the core application's TCP
//! connection looks like any other: it cannot tell that the shell (A) is gone from the
//! path. When that connection ends, the parties must still all learn of it (seed 001,
//! figures 4B-4E):
//!
//! - **4B** the switch tells the core with a `TeardownMsg{to: Core}`;
//! - **4C** the core application sees the translated FIN (EOF) and tells the shell:
//!   [`CoreAgent::connection_closed`] sends `TeardownMsg{to: Shell}` naming the
//!   connection by its legs (the core never learns the stitch id);
//! - **4D** the shell sees the untranslated FIN and tells the core (`to: Core`);
//! - **4E** the core sees the FIN itself; nobody sends it a message.
//!
//! [`CoreAgent`] listens on UDP 4791 (configurable), authenticates every datagram
//! with the scope's key (`agent-proto`: HMAC, time window, replay guard), acknowledges
//! each notice with `Reply::ok` (senders retransmit until acknowledged), delivers each
//! notice ONCE on a channel ([`TeardownNotice`]), and counts what it refused.
//!
//! Blocking std sockets and one thread; no unsafe code.

#![forbid(unsafe_code)]

pub mod names;
pub mod transport;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use agent_proto::{EndKind, Side, Teardown};
use agent_proto::{KeyError, Message, TeardownMsg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use transport::{
    AgentCounters, AgentKeys, CountersSnapshot, Received, Requester, Responder, SendError,
};

/// UDP port agents listen on unless configured.
pub const AGENT_PORT: u16 = 4791;

/// `stitch-core` configuration (TOML, unknown keys refused).
///
/// ```toml
/// listen = "0.0.0.0:4791"   # where teardown notices arrive (default)
/// key_id = 7                # matching scope
/// key = "<64 hex digits>"
/// shell_port = 4791         # the shell agent's port, for 4C notices (default)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoreConfig {
    /// Where teardown notices arrive.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Key id of the matching scope.
    pub key_id: u32,
    /// The scope's key, 64 hex digits.
    pub key: String,
    /// UDP port of shell agents (4C notices go to the connection's peer IP, this port).
    #[serde(default = "default_agent_port")]
    pub shell_port: u16,
}

fn default_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), AGENT_PORT)
}

fn default_agent_port() -> u16 {
    AGENT_PORT
}

impl CoreConfig {
    /// Parses a TOML configuration and checks the key.
    ///
    /// # Errors
    /// [`CoreError::Config`] for syntax, unknown or missing keys, [`CoreError::Key`] for
    /// a key that is not 64 hex digits.
    pub fn from_toml(text: &str) -> Result<CoreConfig, CoreError> {
        let c: CoreConfig = toml::from_str(text).map_err(|e| CoreError::Config(e.to_string()))?;
        AgentKeys::from_hex(c.key_id, &c.key)?;
        Ok(c)
    }

    /// Reads and parses a configuration file.
    ///
    /// # Errors
    /// As [`CoreConfig::from_toml`], plus the file not being readable.
    pub fn load(path: &Path) -> Result<CoreConfig, CoreError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CoreError::Config(format!("{}: {e}", path.display())))?;
        CoreConfig::from_toml(&text)
    }
}

/// Why the core agent could not start.
#[derive(Debug, Error)]
pub enum CoreError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The key is not 64 hex digits.
    #[error("key: {0}")]
    Key(#[from] KeyError),
    /// The socket could not be bound.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// A stitched connection ended: what the core application is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeardownNotice {
    /// The switch's stitch id (0 when the sender did not know it).
    pub stitch_id: u32,
    /// The legs (client C, shell A1, shell A2, core B), when the sender knew them.
    pub legs: Option<[SocketAddr; 4]>,
    /// Which end started the teardown.
    pub from: Side,
    /// How it ended.
    pub kind: EndKind,
    /// The stitch's teardown variant.
    pub variant: Teardown,
    /// Whom the message was for.
    pub to: Side,
    /// Bytes the switch carried (C->B, B->C), when the sender was the switch.
    pub bytes: Option<(u64, u64)>,
    /// Who sent the notice (the switch, or the shell agent).
    pub sender: SocketAddr,
}

impl TeardownNotice {
    /// The notice for a received message.
    pub fn new(msg: TeardownMsg, sender: SocketAddr) -> TeardownNotice {
        TeardownNotice {
            stitch_id: msg.stitch_id,
            legs: msg.legs,
            from: msg.from,
            kind: msg.kind,
            variant: msg.variant,
            to: msg.to,
            bytes: msg.bytes,
            sender,
        }
    }

    /// One JSON object (the binary prints one a line).
    pub fn to_json(&self) -> serde_json::Value {
        let legs = self.legs.map(|l| {
            serde_json::json!({
                "client": l[0].to_string(), "shell_a": l[1].to_string(),
                "shell_b": l[2].to_string(), "core": l[3].to_string(),
            })
        });
        let bytes = self
            .bytes
            .map(|(cb, bc)| serde_json::json!({"c_to_b": cb, "b_to_c": bc}));
        serde_json::json!({
            "stitch_id": self.stitch_id,
            "from": names::side(self.from),
            "kind": names::end_kind(self.kind),
            "variant": names::variant(self.variant),
            "to": names::side(self.to),
            "legs": legs,
            "bytes": bytes,
            "sender": self.sender.to_string(),
        })
    }
}

/// The unspecified address of `like`'s family, port 0: a leg the sender does not know.
pub fn unknown_leg(like: &SocketAddr) -> SocketAddr {
    match like {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// `a` with an IPv4-mapped IPv6 address turned into plain IPv4 (what the switch sees on
/// the wire), flow label and scope id dropped.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The running core agent. Dropping it stops the listener thread.
#[derive(Debug)]
pub struct CoreAgent {
    local: SocketAddr,
    keys: AgentKeys,
    shell_port: u16,
    counters: Arc<AgentCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CoreAgent {
    /// Binds the listen address and starts the listener thread. Every acknowledged
    /// notice arrives once on the returned receiver.
    ///
    /// # Errors
    /// A bad key or a socket that cannot be bound.
    pub fn start(config: &CoreConfig) -> Result<(CoreAgent, Receiver<TeardownNotice>), CoreError> {
        let keys = AgentKeys::from_hex(config.key_id, &config.key)?;
        let mut responder =
            Responder::bind(config.listen, keys.clone(), Duration::from_millis(50))?;
        let local = responder.local_addr()?;
        let counters = responder.counters();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = channel();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("stitch-core-agent".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match responder.poll() {
                        Ok(Some(r)) => {
                            // A closed receiver only means nobody listens any more; keep
                            // acknowledging so senders stop retransmitting.
                            let _ = tx.send(TeardownNotice::new(r.msg, r.from));
                        }
                        Ok(None) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })?;
        Ok((
            CoreAgent {
                local,
                keys,
                shell_port: config.shell_port,
                counters,
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// The address notices arrive on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Received / delivered / refused counts.
    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// Figure 4C, step 432: the core application's connection `local` (B) <-> `peer`
    /// (A2, the shell as the core sees it) ended because the client closed it (the core
    /// read EOF). Tells the shell agent at `peer`'s IP, port `shell_port`, and waits for
    /// its acknowledgement (retransmitting). Blocks up to 3.1 s.
    ///
    /// # Errors
    /// No acknowledgement, or a refusal.
    pub fn connection_closed(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
        variant: Teardown,
    ) -> Result<(), SendError> {
        self.notify_shell(local, peer, variant, Side::Client, EndKind::Fin)
    }

    /// As [`CoreAgent::connection_closed`], saying which end started it and how.
    ///
    /// The message names the connection by its legs `[unknown, unknown, A2, B]` (the
    /// core knows neither C nor A1, nor the stitch id: it says 0); the shell matches on
    /// (A2, B).
    ///
    /// # Errors
    /// No acknowledgement, or a refusal.
    pub fn notify_shell(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
        variant: Teardown,
        from: Side,
        kind: EndKind,
    ) -> Result<(), SendError> {
        let (local, peer) = (canonical(local), canonical(peer));
        let unknown = unknown_leg(&peer);
        let msg = Message::Teardown(TeardownMsg {
            stitch_id: 0,
            from,
            kind,
            variant,
            to: Side::Shell,
            legs: Some([unknown, unknown, peer, local]),
            bytes: None,
        });
        let to = SocketAddr::new(peer.ip(), self.shell_port);
        let mut req = Requester::for_peer(to, self.keys.clone()).map_err(SendError::Io)?;
        expect_ok(req.request(to, &msg, None)?.0)
    }
}

/// `Ok` for `Reply{ok: true}`, the refusal otherwise.
///
/// # Errors
/// [`SendError::Refused`] or [`SendError::Unexpected`].
pub fn expect_ok(answer: Message) -> Result<(), SendError> {
    match answer {
        Message::Reply(r) if r.ok => Ok(()),
        Message::Reply(r) => Err(SendError::Refused {
            code: r.error_code,
            message: r.message,
        }),
        other => Err(SendError::Unexpected(format!("{:?}", other.msg_type()))),
    }
}

impl Drop for CoreAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
