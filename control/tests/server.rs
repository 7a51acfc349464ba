//! The control server over real Unix sockets: error handling per connection,
//! concurrency, socket file lifecycle.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{Recorder, TempDir, TestServer};
use serde_json::{json, Value};
use stitch_control::protocol::{code, MacAddParams, MAX_LINE_LEN};
use stitch_control::{Client, ClientError, ControlError, ControlServer, Mac, Method};

/// A raw line-level connection, to send exactly the bytes a test wants.
struct Raw {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Raw {
    fn connect(path: &std::path::Path) -> Raw {
        let stream = UnixStream::connect(path).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Raw { stream, reader }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read response");
        assert!(line.ends_with('\n'), "response is one full line: {line:?}");
        serde_json::from_str(&line).expect("response is JSON")
    }

    fn roundtrip(&mut self, bytes: &[u8]) -> Value {
        self.send(bytes);
        self.recv()
    }

    fn assert_version_works(&mut self, id: u64) {
        let resp = self.roundtrip(
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"version\"}}\n").as_bytes(),
        );
        assert_eq!(resp["id"], json!(id));
        assert_eq!(resp["result"]["name"], "stitchd");
    }
}

fn error_of(resp: &Value) -> (i64, String) {
    (
        resp["error"]["code"].as_i64().expect("error code"),
        resp["error"]["message"]
            .as_str()
            .expect("error message")
            .to_owned(),
    )
}

#[test]
fn malformed_json_gets_32700_and_the_connection_stays_usable() {
    let srv = TestServer::start("parse");
    let mut c = Raw::connect(&srv.socket);
    let resp = c.roundtrip(b"{\"jsonrpc\":\n");
    // The line ends at the newline, so this is an incomplete object.
    let (code, msg) = error_of(&resp);
    assert_eq!(code, code::PARSE_ERROR);
    assert!(msg.starts_with("parse error: "), "{msg}");
    assert_eq!(resp["id"], Value::Null);
    c.assert_version_works(1);
    let (code, msg) = error_of(&c.roundtrip(b"\xff\xfe{}\n"));
    assert_eq!(code, code::PARSE_ERROR);
    assert!(msg.contains("UTF-8"), "{msg}");
    c.assert_version_works(2);
}

#[test]
fn unknown_method_gets_32601_naming_it() {
    let srv = TestServer::start("unknown");
    let mut c = Raw::connect(&srv.socket);
    let resp = c.roundtrip(b"{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"method\":\"ports.lsit\"}\n");
    assert_eq!(resp["id"], "x");
    let (code, msg) = error_of(&resp);
    assert_eq!(code, code::METHOD_NOT_FOUND);
    assert!(
        msg.contains("'ports.lsit'") && msg.contains("ports.list"),
        "{msg}"
    );
    c.assert_version_works(3);
    assert_eq!(srv.recorder.calls(), vec![Method::Version]);
}

#[test]
fn wrong_param_types_get_32602_and_reach_no_handler() {
    let srv = TestServer::start("params");
    let mut c = Raw::connect(&srv.socket);
    let resp = c.roundtrip(
        b"{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"mac.add\",\"params\":{\"mac\":\"02:00:00:00:00:01\",\"port\":\"one\"}}\n",
    );
    assert_eq!(resp["id"], 4);
    let (code, msg) = error_of(&resp);
    assert_eq!(code, code::INVALID_PARAMS);
    assert!(
        msg.starts_with("invalid params for mac.add: 'port'"),
        "{msg}"
    );
    let (code, msg) = error_of(&c.roundtrip(
        b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"mac.add\",\"params\":{\"mac\":\"02:00:00:00:00:01\",\"prot\":1}}\n",
    ));
    assert_eq!(code, code::INVALID_PARAMS);
    assert!(msg.contains("unknown field 'prot'"), "{msg}");
    assert!(srv.recorder.calls().is_empty());
}

#[test]
fn application_errors_get_32000_with_the_handlers_message() {
    let srv = TestServer::start("app");
    let mut client = Client::connect(&srv.socket).unwrap();
    let err = client
        .call("ports.stats", Some(json!({"port": 7})))
        .unwrap_err();
    match err {
        ClientError::Rpc { code, message } => {
            assert_eq!(code, code::APP_ERROR);
            assert_eq!(message, "port 7 does not exist");
        }
        other => panic!("expected an RPC error, got {other:?}"),
    }
    // Same connection, next call fine.
    assert_eq!(client.call("version", None).unwrap()["version"], "0.1.0");
}

#[test]
fn oversize_line_gets_32600_and_the_next_line_is_served() {
    let srv = TestServer::start("oversize");
    let mut c = Raw::connect(&srv.socket);
    let mut big = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"version\",\"pad\":\"".to_vec();
    big.resize(MAX_LINE_LEN * 3, b'a');
    big.extend_from_slice(b"\"}\n");
    // Write from another thread: the server answers before it has read
    // everything, and we must be free to read that answer.
    let mut writer = c.stream.try_clone().unwrap();
    let t = thread::spawn(move || {
        writer.write_all(&big).unwrap();
        writer
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"version\"}\n")
            .unwrap();
    });
    let resp = c.recv();
    let (code, msg) = error_of(&resp);
    assert_eq!(code, code::INVALID_REQUEST);
    assert!(msg.contains("longer than 65536 bytes"), "{msg}");
    let resp = c.recv();
    assert_eq!(resp["id"], 2);
    assert_eq!(resp["result"]["name"], "stitchd");
    t.join().unwrap();

    // A line of exactly the limit is accepted (and here fails only as JSON).
    let mut exact = vec![b' '; MAX_LINE_LEN - 2];
    exact.insert(0, b'[');
    exact.push(b']');
    exact.push(b'\n');
    let (code, msg) = error_of(&c.roundtrip(&exact));
    assert_eq!(code, code::INVALID_REQUEST);
    assert!(msg.contains("batch"), "{msg}");
}

#[test]
fn notifications_are_executed_but_not_answered() {
    let srv = TestServer::start("notify");
    let mut c = Raw::connect(&srv.socket);
    c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"mac.add\",\"params\":{\"mac\":\"02:00:00:00:00:01\",\"port\":3}}\n");
    // Unknown method as a notification: no answer either.
    c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"nope\"}\n");
    // Blank lines are ignored.
    c.send(b"\n\r\n");
    // The very next line read must be the answer to id 9.
    c.assert_version_works(9);
    assert_eq!(
        srv.recorder.calls(),
        vec![
            Method::MacAdd(MacAddParams {
                mac: "02:00:00:00:00:01".parse::<Mac>().unwrap(),
                port: 3
            }),
            Method::Version
        ]
    );
}

#[test]
fn batches_are_rejected_with_32600() {
    let srv = TestServer::start("batch");
    let mut c = Raw::connect(&srv.socket);
    let (code, msg) =
        error_of(&c.roundtrip(b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"version\"}]\n"));
    assert_eq!(code, code::INVALID_REQUEST);
    assert!(msg.contains("batch requests are not supported"), "{msg}");
    c.assert_version_works(1);
}

#[test]
fn eight_concurrent_clients_get_their_own_answers() {
    let srv = TestServer::start("concurrent");
    let threads: Vec<_> = (0..8u16)
        .map(|t| {
            let path = srv.socket.clone();
            thread::spawn(move || {
                let mut client = Client::connect(&path).unwrap();
                let mut raw = Raw::connect(&path);
                for i in 0..100u16 {
                    // Typed client: the result must echo this thread's params.
                    let mac = format!("02:00:00:00:{:02x}:{:02x}", t, i);
                    let port = t * 1000 + i;
                    let result = client
                        .call("mac.add", Some(json!({"mac": mac, "port": port})))
                        .unwrap();
                    assert_eq!(result["mac"], mac);
                    assert_eq!(result["port"], port);
                    // Raw: ids chosen by the test come back unchanged.
                    let id = format!("t{t}-{i}");
                    let resp = raw.roundtrip(
                        format!("{{\"jsonrpc\":\"2.0\",\"id\":\"{id}\",\"method\":\"version\"}}\n")
                            .as_bytes(),
                    );
                    assert_eq!(resp["id"], id);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert_eq!(srv.recorder.calls().len(), 8 * 200);
}

#[test]
fn socket_is_mode_0600_and_a_created_dir_0700() {
    let dir = TempDir::new("mode");
    let path = dir.path().join("run/stitchd/ctl.sock");
    let server = ControlServer::bind(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dmeta = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
    drop(server);
    assert!(
        !path.exists(),
        "dropping an unserved server removes the socket"
    );
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = TempDir::new("stale");
    let path = dir.socket();
    // A socket file nobody listens on, as a crashed daemon leaves behind.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let handle = ControlServer::bind(&path)
        .expect("stale socket is replaced")
        .serve(Arc::new(Recorder::default()));
    let mut client = Client::connect(&path).unwrap();
    assert_eq!(client.call("version", None).unwrap()["name"], "stitchd");
    handle.shutdown();
}

#[test]
fn a_regular_file_at_the_path_is_not_deleted() {
    let dir = TempDir::new("notsock");
    let path = dir.socket();
    std::fs::write(&path, b"precious").unwrap();
    let err = ControlServer::bind(&path).unwrap_err();
    assert!(matches!(err, ControlError::NotASocket { .. }), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn second_bind_on_a_live_path_fails_and_leaves_the_first_working() {
    let srv = TestServer::start("inuse");
    let err = ControlServer::bind(&srv.socket).unwrap_err();
    assert!(matches!(err, ControlError::InUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "control socket {} is in use by another process",
            srv.socket.display()
        )
    );
    let mut client = Client::connect(&srv.socket).unwrap();
    assert!(client.call("version", None).is_ok());
}

#[test]
fn shutdown_removes_the_socket_and_ends_idle_connections() {
    let mut srv = TestServer::start("shutdown");
    let mut idle = Raw::connect(&srv.socket);
    idle.assert_version_works(1);
    srv.handle.take().unwrap().shutdown();
    assert!(!srv.socket.exists(), "socket file removed");
    assert!(UnixStream::connect(&srv.socket).is_err());
    // The idle connection's server side is closed: we read EOF.
    let mut rest = Vec::new();
    idle.reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn dropping_the_handle_removes_the_socket() {
    let mut srv = TestServer::start("drop");
    drop(srv.handle.take());
    assert!(!srv.socket.exists());
}

#[test]
fn shutdown_from_inside_a_handler_still_answers_the_request() {
    use std::sync::Mutex;
    use stitch_control::{Handler, RpcError, ServerHandle};

    struct Stopper(Mutex<Option<ServerHandle>>);
    impl Handler for Stopper {
        fn call(&self, _method: Method) -> Result<Value, RpcError> {
            if let Some(h) = self.0.lock().unwrap().take() {
                h.shutdown();
            }
            Ok(json!({"stopping": true}))
        }
    }

    let dir = TempDir::new("selfstop");
    let path = dir.socket();
    let stopper = Arc::new(Stopper(Mutex::new(None)));
    let handle = ControlServer::bind(&path).unwrap().serve(stopper.clone());
    *stopper.0.lock().unwrap() = Some(handle);
    let mut client = Client::connect(&path).unwrap();
    assert_eq!(
        client.call("shutdown", None).unwrap(),
        json!({"stopping": true})
    );
    assert!(!path.exists());
    assert!(matches!(
        client.call("version", None),
        Err(ClientError::Closed { .. }) | Err(ClientError::Io(_))
    ));
}

#[test]
fn client_connect_error_names_the_path_and_hints_at_the_fix() {
    let dir = TempDir::new("noconnect");
    let err = Client::connect(&dir.socket()).unwrap_err().to_string();
    assert!(err.contains(&dir.socket().display().to_string()), "{err}");
    assert!(err.contains("is stitchd running? use --socket"), "{err}");
}

#[test]
fn events_subscribe_turns_the_connection_into_an_event_stream() {
    use std::io::{BufRead, BufReader, Write};
    let srv = common::TestServer::start("events");
    let mut s = std::os::unix::net::UnixStream::connect(&srv.socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"events.subscribe\"}\n")
        .unwrap();
    let lines: Vec<serde_json::Value> = BufReader::new(s)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(lines[0]["result"]["subscribed"], true);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (i, ev) in lines[1..].iter().enumerate() {
        assert_eq!(ev["method"], "event");
        assert_eq!(ev["params"]["n"], i);
    }
}

#[test]
fn idle_clients_cannot_lock_an_operator_out() {
    use stitch_control::server::{EVICT_AFTER, MAX_CONNECTIONS};
    let srv = TestServer::start("idle-clients");
    // Every slot taken by a client that asked once and then went quiet.
    let mut idle: Vec<Raw> = (0..MAX_CONNECTIONS as u64)
        .map(|i| {
            let mut r = Raw::connect(&srv.socket);
            r.assert_version_works(i);
            r
        })
        .collect();
    // Idleness is what is under test: let them all be idle past the eviction age.
    thread::sleep(EVICT_AFTER + Duration::from_millis(300));
    let mut operator = Raw::connect(&srv.socket);
    operator.assert_version_works(1000);
    // The longest-idle client (the first) made room: its connection was ended.
    let mut rest = String::new();
    let n = idle[0]
        .reader
        .read_line(&mut rest)
        .expect("read after eviction");
    assert_eq!(n, 0, "evicted client sees EOF, got {rest:?}");
    // The others are still served.
    idle[1].assert_version_works(1001);
}
