//! Shared test fixtures: a unique temporary directory and a handler that
//! records what it was asked and answers with canned results.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use stitch_control::{ControlServer, Handler, Method, RpcError, ServerHandle};

/// A fresh directory under the system temp dir, removed on drop. The name
/// carries the pid and a counter so parallel tests and test binaries never
/// share a socket path.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("stitch-control-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn socket(&self) -> PathBuf {
        self.0.join("ctl.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Records every call; answers with the shapes stitchd returns.
#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<Method>>,
}

impl Recorder {
    pub fn calls(&self) -> Vec<Method> {
        self.calls.lock().unwrap().clone()
    }
}

impl Handler for Recorder {
    fn call(&self, method: Method) -> Result<Value, RpcError> {
        self.calls.lock().unwrap().push(method.clone());
        match method {
            Method::Version => {
                Ok(json!({"name":"stitchd","version":"0.1.0","dpdk":"DPDK 22.11.4"}))
            }
            Method::PortsList => Ok(json!({"ports":[
                {"id":0,"name":"net_tap0","devargs":"net_tap0,iface=st0","mac":"02:00:00:00:00:10",
                 "link":{"up":true,"speed_mbps":10000,"duplex":"full"},"rx_queues":1,"tx_queues":2,"bridge":0,
                 "future_field":"ignored"},
                {"id":1,"name":"net_tap1","devargs":"net_tap1,iface=st1","mac":"02:00:00:00:00:11",
                 "link":{"up":false,"speed_mbps":0,"duplex":"half"},"rx_queues":1,"tx_queues":2,"bridge":0}
            ]})),
            Method::PortsStats(p) => {
                let port = p.port.unwrap_or(0);
                if port > 1 {
                    return Err(RpcError::app(format!("port {port} does not exist")));
                }
                Ok(
                    json!({"ports":[{"id":port,"rx_packets":123456,"rx_bytes":7890123,"rx_dropped":5,
                    "rx_errors":0,"rx_nombuf":0,"tx_packets":654321,"tx_bytes":3210987,"tx_errors":1,
                    "queues":[{"queue":0,"rx_packets":123456,"rx_bytes":7890123,"tx_packets":654321,"tx_bytes":3210987}]}]}),
                )
            }
            Method::StatsGet => Ok(json!({
                "workers":[
                    {"lcore":1,"rx_packets":1000,"tx_packets":990,"flooded":3,"learn_requests":4,"learn_dropped":0,
                     "drops":{"truncated":0,"bad_src_mac":7,"port_security":3}},
                    {"lcore":2,"rx_packets":500,"tx_packets":500,"flooded":0,"learn_requests":1,"learn_dropped":0,
                     "drops":{"truncated":2,"bad_src_mac":0,"port_security":0}}
                ],
                "slow_path":{"learned":5,"moves":1,"table_full":0,"aged":2}})),
            Method::MacList(_) => Ok(json!({"entries":[
                {"bridge":0,"mac":"02:00:00:00:00:aa","port":1,"static":false,"age_secs":3},
                {"bridge":0,"mac":"02:00:00:00:00:bb","port":0,"static":true,"age_secs":0}
            ],"capacity":4096})),
            Method::MacAdd(p) => Ok(json!({"mac": p.mac, "port": p.port, "bridge": 0})),
            Method::MacDel(p) => {
                if p.mac.0 == [0x02, 0, 0, 0, 0, 0x99] {
                    Err(RpcError::app(format!("MAC {} is not in the table", p.mac)))
                } else {
                    Ok(json!({"removed": 1}))
                }
            }
            Method::PortSecuritySet(p) => Ok(json!({"port": p.port})),
            Method::Shutdown => Ok(json!({"shutting_down": true})),
            Method::StitchList => Ok(json!({"stitches": [
                {"id": 1, "state": "stitched", "proto": "tcp", "teardown": "4E",
                 "leg_a": {"client": "198.18.0.1:40000", "shell": "198.18.0.2:7000"},
                 "leg_b": {"shell": "198.18.0.2:45000", "core": "198.18.0.3:8000"}}
            ]})),
            Method::EventsSubscribe => Ok(json!({"subscribed": true})),
            other => Ok(json!({"method": other.name()})),
        }
    }

    fn subscribe(&self) -> Option<std::sync::mpsc::Receiver<Value>> {
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..3 {
            tx.send(json!({"event": "test", "n": i})).ok()?;
        }
        Some(rx)
    }
}

/// A server on a fresh socket with a recording handler.
pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub recorder: Arc<Recorder>,
    pub socket: PathBuf,
    // Declared last: dropped after the handle removed the socket.
    pub dir: TempDir,
}

impl TestServer {
    pub fn start(tag: &str) -> TestServer {
        let dir = TempDir::new(tag);
        let socket = dir.socket();
        let recorder = Arc::new(Recorder::default());
        let handle = ControlServer::bind(&socket)
            .expect("bind test server")
            .serve(recorder.clone());
        TestServer {
            handle: Some(handle),
            recorder,
            socket,
            dir,
        }
    }
}
