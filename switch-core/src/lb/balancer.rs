//! The balancer a worker runs: for each frame of a balanced service, find its
//! connection (or schedule a new one), track the connection's state, rewrite the frame.
//!
//! What it does: [`Balancer::process`] takes a parsed frame. A frame of a known
//! connection (client side, or in NAT mode the backend's reply) is rewritten by the
//! connection's translation and sent to the connection's port. A client frame for a
//! service that opens a connection (a TCP SYN, any UDP datagram) is scheduled on the
//! worker itself: the service's scheduler picks a destination from this worker's own
//! counts, the connection goes into this worker's [`ConnTable`] under both keys, and the
//! frame is rewritten. Anything else for a service is dropped and counted (as IPVS does);
//! frames for no service are not the balancer's ([`LbVerdict::NotMine`]).
//!
//! Counts kept per destination, as IPVS keeps them: `active` (TCP connections not past a
//! FIN or RST), `inactive` (closing TCP, and UDP), and for the `queue` scheduler the
//! requests in flight (client data not yet answered, NAT mode) and a smoothed response
//! time. They are this worker's view; `docs/lb-schedulers.md` says what that changes.
//!
//! What it guarantees: no allocation, lock, syscall or clock read per frame; counters
//! are published to [`LbCounters`] with plain stores (one writer per worker).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::conn::{Conn, ConnState, ConnTable, InsertError, Side};
use super::sched::{ewma_update, schedule, Client, DestLoad, SchedKind, SchedState};
use super::table::{Forwarding, LbTable, ServiceRt, MAX_DESTS, MAX_SERVICES};
use crate::flow::key::{FlowKey, L4Info, PROTO_TCP};
use crate::stitch::translate::{translate, SackMode, Translation, WindowRescale};
use crate::verdict::DropReason;
use crate::{MacAddr, PortId};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// Longest a TCP connection waits in SYN_SENT or after one FIN before it is forgotten
/// (IPVS: 2 minutes after a FIN; SYN_RECV 1 minute). Bounded by the service's idle time.
const SYN_TIMEOUT_US: u64 = 60_000_000;
const FIN_TIMEOUT_US: u64 = 120_000_000;
/// Pool slots the expiry walk visits per poll round.
const EXPIRE_BUDGET: usize = 64;
/// How often an idle destination's response time is pulled towards its service's
/// fastest (see [`Balancer::tick`]).
const DECAY_EVERY_US: u64 = 100_000;

/// Words per service in [`LbCounters::svc`].
pub const SVC_WORDS: usize = 8;
/// Service counter: connections scheduled.
pub const SVC_CONNS: usize = 0;
/// Service counter: new connections with no usable destination.
pub const SVC_NO_DEST: usize = 1;
/// Service counter: new connections refused by a full table.
pub const SVC_TABLE_FULL: usize = 2;
/// Service counter: segments of no connection that open none.
pub const SVC_NO_CONN: usize = 3;
/// Service counters of launch on demand: connections held, released to a backend,
/// dropped (held too long, or no room), held now.
pub const SVC_HELD: usize = 4;
pub const SVC_RELEASED: usize = 5;
pub const SVC_HELD_DROPPED: usize = 6;
pub const SVC_HELD_NOW: usize = 7;

/// Words per destination in [`LbCounters::dest`].
pub const DEST_WORDS: usize = 8;
/// Destination counters (see [`LbCounters`]).
pub const DEST_CONNS: usize = 0;
pub const DEST_ACTIVE: usize = 1;
pub const DEST_INACTIVE: usize = 2;
pub const DEST_INFLIGHT: usize = 3;
pub const DEST_RESP_US: usize = 4;
pub const DEST_PKTS_IN: usize = 5;
pub const DEST_PKTS_OUT: usize = 6;
/// Passive health failures: an RST from the backend answering a SYN, or a connection
/// that expired before the backend answered its SYN.
pub const DEST_PASSIVE_FAIL: usize = 7;

/// One worker's balancer counters: written by that worker only (load and store), read by
/// the slow path for `lb.stats` and `/metrics`.
#[derive(Debug)]
pub struct LbCounters {
    /// [`SVC_WORDS`] per service slot.
    pub svc: Box<[AtomicU64]>,
    /// [`DEST_WORDS`] per (service slot, destination index).
    pub dest: Box<[AtomicU64]>,
    /// Connections in the worker's table.
    pub conns_now: AtomicU64,
    /// The id of the service each slot's counters belong to (0: none yet).
    pub svc_id: Box<[AtomicU64]>,
}

impl Default for LbCounters {
    fn default() -> Self {
        let n = |k| (0..k).map(|_| AtomicU64::new(0)).collect();
        LbCounters {
            svc: n(MAX_SERVICES * SVC_WORDS),
            dest: n(MAX_SERVICES * MAX_DESTS * DEST_WORDS),
            conns_now: AtomicU64::new(0),
            svc_id: n(MAX_SERVICES),
        }
    }
}

impl LbCounters {
    /// A service counter of a slot.
    pub fn svc(&self, slot: usize, word: usize) -> u64 {
        self.svc
            .get(slot * SVC_WORDS + word)
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Adds `n` to a service counter (the owning worker only).
    pub fn add_svc(&self, slot: usize, word: usize, n: u64) {
        if let Some(c) = self.svc.get(slot * SVC_WORDS + word) {
            c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
        }
    }

    /// Sets a service counter (the owning worker only).
    pub fn set_svc(&self, slot: usize, word: usize, v: u64) {
        put(&self.svc, slot * SVC_WORDS + word, v);
    }

    /// A destination counter.
    pub fn dest(&self, slot: usize, dest: usize, word: usize) -> u64 {
        self.dest
            .get((slot * MAX_DESTS + dest) * DEST_WORDS + word)
            .map_or(0, |c| c.load(Relaxed))
    }
}

#[inline]
fn put(c: &[AtomicU64], i: usize, v: u64) {
    if let Some(c) = c.get(i) {
        c.store(v, Relaxed);
    }
}

#[inline]
fn inc(c: &[AtomicU64], i: usize) {
    if let Some(c) = c.get(i) {
        c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
    }
}

/// What the worker does with a frame after the balancer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbVerdict {
    /// Not a balanced frame: switch it as usual.
    NotMine,
    /// Rewritten: send it out of this port.
    Out(PortId),
    /// Drop it and count the reason.
    Drop(DropReason),
    /// No destination now, but the service launches one on demand: hold the frame (a
    /// connection's first) until `deadline_us` and offer it again.
    Hold { slot: u16, deadline_us: u64 },
}

/// Per service slot: the worker's scheduler state, and whose it is.
#[derive(Debug)]
struct SlotState {
    id: u32,
    gen: u32,
    kind: SchedKind,
    sched: SchedState,
}

/// One worker's balancer (see the module docs).
#[derive(Debug)]
pub struct Balancer {
    conns: ConnTable,
    /// By `slot * MAX_DESTS + dest`.
    loads: Vec<DestLoad>,
    slots: Vec<Option<SlotState>>,
    last_decay_us: u64,
}

fn no_translation(mac: MacAddr, ip: std::net::IpAddr) -> Translation {
    Translation {
        eth_src: mac,
        eth_dst: mac,
        src_ip: ip,
        dst_ip: ip,
        src_port: 0,
        dst_port: 0,
        seq_delta: 0,
        ack_delta: 0,
        ts: None,
        window: WindowRescale::None,
        sack: SackMode::Keep,
    }
}

impl Balancer {
    /// A balancer with room for `connections`, hashing with `seed`; its scheduler
    /// states are allocated here, for every slot and scheduler, so that a service
    /// change never allocates on the worker.
    pub fn new(connections: usize, seed: u64) -> Balancer {
        Balancer {
            conns: ConnTable::new(connections, seed),
            loads: vec![DestLoad::default(); MAX_SERVICES * MAX_DESTS],
            slots: (0..MAX_SERVICES).map(|_| None).collect(),
            last_decay_us: 0,
        }
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when no connection is held.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The connection table (tests, the slow path's inspection).
    pub fn conns(&self) -> &ConnTable {
        &self.conns
    }

    /// This worker's load of a destination.
    pub fn load(&self, slot: usize, dest: usize) -> DestLoad {
        self.loads
            .get(slot * MAX_DESTS + dest)
            .copied()
            .unwrap_or_default()
    }

    /// Brings the worker's per-slot state in line with the published services: a slot
    /// whose service changed identity has its counts zeroed; a changed generation
    /// resets the scheduler's state (as IPVS does when destinations change). Called once
    /// per poll round; allocates only when a slot gets a scheduler of a kind it never
    /// had (the first service in a slot, or a changed scheduler).
    pub fn sync(&mut self, t: &LbTable, c: &LbCounters) {
        for (slot, s) in t.services.iter().enumerate() {
            let Some(s) = s else { continue };
            match &mut self.slots[slot] {
                Some(st) if st.id == s.id && st.gen == s.gen => {}
                Some(st) if st.id == s.id && st.kind == s.sched => {
                    st.gen = s.gen;
                    st.sched.reset(s.sched);
                }
                st => {
                    if st.as_ref().is_none_or(|x| x.id != s.id) {
                        let base = slot * MAX_DESTS;
                        for l in &mut self.loads[base..base + MAX_DESTS] {
                            *l = DestLoad::default();
                        }
                        let words = DEST_WORDS * MAX_DESTS;
                        for w in &c.dest[base * DEST_WORDS..base * DEST_WORDS + words] {
                            w.store(0, Relaxed);
                        }
                        for w in 0..SVC_WORDS {
                            put(&c.svc, slot * SVC_WORDS + w, 0);
                        }
                        put(&c.svc_id, slot, u64::from(s.id));
                    }
                    *st = Some(SlotState {
                        id: s.id,
                        gen: s.gen,
                        kind: s.sched,
                        sched: SchedState::new(s.sched),
                    });
                }
            }
        }
    }

    /// Forgets expired connections (a step of the walk; call once per poll round), and
    /// every 100 ms pulls the response time of each destination with nothing in flight
    /// a quarter of the way towards the fastest of its service: a destination measured slow
    /// and then avoided gets no new sample, so without this it would never be tried
    /// again once it recovers (the `queue` scheduler). Its next request re-measures it.
    pub fn tick(&mut self, t: &LbTable, now_us: u64, c: &LbCounters) {
        if now_us.saturating_sub(self.last_decay_us) >= DECAY_EVERY_US {
            self.last_decay_us = now_us;
            self.decay(t, c);
        }
        let Balancer {
            conns,
            loads,
            slots,
            ..
        } = self;
        conns.expire_step(now_us, EXPIRE_BUDGET, |conn| {
            if conn.state == ConnState::SynSent {
                let i = (usize::from(conn.svc) * MAX_DESTS + usize::from(conn.dest)) * DEST_WORDS;
                inc(&c.dest, i + DEST_PASSIVE_FAIL);
            }
            uncount(loads, slots, t, conn, c);
        });
        put(
            std::slice::from_ref(&c.conns_now),
            0,
            self.conns.len() as u64,
        );
    }

    fn decay(&mut self, t: &LbTable, c: &LbCounters) {
        for (slot, s) in t.services.iter().enumerate() {
            let Some(s) = s else { continue };
            if s.sched != SchedKind::Queue {
                continue;
            }
            let n = s.dests.len().min(MAX_DESTS);
            let base = slot * MAX_DESTS;
            let loads = &mut self.loads[base..base + n];
            let Some(fastest) = loads
                .iter()
                .map(|l| l.resp_ewma_us)
                .filter(|&v| v > 0)
                .min()
            else {
                continue;
            };
            for (d, l) in loads.iter_mut().enumerate() {
                if l.inflight == 0 && l.resp_ewma_us > fastest {
                    l.resp_ewma_us -= (l.resp_ewma_us - fastest).div_ceil(4);
                    put(
                        &c.dest,
                        (base + d) * DEST_WORDS + DEST_RESP_US,
                        u64::from(l.resp_ewma_us),
                    );
                }
            }
        }
    }

    /// The connection table's hash of a frame's key: a worker hashes a whole burst and
    /// [`Balancer::prefetch`]es it before [`Balancer::process_hashed`] (the misses of
    /// the burst overlap).
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.conns.hash(key)
    }

    /// Starts loading what a lookup of hash `h` reads first.
    #[inline]
    pub fn prefetch(&self, h: u64) {
        self.conns.prefetch(h);
    }

    /// Handles one frame (see the module docs). `l4` is the frame's parse.
    pub fn process(
        &mut self,
        frame: &mut [u8],
        l4: &L4Info,
        in_port: PortId,
        t: &LbTable,
        now_us: u64,
        c: &LbCounters,
    ) -> LbVerdict {
        let h = self.conns.hash(&l4.key);
        self.process_hashed(frame, l4, h, in_port, t, now_us, c)
    }

    /// [`Balancer::process`] with the key's hash ([`Balancer::hash`]) already known.
    #[allow(clippy::too_many_arguments)]
    pub fn process_hashed(
        &mut self,
        frame: &mut [u8],
        l4: &L4Info,
        h: u64,
        in_port: PortId,
        t: &LbTable,
        now_us: u64,
        c: &LbCounters,
    ) -> LbVerdict {
        let tcp = l4.key.proto == PROTO_TCP;
        let flags = if tcp { l4.tcp_flags } else { 0 };
        if let Some((id, side)) = self.conns.lookup_hashed(&l4.key, h) {
            let reuse = side == Side::Fwd
                && tcp
                && flags & (SYN | ACK) == SYN
                && self
                    .conns
                    .get(id)
                    .is_some_and(|x| matches!(x.state, ConnState::Closed | ConnState::Closing));
            if !reuse {
                return self.known(id, side, frame, l4, t, now_us, c);
            }
            // A new connection on the 4-tuple of one that ended: scheduled afresh.
            if let Some(old) = self.conns.remove(id) {
                uncount(&mut self.loads, &mut self.slots, t, &old, c);
            }
        }
        let Some((slot, svc)) = t.service_for(&l4.key) else {
            return LbVerdict::NotMine;
        };
        let slot_u = usize::from(slot);
        if tcp && flags & (SYN | ACK | RST) != SYN {
            inc(&c.svc, slot_u * SVC_WORDS + SVC_NO_CONN);
            return LbVerdict::Drop(DropReason::LbNoConn);
        }
        let Some(st) = self.slots[slot_u].as_mut().filter(|s| s.id == svc.id) else {
            // Published after this round's sync: the next round will know it.
            inc(&c.svc, slot_u * SVC_WORDS + SVC_NO_DEST);
            return LbVerdict::Drop(DropReason::LbNoDest);
        };
        let client = Client {
            src: l4.key.src_ip(),
            src_port: l4.key.src_port,
            dst: l4.key.dst_ip(),
            dst_port: l4.key.dst_port,
            hash: crate::flow::key::hash(&l4.key),
        };
        let base = slot_u * MAX_DESTS;
        let n = svc.dests.len().min(MAX_DESTS);
        let picked = schedule(
            svc.sched,
            &svc.tables,
            &mut st.sched,
            &svc.dests[..n],
            &self.loads[base..base + n],
            &client,
            now_us / 1000,
        );
        let Some(d) = picked.filter(|&d| d < n) else {
            if svc.hold_us > 0 {
                return LbVerdict::Hold {
                    slot,
                    deadline_us: now_us + svc.hold_us,
                };
            }
            inc(&c.svc, slot_u * SVC_WORDS + SVC_NO_DEST);
            return LbVerdict::Drop(DropReason::LbNoDest);
        };
        let out_port = t.client_port(in_port, client.hash);
        let conn = new_conn(frame, l4, out_port, t.mac, slot, svc, d, now_us);
        let Some(conn) = conn else {
            return LbVerdict::Drop(DropReason::TranslateError);
        };
        // The client key was just looked up and missed (or its closed connection removed).
        match self.conns.insert_new(conn) {
            Ok(id) => {
                inc(&c.svc, slot_u * SVC_WORDS + SVC_CONNS);
                let di = (base + d) * DEST_WORDS;
                inc(&c.dest, di + DEST_CONNS);
                let l = &mut self.loads[base + d];
                if tcp {
                    l.active += 1;
                    put(&c.dest, di + DEST_ACTIVE, u64::from(l.active));
                } else {
                    l.inactive += 1;
                    put(&c.dest, di + DEST_INACTIVE, u64::from(l.inactive));
                }
                put(
                    std::slice::from_ref(&c.conns_now),
                    0,
                    self.conns.len() as u64,
                );
                self.known(id, Side::Fwd, frame, l4, t, now_us, c)
            }
            Err(InsertError::Full) | Err(InsertError::Exists) => {
                inc(&c.svc, slot_u * SVC_WORDS + SVC_TABLE_FULL);
                LbVerdict::Drop(DropReason::LbTableFull)
            }
        }
    }

    /// A frame of connection `id`: state, counts, rewrite.
    #[allow(clippy::too_many_arguments)]
    fn known(
        &mut self,
        id: u32,
        side: Side,
        frame: &mut [u8],
        l4: &L4Info,
        t: &LbTable,
        now_us: u64,
        c: &LbCounters,
    ) -> LbVerdict {
        let Some(conn) = self.conns.get_mut(id) else {
            return LbVerdict::NotMine;
        };
        let slot = usize::from(conn.svc);
        let dest = usize::from(conn.dest);
        // Counts belong to the service the connection was made for; if its slot now
        // holds another service, the connection still flows but counts nothing.
        let counted = t
            .services
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.id == conn.svc_id);
        let li = slot * MAX_DESTS + dest;
        let di = li * DEST_WORDS;
        let svc = t.services.get(slot).and_then(Option::as_ref);
        let (idle, linger) = svc.map_or((900_000_000, 10_000_000), |s| (s.idle_us, s.linger_us));
        let tcp = l4.key.proto == PROTO_TCP;
        let flags = if tcp { l4.tcp_flags } else { 0 };
        let was_active = conn.active;
        if side == Side::Rev && flags & RST != 0 && conn.state == ConnState::SynSent {
            inc(&c.dest, di + DEST_PASSIVE_FAIL);
        }
        let mut closed_req = false;
        let mut sample = None;
        if tcp {
            if flags & RST != 0 {
                conn.state = ConnState::Closed;
            } else if flags & FIN != 0 {
                conn.fins |= if side == Side::Fwd { 1 } else { 2 };
                conn.state = if conn.fins == 3 {
                    ConnState::Closed
                } else {
                    ConnState::Closing
                };
            } else if conn.state == ConnState::SynSent
                && (side == Side::Rev || flags & (SYN | ACK) == ACK)
            {
                conn.state = ConnState::Established;
            }
            conn.expires_us = now_us
                + match conn.state {
                    ConnState::SynSent => idle.min(SYN_TIMEOUT_US),
                    ConnState::Established | ConnState::Udp => idle,
                    ConnState::Closing => idle.min(FIN_TIMEOUT_US),
                    ConnState::Closed => linger,
                };
            if matches!(conn.state, ConnState::Closing | ConnState::Closed) {
                conn.active = false;
                if conn.req_start_us != 0 {
                    conn.req_start_us = 0;
                    closed_req = true;
                }
            }
        } else {
            conn.expires_us = now_us + idle;
        }
        let nat = conn.rev_key.is_some();
        if nat && l4.payload_len > 0 && !matches!(conn.state, ConnState::Closed) {
            match side {
                Side::Fwd if conn.req_start_us == 0 => {
                    conn.req_start_us = now_us.max(1);
                    if counted {
                        self.loads[li].inflight += 1;
                        put(
                            &c.dest,
                            di + DEST_INFLIGHT,
                            u64::from(self.loads[li].inflight),
                        );
                    }
                }
                Side::Rev if conn.req_start_us != 0 => {
                    sample = Some(now_us.saturating_sub(conn.req_start_us));
                    conn.req_start_us = 0;
                    closed_req = true;
                }
                _ => {}
            }
        }
        let (tr, out) = match side {
            Side::Fwd => (conn.fwd, conn.backend_port),
            Side::Rev => (conn.rev, conn.client_port),
        };
        if counted {
            let l = &mut self.loads[li];
            if was_active && !conn.active {
                l.active = l.active.saturating_sub(1);
                l.inactive += 1;
                put(&c.dest, di + DEST_ACTIVE, u64::from(l.active));
                put(&c.dest, di + DEST_INACTIVE, u64::from(l.inactive));
            }
            if closed_req {
                l.inflight = l.inflight.saturating_sub(1);
                put(&c.dest, di + DEST_INFLIGHT, u64::from(l.inflight));
            }
            if let Some(us) = sample {
                l.resp_ewma_us = ewma_update(l.resp_ewma_us, us.min(u64::from(u32::MAX)) as u32);
                put(&c.dest, di + DEST_RESP_US, u64::from(l.resp_ewma_us));
            }
            inc(
                &c.dest,
                di + if side == Side::Fwd {
                    DEST_PKTS_IN
                } else {
                    DEST_PKTS_OUT
                },
            );
        }
        match translate(frame, &tr) {
            Ok(_) => LbVerdict::Out(out),
            Err(_) => LbVerdict::Drop(DropReason::TranslateError),
        }
    }
}

/// Takes a removed connection out of its destination's counts.
fn uncount(
    loads: &mut [DestLoad],
    slots: &mut [Option<SlotState>],
    t: &LbTable,
    conn: &Conn,
    c: &LbCounters,
) {
    let slot = usize::from(conn.svc);
    let same = slots
        .get(slot)
        .and_then(Option::as_ref)
        .is_some_and(|s| s.id == conn.svc_id)
        && t.services
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.id == conn.svc_id);
    if !same {
        return;
    }
    let li = slot * MAX_DESTS + usize::from(conn.dest);
    let di = li * DEST_WORDS;
    let Some(l) = loads.get_mut(li) else { return };
    if conn.active {
        l.active = l.active.saturating_sub(1);
        put(&c.dest, di + DEST_ACTIVE, u64::from(l.active));
    } else {
        l.inactive = l.inactive.saturating_sub(1);
        put(&c.dest, di + DEST_INACTIVE, u64::from(l.inactive));
    }
    if conn.req_start_us != 0 {
        l.inflight = l.inflight.saturating_sub(1);
        put(&c.dest, di + DEST_INFLIGHT, u64::from(l.inflight));
    }
}

/// The connection a client's first frame opens towards destination `d`.
#[allow(clippy::too_many_arguments)]
fn new_conn(
    frame: &[u8],
    l4: &L4Info,
    in_port: PortId,
    lb_mac: MacAddr,
    slot: u16,
    svc: &ServiceRt,
    d: usize,
    now_us: u64,
) -> Option<Conn> {
    let dest = svc.dests.get(d)?;
    let dp = svc.dest_ports.get(d)?;
    let client_mac = MacAddr(frame.get(6..12)?.try_into().ok()?);
    let key = l4.key;
    let nat = svc.mode == Forwarding::Nat;
    let mut fwd = no_translation(dp.mac, key.dst_ip());
    fwd.eth_src = lb_mac;
    fwd.eth_dst = dp.mac;
    fwd.src_ip = key.src_ip();
    fwd.src_port = key.src_port;
    if nat {
        fwd.dst_ip = dest.addr;
        fwd.dst_port = dest.port;
    } else {
        fwd.dst_ip = key.dst_ip();
        fwd.dst_port = key.dst_port;
    }
    let mut rev = no_translation(client_mac, key.src_ip());
    let rev_key = nat.then(|| {
        rev.eth_src = lb_mac;
        rev.eth_dst = client_mac;
        rev.src_ip = key.dst_ip();
        rev.src_port = key.dst_port;
        rev.dst_ip = key.src_ip();
        rev.dst_port = key.src_port;
        FlowKey::new(dest.addr, dest.port, key.src_ip(), key.src_port, key.proto)
    });
    let tcp = key.proto == PROTO_TCP;
    Some(Conn {
        fwd_key: key,
        rev_key,
        svc: slot,
        dest: d as u16,
        svc_id: svc.id,
        state: if tcp {
            ConnState::SynSent
        } else {
            ConnState::Udp
        },
        active: tcp,
        fins: 0,
        expires_us: now_us
            + if tcp {
                svc.idle_us.min(SYN_TIMEOUT_US)
            } else {
                svc.idle_us
            },
        req_start_us: 0,
        fwd,
        rev,
        backend_port: dp.port,
        client_port: in_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::parse_flow;
    use crate::lb::sched::{Dest, SchedTables};
    use crate::lb::table::DestPort;
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice};
    use std::net::{IpAddr, Ipv4Addr};

    const LB_MAC: MacAddr = MacAddr([2, 0x53, 0x54, 0x4c, 0x42, 0]);
    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc1];
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn be(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 1, i)
    }

    fn service(mode: Forwarding, sched: SchedKind, n: u8) -> LbTable {
        let dests: Vec<Dest> = (1..=n)
            .map(|i| Dest {
                addr: be(i).into(),
                port: 8000 + u16::from(i),
                backend: u16::from(i - 1),
                weight: 1,
                usable: true,
            })
            .collect();
        let dest_ports = (1..=n)
            .map(|i| DestPort {
                mac: MacAddr([2, 0, 0, 0, 1, i]),
                port: PortId(u16::from(i)),
            })
            .collect();
        let tables = SchedTables::build(sched, &dests);
        LbTable::new(
            LB_MAC,
            vec![Some(ServiceRt {
                id: 7,
                gen: 1,
                vip: VIP.into(),
                proto: 6,
                port: 80,
                port_end: 80,
                mode,
                sched,
                dests: if mode == Forwarding::Dr {
                    dests.into_iter().map(|d| Dest { port: 80, ..d }).collect()
                } else {
                    dests
                },
                dest_ports,
                tables,
                idle_us: 900_000_000,
                linger_us: 10_000_000,
                hold_us: 0,
                hold_max: 0,
            })],
        )
    }

    fn tcp(
        smac: [u8; 6],
        dmac: [u8; 6],
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut h = TcpHeader::new(src.1, dst.1, 1000, 65535);
        h.syn = flags & SYN != 0;
        h.ack = flags & ACK != 0;
        h.fin = flags & FIN != 0;
        h.rst = flags & RST != 0;
        let mut out = Vec::new();
        PacketBuilder::ethernet2(smac, dmac)
            .ipv4(src.0.octets(), dst.0.octets(), 64)
            .tcp_header(h)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    /// Addresses, ports, MACs of a frame, and whether its checksums are right.
    fn look(f: &[u8]) -> ([u8; 6], [u8; 6], IpAddr, u16, IpAddr, u16, bool) {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!("not ipv4")
        };
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!("not tcp")
        };
        let h = ip.header().to_header();
        let ip_ok = h.calc_header_checksum() == h.header_checksum;
        let th = t.to_header();
        let l4_ok = th.calc_checksum_ipv4(&h, t.payload()).unwrap() == th.checksum;
        (
            f[6..12].try_into().unwrap(),
            f[0..6].try_into().unwrap(),
            IpAddr::from(h.source),
            th.source_port,
            IpAddr::from(h.destination),
            th.destination_port,
            ip_ok && l4_ok,
        )
    }

    fn run(
        b: &mut Balancer,
        t: &LbTable,
        c: &LbCounters,
        f: &mut [u8],
        port: u16,
        now: u64,
    ) -> LbVerdict {
        let l4 = parse_flow(f).unwrap();
        b.process(f, &l4, PortId(port), t, now, c)
    }

    #[test]
    fn nat_rewrites_both_ways_and_counts_like_ipvs() {
        let t = service(Forwarding::Nat, SchedKind::Rr, 2);
        let c = LbCounters::default();
        let mut b = Balancer::new(1024, 1);
        b.sync(&t, &c);
        let mut syn = tcp(CLIENT_MAC, LB_MAC.0, (CLIENT, 40000), (VIP, 80), SYN, b"");
        let v = run(&mut b, &t, &c, &mut syn, 0, 1);
        let LbVerdict::Out(p) = v else {
            panic!("{v:?}")
        };
        let d = usize::from(p.0) - 1;
        let (smac, dmac, src, sport, dst, dport, ok) = look(&syn);
        assert!(ok, "checksums after the rewrite");
        assert_eq!((smac, dmac), (LB_MAC.0, [2, 0, 0, 0, 1, d as u8 + 1]));
        assert_eq!((src, sport), (IpAddr::from(CLIENT), 40000));
        assert_eq!(
            (dst, dport),
            (IpAddr::from(be(d as u8 + 1)), 8001 + d as u16)
        );
        assert_eq!(b.load(0, d).active, 1);
        assert_eq!(c.dest(0, d, DEST_CONNS), 1);

        // The backend's SYN-ACK goes back to the client from the service address.
        let bmac = [2, 0, 0, 0, 1, d as u8 + 1];
        let mut synack = tcp(
            bmac,
            LB_MAC.0,
            (be(d as u8 + 1), 8001 + d as u16),
            (CLIENT, 40000),
            SYN | ACK,
            b"",
        );
        assert_eq!(
            run(&mut b, &t, &c, &mut synack, p.0, 2),
            LbVerdict::Out(PortId(0))
        );
        let (smac, dmac, src, sport, dst, dport, ok) = look(&synack);
        assert!(ok);
        assert_eq!((smac, dmac), (LB_MAC.0, CLIENT_MAC));
        assert_eq!(
            (src, sport, dst, dport),
            (IpAddr::from(VIP), 80, IpAddr::from(CLIENT), 40000)
        );

        // A request in flight until the response's first byte.
        let mut req = tcp(
            CLIENT_MAC,
            LB_MAC.0,
            (CLIENT, 40000),
            (VIP, 80),
            ACK,
            b"GET /",
        );
        run(&mut b, &t, &c, &mut req, 0, 10);
        assert_eq!(b.load(0, d).inflight, 1);
        let mut resp = tcp(
            bmac,
            LB_MAC.0,
            (be(d as u8 + 1), 8001 + d as u16),
            (CLIENT, 40000),
            ACK,
            b"200",
        );
        run(&mut b, &t, &c, &mut resp, p.0, 510);
        assert_eq!((b.load(0, d).inflight, b.load(0, d).resp_ewma_us), (0, 500));

        // FINs both ways: no longer active, then forgotten after the linger.
        let mut fin = tcp(
            CLIENT_MAC,
            LB_MAC.0,
            (CLIENT, 40000),
            (VIP, 80),
            FIN | ACK,
            b"",
        );
        run(&mut b, &t, &c, &mut fin, 0, 600);
        assert_eq!((b.load(0, d).active, b.load(0, d).inactive), (0, 1));
        let mut fin2 = tcp(
            bmac,
            LB_MAC.0,
            (be(d as u8 + 1), 8001 + d as u16),
            (CLIENT, 40000),
            FIN | ACK,
            b"",
        );
        run(&mut b, &t, &c, &mut fin2, p.0, 700);
        for _ in 0..20 {
            b.tick(&t, 700 + 10_000_000, &c);
        }
        assert_eq!(b.len(), 0);
        assert_eq!((b.load(0, d).active, b.load(0, d).inactive), (0, 0));
    }

    #[test]
    fn segments_without_syn_and_services_without_destinations_are_dropped_and_counted() {
        let t = service(Forwarding::Nat, SchedKind::Rr, 1);
        let c = LbCounters::default();
        let mut b = Balancer::new(16, 1);
        b.sync(&t, &c);
        let mut ack = tcp(CLIENT_MAC, LB_MAC.0, (CLIENT, 1), (VIP, 80), ACK, b"x");
        assert_eq!(
            run(&mut b, &t, &c, &mut ack, 0, 1),
            LbVerdict::Drop(DropReason::LbNoConn)
        );
        assert_eq!(c.svc(0, SVC_NO_CONN), 1);
        // Another port of the address, another address: not the balancer's.
        let mut other = tcp(CLIENT_MAC, LB_MAC.0, (CLIENT, 1), (VIP, 81), SYN, b"");
        assert_eq!(run(&mut b, &t, &c, &mut other, 0, 1), LbVerdict::NotMine);
        let mut down = t.clone();
        if let Some(s) = down.services[0].as_mut() {
            s.dests[0].usable = false;
            s.gen = 2;
        }
        b.sync(&down, &c);
        let mut syn = tcp(CLIENT_MAC, LB_MAC.0, (CLIENT, 2), (VIP, 80), SYN, b"");
        assert_eq!(
            run(&mut b, &down, &c, &mut syn, 0, 1),
            LbVerdict::Drop(DropReason::LbNoDest)
        );
        assert_eq!(c.svc(0, SVC_NO_DEST), 1);
    }

    #[test]
    fn direct_routing_changes_only_the_macs() {
        let t = service(Forwarding::Dr, SchedKind::Rr, 1);
        let c = LbCounters::default();
        let mut b = Balancer::new(16, 1);
        b.sync(&t, &c);
        let mut syn = tcp(CLIENT_MAC, LB_MAC.0, (CLIENT, 5), (VIP, 80), SYN, b"");
        let before = syn.clone();
        assert_eq!(
            run(&mut b, &t, &c, &mut syn, 0, 1),
            LbVerdict::Out(PortId(1))
        );
        assert_eq!(&syn[12..], &before[12..]);
        assert_eq!(&syn[0..6], &[2, 0, 0, 0, 1, 1]);
        assert_eq!(&syn[6..12], &LB_MAC.0);
        assert!(b.conns().iter().all(|(_, c)| c.rev_key.is_none()));
    }

    #[test]
    fn each_connection_stays_with_its_destination_and_a_closed_tuple_is_scheduled_afresh() {
        let t = service(Forwarding::Nat, SchedKind::Rr, 3);
        let c = LbCounters::default();
        let mut b = Balancer::new(1024, 1);
        b.sync(&t, &c);
        let mut first = Vec::new();
        for i in 0..30u16 {
            let mut syn = tcp(
                CLIENT_MAC,
                LB_MAC.0,
                (CLIENT, 1000 + i),
                (VIP, 80),
                SYN,
                b"",
            );
            let LbVerdict::Out(p) = run(&mut b, &t, &c, &mut syn, 0, 1) else {
                panic!()
            };
            first.push(p);
        }
        for d in 0..3 {
            assert_eq!(c.dest(0, d, DEST_CONNS), 10, "round robin over 3");
        }
        for i in 0..30u16 {
            let mut data = tcp(
                CLIENT_MAC,
                LB_MAC.0,
                (CLIENT, 1000 + i),
                (VIP, 80),
                ACK,
                b"more",
            );
            assert_eq!(
                run(&mut b, &t, &c, &mut data, 0, 2),
                LbVerdict::Out(first[usize::from(i)])
            );
        }
        let mut rst = tcp(CLIENT_MAC, LB_MAC.0, (CLIENT, 1000), (VIP, 80), RST, b"");
        run(&mut b, &t, &c, &mut rst, 0, 3);
        let mut again = tcp(CLIENT_MAC, LB_MAC.0, (CLIENT, 1000), (VIP, 80), SYN, b"");
        assert!(matches!(
            run(&mut b, &t, &c, &mut again, 0, 4),
            LbVerdict::Out(_)
        ));
        assert_eq!(c.svc(0, SVC_CONNS), 31);
        assert_eq!(b.len(), 30);
    }

    #[test]
    fn an_idle_slow_destination_drifts_back_towards_the_fastest_but_a_busy_one_does_not() {
        let t = service(Forwarding::Nat, SchedKind::Queue, 3);
        let c = LbCounters::default();
        let mut b = Balancer::new(16, 1);
        b.sync(&t, &c);
        b.loads[0].resp_ewma_us = 300_000;
        b.loads[1].resp_ewma_us = 1_000;
        b.loads[2].resp_ewma_us = 300_000;
        b.loads[2].inflight = 1;
        for i in 1..=30 {
            b.tick(&t, i * DECAY_EVERY_US, &c);
        }
        assert!(b.load(0, 0).resp_ewma_us < 2_000, "{:?}", b.load(0, 0));
        assert_eq!(
            c.dest(0, 0, DEST_RESP_US),
            u64::from(b.load(0, 0).resp_ewma_us)
        );
        assert_eq!(b.load(0, 1).resp_ewma_us, 1_000);
        assert_eq!(b.load(0, 2).resp_ewma_us, 300_000);
    }
}
