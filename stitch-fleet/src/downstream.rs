//! The downstream manager: presents its federated cluster to the upstream as
//! one node (the summed capacity of its agents), enforces the cluster's own
//! quota (the upstream cannot monopolise the cluster), turns each request into
//! a request to one chosen agent, and returns the agent's result upstream.
//!
//! Two XMPP links on two domains (or servers): `up` to the upstream manager,
//! `down` to the agents, so one side can fail without the other. Requests are
//! keyed by the upstream's id: a duplicate is answered from the record (result
//! re-sent) or re-forwarded to the same agent, never placed twice. The record
//! (requests, placements) is a JSON file rewritten atomically on each change,
//! so a restarted manager neither loses nor repeats work.
//!
//! State goes upstream only when the summed state changes (and when the up
//! link comes back, since the upstream forgot it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_xmpp::jid::{BareJid, Jid};

use crate::log;
use crate::proto::{
    Action, DecodeError, FleetMessage, Health, NodeState, Outcome, RequestId, ResourceKind,
};
use crate::xmpp::{self, LinkConfig, LinkEvent, LinkHandle};

const WHO: &str = "downstream";

/// The downstream manager's configuration.
#[derive(Debug, Clone)]
pub struct DownstreamConfig {
    /// Link to the upstream domain.
    pub up: LinkConfig,
    /// Link to the agents' domain.
    pub down: LinkConfig,
    /// The only account allowed to send requests.
    pub upstream: BareJid,
    /// The agents of this cluster.
    pub agents: Vec<BareJid>,
    /// VMs the upstream may hold in this cluster.
    pub quota_vms: u32,
    /// Policies the upstream may hold in this cluster.
    pub quota_policies: u32,
    /// Operations the upstream may not ask for here (`define_policy`, ...).
    pub denied_ops: Vec<String>,
    /// Where the record is kept.
    pub state_file: PathBuf,
    /// How often requests not yet answered by an agent are re-sent to it.
    pub retransmit: Duration,
}

/// Errors that stop the downstream manager.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    /// A link could not be started.
    #[error("{0}")]
    Link(#[from] xmpp::LinkError),
    /// The record file exists but cannot be read.
    #[error("cannot read state file {path}: {reason}")]
    State {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No agents configured.
    #[error("a cluster needs at least one agent (--agent)")]
    NoAgents,
}

/// One request as the downstream knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    customer: String,
    action: Action,
    /// The agent it went to (none when refused here).
    agent: Option<String>,
    /// Final outcome, once known.
    outcome: Option<Outcome>,
}

/// What is persisted.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    requests: BTreeMap<RequestId, Entry>,
    /// `customer/kind/name` -> agent JID.
    placement: BTreeMap<String, String>,
}

fn key(customer: &str, kind: ResourceKind, name: &str) -> String {
    format!("{customer}/{}/{name}", kind.as_str())
}

struct Downstream {
    cfg: DownstreamConfig,
    up: LinkHandle,
    down: LinkHandle,
    agents: BTreeMap<BareJid, Option<NodeState>>,
    rec: Record,
    last_sent: Option<NodeState>,
    /// Agents whose presence we have seen available since our down link
    /// came up: only their going unavailable means they left (a server
    /// answers a fresh subscription with "unavailable" before it knows).
    present: std::collections::BTreeSet<BareJid>,
}

/// Runs the downstream manager until the process ends.
///
/// # Errors
///
/// [`DownstreamError`] when it cannot start.
pub async fn run(cfg: DownstreamConfig) -> Result<(), DownstreamError> {
    if cfg.agents.is_empty() {
        return Err(DownstreamError::NoAgents);
    }
    let rec = match std::fs::read(&cfg.state_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DownstreamError::State {
            path: cfg.state_file.clone(),
            reason: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
        Err(e) => {
            return Err(DownstreamError::State {
                path: cfg.state_file.clone(),
                reason: e.to_string(),
            })
        }
    };
    let (up, mut up_events) = xmpp::spawn(cfg.up.clone())?;
    let (down, mut down_events) = xmpp::spawn(cfg.down.clone())?;
    let mut ds = Downstream {
        agents: cfg.agents.iter().map(|a| (a.clone(), None)).collect(),
        cfg,
        up,
        down,
        rec,
        last_sent: None,
        present: std::collections::BTreeSet::new(),
    };
    let mut tick = tokio::time::interval(ds.cfg.retransmit);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = up_events.recv() => match ev {
                None => return Ok(()),
                Some(LinkEvent::Up) => {
                    // The upstream forgot our state when we went away.
                    ds.last_sent = None;
                    ds.maybe_send_state();
                }
                Some(LinkEvent::Message { from, reply_to, msg }) => ds.on_upstream(&from, &reply_to, *msg),
                Some(LinkEvent::SubscribeRequest { from }) => {
                    // The upstream watches our presence to know the cluster is there.
                    if from == ds.cfg.upstream {
                        ds.up.allow_subscription(&from);
                    } else {
                        log::line(WHO, &format!("presence subscription from {from} ignored"));
                    }
                }
                Some(LinkEvent::Presence { .. }) => {}
            },
            ev = down_events.recv() => match ev {
                None => return Ok(()),
                Some(LinkEvent::Up) => {
                    ds.present.clear();
                    for a in ds.cfg.agents.clone() {
                        ds.down.subscribe(&a);
                        ds.down.send(&a, FleetMessage::StateQuery {});
                    }
                    ds.reforward();
                }
                Some(LinkEvent::Message { from, reply_to, msg }) => ds.on_agent(&from, &reply_to, *msg),
                Some(LinkEvent::Presence { from, available }) => ds.agent_presence(&from, available),
                Some(LinkEvent::SubscribeRequest { from }) => {
                    log::line(WHO, &format!("presence subscription from {from} ignored"));
                }
            },
            _ = tick.tick() => ds.reforward(),
        }
    }
}

impl Downstream {
    fn save(&self) {
        let tmp = self.cfg.state_file.with_extension("tmp");
        let text = serde_json::to_vec_pretty(&self.rec).unwrap_or_default();
        let res =
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.cfg.state_file));
        if let Err(e) = res {
            log::line(WHO, &format!("error: cannot save state file: {e}"));
        }
    }

    fn summed(&self) -> NodeState {
        let mut s = NodeState {
            vm_slots: 0,
            vms_used: 0,
            health: Health::Ok,
        };
        for st in self.agents.values() {
            match st {
                Some(a) => {
                    s.vm_slots += a.vm_slots;
                    s.vms_used += a.vms_used;
                    if a.health != Health::Ok {
                        s.health = Health::Degraded;
                    }
                }
                None => s.health = Health::Degraded,
            }
        }
        s
    }

    /// An agent's session came or went: a gone agent no longer counts in the
    /// cluster's capacity (the sum changes, so the upstream hears of it).
    fn agent_presence(&mut self, from: &BareJid, available: bool) {
        if !self.agents.contains_key(from) {
            return;
        }
        if available {
            if self.present.insert(from.clone()) {
                log::line(WHO, &format!("agent {from} online"));
                self.down.send(from, FleetMessage::StateQuery {});
            }
        } else if self.present.remove(from) {
            log::line(WHO, &format!("agent {from} offline"));
            self.agents.insert(from.clone(), None);
            self.maybe_send_state();
        }
    }

    fn maybe_send_state(&mut self) {
        let now = self.summed();
        if self.last_sent == Some(now) {
            return;
        }
        log::line(
            WHO,
            &format!(
                "state sent upstream: {} of {} VM slots used, {:?}",
                now.vms_used, now.vm_slots, now.health
            ),
        );
        self.up
            .send(&self.cfg.upstream, FleetMessage::State { state: now });
        self.last_sent = Some(now);
    }

    fn reforward(&self) {
        for (id, e) in &self.rec.requests {
            if let (None, Some(agent)) = (&e.outcome, &e.agent) {
                if let Ok(jid) = agent.parse::<BareJid>() {
                    self.down.send(
                        &jid,
                        FleetMessage::Request {
                            id: id.clone(),
                            customer: e.customer.clone(),
                            action: e.action.clone(),
                        },
                    );
                }
            }
        }
    }

    fn refuse(link: &LinkHandle, to: &Jid, id: Option<RequestId>, reason: String) {
        log::line(WHO, &format!("refused message from {to}: {reason}"));
        link.reply(to, FleetMessage::Error { id, reason });
    }

    fn on_upstream(
        &mut self,
        from: &BareJid,
        reply_to: &Jid,
        msg: Result<FleetMessage, DecodeError>,
    ) {
        if *from != self.cfg.upstream {
            return Self::refuse(
                &self.up,
                reply_to,
                None,
                format!("sender {from} is not this cluster's upstream manager"),
            );
        }
        let msg = match msg {
            Ok(m) => m,
            Err(e) => return Self::refuse(&self.up, reply_to, None, e.to_string()),
        };
        match msg {
            FleetMessage::Request {
                id,
                customer,
                action,
            } => self.request(id, customer, action),
            FleetMessage::StateQuery {} => {
                self.last_sent = None;
                self.maybe_send_state();
            }
            FleetMessage::Error { id, reason } => {
                log::line(
                    WHO,
                    &format!("upstream refused a message ({id:?}): {reason}"),
                );
            }
            other => Self::refuse(
                &self.up,
                reply_to,
                other.request_id().cloned(),
                "the downstream manager takes only requests and state queries from upstream"
                    .to_owned(),
            ),
        }
    }

    fn request(&mut self, id: RequestId, customer: String, action: Action) {
        if let Some(e) = self.rec.requests.get(&id) {
            match &e.outcome {
                Some(outcome) => {
                    log::line(WHO, &format!("duplicate request {id}: result re-sent"));
                    self.up.send(
                        &self.cfg.upstream,
                        FleetMessage::Result {
                            id,
                            outcome: outcome.clone(),
                        },
                    );
                }
                None => log::line(WHO, &format!("duplicate request {id}: still in progress")),
            }
            return;
        }
        // Write-ahead: the decision is on disk before anything is sent, so a
        // manager killed right after sending re-sends rather than forgets.
        let op = action.op();
        let placed = if self.cfg.denied_ops.iter().any(|d| d == op) {
            Err(format!("this cluster does not permit {op}"))
        } else {
            self.place(&customer, &action)
        };
        let (entry, to, msg) = match placed {
            Err(reason) => {
                let outcome = Outcome::refused(WHO, reason);
                log::line(WHO, &format!("request {id} {op} refused: {outcome:?}"));
                let msg = FleetMessage::Result {
                    id: id.clone(),
                    outcome: outcome.clone(),
                };
                let entry = Entry {
                    customer,
                    action,
                    agent: None,
                    outcome: Some(outcome),
                };
                (entry, (self.up.clone(), self.cfg.upstream.clone()), msg)
            }
            Ok(agent) => {
                let msg = FleetMessage::Request {
                    id: id.clone(),
                    customer: customer.clone(),
                    action: action.clone(),
                };
                let entry = Entry {
                    customer,
                    action,
                    agent: Some(agent.to_string()),
                    outcome: None,
                };
                (entry, (self.down.clone(), agent), msg)
            }
        };
        let forwarded = entry.agent.clone();
        self.rec.requests.insert(id.clone(), entry);
        self.save();
        let (link, jid) = to;
        link.send(&jid, msg);
        if let Some(agent) = forwarded {
            log::line(WHO, &format!("request {id} {op} forwarded to {agent}"));
        }
    }

    /// Counts held resources of `kind` plus definitions of it in flight,
    /// optionally on one agent.
    fn count(&self, kind: ResourceKind, agent: Option<&str>) -> u32 {
        let held = self
            .rec
            .placement
            .iter()
            .filter(|(k, a)| {
                k.split('/').nth(1) == Some(kind.as_str()) && agent.is_none_or(|x| x == a.as_str())
            })
            .count();
        let flying = self
            .rec
            .requests
            .values()
            .filter(|e| {
                e.outcome.is_none()
                    && e.action.defines()
                    && e.action.resource().0 == kind
                    && agent.is_none_or(|x| e.agent.as_deref() == Some(x))
            })
            .count();
        u32::try_from(held + flying).unwrap_or(u32::MAX)
    }

    /// Chooses the agent for a request, or the reason to refuse it here.
    fn place(&self, customer: &str, action: &Action) -> Result<BareJid, String> {
        let located = |kind, name: &str| -> Result<BareJid, String> {
            self.rec
                .placement
                .get(&key(customer, kind, name))
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| {
                    format!(
                        "customer '{customer}' has no {} '{name}' in this cluster",
                        kind_word(kind)
                    )
                })
        };
        match action {
            Action::DefineVm { name, .. } => {
                if self
                    .rec
                    .placement
                    .contains_key(&key(customer, ResourceKind::Vm, name))
                {
                    return Err(format!("VM '{name}' already exists in this cluster"));
                }
                let used = self.count(ResourceKind::Vm, None);
                if used >= self.cfg.quota_vms {
                    return Err(format!(
                        "cluster quota: the upstream may hold at most {} VMs in this cluster ({used} held or in flight)",
                        self.cfg.quota_vms
                    ));
                }
                let mut best: Option<(i64, &BareJid)> = None;
                for (jid, st) in &self.agents {
                    let Some(st) = st else { continue };
                    let free =
                        i64::from(st.vm_slots) - i64::from(st.vms_used) - self.flying_vms(jid);
                    if free > 0 && best.is_none_or(|(f, _)| free > f) {
                        best = Some((free, jid));
                    }
                }
                best.map(|(_, j)| j.clone())
                    .ok_or_else(|| "no agent of this cluster has a free VM slot".to_owned())
            }
            Action::RemoveVm { name } => located(ResourceKind::Vm, name),
            Action::DefinePolicy { vm, .. } => {
                let used = self.count(ResourceKind::Policy, None);
                if used >= self.cfg.quota_policies {
                    return Err(format!(
                        "cluster quota: the upstream may hold at most {} policies in this cluster",
                        self.cfg.quota_policies
                    ));
                }
                located(ResourceKind::Vm, vm)
            }
            Action::RemovePolicy { name } => located(ResourceKind::Policy, name),
            Action::DefineService { .. } => self
                .agents
                .iter()
                .find(|(_, s)| s.is_some())
                .map(|(j, _)| j.clone())
                .ok_or_else(|| "no agent of this cluster is reachable".to_owned()),
        }
    }

    /// VM definitions in flight to `agent` that its reported state may not
    /// count yet.
    fn flying_vms(&self, agent: &BareJid) -> i64 {
        let a = agent.to_string();
        let n = self
            .rec
            .requests
            .values()
            .filter(|e| {
                e.outcome.is_none()
                    && matches!(e.action, Action::DefineVm { .. })
                    && e.agent.as_deref() == Some(a.as_str())
            })
            .count();
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    fn on_agent(&mut self, from: &BareJid, reply_to: &Jid, msg: Result<FleetMessage, DecodeError>) {
        if !self.agents.contains_key(from) {
            return Self::refuse(
                &self.down,
                reply_to,
                None,
                format!("sender {from} is not an agent of this cluster"),
            );
        }
        let msg = match msg {
            Ok(m) => m,
            Err(e) => return Self::refuse(&self.down, reply_to, None, e.to_string()),
        };
        match msg {
            FleetMessage::State { state } => {
                log::line(
                    WHO,
                    &format!(
                        "state from agent {from}: {} of {} VM slots used, {:?}",
                        state.vms_used, state.vm_slots, state.health
                    ),
                );
                self.agents.insert(from.clone(), Some(state));
                self.maybe_send_state();
            }
            FleetMessage::Result { id, outcome } => self.result(from, reply_to, id, outcome),
            FleetMessage::Error { id, reason } => {
                log::line(
                    WHO,
                    &format!("agent {from} refused a message ({id:?}): {reason}"),
                );
                if let Some(id) = id {
                    let outcome = Outcome::Failed {
                        reason: format!("agent refused the request: {reason}"),
                    };
                    self.result(from, reply_to, id, outcome);
                }
            }
            other => Self::refuse(
                &self.down,
                reply_to,
                other.request_id().cloned(),
                "the downstream manager takes only state and results from agents".to_owned(),
            ),
        }
    }

    fn result(&mut self, from: &BareJid, reply_to: &Jid, id: RequestId, outcome: Outcome) {
        let from_s = from.to_string();
        let Some(e) = self.rec.requests.get_mut(&id) else {
            return Self::refuse(
                &self.down,
                reply_to,
                Some(id.clone()),
                format!("no request {id} was sent to {from}"),
            );
        };
        if e.agent.as_deref() != Some(from_s.as_str()) {
            return Self::refuse(
                &self.down,
                reply_to,
                Some(id.clone()),
                format!("request {id} was not sent to {from}"),
            );
        }
        if e.outcome.is_some() || !outcome.is_final() {
            log::line(WHO, &format!("duplicate result {id} from {from} ignored"));
            return;
        }
        e.outcome = Some(outcome.clone());
        let (kind, name) = e.action.resource();
        let k = key(&e.customer, kind, name);
        if matches!(outcome, Outcome::Succeeded { .. }) {
            if e.action.defines() {
                self.rec.placement.insert(k, from_s);
            } else {
                self.rec.placement.remove(&k);
            }
        }
        log::line(
            WHO,
            &format!("result {id} from {from}: {}", outcome.status()),
        );
        self.save();
        self.up
            .send(&self.cfg.upstream, FleetMessage::Result { id, outcome });
    }
}

fn kind_word(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Vm => "VM",
        ResourceKind::Policy => "policy",
        ResourceKind::Service => "service",
    }
}
