//! The load balancer with real Linux hosts: a client namespace and four backend
//! namespaces, each joined to stitchd by a `net_tap` port; every backend runs a real HTTP
//! server on two software ports, the client is curl. The switch answers ARP and ND for
//! the service addresses, schedules each new connection on its worker, and rewrites
//! (NAT, both directions, IPv4 and IPv6) or re-addresses (DR) the frames. Which
//! destination served each request is in its answer (`NAME:PORT`), so the distribution is
//! checked against a model of the scheduler computed here, independently.

use std::collections::BTreeMap;

use pmd_tests::lb::{curl_many, HttpBackend};
use pmd_tests::{require_cmd, require_root, serial, unique_id, Netns, Stitchd};
use serde_json::{json, Value};

const BACKENDS: usize = 4;
const SOFT_PORTS: [u16; 2] = [8080, 8081];
const VIP4: &str = "198.18.0.100";
const VIP6: &str = "2001:db8::100";
const VIP_DR: &str = "198.18.0.101";

struct Lab {
    sd: Stitchd,
    client: Netns,
    backends: Vec<(Netns, HttpBackend)>,
}

fn backend_mac(i: usize) -> String {
    format!("02:00:00:00:02:{:02x}", i + 2)
}

fn lab() -> Lab {
    require_root();
    require_cmd("curl", "curl");
    require_cmd("python3", "python3");
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let taps: Vec<String> = (0..=BACKENDS).map(|i| format!("t{id}{i}")).collect();
    let mut eal = vec!["-l".to_string(), "0-1".into(), "--no-pci".into()];
    for (i, t) in taps.iter().enumerate() {
        eal.push(format!("--vdev=net_tap{i},iface={t}"));
    }
    let sd = Stitchd::start(&id, dir.clone(), &eal, &[]);
    let client = Netns::new(&format!("st{id}c"));
    client.attach(&taps[0], Some("02:00:00:00:02:01"), "198.18.0.1/24");
    client.ip(&["addr", "add", "2001:db8::1/64", "dev", &taps[0], "nodad"]);
    let mut backends = Vec::new();
    for i in 0..BACKENDS {
        let ns = Netns::new(&format!("st{id}b{i}"));
        let tap = &taps[i + 1];
        ns.attach(
            tap,
            Some(&backend_mac(i)),
            &format!("198.18.0.{}/24", 11 + i),
        );
        ns.ip(&[
            "addr",
            "add",
            &format!("2001:db8::{}/64", 11 + i),
            "dev",
            tap,
            "nodad",
        ]);
        // Direct routing: the backend owns the service address on its loopback and
        // neither answers ARP for it nor uses it as an ARP source (as LVS-DR wants).
        ns.ip(&["addr", "add", &format!("{VIP_DR}/32"), "dev", "lo"]);
        for (k, v) in [("arp_ignore", "1"), ("arp_announce", "2")] {
            let out = ns.exec("sysctl", &["-qw", &format!("net.ipv4.conf.all.{k}={v}")]);
            assert!(out.status.success(), "sysctl {k}: {:?}", out);
        }
        let srv = HttpBackend::start(&ns, &dir, &format!("b{}", i + 1), &SOFT_PORTS);
        backends.push((ns, srv));
    }
    Lab {
        sd,
        client,
        backends,
    }
}

/// A service over the four backends, each with both software ports (NAT) or the service
/// port (DR), with the given weights.
fn service(name: &str, vip: &str, port: u16, sched: &str, mode: &str, weights: [u32; 4]) -> Value {
    let v6 = vip.contains(':');
    let backends: Vec<Value> = (0..BACKENDS)
        .map(|i| {
            let ip = if v6 {
                format!("2001:db8::{}", 11 + i)
            } else {
                format!("198.18.0.{}", 11 + i)
            };
            let mut b = json!({
                "name": format!("b{}", i + 1), "port": i + 1, "mac": backend_mac(i), "ip": ip,
                "weight": weights[i],
            });
            if mode == "nat" {
                b["soft_ports"] = json!(SOFT_PORTS);
            }
            b
        })
        .collect();
    json!({
        "name": name, "vip": vip, "port": port, "scheduler": sched, "mode": mode,
        // Closed connections stay counted (as inactive) for the whole test, so the
        // least-connection models below know every count.
        "linger_secs": 600,
        "backends": backends,
    })
}

/// The destinations in the order the switch numbers them (backend by backend, software
/// port by software port): what each answer names.
fn nat_dests() -> Vec<String> {
    (1..=BACKENDS)
        .flat_map(|b| SOFT_PORTS.iter().map(move |p| format!("b{b}:{p}")))
        .collect()
}

fn counts(answers: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.clone()).or_default() += 1;
    }
    m
}

/// IPVS's weighted round robin (ip_vs_wrr_schedule: current weight from the largest down
/// by the weights' gcd, a destination is taken when its weight reaches it).
fn wrr_model(w: &[u32], n: usize) -> Vec<usize> {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let di = w.iter().copied().filter(|&x| x > 0).fold(0, gcd).max(1);
    let mw = w.iter().copied().max().unwrap_or(0) - (di - 1);
    let mut cw = mw as i64;
    let mut pos: isize = -1;
    let mut out = Vec::new();
    while out.len() < n {
        pos += 1;
        if pos as usize == w.len() {
            pos = -1;
            cw -= i64::from(di);
            if cw <= 0 {
                cw = i64::from(mw);
            }
            continue;
        }
        if i64::from(w[pos as usize]) >= cw {
            out.push(pos as usize);
        }
    }
    out
}

#[test]
fn nat_balances_ipv4_round_robin_and_ipv6_weighted_round_robin_over_backends_and_software_ports() {
    let _g = serial();
    let lab = lab();
    let dests = nat_dests();

    lab.sd.ok(
        "lb.service.add",
        Some(service("web4", VIP4, 80, "rr", "nat", [1, 1, 1, 1])),
    );
    let answers = curl_many(&lab.client, &format!("http://{VIP4}/"), 80);
    let want: Vec<String> = (0..80).map(|k| dests[k % dests.len()].clone()).collect();
    assert_eq!(
        answers, want,
        "rr: the k-th connection goes to destination k mod 8"
    );

    let weights = [4, 3, 2, 1];
    lab.sd.ok(
        "lb.service.add",
        Some(service("web6", VIP6, 80, "wrr", "nat", weights)),
    );
    let answers = curl_many(&lab.client, &format!("http://[{VIP6}]/"), 100);
    let per_dest: Vec<u32> = (0..BACKENDS)
        .flat_map(|b| SOFT_PORTS.iter().map(move |_| weights[b]))
        .collect();
    let want: Vec<String> = wrr_model(&per_dest, 100)
        .into_iter()
        .map(|d| dests[d].clone())
        .collect();
    assert_eq!(answers, want, "wrr over weights {per_dest:?}");

    // The switch's own account agrees with what the clients saw.
    let st = lab.sd.ok("lb.stats", Some(json!({"service": "web4"})));
    let s = &st["services"][0];
    assert_eq!(s["conns"], 80, "{st}");
    for d in s["dests"].as_array().unwrap() {
        assert_eq!(d["conns"], 10, "{d}");
        assert!(
            d["packets_out"].as_u64().unwrap() > 0,
            "replies rewritten back: {d}"
        );
    }
    assert!(lab.sd.worker_sum("balanced") > 0);
    assert_eq!(
        lab.sd.drops("lb_no_dest") + lab.sd.drops("lb_table_full"),
        0
    );
    drop(lab);
}

#[test]
fn direct_routing_sends_only_the_client_side_through_the_switch() {
    let _g = serial();
    let lab = lab();
    lab.sd.ok(
        "lb.service.add",
        Some(service("dr", VIP_DR, 8080, "rr", "dr", [1, 1, 1, 1])),
    );
    let answers = curl_many(&lab.client, &format!("http://{VIP_DR}:8080/"), 40);
    let want: Vec<String> = (0..40).map(|k| format!("b{}:8080", k % 4 + 1)).collect();
    assert_eq!(answers, want);
    let st = lab.sd.ok("lb.stats", None);
    for d in st["services"][0]["dests"].as_array().unwrap() {
        assert_eq!(d["conns"], 10, "{d}");
        assert!(d["packets_in"].as_u64().unwrap() > 0, "{d}");
        // The backend answers the client itself: nothing comes back through the balancer.
        assert_eq!(d["packets_out"], 0, "{d}");
    }
    drop(lab);
}

#[test]
fn bad_lb_requests_name_the_problem_and_change_nothing() {
    let _g = serial();
    let lab = lab();
    let sd = &lab.sd;
    sd.ok(
        "lb.service.add",
        Some(service("web", VIP4, 80, "rr", "nat", [1; 4])),
    );
    let before = sd.ok("lb.service.list", None);
    let err = |method: &str, params: Value| -> String {
        match sd.call(method, Some(params)) {
            Ok(v) => panic!("{method} accepted: {v}"),
            Err(e) => e.to_string(),
        }
    };
    let mut dup = service("web2", VIP4, 80, "rr", "nat", [1; 4]);
    assert!(err("lb.service.add", dup.clone()).contains("overlap"));
    dup["port"] = json!(81);
    dup["backends"][0]["port"] = json!(9);
    assert!(err("lb.service.add", dup.clone()).contains("does not exist"));
    dup["backends"][0]["port"] = json!(1);
    dup["scheduler"] = json!("fastest");
    assert!(err("lb.service.add", dup.clone()).contains("scheduler"));
    dup["scheduler"] = json!("rr");
    dup["colour"] = json!("blue");
    assert!(err("lb.service.add", dup.clone()).contains("colour"));
    assert!(err(
        "lb.service.add",
        service("web", VIP6, 80, "rr", "nat", [1; 4])
    )
    .contains("exists"));
    assert!(err("lb.service.del", json!({"name": 5})).contains("name"));
    assert!(err("lb.service.get", json!({"name": "nope"})).contains("no service 'nope'"));
    assert!(err(
        "lb.backend.add",
        json!({"service": "web", "backend": {"name": "b1", "port": 1, "mac": "02:00:00:00:09:01", "ip": "198.18.0.50"}})
    )
    .contains("exists"));
    assert!(err(
        "lb.backend.add",
        json!({"service": "web", "backend": {"name": "b9", "port": 1, "mac": "02:00:00:00:09:01", "ip": "2001:db8::9"}})
    )
    .contains("family"));
    assert!(err(
        "lb.backend.set",
        json!({"service": "web", "name": "b1", "weight": -1})
    )
    .contains("weight"));
    assert!(err(
        "lb.backend.set",
        json!({"service": "web", "name": "b1", "state": "sleepy"})
    )
    .contains("state"));
    assert!(
        err("lb.backend.del", json!({"service": "web", "name": "b7"})).contains("no backend 'b7'")
    );
    assert!(err("lb.stats", json!({"service": "nope"})).contains("no service"));
    assert_eq!(
        sd.ok("lb.service.list", None),
        before,
        "refused requests changed nothing"
    );
    // And the service still works.
    assert_eq!(
        curl_many(&lab.client, &format!("http://{VIP4}/"), 2),
        vec!["b1:8080", "b1:8081"]
    );
    drop(lab);
}
