//! The fleet end to end: real prosody servers (one for the upstream domain,
//! one for the clusters' agent domains), the real `stitch-fleet` binary as
//! upstream, downstream managers and agents, VMs as processes in network
//! namespaces. The agents' stitchd is stitchd's real control-socket server
//! (`stitch_control::ControlServer`, the same parser and dispatcher the daemon
//! uses) with a handler that records what it was asked; the data plane is not
//! started here (see docs/fleet.md).
//!
//! Requires root (namespaces) and prosody (scripts/setup-fleet.sh).

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use stitch_control::{Handler, Method, RpcError};
use support::*;

const UP_DOMAIN: &str = "up.fleet.test";

fn pw(user: &str) -> String {
    format!("pw-{user}")
}

struct Opts {
    clusters: usize,
    agents: usize,
    slots: u32,
    quota_vms: u32,
    wait_ms: u64,
    retransmit_ms: u64,
    health_ms: u64,
    stitchd: bool,
    /// Upstream's --relocate-after-ms.
    relocate_ms: u64,
    /// Downstream --deny-op values.
    deny_ops: Vec<&'static str>,
    /// Both XMPP servers require STARTTLS (certificates from a test CA).
    tls: bool,
    /// A second server for the agents' domains (same accounts), listed after
    /// the first: the next server of the XMPP cluster.
    spare: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            clusters: 1,
            agents: 2,
            slots: 2,
            quota_vms: 16,
            wait_ms: 300,
            retransmit_ms: 500,
            health_ms: 200,
            stitchd: false,
            spare: false,
            relocate_ms: 30_000,
            deny_ops: Vec::new(),
            tls: false,
        }
    }
}

/// A fake stitchd control plane: the real server, a recording handler.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Handler for Recorder {
    fn call(&self, method: Method) -> Result<Value, RpcError> {
        self.0.lock().unwrap().push(method.name().to_owned());
        Ok(json!({"outcome": "ok"}))
    }
}

struct Cluster {
    downstream: Proc,
    agents: Vec<Proc>,
    prefixes: Vec<String>,
    recorders: Vec<Arc<Recorder>>,
    _servers: Vec<stitch_control::ServerHandle>,
    _guards: Vec<NetnsGuard>,
}

struct Fleet {
    dir: TempDir,
    up_xmpp: Prosody,
    down_xmpp: Prosody,
    down_spare: Option<Prosody>,
    upstream: Proc,
    rest: String,
    clusters: Vec<Cluster>,
    opts: Opts,
    /// Environment of every fleet process (SSL_CERT_FILE with TLS).
    env: Vec<(String, String)>,
}

fn cluster_domain(i: usize) -> String {
    format!("c{i}.fleet.test")
}

impl Fleet {
    fn start(opts: Opts) -> Fleet {
        let dir = TempDir::new("fleet");
        let mut up_accounts = vec![
            ("upstream".to_owned(), UP_DOMAIN.to_owned()),
            ("mallory".to_owned(), UP_DOMAIN.to_owned()),
        ];
        let mut down_accounts = Vec::new();
        let mut down_hosts = Vec::new();
        for i in 0..opts.clusters {
            up_accounts.push((format!("ds-c{i}"), UP_DOMAIN.to_owned()));
            down_hosts.push(cluster_domain(i));
            down_accounts.push(("manager".to_owned(), cluster_domain(i)));
            down_accounts.push(("mallory".to_owned(), cluster_domain(i)));
            for a in 0..opts.agents {
                down_accounts.push((format!("agent{a}"), cluster_domain(i)));
            }
        }
        let acc = |v: &Vec<(String, String)>| -> Vec<(String, String, String)> {
            v.iter()
                .map(|(u, h)| (u.clone(), h.clone(), pw(u)))
                .collect()
        };
        let up_acc = acc(&up_accounts);
        let down_acc = acc(&down_accounts);
        let mut env = Vec::new();
        let certs = opts.tls.then(|| {
            let mut names = vec![UP_DOMAIN];
            names.extend(down_hosts.iter().map(String::as_str));
            let (ca, cert, key) = make_certs(dir.path(), &names);
            env.push(("SSL_CERT_FILE".to_owned(), ca.display().to_string()));
            (cert, key)
        });
        let tls = certs.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let up_xmpp = Prosody::start(
            &[UP_DOMAIN],
            &up_acc
                .iter()
                .map(|(u, h, p)| (u.as_str(), h.as_str(), p.as_str()))
                .collect::<Vec<_>>(),
            tls,
        );
        let down_xmpp = Prosody::start(
            &down_hosts.iter().map(String::as_str).collect::<Vec<_>>(),
            &down_acc
                .iter()
                .map(|(u, h, p)| (u.as_str(), h.as_str(), p.as_str()))
                .collect::<Vec<_>>(),
            tls,
        );
        let down_spare = opts.spare.then(|| {
            Prosody::start(
                &down_hosts.iter().map(String::as_str).collect::<Vec<_>>(),
                &down_acc
                    .iter()
                    .map(|(u, h, p)| (u.as_str(), h.as_str(), p.as_str()))
                    .collect::<Vec<_>>(),
                tls,
            )
        });
        let upstream = start_upstream(&dir, &up_xmpp, &opts, &env);
        let line = upstream.wait("rest listening on ");
        let rest = line.rsplit(' ').next().unwrap().to_owned();
        upstream.wait("up-link link up");
        let mut fleet = Fleet {
            dir,
            up_xmpp,
            down_xmpp,
            down_spare,
            upstream,
            rest,
            clusters: Vec::new(),
            opts,
            env,
        };
        for i in 0..fleet.opts.clusters {
            let (st, body) = fleet.post(
                "/v1/clusters",
                json!({"name": format!("c{i}"), "jid": format!("ds-c{i}@{UP_DOMAIN}")}),
            );
            assert_eq!(st, 201, "{body}");
        }
        let (st, body) = fleet.post(
            "/v1/templates",
            json!({"name": "sleeper", "command": "echo ready; exec sleep 600", "ready_line": "ready"}),
        );
        assert_eq!(st, 201, "{body}");
        for i in 0..fleet.opts.clusters {
            let c = fleet.start_cluster(i);
            fleet.clusters.push(c);
        }
        let total = fleet.opts.slots * fleet.opts.agents as u32;
        for i in 0..fleet.opts.clusters {
            fleet.upstream.wait(&format!(
                "state from cluster c{i}: 0 of {total} VM slots used, Ok"
            ));
        }
        fleet
    }

    fn start_cluster(&self, i: usize) -> Cluster {
        let dom = cluster_domain(i);
        let mut agents = Vec::new();
        let mut prefixes = Vec::new();
        let mut guards = Vec::new();
        let mut recorders = Vec::new();
        let mut servers = Vec::new();
        for a in 0..self.opts.agents {
            let prefix = format!("f{}", tag());
            guards.push(NetnsGuard(prefix.clone()));
            let mut args = vec![
                "agent".to_owned(),
                "--jid".into(),
                format!("agent{a}@{dom}"),
                "--password".into(),
                pw(&format!("agent{a}")),
                "--server".into(),
                self.down_xmpp.addr(),
                "--reconnect-wait-ms".into(),
                self.opts.wait_ms.to_string(),
                "--manager".into(),
                format!("manager@{dom}"),
                "--vm-slots".into(),
                self.opts.slots.to_string(),
                "--netns-prefix".into(),
                prefix.clone(),
                "--health-interval-ms".into(),
                self.opts.health_ms.to_string(),
            ];
            if let Some(spare) = &self.down_spare {
                args.push("--server".into());
                args.push(spare.addr());
            }
            if self.opts.stitchd {
                let sock = self.dir.path().join(format!("stitchd-c{i}-a{a}.sock"));
                let rec = Arc::new(Recorder::default());
                let server = stitch_control::ControlServer::bind(&sock)
                    .expect("bind fake stitchd control socket")
                    .serve(rec.clone());
                recorders.push(rec);
                servers.push(server);
                args.push("--stitchd-socket".into());
                args.push(sock.display().to_string());
            }
            if self.opts.tls {
                args.push("--tls".into());
            }
            agents.push(Proc::spawn_env(&format!("c{i}-agent{a}"), &args, &self.env));
            prefixes.push(prefix);
        }
        let mut args = vec![
            "downstream".to_owned(),
            "--up-jid".into(),
            format!("ds-c{i}@{UP_DOMAIN}"),
            "--up-password".into(),
            pw(&format!("ds-c{i}")),
            "--up-server".into(),
            self.up_xmpp.addr(),
            "--down-jid".into(),
            format!("manager@{dom}"),
            "--down-password".into(),
            pw("manager"),
            "--down-server".into(),
            self.down_xmpp.addr(),
            "--upstream".into(),
            format!("upstream@{UP_DOMAIN}"),
            "--quota-vms".into(),
            self.opts.quota_vms.to_string(),
            "--state-file".into(),
            self.dir
                .path()
                .join(format!("ds-c{i}.json"))
                .display()
                .to_string(),
            "--reconnect-wait-ms".into(),
            self.opts.wait_ms.to_string(),
            "--retransmit-ms".into(),
            self.opts.retransmit_ms.to_string(),
        ];
        if let Some(spare) = &self.down_spare {
            args.push("--down-server".into());
            args.push(spare.addr());
        }
        for op in &self.opts.deny_ops {
            args.push("--deny-op".into());
            args.push((*op).to_owned());
        }
        for a in 0..self.opts.agents {
            args.push("--agent".into());
            args.push(format!("agent{a}@{dom}"));
        }
        if self.opts.tls {
            args.push("--tls".into());
        }
        let downstream = Proc::spawn_env(&format!("c{i}-downstream"), &args, &self.env);
        Cluster {
            downstream,
            agents,
            prefixes,
            recorders,
            _servers: servers,
            _guards: guards,
        }
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        rest(&self.rest, "POST", path, Some(&body.to_string()))
    }

    fn get(&self, path: &str) -> (u16, Value) {
        rest(&self.rest, "GET", path, None)
    }

    fn customer(&self, name: &str, vms: u32) {
        let (st, body) = self.post(
            "/v1/customers",
            json!({"name": name, "quota": {"vms": vms, "policies": 4}}),
        );
        assert_eq!(st, 201, "{body}");
    }

    /// Submits a request; returns its id and the immediate answer.
    fn submit(&self, customer: &str, cluster: Option<&str>, action: Value) -> (String, u16, Value) {
        let mut body = json!({"customer": customer, "action": action});
        if let Some(c) = cluster {
            body["cluster"] = json!(c);
        }
        let (st, v) = self.post("/v1/requests", body);
        let id = v["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id: {v}"))
            .to_owned();
        (id, st, v)
    }

    /// Waits for the request's result to reach the upstream; returns it.
    fn result(&self, id: &str) -> Value {
        self.upstream.wait(&format!("result {id} from cluster"));
        let (st, v) = self.get(&format!("/v1/requests/{id}"));
        assert_eq!(st, 200, "{v}");
        v
    }

    fn all_prefixes(&self) -> Vec<String> {
        self.clusters
            .iter()
            .flat_map(|c| c.prefixes.iter().cloned())
            .collect()
    }

    fn vm_namespaces(&self) -> Vec<String> {
        self.all_prefixes()
            .iter()
            .flat_map(|p| netns_with_prefix(p))
            .collect()
    }
}

fn start_upstream(dir: &TempDir, xmpp: &Prosody, opts: &Opts, env: &[(String, String)]) -> Proc {
    let mut args = vec![
        "upstream".to_owned(),
        "--db".into(),
        dir.path().join("upstream.db").display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--jid".into(),
        format!("upstream@{UP_DOMAIN}"),
        "--password".into(),
        pw("upstream"),
        "--server".into(),
        xmpp.addr(),
        "--reconnect-wait-ms".into(),
        opts.wait_ms.to_string(),
        "--retransmit-ms".into(),
        opts.retransmit_ms.to_string(),
        "--relocate-after-ms".into(),
        opts.relocate_ms.to_string(),
    ];
    if opts.tls {
        args.push("--tls".into());
    }
    Proc::spawn_env("upstream", &args, env)
}

fn define_vm(name: &str, template: &str) -> Value {
    json!({"op": "define_vm", "name": name, "template": template})
}

fn status(v: &Value) -> &str {
    v["outcome"]["status"].as_str().unwrap_or("?")
}

#[test]
fn two_clusters_show_as_two_nodes_with_summed_capacity_and_provision_a_vm_and_a_policy() {
    let fleet = Fleet::start(Opts {
        clusters: 2,
        stitchd: true,
        ..Opts::default()
    });
    // Two nodes, each with the sum of its two agents' slots; nothing per agent.
    let (_, clusters) = fleet.get("/v1/clusters");
    let clusters = clusters.as_array().unwrap();
    assert_eq!(clusters.len(), 2, "{clusters:?}");
    for c in clusters {
        assert_eq!(c["state"]["vm_slots"], 4, "{c}");
        assert_eq!(c["state"]["vms_used"], 0, "{c}");
    }
    fleet.customer("acme", 4);

    let (id, st, v) = fleet.submit("acme", Some("c1"), define_vm("web-1", "sleeper"));
    assert_eq!(st, 202, "{v}");
    let v = fleet.result(&id);
    assert_eq!(status(&v), "succeeded", "{v}");
    // The VM is a process in a namespace created by one agent of cluster c1.
    let c1_ns: Vec<String> = fleet.clusters[1]
        .prefixes
        .iter()
        .flat_map(|p| netns_with_prefix(p))
        .collect();
    assert_eq!(c1_ns.len(), 1, "{c1_ns:?}");
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", &c1_ns[0]])
        .output()
        .unwrap();
    assert!(!pids.stdout.is_empty(), "no process in {}", c1_ns[0]);
    fleet
        .upstream
        .wait("state from cluster c1: 1 of 4 VM slots used, Ok");

    // A stitch policy for the VM goes to the stitchd of the VM's appliance.
    let (pid_, st, v) = fleet.submit(
        "acme",
        None,
        json!({"op": "define_policy", "name": "pin", "vm": "web-1",
               "policy": {"kind": "mac_static", "mac": "02:00:00:00:00:01", "port": 1}}),
    );
    assert_eq!(st, 202, "{v}");
    let v = fleet.result(&pid_);
    assert_eq!(status(&v), "succeeded", "{v}");
    let calls: Vec<String> = fleet.clusters[1]
        .recorders
        .iter()
        .flat_map(|r| r.0.lock().unwrap().clone())
        .collect();
    assert_eq!(calls, vec!["mac.add".to_owned()]);
    assert!(fleet.clusters[0]
        .recorders
        .iter()
        .all(|r| r.0.lock().unwrap().is_empty()));

    // The load balancer does not exist in stitchd yet: refused, with the reason.
    let (sid, _, _) = fleet.submit(
        "acme",
        Some("c0"),
        json!({"op": "define_service", "name": "www", "vip": "198.18.0.10:80", "backends": ["web-1"]}),
    );
    let v = fleet.result(&sid);
    assert_eq!(status(&v), "refused", "{v}");
    assert_eq!(v["outcome"]["by"], "agent");
    assert!(
        v["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("not supported by this stitchd"),
        "{v}"
    );

    // Remove the VM: its namespace goes away, the cluster's usage drops.
    let (rid, st, v) = fleet.submit("acme", None, json!({"op": "remove_vm", "name": "web-1"}));
    assert_eq!(st, 202, "{v}");
    let v = fleet.result(&rid);
    assert_eq!(status(&v), "succeeded", "{v}");
    assert!(fleet.vm_namespaces().is_empty());
    fleet
        .upstream
        .wait("state from cluster c1: 0 of 4 VM slots used, Ok");

    // The CLI shows the same: two clusters, JSON on request.
    let out = std::process::Command::new(bin())
        .args(["--url", &fleet.rest, "--json", "clusters"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
}

#[test]
fn quotas_are_enforced_upstream_and_downstream_with_the_reason_reaching_the_user() {
    let mut fleet = Fleet::start(Opts {
        quota_vms: 1,
        deny_ops: vec!["define_policy"],
        ..Opts::default()
    });
    fleet.customer("acme", 1);
    fleet.customer("beta", 5);
    let (id, _, _) = fleet.submit("acme", None, define_vm("a", "sleeper"));
    assert_eq!(status(&fleet.result(&id)), "succeeded");

    // Over the customer's quota: declined by the upstream, through the CLI.
    let out = std::process::Command::new(bin())
        .args([
            "--url",
            &fleet.rest,
            "request",
            "--customer",
            "acme",
            "define-vm",
            "b",
            "--template",
            "sleeper",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("refused by upstream: customer 'acme' is at its quota of 1 VMs"),
        "{stdout}"
    );

    // Within beta's quota but over the cluster's own: declined downstream.
    let (id, st, _) = fleet.submit("beta", None, define_vm("c", "sleeper"));
    assert_eq!(st, 202);
    let v = fleet.result(&id);
    assert_eq!(status(&v), "refused", "{v}");
    assert_eq!(v["outcome"]["by"], "downstream");
    assert!(
        v["outcome"]["reason"]
            .as_str()
            .unwrap()
            .contains("cluster quota: the upstream may hold at most 1 VMs"),
        "{v}"
    );
    assert_eq!(fleet.vm_namespaces().len(), 1);

    // The cluster's own permissions: it takes no policies from the upstream.
    let (id, st, _) = fleet.submit(
        "acme",
        None,
        json!({"op": "define_policy", "name": "pin", "vm": "a",
               "policy": {"kind": "mac_static", "mac": "02:00:00:00:00:01", "port": 1}}),
    );
    assert_eq!(st, 202);
    let v = fleet.result(&id);
    assert_eq!(status(&v), "refused", "{v}");
    assert_eq!(v["outcome"]["by"], "downstream");
    assert_eq!(
        v["outcome"]["reason"],
        "this cluster does not permit define_policy"
    );

    // The upstream keeps everything across a restart (SQLite).
    let before = fleet.get("/v1/requests").1;
    fleet.upstream.kill();
    fleet.upstream = start_upstream(&fleet.dir, &fleet.up_xmpp, &fleet.opts, &fleet.env);
    let line = fleet.upstream.wait("rest listening on ");
    fleet.rest = line.rsplit(' ').next().unwrap().to_owned();
    let after = fleet.get("/v1/requests").1;
    assert_eq!(before, after);
    let (_, acme) = fleet.get("/v1/customers/acme");
    assert_eq!(acme["used"]["vms"], 1, "{acme}");
    // And hears the cluster again once its link is up.
    fleet
        .upstream
        .wait("state from cluster c0: 1 of 4 VM slots used, Ok");
}

#[test]
fn killing_the_clusters_xmpp_server_mid_provisioning_completes_the_request_exactly_once_after_the_wait(
) {
    let wait_ms = 1500;
    let mut fleet = Fleet::start(Opts {
        wait_ms,
        ..Opts::default()
    });
    fleet.customer("acme", 4);
    // A VM that becomes ready only when the test says so.
    let fifo = fleet.dir.path().join("gate");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(ok.success());
    let (st, v) = fleet.post(
        "/v1/templates",
        json!({"name": "gated", "ready_line": "ready",
               "command": format!("read x < {}; echo ready; exec sleep 600", fifo.display())}),
    );
    assert_eq!(st, 201, "{v}");
    let (id, _, _) = fleet.submit("acme", None, define_vm("slow", "gated"));
    // Wait until an agent is applying it.
    let fwd = fleet.clusters[0]
        .downstream
        .wait(&format!("request {id} define_vm forwarded to agent"));
    let agent_ix: usize = fwd
        .split("forwarded to agent")
        .nth(1)
        .and_then(|s| s.split('@').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no agent in {fwd:?}"));
    let agent = &fleet.clusters[0].agents[agent_ix];
    agent.wait("starting VM 'slow'");

    // The agents' XMPP server dies mid-provisioning.
    let killed_at = unix_ms();
    fleet.down_xmpp.kill();
    let down_line = agent.wait("link down; waiting 1500 ms");
    let ds = &fleet.clusters[0].downstream;
    ds.wait("down-link link down; waiting 1500 ms");
    fleet.down_xmpp.restart();
    // The VM finishes while the link is down; its result must get through.
    std::fs::write(&fifo, "go\n").unwrap();
    let v = fleet.result(&id);
    assert_eq!(status(&v), "succeeded", "{v}");

    // The wait was honoured: no connection attempt before it.
    let (down_ix, _) = agent.wait_from(0, "link down; waiting");
    let (_, reconnect) = agent.wait_from(down_ix, "link connecting to");
    assert!(
        stamp(&reconnect) >= stamp(&down_line) + u128::from(wait_ms),
        "reconnected too early: {down_line} / {reconnect}"
    );
    assert!(stamp(&reconnect) >= killed_at + u128::from(wait_ms));
    let ds_down = ds.wait("down-link link down; waiting");
    let (ds_ix, _) = ds.wait_from(0, "down-link link down; waiting");
    let (_, ds_re) = ds.wait_from(ds_ix, "down-link connecting to");
    assert!(stamp(&ds_re) >= stamp(&ds_down) + u128::from(wait_ms));

    // Exactly once: applied once, one namespace, one VM counted.
    let applied: usize = fleet.clusters[0]
        .agents
        .iter()
        .map(|a| a.count(&format!("apply {id} "), None))
        .sum();
    assert_eq!(applied, 1);
    assert_eq!(fleet.vm_namespaces().len(), 1);
    fleet
        .upstream
        .wait("state from cluster c0: 1 of 4 VM slots used, Ok");
    let (_, acme) = fleet.get("/v1/customers/acme");
    assert_eq!(acme["used"]["vms"], 1, "{acme}");
    let (_, reqs) = fleet.get("/v1/requests");
    assert_eq!(reqs.as_array().unwrap().len(), 1);
}

#[test]
fn killing_the_upstream_xmpp_server_loses_no_request_and_applies_it_once() {
    let wait_ms = 800;
    let mut fleet = Fleet::start(Opts {
        wait_ms,
        ..Opts::default()
    });
    fleet.customer("acme", 4);
    fleet.up_xmpp.kill();
    let down = fleet.upstream.wait("up-link link down; waiting 800 ms");
    fleet.clusters[0]
        .downstream
        .wait("up-link link down; waiting 800 ms");
    // Accepted and recorded while the link is down (the cluster's last
    // reported capacity stands); delivered once the link is back.
    let (id, st, v) = fleet.submit("acme", None, define_vm("late", "sleeper"));
    assert_eq!(st, 202, "{v}");
    fleet.up_xmpp.restart();
    let v = fleet.result(&id);
    assert_eq!(status(&v), "succeeded", "{v}");
    let (ix, _) = fleet.upstream.wait_from(0, "up-link link down; waiting");
    let (_, again) = fleet.upstream.wait_from(ix, "up-link connecting to");
    assert!(stamp(&again) >= stamp(&down) + u128::from(wait_ms));
    let applied: usize = fleet.clusters[0]
        .agents
        .iter()
        .map(|a| a.count(&format!("apply {id} "), None))
        .sum();
    assert_eq!(applied, 1);
    assert_eq!(fleet.vm_namespaces().len(), 1);
}

#[test]
fn when_an_xmpp_server_dies_every_component_fails_over_to_the_next_server() {
    let mut fleet = Fleet::start(Opts {
        spare: true,
        ..Opts::default()
    });
    fleet.customer("acme", 4);
    let spare = fleet.down_spare.as_ref().unwrap().addr();
    fleet.down_xmpp.kill();
    // Every session of the agents' domain moves to the spare server.
    let c = &fleet.clusters[0];
    let (ix, _) = c
        .downstream
        .wait_from(0, &format!("down-link connecting to {spare}"));
    c.downstream.wait_from(ix, "down-link link up");
    for a in &c.agents {
        let (ix, _) = a.wait_from(0, &format!("link connecting to {spare}"));
        a.wait_from(ix, "link link up");
    }
    // The manager sees every agent on the new server (their presence).
    for a in 0..2 {
        c.downstream
            .wait_from(ix, &format!("agent agent{a}@{} online", cluster_domain(0)));
    }
    let (_, c0) = fleet.get("/v1/clusters/c0");
    assert_eq!(c0["state"]["vm_slots"], 4, "{c0}");
    let (id, _, _) = fleet.submit("acme", None, define_vm("moved", "sleeper"));
    let v = fleet.result(&id);
    assert_eq!(status(&v), "succeeded", "{v}");
}

#[test]
fn a_cluster_that_goes_away_has_its_relocatable_work_moved_and_a_late_copy_undone() {
    let mut fleet = Fleet::start(Opts {
        clusters: 2,
        relocate_ms: 300,
        ..Opts::default()
    });
    fleet.customer("acme", 4);
    // A VM that starts only once the gate file exists (it does not in c0).
    let gate = fleet.dir.path().join("gate-open");
    let (st, v) = fleet.post(
        "/v1/templates",
        json!({"name": "gated", "ready_line": "ready",
               "command": format!("test -e {} || exec sleep 600; echo ready; exec sleep 600", gate.display())}),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = fleet.post(
        "/v1/requests",
        json!({"customer": "acme", "cluster": "c0", "relocatable": true,
               "action": define_vm("mobile", "gated")}),
    );
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let fwd = fleet.clusters[0]
        .downstream
        .wait(&format!("request {id} define_vm forwarded to agent"));
    let ix: usize = fwd
        .split("forwarded to agent")
        .nth(1)
        .and_then(|s| s.split('@').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    fleet.clusters[0].agents[ix].wait("starting VM 'mobile'");

    // Cluster c0 goes away (its manager and appliances die).
    fleet.clusters[0].downstream.kill();
    for a in &mut fleet.clusters[0].agents {
        a.kill();
    }
    fleet.upstream.wait("cluster c0 offline");
    std::fs::write(&gate, "").unwrap();
    fleet
        .upstream
        .wait(&format!("request {id} moved from cluster c0 to c1"));
    let v = fleet.result(&id);
    assert_eq!(status(&v), "succeeded", "{v}");
    assert_eq!(v["cluster"], "c1", "{v}");
    assert_eq!(v["moved_from"], "c0", "{v}");

    // c0 comes back with its record and applies its copy late: the upstream
    // undoes it there, and the VM counts once, in c1.
    let back = fleet.start_cluster(0);
    drop(std::mem::replace(&mut fleet.clusters[0], back));
    let undo = fleet
        .upstream
        .wait(&format!("applied moved request {id} after all: undone by "));
    let undo_id = undo.rsplit(' ').next().unwrap().to_owned();
    let v = fleet.result(&undo_id);
    assert_eq!(status(&v), "succeeded", "{v}");
    let c0_ns: Vec<String> = fleet.clusters[0]
        .prefixes
        .iter()
        .flat_map(|p| netns_with_prefix(p))
        .collect();
    assert!(c0_ns.is_empty(), "{c0_ns:?}");
    let c1_ns: Vec<String> = fleet.clusters[1]
        .prefixes
        .iter()
        .flat_map(|p| netns_with_prefix(p))
        .collect();
    assert_eq!(c1_ns.len(), 1, "{c1_ns:?}");
    let (_, acme) = fleet.get("/v1/customers/acme");
    assert_eq!(acme["used"]["vms"], 1, "{acme}");
}

#[test]
fn an_idle_agent_sends_no_state_and_a_change_sends_it_once() {
    let fleet = Fleet::start(Opts {
        health_ms: 20,
        ..Opts::default()
    });
    fleet.customer("acme", 4);
    let agent = &fleet.clusters[0].agents[0];
    let ds = &fleet.clusters[0].downstream;
    // Markers: a service request is refused by agent0 (the first agent)
    // without any change of state; its result reaches the downstream after
    // every stanza agent0 sent before it (XMPP keeps order per session).
    let marker = |n: usize| {
        let (id, _, _) = fleet.submit(
            "acme",
            None,
            json!({"op": "define_service", "name": format!("m{n}"), "vip": "198.18.0.1:80", "backends": []}),
        );
        let (ds_ix, _) = ds.wait_from(0, &format!("result {id} from agent0@"));
        let (agent_ix, _) = agent.wait_from(0, &format!("result {id}: Refused"));
        (ds_ix, agent_ix)
    };
    // The manager has seen agent0's presence (and asked its state) before
    // the first marker, so no answer to that question falls in the window.
    ds.wait(&format!("agent agent0@{} online", cluster_domain(0)));
    let (ds_a, agent_a) = marker(1);
    // Idle: 100 health checks of agent0 (2 s), synchronised on its own log.
    let mut ix = agent_a;
    for _ in 0..100 {
        ix = agent.wait_from(ix + 1, "health check").0;
    }
    let (ds_b, agent_b) = marker(2);
    assert!(agent_b > ix);
    assert_eq!(
        agent.count("state sent", Some(agent_b)),
        agent.count("state sent", Some(agent_a)),
        "agent0 sent state while idle"
    );
    assert_eq!(
        ds.count("state from agent agent0@", Some(ds_b)),
        ds.count("state from agent agent0@", Some(ds_a)),
        "the downstream received state from an idle agent"
    );
    assert_eq!(
        ds.count("state sent upstream", Some(ds_b)),
        ds.count("state sent upstream", Some(ds_a)),
        "the downstream sent state while idle"
    );

    // A change (a VM on agent0) sends exactly one new state from it.
    let (id, _, _) = fleet.submit("acme", None, define_vm("one", "sleeper"));
    assert_eq!(status(&fleet.result(&id)), "succeeded");
    let owner = fleet.clusters[0]
        .agents
        .iter()
        .find(|a| a.count(&format!("apply {id} "), None) == 1)
        .unwrap();
    let (done_ix, _) = owner.wait_from(0, &format!("result {id}: Succeeded"));
    // Ten more checks after the result: nothing further is sent.
    let mut ix = done_ix;
    for _ in 0..10 {
        ix = owner.wait_from(ix + 1, "health check").0;
    }
    let sent = owner.grep("state sent");
    assert_eq!(
        sent.iter()
            .filter(|l| l.contains("1 of 2 VM slots used"))
            .count(),
        1,
        "{sent:?}"
    );
    fleet
        .upstream
        .wait("state from cluster c0: 1 of 4 VM slots used, Ok");
}

#[test]
fn bad_rest_input_is_refused_with_a_reason_and_changes_nothing() {
    let fleet = Fleet::start(Opts::default());
    fleet.customer("acme", 4);
    let cases = [
        (
            json!({"customer": "acme", "action": define_vm("a", "sleeper"), "colour": "red"}).to_string(),
            "unknown field `colour`",
        ),
        (
            json!({"customer": 5, "action": define_vm("a", "sleeper")}).to_string(),
            "invalid type",
        ),
        (
            json!({"customer": "acme", "action": {"op": "define_vm", "name": "A B", "template": "sleeper"}}).to_string(),
            "VM name 'A B'",
        ),
        (
            json!({"customer": "acme", "action": {"op": "reboot", "name": "a"}}).to_string(),
            "unknown variant `reboot`",
        ),
        ("{not json".to_owned(), "invalid body"),
    ];
    for (body, want) in cases {
        let (st, v) = rest(&fleet.rest, "POST", "/v1/requests", Some(&body));
        assert_eq!(st, 400, "{body} -> {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{body} -> {v}");
    }
    let huge = format!("{{\"customer\":\"{}\"}}", "a".repeat(100_000));
    let (st, v) = rest(&fleet.rest, "POST", "/v1/requests", Some(&huge));
    assert_eq!(st, 413, "{v}");
    let (st, v) = rest(
        &fleet.rest,
        "POST",
        "/v1/customers",
        Some(r#"{"name":"x","quota":{"vms":-1,"policies":1}}"#),
    );
    assert_eq!(st, 400, "{v}");
    // Nothing recorded, nothing applied.
    assert_eq!(fleet.get("/v1/requests").1, json!([]));
    assert_eq!(fleet.get("/v1/customers").1.as_array().unwrap().len(), 1);
    assert!(fleet.vm_namespaces().is_empty());
    for a in &fleet.clusters[0].agents {
        assert_eq!(a.count("apply ", None), 0);
    }
}

/// Sends raw stanzas as `jid` and collects the fleet `error` replies.
fn xmpp_exchange(
    server: &str,
    jid: &str,
    password: &str,
    to: &str,
    payloads: &[String],
) -> Vec<String> {
    use futures_util::StreamExt;
    use tokio_xmpp::connect::DnsConfig;
    use tokio_xmpp::jid::Jid;
    use tokio_xmpp::minidom::Element;
    use tokio_xmpp::parsers::message::{Message, MessageType};
    use tokio_xmpp::parsers::presence::Presence;
    use tokio_xmpp::{Client, Event, Stanza};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = Client::new_plaintext(
            Jid::new(jid).unwrap(),
            password.to_owned(),
            DnsConfig::addr(server),
            tokio_xmpp::xmlstream::Timeouts::default(),
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, client.next()).await {
                Ok(Some(Event::Online { .. })) => break,
                Ok(Some(_)) => {}
                other => panic!("test client never came online: {other:?}"),
            }
        }
        client
            .send_stanza(Stanza::Presence(Presence::available()))
            .await
            .unwrap();
        // Messages are not acknowledged by XMPP: send, and send again
        // (refusals are idempotent) until every payload has its own reply.
        let mut replies: Vec<String> = Vec::new();
        while replies.len() < payloads.len() {
            for p in payloads {
                let el = Element::builder("fleet", stitch_fleet::proto::NS)
                    .append(p.clone())
                    .build();
                let msg = Message::new_with_type(MessageType::Normal, Some(Jid::new(to).unwrap()))
                    .with_payloads(vec![el]);
                client.send_stanza(Stanza::Message(msg)).await.unwrap();
            }
            let round = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
            while replies.len() < payloads.len() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no reply ({} of {}): {replies:?}",
                    replies.len(),
                    payloads.len()
                );
                match tokio::time::timeout_at(round.min(deadline), client.next()).await {
                    Ok(Some(Event::Stanza(Stanza::Message(m)))) => {
                        if let Some(p) = m.payloads.iter().find(|p| p.name() == "fleet") {
                            let text = p.text();
                            if text.contains("\"type\":\"error\"") && !replies.contains(&text) {
                                replies.push(text);
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("test client's stream ended"),
                    Err(_) => break,
                }
            }
        }
        let _ = client.send_end().await;
        replies
    })
}

#[test]
fn bad_xmpp_input_is_refused_with_a_reason_and_nothing_applied() {
    let fleet = Fleet::start(Opts::default());
    let dom = cluster_domain(0);
    let valid = json!({"type": "request", "id": "r900", "customer": "acme",
        "action": {"op": "define_vm", "name": "evil",
                   "template": {"name": "t", "command": "touch /tmp/owned"}}})
    .to_string();
    // A forged sender: a valid request from an account that is not the manager.
    let replies = xmpp_exchange(
        &fleet.down_xmpp.addr(),
        &format!("mallory@{dom}"),
        &pw("mallory"),
        &format!("agent0@{dom}"),
        std::slice::from_ref(&valid),
    );
    assert!(
        replies[0].contains("is not this agent's manager"),
        "{replies:?}"
    );

    // The manager's own account (another session), with bad payloads.
    let bad = vec![
        json!({"type": "state_query", "colour": "red"}).to_string(),
        json!({"type": "request", "id": 7, "customer": "acme", "action": {"op": "remove_vm", "name": "x"}}).to_string(),
        json!({"type": "request", "id": "r901", "customer": "acme", "action": {"op": "remove_vm", "name": "../etc"}}).to_string(),
        format!("{{\"type\":\"state_query\",\"pad\":\"{}\"}}", "x".repeat(20_000)),
    ];
    let replies = xmpp_exchange(
        &fleet.down_xmpp.addr(),
        &format!("manager@{dom}/test"),
        &pw("manager"),
        &format!("agent0@{dom}"),
        &bad,
    );
    let all = replies.join("\n");
    assert!(all.contains("unknown field `colour`"), "{all}");
    assert!(all.contains("invalid type"), "{all}");
    assert!(all.contains("VM name '../etc'"), "{all}");
    assert!(all.contains("exceeds the limit of 16384 bytes"), "{all}");

    // A forged sender towards the downstream manager and the upstream too.
    let replies = xmpp_exchange(
        &fleet.down_xmpp.addr(),
        &format!("mallory@{dom}"),
        &pw("mallory"),
        &format!("manager@{dom}"),
        &[json!({"type": "result", "id": "r1", "outcome": {"status": "succeeded", "detail": "x"}}).to_string()],
    );
    assert!(
        replies[0].contains("is not an agent of this cluster"),
        "{replies:?}"
    );
    let replies = xmpp_exchange(
        &fleet.up_xmpp.addr(),
        &format!("mallory@{UP_DOMAIN}"),
        &pw("mallory"),
        &format!("upstream@{UP_DOMAIN}"),
        &[json!({"type": "result", "id": "r1", "outcome": {"status": "succeeded", "detail": "x"}}).to_string()],
    );
    assert!(
        replies[0].contains("is not a registered cluster"),
        "{replies:?}"
    );
    let replies = xmpp_exchange(
        &fleet.up_xmpp.addr(),
        &format!("mallory@{UP_DOMAIN}"),
        &pw("mallory"),
        &format!("ds-c0@{UP_DOMAIN}"),
        std::slice::from_ref(&valid),
    );
    assert!(
        replies[0].contains("is not this cluster's upstream manager"),
        "{replies:?}"
    );

    // Nothing applied anywhere.
    for a in &fleet.clusters[0].agents {
        assert_eq!(a.count("apply ", None), 0, "{}", a.log());
    }
    assert!(fleet.vm_namespaces().is_empty());
    assert!(!PathBuf::from("/tmp/owned").exists());
    assert_eq!(fleet.get("/v1/requests").1, json!([]));
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.clusters {
                eprintln!("==== {}\n{}", c.downstream.name, c.downstream.log());
                for a in &c.agents {
                    let lines: Vec<String> = a
                        .log()
                        .lines()
                        .filter(|l| !l.contains("health check"))
                        .map(str::to_owned)
                        .collect();
                    eprintln!("==== {}\n{}", a.name, lines.join("\n"));
                }
            }
        }
    }
}

#[test]
fn the_simulation_provisions_every_request_and_an_idle_fleet_sends_nothing() {
    let dir = TempDir::new("sim");
    let report = stitch_fleet::sim::run(&stitch_fleet::sim::SimConfig {
        clusters: 2,
        agents: 3,
        slots: 4,
        requests: 12,
        idle: std::time::Duration::from_millis(500),
        dir: dir.path().to_owned(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.sessions, 1 + 2 * 2 + 6);
    assert_eq!(report.succeeded, 12, "{report:?}");
    assert_eq!(report.idle_messages, 0, "{report:?}");
    // Request and result on each hop, one agent state, one cluster state.
    assert!(
        (6.0..7.0).contains(&report.messages_per_request),
        "{report:?}"
    );
}

#[test]
fn the_openapi_description_names_every_route_and_field_the_server_has() {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("openapi.yaml");
    for path in [
        "/v1/health:",
        "/v1/customers:",
        "/v1/customers/{name}:",
        "/v1/customers/{name}/quota:",
        "/v1/clusters:",
        "/v1/clusters/{name}:",
        "/v1/templates:",
        "/v1/requests:",
        "/v1/requests/{id}:",
    ] {
        assert!(spec.contains(&format!("  {path}\n")), "{path} missing");
    }
    for field in [
        "relocatable:",
        "moved_from:",
        "ready_line:",
        "define_vm",
        "remove_vm",
        "define_policy",
        "remove_policy",
        "define_service",
        "mac_static",
        "port_security",
    ] {
        assert!(spec.contains(field), "{field} missing");
    }
}

#[cfg(feature = "tls")]
#[test]
fn with_tls_every_link_uses_starttls_and_provisioning_works() {
    // The servers require encryption, so a session without STARTTLS would
    // not get in; the certificates come from a CA only the fleet trusts.
    let fleet = Fleet::start(Opts {
        tls: true,
        ..Opts::default()
    });
    fleet.customer("acme", 4);
    let (id, _, _) = fleet.submit("acme", None, define_vm("secure", "sleeper"));
    let v = fleet.result(&id);
    assert_eq!(status(&v), "succeeded", "{v}");
    // The same server refuses a session without TLS.
    let dom = cluster_domain(0);
    let plain = Proc::spawn_env(
        "plain",
        &[
            "agent".to_owned(),
            "--jid".into(),
            format!("mallory@{dom}"),
            "--password".into(),
            pw("mallory"),
            "--server".into(),
            fleet.down_xmpp.addr(),
            "--manager".into(),
            format!("manager@{dom}"),
            "--vm-slots".into(),
            "1".into(),
            "--netns-prefix".into(),
            format!("p{}", tag()),
        ],
        &fleet.env,
    );
    // A second attempt means the first session never came up.
    plain.wait("(attempt 2)");
    assert_eq!(plain.count("link up", None), 0, "{}", plain.log());
}

#[cfg(not(feature = "tls"))]
#[test]
fn asking_for_tls_from_a_build_without_it_is_refused_with_the_reason() {
    let out = std::process::Command::new(bin())
        .args([
            "agent",
            "--jid",
            "a@b.test",
            "--password",
            "x",
            "--server",
            "127.0.0.1:1",
            "--manager",
            "m@b.test",
            "--vm-slots",
            "1",
            "--tls",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("built without the 'tls' feature"), "{err}");
}
