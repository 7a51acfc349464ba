//! The scale simulation: a whole fleet in one process against real prosody
//! servers — one upstream, `clusters` downstream managers, `clusters ×
//! agents` agents as tasks (null VM driver) — measuring login time, the
//! stanzas of an idle fleet, provisioning latency and stanza rates.
//!
//! Latency is the upstream's own record: a request's `updated_ms` (final
//! result stored) minus its `created_ms` (accepted), so the client's polling
//! does not blur it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_xmpp::jid::BareJid;

use crate::agent::{self, AgentConfig, DriverKind};
use crate::api::{ClusterView, RequestView};
use crate::downstream::{self, DownstreamConfig};
use crate::http;
use crate::prosody::{Prosody, ProsodyError};
use crate::upstream::{self, UpstreamConfig};
use crate::xmpp::{self, LinkConfig};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Clusters.
    pub clusters: usize,
    /// Agents per cluster.
    pub agents: usize,
    /// VM slots per agent.
    pub slots: u32,
    /// `define_vm` requests to submit.
    pub requests: usize,
    /// Idle window over which stanzas are counted.
    pub idle: Duration,
    /// Work directory (prosody files, the database); must exist.
    pub dir: PathBuf,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Clusters.
    pub clusters: usize,
    /// Agents in all.
    pub agents: usize,
    /// XMPP sessions (upstream + 2 per manager + agents).
    pub sessions: usize,
    /// From starting the components to every cluster reporting its whole
    /// capacity upstream (s).
    pub converge_s: f64,
    /// Fleet messages sent during the idle window.
    pub idle_messages: u64,
    /// The idle window (s).
    pub idle_s: f64,
    /// Requests submitted.
    pub requests: usize,
    /// Requests that succeeded.
    pub succeeded: usize,
    /// From the first submission to the last final result (s).
    pub provision_s: f64,
    /// Latency percentiles, accepted to result stored (ms).
    pub latency_ms_p50: i64,
    /// 90th percentile.
    pub latency_ms_p90: i64,
    /// 99th percentile.
    pub latency_ms_p99: i64,
    /// Maximum.
    pub latency_ms_max: i64,
    /// Fleet messages sent per request, all hops and states included.
    pub messages_per_request: f64,
    /// Fleet messages sent per second while provisioning.
    pub messages_per_s: f64,
}

/// Why the simulation stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// prosody.
    #[error("{0}")]
    Prosody(#[from] ProsodyError),
    /// The runtime or a socket.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// REST.
    #[error("{0}")]
    Http(#[from] http::HttpError),
    /// Something did not happen in time, or answered wrongly.
    #[error("{0}")]
    Failed(String),
}

const UP: &str = "up.sim.test";

fn pw(user: &str) -> String {
    format!("pw-{user}")
}

fn rest<T: serde::de::DeserializeOwned>(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<T, SimError> {
    let r = http::call(addr, method, path, body.as_deref())?;
    if r.status >= 400 && r.status != 409 {
        return Err(SimError::Failed(format!(
            "{method} {path}: {} {}",
            r.status, r.body
        )));
    }
    serde_json::from_str(&r.body)
        .map_err(|e| SimError::Failed(format!("{method} {path}: {e}: {}", r.body)))
}

/// Waits until `done` holds, checking every `every`, for at most `limit`.
fn wait_until(
    what: &str,
    limit: Duration,
    every: Duration,
    mut done: impl FnMut() -> Result<bool, SimError>,
) -> Result<(), SimError> {
    let deadline = Instant::now() + limit;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(SimError::Failed(format!("timed out waiting for {what}")));
        }
        std::thread::sleep(every);
    }
}

fn link(jid: &str, server: &str, label: &str) -> Result<LinkConfig, SimError> {
    Ok(LinkConfig {
        jid: jid
            .parse::<BareJid>()
            .map_err(|e| SimError::Failed(format!("{jid}: {e}")))?,
        password: pw(jid.split('@').next().unwrap_or(jid)),
        servers: vec![server.to_owned()],
        reconnect_wait: Duration::from_secs(1),
        reconnect_jitter: Duration::from_secs(1),
        tls: false,
        label: label.to_owned(),
    })
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let ix = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[ix.min(sorted.len() - 1)]
}

/// Waits until no fleet message has been sent for two samples in a row.
fn settle() -> Result<(), SimError> {
    let mut last = xmpp::message_counts().0;
    let mut quiet = 0;
    wait_until(
        "the fleet to settle",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let now = xmpp::message_counts().0;
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
            Ok(quiet >= 2)
        },
    )
}

/// Runs the simulation.
///
/// # Errors
///
/// [`SimError`].
pub fn run(cfg: &SimConfig) -> Result<SimReport, SimError> {
    crate::log::set_quiet(true);
    let cluster_host = |i: usize| format!("c{i}.sim.test");
    let mut up_acc = vec![("upstream".to_owned(), UP.to_owned())];
    let mut down_acc = Vec::new();
    let mut hosts = Vec::new();
    for i in 0..cfg.clusters {
        up_acc.push((format!("ds-c{i}"), UP.to_owned()));
        hosts.push(cluster_host(i));
        down_acc.push(("manager".to_owned(), cluster_host(i)));
        for a in 0..cfg.agents {
            down_acc.push((format!("agent{a}"), cluster_host(i)));
        }
    }
    let with_pw = |v: &[(String, String)]| -> Vec<(String, String, String)> {
        v.iter()
            .map(|(u, h)| (u.clone(), h.clone(), pw(u)))
            .collect()
    };
    let (up_acc, down_acc) = (with_pw(&up_acc), with_pw(&down_acc));
    fn borrow(v: &[(String, String, String)]) -> Vec<(&str, &str, &str)> {
        v.iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect()
    }
    std::fs::create_dir_all(cfg.dir.join("up"))?;
    std::fs::create_dir_all(cfg.dir.join("down"))?;
    let up_xmpp = Prosody::start(&cfg.dir.join("up"), &[UP], &borrow(&up_acc), None)?;
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let down_xmpp = Prosody::start(&cfg.dir.join("down"), &host_refs, &borrow(&down_acc), None)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let rest_addr = format!("127.0.0.1:{port}");
    let retransmit = Duration::from_secs(10);
    rt.spawn(upstream::run(UpstreamConfig {
        db: cfg.dir.join("upstream.db"),
        listen: rest_addr
            .parse()
            .map_err(|e| SimError::Failed(format!("{e}")))?,
        link: link(&format!("upstream@{UP}"), &up_xmpp.addr(), "up-link")?,
        retransmit,
        relocate_after: Duration::from_secs(3600),
    }));
    wait_until(
        "the REST API",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || Ok(http::call(&rest_addr, "GET", "/v1/health", None).is_ok()),
    )?;
    for i in 0..cfg.clusters {
        let body = format!(r#"{{"name":"c{i}","jid":"ds-c{i}@{UP}"}}"#);
        rest::<ClusterView>(&rest_addr, "POST", "/v1/clusters", Some(body))?;
    }
    let quota = cfg.requests + 1;
    rest::<serde_json::Value>(
        &rest_addr,
        "POST",
        "/v1/customers",
        Some(format!(
            r#"{{"name":"sim","quota":{{"vms":{quota},"policies":0}}}}"#
        )),
    )?;
    rest::<serde_json::Value>(
        &rest_addr,
        "POST",
        "/v1/templates",
        Some(r#"{"name":"null","command":"true"}"#.to_owned()),
    )?;

    let t_start = Instant::now();
    for i in 0..cfg.clusters {
        let host = cluster_host(i);
        let agents: Vec<BareJid> = (0..cfg.agents)
            .filter_map(|a| format!("agent{a}@{host}").parse().ok())
            .collect();
        for a in 0..cfg.agents {
            rt.spawn(agent::run(AgentConfig {
                link: link(&format!("agent{a}@{host}"), &down_xmpp.addr(), "link")?,
                manager: format!("manager@{host}")
                    .parse()
                    .map_err(|e| SimError::Failed(format!("{e}")))?,
                vm_slots: cfg.slots,
                netns_prefix: "sim".to_owned(),
                stitchd_socket: None,
                health_interval: Duration::from_secs(3600),
                ready_timeout: Duration::from_secs(30),
                driver: DriverKind::Null,
            }));
        }
        rt.spawn(downstream::run(DownstreamConfig {
            up: link(&format!("ds-c{i}@{UP}"), &up_xmpp.addr(), "up-link")?,
            down: link(&format!("manager@{host}"), &down_xmpp.addr(), "down-link")?,
            upstream: format!("upstream@{UP}")
                .parse()
                .map_err(|e| SimError::Failed(format!("{e}")))?,
            agents,
            quota_vms: u32::try_from(quota).unwrap_or(u32::MAX),
            quota_policies: 0,
            denied_ops: Vec::new(),
            state_file: cfg.dir.join(format!("ds-c{i}.json")),
            retransmit,
        }));
    }
    let full = cfg.slots * u32::try_from(cfg.agents).unwrap_or(u32::MAX);
    wait_until(
        "every cluster's whole capacity upstream",
        Duration::from_secs(600),
        Duration::from_millis(100),
        || {
            let cs: Vec<ClusterView> = rest(&rest_addr, "GET", "/v1/clusters", None)?;
            Ok(cs.iter().all(|c| {
                c.state
                    .is_some_and(|s| s.vm_slots == full && s.health == crate::proto::Health::Ok)
            }))
        },
    )?;
    let converge_s = t_start.elapsed().as_secs_f64();

    // Settle: the answers to the managers' state queries (sent when they
    // see an agent's presence) may still be on their way.
    settle()?;
    // Idle: a measurement window (nothing should be sent).
    let (idle0, _) = xmpp::message_counts();
    std::thread::sleep(cfg.idle);
    let (idle1, _) = xmpp::message_counts();

    let (sent0, _) = xmpp::message_counts();
    let t0 = Instant::now();
    for k in 0..cfg.requests {
        let body = format!(
            r#"{{"customer":"sim","action":{{"op":"define_vm","name":"vm-{k}","template":"null"}}}}"#
        );
        rest::<RequestView>(&rest_addr, "POST", "/v1/requests", Some(body))?;
    }
    let mut views: Vec<RequestView> = Vec::new();
    wait_until(
        "every request's result",
        Duration::from_secs(600),
        Duration::from_millis(50),
        || {
            views = rest(&rest_addr, "GET", "/v1/requests", None)?;
            Ok(views.iter().all(|v| v.outcome.is_final()))
        },
    )?;
    let provision_s = t0.elapsed().as_secs_f64();
    // The last state messages may follow the last result.
    settle()?;
    let (sent1, _) = xmpp::message_counts();
    let mut lat: Vec<i64> = views.iter().map(|v| v.updated_ms - v.created_ms).collect();
    lat.sort_unstable();
    let succeeded = views
        .iter()
        .filter(|v| v.outcome.status() == "succeeded")
        .count();
    rt.shutdown_timeout(Duration::from_secs(2));
    drop((up_xmpp, down_xmpp));
    let msgs = (sent1 - sent0) as f64;
    Ok(SimReport {
        clusters: cfg.clusters,
        agents: cfg.clusters * cfg.agents,
        sessions: 1 + 2 * cfg.clusters + cfg.clusters * cfg.agents,
        converge_s,
        idle_messages: idle1 - idle0,
        idle_s: cfg.idle.as_secs_f64(),
        requests: cfg.requests,
        succeeded,
        provision_s,
        latency_ms_p50: percentile(&lat, 0.5),
        latency_ms_p90: percentile(&lat, 0.9),
        latency_ms_p99: percentile(&lat, 0.99),
        latency_ms_max: lat.last().copied().unwrap_or(0),
        messages_per_request: if cfg.requests == 0 {
            0.0
        } else {
            msgs / cfg.requests as f64
        },
        messages_per_s: msgs / provision_s.max(1e-9),
    })
}
