//! The stitchd control protocol: JSON-RPC 2.0, one JSON object per line, over a
//! Unix stream socket.
//!
//! This module is pure data: it turns request lines into typed [`Method`]s and
//! typed results back into response lines. It does no I/O, so the server, the
//! client and the tests all share exactly one definition of the wire format.
//!
//! # Framing
//!
//! * Transport: a Unix stream socket (default `/run/stitchd/stitchd.sock`,
//!   mode 0600 so that only the daemon's user may drive the switch).
//! * Each request is one JSON object on one line terminated by `\n` (a `\r`
//!   before it is tolerated, blank lines are ignored). Each response is one JSON
//!   object on one line. A connection carries any number of requests, answered
//!   in order.
//! * A request line may be at most [`MAX_LINE_LEN`] (64 KiB) bytes, excluding
//!   the newline. A longer line is discarded without being buffered and answered
//!   with `-32600`; the connection then continues with the next line.
//! * The connection stays open after every error.
//!
//! # Messages
//!
//! ```text
//! --> {"jsonrpc":"2.0","id":1,"method":"mac.add","params":{"mac":"02:00:00:00:00:01","port":1}}
//! <-- {"jsonrpc":"2.0","id":1,"result":{"mac":"02:00:00:00:00:01","port":1,"bridge":0}}
//! --> {"jsonrpc":"2.0","id":2,"method":"mac.add","params":{"mac":"02:00:00:00:00:01","port":"1"}}
//! <-- {"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"invalid params for mac.add: 'port': invalid type: string \"1\", expected an unsigned integer in 0..=65535"}}
//! ```
//!
//! * `jsonrpc` must be `"2.0"`, `method` a string, `id` (if present) a string,
//!   number or null. Any other member is rejected, so a typo such as `parms` is
//!   reported instead of silently ignored.
//! * `params` is a by-name object; it may be omitted (or `null`) when a method
//!   takes none or only optional ones. Positional (array) params are rejected.
//! * A request without `id` is a notification: it is executed but never
//!   answered, not even with an error (except for unparsable or structurally
//!   invalid requests, whose notification-ness cannot be trusted; those are
//!   answered with `"id":null` as JSON-RPC 2.0 prescribes).
//! * Batches (JSON arrays) are not supported and are answered with `-32600`.
//!
//! # Error codes
//!
//! | code | meaning | example message |
//! |---|---|---|
//! | -32700 | parse error: not JSON, or not UTF-8 | `parse error: expected value at line 1 column 3` |
//! | -32600 | invalid request | `invalid request: 'jsonrpc' must be "2.0"`, `invalid request: batch requests are not supported` |
//! | -32601 | method not found | `unknown method 'foo'; known methods: version, ports.list, ...` |
//! | -32602 | invalid params | `invalid params for mac.add: unknown field 'prot', expected one of 'mac', 'port'` |
//! | -32000 | application error from the daemon | `port 7 does not exist` |
//!
//! # Methods
//!
//! | method | params |
//! |---|---|
//! | `version` | none |
//! | `ports.list` | none |
//! | `ports.stats` | optional `{"port": u16}` (absent = every port) |
//! | `stats.get` | none |
//! | `mac.list` | optional `{"bridge": u16}` (absent = every bridge) |
//! | `mac.add` | `{"mac": "aa:bb:cc:dd:ee:ff", "port": u16}` |
//! | `mac.del` | `{"mac": "aa:bb:cc:dd:ee:ff", "bridge"?: u16}` |
//! | `port.security.set` | `{"port": u16, "allowed_macs"?: [mac] or null, "learning"?: bool}`; `allowed_macs` null or absent = any source MAC allowed; `learning` defaults to true |
//! | `shutdown` | none |
//! | `capture.start` | `{"port": u16, "dir"?: "rx"\|"tx"\|"both", "count": 1..=100000000, "snaplen"?: 14..=9216 (256), "path": absolute path, "timeout_secs"?: 1..=86400}`; stitchd writes the pcap file (see [`crate::capture`]) |
//! | `capture.status` | optional `{"port": u16}` |
//! | `capture.stop` | `{"port": u16}` |
//! | `lb.service.add` | an [`LbService`](crate::lb::LbService): `{"name", "vip", "proto"?: "tcp"\|"udp", "port", "port_end"?, "mode"?: "nat"\|"dr", "scheduler"?, "backends"?: [backend], "idle_timeout_secs"?, "linger_secs"?}` |
//! | `lb.service.del` | `{"name": service}` |
//! | `lb.service.list` | none |
//! | `lb.service.get` | `{"name": service}` |
//! | `lb.backend.add` | `{"service", "backend": {"name", "port", "mac", "ip", "soft_ports"?, "weight"?, "rank"?, "state"?}}` |
//! | `lb.backend.del` | `{"service", "name"}` |
//! | `lb.backend.set` | `{"service", "name", "weight"?, "rank"?, "state"?: "active"\|"draining"\|"disabled"}` |
//! | `lb.stats` | optional `{"service": name}` |
//!
//! MAC addresses are exactly six colon-separated pairs of hex digits, case
//! insensitive; responses always use lower case.
//!
//! # Adding a method
//!
//! Add a variant to [`Method`] (with a `#[serde(deny_unknown_fields)]` params
//! struct if it takes params), its name to [`METHODS`], and one arm each to
//! [`Method::parse`], [`Method::name`] and [`Method::params`]. The unit tests
//! check that the four stay in step.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeOwned, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

pub use crate::capture::{CaptureStartParams, CaptureStatusParams, CaptureStopParams};
pub use crate::lb::{
    LbBackendAdd, LbBackendName, LbBackendSet, LbService, LbServiceName, LbStatsParams,
};
pub use crate::stitch_params::*;

/// The only protocol version spoken, sent in every message's `jsonrpc` member.
pub const JSONRPC_VERSION: &str = "2.0";

/// Longest accepted request line in bytes, excluding the `\n`. Bounds the
/// memory one client can make the daemon allocate; the largest real request
/// (`port.security.set` with an allow list) is far below it.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// JSON-RPC 2.0 error codes used by stitchd.
pub mod code {
    /// The line is not JSON (or not UTF-8).
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON is not a valid request object (or the line is too long).
    pub const INVALID_REQUEST: i64 = -32600;
    /// No method of that name.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The method exists but its params are wrong.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The daemon understood the request but could not carry it out.
    pub const APP_ERROR: i64 = -32000;
}

/// Every method name the daemon understands, in the order `--help` and error
/// messages list them.
pub const METHODS: &[&str] = &[
    "version",
    "ports.list",
    "ports.stats",
    "stats.get",
    "mac.list",
    "mac.add",
    "mac.del",
    "port.security.set",
    "shutdown",
    "config.reload",
    "stitch.prepare",
    "stitch.freeze",
    "stitch.commit",
    "stitch.abort",
    "stitch.list",
    "stitch.get",
    "stitch.delete",
    "events.subscribe",
    "port.fault.set",
    "stitch.install",
    "capture.start",
    "capture.status",
    "capture.stop",
    "lb.service.add",
    "lb.service.del",
    "lb.service.list",
    "lb.service.get",
    "lb.backend.add",
    "lb.backend.del",
    "lb.backend.set",
    "lb.stats",
];

/// A JSON-RPC error object. Also the error type of [`Method::parse`] and of
/// handlers, so that a failure anywhere maps to exactly one wire error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    /// One of the [`code`] constants.
    pub code: i64,
    /// Human-readable; says what was wrong and, where it applies, which field.
    pub message: String,
    /// Optional structured detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: String) -> Self {
        RpcError {
            code,
            message,
            data: None,
        }
    }

    /// `-32700`: the line could not be parsed; `detail` is usually serde's
    /// description with line and column.
    pub fn parse_error(detail: impl fmt::Display) -> Self {
        Self::new(code::PARSE_ERROR, format!("parse error: {detail}"))
    }

    /// `-32600`: valid JSON, but not a valid request object.
    pub fn invalid_request(detail: impl fmt::Display) -> Self {
        Self::new(code::INVALID_REQUEST, format!("invalid request: {detail}"))
    }

    /// `-32601`: lists the known methods so a typo is easy to fix.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            code::METHOD_NOT_FOUND,
            format!(
                "unknown method '{}'; known methods: {}",
                truncate(method, 64),
                METHODS.join(", ")
            ),
        )
    }

    /// `-32602`: `detail` should name the param and why it was rejected.
    pub fn invalid_params(method: &str, detail: impl fmt::Display) -> Self {
        Self::new(
            code::INVALID_PARAMS,
            format!("invalid params for {method}: {detail}"),
        )
    }

    /// `-32000`: the handler's own error, passed through verbatim.
    pub fn app(message: impl Into<String>) -> Self {
        Self::new(code::APP_ERROR, message.into())
    }

    /// Attaches structured detail for clients that want more than the message.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// Shortens user-supplied text before echoing it in an error, so a 64 KiB
/// bogus value does not become a 64 KiB error message.
fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max_chars).collect();
        out.push_str("...");
        out
    }
}

/// An Ethernet MAC address, validated at the protocol boundary so handlers
/// never see a malformed one. On the wire it is a string `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address '{input}': {reason}; expected six colon-separated pairs of hex digits like aa:bb:cc:dd:ee:ff")]
pub struct MacParseError {
    input: String,
    reason: String,
}

impl FromStr for Mac {
    type Err = MacParseError;

    /// Accepts exactly `xx:xx:xx:xx:xx:xx` with hex digits in either case.
    /// Other notations (`aabb.ccdd.eeff`, `-` separators, single digits) are
    /// rejected rather than guessed at, so a typo can't address the wrong host.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| MacParseError {
            input: truncate(s, 40),
            reason,
        };
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(fail(format!(
                "found {} colon-separated groups, not 6",
                parts.len()
            )));
        }
        let mut mac = [0u8; 6];
        for (i, (octet, part)) in mac.iter_mut().zip(&parts).enumerate() {
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(fail(format!(
                    "group {} ('{}') is not two hex digits",
                    i + 1,
                    truncate(part, 8)
                )));
            }
            *octet = u8::from_str_radix(part, 16)
                .map_err(|_| fail(format!("group {} is not hex", i + 1)))?;
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MacVisitor;
        impl Visitor<'_> for MacVisitor {
            type Value = Mac;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address string like aa:bb:cc:dd:ee:ff")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Mac, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(MacVisitor)
    }
}

/// Deserializes a `u16` with an error that says what a valid value looks like
/// ("expected an unsigned integer in 0..=65535") instead of serde's terse
/// "expected u16", which means little to someone typing JSON by hand.
struct U16Field(u16);

impl<'de> Deserialize<'de> for U16Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct U16Visitor;
        impl Visitor<'_> for U16Visitor {
            type Value = U16Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an unsigned integer in 0..=65535")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<U16Field, E> {
                u16::try_from(v)
                    .map(U16Field)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<U16Field, E> {
                u16::try_from(v)
                    .map(U16Field)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }
        }
        deserializer.deserialize_u64(U16Visitor)
    }
}

pub(crate) fn de_u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    U16Field::deserialize(d).map(|v| v.0)
}

fn de_opt_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    Option::<U16Field>::deserialize(d).map(|v| v.map(|v| v.0))
}

fn default_true() -> bool {
    true
}

/// Params of `ports.stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortsStatsParams {
    /// Only this port; `None` = every port.
    #[serde(
        default,
        deserialize_with = "de_opt_u16",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<u16>,
}

/// Params of `mac.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MacListParams {
    /// Only this bridge; `None` = every bridge.
    #[serde(
        default,
        deserialize_with = "de_opt_u16",
        skip_serializing_if = "Option::is_none"
    )]
    pub bridge: Option<u16>,
}

/// Params of `mac.add`: a static entry; the bridge is the port's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MacAddParams {
    /// The destination MAC to pin.
    pub mac: Mac,
    /// The port frames to `mac` are sent out of.
    #[serde(deserialize_with = "de_u16")]
    pub port: u16,
}

/// Params of `mac.del`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MacDelParams {
    /// The entry to remove, static or learned.
    pub mac: Mac,
    /// Only from this bridge; `None` = from every bridge.
    #[serde(
        default,
        deserialize_with = "de_opt_u16",
        skip_serializing_if = "Option::is_none"
    )]
    pub bridge: Option<u16>,
}

/// Params of `port.security.set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSecurityParams {
    /// The port whose ingress policy is replaced.
    #[serde(deserialize_with = "de_u16")]
    pub port: u16,
    /// Source MACs accepted on the port. `None` (null or absent) = any source
    /// is allowed; `Some(vec![])` = every frame is dropped.
    #[serde(default)]
    pub allowed_macs: Option<Vec<Mac>>,
    /// Whether source MACs seen on the port are learned; defaults to true.
    #[serde(default = "default_true")]
    pub learning: bool,
}

/// A parsed, validated control request: what to do, with typed params.
///
/// One enum, so the daemon's dispatcher is a single exhaustive `match` and a
/// new method can't be forgotten there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `version`: daemon and DPDK versions.
    Version,
    /// `ports.list`: configured ports with link state.
    PortsList,
    /// `ports.stats`: per-port and per-queue counters.
    PortsStats(PortsStatsParams),
    /// `stats.get`: per-worker counters, drop reasons, slow-path counters.
    StatsGet,
    /// `mac.list`: the MAC table.
    MacList(MacListParams),
    /// `mac.add`: add a static MAC entry.
    MacAdd(MacAddParams),
    /// `mac.del`: remove a MAC entry.
    MacDel(MacDelParams),
    /// `port.security.set`: source-MAC allow list and learning for a port.
    PortSecuritySet(PortSecurityParams),
    /// `shutdown`: stop the daemon.
    Shutdown,
    /// `config.reload`: re-read the TOML, apply changed static MACs and port policies.
    ConfigReload,
    /// `stitch.prepare`: start watching two legs; returns the stitch id.
    StitchPrepare(StitchPrepareParams),
    /// `stitch.freeze`: hold data towards the shell.
    StitchFreeze(StitchIdParams),
    /// `stitch.commit`: check the shell's state and go live.
    StitchCommit(StitchCommitParams),
    /// `stitch.abort`: back to the shell, untouched.
    StitchAbort(StitchIdParams),
    /// `stitch.list`: every stitch.
    StitchList,
    /// `stitch.get`: one stitch in detail.
    StitchGet(StitchIdParams),
    /// `stitch.delete`: remove a stitch now.
    StitchDelete(StitchIdParams),
    /// `events.subscribe`: the connection becomes a stream of event notifications.
    EventsSubscribe,
    /// `port.fault.set`: inject drops, reordering, duplicates on a port's TX.
    PortFaultSet(PortFaultParams),
    /// `stitch.install`: install stitched flows directly (pre-configured stitches,
    /// benchmarks).
    StitchInstall(Box<StitchInstallParams>),
    /// `capture.start`: capture a port's frames into a pcap file stitchd writes.
    CaptureStart(CaptureStartParams),
    /// `capture.status`: captures running or ended, with their counters.
    CaptureStatus(CaptureStatusParams),
    /// `capture.stop`: end a port's capture now.
    CaptureStop(CaptureStopParams),
    /// `lb.service.add`: a balanced service with its backends.
    LbServiceAdd(Box<LbService>),
    /// `lb.service.del`: remove a service (its connections are forgotten).
    LbServiceDel(LbServiceName),
    /// `lb.service.list`: every service as configured.
    LbServiceList,
    /// `lb.service.get`: one service as configured.
    LbServiceGet(LbServiceName),
    /// `lb.backend.add`: a backend joins a service.
    LbBackendAdd(Box<LbBackendAdd>),
    /// `lb.backend.del`: a backend leaves a service.
    LbBackendDel(LbBackendName),
    /// `lb.backend.set`: change a backend's weight, rank or state.
    LbBackendSet(LbBackendSet),
    /// `lb.stats`: connections and counters per service and destination.
    LbStats(LbStatsParams),
}

impl Method {
    /// Resolves a method name and its raw params into a typed request.
    ///
    /// # Errors
    ///
    /// [`code::METHOD_NOT_FOUND`] for an unknown name, [`code::INVALID_PARAMS`]
    /// when params are missing, of the wrong type, or contain unknown fields;
    /// the message names the offending field.
    pub fn parse(method: &str, params: Option<Value>) -> Result<Method, RpcError> {
        Ok(match method {
            "version" => no_params(method, params).map(|()| Method::Version)?,
            "ports.list" => no_params(method, params).map(|()| Method::PortsList)?,
            "ports.stats" => Method::PortsStats(typed_params(method, params)?),
            "stats.get" => no_params(method, params).map(|()| Method::StatsGet)?,
            "mac.list" => Method::MacList(typed_params(method, params)?),
            "mac.add" => Method::MacAdd(typed_params(method, params)?),
            "mac.del" => Method::MacDel(typed_params(method, params)?),
            "port.security.set" => Method::PortSecuritySet(typed_params(method, params)?),
            "shutdown" => no_params(method, params).map(|()| Method::Shutdown)?,
            "config.reload" => no_params(method, params).map(|()| Method::ConfigReload)?,
            "stitch.prepare" => Method::StitchPrepare(typed_params(method, params)?),
            "stitch.freeze" => Method::StitchFreeze(typed_params(method, params)?),
            "stitch.commit" => Method::StitchCommit(typed_params(method, params)?),
            "stitch.abort" => Method::StitchAbort(typed_params(method, params)?),
            "stitch.list" => no_params(method, params).map(|()| Method::StitchList)?,
            "stitch.get" => Method::StitchGet(typed_params(method, params)?),
            "stitch.delete" => Method::StitchDelete(typed_params(method, params)?),
            "events.subscribe" => no_params(method, params).map(|()| Method::EventsSubscribe)?,
            "port.fault.set" => Method::PortFaultSet(typed_params(method, params)?),
            "stitch.install" => Method::StitchInstall(Box::new(typed_params(method, params)?)),
            "capture.start" => Method::CaptureStart(typed_params(method, params)?),
            "capture.status" => Method::CaptureStatus(typed_params(method, params)?),
            "capture.stop" => Method::CaptureStop(typed_params(method, params)?),
            "lb.service.add" => Method::LbServiceAdd(Box::new(typed_params(method, params)?)),
            "lb.service.del" => Method::LbServiceDel(typed_params(method, params)?),
            "lb.service.list" => no_params(method, params).map(|()| Method::LbServiceList)?,
            "lb.service.get" => Method::LbServiceGet(typed_params(method, params)?),
            "lb.backend.add" => Method::LbBackendAdd(Box::new(typed_params(method, params)?)),
            "lb.backend.del" => Method::LbBackendDel(typed_params(method, params)?),
            "lb.backend.set" => Method::LbBackendSet(typed_params(method, params)?),
            "lb.stats" => Method::LbStats(typed_params(method, params)?),
            _ => return Err(RpcError::method_not_found(method)),
        })
    }

    /// The wire name, as listed in [`METHODS`].
    pub fn name(&self) -> &'static str {
        match self {
            Method::Version => "version",
            Method::PortsList => "ports.list",
            Method::PortsStats(_) => "ports.stats",
            Method::StatsGet => "stats.get",
            Method::MacList(_) => "mac.list",
            Method::MacAdd(_) => "mac.add",
            Method::MacDel(_) => "mac.del",
            Method::PortSecuritySet(_) => "port.security.set",
            Method::Shutdown => "shutdown",
            Method::ConfigReload => "config.reload",
            Method::StitchPrepare(_) => "stitch.prepare",
            Method::StitchFreeze(_) => "stitch.freeze",
            Method::StitchCommit(_) => "stitch.commit",
            Method::StitchAbort(_) => "stitch.abort",
            Method::StitchList => "stitch.list",
            Method::StitchGet(_) => "stitch.get",
            Method::StitchDelete(_) => "stitch.delete",
            Method::EventsSubscribe => "events.subscribe",
            Method::PortFaultSet(_) => "port.fault.set",
            Method::StitchInstall(_) => "stitch.install",
            Method::CaptureStart(_) => "capture.start",
            Method::CaptureStatus(_) => "capture.status",
            Method::CaptureStop(_) => "capture.stop",
            Method::LbServiceAdd(_) => "lb.service.add",
            Method::LbServiceDel(_) => "lb.service.del",
            Method::LbServiceList => "lb.service.list",
            Method::LbServiceGet(_) => "lb.service.get",
            Method::LbBackendAdd(_) => "lb.backend.add",
            Method::LbBackendDel(_) => "lb.backend.del",
            Method::LbBackendSet(_) => "lb.backend.set",
            Method::LbStats(_) => "lb.stats",
        }
    }

    /// The params to send for this method, `None` if it takes none. The
    /// inverse of [`Method::parse`], so clients build requests from the same
    /// types the server checks them against.
    pub fn params(&self) -> Option<Value> {
        // Serializing these plain structs cannot fail (string keys, no maps
        // with non-string keys), so `ok()` loses nothing.
        match self {
            Method::Version
            | Method::PortsList
            | Method::StatsGet
            | Method::Shutdown
            | Method::ConfigReload
            | Method::StitchList
            | Method::EventsSubscribe
            | Method::LbServiceList => None,
            Method::LbServiceAdd(p) => serde_json::to_value(p).ok(),
            Method::LbServiceDel(p) | Method::LbServiceGet(p) => serde_json::to_value(p).ok(),
            Method::LbBackendAdd(p) => serde_json::to_value(p).ok(),
            Method::LbBackendDel(p) => serde_json::to_value(p).ok(),
            Method::LbBackendSet(p) => serde_json::to_value(p).ok(),
            Method::LbStats(p) => serde_json::to_value(p).ok(),
            Method::StitchPrepare(p) => serde_json::to_value(p).ok(),
            Method::StitchFreeze(p)
            | Method::StitchAbort(p)
            | Method::StitchGet(p)
            | Method::StitchDelete(p) => serde_json::to_value(p).ok(),
            Method::StitchCommit(p) => serde_json::to_value(p).ok(),
            Method::PortFaultSet(p) => serde_json::to_value(p).ok(),
            Method::StitchInstall(p) => serde_json::to_value(p).ok(),
            Method::PortsStats(p) => serde_json::to_value(p).ok(),
            Method::MacList(p) => serde_json::to_value(p).ok(),
            Method::MacAdd(p) => serde_json::to_value(p).ok(),
            Method::MacDel(p) => serde_json::to_value(p).ok(),
            Method::PortSecuritySet(p) => serde_json::to_value(p).ok(),
            Method::CaptureStart(p) => serde_json::to_value(p).ok(),
            Method::CaptureStatus(p) => serde_json::to_value(p).ok(),
            Method::CaptureStop(p) => serde_json::to_value(p).ok(),
        }
    }
}

/// Accepts absent, `null`, `{}` or `[]` for a method that takes no params.
fn no_params(method: &str, params: Option<Value>) -> Result<(), RpcError> {
    match params {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(map)) => match map.keys().next() {
            None => Ok(()),
            Some(key) => Err(RpcError::invalid_params(
                method,
                format!("{method} takes no params, got '{}'", truncate(key, 40)),
            )),
        },
        Some(Value::Array(a)) if a.is_empty() => Ok(()),
        Some(other) => Err(RpcError::invalid_params(
            method,
            format!("{method} takes no params, got {}", json_kind(&other)),
        )),
    }
}

/// Deserializes by-name params into `T`. Absent or `null` params are treated
/// as `{}`, so a method with only optional params needs none and one with
/// required params reports the first missing field by name.
fn typed_params<T: DeserializeOwned>(method: &str, params: Option<Value>) -> Result<T, RpcError> {
    let value = match params {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            return Err(RpcError::invalid_params(
                method,
                format!(
                    "params must be an object with named fields, got {}",
                    json_kind(&other)
                ),
            ))
        }
    };
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        // serde quotes names with backticks; the rest of our messages use
        // single quotes, which also read better in a terminal.
        let inner = err.into_inner().to_string().replace('`', "'");
        // Unknown-field errors already quote the field; don't name it twice.
        if path == "." || path.is_empty() || inner.contains(&format!("'{path}'")) {
            RpcError::invalid_params(method, inner)
        } else {
            RpcError::invalid_params(method, format!("'{path}': {inner}"))
        }
    })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A request that passed every check, ready for a handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `None` for a notification: execute, but send no response.
    pub id: Option<Value>,
    /// What to do.
    pub method: Method,
}

/// A request line that was rejected before reaching a handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Where to send the error: `None` means the request was a notification and
    /// gets no response; otherwise the request's id, or `null` if it had none
    /// that could be trusted.
    pub id: Option<Value>,
    /// The error to send.
    pub error: RpcError,
}

impl Rejection {
    fn reply(id: Value, error: RpcError) -> Self {
        Rejection {
            id: Some(id),
            error,
        }
    }
}

/// Validates one request line (without its newline) and resolves its method.
///
/// # Errors
///
/// A [`Rejection`] carrying the JSON-RPC error and the id to answer to, if any.
pub fn decode_request(line: &[u8]) -> Result<Request, Rejection> {
    let text = std::str::from_utf8(line).map_err(|e| {
        Rejection::reply(
            Value::Null,
            RpcError::parse_error(format!(
                "request is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            )),
        )
    })?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Rejection::reply(Value::Null, RpcError::parse_error(e)))?;
    let mut obj = match value {
        Value::Object(obj) => obj,
        Value::Array(_) => {
            return Err(Rejection::reply(
                Value::Null,
                RpcError::invalid_request("batch requests are not supported"),
            ))
        }
        other => {
            return Err(Rejection::reply(
                Value::Null,
                RpcError::invalid_request(format!(
                    "a request must be a JSON object, got {}",
                    json_kind(&other)
                )),
            ))
        }
    };

    let id = obj.remove("id");
    if let Some(bad) = id
        .as_ref()
        .filter(|v| !matches!(v, Value::Null | Value::Number(_) | Value::String(_)))
    {
        return Err(Rejection::reply(
            Value::Null,
            RpcError::invalid_request(format!(
                "'id' must be a string, number or null, got {}",
                json_kind(bad)
            )),
        ));
    }
    // Structural errors are always answered, to `null` if there was no id.
    let reply_id = id.clone().unwrap_or(Value::Null);
    let invalid = |msg: String| Rejection::reply(reply_id.clone(), RpcError::invalid_request(msg));

    match obj.remove("jsonrpc") {
        Some(Value::String(v)) if v == JSONRPC_VERSION => {}
        Some(_) => return Err(invalid("'jsonrpc' must be \"2.0\"".into())),
        None => return Err(invalid("missing 'jsonrpc': \"2.0\"".into())),
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(other) => {
            return Err(invalid(format!(
                "'method' must be a string, got {}",
                json_kind(&other)
            )))
        }
        None => return Err(invalid("missing 'method'".into())),
    };
    let params = obj.remove("params");
    if let Some(extra) = obj.keys().next() {
        return Err(invalid(format!(
            "unknown member '{}'; a request has only 'jsonrpc', 'id', 'method' and 'params'",
            truncate(extra, 40)
        )));
    }
    match Method::parse(&method, params) {
        Ok(method) => Ok(Request { id, method }),
        Err(error) => Err(Rejection { id, error }),
    }
}

/// A JSON-RPC response, as sent by the server and read by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The request's id, or `null` if it could not be determined.
    pub id: Value,
    /// Present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Present on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl Response {
    /// A response for `outcome`, which is what a handler returned.
    pub fn new(id: Value, outcome: Result<Value, RpcError>) -> Self {
        let (result, error) = match outcome {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        Response {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            id,
            result,
            error,
        }
    }

    /// The response as one `\n`-terminated line.
    pub fn to_line(&self) -> String {
        // A Value tree always serializes; fall back to a fixed error rather
        // than panicking if that ever changes.
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error: unserializable response"}}"#.to_owned()
        });
        line.push('\n');
        line
    }

    /// The result, or the error the server sent. A response with neither
    /// (which JSON-RPC forbids, but `"result":null` deserializes that way)
    /// yields `null`.
    ///
    /// # Errors
    ///
    /// The server's [`RpcError`].
    pub fn into_result(self) -> Result<Value, RpcError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.result.unwrap_or(Value::Null)),
        }
    }
}

/// One `\n`-terminated request line. `id: None` makes a notification.
pub fn encode_request(id: Option<u64>, method: &str, params: Option<Value>) -> String {
    /// Field order here is the order on the wire, which keeps requests
    /// readable in logs and `socat` sessions.
    #[derive(Serialize)]
    struct Outgoing<'a> {
        jsonrpc: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        method: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        params: Option<Value>,
    }
    let req = Outgoing {
        jsonrpc: JSONRPC_VERSION,
        id,
        method,
        params,
    };
    // Only strings, integers and a Value: serialization cannot fail.
    let mut line = serde_json::to_string(&req).unwrap_or_default();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mac(s: &str) -> Mac {
        s.parse().expect("valid test MAC")
    }

    fn reject(line: &str) -> Rejection {
        decode_request(line.as_bytes()).expect_err("line should be rejected")
    }

    #[test]
    fn mac_parses_either_case_and_prints_lower_case() {
        let m = mac("AA:bb:0C:dd:EE:01");
        assert_eq!(m, Mac([0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x01]));
        assert_eq!(m.to_string(), "aa:bb:0c:dd:ee:01");
        assert_eq!(format!("{m:?}"), "Mac(aa:bb:0c:dd:ee:01)");
    }

    #[test]
    fn mac_rejects_other_notations_with_a_clear_message() {
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa-bb-cc-dd-ee-ff",
            "aabb.ccdd.eeff",
            "a:bb:cc:dd:ee:ff",
            "aaa:bb:cc:dd:ee:ff",
            "gg:bb:cc:dd:ee:ff",
            "+a:bb:cc:dd:ee:ff",
            " aa:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:ff ",
        ] {
            let err = bad.parse::<Mac>().expect_err(bad).to_string();
            assert!(err.contains("invalid MAC address"), "{bad}: {err}");
            assert!(err.contains("aa:bb:cc:dd:ee:ff"), "{bad}: {err}");
        }
        let err = "gg:bb:cc:dd:ee:ff".parse::<Mac>().unwrap_err().to_string();
        assert!(err.contains("group 1 ('gg')"), "{err}");
    }

    #[test]
    fn mac_round_trips_through_serde_as_a_string() {
        let m = mac("02:00:00:00:00:01");
        assert_eq!(serde_json::to_value(m).unwrap(), json!("02:00:00:00:00:01"));
        assert_eq!(
            serde_json::from_value::<Mac>(json!("02:00:00:00:00:01")).unwrap(),
            m
        );
        assert!(serde_json::from_value::<Mac>(json!(5)).is_err());
    }

    #[test]
    fn every_listed_method_parses_and_names_itself() {
        let samples = [
            Method::Version,
            Method::PortsList,
            Method::PortsStats(PortsStatsParams { port: Some(3) }),
            Method::StatsGet,
            Method::MacList(MacListParams { bridge: None }),
            Method::MacAdd(MacAddParams {
                mac: mac("02:00:00:00:00:01"),
                port: 1,
            }),
            Method::MacDel(MacDelParams {
                mac: mac("02:00:00:00:00:01"),
                bridge: Some(2),
            }),
            Method::PortSecuritySet(PortSecurityParams {
                port: 4,
                allowed_macs: Some(vec![mac("02:00:00:00:00:02")]),
                learning: false,
            }),
            Method::Shutdown,
            Method::ConfigReload,
            Method::StitchPrepare(StitchPrepareParams {
                leg_a: LegA {
                    client: "198.18.0.1:40000".parse().unwrap(),
                    shell: "198.18.0.2:7000".parse().unwrap(),
                },
                leg_b: LegB {
                    shell: "[2001:db8::2]:45000".parse().unwrap(),
                    core: "[2001:db8::3]:8000".parse().unwrap(),
                },
                proto: Proto::Tcp,
                teardown: Teardown::C,
                idle_timeout: Some(30),
                linger: None,
            }),
            Method::StitchFreeze(StitchIdParams { id: 1 }),
            Method::StitchCommit(StitchCommitParams {
                id: 1,
                s1: Some(1),
                r1: Some(2),
                s2: Some(3),
                r2: Some(u32::MAX),
                wscale: Some(PerEndpoint {
                    c: 7,
                    a1: 7,
                    a2: 9,
                    b: 7,
                }),
                mss: None,
                timestamps: Some(PerLeg {
                    leg_a: true,
                    leg_b: true,
                }),
                sack: None,
            }),
            Method::StitchAbort(StitchIdParams { id: 2 }),
            Method::StitchList,
            Method::StitchGet(StitchIdParams { id: 3 }),
            Method::StitchDelete(StitchIdParams { id: 4 }),
            Method::EventsSubscribe,
            Method::PortFaultSet(PortFaultParams {
                port: 1,
                drop_ppm: 10_000,
                reorder_ppm: 0,
                duplicate_ppm: 5,
            }),
            Method::StitchInstall(Box::new(StitchInstallParams {
                leg_a: LegA {
                    client: "198.18.0.1:40000".parse().unwrap(),
                    shell: "198.18.0.2:7000".parse().unwrap(),
                },
                leg_b: LegB {
                    shell: "198.18.0.2:45000".parse().unwrap(),
                    core: "198.18.0.3:8000".parse().unwrap(),
                },
                proto: Proto::Udp,
                teardown: Teardown::E,
                macs: PerEndpoint {
                    c: mac("02:00:00:00:00:01"),
                    a1: mac("02:00:00:00:00:02"),
                    a2: mac("02:00:00:00:00:02"),
                    b: mac("02:00:00:00:00:03"),
                },
                ports: EndPorts { c: 0, b: 1 },
                s1: 1,
                r1: 2,
                s2: 3,
                r2: 4,
                wscale: None,
                ts: Some(TsDeltas {
                    c_to_b: 5,
                    b_to_c: 6,
                }),
                sack: None,
                idle_timeout: None,
                linger: None,
                count: Some(10),
            })),
            Method::CaptureStart(CaptureStartParams {
                port: 1,
                dir: crate::capture::CaptureDir::Rx,
                count: 10_000,
                snaplen: 1514,
                path: "/tmp/c.pcap".into(),
                timeout_secs: Some(5),
            }),
            Method::CaptureStatus(CaptureStatusParams { port: Some(1) }),
            Method::CaptureStop(CaptureStopParams { port: 1 }),
            Method::LbServiceAdd(Box::new(
                serde_json::from_value(serde_json::json!({
                    "name": "web", "vip": "198.18.100.1", "port": 80, "scheduler": "rr",
                    "backends": [{"name": "b1", "port": 1, "mac": "02:00:00:00:00:01",
                                  "ip": "198.18.0.11", "soft_ports": [8080]}]
                }))
                .unwrap(),
            )),
            Method::LbServiceDel(LbServiceName { name: "web".into() }),
            Method::LbServiceList,
            Method::LbServiceGet(LbServiceName { name: "web".into() }),
            Method::LbBackendAdd(Box::new(LbBackendAdd {
                service: "web".into(),
                backend: serde_json::from_value(serde_json::json!({
                    "name": "b2", "port": 2, "mac": "02:00:00:00:00:02", "ip": "198.18.0.12"
                }))
                .unwrap(),
            })),
            Method::LbBackendDel(LbBackendName {
                service: "web".into(),
                name: "b2".into(),
            }),
            Method::LbBackendSet(LbBackendSet {
                service: "web".into(),
                name: "b1".into(),
                weight: Some(3),
                rank: None,
                state: Some(crate::lb::BackendState::Draining),
            }),
            Method::LbStats(LbStatsParams { service: None }),
        ];
        let names: Vec<&str> = samples.iter().map(Method::name).collect();
        assert_eq!(names, METHODS, "METHODS and Method::name are out of step");
        for m in samples {
            assert_eq!(Method::parse(m.name(), m.params()).unwrap(), m);
        }
    }

    #[test]
    fn no_param_methods_accept_absent_null_and_empty_params() {
        for name in ["version", "ports.list", "stats.get", "shutdown"] {
            for params in [None, Some(json!(null)), Some(json!({})), Some(json!([]))] {
                assert!(
                    Method::parse(name, params.clone()).is_ok(),
                    "{name} {params:?}"
                );
            }
            let err = Method::parse(name, Some(json!({"x": 1}))).unwrap_err();
            assert_eq!(err.code, code::INVALID_PARAMS);
            assert!(
                err.message.contains("takes no params, got 'x'"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn optional_params_default_when_absent() {
        assert_eq!(
            Method::parse("ports.stats", None).unwrap(),
            Method::PortsStats(PortsStatsParams { port: None })
        );
        assert_eq!(
            Method::parse("ports.stats", Some(json!({"port": 7}))).unwrap(),
            Method::PortsStats(PortsStatsParams { port: Some(7) })
        );
        assert_eq!(
            Method::parse("mac.list", Some(json!({"bridge": null}))).unwrap(),
            Method::MacList(MacListParams { bridge: None })
        );
        assert_eq!(
            Method::parse("mac.del", Some(json!({"mac": "02:00:00:00:00:0A"}))).unwrap(),
            Method::MacDel(MacDelParams {
                mac: mac("02:00:00:00:00:0a"),
                bridge: None
            })
        );
    }

    #[test]
    fn port_security_defaults_to_any_source_and_learning_on() {
        assert_eq!(
            Method::parse("port.security.set", Some(json!({"port": 1}))).unwrap(),
            Method::PortSecuritySet(PortSecurityParams {
                port: 1,
                allowed_macs: None,
                learning: true
            })
        );
        let m = Method::parse(
            "port.security.set",
            Some(json!({"port": 1, "allowed_macs": null, "learning": false})),
        )
        .unwrap();
        assert_eq!(
            m,
            Method::PortSecuritySet(PortSecurityParams {
                port: 1,
                allowed_macs: None,
                learning: false
            })
        );
        // Round trip keeps "any" as an explicit null.
        assert_eq!(m.params().unwrap()["allowed_macs"], Value::Null);
    }

    fn params_err(method: &str, params: Value) -> String {
        let err = Method::parse(method, Some(params)).unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMS, "{}", err.message);
        assert!(
            err.message
                .starts_with(&format!("invalid params for {method}: ")),
            "{}",
            err.message
        );
        err.message
    }

    #[test]
    fn invalid_params_name_the_field_and_the_reason() {
        let m = params_err("mac.add", json!({"mac": "02:00:00:00:00:01", "port": "1"}));
        assert!(
            m.contains("'port'") && m.contains("unsigned integer"),
            "{m}"
        );
        let m = params_err(
            "mac.add",
            json!({"mac": "02:00:00:00:00:01", "port": 70000}),
        );
        assert!(
            m.contains("'port'") && m.contains("70000") && m.contains("0..=65535"),
            "{m}"
        );
        let m = params_err("mac.add", json!({"mac": "02:00:00:00:00:01", "port": -1}));
        assert!(m.contains("'port'") && m.contains("-1"), "{m}");
        let m = params_err("mac.add", json!({"mac": "nope", "port": 1}));
        assert!(
            m.contains("'mac'") && m.contains("invalid MAC address 'nope'"),
            "{m}"
        );
        let m = params_err("mac.add", json!({"mac": "02:00:00:00:00:01"}));
        assert!(m.contains("missing field 'port'"), "{m}");
        let m = params_err(
            "port.security.set",
            json!({"port": 1, "allowed_macs": ["02:00:00:00:00:01", "x"]}),
        );
        assert!(m.contains("'allowed_macs[1]'"), "{m}");
        let m = params_err("port.security.set", json!({"port": 1, "learning": "yes"}));
        assert!(m.contains("'learning'") && m.contains("boolean"), "{m}");
        let m = params_err("mac.add", json!(["02:00:00:00:00:01", 1]));
        assert!(m.contains("must be an object"), "{m}");
    }

    #[test]
    fn unknown_param_fields_are_rejected_for_every_method() {
        let m = params_err("mac.add", json!({"mac": "02:00:00:00:00:01", "prot": 1}));
        assert!(
            m == "invalid params for mac.add: unknown field 'prot', expected 'mac' or 'port'",
            "{m}"
        );
        for (method, params) in [
            ("ports.stats", json!({"prot": 1})),
            ("mac.list", json!({"bridgee": 1})),
            ("mac.del", json!({"mac": "02:00:00:00:00:01", "port": 1})),
            ("port.security.set", json!({"port": 1, "allow": []})),
        ] {
            let m = params_err(method, params);
            assert!(m.contains("unknown field"), "{m}");
        }
    }

    #[test]
    fn unknown_method_lists_the_known_ones() {
        let err = Method::parse("foo", None).unwrap_err();
        assert_eq!(err.code, code::METHOD_NOT_FOUND);
        assert!(err
            .message
            .starts_with("unknown method 'foo'; known methods: version, ports.list"));
        assert!(err.message.contains("port.security.set"));
    }

    #[test]
    fn decodes_a_request_and_a_notification() {
        let r = decode_request(
            br#"{"jsonrpc":"2.0","id":"a","method":"ports.stats","params":{"port":2}}"#,
        )
        .unwrap();
        assert_eq!(r.id, Some(json!("a")));
        assert_eq!(
            r.method,
            Method::PortsStats(PortsStatsParams { port: Some(2) })
        );
        let n = decode_request(br#"{"jsonrpc":"2.0","method":"version"}"#).unwrap();
        assert_eq!(n.id, None);
    }

    #[test]
    fn parse_errors_use_32700_with_serdes_description() {
        let r = reject("{]");
        assert_eq!(r.id, Some(Value::Null));
        assert_eq!(r.error.code, code::PARSE_ERROR);
        assert!(r.error.message.starts_with("parse error: "));
        assert!(
            r.error.message.contains("line 1 column 2"),
            "{}",
            r.error.message
        );
        let r = decode_request(b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\"}").unwrap_err();
        assert_eq!(r.error.code, code::PARSE_ERROR);
        assert!(r.error.message.contains("UTF-8"), "{}", r.error.message);
    }

    #[test]
    fn structural_errors_use_32600_and_say_what_is_wrong() {
        let cases = [
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"version"}]"#,
                "batch requests are not supported",
            ),
            ("42", "must be a JSON object"),
            (r#"{"id":1,"method":"version"}"#, "missing 'jsonrpc'"),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"version"}"#,
                "'jsonrpc' must be \"2.0\"",
            ),
            (r#"{"jsonrpc":"2.0","id":1}"#, "missing 'method'"),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
                "'method' must be a string",
            ),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"version"}"#,
                "'id' must be",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"version","parms":{}}"#,
                "unknown member 'parms'",
            ),
        ];
        for (line, want) in cases {
            let r = reject(line);
            assert_eq!(r.error.code, code::INVALID_REQUEST, "{line}");
            assert!(
                r.error.message.contains(want),
                "{line}: {}",
                r.error.message
            );
            assert!(
                r.id.is_some(),
                "{line}: structural errors are always answered"
            );
        }
        assert_eq!(reject(r#"{"id":7,"method":"version"}"#).id, Some(json!(7)));
    }

    #[test]
    fn method_errors_in_notifications_are_not_answered() {
        let r = reject(r#"{"jsonrpc":"2.0","method":"foo"}"#);
        assert_eq!(r.error.code, code::METHOD_NOT_FOUND);
        assert_eq!(r.id, None);
        let r = reject(r#"{"jsonrpc":"2.0","id":3,"method":"mac.add","params":{}}"#);
        assert_eq!(r.error.code, code::INVALID_PARAMS);
        assert_eq!(r.id, Some(json!(3)));
    }

    #[test]
    fn error_constructors_use_the_standard_codes() {
        assert_eq!(RpcError::parse_error("x").code, -32700);
        assert_eq!(RpcError::invalid_request("x").code, -32600);
        assert_eq!(RpcError::method_not_found("x").code, -32601);
        assert_eq!(RpcError::invalid_params("m", "x").code, -32602);
        let app = RpcError::app("port 7 does not exist");
        assert_eq!(
            (app.code, app.message.as_str()),
            (-32000, "port 7 does not exist")
        );
    }

    #[test]
    fn responses_round_trip_as_single_lines() {
        let ok = Response::new(json!(1), Ok(json!({"a": 1})));
        let line = ok.to_line();
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        assert_eq!(
            line,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"a\":1}}\n"
        );
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(back.into_result().unwrap(), json!({"a": 1}));

        let err = Response::new(Value::Null, Err(RpcError::app("boom")));
        let line = err.to_line();
        assert_eq!(
            line,
            "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32000,\"message\":\"boom\"}}\n"
        );
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(back.into_result().unwrap_err().message, "boom");
    }

    #[test]
    fn encoded_requests_decode_back() {
        let m = Method::MacAdd(MacAddParams {
            mac: mac("02:00:00:00:00:01"),
            port: 9,
        });
        let line = encode_request(Some(5), m.name(), m.params());
        let r = decode_request(line.trim_end().as_bytes()).unwrap();
        assert_eq!(
            r,
            Request {
                id: Some(json!(5)),
                method: m
            }
        );
        let line = encode_request(None, "version", None);
        assert_eq!(line, "{\"jsonrpc\":\"2.0\",\"method\":\"version\"}\n");
    }
}
