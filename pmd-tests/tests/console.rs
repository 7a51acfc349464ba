//! The web console in a real browser: stitchd with two `net_tap` ports joined to two
//! network namespaces serves its console on 127.0.0.1; headless Chromium (Debian's
//! `chromium`) loads the page and the test reads the DOM back over the Chrome DevTools
//! Protocol: before traffic, then while one namespace pings the other, the port's live
//! numbers (packets, packets/s, cycles per packet, chart points) move; a stitch prepared
//! over the control socket shows in the stitches table and its `prepared` event in the
//! event list; a screenshot is kept in `<target>/test-artifacts/console.png`.
//!
//! A second test, no browser: event streams beyond the bound get 503 while `/metrics`
//! still answers, a freed place is taken again, and bad requests get their 4xx.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use pmd_tests::{pcap, require_cmd, require_root, serial, unique_id, Netns, Stitchd};
use serde_json::{json, Value};

/// Event streams the switch serves at once (`console::MAX_STREAMS`).
const MAX_STREAMS: usize = 8;

/// Sends `request` (whole, head and all) and reads the response to its end.
fn http_raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut resp = Vec::new();
    // A reset after the answer (the server closed with our input unread) keeps what came.
    if let Err(e) = s.read_to_end(&mut resp) {
        assert!(
            !resp.is_empty(),
            "no response to {:?}: {e}",
            String::from_utf8_lossy(request)
        );
    }
    String::from_utf8_lossy(&resp).into_owned()
}

/// `GET path`; returns (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let resp = http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    );
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// Headless Chromium in its own process group, killed (the group) when dropped.
struct Chromium {
    child: Child,
    profile: PathBuf,
}

impl Chromium {
    fn start(profile: PathBuf, url: &str) -> Chromium {
        require_cmd("chromium", "chromium (install chromium (scripts/setup.sh))");
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(profile.join("chromium.log")).unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1400,1600",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
                url,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Chromium forks renderers and helpers: one group, killed whole.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromium: {e}: install chromium (scripts/setup.sh)")
            });
        Chromium { child, profile }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default()
    }

    /// The DevTools port, once Chromium wrote `DevToolsActivePort` (its readiness).
    fn devtools_port(&mut self) -> u16 {
        let file = self.profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse().ok())
            {
                return port;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("chromium exited with {st}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no {} within 60 s:\n{}",
                file.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever of the group is left (helpers outliving the browser).
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.profile);
        } else {
            eprintln!(
                "chromium profile and log kept in {}",
                self.profile.display()
            );
        }
    }
}

/// A Chrome DevTools Protocol session with one page.
struct Cdp {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Cdp {
    /// Attaches to the page whose URL starts with `url`.
    fn attach(devtools_port: u16, url: &str) -> Cdp {
        let addr = format!("127.0.0.1:{devtools_port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            let (status, body) = get(&addr, "/json/list");
            assert!(status.contains("200"), "DevTools /json/list: {status}");
            let targets: Vec<Value> = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("DevTools /json/list is not JSON ({e}): {body}"));
            let page = targets.iter().find(|t| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
            });
            if let Some(ws) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                break ws.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no page for {url} in DevTools targets: {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect(&addr).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream)
            .unwrap_or_else(|e| panic!("DevTools websocket {ws_url}: {e}"));
        Cdp { ws, next_id: 1 }
    }

    /// Calls `method` and returns its `result` (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(tungstenite::Message::Text(msg.into()))
            .unwrap_or_else(|e| panic!("DevTools send {method}: {e}"));
        loop {
            let m = self
                .ws
                .read()
                .unwrap_or_else(|e| panic!("DevTools read ({method}): {e}"));
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).expect("DevTools message is JSON");
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page; its value (JSON-serialisable).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        assert!(
            r["exceptionDetails"].is_null(),
            "page script failed: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    fn screenshot(&mut self, to: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }
}

/// What the test reads from the page: the DOM, not the JSON behind it.
const READ_DOM: &str = r##"(() => {
  const cells = (tr, cls) => { const c = tr.querySelector("." + cls); return c ? c.textContent : null; };
  return {
    snapshots: Number(document.body.dataset.snapshots),
    status: document.getElementById("status").textContent,
    ports: [...document.querySelectorAll("#ports tbody tr")].map(tr => ({
      id: tr.dataset.key, rx_packets: Number(cells(tr, "rx-packets")), rx_pps: cells(tr, "rx-pps"),
      tx_packets: Number(cells(tr, "tx-packets")) })),
    cycles: [...document.querySelectorAll("#workers tbody tr")].map(tr => cells(tr, "cycles")),
    drops: [...document.querySelectorAll("#workers tbody tr")].map(tr => cells(tr, "drops")),
    macs: [...document.querySelectorAll("#macs tbody tr")].map(tr => tr.dataset.key),
    stitches: [...document.querySelectorAll("#stitches tbody tr")].map(tr => tr.children[1].textContent),
    events: [...document.querySelectorAll("#events li")].map(li => li.dataset.event),
    chart_points: Number(document.getElementById("chart-pps").dataset.points),
  };
})()"##;

/// Reads the page until `ok` holds or `secs` pass; the last read.
fn wait_dom(cdp: &mut Cdp, secs: u64, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = cdp.eval(READ_DOM);
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not show {what} within {secs} s; it shows:\n{v:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pps cell ("950", "1.2k") as a number.
fn pps(cell: &Value) -> f64 {
    let s = cell.as_str().unwrap_or("0");
    match s.strip_suffix('k') {
        Some(k) => k.parse::<f64>().unwrap_or(0.0) * 1e3,
        None => match s.strip_suffix('M') {
            Some(m) => m.parse::<f64>().unwrap_or(0.0) * 1e6,
            None => s.parse().unwrap_or(0.0),
        },
    }
}

/// Where test artifacts go: `<target>/test-artifacts` (the test binary is in
/// `<target>/<profile>/deps`).
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("target dir")
        .join("test-artifacts")
}

fn port0_rx(v: &Value) -> (f64, f64) {
    let p = &v["ports"][0];
    (p["rx_packets"].as_f64().unwrap_or(0.0), pps(&p["rx_pps"]))
}

#[test]
fn the_console_in_chromium_shows_live_numbers_move_as_traffic_flows() {
    require_root();
    require_cmd("ping", "iputils-ping");
    assert!(
        Command::new("chromium").arg("--version").output().is_ok(),
        "chromium not found: install chromium (scripts/setup.sh)"
    );
    let _g = serial();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let taps: Vec<String> = (0..2).map(|i| format!("c{id}{i}")).collect();
    let cfg = dir.join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[ports]]\ndevargs = \"net_tap0,iface={}\"\n[[ports]]\ndevargs = \"net_tap1,iface={}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            taps[0], taps[1]
        ),
    )
    .unwrap();
    let sd = Stitchd::start(
        &id,
        dir.clone(),
        &["-l".into(), "0-1".into(), "--no-pci".into()],
        &["--config".into(), cfg.display().to_string()],
    );
    let addr = sd.logged_addr("web console on");
    let ns: Vec<Netns> = (0..2).map(|i| Netns::new(&format!("sc{id}{i}"))).collect();
    let macs = ["02:00:00:00:0c:01", "02:00:00:00:0c:02"];
    for i in 0..2 {
        ns[i].attach(&taps[i], Some(macs[i]), &format!("198.18.0.{}/24", i + 1));
    }

    let started = Instant::now();
    let url = format!("http://{addr}/");
    let mut browser = Chromium::start(dir.join("chromium"), &url);
    let port = browser.devtools_port();
    let mut cdp = Cdp::attach(port, &url);
    // Ready: the first snapshot from the event stream filled the ports table.
    let before = wait_dom(&mut cdp, 60, "a first snapshot", |v| {
        v["snapshots"].as_u64() >= Some(1) && v["ports"].as_array().is_some_and(|p| p.len() == 2)
    });
    eprintln!(
        "console: page live {:.1} s after chromium started",
        started.elapsed().as_secs_f64()
    );
    let (rx0, pps0) = port0_rx(&before);

    // Traffic: ns0 pings ns1 (about 200 packets/s each way) until the page has seen it.
    let mut ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns[0].name,
            "ping",
            "-q",
            "-i",
            "0.005",
            "-s",
            "400",
            "-c",
            "100000",
            "198.18.0.2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ping");
    let during = wait_dom(&mut cdp, 30, "port 0 receiving the ping", |v| {
        let (rx, pps) = port0_rx(v);
        rx >= rx0 + 300.0
            && pps >= 100.0
            && v["cycles"][0].as_str().is_some_and(|c| c != "-")
            && v["chart_points"].as_u64() >= Some(2)
            && v["macs"]
                .as_array()
                .is_some_and(|m| macs.iter().all(|x| m.iter().any(|e| e == x)))
    });
    let (rx1, pps1) = port0_rx(&during);
    assert!(
        rx1 > rx0 && pps1 > pps0,
        "live numbers moved: {before:#} -> {during:#}"
    );
    assert!(during["ports"][1]["tx_packets"].as_f64() > before["ports"][1]["tx_packets"].as_f64());
    assert!(during["status"]
        .as_str()
        .is_some_and(|s| s.starts_with("live")));

    // A stitch and its event, pushed to the page as they happen.
    let prepared = sd.ok(
        "stitch.prepare",
        Some(
            json!({"leg_a": {"client": "198.18.0.1:40000", "shell": "198.18.0.2:7000"},
                    "leg_b": {"shell": "198.18.0.2:45000", "core": "198.18.0.3:8000"}}),
        ),
    );
    assert!(prepared["id"].is_u64(), "{prepared}");
    let shown = wait_dom(&mut cdp, 20, "the prepared stitch and its event", |v| {
        v["stitches"]
            .as_array()
            .is_some_and(|s| s.len() == 1 && s[0] == "watching")
            && v["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x == "prepared"))
    });
    let shot = artifacts().join("console.png");
    cdp.screenshot(&shot);
    eprintln!("console: screenshot in {}", shot.display());
    eprintln!(
        "console: before traffic port 0 rx {rx0} packets, {pps0} pkt/s; during {rx1} packets, \
         {pps1} pkt/s; cycles/pkt {}; drops {}",
        during["cycles"][0], shown["drops"][0]
    );
    let _ = ping.kill();
    let _ = ping.wait();
    drop(cdp);
    drop(browser);
    drop(ns);
}

/// Opens `/events` and reads until its first snapshot: the stream is up.
fn open_stream(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("event: snapshot\ndata: {") {
        let n = s.read(&mut buf).expect("read the event stream");
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Type: text/event-stream"), "{text}");
    s
}

#[test]
fn event_streams_are_bounded_metrics_stay_answerable_and_bad_requests_get_4xx() {
    require_root();
    let _g = serial();
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let empty = dir.join("empty.pcap");
    pcap::write(&empty, &[]);
    let cfg = dir.join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[ports]]\ndevargs = \"net_pcap0,rx_pcap={e},tx_pcap={o0}\"\n\
             [[ports]]\ndevargs = \"net_pcap1,rx_pcap={e},tx_pcap={o1}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            e = empty.display(),
            o0 = dir.join("out0.pcap").display(),
            o1 = dir.join("out1.pcap").display(),
        ),
    )
    .unwrap();
    let sd = Stitchd::start(
        &id,
        dir.clone(),
        &["-l".into(), "0-1".into()],
        &["--config".into(), cfg.display().to_string()],
    );
    let addr = sd.logged_addr("web console on");

    let mut streams: Vec<TcpStream> = (0..MAX_STREAMS).map(|_| open_stream(&addr)).collect();
    let (status, body) = get(&addr, "/events");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(body.contains("event streams are open"), "{body}");
    let (status, body) = get(&addr, "/metrics");
    assert_eq!(
        status, "HTTP/1.1 200 OK",
        "metrics with {MAX_STREAMS} streams open"
    );
    assert!(body.contains("stitchd_port_rx_packets_total"), "{body}");
    let (status, body) = get(&addr, "/api/snapshot");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let snap: Value = serde_json::from_str(&body).expect("snapshot is JSON");
    assert_eq!(snap["ports"].as_array().map(Vec::len), Some(2), "{snap}");
    assert!(snap["workers"][0]["drops"]["truncated"].is_u64(), "{snap}");
    let (status, page) = get(&addr, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(page.contains("<script src=\"/console.js\">"), "{page}");

    // A freed place is taken again (the server notices the close at its next write).
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).expect("status line");
        if &head == b"HTTP/1.1 200" {
            streams.push(s);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a closed stream's place was not freed within 15 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Bad requests: a clear 4xx each, and the server still answers afterwards.
    let status_of = |req: &[u8]| {
        http_raw(&addr, req)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let cases: [(&[u8], &str); 6] = [
        (b"GET /nothing HTTP/1.1\r\n\r\n", "404 Not Found"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "405 Method Not Allowed",
        ),
        (
            b"DELETE /metrics HTTP/1.1\r\n\r\n",
            "405 Method Not Allowed",
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            "400 Bad Request",
        ),
        (b"GET / HTTP/2.0\r\n\r\n", "505 HTTP Version Not Supported"),
        (b"GET /\r\n\r\n", "400 Bad Request"),
    ];
    for (req, want) in cases {
        assert_eq!(
            status_of(req),
            format!("HTTP/1.1 {want}"),
            "{}",
            String::from_utf8_lossy(req)
        );
    }
    let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
    assert_eq!(
        status_of(huge.as_bytes()),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // A client that sends nothing holds the acceptor for 5 s at most.
    let idle = TcpStream::connect(&addr).unwrap();
    let t = Instant::now();
    let (status, _) = get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "metrics took {:?} behind an idle client",
        t.elapsed()
    );
    drop(idle);
    drop(streams);
}
