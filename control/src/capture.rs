//! Packet capture on the control socket: the params and results of `capture.start`,
//! `capture.status` and `capture.stop`, and the client side of `stitchctl capture`.
//!
//! Who writes the file: **stitchd** (its slow path drains the workers' capture rings and
//! writes a pcap file at the absolute path given in `capture.start`), so no frame crosses
//! the control socket and a capture goes on even if the client goes away (it ends at its
//! count, its timeout or `capture.stop`). `stitchctl capture` makes a relative `-w FILE`
//! absolute against its own working directory, starts the capture, polls
//! `capture.status` until the capture ends, and stops it when interrupted.
//!
//! Params are validated here, at the protocol boundary: a bad value is refused with the
//! field and the reason (`-32602`) before the daemon sees it, so nothing changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::{Client, ClientError};

/// Most frames one capture may take.
pub const MAX_COUNT: u64 = 100_000_000;
/// Smallest snap length: the Ethernet header.
pub const MIN_SNAPLEN: u32 = 14;
/// Largest snap length: a jumbo frame.
pub const MAX_SNAPLEN: u32 = 9216;
/// Snap length when none is given: Ethernet, IP and TCP headers with options, and the
/// start of the payload, at a sixth of the copying of a full 1514-byte frame.
pub const DEFAULT_SNAPLEN: u32 = 256;
/// Longest timeout: a day.
pub const MAX_TIMEOUT_SECS: u32 = 86_400;
/// Longest path accepted (Linux's PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;

/// Which frames of the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CaptureDir {
    /// As received on the port.
    Rx,
    /// As sent out of the port (after translation, for stitched flows).
    Tx,
    /// Both directions.
    #[default]
    Both,
}

impl CaptureDir {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            CaptureDir::Rx => "rx",
            CaptureDir::Tx => "tx",
            CaptureDir::Both => "both",
        }
    }
}

/// `capture.start`: capture `count` frames of `port` into the pcap file `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawCaptureStart")]
pub struct CaptureStartParams {
    /// The port.
    pub port: u16,
    /// Which frames (default both directions).
    pub dir: CaptureDir,
    /// The capture ends after this many frames are written (1..=[`MAX_COUNT`]).
    pub count: u64,
    /// Bytes kept of each frame ([`MIN_SNAPLEN`]..=[`MAX_SNAPLEN`], default
    /// [`DEFAULT_SNAPLEN`]); the original length is always recorded.
    pub snaplen: u32,
    /// Absolute path of the pcap file stitchd creates (an existing file is replaced).
    pub path: String,
    /// The capture ends after this many seconds, with what it has (1..=86400).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
}

/// The wire form of [`CaptureStartParams`], before the range checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaptureStart {
    #[serde(deserialize_with = "crate::protocol::de_u16")]
    port: u16,
    #[serde(default)]
    dir: CaptureDir,
    count: u64,
    #[serde(default = "default_snaplen")]
    snaplen: u32,
    path: String,
    #[serde(default)]
    timeout_secs: Option<u32>,
}

fn default_snaplen() -> u32 {
    DEFAULT_SNAPLEN
}

impl TryFrom<RawCaptureStart> for CaptureStartParams {
    type Error = String;

    fn try_from(r: RawCaptureStart) -> Result<Self, String> {
        if !(1..=MAX_COUNT).contains(&r.count) {
            return Err(format!(
                "'count': {} is out of range; a capture takes 1..={MAX_COUNT} frames",
                r.count
            ));
        }
        if !(MIN_SNAPLEN..=MAX_SNAPLEN).contains(&r.snaplen) {
            return Err(format!(
                "'snaplen': {} is out of range; {MIN_SNAPLEN}..={MAX_SNAPLEN} bytes",
                r.snaplen
            ));
        }
        if let Some(t) = r.timeout_secs {
            if !(1..=MAX_TIMEOUT_SECS).contains(&t) {
                return Err(format!(
                    "'timeout_secs': {t} is out of range; 1..={MAX_TIMEOUT_SECS} seconds"
                ));
            }
        }
        if !r.path.starts_with('/') {
            return Err(format!(
                "'path': '{}' is not absolute; stitchd writes the file, so give an absolute path",
                r.path.chars().take(64).collect::<String>()
            ));
        }
        if r.path.len() > MAX_PATH_LEN || r.path.contains('\0') || r.path.ends_with('/') {
            return Err(format!(
                "'path': not a file path (at most {MAX_PATH_LEN} bytes, no NUL, not ending in '/')"
            ));
        }
        Ok(CaptureStartParams {
            port: r.port,
            dir: r.dir,
            count: r.count,
            snaplen: r.snaplen,
            path: r.path,
            timeout_secs: r.timeout_secs,
        })
    }
}

/// `capture.status`: one port's capture, or every port's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureStatusParams {
    /// Only this port (`None`: every port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `capture.stop`: end the port's capture now, keeping what was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureStopParams {
    /// The port.
    #[serde(deserialize_with = "crate::protocol::de_u16")]
    pub port: u16,
}

/// Whether a capture still takes frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureState {
    /// Taking frames.
    Running,
    /// Ended; the file is complete.
    Done,
}

/// Why a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureEnd {
    /// `count` frames were written.
    Count,
    /// `timeout_secs` passed.
    Timeout,
    /// `capture.stop` (or stitchd shutting down).
    Stopped,
    /// Writing the file failed (`error` says how).
    Error,
}

/// One capture as `capture.start`, `capture.status`, `capture.stop` and `stats.get`
/// report it (the last capture of each port stays listed after it ends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureInfo {
    /// Unique for the daemon's life.
    pub id: u64,
    pub port: u16,
    pub dir: CaptureDir,
    pub snaplen: u32,
    /// Frames asked for.
    pub count: u64,
    pub path: String,
    #[serde(default)]
    pub timeout_secs: Option<u32>,
    pub state: CaptureState,
    /// Why it ended (`None` while running).
    #[serde(default)]
    pub end: Option<CaptureEnd>,
    /// The write error, when `end` is `error`.
    #[serde(default)]
    pub error: Option<String>,
    /// Frames written to the file.
    pub captured: u64,
    /// Frames the workers could not capture because their ring was full (forwarded as
    /// usual, missing from the file).
    pub dropped: u64,
    /// Slots of each worker's ring.
    pub ring_slots: u64,
    /// Seconds since the capture started (until it ended, when it has).
    pub elapsed_secs: f64,
}

impl CaptureInfo {
    /// One line for a person: what was captured where, and what was lost.
    pub fn summary(&self) -> String {
        format!(
            "captured {} of {} packets on port {} ({}) into {}; {} dropped (capture ring full)",
            self.captured,
            self.count,
            self.port,
            self.dir.name(),
            self.path,
            self.dropped
        )
    }
}

/// The result of `capture.status` (and the `capture` member of `stats.get`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureList {
    pub captures: Vec<CaptureInfo>,
}

/// How a client-driven capture ended.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureOutcome {
    /// The capture's final state.
    pub info: CaptureInfo,
    /// The client was interrupted and stopped it early.
    pub interrupted: bool,
}

/// How often [`run_capture`] asks for the status.
const POLL: Duration = Duration::from_millis(100);

/// The client side of a capture: starts it, waits for it to end (polling
/// `capture.status`), and stops it when `interrupt` becomes true. Also stops it when
/// the daemon's own timeout should have ended it long ago (a wedged daemon).
///
/// # Errors
///
/// What the daemon refused (`capture.start`'s error, e.g. a capture already running on
/// the port) or a transport error.
pub fn run_capture(
    client: &mut Client,
    params: &CaptureStartParams,
    interrupt: &AtomicBool,
) -> Result<CaptureOutcome, ClientError> {
    let started = client.call(
        "capture.start",
        Some(serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?),
    )?;
    let info: CaptureInfo = parse(started)?;
    let id = info.id;
    let t0 = Instant::now();
    let limit = params
        .timeout_secs
        .map(|t| Duration::from_secs(u64::from(t) + 10));
    loop {
        if interrupt.load(Ordering::Relaxed) || limit.is_some_and(|l| t0.elapsed() > l) {
            let v = client.call("capture.stop", Some(json!({"port": params.port})))?;
            let info: CaptureInfo = parse(v)?;
            return Ok(CaptureOutcome {
                interrupted: info.id == id && info.end == Some(CaptureEnd::Stopped),
                info,
            });
        }
        let v = client.call("capture.status", Some(json!({"port": params.port})))?;
        let list: CaptureList = parse(v)?;
        let Some(info) = list.captures.into_iter().find(|c| c.id == id) else {
            return Err(ClientError::Protocol(format!(
                "capture {id} is no longer listed by capture.status (replaced by another capture on port {})",
                params.port
            )));
        };
        if info.state == CaptureState::Done {
            return Ok(CaptureOutcome {
                info,
                interrupted: false,
            });
        }
        // Short sleeps, so an interrupt is acted on at once.
        let until = Instant::now() + POLL;
        while Instant::now() < until && !interrupt.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| ClientError::Protocol(format!("capture result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{code, Method};

    fn start(params: serde_json::Value) -> Result<Method, String> {
        Method::parse("capture.start", Some(params)).map_err(|e| {
            assert_eq!(e.code, code::INVALID_PARAMS, "{}", e.message);
            e.message
        })
    }

    #[test]
    fn defaults_fill_in_direction_and_snap_length() {
        let m = start(json!({"port": 1, "count": 10, "path": "/tmp/a.pcap"})).unwrap();
        let Method::CaptureStart(p) = &m else {
            panic!("{m:?}")
        };
        assert_eq!(
            (p.dir, p.snaplen, p.timeout_secs),
            (CaptureDir::Both, 256, None)
        );
        // What a client sends parses back to the same request.
        assert_eq!(Method::parse(m.name(), m.params()).unwrap(), m);
    }

    #[test]
    fn bad_params_name_the_field_and_the_reason() {
        let base = json!({"port": 1, "count": 10, "path": "/tmp/a.pcap"});
        let with = |k: &str, v: serde_json::Value| {
            let mut p = base.clone();
            p[k] = v;
            start(p).unwrap_err()
        };
        let m = with("count", json!(0));
        assert!(m.contains("'count': 0 is out of range"), "{m}");
        let m = with("snaplen", json!(10));
        assert!(
            m.contains("'snaplen': 10 is out of range; 14..=9216"),
            "{m}"
        );
        let m = with("snaplen", json!(100_000));
        assert!(m.contains("'snaplen'"), "{m}");
        let m = with("path", json!("cap.pcap"));
        assert!(m.contains("'path': 'cap.pcap' is not absolute"), "{m}");
        let m = with("path", json!("/tmp/"));
        assert!(m.contains("'path'"), "{m}");
        let m = with("timeout_secs", json!(0));
        assert!(m.contains("'timeout_secs'"), "{m}");
        let m = with("dir", json!("in"));
        assert!(m.contains("'dir'") && m.contains("rx"), "{m}");
        let m = with("port", json!(70000));
        assert!(m.contains("'port'") && m.contains("0..=65535"), "{m}");
        let m = with("snap", json!(1));
        assert!(m.contains("unknown field 'snap'"), "{m}");
        let m = start(json!({"port": 1, "path": "/tmp/a"})).unwrap_err();
        assert!(m.contains("missing field 'count'"), "{m}");
    }

    #[test]
    fn status_and_stop_params() {
        assert_eq!(
            Method::parse("capture.status", None).unwrap(),
            Method::CaptureStatus(CaptureStatusParams { port: None })
        );
        assert!(Method::parse("capture.stop", None).is_err());
        assert_eq!(
            Method::parse("capture.stop", Some(json!({"port": 2}))).unwrap(),
            Method::CaptureStop(CaptureStopParams { port: 2 })
        );
    }

    #[test]
    fn a_summary_says_what_went_where() {
        let info = CaptureInfo {
            id: 1,
            port: 0,
            dir: CaptureDir::Rx,
            snaplen: 256,
            count: 10,
            path: "/tmp/a.pcap".into(),
            timeout_secs: None,
            state: CaptureState::Done,
            end: Some(CaptureEnd::Count),
            error: None,
            captured: 10,
            dropped: 2,
            ring_slots: 8192,
            elapsed_secs: 0.5,
        };
        assert_eq!(
            info.summary(),
            "captured 10 of 10 packets on port 0 (rx) into /tmp/a.pcap; 2 dropped (capture ring full)"
        );
        let back: CaptureInfo =
            serde_json::from_value(serde_json::to_value(&info).unwrap()).unwrap();
        assert_eq!(back, info);
    }
}
