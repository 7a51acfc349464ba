//! The load balancer's slow-path side: the services as configured, validated and
//! published for the workers, their counters gathered, and ARP/ND answered for the
//! service addresses.
//!
//! One owner: the slow path holds the [`LbManager`]; every change builds a new
//! [`LbTable`] and swaps it in (the workers load it once per poll round). The workers'
//! per-connection state lives in their own [`Balancer`](switch_core::lb::balancer)s;
//! this side never touches it.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
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
    LbCounters, DEST_ACTIVE, DEST_CONNS, DEST_INACTIVE, DEST_INFLIGHT, DEST_PKTS_IN, DEST_PKTS_OUT,
    DEST_RESP_US, SVC_CONNS, SVC_NO_CONN, SVC_NO_DEST, SVC_TABLE_FULL,
};
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

/// The slow path's balancer state (see the module docs).
pub struct LbManager {
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
    pub fn new(mac: MacAddr, n_ports: usize) -> LbManager {
        LbManager {
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

    fn runtime(&self, s: &Svc) -> ServiceRt {
        let spec = &s.spec;
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
                        usable: b.state == BackendState::Active && b.weight > 0,
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
                        backend: u16::MAX,
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
        }
    }

    fn publish(&mut self) {
        let mut slots: Vec<Option<ServiceRt>> = (0..MAX_SERVICES).map(|_| None).collect();
        for s in self.services.values() {
            slots[usize::from(s.slot)] = Some(self.runtime(s));
        }
        let old = self.table.swap(Arc::new(LbTable::new(self.mac, slots)));
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
        self.services.remove(name).ok_or_else(|| no_service(name))?;
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

    /// Services in the configuration, added at start (each checked like `lb.service.add`).
    pub fn add_configured(&mut self, services: &[LbService]) -> Result<(), String> {
        for s in services {
            self.add(s.clone())
                .map_err(|e| format!("lb.services '{}': {}", s.name, e.message))?;
        }
        Ok(())
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
        LbManager::new(MacAddr([2, 0x53, 0x54, 0x4c, 0x42, 1]), 3)
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
