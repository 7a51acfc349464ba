//! Load-balancer test parts: real HTTP backends (Python's `http.server`, one process per
//! backend namespace, several ports each) and a real HTTP client (`curl`, one new
//! connection per request).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{require_cmd, Netns};

/// The backend server's source, written next to the test's files.
const SERVER: &str = include_str!("../../examples/lb/backend.py");

/// An HTTP server in a namespace answering `NAME:PORT` on each of its ports; stopped by
/// its pid when dropped.
pub struct HttpBackend {
    child: Child,
    /// Writing a number of milliseconds here delays every answer (removed: no delay).
    pub delay_file: PathBuf,
}

impl HttpBackend {
    /// Starts the server in `ns` on `ports` and waits until it listens.
    pub fn start(ns: &Netns, dir: &Path, name: &str, ports: &[u16]) -> HttpBackend {
        require_cmd("python3", "python3");
        let script = dir.join("http_backend.py");
        if !script.exists() {
            std::fs::write(&script, SERVER).expect("write http_backend.py");
        }
        let delay_file = dir.join(format!("delay-{name}"));
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            ns.name.clone(),
            "python3".into(),
            script.display().to_string(),
            name.into(),
            delay_file.display().to_string(),
        ];
        args.extend(ports.iter().map(u16::to_string));
        // `ip netns exec` execs the command: the child's pid is the server's.
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the HTTP backend");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        BufReader::new(out)
            .read_line(&mut line)
            .expect("read ready");
        assert_eq!(line.trim(), "ready", "HTTP backend {name} did not start");
        HttpBackend { child, delay_file }
    }

    /// Delays every answer by `ms` (0: none).
    pub fn set_delay(&self, ms: u32) {
        if ms == 0 {
            let _ = std::fs::remove_file(&self.delay_file);
        } else {
            std::fs::write(&self.delay_file, ms.to_string()).expect("write delay file");
        }
    }

    /// Makes every answer carry HTTP status `code` (200: back to normal).
    pub fn set_status(&self, code: u16) {
        let f = self.delay_file.with_file_name(
            self.delay_file
                .file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.replacen("delay-", "status-", 1))
                .unwrap_or_default(),
        );
        if code == 200 {
            let _ = std::fs::remove_file(f);
        } else {
            std::fs::write(f, code.to_string()).expect("write status file");
        }
    }

    /// Stops the server (by its pid).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `count` GETs of `url` from namespace `ns`, each on its own connection (curl, one
/// invocation, `Connection: close`); returns the answers in order. Fails the test if
/// curl fails.
pub fn curl_many(ns: &Netns, url: &str, count: usize) -> Vec<String> {
    curl_many_from(ns, url, count, None)
}

/// [`curl_many`] from source address `source` (one of the namespace's addresses).
pub fn curl_many_from(ns: &Netns, url: &str, count: usize, source: Option<&str>) -> Vec<String> {
    require_cmd("curl", "curl");
    let mut args: Vec<String> = source
        .map(|s| vec!["--interface".to_string(), s.to_string()])
        .unwrap_or_default();
    args.extend([
        "-sS".into(),
        "-g".into(),
        "--fail".into(),
        "--max-time".into(),
        "60".into(),
        "--connect-timeout".into(),
        "5".into(),
        "-H".into(),
        "Connection: close".into(),
    ]);
    args.extend(std::iter::repeat_n(url.to_string(), count));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ns.exec("curl", &a);
    assert!(
        out.status.success(),
        "curl {url} x{count} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
