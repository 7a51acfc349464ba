//! The load balancer with real Linux hosts: a client namespace and four backend
//! namespaces, each joined to stitchd by a `net_tap` port; every backend runs a real HTTP
//! server on two software ports, the client is curl. The switch answers ARP and ND for
//! the service addresses, schedules each new connection on its worker, and rewrites
//! (NAT, both directions, IPv4 and IPv6) or re-addresses (DR) the frames. Which
//! destination served each request is in its answer (`NAME:PORT`), so the distribution is
//! checked against a model of the scheduler computed here, independently.

use pmd_tests::lb::{curl_many, curl_many_from, HttpBackend};
use pmd_tests::{require_cmd, require_root, serial, sh as sh_ok, unique_id, Netns, Stitchd};
use serde_json::{json, Value};

const BACKENDS: usize = 4;
const SOFT_PORTS: [u16; 2] = [8080, 8081];
const VIP4: &str = "198.18.0.100";
const VIP6: &str = "2001:db8::100";
const VIP_DR: &str = "198.18.0.101";
/// The switch's own address, health checks come from it.
const HEALTH4: &str = "198.18.0.254";

struct Lab {
    sd: Stitchd,
    client: Netns,
    tap0: String,
    dir: std::path::PathBuf,
    backends: Vec<(Netns, HttpBackend)>,
}

fn backend_mac(i: usize) -> String {
    format!("02:00:00:00:02:{:02x}", i + 2)
}

fn lab() -> Lab {
    lab_with("", false)
}

/// The lab with more `[lb]` settings, and optionally a second uplink to the client (port
/// 5, the same MAC as port 0's interface, no address of its own: a team's second member).
fn lab_with(lb_extra: &str, second_uplink: bool) -> Lab {
    require_root();
    require_cmd("curl", "curl");
    require_cmd("python3", "python3");
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let mut taps: Vec<String> = (0..=BACKENDS).map(|i| format!("t{id}{i}")).collect();
    if second_uplink {
        taps.push(format!("t{id}u"));
    }
    let mut cfg = String::new();
    for (i, t) in taps.iter().enumerate() {
        cfg.push_str(&format!("[[ports]]\ndevargs = \"net_tap{i},iface={t}\"\n"));
    }
    cfg.push_str(&format!(
        "[lb]\nhealth_ipv4 = \"{HEALTH4}\"\nhealth_ipv6 = \"2001:db8::fe\"\n{lb_extra}\n"
    ));
    cfg.push_str("[metrics]\nlisten = \"127.0.0.1:0\"\nconsole = false\n");
    let cfg_path = dir.join("stitchd.toml");
    std::fs::write(&cfg_path, cfg).expect("write config");
    let sd = Stitchd::start(
        &id,
        dir.clone(),
        &["-l".into(), "0-1".into()],
        &["--config".into(), cfg_path.display().to_string()],
    );
    let client = Netns::new(&format!("st{id}c"));
    client.attach(&taps[0], Some("02:00:00:00:02:01"), "198.18.0.1/24");
    client.ip(&["addr", "add", "2001:db8::1/64", "dev", &taps[0], "nodad"]);
    if second_uplink {
        let u = &taps[BACKENDS + 1];
        sh_ok("ip", &["link", "set", u, "netns", &client.name]);
        client.ip(&["link", "set", u, "address", "02:00:00:00:02:01"]);
        client.ip(&["link", "set", u, "up"]);
        // Replies may come in on either member: no reverse-path filter.
        for k in ["all", "default", u.as_str(), taps[0].as_str()] {
            let out = client.exec(
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{k}.rp_filter=0")],
            );
            assert!(out.status.success(), "{out:?}");
        }
    }
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
        tap0: taps[0].clone(),
        dir,
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
    // And /metrics says the same.
    let body = scrape(&lab.sd.logged_addr("metrics on"));
    assert!(
        body.contains("stitchd_lb_connections_total{service=\"web4\"} 80"),
        "{body}"
    );
    for d in &dests {
        let (b, p) = d.split_once(':').unwrap();
        let line = format!(
            "stitchd_lb_dest_connections_total{{service=\"web4\",backend=\"{b}\",soft_port=\"{p}\"}} 10"
        );
        assert!(body.contains(&line), "{line} missing");
    }
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

/// `hash_32` of include/linux/hash.h (what ip_vs_dh and ip_vs_sh hash with).
fn hash_32(v: u32, bits: u32) -> u32 {
    v.wrapping_mul(0x61C8_8647) >> (32 - bits)
}

/// Least-connection family, as ip_vs_{lc,wlc,sed,nq}_schedule choose: the first usable
/// destination is the candidate, a later one replaces it only when strictly better
/// (`overhead(candidate) * weight(d) > overhead(d) * weight(candidate)`); nq takes the
/// first idle one outright.
fn least_model(kind: &str, w: &[u32], active: &[u64], inactive: &[u64]) -> usize {
    let overhead = |d: usize| match kind {
        "sed" | "nq" => active[d] + 1,
        _ => active[d] * 256 + inactive[d],
    };
    if kind == "nq" {
        if let Some(d) = (0..w.len()).find(|&d| w[d] > 0 && active[d] == 0) {
            return d;
        }
    }
    let mut least = (0..w.len())
        .find(|&d| w[d] > 0)
        .expect("a usable destination");
    for d in least + 1..w.len() {
        if w[d] == 0 {
            continue;
        }
        let better = if kind == "lc" {
            overhead(least) > overhead(d)
        } else {
            overhead(least) * u64::from(w[d]) > overhead(d) * u64::from(w[least])
        };
        if better {
            least = d;
        }
    }
    least
}

/// Every scheduler over the same pool (weights 4, 3, 2, 1 per backend, two software ports
/// each), connections one after another from one client (sh: from four), each answer
/// checked against a model of the scheduler computed here: exact for the deterministic
/// ones, shares for maglev and queue.
#[test]
fn every_scheduler_distributes_as_its_model_says() {
    let _g = serial();
    let lab = lab();
    let sources = ["198.18.0.2", "198.18.0.3", "198.18.0.4", "198.18.0.5"];
    for s in sources {
        lab.client
            .ip(&["addr", "add", &format!("{s}/24"), "dev", &lab.tap0]);
    }
    let dests = nat_dests();
    let bw = [4u32, 3, 2, 1];
    let w: Vec<u32> = (0..BACKENDS).flat_map(|b| [bw[b], bw[b]]).collect();
    let url = format!("http://{VIP4}/");
    let index = |a: &str| {
        dests
            .iter()
            .position(|d| d == a)
            .unwrap_or_else(|| panic!("answer {a}"))
    };
    for sched in [
        "rr", "wrr", "lc", "wlc", "sed", "nq", "lblc", "lblcr", "dh", "sh", "maglev", "queue",
    ] {
        lab.sd.ok(
            "lb.service.add",
            Some(service(sched, VIP4, 80, sched, "nat", bw)),
        );
        let n = 16;
        match sched {
            "rr" | "wrr" | "lc" | "wlc" | "sed" | "nq" | "lblc" | "lblcr" | "dh" => {
                let got: Vec<usize> = curl_many(&lab.client, &url, n)
                    .iter()
                    .map(|a| index(a))
                    .collect();
                let want: Vec<usize> = match sched {
                    "rr" => (0..n).map(|k| k % 8).collect(),
                    "wrr" => wrr_model(&w, n),
                    // Locality: every connection is for the same service address, so
                    // after the first choice (wlc-like, all idle: the first) it sticks.
                    "lblc" | "lblcr" => vec![0; n],
                    // Keyed by the destination address: the service's, always.
                    "dh" => {
                        let vip: std::net::Ipv4Addr = VIP4.parse().unwrap();
                        vec![hash_32(u32::from(vip), 8) as usize % 8; n]
                    }
                    _ => {
                        // Each connection is closed (inactive, kept 600 s) before the
                        // next one is scheduled.
                        let mut inactive = [0u64; 8];
                        (0..n)
                            .map(|_| {
                                let d = least_model(sched, &w, &[0; 8], &inactive);
                                inactive[d] += 1;
                                d
                            })
                            .collect()
                    }
                };
                assert_eq!(got, want, "{sched}: destinations chosen, in order");
            }
            "sh" => {
                // ip_vs_sh: 256 buckets dealt to the destinations in list order, each
                // repeated by its weight; the bucket is hash_32 of the source address.
                let dealt: Vec<usize> = (0..8)
                    .flat_map(|d| std::iter::repeat_n(d, w[d] as usize))
                    .collect();
                for src in sources {
                    let ip: std::net::Ipv4Addr = src.parse().unwrap();
                    let want = dealt[hash_32(u32::from(ip), 8) as usize % dealt.len()];
                    let got = curl_many_from(&lab.client, &url, 4, Some(src));
                    assert!(
                        got.iter().all(|a| index(a) == want),
                        "sh from {src}: {got:?}, want {}",
                        dests[want]
                    );
                }
            }
            "maglev" => {
                // Random client ports: every destination gets a share, weighted.
                let got = curl_many(&lab.client, &url, 200);
                let mut per = [0usize; 8];
                for a in &got {
                    per[index(a)] += 1;
                }
                assert!(
                    per.iter().all(|&c| c > 0),
                    "maglev: every destination used: {per:?}"
                );
                assert!(
                    per[0] + per[1] > per[6] + per[7],
                    "maglev honours weights: {per:?}"
                );
            }
            "queue" => {
                let got = curl_many(&lab.client, &url, 32);
                let mut per = [0usize; 8];
                for a in &got {
                    per[index(a)] += 1;
                }
                // One connection at a time: the expected wait is the measured response
                // time over the weight, so the heavy destinations (4 and 3, the first
                // four) take nearly all of them, and no light one is starved of a first
                // try for long.
                let heavy: usize = per[..4].iter().sum();
                assert!(heavy >= 24, "queue prefers the heavy destinations: {per:?}");
            }
            _ => unreachable!(),
        }
        lab.sd.ok("lb.service.del", Some(json!({"name": sched})));
    }
    drop(lab);
}

/// `queue`: a backend that answers slowly loses its share within seconds, and wins it
/// back once it answers fast again.
#[test]
fn queue_moves_connections_away_from_a_slow_backend_and_back() {
    let _g = serial();
    let lab = lab();
    lab.sd.ok(
        "lb.service.add",
        Some(service("q", VIP4, 80, "queue", "nat", [1; 4])),
    );
    let url = format!("http://{VIP4}/");
    let share_of_b1 = |lab: &Lab| {
        // Eight clients at once, 12 requests each.
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ns = lab.client.name.clone();
                let url = url.clone();
                std::thread::spawn(move || {
                    let out = std::process::Command::new("ip")
                        .args([
                            "netns",
                            "exec",
                            &ns,
                            "curl",
                            "-sS",
                            "--fail",
                            "--max-time",
                            "60",
                            "-H",
                            "Connection: close",
                        ])
                        .args(std::iter::repeat_n(url.as_str(), 12))
                        .output()
                        .expect("curl");
                    assert!(out.status.success(), "{out:?}");
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect();
        assert_eq!(all.len(), 96);
        all.iter().filter(|a| a.starts_with("b1:")).count() as f64 / all.len() as f64
    };
    let fair = share_of_b1(&lab);
    lab.backends[0].1.set_delay(300);
    // Warm-up: the slow answers are measured (one request per destination suffices).
    share_of_b1(&lab);
    let slow = share_of_b1(&lab);
    lab.backends[0].1.set_delay(0);
    // Back to fast: its measured time drifts back while it is idle, then is measured
    // again; wait on the switch's own figure, not on a clock.
    lab.sd
        .wait_until(20, "b1's response time to come back down", |sd| {
            let st = sd.ok("lb.stats", Some(json!({"service": "q"})));
            st["services"][0]["dests"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["backend"] == "b1")
                .all(|d| d["resp_ewma_us"].as_u64().unwrap_or(0) < 5_000)
        });
    let restored = share_of_b1(&lab);
    eprintln!("b1 share: fair {fair:.2}, slowed {slow:.2}, restored {restored:.2}");
    assert!(
        slow < 0.10,
        "a slow backend keeps its share: {slow:.2} (fair {fair:.2})"
    );
    assert!(
        restored > 0.15,
        "a recovered backend does not win its share back: {restored:.2}"
    );
    drop(lab);
}

fn dest_state(sd: &Stitchd, svc: &str, backend: &str) -> Vec<Value> {
    let st = sd.ok("lb.stats", Some(json!({"service": svc})));
    st["services"][0]["dests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["backend"] == backend)
        .cloned()
        .collect()
}

/// Active checks from the switch's own address: a killed backend is taken out after
/// `fall` failed checks while a connection to another one goes on undisturbed; restarted,
/// it comes back after `rise`; a backend answering HTTP 503 fails the HTTP check.
#[test]
fn health_checks_take_a_dead_backend_out_and_bring_it_back() {
    let _g = serial();
    let mut lab = lab();
    let mut svc = service("h", VIP4, 80, "rr", "nat", [1; 4]);
    svc["health"] =
        json!({"kind": "http", "interval_ms": 200, "timeout_ms": 300, "rise": 2, "fall": 2});
    lab.sd.ok("lb.service.add", Some(svc));
    let events = lab.sd.events();
    // A slow request to b1 (the first destination of a fresh rr service) is under way.
    lab.backends[0].1.set_delay(3000);
    let (ns, url) = (lab.client.name.clone(), format!("http://{VIP4}/"));
    let long = std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "curl",
                "-sS",
                "--fail",
                "--max-time",
                "30",
                &url,
            ])
            .output()
            .expect("curl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    });
    lab.sd.wait_until(10, "the slow request to reach b1", |sd| {
        dest_state(sd, "h", "b1").iter().any(|d| d["inflight"] == 1)
    });
    lab.backends[0].1.set_delay(0);

    lab.backends[1].1.stop();
    lab.sd.wait_until(10, "b2 to be taken out", |sd| {
        dest_state(sd, "h", "b2").iter().all(|d| d["up"] == false)
    });
    let down = dest_state(&lab.sd, "h", "b2");
    assert!(
        down.iter()
            .all(|d| d["reason"].as_str().unwrap_or("").contains("refused")
                || d["reason"].as_str().unwrap_or("").contains("in time")),
        "{down:?}"
    );
    let got = curl_many(&lab.client, &format!("http://{VIP4}/"), 24);
    assert!(
        got.iter().all(|a| !a.starts_with("b2:")),
        "a down backend got connections: {got:?}"
    );
    let (ok, body) = long.join().expect("long request");
    assert!(
        ok && body == "b1:8080",
        "the connection in flight to b1 was disturbed: {ok} {body:?}"
    );
    let ev = events
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("an lb_dest_down event");
    assert_eq!(ev["event"], "lb_dest_down", "{ev}");

    let (ns1, dir) = (&lab.backends[1].0, lab.dir.clone());
    let again = HttpBackend::start(ns1, &dir, "b2", &SOFT_PORTS);
    lab.backends[1].1 = again;
    lab.sd.wait_until(10, "b2 to come back", |sd| {
        dest_state(sd, "h", "b2").iter().all(|d| d["up"] == true)
    });
    let got = curl_many(&lab.client, &format!("http://{VIP4}/"), 16);
    assert!(
        got.iter().any(|a| a.starts_with("b2:")),
        "b2 is back but got nothing: {got:?}"
    );

    lab.backends[2].1.set_status(503);
    lab.sd
        .wait_until(10, "b3 (HTTP 503) to be taken out", |sd| {
            dest_state(sd, "h", "b3").iter().all(|d| d["up"] == false)
        });
    let down = dest_state(&lab.sd, "h", "b3");
    assert!(
        down[0]["reason"].as_str().unwrap().contains("503"),
        "{down:?}"
    );
    lab.backends[2].1.set_status(200);
    drop(lab);
}

/// Failover order and launch on demand (seed 003, figure 6): rank 0 serves while it can;
/// when it is down the next rank takes over; when every backend is down the launch hook
/// runs and new connections are held until the launched backend passes its checks, then
/// released to it (no client refused or reset); and nothing is held past `hold_ms`.
#[test]
fn failover_order_then_launch_on_demand_holds_connections_until_the_new_backend_is_up() {
    let _g = serial();
    let mut lab = lab();
    let launched = lab.dir.join("launched");
    let mut svc = service("f", VIP4, 80, "rr", "nat", [1; 4]);
    svc["health"] =
        json!({"kind": "tcp", "interval_ms": 100, "timeout_ms": 200, "rise": 2, "fall": 2});
    svc["launch"] = json!({
        "command": ["/bin/sh", "-c", format!("echo \"$1: $2\" >> {}", launched.display()), "hook"],
        "hold_ms": 8000,
    });
    // b1 and b2 first (rank 0), b3 next (rank 1); b4 is not in the pool yet.
    let backends = svc["backends"].as_array_mut().unwrap();
    backends.truncate(3);
    backends[2]["rank"] = json!(1);
    lab.sd.ok("lb.service.add", Some(svc));
    // b4's server is not running until it is "launched".
    lab.backends[3].1.stop();
    let events = lab.sd.events();
    let url = format!("http://{VIP4}/");
    let stats =
        |sd: &Stitchd| sd.ok("lb.stats", Some(json!({"service": "f"})))["services"][0].clone();

    let got = curl_many(&lab.client, &url, 8);
    assert!(
        got.iter()
            .all(|a| a.starts_with("b1:") || a.starts_with("b2:")),
        "rank 0 first: {got:?}"
    );
    assert_eq!(stats(&lab.sd)["ranks_in_use"], json!([0]));

    lab.backends[0].1.stop();
    lab.backends[1].1.stop();
    lab.sd.wait_until(10, "rank 1 to take over", |sd| {
        stats(sd)["ranks_in_use"] == json!([0, 1])
    });
    let got = curl_many(&lab.client, &url, 8);
    assert!(
        got.iter().all(|a| a.starts_with("b3:")),
        "rank 1 after rank 0 failed: {got:?}"
    );
    let ev = loop {
        let e = events
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("events");
        if e["event"] == "lb_failover" {
            break e;
        }
    };
    assert_eq!(ev["ranks_in_use"], json!([0, 1]), "{ev}");

    lab.backends[2].1.stop();
    lab.sd.wait_until(10, "every backend down", |sd| {
        stats(sd)["dests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["up"] == false)
    });
    // Clients connect while nothing can take them: held, and the hook runs.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (ns, url) = (lab.client.name.clone(), url.clone());
            std::thread::spawn(move || {
                std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns,
                        "curl",
                        "-sS",
                        "--fail",
                        "--connect-timeout",
                        "20",
                        "--max-time",
                        "30",
                        &url,
                    ])
                    .output()
                    .expect("curl")
            })
        })
        .collect();
    lab.sd
        .wait_until(10, "the launch hook to run", |_| launched.exists());
    let line = std::fs::read_to_string(&launched).unwrap();
    assert!(
        line.starts_with("f: no backend can take"),
        "hook arguments: {line:?}"
    );
    lab.sd.wait_until(10, "the connections to be held", |sd| {
        stats(sd)["held_now"].as_u64() >= Some(4)
    });
    // The "launched" backend: its server starts, then it joins the pool; it gets
    // connections only once its checks pass.
    let (ns4, dir) = (&lab.backends[3].0, lab.dir.clone());
    lab.backends[3].1 = HttpBackend::start(ns4, &dir, "b4", &SOFT_PORTS);
    lab.sd.ok(
        "lb.backend.add",
        Some(
            json!({"service": "f", "backend": {"name": "b4", "port": 4, "mac": backend_mac(3),
            "ip": "198.18.0.14", "soft_ports": SOFT_PORTS, "rank": 2}}),
        ),
    );
    for c in clients {
        let out = c.join().expect("client");
        assert!(out.status.success(), "a held connection failed: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("b4:"),
            "{out:?}"
        );
    }
    let st = stats(&lab.sd);
    assert!(st["released"].as_u64() >= Some(4), "{st}");
    assert_eq!(st["launches"], 1, "{st}");

    // Nothing is held past the bound: with no backend at all, a client's SYNs are held
    // hold_ms at most, then dropped and counted.
    lab.sd.ok(
        "lb.backend.del",
        Some(json!({"service": "f", "name": "b4"})),
    );
    let out = lab
        .client
        .exec("curl", &["-sS", "--connect-timeout", "2", &url]);
    assert!(!out.status.success(), "connected with no backend: {out:?}");
    lab.sd
        .wait_until(15, "held connections to be dropped at hold_ms", |sd| {
            let st = stats(sd);
            st["held_now"] == 0 && st["held_dropped"].as_u64() >= Some(1)
        });
    drop(lab);
}

/// `GET /metrics` from stitchd's metrics listener.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("response");
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
        "{out}"
    );
    out
}

/// Egress through an uplink team: the client's world is reached through ports 0 and 5;
/// each NAT connection's replies leave through the member its L4 hash picks, so both
/// members carry replies, and every request is answered.
#[test]
fn nat_replies_leave_through_the_uplink_team_spread_by_connection() {
    let _g = serial();
    let lab = lab_with("uplinks = [0, 5]\nuplink_select = \"hash\"", true);
    lab.sd.ok(
        "lb.service.add",
        Some(service("web", VIP4, 80, "rr", "nat", [1; 4])),
    );
    let tx = |sd: &Stitchd, port: u64| {
        sd.ok("ports.stats", Some(json!({"port": port})))["ports"][0]["tx_packets"]
            .as_u64()
            .unwrap()
    };
    let (a0, b0) = (tx(&lab.sd, 0), tx(&lab.sd, 5));
    let got = curl_many(&lab.client, &format!("http://{VIP4}/"), 40);
    assert_eq!(got.len(), 40, "every request answered through the team");
    let (a, b) = (tx(&lab.sd, 0) - a0, tx(&lab.sd, 5) - b0);
    // About half the connections each (40 connections, each 4-6 reply frames).
    assert!(
        a > 40 && b > 40,
        "replies per member: port 0 {a}, port 5 {b}"
    );
}
