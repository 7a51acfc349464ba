//! The conduit daemon: owns the sockets, threads and clocks around
//! [`Session`](crate::session::Session) and [`Matcher`].
//!
//! Per TCP connection a loop thread owns the [`Session`](crate::session::Session)
//! (`tcp_conn`), per UDP flow a
//! loop thread owns the UDP switch-over (`udp_flow`); the stitch handshake is in
//! `handshake`, the control socket in `control`. This module holds what they share: the
//! connection table, the publication policy, matching (centralized or the local matcher
//! of peer-to-peer mode) and start-up.
//!
//! Around the loops: listeners for applications (`[[route]]`), for original connections
//! arriving over the proxy chain (`[[inbound]]`), for stitched connections, the UDP
//! matching socket (verdicts from the matcher, peers' publications), and the Unix
//! control socket (JSON lines: `list`, `stitch`, `refuse`).
//!
//! Stitch slots: each connection is stitched at most once. An outgoing attempt and an
//! incoming hello racing for the same connection are resolved by global id (the lower
//! id's attempt wins), so both sides initiating at once yields exactly one stitched
//! connection.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_proto::ReplayGuard;
use serde::Serialize;

use crate::config::{ConduitConfig, ConduitFile, Matching};
use crate::desc::{ConnDesc, Tuple};
use crate::envelope::{fresh_nonce, open, seal};
use crate::matcher::Matcher;
use crate::msg::{Message, Outcome};
use crate::scope::Scopes;
use crate::session::{EndReason, Input, Phase, SessionStats, Timing};

mod control;
mod handshake;
mod tcp_conn;
mod udp_flow;

use handshake::{accept_stitch, initiate};
use tcp_conn::{accept_inbound, open_route};

pub use control::Request;

/// Ended connections kept for `list` (older ones are forgotten).
pub const KEEP_ENDED: usize = 256;

/// Most application bytes read but not yet written to a conduit connection.
pub const CREDIT_BYTES: usize = 4 << 20;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConduitError {
    /// A listening socket could not be bound.
    #[error("cannot bind {what} on {addr}: {error}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: String,
        /// The error (in the message, so not also a source).
        error: io::Error,
    },
}

/// Unix time in milliseconds (for the replay guard's window).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a connection's matching stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MatchState {
    /// Not published.
    Idle,
    /// Published, no verdict yet.
    Published,
    /// Not matched yet.
    Pending {
        /// Why.
        reason: String,
    },
    /// Matched.
    Matched {
        /// Whether this side initiates.
        initiator: bool,
        /// The peer's global id.
        peer_global_id: u64,
    },
    /// Refused for good.
    Refused {
        /// Why.
        reason: String,
    },
}

/// The stitch slot of a connection (at most one stitch per connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// No stitch.
    Free,
    /// This side is connecting.
    Outgoing,
    /// Stitched.
    Established,
}

/// Role of this conduit for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The application connected here (a `[[route]]`).
    Opener,
    /// The connection arrived over the proxy chain (an `[[inbound]]`).
    Acceptor,
}

/// One connection as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnStatus {
    /// Id for `stitch` / `refuse`.
    pub id: u64,
    /// Role.
    pub role: Role,
    /// This side's description (age as of now).
    pub desc: ConnDesc,
    /// Scope name.
    pub scope: String,
    /// Session phase.
    pub phase: Phase,
    /// Matching.
    pub matching: MatchState,
    /// Stitch slot.
    pub stitch: Slot,
    /// Whether the application refused stitching.
    pub refused_by_app: bool,
    /// The last reason something did not happen (refusals, failures).
    pub last_reason: Option<String>,
    /// How it ended, once ended.
    pub ended: Option<EndReason>,
    /// Microseconds from the match (verdict or request) to the stitched connection
    /// being ready.
    pub match_to_ready_us: Option<u64>,
    /// Session counters.
    pub stats: SessionStats,
    /// UDP flows: the receiver's counters.
    pub udp: Option<crate::udp::UdpRxStats>,
}

#[derive(Debug)]
struct ConnState {
    phase: Phase,
    matching: MatchState,
    slot: Slot,
    refused: bool,
    last_reason: Option<String>,
    ended: Option<EndReason>,
    stats: SessionStats,
    publish_requested: bool,
    udp: Option<crate::udp::UdpRxStats>,
    matched_at: Option<Instant>,
    match_to_ready_us: Option<u64>,
}

enum Ev {
    In(Input),
    Initiate(SocketAddr),
    /// The stitched connection, and the peer's stitch address.
    Stitched(TcpStream, SocketAddr),
    Publish,
    /// Writing to the application failed: it is gone.
    AppGone,
    /// A datagram from the application (UDP flows).
    UdpApp(Vec<u8>),
    /// A conduit datagram from the original path or the stitched path (UDP flows).
    UdpIn(crate::udp::Via, crate::udp::Datagram),
}

struct Conn {
    id: u64,
    role: Role,
    desc: ConnDesc,
    created: Instant,
    tx: Sender<Ev>,
    st: Mutex<ConnState>,
}

impl Conn {
    fn st(&self) -> MutexGuard<'_, ConnState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn desc_now(&self) -> ConnDesc {
        ConnDesc {
            age_ms: self.created.elapsed().as_millis() as u64,
            ..self.desc
        }
    }
}

/// The reason shown when publications get no verdict at all.
const NO_VERDICT: &str = "no verdict from the matcher or peers (wrong scope key, or unreachable)";

/// Sentinel "address" of this conduit's own descriptions in its local matcher.
const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

struct Shared {
    cfg: ConduitFile,
    /// The scopes, changed at run time by the control socket (`scope_add`,
    /// `scope_remove`).
    scopes: std::sync::RwLock<Scopes>,
    start: Instant,
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    udp: UdpSocket,
    guard: Mutex<ReplayGuard>,
    local: Mutex<Matcher>,
    timing: Timing,
    /// UDP flows by application address.
    udp_flows: udp_flow::Flows,
    /// Stitched datagrams of UDP flows (bound on `stitch_listen`, when UDP is used).
    udp_stitch: Option<UdpSocket>,
}

fn log(sh: &Shared, text: std::fmt::Arguments<'_>) {
    eprintln!("conduit[{}]: {text}", sh.cfg.global_id);
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn scopes(&self) -> std::sync::RwLockReadGuard<'_, Scopes> {
        self.scopes.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the scopes everywhere they are used (the local matcher too).
    fn set_scopes(&self, f: impl FnOnce(&mut Scopes) -> bool) -> bool {
        let mut g = self.scopes.write().unwrap_or_else(|p| p.into_inner());
        let changed = f(&mut g);
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_scopes(g.clone());
        changed
    }

    fn conns(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, tuple: &Tuple, scope: u32) -> Option<Arc<Conn>> {
        self.conns()
            .values()
            .find(|c| c.desc.tuple == *tuple && c.desc.scope == scope && c.st().ended.is_none())
            .cloned()
    }

    fn seal(&self, m: &Message, scope: u32) -> Option<Vec<u8>> {
        let nonce = fresh_nonce().ok()?;
        match seal(m, scope, unix_ms(), nonce, &self.scopes()) {
            Ok(b) => Some(b),
            Err(e) => {
                log(self, format_args!("cannot seal: {e}"));
                None
            }
        }
    }

    fn send_udp(&self, m: &Message, scope: u32, to: SocketAddr) {
        if let Some(b) = self.seal(m, scope) {
            if let Err(e) = self.udp.send_to(&b, to) {
                log(self, format_args!("send to {to}: {e}"));
            }
        }
    }

    /// Publishes a connection's description the configured way.
    fn publish(&self, conn: &Conn) {
        let desc = conn.desc_now();
        let m = Message::Publish {
            desc,
            stitch_addr: self.cfg.stitch_listen,
        };
        {
            let mut st = conn.st();
            if st.matching == MatchState::Idle {
                st.matching = MatchState::Published;
            }
        }
        match &self.cfg.matching {
            Matching::Centralized { matcher } => self.send_udp(&m, desc.scope, *matcher),
            Matching::Peer { peers } => {
                for p in peers {
                    self.send_udp(&m, desc.scope, *p);
                }
                let verdicts = self
                    .local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .publish(LOCAL, desc.scope, desc, self.cfg.stitch_listen, unix_ms());
                self.local_verdicts(verdicts);
            }
            Matching::None => {}
        }
    }

    fn local_verdicts(&self, verdicts: Vec<(SocketAddr, Message)>) {
        for (to, v) in verdicts {
            if to == LOCAL {
                self.on_verdict(v, "local matcher");
            }
        }
    }

    fn withdraw(&self, conn: &Conn) {
        let m = Message::Withdraw { desc: conn.desc };
        match &self.cfg.matching {
            Matching::Centralized { matcher } => self.send_udp(&m, conn.desc.scope, *matcher),
            Matching::Peer { peers } => {
                for p in peers {
                    self.send_udp(&m, conn.desc.scope, *p);
                }
                self.local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .withdraw(conn.desc.scope, conn.desc);
            }
            Matching::None => {}
        }
    }

    fn on_verdict(&self, v: Message, from: &str) {
        let Message::Verdict { desc, outcome } = v else {
            return;
        };
        let Some(conn) = self.find(&desc.tuple, desc.scope) else {
            log(
                self,
                format_args!("verdict from {from} for unknown {}", desc.tuple),
            );
            return;
        };
        log(
            self,
            format_args!(
                "conn {} ({}): verdict from {from}: {outcome:?}",
                conn.id, desc.tuple
            ),
        );
        let mut st = conn.st();
        match outcome {
            Outcome::Pending(r) => {
                if matches!(
                    st.matching,
                    MatchState::Published | MatchState::Pending { .. }
                ) {
                    st.matching = MatchState::Pending {
                        reason: r.to_string(),
                    };
                    st.last_reason = Some(r.to_string());
                }
            }
            Outcome::Refused(r) => {
                st.matching = MatchState::Refused {
                    reason: r.to_string(),
                };
                st.last_reason = Some(r.to_string());
            }
            Outcome::Initiate { peer, peer_stitch } => {
                if matches!(st.matching, MatchState::Matched { .. }) {
                    return;
                }
                st.matching = MatchState::Matched {
                    initiator: true,
                    peer_global_id: peer.global_id,
                };
                st.matched_at = Some(Instant::now());
                drop(st);
                let _ = conn.tx.send(Ev::Initiate(peer_stitch));
            }
            Outcome::PeerInitiates { peer } => {
                if !matches!(st.matching, MatchState::Matched { .. }) {
                    st.matching = MatchState::Matched {
                        initiator: false,
                        peer_global_id: peer.global_id,
                    };
                    st.matched_at = Some(Instant::now());
                }
            }
        }
    }

    fn status(&self) -> Vec<ConnStatus> {
        self.conns()
            .values()
            .map(|c| {
                let st = c.st();
                ConnStatus {
                    id: c.id,
                    role: c.role,
                    desc: c.desc_now(),
                    scope: self.scopes().name_of(c.desc.scope),
                    phase: st.phase,
                    matching: st.matching.clone(),
                    stitch: st.slot,
                    refused_by_app: st.refused,
                    last_reason: st.last_reason.clone(),
                    ended: st.ended,
                    match_to_ready_us: st.match_to_ready_us,
                    stats: st.stats,
                    udp: st.udp,
                }
            })
            .collect()
    }
}

/// Binds every listener, prints `conduit ready` on stderr, then serves forever.
///
/// # Errors
/// [`ConduitError`] when a listener cannot be bound.
pub fn run(cfg: ConduitConfig) -> Result<(), ConduitError> {
    let f = cfg.file;
    let bind = |what: &'static str, a: SocketAddr| {
        TcpListener::bind(a).map_err(|error| ConduitError::Bind {
            what,
            addr: a.to_string(),
            error,
        })
    };
    let routes = f
        .route
        .iter()
        .map(|r| Ok((r.clone(), bind("route", r.listen)?)))
        .collect::<Result<Vec<_>, ConduitError>>()?;
    let inbounds = f
        .inbound
        .iter()
        .map(|i| Ok((i.clone(), bind("inbound", i.listen)?)))
        .collect::<Result<Vec<_>, ConduitError>>()?;
    let stitch = bind("stitch_listen", f.stitch_listen)?;
    let udp_bind = |what: &'static str, a: SocketAddr| {
        UdpSocket::bind(a).map_err(|error| ConduitError::Bind {
            what,
            addr: a.to_string(),
            error,
        })
    };
    let udp_routes = f
        .udp_route
        .iter()
        .map(|u| Ok((u.clone(), udp_bind("udp_route", u.listen)?)))
        .collect::<Result<Vec<_>, ConduitError>>()?;
    let udp_inbounds = f
        .udp_inbound
        .iter()
        .map(|u| Ok((u.clone(), udp_bind("udp_inbound", u.listen)?)))
        .collect::<Result<Vec<_>, ConduitError>>()?;
    let udp_stitch = if udp_routes.is_empty() && udp_inbounds.is_empty() {
        None
    } else {
        Some(udp_bind("stitch_listen (udp)", f.stitch_listen)?)
    };
    let udp = UdpSocket::bind(f.match_listen).map_err(|error| ConduitError::Bind {
        what: "match_listen",
        addr: f.match_listen.to_string(),
        error,
    })?;
    let _ = std::fs::remove_file(&f.control);
    let control = UnixListener::bind(&f.control).map_err(|error| ConduitError::Bind {
        what: "control",
        addr: f.control.display().to_string(),
        error,
    })?;
    let timing = Timing {
        heartbeat_interval_us: f.heartbeat_interval_ms * 1000,
        heartbeat_timeout_us: f.heartbeat_timeout_ms * 1000,
        drain_timeout_us: f.drain_timeout_ms * 1000,
    };
    let sh = Arc::new(Shared {
        local: Mutex::new(Matcher::new(cfg.scopes.clone(), 65_536, 60_000)),
        scopes: std::sync::RwLock::new(cfg.scopes),
        start: Instant::now(),
        conns: Mutex::new(BTreeMap::new()),
        next_id: AtomicU64::new(1),
        udp,
        guard: Mutex::new(ReplayGuard::new(65_536)),
        timing,
        udp_flows: Mutex::new(std::collections::HashMap::new()),
        udp_stitch,
        cfg: f,
    });
    for (port, sock) in udp_routes {
        let sh = sh.clone();
        thread::spawn(move || udp_flow::serve_route(sh, port, sock));
    }
    for (port, sock) in udp_inbounds {
        let sh = sh.clone();
        thread::spawn(move || udp_flow::serve_inbound(sh, port, sock));
    }
    if let Some(sock) = sh.udp_stitch.as_ref().and_then(|s| s.try_clone().ok()) {
        let sh = sh.clone();
        thread::spawn(move || udp_flow::serve_stitch(sh, sock));
    }
    for (route, l) in routes {
        let sh = sh.clone();
        thread::spawn(move || {
            for app in l.incoming().flatten() {
                let (sh, route) = (sh.clone(), route.clone());
                thread::spawn(move || open_route(sh, route, app));
            }
        });
    }
    for (inb, l) in inbounds {
        let sh = sh.clone();
        thread::spawn(move || {
            for orig in l.incoming().flatten() {
                let (sh, inb) = (sh.clone(), inb.clone());
                thread::spawn(move || accept_inbound(sh, inb, orig));
            }
        });
    }
    {
        let sh = sh.clone();
        thread::spawn(move || {
            for s in stitch.incoming().flatten() {
                let sh = sh.clone();
                thread::spawn(move || accept_stitch(sh, s));
            }
        });
    }
    {
        let sh = sh.clone();
        thread::spawn(move || udp_loop(sh));
    }
    log(
        &sh,
        format_args!(
            "conduit ready (stitch {}, match {})",
            sh.cfg.stitch_listen, sh.cfg.match_listen
        ),
    );
    for c in control.incoming().flatten() {
        let sh = sh.clone();
        thread::spawn(move || control::serve(&sh, c));
    }
    Ok(())
}

/// Adds a connection to the table.
fn register(sh: &Shared, role: Role, desc: ConnDesc, tx: Sender<Ev>) -> Arc<Conn> {
    let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
    let conn = Arc::new(Conn {
        id,
        role,
        desc,
        created: Instant::now(),
        tx,
        st: Mutex::new(ConnState {
            phase: Phase::Original,
            matching: MatchState::Idle,
            slot: Slot::Free,
            refused: false,
            last_reason: None,
            ended: None,
            stats: SessionStats::default(),
            udp: None,
            publish_requested: false,
            matched_at: None,
            match_to_ready_us: None,
        }),
    });
    {
        let mut conns = sh.conns();
        // Keep the newest ended connections for `list`, forget older ones.
        let ended: Vec<u64> = conns
            .iter()
            .filter(|(_, c)| c.st().ended.is_some())
            .map(|(id, _)| *id)
            .collect();
        for old in ended.iter().take(ended.len().saturating_sub(KEEP_ENDED)) {
            conns.remove(old);
        }
        conns.insert(id, conn.clone());
    }
    log(sh, format_args!("conn {id}: {role:?} {}", desc.tuple));
    conn
}

/// When to publish a connection (or stitch a pre-configured one): automatically once
/// `publish_after_bytes` have passed and the connection is `publish_after_ms` old (long-
/// lived connections are the ones worth stitching), or on an API request; re-published every
/// `republish_ms` until a final verdict.
struct Publisher {
    auto: bool,
    preconfigured_peer: Option<SocketAddr>,
    started: bool,
    next: Instant,
    every: Duration,
    /// Publications sent without any verdict coming back.
    unanswered: u32,
}

impl Publisher {
    fn new(sh: &Shared, auto: bool, preconfigured_peer: Option<SocketAddr>) -> Publisher {
        Publisher {
            auto,
            preconfigured_peer,
            started: false,
            next: Instant::now(),
            every: Duration::from_millis(sh.cfg.republish_ms.max(10)),
            unanswered: 0,
        }
    }

    fn request(&mut self) {
        self.started = true;
        self.next = Instant::now();
    }

    fn tick(&mut self, sh: &Shared, conn: &Conn, app_bytes: u64) {
        let wants = {
            let st = conn.st();
            let open = matches!(
                st.matching,
                MatchState::Idle | MatchState::Published | MatchState::Pending { .. }
            ) && st.slot == Slot::Free
                && !st.refused;
            let old_enough =
                conn.created.elapsed() >= Duration::from_millis(sh.cfg.publish_after_ms);
            open && (st.publish_requested
                || (self.auto && old_enough && app_bytes >= sh.cfg.publish_after_bytes))
        };
        if !wants {
            return;
        }
        if let Some(peer) = self.preconfigured_peer {
            let mut st = conn.st();
            st.matching = MatchState::Matched {
                initiator: true,
                peer_global_id: 0,
            };
            st.matched_at = Some(Instant::now());
            drop(st);
            log(
                sh,
                format_args!("conn {}: pre-configured port, stitching to {peer}", conn.id),
            );
            let _ = conn.tx.send(Ev::Initiate(peer));
        } else if !matches!(sh.cfg.matching, Matching::None)
            && (!self.started || Instant::now() >= self.next)
        {
            self.started = true;
            self.next = Instant::now() + self.every;
            sh.publish(conn);
            // Still `Published` (no verdict at all) after several tries: say why that
            // may be, since a matcher never answers what it cannot authenticate.
            let mut st = conn.st();
            if st.matching == MatchState::Published {
                self.unanswered += 1;
                if self.unanswered > 3 && st.last_reason.is_none() {
                    st.last_reason = Some(NO_VERDICT.into());
                }
            }
        }
    }
}

fn udp_loop(sh: Arc<Shared>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = sh.udp.recv_from(&mut buf) else {
            continue;
        };
        let opened = {
            let mut g = sh.guard.lock().unwrap_or_else(|p| p.into_inner());
            open(&buf[..n], &sh.scopes(), &mut g, unix_ms())
        };
        let o = match opened {
            Ok(o) => o,
            Err(e) => {
                log(&sh, format_args!("refused datagram from {from}: {e}"));
                continue;
            }
        };
        match o.msg {
            Message::Verdict { .. } => sh.on_verdict(o.msg, &from.to_string()),
            Message::Publish { desc, stitch_addr } => {
                if !matches!(sh.cfg.matching, Matching::Peer { .. }) {
                    continue;
                }
                log(
                    &sh,
                    format_args!(
                        "peer publication from {from}: {} (global id {})",
                        desc.tuple, desc.global_id
                    ),
                );
                let verdicts = sh.local.lock().unwrap_or_else(|p| p.into_inner()).publish(
                    from,
                    o.key_id,
                    desc,
                    stitch_addr,
                    unix_ms(),
                );
                for (to, v) in &verdicts {
                    if *to != LOCAL {
                        if let Message::Verdict {
                            outcome: Outcome::Refused(r) | Outcome::Pending(r),
                            ..
                        } = v
                        {
                            log(&sh, format_args!("peer publication from {from}: {r}"));
                        }
                    }
                }
                sh.local_verdicts(verdicts);
            }
            Message::Withdraw { desc } => {
                sh.local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .withdraw(o.key_id, desc);
            }
            Message::StitchHello { .. } => {}
        }
    }
}
