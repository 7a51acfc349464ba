//! One XMPP link: an authenticated client session on one XMPP domain, carrying
//! [`FleetMessage`]s.
//!
//! The session is a `tokio_xmpp` [`StanzaStream`], which reconnects by itself;
//! we give it our own connector ([`WaitingConnector`]) so that a failed link is
//! re-established only after the configured wait (a blip does not cause a
//! failover), and each new attempt after a failure goes to the next server of
//! the list (another server of the XMPP cluster, or the same one once back).
//!
//! What this layer guarantees: messages are delivered to the owner as typed
//! values or as a [`DecodeError`] with the sender; a link-up event after every
//! (re)connection so the owner re-sends what is unanswered. It does not
//! guarantee delivery: the owner's request ids and re-sends do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_xmpp::connect::{DnsConfig, ServerConnector, TcpServerConnector};
use tokio_xmpp::jid::{BareJid, Jid};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::message::{Message, MessageType};
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::stanzastream::{Event as StreamEventOuter, StanzaStream, StreamEvent};
use tokio_xmpp::xmlstream::{PendingFeaturesRecv, Timeouts};
use tokio_xmpp::Stanza;

use crate::log;
use crate::proto::{DecodeError, FleetMessage, ELEMENT, NS};

static SENT: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// Fleet messages sent and received by every link of this process so far
/// (the simulation's stanza counter).
pub fn message_counts() -> (u64, u64) {
    (
        SENT.load(Ordering::Relaxed),
        RECEIVED.load(Ordering::Relaxed),
    )
}

/// How to reach the XMPP server(s) and as whom.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Account (bare JID, `user@domain`).
    pub jid: BareJid,
    /// Its password.
    pub password: String,
    /// `host:port` of the servers of the XMPP cluster serving `jid`'s domain,
    /// tried in turn.
    pub servers: Vec<String>,
    /// How long to wait after a link failure before connecting again.
    pub reconnect_wait: Duration,
    /// Up to this much more, fixed per account (a hash of the JID), so that a
    /// thousand agents that lost the same server do not all log in at once.
    pub reconnect_jitter: Duration,
    /// Name used in log lines (`up-link`, `down-link`).
    pub label: String,
    /// Require STARTTLS (the server's certificate is checked against the
    /// system's CA store for the JID's domain). Needs the `tls` feature.
    pub tls: bool,
}

/// Something that happened on the link.
#[derive(Debug)]
pub enum LinkEvent {
    /// A contact's presence changed (only for contacts we subscribed to):
    /// `available` false when its last session ended.
    Presence {
        /// The contact.
        from: BareJid,
        /// Whether it has a session now.
        available: bool,
    },
    /// `from` asks to see our presence (the owner decides whether to allow).
    SubscribeRequest {
        /// Who asks.
        from: BareJid,
    },
    /// The session is (again) established: re-send what is unanswered.
    Up,
    /// A fleet message arrived (or a payload that failed to decode).
    Message {
        /// Authenticated sender (bare JID, as stamped by the server).
        from: BareJid,
        /// The sending session (full JID): where refusals go.
        reply_to: Jid,
        /// The message, or why it was refused (boxed: a message is large).
        msg: Box<Result<FleetMessage, DecodeError>>,
    },
}

/// What the owner asks the link to send.
#[derive(Debug)]
enum Out {
    Message(Jid, FleetMessage),
    Presence(BareJid, PresenceType),
}

/// Sending side of a link. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    tx: mpsc::UnboundedSender<Out>,
}

impl LinkHandle {
    /// Queues `msg` for `to`. Messages queued while the link is down go out
    /// once it is back (and the owner re-sends anything unanswered anyway).
    pub fn send(&self, to: &BareJid, msg: FleetMessage) {
        // The link task lives as long as the process; a send after shutdown is moot.
        let _ = self.tx.send(Out::Message(Jid::from(to.clone()), msg));
    }

    /// Asks to see `to`'s presence (it is remembered by the server, in our
    /// roster, so this is needed once; repeating it is harmless).
    pub fn subscribe(&self, to: &BareJid) {
        let _ = self
            .tx
            .send(Out::Presence(to.clone(), PresenceType::Subscribe));
    }

    /// Allows `to` to see our presence.
    pub fn allow_subscription(&self, to: &BareJid) {
        let _ = self
            .tx
            .send(Out::Presence(to.clone(), PresenceType::Subscribed));
    }

    /// Sends `msg` to one session (a refusal goes back to the session that
    /// sent the refused message).
    pub fn reply(&self, to: &Jid, msg: FleetMessage) {
        let _ = self.tx.send(Out::Message(to.clone(), msg));
    }
}

/// Errors starting a link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No server address given.
    #[error("no XMPP server address given for {0}")]
    NoServer(String),
    /// The JID has no local part.
    #[error("'{0}' is not an account JID (user@domain)")]
    NotAnAccount(String),
    /// TLS asked for, but this build has no TLS.
    #[error("TLS requested for {0}, but stitch-fleet was built without the 'tls' feature")]
    NoTls(String),
}

#[derive(Debug, Default)]
struct ConnState {
    /// The link has been up since the last connection attempt.
    was_up: bool,
    /// Index of the server to try next.
    next: usize,
    /// Connection attempts so far.
    attempts: u64,
}

/// A [`ServerConnector`] that waits `wait` before the first attempt after a
/// failure and rotates through the server list; `C` does the connecting
/// (plain TCP or STARTTLS).
#[derive(Debug)]
struct WaitingConnector<C> {
    servers: Arc<Vec<String>>,
    state: Arc<Mutex<ConnState>>,
    wait: Duration,
    label: Arc<str>,
    connector: std::marker::PhantomData<fn() -> C>,
}

impl<C> Clone for WaitingConnector<C> {
    fn clone(&self) -> Self {
        WaitingConnector {
            servers: self.servers.clone(),
            state: self.state.clone(),
            wait: self.wait,
            label: self.label.clone(),
            connector: std::marker::PhantomData,
        }
    }
}

impl<C> WaitingConnector<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<C: ServerConnector + From<DnsConfig> + std::fmt::Debug> ServerConnector
    for WaitingConnector<C>
{
    type Stream = C::Stream;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<
        (
            PendingFeaturesRecv<Self::Stream>,
            sasl::common::ChannelBinding,
        ),
        tokio_xmpp::Error,
    > {
        let (failed_after_up, server, attempt) = {
            let mut st = self.lock();
            let failed = std::mem::replace(&mut st.was_up, false);
            if failed {
                // A failure of an established link: the next server of the list.
                st.next += 1;
            }
            st.attempts += 1;
            let server = self.servers[st.next % self.servers.len()].clone();
            (failed, server, st.attempts)
        };
        if failed_after_up {
            log::line(
                &self.label,
                &format!(
                    "link down; waiting {} ms before reconnecting",
                    self.wait.as_millis()
                ),
            );
            tokio::time::sleep(self.wait).await;
        }
        log::line(
            &self.label,
            &format!("connecting to {server} (attempt {attempt})"),
        );
        let result = C::from(DnsConfig::addr(&server))
            .connect(jid, ns, timeouts)
            .await;
        if let Err(e) = &result {
            log::line(&self.label, &format!("connection to {server} failed: {e}"));
            // Next attempt (after the library's back-off) tries the next server.
            self.lock().next += 1;
        }
        result
    }
}

/// A fixed share of `max` for `jid` (FNV-1a of the JID): deterministic, so
/// tests and logs can tell it, and spread over accounts.
pub fn jitter(jid: &BareJid, max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if max_ms == 0 {
        return Duration::ZERO;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in jid.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Duration::from_millis(h % (max_ms + 1))
}

/// Starts the link task. Returns the sending handle and the event receiver.
///
/// # Errors
///
/// [`LinkError`] when the configuration cannot work.
pub fn spawn(
    cfg: LinkConfig,
) -> Result<(LinkHandle, mpsc::UnboundedReceiver<LinkEvent>), LinkError> {
    if cfg.servers.is_empty() {
        return Err(LinkError::NoServer(cfg.label));
    }
    if cfg.jid.node().is_none() {
        return Err(LinkError::NotAnAccount(cfg.jid.to_string()));
    }
    let state = Arc::new(Mutex::new(ConnState::default()));
    let timeouts = Timeouts {
        read_timeout: Duration::from_secs(30),
        response_timeout: Duration::from_secs(10),
    };
    fn stream<C: ServerConnector + From<DnsConfig> + std::fmt::Debug>(
        cfg: &LinkConfig,
        state: &Arc<Mutex<ConnState>>,
        timeouts: Timeouts,
    ) -> StanzaStream {
        let connector = WaitingConnector::<C> {
            servers: Arc::new(cfg.servers.clone()),
            state: state.clone(),
            wait: cfg.reconnect_wait + jitter(&cfg.jid, cfg.reconnect_jitter),
            label: Arc::from(cfg.label.as_str()),
            connector: std::marker::PhantomData,
        };
        StanzaStream::new_c2s(
            connector,
            Jid::from(cfg.jid.clone()),
            cfg.password.clone(),
            timeouts,
            64,
        )
    }
    let stream = if cfg.tls {
        #[cfg(feature = "tls")]
        {
            stream::<tokio_xmpp::connect::StartTlsServerConnector>(&cfg, &state, timeouts)
        }
        #[cfg(not(feature = "tls"))]
        {
            return Err(LinkError::NoTls(cfg.label));
        }
    } else {
        stream::<TcpServerConnector>(&cfg, &state, timeouts)
    };
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(run(stream, cfg.label, state, out_rx, ev_tx));
    Ok((LinkHandle { tx: out_tx }, ev_rx))
}

async fn run(
    mut stream: StanzaStream,
    label: String,
    state: Arc<Mutex<ConnState>>,
    mut out_rx: mpsc::UnboundedReceiver<Out>,
    ev_tx: mpsc::UnboundedSender<LinkEvent>,
) {
    loop {
        tokio::select! {
            ev = stream.next() => {
                let Some(ev) = ev else {
                    log::line(&label, "stream closed for good");
                    return;
                };
                match ev {
                    StreamEventOuter::Stream(StreamEvent::Reset { bound_jid, .. }) => {
                        state.lock().unwrap_or_else(|p| p.into_inner()).was_up = true;
                        log::line(&label, &format!("link up as {bound_jid}"));
                        // Initial presence: without it the server does not
                        // route messages for our bare JID to this session.
                        let _ = stream.send(Box::new(Stanza::Presence(Presence::available()))).await;
                        if ev_tx.send(LinkEvent::Up).is_err() { return; }
                    }
                    StreamEventOuter::Stream(StreamEvent::Resumed) => {
                        state.lock().unwrap_or_else(|p| p.into_inner()).was_up = true;
                        log::line(&label, "link up (resumed)");
                        if ev_tx.send(LinkEvent::Up).is_err() { return; }
                    }
                    StreamEventOuter::Stream(StreamEvent::Suspended) => {
                        log::line(&label, "link suspended");
                    }
                    StreamEventOuter::Stanza(Stanza::Message(msg)) => {
                        if let Some(event) = incoming(&label, msg) {
                            RECEIVED.fetch_add(1, Ordering::Relaxed);
                            if ev_tx.send(event).is_err() { return; }
                        }
                    }
                    StreamEventOuter::Stanza(Stanza::Presence(p)) => {
                        let Some(from) = p.from.as_ref().map(Jid::to_bare) else { continue };
                        let event = match p.type_ {
                            PresenceType::None => Some(LinkEvent::Presence { from, available: true }),
                            PresenceType::Unavailable => {
                                // One resource left; with one session per
                                // component that is the component.
                                Some(LinkEvent::Presence { from, available: false })
                            }
                            PresenceType::Subscribe => Some(LinkEvent::SubscribeRequest { from }),
                            _ => None,
                        };
                        if let Some(event) = event {
                            if ev_tx.send(event).is_err() { return; }
                        }
                    }
                    StreamEventOuter::Stanza(_) => {}
                }
            }
            out = out_rx.recv() => {
                let stanza = match out {
                    None => return,
                    Some(Out::Message(to, msg)) => {
                        SENT.fetch_add(1, Ordering::Relaxed);
                        Stanza::Message(outgoing(&to, &msg))
                    }
                    Some(Out::Presence(to, type_)) => {
                        let mut p = Presence::new(type_);
                        p.to = Some(Jid::from(to));
                        Stanza::Presence(p)
                    }
                };
                let _token = stream.send(Box::new(stanza)).await;
            }
        }
    }
}

/// Builds the `<message/>` stanza for `msg`.
pub fn outgoing(to: &Jid, msg: &FleetMessage) -> Message {
    let payload = Element::builder(ELEMENT, NS).append(msg.to_json()).build();
    Message::new_with_type(MessageType::Normal, Some(to.clone())).with_payloads(vec![payload])
}

/// Turns a received `<message/>` into an event, or `None` for messages that
/// are not ours to answer (server bounces, chat without a fleet payload from
/// nobody).
fn incoming(label: &str, msg: Message) -> Option<LinkEvent> {
    let reply_to = msg.from.clone()?;
    let from = reply_to.to_bare();
    if msg.type_ == MessageType::Error {
        // A bounce of something we sent (peer offline): the re-send timer
        // handles it. Never treat it as a message from the peer.
        log::line(label, &format!("bounce from {from} (peer unavailable)"));
        return None;
    }
    let payload = msg
        .payloads
        .iter()
        .find(|p| p.is(ELEMENT, NS))
        .map(|p| p.text());
    let msg = match payload {
        None => Err(DecodeError::NoPayload),
        Some(text) => FleetMessage::from_json(&text),
    };
    Some(LinkEvent::Message {
        from,
        reply_to,
        msg: Box::new(msg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_fixed_per_account_bounded_and_spread() {
        let max = Duration::from_millis(1000);
        let a: BareJid = "agent0@c0.fleet.test".parse().unwrap();
        let b: BareJid = "agent1@c0.fleet.test".parse().unwrap();
        assert_eq!(jitter(&a, max), jitter(&a, max));
        assert!(jitter(&a, max) <= max);
        assert_ne!(jitter(&a, max), jitter(&b, max));
        assert_eq!(jitter(&a, Duration::ZERO), Duration::ZERO);
    }
}
