//! Runs the compiled `stitchctl` against a test server: what operators see,
//! what scripts parse, and how failures are reported.

mod common;

use std::process::{Command, Output};

use common::{TempDir, TestServer};
use serde_json::Value;
use stitch_control::protocol::{MacAddParams, MacDelParams, PortSecurityParams};
use stitch_control::{Mac, Method};

fn stitchctl(srv_socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stitchctl"))
        .arg("--socket")
        .arg(srv_socket)
        .args(args)
        .env_remove("STITCHD_SOCKET")
        .output()
        .expect("run stitchctl")
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stitchctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

#[test]
fn tables_show_the_daemons_values() {
    let srv = TestServer::start("ctl-tables");
    let s = &srv.socket;

    let out = stdout_ok(&stitchctl(s, &["version"]));
    assert_eq!(out, "stitchd 0.1.0 (DPDK 22.11.4)\n");

    let out = stdout_ok(&stitchctl(s, &["ports.list"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("NAME") && lines[0].contains("LINK"),
        "{out}"
    );
    assert!(
        lines[1].contains("net_tap0") && lines[1].contains("02:00:00:00:00:10"),
        "{out}"
    );
    assert!(
        lines[1].contains("up") && lines[1].contains("10G") && lines[1].contains("full"),
        "{out}"
    );
    assert!(
        lines[2].contains("net_tap1") && lines[2].contains("down"),
        "{out}"
    );

    let out = stdout_ok(&stitchctl(s, &["ports.stats", "--port", "1"]));
    assert!(
        out.contains("123456") && out.contains("654321") && out.contains("QUEUE"),
        "{out}"
    );

    let out = stdout_ok(&stitchctl(s, &["stats.get"]));
    assert!(out.contains("bad_src_mac=7 port_security=3"), "{out}");
    assert!(out.contains("truncated=2"), "{out}");
    let total = out.lines().find(|l| l.starts_with("total")).expect(&out);
    assert!(total.contains("1500") && total.contains("1490"), "{total}");
    assert!(
        total.contains("bad_src_mac=7 port_security=3 truncated=2"),
        "{total}"
    );
    assert!(
        out.contains("slow path: aged=2 learned=5 moves=1 table_full=0"),
        "{out}"
    );

    let out = stdout_ok(&stitchctl(s, &["mac.list", "--bridge", "0"]));
    assert!(
        out.contains("02:00:00:00:00:aa") && out.contains("learned"),
        "{out}"
    );
    assert!(
        out.contains("static") && out.contains("2 entries (capacity 4096)"),
        "{out}"
    );

    let out = stdout_ok(&stitchctl(s, &["mac.add", "02:00:00:00:00:0A", "3"]));
    assert!(
        out.starts_with("ok\n") && out.contains("mac: 02:00:00:00:00:0a"),
        "{out}"
    );

    stdout_ok(&stitchctl(
        s,
        &[
            "port.security.set",
            "2",
            "--allow",
            "02:00:00:00:00:01",
            "--allow",
            "02:00:00:00:00:02",
            "--no-learning",
        ],
    ));
    stdout_ok(&stitchctl(s, &["port.security.set", "4", "--any"]));
    let out = stdout_ok(&stitchctl(
        s,
        &["mac.del", "02:00:00:00:00:01", "--bridge", "1"],
    ));
    assert_eq!(out, "ok\n  removed: 1\n");

    let calls = srv.recorder.calls();
    assert!(calls.contains(&Method::MacAdd(MacAddParams {
        mac: mac("02:00:00:00:00:0a"),
        port: 3
    })));
    assert!(calls.contains(&Method::PortSecuritySet(PortSecurityParams {
        port: 2,
        allowed_macs: Some(vec![mac("02:00:00:00:00:01"), mac("02:00:00:00:00:02")]),
        learning: false
    })));
    assert!(calls.contains(&Method::MacDel(MacDelParams {
        mac: mac("02:00:00:00:00:01"),
        bridge: Some(1)
    })));
    assert!(calls.contains(&Method::PortSecuritySet(PortSecurityParams {
        port: 4,
        allowed_macs: None,
        learning: true
    })));
}

#[test]
fn json_output_is_the_raw_result() {
    let srv = TestServer::start("ctl-json");
    for args in [
        &["--json", "stats.get"][..],
        &["ports.list", "--json"][..],
        &["call", "mac.list", "{\"bridge\":0}"][..],
    ] {
        let out = stdout_ok(&stitchctl(&srv.socket, args));
        let v: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}\n{out}"));
        assert!(v.is_object(), "{args:?}");
    }
    let out = stdout_ok(&stitchctl(&srv.socket, &["--json", "stats.get"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["workers"][0]["drops"]["bad_src_mac"], 7);
}

#[test]
fn daemon_errors_exit_1_with_the_message_on_stderr() {
    let srv = TestServer::start("ctl-err");
    let out = stitchctl(&srv.socket, &["mac.del", "02:00:00:00:00:99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "stitchctl: MAC 02:00:00:00:00:99 is not in the table\n"
    );

    let out = stitchctl(
        &srv.socket,
        &["call", "mac.add", "{\"mac\":\"x\",\"port\":1}"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("stitchctl: invalid params for mac.add: 'mac'"),
        "{err}"
    );
}

#[test]
fn unreachable_socket_exits_1_and_says_how_to_fix_it() {
    let dir = TempDir::new("ctl-nosock");
    let out = stitchctl(&dir.socket(), &["version"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("stitchctl: cannot connect to stitchd control socket"),
        "{err}"
    );
    assert!(err.contains("use --socket"), "{err}");
}

#[test]
fn usage_errors_exit_2_without_contacting_the_daemon() {
    let srv = TestServer::start("ctl-usage");
    let out = stitchctl(&srv.socket, &["mac.add", "02-00-00-00-00-01", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid MAC address"));

    let out = stitchctl(&srv.socket, &["port.security.set", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow") && err.contains("--any"), "{err}");
    assert!(err.contains("Usage: stitchctl port.security.set"), "{err}");

    let out = stitchctl(
        &srv.socket,
        &[
            "port.security.set",
            "1",
            "--any",
            "--allow",
            "02:00:00:00:00:01",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(srv.recorder.calls().is_empty());
}

#[test]
fn socket_path_can_come_from_the_environment() {
    let srv = TestServer::start("ctl-env");
    let out = Command::new(env!("CARGO_BIN_EXE_stitchctl"))
        .arg("version")
        .env("STITCHD_SOCKET", &srv.socket)
        .output()
        .unwrap();
    assert_eq!(stdout_ok(&out), "stitchd 0.1.0 (DPDK 22.11.4)\n");
}

#[test]
fn unrecognised_result_shapes_fall_back_to_json() {
    // ports.list answered with something else entirely: still printed.
    use std::sync::Arc;
    use stitch_control::{ControlServer, Handler, RpcError};
    struct Odd;
    impl Handler for Odd {
        fn call(&self, _m: Method) -> Result<Value, RpcError> {
            Ok(serde_json::json!({"ports": "none yet"}))
        }
    }
    let dir = TempDir::new("ctl-odd");
    let _h = ControlServer::bind(&dir.socket())
        .unwrap()
        .serve(Arc::new(Odd));
    let out = stdout_ok(&stitchctl(&dir.socket(), &["ports.list"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ports"], "none yet");
}
