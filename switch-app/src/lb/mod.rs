//! The load balancer's slow-path side: the services as configured, validated and
//! published for the workers, their counters gathered, and ARP/ND answered for the
//! service addresses.
//!
//! One owner: the slow path holds the [`LbManager`]; every change builds a new
//! [`LbTable`] and swaps it in (the workers load it once per poll round). The workers'
//! per-connection state lives in their own [`Balancer`](switch_core::lb::balancer)s;
//! this side never touches it.

pub mod health;
pub mod hold;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::{json, Value};
use stitch_control::lb::{
    BackendState, LbBackendAdd, LbBackendName, LbBackendSet, LbDestStats, LbMode, LbScheduler,
    LbService, LbServiceList, LbServiceStats, LbStats, DEFAULT_IDLE_TIMEOUT_SECS,
    DEFAULT_LINGER_SECS,
};
use stitch_control::protocol::RpcError;
use switch_core::lb::balancer::{
    LbCounters, DEST_ACTIVE, DEST_CONNS, DEST_INACTIVE, DEST_INFLIGHT, DEST_PASSIVE_FAIL,
    DEST_PKTS_IN, DEST_PKTS_OUT, DEST_RESP_US, SVC_CONNS, SVC_HELD, SVC_HELD_DROPPED, SVC_HELD_NOW,
    SVC_NO_CONN, SVC_NO_DEST, SVC_RELEASED, SVC_TABLE_FULL,
};

use health::{Checker, Endpoint, Outgoing, Target, Verdict};
use switch_core::lb::sched::{Dest, SchedKind, SchedTables};
use switch_core::lb::table::{DestPort, Forwarding, LbTable, ServiceRt, MAX_DESTS, MAX_SERVICES};
use switch_core::{MacAddr, PortId};

/// The scheduler kind of a configured name.
pub fn sched_kind(s: LbScheduler) -> SchedKind {
    match s {
        LbScheduler::Rr => SchedKind::Rr,
        LbScheduler::Wrr => SchedKind::Wrr,
        LbScheduler::Lc => SchedKind::Lc,
        LbScheduler::Wlc => SchedKind::Wlc,
        LbScheduler::Lblc => SchedKind::Lblc,
        LbScheduler::Lblcr => SchedKind::Lblcr,
        LbScheduler::Dh => SchedKind::Dh,
        LbScheduler::Sh => SchedKind::Sh,
        LbScheduler::Sed => SchedKind::Sed,
        LbScheduler::Nq => SchedKind::Nq,
        LbScheduler::Maglev => SchedKind::Maglev,
        LbScheduler::Queue => SchedKind::Queue,
    }
}

/// One configured service and where it sits.
#[derive(Debug, Clone)]
struct Svc {
    spec: LbService,
    slot: u16,
    id: u32,
    gen: u32,
    /// Destination index -> (backend name, software port); `None`: a hole.
    dests: Vec<Option<(String, u16)>>,
}

/// Launch-on-demand state of one service.
#[derive(Debug, Default)]
struct Launch {
    /// The hook running now, if any.
    child: Option<std::process::Child>,
    /// When the last one was started.
    started: Option<Instant>,
    /// Hooks run.
    count: u64,
    /// Connections held so far (the workers' `held` summed), at the last look.
    held_seen: u64,
}

/// What the checks say about one destination.
#[derive(Debug, Clone)]
struct DestHealth {
    up: bool,
    passes: u32,
    fails: u32,
    next_at: Instant,
    reason: String,
    /// Passive failures already counted.
    passive_seen: u64,
}

/// The slow path's balancer state (see the module docs).
pub struct LbManager {
    /// The switch's own addresses health checks are sent from.
    health_v4: Option<Ipv4Addr>,
    health_v6: Option<Ipv6Addr>,
    checker: Checker,
    health: HashMap<Target, DestHealth>,
    /// Events for `events.subscribe`, taken by the slow path.
    pub events: Vec<Value>,
    /// The uplink team (its load array is shared with the workers).
    pub uplinks: switch_core::lb::table::Uplinks,
    /// Destinations at their service's `max_conns` (re-evaluated every 50 ms).
    overloaded: std::collections::HashSet<Target>,
    /// The ranks in use per service id, as last published (events on change).
    ranks: HashMap<u32, Vec<u32>>,
    /// Launch hooks per service id.
    launches: HashMap<u32, Launch>,
    last_eval: Option<Instant>,
    mac: MacAddr,
    n_ports: usize,
    services: BTreeMap<String, Svc>,
    next_id: u32,
    /// What the workers read.
    pub table: Arc<ArcSwap<LbTable>>,
    /// Each worker's counters.
    pub counters: Vec<Arc<LbCounters>>,
    /// Replaced tables, kept a while so that a worker never drops (frees) the last one.
    retired: VecDeque<(Instant, Arc<LbTable>)>,
    /// ARP/ND queries answered, and refused changes.
    pub neighbor_replies: u64,
}

impl LbManager {
    /// No services yet; `mac` answers for service addresses; `n_ports` ports exist.
    pub fn new(
        mac: MacAddr,
        n_ports: usize,
        health_v4: Option<Ipv4Addr>,
        health_v6: Option<Ipv6Addr>,
    ) -> LbManager {
        let seed = std::process::id();
        LbManager {
            health_v4,
            health_v6,
            checker: Checker::new(mac, seed),
            health: HashMap::new(),
            events: Vec::new(),
            uplinks: switch_core::lb::table::Uplinks::default(),
            overloaded: std::collections::HashSet::new(),
            ranks: HashMap::new(),
            launches: HashMap::new(),
            last_eval: None,
            mac,
            n_ports,
            services: BTreeMap::new(),
            next_id: 1,
            table: Arc::new(ArcSwap::from_pointee(LbTable::new(
                mac,
                (0..MAX_SERVICES).map(|_| None).collect(),
            ))),
            counters: Vec::new(),
            retired: VecDeque::new(),
            neighbor_replies: 0,
        }
    }

    /// Checks a service against the switch and the other services (`except`: the one it
    /// replaces).
    fn check(&self, spec: &LbService, except: Option<&str>) -> Result<(), RpcError> {
        spec.check().map_err(RpcError::app)?;
        if spec.health.is_some() {
            let missing = match spec.vip {
                IpAddr::V4(_) if self.health_v4.is_none() => Some("health_ipv4"),
                IpAddr::V6(_) if self.health_v6.is_none() => Some("health_ipv6"),
                _ => None,
            };
            if let Some(k) = missing {
                return Err(RpcError::app(format!(
                    "'health': the switch has no address to check these backends from; set [lb] {k}"
                )));
            }
        }
        for b in &spec.backends {
            if usize::from(b.port) >= self.n_ports {
                return Err(RpcError::app(format!(
                    "backend '{}': 'port' {} does not exist ({} ports)",
                    b.name, b.port, self.n_ports
                )));
            }
        }
        for other in self.services.values() {
            if Some(other.spec.name.as_str()) == except {
                continue;
            }
            let o = &other.spec;
            if o.vip == spec.vip
                && o.proto == spec.proto
                && o.port <= spec.last_port()
                && spec.port <= o.last_port()
            {
                return Err(RpcError::app(format!(
                    "'vip': {} {:?} ports {}-{} overlap service '{}'",
                    spec.vip,
                    spec.proto,
                    spec.port,
                    spec.last_port(),
                    o.name
                )));
            }
        }
        Ok(())
    }

    /// Destination indices for `spec`, keeping those of `old` that remain.
    fn assign(spec: &LbService, old: &[Option<(String, u16)>]) -> Vec<Option<(String, u16)>> {
        let want: Vec<(String, u16)> = spec
            .backends
            .iter()
            .flat_map(|b| b.ports(spec.port).into_iter().map(|p| (b.name.clone(), p)))
            .collect();
        let mut out: Vec<Option<(String, u16)>> = old
            .iter()
            .map(|d| d.clone().filter(|d| want.contains(d)))
            .collect();
        for w in want {
            if out.iter().flatten().any(|d| *d == w) {
                continue;
            }
            // Fresh indices first (counts of a removed destination die out in its hole),
            // then holes.
            if out.len() < MAX_DESTS {
                out.push(Some(w));
            } else if let Some(h) = out.iter_mut().find(|d| d.is_none()) {
                *h = Some(w);
            }
        }
        while out.last().is_some_and(Option::is_none) {
            out.pop();
        }
        out
    }

    /// The backend of destination `i`, if it is one.
    fn backend_of(s: &Svc, i: usize) -> Option<&stitch_control::lb::LbBackend> {
        let (name, _) = s.dests.get(i)?.as_ref()?;
        s.spec.backends.iter().find(|b| &b.name == name)
    }

    /// Whether destination `i` may take new connections, failover order aside: its
    /// backend active with a weight, its checks passing, not overloaded.
    fn dest_ok(&self, s: &Svc, i: usize) -> bool {
        Self::backend_of(s, i).is_some_and(|b| {
            b.state == BackendState::Active
                && b.weight > 0
                && self.is_up((s.id, i))
                && !self.overloaded.contains(&(s.id, i))
        })
    }

    /// The ranks whose backends take new connections (failover order): the lowest rank,
    /// and the next ones while every destination of the ranks taken so far is down or
    /// overloaded. Every rank when none can take any.
    fn ranks_in_use(&self, s: &Svc) -> Vec<u32> {
        let mut ranks: Vec<u32> = s.spec.backends.iter().map(|b| b.rank).collect();
        ranks.sort_unstable();
        ranks.dedup();
        let mut used = Vec::new();
        for r in ranks {
            used.push(r);
            let any = (0..s.dests.len())
                .any(|i| Self::backend_of(s, i).is_some_and(|b| b.rank == r) && self.dest_ok(s, i));
            if any {
                return used;
            }
        }
        used
    }

    fn runtime(&self, s: &Svc) -> ServiceRt {
        let spec = &s.spec;
        let ranks = self.ranks_in_use(s);
        let mut dests = Vec::with_capacity(s.dests.len());
        let mut ports = Vec::with_capacity(s.dests.len());
        for d in &s.dests {
            let found = d.as_ref().and_then(|(name, p)| {
                spec.backends
                    .iter()
                    .enumerate()
                    .find(|(_, b)| &b.name == name)
                    .map(|(i, b)| (i, b, *p))
            });
            match found {
                Some((i, b, p)) => {
                    dests.push(Dest {
                        addr: b.ip,
                        port: p,
                        backend: i as u16,
                        weight: b.weight,
                        usable: ranks.contains(&b.rank) && self.dest_ok(s, dests.len()),
                    });
                    ports.push(DestPort {
                        mac: MacAddr(b.mac.0),
                        port: PortId(b.port),
                    });
                }
                None => {
                    dests.push(Dest {
                        addr: spec.vip,
                        port: 0,
                        backend: Dest::HOLE,
                        weight: 0,
                        usable: false,
                    });
                    ports.push(DestPort {
                        mac: self.mac,
                        port: PortId(0),
                    });
                }
            }
        }
        let kind = sched_kind(spec.scheduler);
        ServiceRt {
            id: s.id,
            gen: s.gen,
            vip: spec.vip,
            proto: spec.proto.number(),
            port: spec.port,
            port_end: spec.last_port(),
            mode: match spec.mode {
                LbMode::Nat => Forwarding::Nat,
                LbMode::Dr => Forwarding::Dr,
            },
            sched: kind,
            tables: SchedTables::build(kind, &dests),
            dests,
            dest_ports: ports,
            idle_us: u64::from(spec.idle_timeout_secs.unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS))
                * 1_000_000,
            linger_us: u64::from(spec.linger_secs.unwrap_or(DEFAULT_LINGER_SECS)) * 1_000_000,
            hold_us: spec
                .launch
                .as_ref()
                .map_or(0, |l| u64::from(l.hold_ms) * 1000),
            hold_max: spec.launch.as_ref().map_or(0, |l| l.hold_max),
        }
    }

    fn publish(&mut self) {
        let mut slots: Vec<Option<ServiceRt>> = (0..MAX_SERVICES).map(|_| None).collect();
        for s in self.services.values() {
            slots[usize::from(s.slot)] = Some(self.runtime(s));
        }
        let own: Vec<IpAddr> = self
            .health_v4
            .map(IpAddr::from)
            .into_iter()
            .chain(self.health_v6.map(IpAddr::from))
            .collect();
        let old = self.table.swap(Arc::new(
            LbTable::new(self.mac, slots)
                .with_own(own)
                .with_uplinks(self.uplinks.clone()),
        ));
        let now = Instant::now();
        self.retired.push_back((now, old));
        while self
            .retired
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(1))
        {
            self.retired.pop_front();
        }
    }

    /// `lb.service.add`.
    pub fn add(&mut self, spec: LbService) -> Result<Value, RpcError> {
        if self.services.contains_key(&spec.name) {
            return Err(RpcError::app(format!(
                "'name': service '{}' exists (lb.service.del it first)",
                spec.name
            )));
        }
        self.check(&spec, None)?;
        let used: Vec<u16> = self.services.values().map(|s| s.slot).collect();
        let Some(slot) = (0..MAX_SERVICES as u16).find(|s| !used.contains(s)) else {
            return Err(RpcError::app(format!(
                "{MAX_SERVICES} services exist; no room for '{}'",
                spec.name
            )));
        };
        let id = self.next_id;
        self.next_id += 1;
        let svc = Svc {
            dests: Self::assign(&spec, &[]),
            spec,
            slot,
            id,
            gen: 1,
        };
        let name = svc.spec.name.clone();
        self.services.insert(name.clone(), svc);
        self.publish();
        Ok(json!({"service": name, "slot": slot}))
    }

    /// `lb.service.del`.
    pub fn del(&mut self, name: &str) -> Result<Value, RpcError> {
        let gone = self.services.remove(name).ok_or_else(|| no_service(name))?;
        self.checker.forget(gone.id);
        self.launches.remove(&gone.id);
        self.ranks.remove(&gone.id);
        self.overloaded.retain(|t| t.0 != gone.id);
        self.health.retain(|t, _| t.0 != gone.id);
        self.publish();
        Ok(json!({"service": name, "deleted": true}))
    }

    /// `lb.service.list`.
    pub fn list(&self) -> LbServiceList {
        LbServiceList {
            services: self.services.values().map(|s| s.spec.clone()).collect(),
        }
    }

    /// `lb.service.get`.
    pub fn get(&self, name: &str) -> Result<LbService, RpcError> {
        self.services
            .get(name)
            .map(|s| s.spec.clone())
            .ok_or_else(|| no_service(name))
    }

    /// Replaces a service's spec by `f(spec)` after checking it.
    fn change(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut LbService) -> Result<(), RpcError>,
    ) -> Result<(), RpcError> {
        let cur = self.services.get(name).ok_or_else(|| no_service(name))?;
        let mut spec = cur.spec.clone();
        f(&mut spec)?;
        self.check(&spec, Some(name))?;
        let dests = Self::assign(&spec, &cur.dests);
        let id = cur.id;
        // A destination that joins a checked service takes connections only once its
        // checks pass (a launched backend is not sent SYNs before it listens).
        if spec.health.is_some() {
            let now = Instant::now();
            for (i, d) in dests.iter().enumerate() {
                let new = d.is_some() && cur.dests.get(i).cloned().flatten() != *d;
                if new {
                    self.health.insert(
                        (id, i),
                        DestHealth {
                            up: false,
                            passes: 0,
                            fails: 0,
                            next_at: now,
                            reason: "new: waiting for its first checks".into(),
                            passive_seen: 0,
                        },
                    );
                }
            }
        }
        for (i, d) in dests.iter().enumerate() {
            if d.is_none() {
                self.health.remove(&(id, i));
            }
        }
        if let Some(s) = self.services.get_mut(name) {
            s.spec = spec;
            s.dests = dests;
            s.gen += 1;
        }
        self.publish();
        Ok(())
    }

    /// `lb.backend.add`.
    pub fn backend_add(&mut self, p: LbBackendAdd) -> Result<Value, RpcError> {
        let b = p.backend;
        let name = b.name.clone();
        self.change(&p.service, |s| {
            if s.backends.iter().any(|x| x.name == b.name) {
                return Err(RpcError::app(format!(
                    "'backend.name': '{}' exists in service '{}'",
                    b.name, s.name
                )));
            }
            s.backends.push(b);
            Ok(())
        })?;
        Ok(json!({"service": p.service, "backend": name}))
    }

    /// `lb.backend.del`.
    pub fn backend_del(&mut self, p: LbBackendName) -> Result<Value, RpcError> {
        self.change(&p.service, |s| {
            let before = s.backends.len();
            s.backends.retain(|b| b.name != p.name);
            if s.backends.len() == before {
                return Err(no_backend(&s.name, &p.name));
            }
            Ok(())
        })?;
        Ok(json!({"service": p.service, "backend": p.name, "deleted": true}))
    }

    /// `lb.backend.set`.
    pub fn backend_set(&mut self, p: LbBackendSet) -> Result<Value, RpcError> {
        self.change(&p.service, |s| {
            let svc = s.name.clone();
            let b = s
                .backends
                .iter_mut()
                .find(|b| b.name == p.name)
                .ok_or_else(|| no_backend(&svc, &p.name))?;
            if let Some(w) = p.weight {
                b.weight = w;
            }
            if let Some(r) = p.rank {
                b.rank = r;
            }
            if let Some(st) = p.state {
                b.state = st;
            }
            Ok(())
        })?;
        Ok(json!({"service": p.service, "backend": p.name}))
    }

    /// `lb.stats`: counters summed over the workers.
    pub fn stats(&self, only: Option<&str>) -> Result<LbStats, RpcError> {
        if let Some(n) = only {
            if !self.services.contains_key(n) {
                return Err(no_service(n));
            }
        }
        let mut out = LbStats::default();
        for s in self.services.values() {
            if only.is_some_and(|n| n != s.spec.name) {
                continue;
            }
            let slot = usize::from(s.slot);
            // Counters of a worker that has not yet seen this service belong to the
            // slot's previous owner.
            let mine: Vec<&Arc<LbCounters>> = self
                .counters
                .iter()
                .filter(|c| {
                    c.svc_id.get(slot).is_some_and(|x| {
                        x.load(std::sync::atomic::Ordering::Relaxed) == u64::from(s.id)
                    })
                })
                .collect();
            let sum_svc = |w| mine.iter().map(|c| c.svc(slot, w)).sum::<u64>();
            let mut st = LbServiceStats {
                name: s.spec.name.clone(),
                conns: sum_svc(SVC_CONNS),
                no_dest: sum_svc(SVC_NO_DEST),
                table_full: sum_svc(SVC_TABLE_FULL),
                no_conn: sum_svc(SVC_NO_CONN),
                held: sum_svc(SVC_HELD),
                released: sum_svc(SVC_RELEASED),
                held_dropped: sum_svc(SVC_HELD_DROPPED),
                held_now: sum_svc(SVC_HELD_NOW),
                ranks_in_use: self.ranks_in_use(s),
                launches: self.launches.get(&s.id).map_or(0, |l| l.count),
                conns_now: 0,
                dests: vec![],
            };
            for (i, d) in s.dests.iter().enumerate() {
                let Some((bname, port)) = d else { continue };
                let Some(b) = s.spec.backends.iter().find(|b| &b.name == bname) else {
                    continue;
                };
                let sum = |w| mine.iter().map(|c| c.dest(slot, i, w)).sum::<u64>();
                let resp: Vec<u64> = mine
                    .iter()
                    .map(|c| c.dest(slot, i, DEST_RESP_US))
                    .filter(|&v| v > 0)
                    .collect();
                let active = sum(DEST_ACTIVE);
                let h = self.health.get(&(s.id, i));
                let inactive = sum(DEST_INACTIVE);
                st.conns_now += active + inactive;
                st.dests.push(LbDestStats {
                    backend: bname.clone(),
                    ip: b.ip,
                    soft_port: *port,
                    conns: sum(DEST_CONNS),
                    active,
                    inactive,
                    inflight: sum(DEST_INFLIGHT),
                    resp_ewma_us: if resp.is_empty() {
                        0
                    } else {
                        resp.iter().sum::<u64>() / resp.len() as u64
                    },
                    packets_in: sum(DEST_PKTS_IN),
                    packets_out: sum(DEST_PKTS_OUT),
                    up: self.dest_ok(s, i) && self.ranks_in_use(s).contains(&b.rank),
                    reason: if b.state != BackendState::Active {
                        format!("backend {}", state_name(b.state))
                    } else if b.weight == 0 {
                        "weight 0".into()
                    } else if self.overloaded.contains(&(s.id, i)) {
                        "overloaded (max_conns)".into()
                    } else if self.is_up((s.id, i)) && !self.ranks_in_use(s).contains(&b.rank) {
                        format!("standby (rank {})", b.rank)
                    } else {
                        h.filter(|h| !h.up)
                            .map(|h| h.reason.clone())
                            .unwrap_or_default()
                    },
                    passive_failures: sum(DEST_PASSIVE_FAIL),
                });
            }
            out.services.push(st);
        }
        Ok(out)
    }

    /// The answer to an ARP request or neighbour solicitation for a service address.
    pub fn neighbor_reply(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let ip: IpAddr = crate::neighbor::query_target(frame)?;
        if !self.table.load().is_vip(ip) {
            return None;
        }
        let r = crate::neighbor::reply(frame, self.mac, ip)?;
        self.neighbor_replies += 1;
        Some(r)
    }

    /// True unless checks have taken the destination down.
    fn is_up(&self, t: Target) -> bool {
        self.health.get(&t).is_none_or(|h| h.up)
    }

    /// Runs the health checks: sends those due, fails those late, counts passive
    /// failures, and republishes when a destination went up or down. Returns frames to
    /// send.
    pub fn tick(&mut self, now: Instant) -> Vec<Outgoing> {
        if self
            .last_eval
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(50))
        {
            self.last_eval = Some(now);
            self.evaluate(now);
        }
        let mut out = Vec::new();
        let mut verdicts = Vec::new();
        for (t, v, rst) in self.checker.expire(now) {
            verdicts.push((t, v));
            out.extend(rst);
        }
        let mut starts = Vec::new();
        for s in self.services.values() {
            let Some(hc) = &s.spec.health else { continue };
            let slot = usize::from(s.slot);
            for (i, d) in s.dests.iter().enumerate() {
                let Some((bname, port)) = d else { continue };
                let Some(b) = s.spec.backends.iter().find(|b| &b.name == bname) else {
                    continue;
                };
                let t = (s.id, i);
                // Passive: failures the workers saw in traffic since the last tick.
                let passive: u64 = self
                    .counters
                    .iter()
                    .filter(|c| {
                        c.svc_id.get(slot).is_some_and(|x| {
                            x.load(std::sync::atomic::Ordering::Relaxed) == u64::from(s.id)
                        })
                    })
                    .map(|c| c.dest(slot, i, DEST_PASSIVE_FAIL))
                    .sum();
                let h = self.health.entry(t).or_insert_with(|| DestHealth {
                    up: true,
                    passes: 0,
                    fails: 0,
                    next_at: now,
                    reason: String::new(),
                    passive_seen: passive,
                });
                if passive > h.passive_seen {
                    let n = passive - h.passive_seen;
                    h.passive_seen = passive;
                    verdicts.push((
                        t,
                        Verdict::Fail(format!(
                            "{n} client connection(s) refused or unanswered (passive check)"
                        )),
                    ));
                }
                if now < h.next_at || self.checker.busy(t) {
                    continue;
                }
                h.next_at = now + Duration::from_millis(u64::from(hc.interval_ms));
                let source = match b.ip {
                    IpAddr::V4(_) => self.health_v4.map(IpAddr::from),
                    IpAddr::V6(_) => self.health_v6.map(IpAddr::from),
                };
                let Some(source) = source else { continue };
                starts.push((
                    t,
                    Endpoint {
                        ip: b.ip,
                        port: *port,
                        mac: MacAddr(b.mac.0),
                        switch_port: PortId(b.port),
                        source,
                    },
                    hc.clone(),
                ));
            }
        }
        for (t, ep, hc) in starts {
            out.extend(self.checker.start(t, ep, &hc, now));
        }
        self.apply(verdicts);
        out
    }

    /// The workers' counter `word` of service `s`, summed over those that know it.
    fn svc_sum(&self, s: &Svc, word: usize) -> u64 {
        let slot = usize::from(s.slot);
        self.counters
            .iter()
            .filter(|c| {
                c.svc_id.get(slot).is_some_and(|x| {
                    x.load(std::sync::atomic::Ordering::Relaxed) == u64::from(s.id)
                })
            })
            .map(|c| c.svc(slot, word))
            .sum()
    }

    /// Overload (`max_conns`), failover order and launch on demand, every 50 ms.
    fn evaluate(&mut self, now: Instant) {
        let mut over = std::collections::HashSet::new();
        for s in self.services.values() {
            let Some(max) = s.spec.max_conns else {
                continue;
            };
            let slot = usize::from(s.slot);
            for i in 0..s.dests.len() {
                let n: u64 = self
                    .counters
                    .iter()
                    .filter(|c| {
                        c.svc_id.get(slot).is_some_and(|x| {
                            x.load(std::sync::atomic::Ordering::Relaxed) == u64::from(s.id)
                        })
                    })
                    .map(|c| c.dest(slot, i, DEST_ACTIVE) + c.dest(slot, i, DEST_INACTIVE))
                    .sum();
                if n >= u64::from(max) {
                    over.insert((s.id, i));
                }
            }
        }
        let mut changed = over != self.overloaded;
        self.overloaded = over;
        // Failover order: an event when the ranks in use change.
        let mut rank_events = Vec::new();
        for s in self.services.values() {
            let r = self.ranks_in_use(s);
            if self.ranks.get(&s.id) != Some(&r) {
                if self.ranks.contains_key(&s.id) {
                    rank_events.push(json!({
                        "event": "lb_failover", "service": s.spec.name, "ranks_in_use": r,
                    }));
                }
                self.ranks.insert(s.id, r);
                changed = true;
            }
        }
        self.events.extend(rank_events);
        // Launch on demand: a held connection and no destination that can take it.
        let mut to_launch = Vec::new();
        for s in self.services.values() {
            let Some(l) = &s.spec.launch else { continue };
            let none = !(0..s.dests.len()).any(|i| self.dest_ok(s, i));
            let held = self.svc_sum(s, SVC_HELD);
            let st = self.launches.entry(s.id).or_default();
            if let Some(c) = st.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    st.child = None;
                }
            }
            let new_held = held > st.held_seen;
            st.held_seen = held;
            let recent = st.started.is_some_and(|t| {
                now.duration_since(t) < Duration::from_millis(u64::from(l.hold_ms))
            });
            if none && new_held && st.child.is_none() && !recent {
                to_launch.push((s.id, s.spec.name.clone(), l.command.clone(), s.dests.len()));
            }
        }
        for (id, name, cmd, n) in to_launch {
            let reason = format!(
                "no backend can take a new connection ({n} destinations down or overloaded)"
            );
            let mut c = std::process::Command::new(&cmd[0]);
            c.args(&cmd[1..]).arg(&name).arg(&reason);
            c.stdin(std::process::Stdio::null());
            let st = self.launches.entry(id).or_default();
            st.started = Some(now);
            match c.spawn() {
                Ok(child) => {
                    st.child = Some(child);
                    st.count += 1;
                    self.events.push(json!({
                        "event": "lb_launch", "service": name, "command": cmd, "reason": reason,
                    }));
                }
                Err(e) => self.events.push(json!({
                    "event": "lb_launch_failed", "service": name, "command": cmd,
                    "error": e.to_string(),
                })),
            }
        }
        if changed {
            self.publish();
        }
    }

    /// A frame for one of the switch's balancer addresses (a check's answer).
    pub fn on_health_frame(&mut self, frame: &[u8]) -> Option<Outgoing> {
        let (t, v, out) = self.checker.on_frame(frame)?;
        if let Some(v) = v {
            self.apply(vec![(t, v)]);
        }
        out
    }

    /// Counts verdicts: a destination goes down after `fall` failures in a row and comes
    /// back after `rise` passes in a row. Only services with checks are judged (without
    /// them, nothing could bring a destination back).
    fn apply(&mut self, verdicts: Vec<(Target, Verdict)>) {
        let mut changed = false;
        for (t, v) in verdicts {
            let Some(s) = self.services.values().find(|s| s.id == t.0) else {
                continue;
            };
            let Some(hc) = s.spec.health.clone() else {
                continue;
            };
            let name = s.spec.name.clone();
            let dest = s.dests.get(t.1).cloned().flatten();
            let Some(h) = self.health.get_mut(&t) else {
                continue;
            };
            let (backend, soft_port) = dest.map_or((String::new(), 0), |d| d);
            match v {
                Verdict::Pass => {
                    h.fails = 0;
                    h.passes += 1;
                    if !h.up && h.passes >= hc.rise {
                        h.up = true;
                        h.reason.clear();
                        changed = true;
                        self.events.push(json!({
                            "event": "lb_dest_up", "service": name,
                            "backend": backend, "soft_port": soft_port,
                        }));
                    }
                }
                Verdict::Fail(why) => {
                    h.passes = 0;
                    h.fails += 1;
                    h.reason.clone_from(&why);
                    if h.up && h.fails >= hc.fall {
                        h.up = false;
                        changed = true;
                        self.events.push(json!({
                            "event": "lb_dest_down", "service": name,
                            "backend": backend, "soft_port": soft_port, "reason": why,
                        }));
                    }
                }
            }
        }
        if changed {
            for s in self.services.values_mut() {
                s.gen += 1;
            }
            self.publish();
        }
    }

    /// Sets the uplink team (at start).
    pub fn set_uplinks(&mut self, ports: &[u16], by_load: bool) {
        self.uplinks = switch_core::lb::table::Uplinks {
            ports: ports.iter().map(|&p| PortId(p)).collect(),
            select: if by_load {
                switch_core::lb::table::UplinkSelect::Load
            } else {
                switch_core::lb::table::UplinkSelect::Hash
            },
            load: ports
                .iter()
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        };
        self.publish();
    }

    /// Makes `services` the whole set (at start, from the state file): all or nothing.
    pub fn replace_all(&mut self, services: &[LbService]) -> Result<(), String> {
        let keep: Vec<LbService> = self.list().services;
        let names: Vec<String> = self.services.keys().cloned().collect();
        for n in &names {
            let _ = self.del(n);
        }
        if let Err(e) = self.add_configured(services) {
            for n in self.services.keys().cloned().collect::<Vec<_>>() {
                let _ = self.del(&n);
            }
            let _ = self.add_configured(&keep);
            return Err(e);
        }
        Ok(())
    }

    /// Services in the configuration, added at start (each checked like `lb.service.add`).
    pub fn add_configured(&mut self, services: &[LbService]) -> Result<(), String> {
        for s in services {
            self.add(s.clone())
                .map_err(|e| format!("lb.services '{}': {}", s.name, e.message))?;
        }
        Ok(())
    }
}

fn state_name(s: BackendState) -> &'static str {
    match s {
        BackendState::Active => "active",
        BackendState::Draining => "draining",
        BackendState::Disabled => "disabled",
    }
}

fn no_service(name: &str) -> RpcError {
    RpcError::app(format!("no service '{name}'"))
}

fn no_backend(svc: &str, name: &str) -> RpcError {
    RpcError::app(format!("service '{svc}' has no backend '{name}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LbService {
        serde_json::from_value(json!({
            "name": "web", "vip": "198.18.100.1", "port": 80, "scheduler": "rr",
            "backends": [
                {"name": "b1", "port": 1, "mac": "02:00:00:00:00:01", "ip": "198.18.0.11",
                 "soft_ports": [8080, 8081]},
                {"name": "b2", "port": 2, "mac": "02:00:00:00:00:02", "ip": "198.18.0.12"}
            ]
        }))
        .unwrap()
    }

    fn lb() -> LbManager {
        LbManager::new(MacAddr([2, 0x53, 0x54, 0x4c, 0x42, 1]), 3, None, None)
    }

    #[test]
    fn a_service_is_published_with_a_destination_per_software_port() {
        let mut m = lb();
        m.add(spec()).unwrap();
        let t = m.table.load();
        let s = t.services[0].as_ref().unwrap();
        let got: Vec<(u16, u16)> = s.dests.iter().map(|d| (d.backend, d.port)).collect();
        assert_eq!(got, vec![(0, 8080), (0, 8081), (1, 80)]);
        assert!(t.is_vip("198.18.100.1".parse().unwrap()));
    }

    #[test]
    fn refused_changes_change_nothing() {
        let mut m = lb();
        m.add(spec()).unwrap();
        let before = m.list();
        let mut dup = spec();
        assert!(m.add(dup.clone()).unwrap_err().message.contains("exists"));
        dup.name = "web2".into();
        assert!(m.add(dup.clone()).unwrap_err().message.contains("overlap"));
        dup.port = 81;
        dup.backends[0].port = 9;
        assert!(m.add(dup).unwrap_err().message.contains("does not exist"));
        let e = m
            .backend_set(LbBackendSet {
                service: "web".into(),
                name: "b1".into(),
                weight: Some(1_000_000),
                rank: None,
                state: None,
            })
            .unwrap_err();
        assert!(e.message.contains("'weight'"), "{}", e.message);
        assert!(m
            .backend_del(LbBackendName {
                service: "web".into(),
                name: "zz".into()
            })
            .unwrap_err()
            .message
            .contains("no backend 'zz'"));
        assert_eq!(m.list(), before);
    }

    #[test]
    fn removing_a_backend_leaves_the_other_destinations_where_they_were() {
        let mut m = lb();
        m.add(spec()).unwrap();
        m.backend_del(LbBackendName {
            service: "web".into(),
            name: "b1".into(),
        })
        .unwrap();
        let t = m.table.load();
        let s = t.services[0].as_ref().unwrap();
        assert_eq!(s.dests.len(), 3);
        assert!(!s.dests[0].usable && !s.dests[1].usable);
        assert_eq!((s.dests[2].port, s.dests[2].backend), (80, 0));
        assert_eq!(s.gen, 2);
    }
}
