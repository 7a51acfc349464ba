//! The control socket of a running stitchd (two `net_ring` ports): every method answers;
//! malformed JSON, unknown methods, wrong types and impossible requests get JSON-RPC
//! errors that say what is wrong, leave the connection usable and change nothing;
//! several clients at once are served; `shutdown` stops the daemon cleanly.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use pmd_tests::{require_root, serial, unique_id, Stitchd};
use serde_json::{json, Value};

fn start() -> Stitchd {
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    Stitchd::start(
        &id,
        dir,
        &[
            "-l".into(),
            "0-1".into(),
            "--no-pci".into(),
            "--vdev=net_ring0".into(),
            "--vdev=net_ring1".into(),
        ],
        &[],
    )
}

fn err_code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error response: {v}"))
}

fn err_msg(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn every_method_answers_and_bad_input_gets_clear_errors_without_changing_state() {
    require_root();
    let _g = serial();
    let mut sd = start();
    let mode = std::fs::metadata(&sd.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");

    let v = sd.ok("version", None);
    assert_eq!(v["name"], "stitchd");
    assert!(v["dpdk"].as_str().unwrap().contains("22.11"), "{v}");
    let ports = sd.ok("ports.list", None);
    let names: Vec<&str> = ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["net_ring0", "net_ring1"]);
    assert_eq!(ports["ports"][0]["bridge"], 0);
    let ps = sd.ok("ports.stats", Some(json!({"port": 1})));
    assert_eq!(ps["ports"].as_array().unwrap().len(), 1);
    assert_eq!(ps["ports"][0]["rx_packets"], 0);
    let st = sd.ok("stats.get", None);
    let drops = st["workers"][0]["drops"].as_object().unwrap();
    for reason in [
        "truncated",
        "bad_src_mac",
        "port_security",
        "hairpin",
        "no_bridge",
        "tx_full",
    ] {
        assert!(
            drops.contains_key(reason),
            "stats.get lacks drop reason {reason}: {st}"
        );
    }

    // A valid static entry, listed, then removed.
    let r = sd.ok(
        "mac.add",
        Some(json!({"mac": "02:00:00:00:00:11", "port": 1})),
    );
    assert_eq!(r["outcome"], "inserted");
    let table = sd.ok("mac.list", None);
    assert_eq!(
        table["entries"],
        json!([{"bridge": 0, "mac": "02:00:00:00:00:11", "port": 1, "static": true, "age_secs": 0}])
    );

    // Bad input, one line after another on one connection: each gets its error and the
    // connection stays usable.
    let mut conn = UnixStream::connect(&sd.socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut lines = BufReader::new(conn.try_clone().unwrap());
    let mut ask = |req: &str| -> Value {
        conn.write_all(req.as_bytes()).unwrap();
        conn.write_all(b"\n").unwrap();
        let mut l = String::new();
        lines.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad response {l:?}: {e}"))
    };
    let r = ask("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":");
    assert_eq!(err_code(&r), -32700, "{r}");
    let r = ask("this is not json");
    assert_eq!(err_code(&r), -32700, "{r}");
    let r = ask(r#"{"jsonrpc":"2.0","id":2,"method":"mac.flood"}"#);
    assert_eq!(err_code(&r), -32601);
    assert!(err_msg(&r).contains("mac.flood"), "{r}");
    let r = ask(r#"{"jsonrpc":"1.0","id":3,"method":"version"}"#);
    assert_eq!(err_code(&r), -32600, "{r}");
    let r = ask(r#"{"jsonrpc":"2.0","id":4,"method":"mac.add","params":{"mac":5,"port":"x"}}"#);
    assert_eq!(err_code(&r), -32602, "{r}");
    let r = ask(
        r#"{"jsonrpc":"2.0","id":5,"method":"mac.add","params":{"mac":"02:00:00:00:00:zz","port":0}}"#,
    );
    assert_eq!(err_code(&r), -32602, "{r}");
    let r = ask(
        r#"{"jsonrpc":"2.0","id":6,"method":"mac.add","params":{"mac":"02:00:00:00:00:12","prot":0}}"#,
    );
    assert_eq!(err_code(&r), -32602, "{r}");
    assert!(err_msg(&r).contains("prot"), "{r}");
    let r = ask(
        r#"{"jsonrpc":"2.0","id":7,"method":"mac.add","params":{"mac":"02:00:00:00:00:12","port":9}}"#,
    );
    assert_eq!(err_code(&r), -32000, "{r}");
    assert!(err_msg(&r).contains("port 9 does not exist"), "{r}");
    let r = ask(
        r#"{"jsonrpc":"2.0","id":8,"method":"mac.add","params":{"mac":"01:00:5e:00:00:01","port":0}}"#,
    );
    assert_eq!(err_code(&r), -32000, "{r}");
    assert!(err_msg(&r).contains("unicast"), "{r}");
    let r =
        ask(r#"{"jsonrpc":"2.0","id":9,"method":"mac.del","params":{"mac":"02:00:00:00:00:77"}}"#);
    assert_eq!(err_code(&r), -32000, "{r}");
    let r = ask(
        r#"{"jsonrpc":"2.0","id":10,"method":"port.security.set","params":{"port":5,"allowed_macs":[]}}"#,
    );
    assert_eq!(err_code(&r), -32000, "{r}");
    let r = ask(
        r#"{"jsonrpc":"2.0","id":11,"method":"port.security.set","params":{"port":0,"allowed_macs":["ff:ff:ff:ff:ff:ff"]}}"#,
    );
    assert_eq!(err_code(&r), -32000, "{r}");
    let r = ask(r#"{"jsonrpc":"2.0","id":12,"method":"ports.stats","params":{"port":30}}"#);
    assert_eq!(err_code(&r), -32000, "{r}");
    let r = ask(r#"{"jsonrpc":"2.0","id":13,"method":"mac.list","params":{"bridge":3}}"#);
    assert_eq!(err_code(&r), -32000, "{r}");
    // ... and the same connection still works.
    let r = ask(r#"{"jsonrpc":"2.0","id":14,"method":"version"}"#);
    assert_eq!(r["id"], 14);
    assert_eq!(r["result"]["name"], "stitchd");

    // Nothing changed.
    assert_eq!(sd.ok("mac.list", None), table);
    assert!(
        sd.raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ports.list\"}\n")["result"] == ports
    );

    // Several clients at once.
    let socket = sd.socket.clone();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = stitch_control::Client::connect(&socket).unwrap();
                for k in 0..50 {
                    let method = if k % 2 == 0 {
                        "ports.list"
                    } else {
                        "stats.get"
                    };
                    c.call(method, None)
                        .unwrap_or_else(|e| panic!("client {i} call {k}: {e}"));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }

    let r = sd.ok("mac.del", Some(json!({"mac": "02:00:00:00:00:11"})));
    assert_eq!(r["removed"], 1);
    assert_eq!(sd.ok("mac.list", None)["entries"], json!([]));

    // Teardown 4B and 4D need the agent protocol, which this switch has not configured.
    for variant in ["4B", "4D"] {
        let e = sd
            .call(
                "stitch.prepare",
                Some(
                    json!({"leg_a": {"client": "198.18.0.1:40000", "shell": "198.18.0.2:7000"},
                            "leg_b": {"shell": "198.18.0.2:45000", "core": "198.18.0.3:8000"},
                            "teardown": variant}),
                ),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("agent protocol") && e.contains(variant), "{e}");
    }
    assert!(sd.ok("stitch.list", None)["stitches"]
        .as_array()
        .unwrap()
        .is_empty());

    sd.ok("shutdown", None);
    assert!(
        sd.wait_exit(20),
        "stitchd did not exit with status 0:\n{}",
        sd.log_text()
    );
    assert!(!sd.socket.exists(), "socket not removed at shutdown");
}
