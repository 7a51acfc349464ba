//! The load balancer on the control socket: services, their backends, and what
//! `lb.service.list`, `lb.service.get` and `lb.stats` answer.
//!
//! A **service** is a virtual address (IPv4 or IPv6), a protocol and a port (or a port
//! range) with a pool of **backends**; each backend is a station behind a switch port
//! (its MAC and IP) with one or more **software ports** (the same application listening
//! on several TCP/UDP ports). Each software port of a backend is one destination, the
//! unit IPVS calls a real server.
//!
//! The same types are the `[[lb.services]]` tables of the TOML configuration, so a
//! service reads the same in a file and on the socket. Unknown fields are refused
//! everywhere; [`LbService::check`] and [`LbBackend::check`] refuse what serde cannot
//! (ranges, duplicates), naming the field and the reason.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::protocol::Mac;

/// Most services a switch balances.
pub const MAX_SERVICES: usize = 64;
/// Most destinations (backend x software port) one service has.
pub const MAX_DESTS: usize = 256;
/// Longest service or backend name.
pub const MAX_NAME: usize = 64;
/// Idle timeout when none is given: IPVS's for an established TCP connection.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u32 = 900;
/// Linger after both FINs or an RST when none is given.
pub const DEFAULT_LINGER_SECS: u32 = 10;

/// Transport protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbProto {
    #[default]
    Tcp,
    Udp,
}

impl LbProto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            LbProto::Tcp => 6,
            LbProto::Udp => 17,
        }
    }
}

/// How frames reach the chosen backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbMode {
    /// Destination address and port rewritten to the backend's, replies rewritten
    /// back (IPVS masquerading).
    #[default]
    Nat,
    /// Only the destination MAC is rewritten; the backend owns the service address
    /// on a loopback and answers the client directly (IPVS direct routing).
    Dr,
}

/// A service's scheduler (IPVS names, plus `maglev` and `queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbScheduler {
    Rr,
    Wrr,
    Lc,
    /// IPVS's default.
    #[default]
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    Maglev,
    Queue,
}

/// Whether a backend takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Takes new connections.
    #[default]
    Active,
    /// Takes none; its connections go on until they end.
    Draining,
    /// Takes none (an operator's choice); its connections go on until they end.
    Disabled,
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbBackend {
    /// Unique within the service.
    pub name: String,
    /// The switch port the backend is behind.
    pub port: u16,
    /// The backend's MAC address.
    pub mac: Mac,
    /// The backend's IP address (the service's family).
    pub ip: IpAddr,
    /// The ports the application listens on; empty: the service's port. In DR mode the
    /// port cannot change, so only the service's port is allowed.
    #[serde(default)]
    pub soft_ports: Vec<u16>,
    /// Relative share (0: no new connections), as an IPVS weight.
    #[serde(default = "one")]
    pub weight: u32,
    /// Failover rank: lower ranks are used first.
    #[serde(default)]
    pub rank: u32,
    #[serde(default)]
    pub state: BackendState,
}

fn one() -> u32 {
    1
}

/// Largest weight (IPVS allows up to INT_MAX; this keeps weighted sums in 64 bits).
pub const MAX_WEIGHT: u32 = 65_535;

fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_NAME {
        return Err(format!("'{what}': must be 1-{MAX_NAME} characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "'{what}': '{s}' may only contain letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

impl LbBackend {
    /// The software ports in effect (the service port when none are given).
    pub fn ports(&self, service_port: u16) -> Vec<u16> {
        if self.soft_ports.is_empty() {
            vec![service_port]
        } else {
            self.soft_ports.clone()
        }
    }

    /// Checks what serde cannot, for a backend of `svc`.
    pub fn check(&self, svc: &LbService) -> Result<(), String> {
        check_name("name", &self.name)?;
        let b = &self.name;
        if self.ip.is_ipv4() != svc.vip.is_ipv4() {
            return Err(format!(
                "backend '{b}': 'ip' {} is not of the service's family ({})",
                self.ip, svc.vip
            ));
        }
        if self.ip.is_unspecified() || self.ip.is_multicast() || self.ip == svc.vip {
            return Err(format!(
                "backend '{b}': 'ip' {} cannot be a backend address",
                self.ip
            ));
        }
        if self.mac.0[0] & 1 == 1 || self.mac.0 == [0; 6] {
            return Err(format!(
                "backend '{b}': 'mac' {} is not a unicast address",
                self.mac
            ));
        }
        if self.weight > MAX_WEIGHT {
            return Err(format!(
                "backend '{b}': 'weight' {} is above {MAX_WEIGHT}",
                self.weight
            ));
        }
        let mut seen = BTreeSet::new();
        for &p in &self.soft_ports {
            if p == 0 {
                return Err(format!("backend '{b}': 'soft_ports': port 0"));
            }
            if !seen.insert(p) {
                return Err(format!("backend '{b}': 'soft_ports': {p} given twice"));
            }
        }
        if svc.mode == LbMode::Dr && self.soft_ports.iter().any(|&p| p != svc.port) {
            return Err(format!(
                "backend '{b}': 'soft_ports': direct routing cannot change the port; \
                 give none (or only {})",
                svc.port
            ));
        }
        Ok(())
    }
}

/// What an active health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP SYN to the software port: a SYN-ACK passes, an RST or silence fails.
    #[default]
    Tcp,
    /// A TCP connection and `GET path`: the answer's status must be `expect_status`.
    Http,
}

/// A service's health checks (keepalived's `TCP_CHECK`/`HTTP_GET`, HAProxy's `check`):
/// sent from the switch's own address (`[lb] health_ipv4`/`health_ipv6`) to every
/// software port of every backend. Passive checks (an RST answering a client's SYN, a SYN
/// never answered) count as failed checks too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbHealth {
    #[serde(default)]
    pub kind: HealthKind,
    /// Milliseconds between checks of one destination (50-600000, default 2000).
    #[serde(default = "health_interval")]
    pub interval_ms: u32,
    /// Milliseconds a check may take (10-60000, default 1000).
    #[serde(default = "health_timeout")]
    pub timeout_ms: u32,
    /// Passed checks in a row that bring a destination up (1-100, default 2).
    #[serde(default = "two")]
    pub rise: u32,
    /// Failed checks in a row that take it down (1-100, default 3).
    #[serde(default = "three")]
    pub fall: u32,
    /// HTTP: the path requested (default "/").
    #[serde(default = "slash")]
    pub path: String,
    /// HTTP: the status that passes (default 200).
    #[serde(default = "ok200")]
    pub expect_status: u16,
}

fn health_interval() -> u32 {
    2000
}
fn health_timeout() -> u32 {
    1000
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn slash() -> String {
    "/".into()
}
fn ok200() -> u16 {
    200
}

impl LbHealth {
    /// Checks the ranges.
    pub fn check(&self) -> Result<(), String> {
        if !(50..=600_000).contains(&self.interval_ms) {
            return Err(format!(
                "'health.interval_ms': {} is not 50-600000",
                self.interval_ms
            ));
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            return Err(format!(
                "'health.timeout_ms': {} is not 10-60000",
                self.timeout_ms
            ));
        }
        if !(1..=100).contains(&self.rise) || !(1..=100).contains(&self.fall) {
            return Err("'health.rise' and 'health.fall' must be 1-100".into());
        }
        if !self.path.starts_with('/')
            || self.path.len() > 1024
            || self.path.bytes().any(|b| b.is_ascii_control() || b == b' ')
        {
            return Err(format!(
                "'health.path': '{}' must start with '/', have no spaces or control characters, and be at most 1024 bytes",
                self.path.chars().take(40).collect::<String>()
            ));
        }
        if !(100..=599).contains(&self.expect_status) {
            return Err(format!(
                "'health.expect_status': {} is not 100-599",
                self.expect_status
            ));
        }
        Ok(())
    }
}

/// Launch on demand (seed 003, figure 6): when no backend of the service can take a new
/// connection, `command` is run (with the service name and the reason appended as two
/// more arguments) to start one, and new connections are held meanwhile: their SYNs (or
/// first datagrams) wait in the switch, at most `hold_max` per worker and `hold_ms` each,
/// and are released to the first backend that comes up. The client sees a slower
/// connect, not a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbLaunch {
    /// The program and its first arguments (absolute path; no shell).
    pub command: Vec<String>,
    /// Connections held at once, per worker (1-4096, default 256).
    #[serde(default = "hold_max")]
    pub hold_max: u32,
    /// Longest a connection is held, in milliseconds (100-120000, default 10000).
    #[serde(default = "hold_ms")]
    pub hold_ms: u32,
}

fn hold_max() -> u32 {
    256
}
fn hold_ms() -> u32 {
    10_000
}

impl LbLaunch {
    /// Checks the ranges.
    pub fn check(&self) -> Result<(), String> {
        match self.command.first() {
            Some(c) if c.starts_with('/') => {}
            _ => return Err("'launch.command': give the program's absolute path first".into()),
        }
        if !(1..=4096).contains(&self.hold_max) {
            return Err(format!(
                "'launch.hold_max': {} is not 1-4096",
                self.hold_max
            ));
        }
        if !(100..=120_000).contains(&self.hold_ms) {
            return Err(format!(
                "'launch.hold_ms': {} is not 100-120000",
                self.hold_ms
            ));
        }
        Ok(())
    }
}

/// A balanced service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbService {
    /// Unique on the switch.
    pub name: String,
    /// The virtual address clients connect to.
    pub vip: IpAddr,
    #[serde(default)]
    pub proto: LbProto,
    /// The service port (the first of a range when `port_end` is given).
    pub port: u16,
    /// The last port of a range (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_end: Option<u16>,
    #[serde(default)]
    pub mode: LbMode,
    #[serde(default)]
    pub scheduler: LbScheduler,
    #[serde(default)]
    pub backends: Vec<LbBackend>,
    /// Seconds an idle connection is kept (default 900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u32>,
    /// Seconds a connection is kept after both FINs or an RST (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger_secs: Option<u32>,
    /// Active health checks (absent: none; passive checks still apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<LbHealth>,
    /// A destination with this many connections (active + inactive, over the workers)
    /// counts as overloaded: it gets no new ones, and when every destination of the
    /// lowest rank is down or overloaded the next rank is used (IPVS's upper threshold,
    /// keepalived's failover). Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_conns: Option<u32>,
    /// Launch on demand (absent: a service with no usable backend refuses new
    /// connections, counted as `no_dest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LbLaunch>,
}

impl LbService {
    /// The last port of the service's range.
    pub fn last_port(&self) -> u16 {
        self.port_end.unwrap_or(self.port)
    }

    /// Destinations (backend x software port) the service has.
    pub fn dest_count(&self) -> usize {
        self.backends.iter().map(|b| b.ports(self.port).len()).sum()
    }

    /// Checks what serde cannot: names, ranges, families, duplicates.
    pub fn check(&self) -> Result<(), String> {
        check_name("name", &self.name)?;
        if self.vip.is_unspecified() || self.vip.is_multicast() || self.vip.is_loopback() {
            return Err(format!("'vip': {} cannot be a service address", self.vip));
        }
        if self.port == 0 {
            return Err("'port': must be 1-65535".into());
        }
        if let Some(e) = self.port_end {
            if e < self.port {
                return Err(format!("'port_end': {e} is below 'port' {}", self.port));
            }
        }
        if let Some(t) = self.idle_timeout_secs {
            if !(1..=604_800).contains(&t) {
                return Err(format!("'idle_timeout_secs': {t} is not 1-604800"));
            }
        }
        if let Some(t) = self.linger_secs {
            if t > 3600 {
                return Err(format!("'linger_secs': {t} is not 0-3600"));
            }
        }
        if let Some(h) = &self.health {
            h.check()?;
        }
        if let Some(l) = &self.launch {
            l.check()?;
        }
        if self.max_conns == Some(0) {
            return Err("'max_conns': 0 would refuse every connection".into());
        }
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for b in &self.backends {
            b.check(self)?;
            if !names.insert(&b.name) {
                return Err(format!("'backends': name '{}' given twice", b.name));
            }
            for p in b.ports(self.port) {
                if !addrs.insert((b.ip, p)) {
                    return Err(format!(
                        "'backends': {} port {p} is given by two backends",
                        b.ip
                    ));
                }
            }
        }
        if self.dest_count() > MAX_DESTS {
            return Err(format!(
                "'backends': {} destinations (backend x software port); at most {MAX_DESTS}",
                self.dest_count()
            ));
        }
        Ok(())
    }
}

/// `lb.service.del`, `lb.service.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbServiceName {
    pub name: String,
}

/// `lb.backend.add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbBackendAdd {
    pub service: String,
    pub backend: LbBackend,
}

/// `lb.backend.del`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbBackendName {
    pub service: String,
    pub name: String,
}

/// `lb.backend.set`: the fields given change, the others stay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbBackendSet {
    pub service: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<BackendState>,
}

/// `lb.stats`: one service, or every one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbStatsParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One destination's counters, summed over the workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbDestStats {
    pub backend: String,
    pub ip: IpAddr,
    pub soft_port: u16,
    /// Connections given to it since it was added.
    pub conns: u64,
    pub active: u64,
    pub inactive: u64,
    /// Requests sent and not yet answered (NAT mode).
    pub inflight: u64,
    /// Smoothed response time in microseconds (the workers' mean; 0: unknown).
    pub resp_ewma_us: u64,
    /// Frames towards it, and replies from it (NAT).
    pub packets_in: u64,
    pub packets_out: u64,
    /// Whether it takes new connections now (its backend active and its checks passing).
    pub up: bool,
    /// Why it is down (the last failed check), or "" when up.
    #[serde(default)]
    pub reason: String,
    /// Checks failed by traffic: an RST answering a client's SYN, a SYN never answered.
    pub passive_failures: u64,
}

/// One service's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbServiceStats {
    pub name: String,
    /// Connections scheduled.
    pub conns: u64,
    /// New connections refused: no usable destination.
    pub no_dest: u64,
    /// New connections refused: a worker's connection table was full.
    pub table_full: u64,
    /// Frames for the service that started no connection and belonged to none (a TCP
    /// segment without SYN): dropped, as IPVS does.
    pub no_conn: u64,
    /// New connections held while a backend was launched, released to it, and dropped
    /// after `hold_ms` or beyond `hold_max`.
    pub held: u64,
    pub released: u64,
    pub held_dropped: u64,
    /// Connections held now.
    pub held_now: u64,
    /// The ranks whose backends take new connections now (failover order).
    pub ranks_in_use: Vec<u32>,
    /// Launch hooks run.
    pub launches: u64,
    /// Connections held now, over the workers.
    pub conns_now: u64,
    pub dests: Vec<LbDestStats>,
}

/// `lb.stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbStats {
    pub services: Vec<LbServiceStats>,
}

/// `lb.service.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbServiceList {
    pub services: Vec<LbService>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> LbService {
        serde_json::from_value(json!({
            "name": "web", "vip": "198.18.100.1", "port": 80,
            "backends": [
                {"name": "b1", "port": 1, "mac": "02:00:00:00:00:01", "ip": "198.18.0.11",
                 "soft_ports": [8080, 8081]},
                {"name": "b2", "port": 2, "mac": "02:00:00:00:00:02", "ip": "198.18.0.12"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_ipvs_like_and_destinations_count_soft_ports() {
        let s = svc();
        assert_eq!(
            (s.proto, s.mode, s.scheduler),
            (LbProto::Tcp, LbMode::Nat, LbScheduler::Wlc)
        );
        assert_eq!(s.backends[1].weight, 1);
        assert_eq!(s.dest_count(), 3);
        assert_eq!(s.backends[1].ports(80), vec![80]);
        s.check().unwrap();
    }

    #[test]
    fn bad_services_name_the_field() {
        #[allow(clippy::type_complexity)]
        let cases: Vec<(Box<dyn Fn(&mut LbService)>, &str)> = vec![
            (Box::new(|s| s.name = "a b".into()), "'name'"),
            (Box::new(|s| s.port = 0), "'port'"),
            (Box::new(|s| s.port_end = Some(79)), "'port_end'"),
            (Box::new(|s| s.vip = "0.0.0.0".parse().unwrap()), "'vip'"),
            (Box::new(|s| s.backends[1].name = "b1".into()), "twice"),
            (
                Box::new(|s| s.backends[1].ip = "2001:db8::1".parse().unwrap()),
                "family",
            ),
            (
                Box::new(|s| s.backends[0].soft_ports = vec![8080, 8080]),
                "twice",
            ),
            (Box::new(|s| s.backends[0].weight = 70_000), "'weight'"),
            (
                Box::new(|s| s.backends[0].mac = Mac([1, 0, 0, 0, 0, 1])),
                "'mac'",
            ),
            (Box::new(|s| s.mode = LbMode::Dr), "direct routing"),
            (
                Box::new(|s| s.idle_timeout_secs = Some(0)),
                "'idle_timeout_secs'",
            ),
            (
                Box::new(|s| {
                    s.backends[1].ip = s.backends[0].ip;
                    s.backends[1].soft_ports = vec![8081];
                }),
                "two backends",
            ),
        ];
        for (f, want) in cases {
            let mut s = svc();
            f(&mut s);
            let e = s.check().unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn unknown_fields_and_schedulers_are_refused_by_serde() {
        let mut v = serde_json::to_value(svc()).unwrap();
        v["sched"] = json!("rr");
        assert!(serde_json::from_value::<LbService>(v)
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
        let mut v = serde_json::to_value(svc()).unwrap();
        v["scheduler"] = json!("fastest");
        assert!(serde_json::from_value::<LbService>(v)
            .unwrap_err()
            .to_string()
            .contains("unknown variant"));
    }
}
