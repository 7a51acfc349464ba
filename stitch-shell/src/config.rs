//! The shell's configuration (TOML, unknown keys refused) and the bypass policy.
//!
//! ```toml
//! [switch]
//! address = "198.18.0.254:4790"   # optional; absent: broadcast probe (255.255.255.255 / ff02::1)
//! key_id = 7
//! key = "<64 hex digits>"
//! agent_listen = "0.0.0.0:4791"   # teardown notices arrive here
//! status_socket = "/run/stitch-shell/status.sock"   # "" disables it
//! probe_timeout_ms = 500
//! reprobe_secs = 30
//! check_interfaces = true         # figure 5B step 542; false: trust the topology
//! drain_timeout_ms = 5000         # hand-off gives up if the relay does not drain
//! heartbeat_secs = 5              # Heartbeat for live stitches (0: never)
//! max_handoff_attempts = 5        # per connection; then it stays relayed for good
//! handoff_backoff_ms = 50         # wait after a failed attempt, doubled each time ...
//! handoff_backoff_max_ms = 5000   # ... up to this
//! handoff_ready_wait_ms = 3000    # prepared, how long to wait for both legs to be seen
//! provoke_idle_legs = true        # keepalive probes make a quiet leg send an ACK
//! log_format = "text"             # or "json": one object per line (--log-json)
//! log_level = "info"              # error | warn | info | debug | trace | off
//!
//! [[mapping]]
//! listen = "198.18.0.2:7000"
//! core = "198.18.0.3:8000"
//! bypass = { policy = "after_bytes", value = 1048576, ports = "1024-65535" }
//! teardown = "4E"                 # 4B | 4C | 4D | 4E
//! mss = 1400                      # optional TCP_MAXSEG on both legs
//! core_agent_port = 4791          # where 4D notices go (core IP, this port)
//! half_close_secs = 120           # after one FIN seen, free the sockets this late at most
//! idle_timeout_secs = 300         # optional, passed to the switch at Prepare
//! linger_secs = 10                # optional, passed to the switch at Prepare
//! ```
//!
//! The `[switch]` keys other than `address`, `key_id`, `key` may also be written at top
//! level (before any table); giving one in both places is an error.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_proto::Teardown;
use serde::Deserialize;
use stitch_core::{names, AgentKeys, AGENT_PORT};
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// TOML syntax, an unknown key, a missing key or a wrong type.
    #[error("{0}")]
    Parse(String),
    /// A value that parses but makes no sense; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// The file could not be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        error: String,
    },
}

/// When a relayed connection is handed to the switch (seed 001: shell load, connection
/// age by time or packets, or right after set-up).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// As soon as both legs are connected.
    Immediate,
    /// Once the shell relayed this many bytes (both directions together).
    AfterBytes(u64),
    /// Once the shell did this many reads (both directions). A read is counted as one
    /// segment: an approximation, one read may return several coalesced segments, so
    /// real segment counts are higher.
    AfterPackets(u64),
    /// Once the connection is this many seconds old.
    AfterSeconds(u64),
    /// While the shell process uses more than this percentage of one CPU (sampled each
    /// second); the decision is made per connection while it is relayed.
    WhenLoadAbove(f64),
    /// Never: the shell relays everything.
    Never,
}

/// What the policy looks at for one connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnSample {
    /// Bytes relayed so far, both directions.
    pub bytes: u64,
    /// Reads done so far, both directions (the packet approximation).
    pub reads: u64,
    /// Time since both legs were connected.
    pub age: Duration,
    /// CPU use of the shell process, percent of one CPU.
    pub cpu_percent: f64,
}

/// A mapping's bypass rule: the policy and which client ports qualify.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bypass {
    /// When to hand off.
    pub policy: Policy,
    /// Inclusive client source port range that qualifies; `None`: every port.
    pub ports: Option<(u16, u16)>,
}

impl Bypass {
    /// Whether a connection from this client port may ever be handed off.
    pub fn qualifies(&self, client_port: u16) -> bool {
        !matches!(self.policy, Policy::Never)
            && self
                .ports
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&client_port))
    }

    /// Whether the policy says "hand off now".
    pub fn triggers(&self, s: &ConnSample) -> bool {
        match self.policy {
            Policy::Immediate => true,
            Policy::AfterBytes(n) => s.bytes >= n,
            Policy::AfterPackets(n) => s.reads >= n,
            Policy::AfterSeconds(n) => s.age >= Duration::from_secs(n),
            Policy::WhenLoadAbove(p) => s.cpu_percent > p,
            Policy::Never => false,
        }
    }

    /// Short description, for status output.
    pub fn describe(&self) -> String {
        let p = match self.policy {
            Policy::Immediate => "immediate".to_string(),
            Policy::AfterBytes(n) => format!("after_bytes {n}"),
            Policy::AfterPackets(n) => format!("after_packets {n}"),
            Policy::AfterSeconds(n) => format!("after_seconds {n}"),
            Policy::WhenLoadAbove(p) => format!("when_load_above {p}%"),
            Policy::Never => "never".to_string(),
        };
        match self.ports {
            Some((lo, hi)) => format!("{p}, client ports {lo}-{hi}"),
            None => p,
        }
    }
}

/// One relayed service.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    /// A1: where the shell accepts clients (port 0: any, for tests).
    pub listen: SocketAddr,
    /// B: where it connects for each client.
    pub core: SocketAddr,
    /// When to hand off.
    pub bypass: Bypass,
    /// Teardown variant asked for at Prepare.
    pub teardown: Teardown,
    /// TCP_MAXSEG for both legs.
    pub mss: Option<u16>,
    /// The core agent's UDP port (4D notices go to the core's IP, this port).
    pub core_agent_port: u16,
    /// Longest time the silenced sockets are kept after the first FIN was seen.
    pub half_close: Duration,
    /// Idle timeout passed to the switch.
    pub idle_timeout_s: Option<u32>,
    /// Linger passed to the switch.
    pub linger_s: Option<u32>,
}

/// How often and how patiently the shell tries to hand a connection off.
///
/// An attempt starts with Prepare and ends committed, failed (refused, drain timeout,
/// ...) or deferred: the switch did not see both legs within `ready_wait`, so nothing
/// was frozen and the stitch was aborted. After a failed or deferred attempt the
/// connection waits `backoff`, doubled after each one up to `backoff_max`; after
/// `max_attempts` it is relayed to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffConfig {
    /// Attempts per connection (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failed attempt.
    pub backoff: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// How long a prepared stitch waits for both legs to be seen.
    pub ready_wait: Duration,
    /// Keepalive probes on a prepared connection's sockets, so that a quiet end sends
    /// an ACK the switch can see.
    pub provoke_idle_legs: bool,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        HandoffConfig {
            max_attempts: 5,
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            ready_wait: Duration::from_secs(3),
            provoke_idle_legs: true,
        }
    }
}

impl HandoffConfig {
    /// The wait after the `failures`-th failed or deferred attempt (1-based):
    /// `backoff * 2^(failures - 1)`, at most `backoff_max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.backoff
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `time LEVEL target: message key=value ...`.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct ShellConfig {
    /// The switch's service address; `None`: broadcast probe.
    pub switch: Option<SocketAddr>,
    /// Key id of the matching scope.
    pub key_id: u32,
    /// The key, 64 hex digits (checked).
    pub key: String,
    /// Where teardown notices arrive.
    pub agent_listen: SocketAddr,
    /// Unix socket for `--status`; `None`: none.
    pub status_socket: Option<PathBuf>,
    /// How long to wait for a ProbeReply.
    pub probe_timeout: Duration,
    /// How often to count interfaces and probe again.
    pub reprobe: Duration,
    /// Whether to count interfaces (figure 5B, step 542).
    pub check_interfaces: bool,
    /// How long the relay may take to drain during a hand-off.
    pub drain_timeout: Duration,
    /// Heartbeat period for live stitches; zero: none.
    pub heartbeat: Duration,
    /// Hand-off attempts, back-off and readiness.
    pub handoff: HandoffConfig,
    /// Log line format.
    pub log_format: LogFormat,
    /// Most verbose level logged.
    pub log_level: log::LevelFilter,
    /// Where interfaces are listed (`/sys/class/net`).
    pub sysfs_net: PathBuf,
    /// Where the routing tables are (`/proc/net`).
    pub proc_net: PathBuf,
    /// The relayed services.
    pub mappings: Vec<Mapping>,
}

impl ShellConfig {
    /// The signing keys.
    ///
    /// # Panics
    /// Never: the key was checked when the configuration was parsed.
    pub fn keys(&self) -> AgentKeys {
        match AgentKeys::from_hex(self.key_id, &self.key) {
            Ok(k) => k,
            Err(e) => unreachable!("key checked at parse time: {e}"),
        }
    }

    /// Parses and validates TOML text.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] for syntax, unknown or missing keys, [`ConfigError::Invalid`]
    /// for values that make no sense.
    pub fn from_toml(text: &str) -> Result<ShellConfig, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        raw.validate()
    }

    /// Reads and parses a configuration file.
    ///
    /// # Errors
    /// As [`ShellConfig::from_toml`], plus [`ConfigError::Read`].
    pub fn load(path: &Path) -> Result<ShellConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
        ShellConfig::from_toml(&text)
    }
}

/// Declares a struct with the keys that may be given in `[switch]` or at top level,
/// plus its own fields (serde's `flatten` does not mix with `deny_unknown_fields`).
macro_rules! with_common {
    ($name:ident { $($(#[$m:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($(#[$m])* $field: $ty,)*
            agent_listen: Option<SocketAddr>,
            status_socket: Option<String>,
            probe_timeout_ms: Option<u64>,
            reprobe_secs: Option<u64>,
            check_interfaces: Option<bool>,
            drain_timeout_ms: Option<u64>,
            heartbeat_secs: Option<u64>,
            max_handoff_attempts: Option<u32>,
            handoff_backoff_ms: Option<u64>,
            handoff_backoff_max_ms: Option<u64>,
            handoff_ready_wait_ms: Option<u64>,
            provoke_idle_legs: Option<bool>,
            log_format: Option<String>,
            log_level: Option<String>,
            sysfs_net: Option<PathBuf>,
            proc_net: Option<PathBuf>,
        }
    };
}

with_common!(RawSwitch {
    address: Option<SocketAddr>,
    key_id: u32,
    key: String,
});

with_common!(Raw {
    switch: RawSwitch,
    #[serde(default)]
    mapping: Vec<RawMapping>,
});

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum PolicyKind {
    Immediate,
    AfterBytes,
    AfterPackets,
    AfterSeconds,
    WhenLoadAbove,
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBypass {
    policy: PolicyKind,
    value: Option<f64>,
    ports: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    listen: SocketAddr,
    core: SocketAddr,
    bypass: Option<RawBypass>,
    teardown: Option<String>,
    mss: Option<u16>,
    core_agent_port: Option<u16>,
    half_close_secs: Option<u64>,
    idle_timeout_secs: Option<u32>,
    linger_secs: Option<u32>,
}

fn invalid(s: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(s.into())
}

/// Parses "lo-hi" or a single port.
fn parse_ports(s: &str) -> Result<(u16, u16), ConfigError> {
    let bad = || invalid(format!("ports {s:?}: want \"LOW-HIGH\" or \"PORT\""));
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(invalid(format!("ports {s:?}: low above high")));
    }
    Ok((lo, hi))
}

fn bypass_of(raw: Option<RawBypass>, i: usize) -> Result<Bypass, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Bypass {
            policy: Policy::Never,
            ports: None,
        });
    };
    let need = |what: &str| -> Result<f64, ConfigError> {
        let v = raw.value.ok_or_else(|| {
            invalid(format!(
                "mapping {i}: bypass policy {:?} needs value ({what})",
                raw.policy
            ))
        })?;
        if !(v >= 0.0 && v.is_finite()) {
            return Err(invalid(format!("mapping {i}: bypass value must be >= 0")));
        }
        Ok(v)
    };
    let whole = |what: &str| -> Result<u64, ConfigError> {
        let v = need(what)?;
        if v.fract() != 0.0 {
            return Err(invalid(format!(
                "mapping {i}: bypass value must be a whole number of {what}"
            )));
        }
        Ok(v as u64)
    };
    let policy = match raw.policy {
        PolicyKind::Immediate => Policy::Immediate,
        PolicyKind::Never => Policy::Never,
        PolicyKind::AfterBytes => Policy::AfterBytes(whole("bytes")?),
        PolicyKind::AfterPackets => Policy::AfterPackets(whole("packets")?),
        PolicyKind::AfterSeconds => Policy::AfterSeconds(whole("seconds")?),
        PolicyKind::WhenLoadAbove => Policy::WhenLoadAbove(need("CPU percent")?),
    };
    if raw.value.is_some() && matches!(raw.policy, PolicyKind::Immediate | PolicyKind::Never) {
        return Err(invalid(format!(
            "mapping {i}: bypass policy {:?} takes no value",
            raw.policy
        )));
    }
    Ok(Bypass {
        policy,
        ports: raw.ports.as_deref().map(parse_ports).transpose()?,
    })
}

impl Raw {
    fn validate(self) -> Result<ShellConfig, ConfigError> {
        AgentKeys::from_hex(self.switch.key_id, &self.switch.key)
            .map_err(|e| invalid(format!("switch.key: {e}")))?;
        let (a, b) = (&self.switch, &self);
        macro_rules! pick {
            ($f:ident) => {
                match (a.$f.clone(), b.$f.clone()) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(concat!(
                            stringify!($f),
                            " given both in [switch] and at top level"
                        )))
                    }
                    (x, y) => x.or(y),
                }
            };
        }
        let agent_listen = pick!(agent_listen)
            .unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), AGENT_PORT));
        let status_socket = match pick!(status_socket) {
            None => Some(PathBuf::from("/run/stitch-shell/status.sock")),
            Some(s) if s.is_empty() => None,
            Some(s) => Some(PathBuf::from(s)),
        };
        let probe_timeout_ms = pick!(probe_timeout_ms).unwrap_or(500);
        let reprobe_secs = pick!(reprobe_secs).unwrap_or(30);
        if reprobe_secs == 0 {
            return Err(invalid("reprobe_secs must be at least 1"));
        }
        let check_interfaces = pick!(check_interfaces).unwrap_or(true);
        let drain_timeout_ms = pick!(drain_timeout_ms).unwrap_or(5000);
        let heartbeat_secs = pick!(heartbeat_secs).unwrap_or(5);
        let d = HandoffConfig::default();
        let ms = Duration::from_millis;
        let handoff = HandoffConfig {
            max_attempts: pick!(max_handoff_attempts).unwrap_or(d.max_attempts),
            backoff: pick!(handoff_backoff_ms).map_or(d.backoff, ms),
            backoff_max: pick!(handoff_backoff_max_ms).map_or(d.backoff_max, ms),
            ready_wait: pick!(handoff_ready_wait_ms).map_or(d.ready_wait, ms),
            provoke_idle_legs: pick!(provoke_idle_legs).unwrap_or(d.provoke_idle_legs),
        };
        if handoff.max_attempts == 0 {
            return Err(invalid(
                "max_handoff_attempts must be at least 1 (bypass policy \"never\" relays everything)",
            ));
        }
        if handoff.backoff.is_zero() || handoff.backoff_max < handoff.backoff {
            return Err(invalid(
                "handoff_backoff_ms must be at least 1 and at most handoff_backoff_max_ms",
            ));
        }
        let log_format = match pick!(log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(format!(
                    "log_format {other:?}: want \"text\" or \"json\""
                )))
            }
        };
        let log_level = match pick!(log_level) {
            None => log::LevelFilter::Info,
            Some(l) => l.parse().map_err(|_| {
                invalid(format!(
                    "log_level {l:?}: want error, warn, info, debug, trace or off"
                ))
            })?,
        };
        let sysfs_net = pick!(sysfs_net).unwrap_or_else(|| "/sys/class/net".into());
        let proc_net = pick!(proc_net).unwrap_or_else(|| "/proc/net".into());
        if self.mapping.is_empty() {
            return Err(invalid("no [[mapping]]: nothing to relay"));
        }
        let mut mappings = Vec::new();
        for (i, m) in self.mapping.into_iter().enumerate() {
            let teardown = match &m.teardown {
                None => Teardown::E,
                Some(t) => names::parse_variant(t).ok_or_else(|| {
                    invalid(format!(
                        "mapping {i}: teardown {t:?}: want 4B, 4C, 4D or 4E"
                    ))
                })?,
            };
            if let Some(mss) = m.mss {
                if !(88..=32767).contains(&mss) {
                    return Err(invalid(format!(
                        "mapping {i}: mss {mss} outside 88..=32767"
                    )));
                }
            }
            if m.core.ip().is_unspecified() || m.core.port() == 0 {
                return Err(invalid(format!(
                    "mapping {i}: core {} is not an address to connect to",
                    m.core
                )));
            }
            if m.listen.is_ipv4() != m.core.is_ipv4() {
                return Err(invalid(format!(
                    "mapping {i}: listen {} and core {} are of different families (a stitch joins legs of one family)",
                    m.listen, m.core
                )));
            }
            mappings.push(Mapping {
                listen: m.listen,
                core: m.core,
                bypass: bypass_of(m.bypass, i)?,
                teardown,
                mss: m.mss,
                core_agent_port: m.core_agent_port.unwrap_or(AGENT_PORT),
                half_close: Duration::from_secs(m.half_close_secs.unwrap_or(120)),
                idle_timeout_s: m.idle_timeout_secs,
                linger_s: m.linger_secs,
            });
        }
        Ok(ShellConfig {
            switch: self.switch.address,
            key_id: self.switch.key_id,
            key: self.switch.key,
            agent_listen,
            status_socket,
            probe_timeout: Duration::from_millis(probe_timeout_ms),
            reprobe: Duration::from_secs(reprobe_secs),
            check_interfaces,
            drain_timeout: Duration::from_millis(drain_timeout_ms),
            heartbeat: Duration::from_secs(heartbeat_secs),
            handoff,
            log_format,
            log_level,
            sysfs_net,
            proc_net,
            mappings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn cfg(mapping: &str) -> Result<ShellConfig, ConfigError> {
        ShellConfig::from_toml(&format!(
            "[switch]\nkey_id = 1\nkey = \"{KEY}\"\n\n[[mapping]]\n{mapping}\n"
        ))
    }

    fn err(r: Result<ShellConfig, ConfigError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn full_example_parses_with_defaults() {
        let c = ShellConfig::from_toml(&format!(
            r#"
[switch]
address = "198.18.0.254:4790"
key_id = 7
key = "{KEY}"
agent_listen = "0.0.0.0:4791"
status_socket = "/run/stitch-shell/status.sock"
probe_timeout_ms = 500
reprobe_secs = 30

[[mapping]]
listen = "198.18.0.2:7000"
core = "198.18.0.3:8000"
bypass = {{ policy = "after_bytes", value = 1048576, ports = "1024-65535" }}
teardown = "4D"
mss = 1400
"#
        ))
        .unwrap();
        assert_eq!(c.switch, Some("198.18.0.254:4790".parse().unwrap()));
        assert_eq!(c.key_id, 7);
        assert_eq!(c.probe_timeout, Duration::from_millis(500));
        let m = &c.mappings[0];
        assert_eq!(m.bypass.policy, Policy::AfterBytes(1 << 20));
        assert_eq!(m.bypass.ports, Some((1024, 65535)));
        assert_eq!(m.teardown, Teardown::D);
        assert_eq!(m.mss, Some(1400));
        assert_eq!(m.core_agent_port, 4791);
        let d = cfg("listen = \"198.18.0.2:7000\"\ncore = \"198.18.0.3:8000\"").unwrap();
        assert_eq!(d.mappings[0].teardown, Teardown::E);
        assert_eq!(d.mappings[0].bypass.policy, Policy::Never);
        assert_eq!(d.switch, None);
        assert_eq!(d.agent_listen, "0.0.0.0:4791".parse().unwrap());
        assert!(d.check_interfaces);
    }

    #[test]
    fn handoff_and_log_keys_parse_with_defaults_and_checks() {
        let base = "listen = \"198.18.0.2:7000\"\ncore = \"198.18.0.3:8000\"";
        let d = cfg(base).unwrap();
        assert_eq!(d.handoff, HandoffConfig::default());
        assert_eq!(d.handoff.max_attempts, 5);
        assert_eq!(
            (d.log_format, d.log_level),
            (LogFormat::Text, log::LevelFilter::Info)
        );
        let c = ShellConfig::from_toml(&format!(
            "max_handoff_attempts = 2\nhandoff_backoff_ms = 10\nhandoff_backoff_max_ms = 30\nhandoff_ready_wait_ms = 0\nprovoke_idle_legs = false\nlog_format = \"json\"\nlog_level = \"debug\"\n[switch]\nkey_id = 1\nkey = \"{KEY}\"\n[[mapping]]\n{base}\n"
        ))
        .unwrap();
        assert_eq!(
            c.handoff,
            HandoffConfig {
                max_attempts: 2,
                backoff: Duration::from_millis(10),
                backoff_max: Duration::from_millis(30),
                ready_wait: Duration::ZERO,
                provoke_idle_legs: false,
            }
        );
        assert_eq!(
            (c.log_format, c.log_level),
            (LogFormat::Json, log::LevelFilter::Debug)
        );
        let top = |k: &str| {
            err(ShellConfig::from_toml(&format!(
                "{k}\n[switch]\nkey_id = 1\nkey = \"{KEY}\"\n[[mapping]]\n{base}\n"
            )))
        };
        assert!(top("max_handoff_attempts = 0").contains("at least 1"));
        assert!(top("handoff_backoff_ms = 0").contains("handoff_backoff_ms"));
        assert!(top("handoff_backoff_ms = 100\nhandoff_backoff_max_ms = 99").contains("at most"));
        assert!(top("log_format = \"xml\"").contains("xml"));
        assert!(top("log_level = \"loud\"").contains("loud"));
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let h = HandoffConfig {
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            ..HandoffConfig::default()
        };
        let ms: Vec<u128> = (1..=6).map(|n| h.delay(n).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 500, 500]);
        assert_eq!(h.delay(0), Duration::from_millis(50));
        assert_eq!(h.delay(u32::MAX), Duration::from_millis(500), "no overflow");
    }

    #[test]
    fn top_level_common_keys_work_but_not_twice() {
        let ok = ShellConfig::from_toml(&format!(
            "status_socket = \"\"\n[switch]\nkey_id = 1\nkey = \"{KEY}\"\n[[mapping]]\nlisten = \"127.0.0.1:1\"\ncore = \"127.0.0.1:2\"\n"
        ))
        .unwrap();
        assert_eq!(ok.status_socket, None);
        let twice = ShellConfig::from_toml(&format!(
            "reprobe_secs = 3\n[switch]\nreprobe_secs = 4\nkey_id = 1\nkey = \"{KEY}\"\n[[mapping]]\nlisten = \"127.0.0.1:1\"\ncore = \"127.0.0.1:2\"\n"
        ));
        assert!(err(twice).contains("reprobe_secs given both"));
    }

    #[test]
    fn configuration_errors_say_what_is_wrong() {
        let base = "listen = \"198.18.0.2:7000\"\ncore = \"198.18.0.3:8000\"";
        assert!(err(cfg(&format!("{base}\nbogus = 1"))).contains("bogus"));
        assert!(err(cfg(&format!("{base}\nteardown = \"4F\""))).contains("4F"));
        assert!(err(cfg(&format!(
            "{base}\nbypass = {{ policy = \"after_bytes\" }}"
        )))
        .contains("needs value"));
        assert!(err(cfg(&format!(
            "{base}\nbypass = {{ policy = \"sometimes\" }}"
        )))
        .contains("sometimes"));
        assert!(err(cfg(&format!(
            "{base}\nbypass = {{ policy = \"immediate\", value = 3 }}"
        )))
        .contains("takes no value"));
        assert!(err(cfg(&format!(
            "{base}\nbypass = {{ policy = \"after_packets\", value = 1.5 }}"
        )))
        .contains("whole number"));
        assert!(err(cfg(&format!(
            "{base}\nbypass = {{ policy = \"never\", ports = \"9-3\" }}"
        )))
        .contains("low above high"));
        assert!(err(cfg(&format!(
            "{base}\nbypass = {{ policy = \"never\", ports = \"x\" }}"
        )))
        .contains("LOW-HIGH"));
        assert!(err(cfg(&format!("{base}\nmss = 20"))).contains("mss 20"));
        assert!(err(cfg(
            "listen = \"198.18.0.2:7000\"\ncore = \"[2001:db8::3]:8000\""
        ))
        .contains("different families"));
        assert!(
            err(cfg("listen = \"198.18.0.2:7000\"\ncore = \"0.0.0.0:8000\""))
                .contains("not an address")
        );
        assert!(err(cfg("listen = \"198.18.0.2:7000\"")).contains("core"));
        let no_mapping =
            ShellConfig::from_toml(&format!("[switch]\nkey_id = 1\nkey = \"{KEY}\"\n"));
        assert!(err(no_mapping).contains("no [[mapping]]"));
        let bad_key = ShellConfig::from_toml("[switch]\nkey_id = 1\nkey = \"abc\"\n[[mapping]]\nlisten = \"127.0.0.1:1\"\ncore = \"127.0.0.1:2\"\n");
        assert!(err(bad_key).contains("switch.key"));
    }

    #[test]
    fn policies_trigger_on_their_own_measure_only() {
        let s = |bytes, reads, secs, cpu| ConnSample {
            bytes,
            reads,
            age: Duration::from_secs(secs),
            cpu_percent: cpu,
        };
        let b = |policy| Bypass {
            policy,
            ports: None,
        };
        assert!(b(Policy::Immediate).triggers(&s(0, 0, 0, 0.0)));
        assert!(!b(Policy::Never).triggers(&s(u64::MAX, u64::MAX, 9999, 100.0)));
        assert!(!b(Policy::AfterBytes(100)).triggers(&s(99, 1000, 1000, 100.0)));
        assert!(b(Policy::AfterBytes(100)).triggers(&s(100, 0, 0, 0.0)));
        assert!(!b(Policy::AfterPackets(10)).triggers(&s(1 << 30, 9, 0, 0.0)));
        assert!(b(Policy::AfterPackets(10)).triggers(&s(0, 10, 0, 0.0)));
        assert!(!b(Policy::AfterSeconds(5)).triggers(&s(1 << 30, 1 << 30, 4, 0.0)));
        assert!(b(Policy::AfterSeconds(5)).triggers(&s(0, 0, 5, 0.0)));
        assert!(!b(Policy::WhenLoadAbove(50.0)).triggers(&s(1 << 30, 1 << 30, 1000, 50.0)));
        assert!(b(Policy::WhenLoadAbove(50.0)).triggers(&s(0, 0, 0, 50.5)));
    }

    #[test]
    fn port_range_and_never_decide_who_qualifies() {
        let r = Bypass {
            policy: Policy::Immediate,
            ports: Some((1024, 2000)),
        };
        assert!(!r.qualifies(1023));
        assert!(r.qualifies(1024) && r.qualifies(2000));
        assert!(!r.qualifies(2001));
        let all = Bypass {
            policy: Policy::Immediate,
            ports: None,
        };
        assert!(all.qualifies(1));
        let never = Bypass {
            policy: Policy::Never,
            ports: None,
        };
        assert!(!never.qualifies(5000));
    }
}
