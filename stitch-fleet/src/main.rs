//! `stitch-fleet`: the fleet's daemons (`upstream`, `downstream`, `agent`) and
//! the user/operator CLI that talks to the upstream's REST API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use stitch_fleet::api::{
    ApiAction, ClusterIn, ClusterView, CustomerIn, CustomerView, ErrorBody, Quota, RequestIn,
    RequestView, TemplateIn,
};
use stitch_fleet::proto::{Outcome, Policy};
use stitch_fleet::xmpp::LinkConfig;
use stitch_fleet::{agent, downstream, http, upstream};
use tokio_xmpp::jid::BareJid;

#[derive(Parser)]
#[command(
    name = "stitch-fleet",
    about = "The stitchd fleet: upstream manager (REST), downstream managers and agents over XMPP, and the CLI"
)]
struct Cli {
    /// The upstream manager's REST address (host:port), for the CLI commands.
    #[arg(
        long,
        global = true,
        env = "STITCH_FLEET_URL",
        default_value = "127.0.0.1:8470"
    )]
    url: String,
    /// Print the raw JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct XmppArgs {
    /// Account (user@domain).
    #[arg(long)]
    jid: String,
    /// Password (or from the environment).
    #[arg(long, env = "STITCH_FLEET_XMPP_PASSWORD")]
    password: String,
    /// XMPP server host:port; repeat for the servers of an XMPP cluster
    /// (tried in turn after a failure).
    #[arg(long = "server", required = true)]
    servers: Vec<String>,
    /// Wait after a link failure before reconnecting (ms).
    #[arg(long, default_value_t = 5000)]
    reconnect_wait_ms: u64,
    /// Add up to this much to the wait, a fixed share per account, so many
    /// components that lost the same server do not reconnect at once (ms).
    #[arg(long, default_value_t = 0)]
    reconnect_jitter_ms: u64,
    /// Require STARTTLS, checking the server's certificate for the JID's
    /// domain against the system CA store (SSL_CERT_FILE); needs a build with
    /// the 'tls' feature.
    #[arg(long)]
    tls: bool,
}

impl XmppArgs {
    fn link(&self, label: &str) -> Result<LinkConfig> {
        Ok(LinkConfig {
            jid: self
                .jid
                .parse::<BareJid>()
                .with_context(|| format!("--jid '{}'", self.jid))?,
            password: self.password.clone(),
            servers: self.servers.clone(),
            reconnect_wait: Duration::from_millis(self.reconnect_wait_ms),
            reconnect_jitter: Duration::from_millis(self.reconnect_jitter_ms),
            tls: self.tls,
            label: label.to_owned(),
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the upstream manager (REST API + XMPP link to the clusters).
    Upstream {
        /// SQLite database file.
        #[arg(long)]
        db: PathBuf,
        /// REST listen address.
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: SocketAddr,
        #[command(flatten)]
        xmpp: XmppArgs,
        /// Re-send unanswered requests this often (ms).
        #[arg(long, default_value_t = 10_000)]
        retransmit_ms: u64,
        /// Move a gone cluster's relocatable pending requests elsewhere after
        /// it has been away this long (ms).
        #[arg(long, default_value_t = 30_000)]
        relocate_after_ms: u64,
    },
    /// Run a downstream manager (one per cluster).
    Downstream {
        /// Account on the upstream domain.
        #[arg(long)]
        up_jid: String,
        /// Its password.
        #[arg(long, env = "STITCH_FLEET_UP_PASSWORD")]
        up_password: String,
        /// Upstream-domain XMPP server(s), host:port.
        #[arg(long = "up-server", required = true)]
        up_servers: Vec<String>,
        /// Account on the agents' domain.
        #[arg(long)]
        down_jid: String,
        /// Its password.
        #[arg(long, env = "STITCH_FLEET_DOWN_PASSWORD")]
        down_password: String,
        /// Agents-domain XMPP server(s), host:port.
        #[arg(long = "down-server", required = true)]
        down_servers: Vec<String>,
        /// The upstream manager's JID (the only one allowed to send requests).
        #[arg(long)]
        upstream: String,
        /// An agent's JID; repeat for each agent of the cluster.
        #[arg(long = "agent", required = true)]
        agents: Vec<String>,
        /// VMs the upstream may hold in this cluster.
        #[arg(long)]
        quota_vms: u32,
        /// Policies the upstream may hold in this cluster.
        #[arg(long, default_value_t = 64)]
        quota_policies: u32,
        /// An operation the upstream may not ask for in this cluster; repeat.
        #[arg(long = "deny-op", value_parser = ["define_vm", "remove_vm", "define_policy", "remove_policy", "define_service"])]
        denied_ops: Vec<String>,
        /// Record of requests and placements (JSON, rewritten atomically).
        #[arg(long)]
        state_file: PathBuf,
        /// Wait after a link failure before reconnecting (ms), both links.
        #[arg(long, default_value_t = 5000)]
        reconnect_wait_ms: u64,
        /// Add up to this much to the wait, a fixed share per account (ms).
        #[arg(long, default_value_t = 0)]
        reconnect_jitter_ms: u64,
        /// Require STARTTLS on both links (needs the 'tls' feature).
        #[arg(long)]
        tls: bool,
        /// Re-send requests not yet answered by an agent this often (ms).
        #[arg(long, default_value_t = 10_000)]
        retransmit_ms: u64,
    },
    /// Run an agent (one per appliance).
    Agent {
        #[command(flatten)]
        xmpp: XmppArgs,
        /// The downstream manager's JID (the only one allowed to send requests).
        #[arg(long)]
        manager: String,
        /// VM slots this appliance offers.
        #[arg(long)]
        vm_slots: u32,
        /// Prefix of namespace and veth names (1-8 of a-z0-9, unique per host).
        #[arg(long, default_value = "sf")]
        netns_prefix: String,
        /// stitchd's control socket (policies are refused without one).
        #[arg(long)]
        stitchd_socket: Option<PathBuf>,
        /// Check VMs and stitchd this often (ms); state goes out only on change.
        #[arg(long, default_value_t = 5000)]
        health_interval_ms: u64,
        /// How long a VM may take to print its template's ready line (ms).
        #[arg(long, default_value_t = 30_000)]
        ready_timeout_ms: u64,
    },
    /// Simulate a fleet in this process against two private prosody
    /// servers (agents as tasks with a null VM driver) and report login time,
    /// idle stanzas, provisioning latency and stanza rates.
    Sim {
        /// Clusters.
        #[arg(long, default_value_t = 5)]
        clusters: usize,
        /// Agents per cluster.
        #[arg(long, default_value_t = 20)]
        agents: usize,
        /// VM slots per agent.
        #[arg(long, default_value_t = 4)]
        slots: u32,
        /// define_vm requests to submit.
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Idle window over which stanzas are counted (ms).
        #[arg(long, default_value_t = 3000)]
        idle_ms: u64,
    },
    /// Submit a provisioning request.
    Request {
        /// Customer.
        #[arg(long)]
        customer: String,
        /// Cluster (default: the upstream chooses).
        #[arg(long)]
        cluster: Option<String>,
        /// Wait up to this many seconds for the final result.
        #[arg(long)]
        wait: Option<u64>,
        /// Allow the upstream to move the request to another cluster if its
        /// cluster goes away before answering (define-vm only).
        #[arg(long)]
        relocatable: bool,
        #[command(subcommand)]
        op: RequestOp,
    },
    /// Show one request, or all (of a customer).
    Status {
        /// Request id (r<n>).
        id: Option<String>,
        /// Only this customer's requests.
        #[arg(long)]
        customer: Option<String>,
    },
    /// List the clusters (one node each) with capacity and health.
    Clusters {
        #[command(subcommand)]
        op: Option<ClusterOp>,
    },
    /// Show customers' quotas and usage, or change them.
    Quotas {
        #[command(subcommand)]
        op: Option<QuotaOp>,
    },
    /// Manage the template repository.
    Templates {
        #[command(subcommand)]
        op: Option<TemplateOp>,
    },
}

#[derive(Subcommand)]
enum RequestOp {
    /// Define a VM from a template.
    DefineVm {
        /// VM name.
        name: String,
        /// Template name.
        #[arg(long)]
        template: String,
    },
    /// Remove a VM.
    RemoveVm {
        /// VM name.
        name: String,
    },
    /// Pin a MAC to a switch port on the VM's appliance (stitchd mac.add).
    DefineMacPolicy {
        /// Policy name.
        name: String,
        /// The VM.
        #[arg(long)]
        vm: String,
        /// MAC.
        #[arg(long)]
        mac: String,
        /// Switch port.
        #[arg(long)]
        port: u16,
    },
    /// Remove a policy.
    RemovePolicy {
        /// Policy name.
        name: String,
    },
    /// Define a load-balanced service (refused: stitchd has no load balancer yet).
    DefineService {
        /// Service name.
        name: String,
        /// Virtual address ip:port.
        #[arg(long)]
        vip: String,
        /// Backend VM; repeat.
        #[arg(long = "backend")]
        backends: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ClusterOp {
    /// Register a cluster by its downstream manager's JID.
    Add {
        /// Name.
        name: String,
        /// Downstream manager's JID on the upstream domain.
        #[arg(long)]
        jid: String,
    },
}

#[derive(Subcommand)]
enum QuotaOp {
    /// Add a customer with its quota.
    Add {
        /// Customer.
        name: String,
        /// VMs.
        #[arg(long)]
        vms: u32,
        /// Policies.
        #[arg(long, default_value_t = 16)]
        policies: u32,
    },
    /// Replace a customer's quota.
    Set {
        /// Customer.
        name: String,
        /// VMs.
        #[arg(long)]
        vms: u32,
        /// Policies.
        #[arg(long, default_value_t = 16)]
        policies: u32,
    },
}

#[derive(Subcommand)]
enum TemplateOp {
    /// Add a template.
    Add {
        /// Name.
        name: String,
        /// Command run in the VM's namespace.
        #[arg(long)]
        command: String,
        /// Line the VM prints when ready.
        #[arg(long)]
        ready_line: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stitch-fleet: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let url = cli.url.clone();
    let json = cli.json;
    match cli.cmd {
        Cmd::Upstream {
            db,
            listen,
            xmpp,
            retransmit_ms,
            relocate_after_ms,
        } => {
            let cfg = upstream::UpstreamConfig {
                db,
                listen,
                link: xmpp.link("up-link")?,
                retransmit: Duration::from_millis(retransmit_ms.max(100)),
                relocate_after: Duration::from_millis(relocate_after_ms.max(100)),
            };
            runtime()?.block_on(upstream::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Downstream {
            up_jid,
            up_password,
            up_servers,
            down_jid,
            down_password,
            down_servers,
            upstream,
            agents,
            quota_vms,
            quota_policies,
            denied_ops,
            state_file,
            reconnect_wait_ms,
            reconnect_jitter_ms,
            tls,
            retransmit_ms,
        } => {
            let wait = Duration::from_millis(reconnect_wait_ms);
            let jitter = Duration::from_millis(reconnect_jitter_ms);
            let parse = |s: &str, what: &str| {
                s.parse::<BareJid>()
                    .with_context(|| format!("{what} '{s}' is not a JID"))
            };
            let cfg = downstream::DownstreamConfig {
                up: LinkConfig {
                    jid: parse(&up_jid, "--up-jid")?,
                    password: up_password,
                    servers: up_servers,
                    reconnect_wait: wait,
                    reconnect_jitter: jitter,
                    tls,
                    label: "up-link".to_owned(),
                },
                down: LinkConfig {
                    jid: parse(&down_jid, "--down-jid")?,
                    password: down_password,
                    servers: down_servers,
                    reconnect_wait: wait,
                    reconnect_jitter: jitter,
                    tls,
                    label: "down-link".to_owned(),
                },
                upstream: parse(&upstream, "--upstream")?,
                agents: agents
                    .iter()
                    .map(|a| parse(a, "--agent"))
                    .collect::<Result<_>>()?,
                quota_vms,
                quota_policies,
                denied_ops,
                state_file,
                retransmit: Duration::from_millis(retransmit_ms.max(100)),
            };
            runtime()?.block_on(downstream::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Agent {
            xmpp,
            manager,
            vm_slots,
            netns_prefix,
            stitchd_socket,
            health_interval_ms,
            ready_timeout_ms,
        } => {
            let cfg = agent::AgentConfig {
                link: xmpp.link("link")?,
                manager: manager
                    .parse()
                    .with_context(|| format!("--manager '{manager}' is not a JID"))?,
                vm_slots,
                netns_prefix,
                stitchd_socket,
                health_interval: Duration::from_millis(health_interval_ms.max(10)),
                ready_timeout: Duration::from_millis(ready_timeout_ms),
                driver: agent::DriverKind::Process,
            };
            runtime()?.block_on(agent::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sim {
            clusters,
            agents,
            slots,
            requests,
            idle_ms,
        } => {
            let dir = std::env::temp_dir().join(format!("stitch-fleet-sim-{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            let res = stitch_fleet::sim::run(&stitch_fleet::sim::SimConfig {
                clusters,
                agents,
                slots,
                requests,
                idle: Duration::from_millis(idle_ms),
                dir: dir.clone(),
            });
            let _ = std::fs::remove_dir_all(&dir);
            let report = res?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} clusters, {} agents, {} XMPP sessions: whole capacity upstream after {:.1} s",
                    report.clusters, report.agents, report.sessions, report.converge_s
                );
                println!(
                    "idle: {} fleet messages in {:.1} s",
                    report.idle_messages, report.idle_s
                );
                println!(
                    "{} define_vm ({} succeeded) in {:.2} s: latency p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
                    report.requests, report.succeeded, report.provision_s, report.latency_ms_p50,
                    report.latency_ms_p90, report.latency_ms_p99, report.latency_ms_max
                );
                println!(
                    "{:.1} fleet messages per request, {:.0} messages/s",
                    report.messages_per_request, report.messages_per_s
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Request {
            customer,
            cluster,
            wait,
            relocatable,
            op,
        } => {
            let action = match op {
                RequestOp::DefineVm { name, template } => ApiAction::DefineVm { name, template },
                RequestOp::RemoveVm { name } => ApiAction::RemoveVm { name },
                RequestOp::DefineMacPolicy {
                    name,
                    vm,
                    mac,
                    port,
                } => ApiAction::DefinePolicy {
                    name,
                    vm,
                    policy: Policy::MacStatic { mac, port },
                },
                RequestOp::RemovePolicy { name } => ApiAction::RemovePolicy { name },
                RequestOp::DefineService {
                    name,
                    vip,
                    backends,
                } => ApiAction::DefineService {
                    name,
                    vip,
                    backends,
                },
            };
            let body = serde_json::to_string(&RequestIn {
                customer,
                cluster,
                action,
                relocatable,
            })?;
            let mut view: RequestView =
                rest(&url, "POST", "/v1/requests", Some(&body), &[202, 409])?;
            if let Some(secs) = wait {
                let deadline = std::time::Instant::now() + Duration::from_secs(secs);
                while !view.outcome.is_final() && std::time::Instant::now() < deadline {
                    // A user-facing poll, not a test: the REST API has no push.
                    std::thread::sleep(Duration::from_millis(200));
                    view = rest(
                        &url,
                        "GET",
                        &format!("/v1/requests/{}", view.id),
                        None,
                        &[200],
                    )?;
                }
            }
            print_requests(json, &[view.clone()])?;
            Ok(match view.outcome {
                Outcome::Accepted | Outcome::Succeeded { .. } => ExitCode::SUCCESS,
                Outcome::Refused { .. } | Outcome::Failed { .. } => ExitCode::from(1),
            })
        }
        Cmd::Status { id, customer } => {
            let views: Vec<RequestView> = match id {
                Some(id) => vec![rest(
                    &url,
                    "GET",
                    &format!("/v1/requests/{id}"),
                    None,
                    &[200],
                )?],
                None => {
                    let path = match customer {
                        Some(c) => format!("/v1/requests?customer={c}"),
                        None => "/v1/requests".to_owned(),
                    };
                    rest(&url, "GET", &path, None, &[200])?
                }
            };
            print_requests(json, &views)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Clusters { op } => {
            let views: Vec<ClusterView> = match op {
                None => rest(&url, "GET", "/v1/clusters", None, &[200])?,
                Some(ClusterOp::Add { name, jid }) => {
                    let body = serde_json::to_string(&ClusterIn { name, jid })?;
                    vec![rest(&url, "POST", "/v1/clusters", Some(&body), &[201])?]
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                println!(
                    "{:<16} {:<32} {:>6} {:>6} {:<10}",
                    "CLUSTER", "JID", "SLOTS", "USED", "HEALTH"
                );
                for c in views {
                    let (slots, used, health) = match c.state {
                        Some(s) => (
                            s.vm_slots.to_string(),
                            s.vms_used.to_string(),
                            format!("{:?}", s.health).to_lowercase(),
                        ),
                        None => ("-".into(), "-".into(), "offline".into()),
                    };
                    println!(
                        "{:<16} {:<32} {slots:>6} {used:>6} {health:<10}",
                        c.name, c.jid
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Quotas { op } => {
            let views: Vec<CustomerView> = match op {
                None => rest(&url, "GET", "/v1/customers", None, &[200])?,
                Some(QuotaOp::Add {
                    name,
                    vms,
                    policies,
                }) => {
                    let body = serde_json::to_string(&CustomerIn {
                        name,
                        quota: Quota { vms, policies },
                    })?;
                    vec![rest(&url, "POST", "/v1/customers", Some(&body), &[201])?]
                }
                Some(QuotaOp::Set {
                    name,
                    vms,
                    policies,
                }) => {
                    let body = serde_json::to_string(&Quota { vms, policies })?;
                    vec![rest(
                        &url,
                        "PUT",
                        &format!("/v1/customers/{name}/quota"),
                        Some(&body),
                        &[200],
                    )?]
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                println!("{:<16} {:>10} {:>14}", "CUSTOMER", "VMS", "POLICIES");
                for c in views {
                    println!(
                        "{:<16} {:>10} {:>14}",
                        c.name,
                        format!("{}/{}", c.used.vms, c.quota.vms),
                        format!("{}/{}", c.used.policies, c.quota.policies)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Templates { op } => {
            let body = match op {
                None => rest::<serde_json::Value>(&url, "GET", "/v1/templates", None, &[200])?,
                Some(TemplateOp::Add {
                    name,
                    command,
                    ready_line,
                }) => {
                    let body = serde_json::to_string(&TemplateIn {
                        name,
                        command,
                        ready_line,
                    })?;
                    rest::<serde_json::Value>(&url, "POST", "/v1/templates", Some(&body), &[201])?
                }
            };
            println!("{}", serde_json::to_string_pretty(&body)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn rest<T: serde::de::DeserializeOwned>(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    ok: &[u16],
) -> Result<T> {
    let reply = http::call(url, method, path, body)?;
    if !ok.contains(&reply.status) {
        let msg = serde_json::from_str::<ErrorBody>(&reply.body)
            .map(|e| e.error)
            .unwrap_or(reply.body);
        bail!("{method} {path}: HTTP {}: {msg}", reply.status);
    }
    serde_json::from_str(&reply.body)
        .map_err(|e| anyhow!("unexpected answer to {method} {path}: {e}"))
}

fn print_requests(json: bool, views: &[RequestView]) -> Result<()> {
    if json {
        if let [one] = views {
            println!("{}", serde_json::to_string_pretty(one)?);
        } else {
            println!("{}", serde_json::to_string_pretty(views)?);
        }
        return Ok(());
    }
    println!(
        "{:<8} {:<12} {:<12} {:<15} {:<16} {:<10} DETAIL",
        "ID", "CUSTOMER", "CLUSTER", "OP", "NAME", "STATUS"
    );
    for v in views {
        let detail = match &v.outcome {
            Outcome::Accepted => String::new(),
            Outcome::Refused { reason, by } => format!("refused by {by}: {reason}"),
            Outcome::Succeeded { detail } => detail.clone(),
            Outcome::Failed { reason } => reason.clone(),
        };
        println!(
            "{:<8} {:<12} {:<12} {:<15} {:<16} {:<10} {detail}",
            v.id,
            v.customer,
            v.cluster.as_deref().unwrap_or("-"),
            v.op,
            v.name,
            v.outcome.status()
        );
    }
    Ok(())
}
