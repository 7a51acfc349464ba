//! Configuration files (TOML, unknown keys refused) for the matcher and the conduit.
//!
//! Parsing checks everything that can be checked without sockets: keys are 64 hex
//! digits, every route and inbound names a configured scope, the conduit's global id is
//! a member of the scopes it publishes in, the matching mode has what it needs. A bad
//! file is a [`ConfigError`] naming the problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ConfigError;
use crate::scope::{Scope, Scopes};

/// One `[[scope]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// Name.
    pub name: String,
    /// Key id (the scope's name on the wire).
    pub key_id: u32,
    /// 64 hex digits.
    pub key: String,
    /// Member global ids; empty: any key holder.
    #[serde(default)]
    pub members: Vec<u64>,
}

fn scopes_of(list: &[ScopeConfig]) -> Result<Scopes, ConfigError> {
    let mut out = Vec::new();
    for s in list {
        if out
            .iter()
            .any(|o: &Scope| o.key_id == s.key_id || o.name == s.name)
        {
            return Err(ConfigError::Invalid(format!(
                "scope {} repeats a name or key id",
                s.name
            )));
        }
        out.push(
            Scope::from_hex(&s.name, s.key_id, &s.key, s.members.clone()).map_err(|error| {
                ConfigError::Key {
                    scope: s.name.clone(),
                    error,
                }
            })?,
        );
    }
    Ok(Scopes::new(out))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.display().to_string(),
        error,
    })
}

/// The matching server's file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatcherFile {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Most pending descriptions (and matched pairs) held.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// Pending descriptions are forgotten after this long.
    #[serde(default = "default_ttl")]
    pub ttl_ms: u64,
    /// The scopes served.
    pub scope: Vec<ScopeConfig>,
}

fn default_capacity() -> usize {
    65_536
}
fn default_ttl() -> u64 {
    60_000
}

/// A checked matcher configuration.
#[derive(Debug, Clone)]
pub struct MatcherConfig {
    /// The file as parsed.
    pub file: MatcherFile,
    /// Its scopes.
    pub scopes: Scopes,
}

impl MatcherConfig {
    /// Parses and checks a matcher configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the problem.
    pub fn parse(text: &str) -> Result<MatcherConfig, ConfigError> {
        let file: MatcherFile = toml::from_str(text).map_err(ConfigError::Parse)?;
        if file.scope.is_empty() {
            return Err(ConfigError::Invalid("at least one [[scope]] needed".into()));
        }
        let scopes = scopes_of(&file.scope)?;
        Ok(MatcherConfig { file, scopes })
    }

    /// Reads, parses and checks a file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the problem.
    pub fn load(path: &Path) -> Result<MatcherConfig, ConfigError> {
        Self::parse(&read(path)?)
    }
}

/// How a conduit finds matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Matching {
    /// Publish to a matching server.
    Centralized {
        /// The server's UDP address.
        matcher: SocketAddr,
    },
    /// Publish to these peer conduits' matching sockets and detect locally.
    Peer {
        /// The peers.
        peers: Vec<SocketAddr>,
    },
    /// No publishing (pre-configured ports and API requests with a peer only).
    None,
}

/// An application-side port: the application connects here; the conduit forwards over
/// the original path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Local listening address for the application.
    pub listen: SocketAddr,
    /// The original path's first hop (the proxy chain).
    pub upstream: SocketAddr,
    /// The logical destination, as descriptions name it.
    pub service: SocketAddr,
    /// Scope to publish in.
    pub scope: String,
    /// Publish automatically (after `publish_after_bytes`); false: only on API request.
    #[serde(default = "yes")]
    pub auto: bool,
    /// Pre-configured port: stitch to this peer stitch address with no publishing.
    #[serde(default)]
    pub preconfigured_peer: Option<SocketAddr>,
}

/// A service-side port: original connections from the proxy chain arrive here; the
/// conduit forwards to the local service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// Where the proxy chain connects.
    pub listen: SocketAddr,
    /// The local service.
    pub target: SocketAddr,
    /// How descriptions name the service (this end's address).
    pub service: SocketAddr,
    /// Scope to publish in.
    pub scope: String,
    /// Publish automatically.
    #[serde(default = "yes")]
    pub auto: bool,
}

fn yes() -> bool {
    true
}

/// How a UDP flow switches over (both conduits of a flow must agree).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UdpDrain {
    /// Send nothing for `standoff_ms`, then only on the stitched path.
    StandOff,
    /// Sequence numbers: deliver in order only, hold stitched datagrams up to `wait_ms`.
    DropBelow,
}

/// A UDP port: datagrams from the application (`[[udp_route]]`) or from the proxy
/// chain (`[[udp_inbound]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpPort {
    /// Where datagrams arrive.
    pub listen: SocketAddr,
    /// Route: the original path's first hop. Inbound: the local service.
    pub forward: SocketAddr,
    /// The logical service address descriptions name.
    pub service: SocketAddr,
    /// Scope to publish in.
    pub scope: String,
    /// Publish automatically.
    #[serde(default = "yes")]
    pub auto: bool,
    /// Route only: stitch to this peer stitch address with no publishing.
    #[serde(default)]
    pub preconfigured_peer: Option<SocketAddr>,
    /// Switch-over method.
    pub drain: UdpDrain,
    /// Stand-off period.
    #[serde(default = "standoff")]
    pub standoff_ms: u64,
    /// Drop-below: longest wait for original-path datagrams below the switch-over.
    #[serde(default = "drain_timeout")]
    pub wait_ms: u64,
}

fn standoff() -> u64 {
    50
}

impl UdpPort {
    /// The switch-over mode of this port's flows.
    pub fn mode(&self) -> crate::udp::UdpMode {
        match self.drain {
            UdpDrain::StandOff => crate::udp::UdpMode::StandOff {
                standoff_us: self.standoff_ms * 1000,
            },
            UdpDrain::DropBelow => crate::udp::UdpMode::DropBelow {
                wait_us: self.wait_ms * 1000,
            },
        }
    }
}

/// The conduit's file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConduitFile {
    /// This conduit's global id (the lower id of a pair initiates).
    pub global_id: u64,
    /// Unix control socket path.
    pub control: PathBuf,
    /// Where stitched connections are accepted (TCP); also what publications advertise.
    pub stitch_listen: SocketAddr,
    /// UDP socket for matching traffic (verdicts, peers' publications).
    pub match_listen: SocketAddr,
    /// Heartbeat interval on the original path.
    #[serde(default = "hb_interval")]
    pub heartbeat_interval_ms: u64,
    /// No acknowledgment this long: the original path is dead.
    #[serde(default = "hb_timeout")]
    pub heartbeat_timeout_ms: u64,
    /// The drain is assumed complete after this long.
    #[serde(default = "drain_timeout")]
    pub drain_timeout_ms: u64,
    /// Publish (or stitch a pre-configured port) once this many application bytes
    /// (both directions) have passed; 0: at once.
    #[serde(default)]
    pub publish_after_bytes: u64,
    /// ... and once the connection is this old (the description's age); 0: at once.
    #[serde(default)]
    pub publish_after_ms: u64,
    /// Re-send a publication this often until a final verdict.
    #[serde(default = "republish")]
    pub republish_ms: u64,
    /// How matches are found.
    pub matching: Matching,
    /// Scopes this conduit belongs to.
    pub scope: Vec<ScopeConfig>,
    /// Application-side ports.
    #[serde(default)]
    pub route: Vec<Route>,
    /// Service-side ports.
    #[serde(default)]
    pub inbound: Vec<Inbound>,
    /// Application-side UDP ports (`forward`: the original path's first hop).
    #[serde(default)]
    pub udp_route: Vec<UdpPort>,
    /// Service-side UDP ports (`forward`: the local service).
    #[serde(default)]
    pub udp_inbound: Vec<UdpPort>,
}

fn hb_interval() -> u64 {
    500
}
fn hb_timeout() -> u64 {
    3000
}
fn drain_timeout() -> u64 {
    2000
}
fn republish() -> u64 {
    1000
}

/// A checked conduit configuration.
#[derive(Debug, Clone)]
pub struct ConduitConfig {
    /// The file as parsed.
    pub file: ConduitFile,
    /// Its scopes.
    pub scopes: Scopes,
}

impl ConduitConfig {
    /// Parses and checks a conduit configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the problem.
    pub fn parse(text: &str) -> Result<ConduitConfig, ConfigError> {
        let file: ConduitFile = toml::from_str(text).map_err(ConfigError::Parse)?;
        let scopes = scopes_of(&file.scope)?;
        let names = file
            .route
            .iter()
            .map(|r| &r.scope)
            .chain(file.inbound.iter().map(|i| &i.scope))
            .chain(file.udp_route.iter().map(|u| &u.scope))
            .chain(file.udp_inbound.iter().map(|u| &u.scope));
        for name in names {
            let Some(s) = scopes.by_name(name) else {
                return Err(ConfigError::Invalid(format!("unknown scope {name:?}")));
            };
            if !s.admits(file.global_id) {
                return Err(ConfigError::Invalid(format!(
                    "global id {} is not a member of scope {name:?}",
                    file.global_id
                )));
            }
        }
        if file.route.is_empty()
            && file.inbound.is_empty()
            && file.udp_route.is_empty()
            && file.udp_inbound.is_empty()
        {
            return Err(ConfigError::Invalid(
                "at least one [[route]], [[inbound]], [[udp_route]] or [[udp_inbound]] needed"
                    .into(),
            ));
        }
        if file.heartbeat_interval_ms == 0
            || file.heartbeat_timeout_ms <= file.heartbeat_interval_ms
        {
            return Err(ConfigError::Invalid(
                "heartbeat_timeout_ms must exceed heartbeat_interval_ms > 0".into(),
            ));
        }
        if let Matching::Peer { peers } = &file.matching {
            if peers.is_empty() {
                return Err(ConfigError::Invalid("peer matching needs peers".into()));
            }
        }
        Ok(ConduitConfig { file, scopes })
    }

    /// Reads, parses and checks a file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the problem.
    pub fn load(path: &Path) -> Result<ConduitConfig, ConfigError> {
        Self::parse(&read(path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn conduit(extra: &str, members: &str) -> String {
        format!(
            r#"
global_id = 1
control = "/tmp/x.sock"
stitch_listen = "198.18.0.1:7200"
match_listen = "198.18.0.1:7300"
matching = {{ mode = "centralized", matcher = "198.18.0.9:7400" }}
[[scope]]
name = "blue"
key_id = 1
key = "{K}"
members = {members}
[[route]]
listen = "127.0.0.1:7000"
upstream = "198.18.0.2:8000"
service = "198.18.0.10:9000"
scope = "blue"
{extra}
"#
        )
    }

    #[test]
    fn a_good_conduit_file_parses() {
        let c = ConduitConfig::parse(&conduit("", "[1, 2]")).unwrap();
        assert_eq!(c.file.route.len(), 1);
        assert!(c.file.route[0].auto);
        assert!(matches!(c.file.matching, Matching::Centralized { .. }));
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let e = ConduitConfig::parse(&conduit("bogus = 1", "[1]")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = ConduitConfig::parse(&conduit("", "[2]")).unwrap_err();
        assert!(e.to_string().contains("not a member"), "{e}");
        let e = ConduitConfig::parse(&conduit("", "[1]").replace(K, "abc")).unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        let e = MatcherConfig::parse("listen = \"198.18.0.1:1\"\nscope = []").unwrap_err();
        assert!(e.to_string().contains("scope"), "{e}");
    }
}
