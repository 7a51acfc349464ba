//! The downstream agent, one per appliance: applies requests from its
//! cluster's downstream manager — VMs through the process driver, stitch
//! policies through the local stitchd's control socket — and reports its
//! capacity and health, only when they change.
//!
//! Idempotence: every request id is remembered with its outcome; a re-sent
//! request is answered from memory (result re-sent), or ignored while it is
//! still being applied. Load-balanced services are refused: stitchd's control
//! protocol has no load-balancer methods yet.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use stitch_control::protocol::{MacAddParams, MacDelParams, PortSecurityParams};
use stitch_control::{Client, Mac};
use tokio::sync::mpsc;
use tokio_xmpp::jid::{BareJid, Jid};

use crate::driver::{self, Vm};
use crate::log;
use crate::proto::{
    Action, DecodeError, FleetMessage, Health, NodeState, Outcome, Policy, RequestId,
};
use crate::xmpp::{self, LinkConfig, LinkEvent, LinkHandle};

const WHO: &str = "agent";

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Link to the cluster's agent domain.
    pub link: LinkConfig,
    /// The only account allowed to send requests: the downstream manager.
    pub manager: BareJid,
    /// VM slots this appliance offers.
    pub vm_slots: u32,
    /// Prefix of namespace and veth names (at most 8 characters, unique per
    /// agent on a host).
    pub netns_prefix: String,
    /// stitchd's control socket, when this appliance runs stitchd.
    pub stitchd_socket: Option<PathBuf>,
    /// How often VMs and stitchd are checked.
    pub health_interval: Duration,
    /// How long a VM may take to print its ready line.
    pub ready_timeout: Duration,
    /// How VMs are defined.
    pub driver: DriverKind,
}

/// How an agent defines VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// A process in its own network namespace (the default).
    Process,
    /// Nothing runs; a VM only takes a slot (simulation).
    Null,
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The link could not be started.
    #[error("{0}")]
    Link(#[from] xmpp::LinkError),
    /// The signal handler could not be installed.
    #[error("cannot handle SIGTERM: {0}")]
    Signal(std::io::Error),
    /// Bad prefix.
    #[error("--netns-prefix must be 1 to 8 characters of a-z and 0-9 (veth names have 15)")]
    Prefix,
}

enum Slot {
    Starting,
    Running(Vm),
    Exited(Vm),
}

enum Done {
    Vm {
        id: RequestId,
        key: String,
        res: Result<Vm, String>,
    },
    Removed {
        id: RequestId,
        res: Result<(), String>,
    },
    Policy {
        id: RequestId,
        key: String,
        define: Option<Policy>,
        res: Result<String, String>,
    },
}

struct Agent {
    cfg: AgentConfig,
    link: LinkHandle,
    done_tx: mpsc::UnboundedSender<Done>,
    applied: HashMap<RequestId, Option<Outcome>>,
    vms: BTreeMap<String, Slot>,
    policies: BTreeMap<String, Policy>,
    next_n: u32,
    last_sent: Option<NodeState>,
    stitchd_ok: bool,
}

/// Runs the agent until the process ends.
///
/// # Errors
///
/// [`AgentError`] when it cannot start.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let p = &cfg.netns_prefix;
    if p.is_empty()
        || p.len() > 8
        || !p
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(AgentError::Prefix);
    }
    let (link, mut events) = xmpp::spawn(cfg.link.clone())?;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut agent = Agent {
        link,
        done_tx,
        applied: HashMap::new(),
        vms: BTreeMap::new(),
        policies: BTreeMap::new(),
        next_n: 0,
        last_sent: None,
        stitchd_ok: true,
        cfg,
    };
    let mut tick = tokio::time::interval(agent.cfg.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checks: u64 = 0;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::Signal)?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                agent.shutdown().await;
                return Ok(());
            }
            _ = tokio::signal::ctrl_c() => {
                agent.shutdown().await;
                return Ok(());
            }
            ev = events.recv() => match ev {
                None => return Ok(()),
                Some(LinkEvent::Up) => {
                    agent.last_sent = None;
                    agent.maybe_send_state();
                }
                Some(LinkEvent::Message { from, reply_to, msg }) => agent.on_message(&from, &reply_to, *msg),
                Some(LinkEvent::SubscribeRequest { from }) => {
                    // Only the manager may watch this agent's presence.
                    if from == agent.cfg.manager {
                        agent.link.allow_subscription(&from);
                    } else {
                        log::line(WHO, &format!("presence subscription from {from} ignored"));
                    }
                }
                Some(LinkEvent::Presence { .. }) => {}
            },
            done = done_rx.recv() => {
                if let Some(done) = done { agent.on_done(done); }
            }
            _ = tick.tick() => {
                checks += 1;
                agent.health_check();
                log::line(WHO, &format!("health check {checks}"));
            }
        }
    }
}

impl Agent {
    /// Stops every VM and removes its namespace (SIGTERM/SIGINT): an agent
    /// that stops leaves nothing running on its appliance.
    async fn shutdown(&mut self) {
        let vms = std::mem::take(&mut self.vms);
        let mut n = 0;
        for slot in vms.into_values() {
            if let Slot::Running(vm) | Slot::Exited(vm) = slot {
                if let Err(e) = driver::remove(vm).await {
                    log::line(WHO, &format!("error: {e}"));
                }
                n += 1;
            }
        }
        log::line(WHO, &format!("stopped; {n} VMs removed"));
    }

    fn state(&self) -> NodeState {
        let degraded = !self.stitchd_ok || self.vms.values().any(|s| matches!(s, Slot::Exited(_)));
        NodeState {
            vm_slots: self.cfg.vm_slots,
            vms_used: u32::try_from(self.vms.len()).unwrap_or(u32::MAX),
            health: if degraded {
                Health::Degraded
            } else {
                Health::Ok
            },
        }
    }

    fn maybe_send_state(&mut self) {
        let now = self.state();
        if self.last_sent == Some(now) {
            return;
        }
        log::line(
            WHO,
            &format!(
                "state sent: {} of {} VM slots used, {:?}",
                now.vms_used, now.vm_slots, now.health
            ),
        );
        self.link
            .send(&self.cfg.manager, FleetMessage::State { state: now });
        self.last_sent = Some(now);
    }

    fn health_check(&mut self) {
        for slot in self.vms.values_mut() {
            if let Slot::Running(vm) = slot {
                if let Some(Ok(Some(status))) = vm.child.as_mut().map(|c| c.try_wait()) {
                    log::line(WHO, &format!("VM in {} exited: {status}", vm.netns));
                    let Slot::Running(vm) = std::mem::replace(slot, Slot::Starting) else {
                        continue;
                    };
                    *slot = Slot::Exited(vm);
                }
            }
        }
        if let Some(path) = &self.cfg.stitchd_socket {
            self.stitchd_ok = std::os::unix::net::UnixStream::connect(path).is_ok();
        }
        self.maybe_send_state();
    }

    fn reply(&self, id: RequestId, outcome: Outcome) {
        log::line(WHO, &format!("result {id}: {outcome:?}"));
        self.link
            .send(&self.cfg.manager, FleetMessage::Result { id, outcome });
    }

    fn on_message(
        &mut self,
        from: &BareJid,
        reply_to: &Jid,
        msg: Result<FleetMessage, DecodeError>,
    ) {
        if *from != self.cfg.manager {
            let reason = format!("sender {from} is not this agent's manager");
            log::line(WHO, &format!("refused message from {from}: {reason}"));
            self.link
                .reply(reply_to, FleetMessage::Error { id: None, reason });
            return;
        }
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                log::line(WHO, &format!("refused message from {from}: {e}"));
                self.link.reply(
                    reply_to,
                    FleetMessage::Error {
                        id: None,
                        reason: e.to_string(),
                    },
                );
                return;
            }
        };
        match msg {
            FleetMessage::Request {
                id,
                customer,
                action,
            } => self.request(id, &customer, action),
            FleetMessage::StateQuery {} => {
                self.last_sent = None;
                self.maybe_send_state();
            }
            FleetMessage::Error { id, reason } => {
                log::line(
                    WHO,
                    &format!("manager refused a message ({id:?}): {reason}"),
                );
            }
            other => {
                self.link.reply(
                    reply_to,
                    FleetMessage::Error {
                        id: other.request_id().cloned(),
                        reason: "an agent takes only requests and state queries".to_owned(),
                    },
                );
            }
        }
    }

    fn request(&mut self, id: RequestId, customer: &str, action: Action) {
        if let Some(known) = self.applied.get(&id) {
            match known {
                Some(outcome) => {
                    log::line(WHO, &format!("duplicate request {id}: result re-sent"));
                    self.reply(id, outcome.clone());
                }
                None => log::line(WHO, &format!("duplicate request {id}: still applying")),
            }
            return;
        }
        log::line(WHO, &format!("apply {id} {}", action.op()));
        let refuse = |reason: String| Some(Outcome::refused(WHO, reason));
        let immediate = match action {
            Action::DefineVm { name, template } => {
                let key = format!("{customer}/{name}");
                if self.vms.contains_key(&key) {
                    refuse(format!("VM '{name}' already exists on this agent"))
                } else if self.vms.len() >= self.cfg.vm_slots as usize {
                    refuse("no free VM slot on this agent".to_owned())
                } else if self.cfg.driver == DriverKind::Null {
                    self.next_n += 1;
                    self.vms
                        .insert(key, Slot::Running(Vm::null(self.next_n)));
                    Some(Outcome::Succeeded {
                        detail: "VM defined (null driver)".to_owned(),
                    })
                } else {
                    self.next_n += 1;
                    let netns = format!("{}-{}", self.cfg.netns_prefix, self.next_n);
                    let veth = format!("{}v{}", self.cfg.netns_prefix, self.next_n);
                    self.vms.insert(key.clone(), Slot::Starting);
                    let tx = self.done_tx.clone();
                    let timeout = self.cfg.ready_timeout;
                    let id2 = id.clone();
                    log::line(WHO, &format!("starting VM '{name}' in {netns}"));
                    tokio::spawn(async move {
                        let res = driver::define(&netns, &veth, &template, timeout)
                            .await
                            .map_err(|e| e.to_string());
                        let _ = tx.send(Done::Vm { id: id2, key, res });
                    });
                    None
                }
            }
            Action::RemoveVm { name } => {
                let key = format!("{customer}/{name}");
                match self.vms.remove(&key) {
                    None => refuse(format!("no VM '{name}' on this agent")),
                    Some(Slot::Starting) => {
                        self.vms.insert(key, Slot::Starting);
                        refuse(format!("VM '{name}' is still starting"))
                    }
                    Some(Slot::Running(vm) | Slot::Exited(vm)) => {
                        let tx = self.done_tx.clone();
                        let id2 = id.clone();
                        tokio::spawn(async move {
                            let res = driver::remove(vm).await.map_err(|e| e.to_string());
                            let _ = tx.send(Done::Removed { id: id2, res });
                        });
                        None
                    }
                }
            }
            Action::DefinePolicy { name, policy, .. } => {
                let key = format!("{customer}/{name}");
                if self.policies.contains_key(&key) {
                    refuse(format!("policy '{name}' already exists on this agent"))
                } else {
                    self.policy_call(id.clone(), key, Some(policy))
                }
            }
            Action::RemovePolicy { name } => {
                let key = format!("{customer}/{name}");
                if self.policies.contains_key(&key) {
                    self.policy_call(id.clone(), key, None)
                } else {
                    refuse(format!("no policy '{name}' on this agent"))
                }
            }
            Action::DefineService { .. } => refuse(
                "load-balanced services are not supported by this stitchd: its control protocol has no load-balancer methods"
                    .to_owned(),
            ),
        };
        self.applied.insert(id.clone(), immediate.clone());
        if let Some(outcome) = immediate {
            self.reply(id, outcome);
        }
        self.maybe_send_state();
    }

    /// Starts a stitchd control call for a policy; `None` when it runs.
    fn policy_call(
        &mut self,
        id: RequestId,
        key: String,
        define: Option<Policy>,
    ) -> Option<Outcome> {
        let Some(socket) = self.cfg.stitchd_socket.clone() else {
            return Some(Outcome::refused(
                WHO,
                "this agent has no stitchd control socket configured (--stitchd-socket)",
            ));
        };
        let policy = match &define {
            Some(p) => p.clone(),
            None => self.policies.get(&key).cloned()?,
        };
        let tx = self.done_tx.clone();
        let removing = define.is_none();
        tokio::task::spawn_blocking(move || {
            let res = apply_policy(&socket, &policy, removing);
            let _ = tx.send(Done::Policy {
                id,
                key,
                define,
                res,
            });
        });
        None
    }

    fn on_done(&mut self, done: Done) {
        let (id, outcome) = match done {
            Done::Vm { id, key, res } => match res {
                Ok(vm) => {
                    let detail = format!(
                        "VM running in namespace {}, switch port {}",
                        vm.netns, vm.veth
                    );
                    self.vms.insert(key, Slot::Running(vm));
                    (id, Outcome::Succeeded { detail })
                }
                Err(reason) => {
                    self.vms.remove(&key);
                    (id, Outcome::Failed { reason })
                }
            },
            Done::Removed { id, res } => match res {
                Ok(()) => (
                    id,
                    Outcome::Succeeded {
                        detail: "VM stopped and its namespace removed".to_owned(),
                    },
                ),
                Err(reason) => (id, Outcome::Failed { reason }),
            },
            Done::Policy {
                id,
                key,
                define,
                res,
            } => match res {
                Ok(detail) => {
                    match define {
                        Some(p) => {
                            self.policies.insert(key, p);
                        }
                        None => {
                            self.policies.remove(&key);
                        }
                    }
                    (id, Outcome::Succeeded { detail })
                }
                Err(reason) => (id, Outcome::Failed { reason }),
            },
        };
        self.applied.insert(id.clone(), Some(outcome.clone()));
        self.reply(id, outcome);
        self.maybe_send_state();
    }
}

fn parse_mac(s: &str) -> Result<Mac, String> {
    s.parse::<Mac>().map_err(|e| e.to_string())
}

/// Applies (or undoes) a policy through stitchd's control socket.
fn apply_policy(socket: &std::path::Path, policy: &Policy, remove: bool) -> Result<String, String> {
    let mut client = Client::connect(socket).map_err(|e| e.to_string())?;
    let (method, params) = match (policy, remove) {
        (Policy::MacStatic { mac, port }, false) => (
            "mac.add",
            serde_json::to_value(MacAddParams {
                mac: parse_mac(mac)?,
                port: *port,
            }),
        ),
        (Policy::MacStatic { mac, .. }, true) => (
            "mac.del",
            serde_json::to_value(MacDelParams {
                mac: parse_mac(mac)?,
                bridge: None,
            }),
        ),
        (Policy::PortSecurity { port, allow }, false) => (
            "port.security.set",
            serde_json::to_value(PortSecurityParams {
                port: *port,
                allowed_macs: Some(
                    allow
                        .iter()
                        .map(|m| parse_mac(m))
                        .collect::<Result<_, _>>()?,
                ),
                learning: true,
            }),
        ),
        (Policy::PortSecurity { port, .. }, true) => (
            "port.security.set",
            serde_json::to_value(PortSecurityParams {
                port: *port,
                allowed_macs: None,
                learning: true,
            }),
        ),
    };
    let params = params.map_err(|e| e.to_string())?;
    client
        .call(method, Some(params))
        .map_err(|e| format!("stitchd refused {method}: {e}"))?;
    Ok(format!("stitchd applied {method}"))
}
