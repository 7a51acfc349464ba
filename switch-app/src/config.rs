//! stitchd's configuration: a TOML file (every table `deny_unknown_fields`, so a typo is an
//! error, not a silently ignored setting) and the EAL argument list it produces.
//!
//! Without a file, stitchd runs DPDK-style: EAL arguments before `--`, and every port the
//! EAL finds joins bridge 0 with the defaults below.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use switch_core::MacAddr;

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/stitchd/stitchd.sock";

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// EAL settings.
    #[serde(default)]
    pub eal: EalConfig,
    /// Ports, in order; each becomes one DPDK port.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// The packet buffer pool.
    #[serde(default)]
    pub mempool: MempoolConfig,
    /// The control socket.
    #[serde(default)]
    pub control: ControlConfig,
    /// L2 switching.
    #[serde(default)]
    pub l2: L2Config,
    /// Stitching.
    #[serde(default)]
    pub stitch: StitchConfig,
    /// The in-band agent protocol (absent: off).
    #[serde(default)]
    pub agent: Option<AgentConfig>,
    /// Prometheus exposition (absent: off).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The state file (absent: off; a restart then starts from the TOML alone).
    #[serde(default)]
    pub state: Option<StateConfig>,
    /// Load balancing (seed 003): services and their backends.
    #[serde(default)]
    pub lb: LbConfig,
}

/// `[lb] uplink_select`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UplinkSelectName {
    #[default]
    Hash,
    Load,
}

/// `[lb]`: the balancer's settings and the services it starts with (`[[lb.services]]`,
/// the same fields as `lb.service.add`; see docs/lb.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LbConfig {
    /// The MAC the switch answers ARP/ND for service addresses with, and sends balanced
    /// frames from.
    pub mac: MacAddr,
    /// Connections each worker's table holds (new ones beyond are refused and counted).
    pub connections: usize,
    /// The switch's own addresses on the backends' networks, which health checks are
    /// sent from (answered for ARP/ND like the service addresses). Needed by services
    /// with `health` of that family.
    pub health_ipv4: Option<std::net::Ipv4Addr>,
    pub health_ipv6: Option<std::net::Ipv6Addr>,
    /// The uplink team towards the clients' world (switch ports, at least two, or none):
    /// a NAT connection that came in on one of them has its replies sent out of the member
    /// `uplink_select` picks for it.
    pub uplinks: Vec<u16>,
    /// `hash` (the connection's L4 hash) or `load` (the member that sent the fewest
    /// frames in the last 50 ms when the connection was made).
    pub uplink_select: UplinkSelectName,
    /// Services at start.
    pub services: Vec<stitch_control::lb::LbService>,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            mac: MacAddr([0x02, 0x53, 0x54, 0x4c, 0x42, 0x01]),
            connections: 1 << 16,
            health_ipv4: None,
            health_ipv6: None,
            uplinks: vec![],
            uplink_select: UplinkSelectName::Hash,
            services: vec![],
        }
    }
}

/// `[state]`: where the switch keeps its desired state (static MACs, port policies,
/// committed stitches) across restarts; see docs/state.md.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The file, e.g. "/var/lib/stitchd/state.json" (its directory must exist).
    pub file: PathBuf,
}

/// `[metrics]`: serve `GET /metrics` (Prometheus / OpenMetrics text) and the read-only
/// web console (`GET /`) on a TCP address. Neither is authenticated, hence the
/// localhost default in the README; any address is accepted for a management network.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to listen on, e.g. "127.0.0.1:9464" (port 0: any free port).
    pub listen: std::net::SocketAddr,
    /// Also serve the web console (page, `/api/snapshot`, `/events`); default true.
    #[serde(default = "yes")]
    pub console: bool,
}

/// `[agent]`: the switch's own service address, where shells probe and send stitch
/// requests (docs/agent-protocol.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// IPv4 service address (answered for ARP on every data port).
    #[serde(default)]
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// IPv6 service address (answered for neighbour solicitation).
    #[serde(default)]
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// UDP port of the service.
    #[serde(default = "agent_port")]
    pub port: u16,
    /// UDP port agents listen on for teardown messages.
    #[serde(default = "agent_peer_port")]
    pub agent_port: u16,
    /// MAC address of the service address.
    #[serde(default = "agent_mac")]
    pub mac: MacAddr,
    /// Name in probe replies.
    #[serde(default = "switch_id")]
    pub switch_id: String,
    /// Answer probes only when they arrive with IP TTL / hop limit 1 (figure 5C).
    #[serde(default = "yes")]
    pub require_ttl1: bool,
    /// Keys per matching scope; the first one signs what the switch sends first.
    pub keys: Vec<AgentKey>,
}

/// `[[agent.keys]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentKey {
    /// Matching-scope id.
    pub id: u32,
    /// 32-byte key, 64 hex digits.
    pub key: String,
}

fn agent_port() -> u16 {
    4790
}
fn agent_peer_port() -> u16 {
    4791
}
fn agent_mac() -> MacAddr {
    MacAddr([0x02, 0x53, 0x54, 0x43, 0x48, 0x01])
}
fn switch_id() -> String {
    "stitchd".into()
}

/// `[stitch]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StitchConfig {
    /// Flow-table entries (each stitch uses four: both directions of both legs).
    pub flow_table_size: usize,
    /// Stitches installed at start, before any packet is forwarded (see `stitch.install`).
    pub install: Vec<stitch_control::protocol::StitchInstallParams>,
    /// Packets all frozen stitches together may hold at once (default: a quarter of
    /// `[mempool] mbufs`; at most half of it): what is beyond is refused and counted
    /// (`hold_refused`), the senders retransmit, and RX keeps its buffers.
    pub hold_budget: Option<usize>,
}

impl Default for StitchConfig {
    fn default() -> Self {
        StitchConfig {
            flow_table_size: 1 << 20,
            install: vec![],
            hold_budget: None,
        }
    }
}

/// Whether to use hugepages.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Hugepages {
    /// Use them when some are free, else run with `--no-huge`.
    #[default]
    Auto,
    /// Require them (EAL start fails without).
    On,
    /// Never (`--no-huge`).
    Off,
}

/// `[eal]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EalConfig {
    /// `--file-prefix`: distinct for each DPDK process on a machine.
    pub file_prefix: String,
    /// `-l`: lcores; the first is the main lcore (slow path + control), the others workers.
    pub lcores: Option<String>,
    /// Hugepage use.
    pub hugepages: Hugepages,
    /// `-m`: memory in MiB (used with `--no-huge`).
    pub memory_mb: u32,
    /// More EAL arguments, passed as given.
    pub extra_args: Vec<String>,
}

impl Default for EalConfig {
    fn default() -> Self {
        EalConfig {
            file_prefix: "stitchd".into(),
            lcores: None,
            hugepages: Hugepages::Auto,
            memory_mb: 1024,
            extra_args: vec![],
        }
    }
}

/// `[[ports]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// DPDK device arguments: a virtual device (`net_tap0,iface=st0`, passed as `--vdev`)
    /// or a PCI address (`0000:01:00.0`, passed as `-a`).
    pub devargs: String,
    /// RX queues (each polled by one worker).
    #[serde(default = "one")]
    pub rx_queues: u16,
    /// RX descriptors per queue.
    #[serde(default = "desc")]
    pub rx_desc: u16,
    /// TX descriptors per queue.
    #[serde(default = "desc")]
    pub tx_desc: u16,
    /// The L2 bridge the port belongs to (0-63).
    #[serde(default)]
    pub bridge: u16,
    /// Port security: the only source MACs accepted on this port (absent = any).
    #[serde(default)]
    pub allowed_macs: Option<Vec<MacAddr>>,
    /// Learn source MACs seen on this port.
    #[serde(default = "yes")]
    pub learning: bool,
    /// Most MACs this port may have learned at once (absent = no limit): a flood of
    /// random source MACs on one port cannot fill the table for the others.
    #[serde(default)]
    pub max_learned_macs: Option<u32>,
}

fn one() -> u16 {
    1
}
fn desc() -> u16 {
    1024
}
fn yes() -> bool {
    true
}

impl PortConfig {
    /// The DPDK device name the port will have: devargs up to the first comma.
    pub fn device_name(&self) -> &str {
        self.devargs.split(',').next().unwrap_or(&self.devargs)
    }

    /// True for a virtual device (`net_*`, `eth_*`), given to the EAL with `--vdev`.
    pub fn is_vdev(&self) -> bool {
        let n = self.device_name();
        n.starts_with("net_") || n.starts_with("eth_")
    }
}

/// `[mempool]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MempoolConfig {
    /// Mbufs in the pool (2^n - 1 is most memory-efficient).
    pub mbufs: u32,
    /// Per-lcore cache.
    pub cache: u32,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig {
            mbufs: 16383,
            cache: 256,
        }
    }
}

/// `[control]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Unix socket path for JSON-RPC.
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

/// `[l2]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct L2Config {
    /// MAC table entries per bridge (rounded up to a power of two).
    pub mac_table_size: usize,
    /// Seconds after which a learned MAC that sent nothing is forgotten.
    pub aging_secs: u32,
    /// Static entries, installed at start.
    pub static_macs: Vec<StaticMac>,
    /// May a MAC learned on one port be taken over by another: `allow`, `deny`, or
    /// `after_quiet` (once its owner has sent nothing for `move_quiet_secs`).
    pub move_policy: MovePolicyName,
    /// Seconds of silence on the owning port before `after_quiet` lets a MAC move.
    pub move_quiet_secs: u32,
}

/// `[l2] move_policy`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum MovePolicyName {
    /// Any port may take over a learned MAC at once.
    #[default]
    Allow,
    /// A learned MAC stays on its port until it ages out.
    Deny,
    /// A learned MAC may move once its owner has been quiet `move_quiet_secs`.
    AfterQuiet,
}

impl L2Config {
    /// The policy the MAC table and the workers apply.
    pub fn move_policy(&self) -> switch_core::l2::table::MovePolicy {
        use switch_core::l2::table::MovePolicy;
        match self.move_policy {
            MovePolicyName::Allow => MovePolicy::Allow,
            MovePolicyName::Deny => MovePolicy::Deny,
            MovePolicyName::AfterQuiet => MovePolicy::AfterQuiet {
                secs: self.move_quiet_secs,
            },
        }
    }
}

impl Default for L2Config {
    fn default() -> Self {
        L2Config {
            mac_table_size: 65536,
            aging_secs: 300,
            static_macs: vec![],
            move_policy: MovePolicyName::Allow,
            move_quiet_secs: 5,
        }
    }
}

/// `[[l2.static_macs]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticMac {
    /// The address.
    pub mac: MacAddr,
    /// Index of the port (position in `[[ports]]`, which is also its DPDK port id).
    pub port: u16,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax or schema error (the message has line and column).
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a file.
    ///
    /// # Errors
    /// [`ConfigError`] saying which file, where, and what is wrong.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and cross-references.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the offending setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (i, p) in self.ports.iter().enumerate() {
            if p.devargs.trim().is_empty() {
                return bad(format!("ports[{i}].devargs is empty"));
            }
            if p.rx_queues == 0 || p.rx_queues > 16 {
                return bad(format!(
                    "ports[{i}].rx_queues = {} (must be 1-16)",
                    p.rx_queues
                ));
            }
            if p.bridge >= 64 {
                return bad(format!("ports[{i}].bridge = {} (must be 0-63)", p.bridge));
            }
            if p.rx_desc < 64 || p.tx_desc < 64 {
                return bad(format!("ports[{i}]: rx_desc/tx_desc must be >= 64"));
            }
            if let Some(m) = &p.allowed_macs {
                if m.len() > 64 {
                    return bad(format!(
                        "ports[{i}].allowed_macs has {} entries (at most 64)",
                        m.len()
                    ));
                }
            }
            if self.ports[..i]
                .iter()
                .any(|q| q.device_name() == p.device_name())
            {
                return bad(format!(
                    "ports[{i}]: device name '{}' used twice",
                    p.device_name()
                ));
            }
        }
        if self.ports.len() > 32 {
            return bad(format!(
                "{} ports configured (DPDK here supports 32)",
                self.ports.len()
            ));
        }
        if self.mempool.mbufs < 1023 {
            return bad(format!(
                "mempool.mbufs = {} (at least 1023)",
                self.mempool.mbufs
            ));
        }
        if self.l2.move_policy == MovePolicyName::AfterQuiet && self.l2.move_quiet_secs == 0 {
            return bad("l2.move_quiet_secs = 0 with move_policy = \"after_quiet\" (must be >= 1; use \"allow\" for no wait)".into());
        }
        if self.l2.mac_table_size == 0 || self.l2.mac_table_size > (1 << 24) {
            return bad(format!(
                "l2.mac_table_size = {} (must be 1 - 16777216)",
                self.l2.mac_table_size
            ));
        }
        for s in &self.l2.static_macs {
            if !self.ports.is_empty() && usize::from(s.port) >= self.ports.len() {
                return bad(format!(
                    "l2.static_macs: {} on port {} but only {} ports are configured",
                    s.mac,
                    s.port,
                    self.ports.len()
                ));
            }
            if !s.mac.is_unicast() || s.mac.is_zero() {
                return bad(format!(
                    "l2.static_macs: {} is not a unicast address",
                    s.mac
                ));
            }
        }
        if self.stitch.flow_table_size < 4 || self.stitch.flow_table_size > (1 << 24) {
            return bad(format!(
                "stitch.flow_table_size = {} (must be 4 - 16777216)",
                self.stitch.flow_table_size
            ));
        }
        if self.lb.connections == 0 || self.lb.connections > (1 << 24) {
            return bad(format!(
                "lb.connections = {} (must be 1 - 16777216)",
                self.lb.connections
            ));
        }
        if self.lb.uplinks.len() == 1 {
            return bad("lb.uplinks: a team needs at least two ports (or none)".into());
        }
        for (i, u) in self.lb.uplinks.iter().enumerate() {
            if self.lb.uplinks[..i].contains(u) {
                return bad(format!("lb.uplinks: port {u} given twice"));
            }
            if !self.ports.is_empty() && usize::from(*u) >= self.ports.len() {
                return bad(format!(
                    "lb.uplinks: port {u} but only {} ports are configured",
                    self.ports.len()
                ));
            }
        }
        if !self.lb.mac.is_unicast() || self.lb.mac.is_zero() {
            return bad(format!("lb.mac {} is not a unicast address", self.lb.mac));
        }
        for (i, s) in self.lb.services.iter().enumerate() {
            s.check().map_err(|e| {
                ConfigError::Invalid(format!("lb.services[{i}] ('{}'): {e}", s.name))
            })?;
            if self.lb.services[..i].iter().any(|o| o.name == s.name) {
                return bad(format!("lb.services[{i}]: name '{}' used twice", s.name));
            }
            if !self.ports.is_empty() {
                if let Some(b) = s
                    .backends
                    .iter()
                    .find(|b| usize::from(b.port) >= self.ports.len())
                {
                    return bad(format!(
                        "lb.services[{i}] ('{}'): backend '{}' on port {} but only {} ports are configured",
                        s.name, b.name, b.port, self.ports.len()
                    ));
                }
            }
        }
        if let Some(b) = self.stitch.hold_budget {
            if b == 0 || b > self.mempool.mbufs as usize / 2 {
                return bad(format!(
                    "stitch.hold_budget = {b} (must be 1 - half of mempool.mbufs, {})",
                    self.mempool.mbufs / 2
                ));
            }
        }
        if let Some(a) = &self.agent {
            if a.ipv4.is_none() && a.ipv6.is_none() {
                return bad("agent: give ipv4 and/or ipv6 (the switch's service address)".into());
            }
            if a.keys.is_empty() {
                return bad("agent.keys is empty: every agent message is authenticated".into());
            }
            for k in &a.keys {
                if k.key.len() != 64 || !k.key.chars().all(|c| c.is_ascii_hexdigit()) {
                    return bad(format!(
                        "agent.keys id {}: key must be 64 hex digits (32 bytes)",
                        k.id
                    ));
                }
            }
            if !a.mac.is_unicast() || a.mac.is_zero() {
                return bad(format!("agent.mac {} is not a unicast address", a.mac));
            }
        }
        if self.eal.file_prefix.is_empty() || self.eal.file_prefix.contains('/') {
            return bad("eal.file_prefix must be a non-empty name without '/'".into());
        }
        Ok(())
    }

    /// The EAL argument list for this configuration, then `cli_eal` (EAL arguments given
    /// on the command line before `--`), starting with the program name.
    pub fn eal_args(&self, cli_eal: &[String], hugepages_free: bool) -> Vec<String> {
        let mut a = vec!["stitchd".to_string()];
        let has = |flag: &str| {
            cli_eal
                .iter()
                .chain(&self.eal.extra_args)
                .any(|x| x == flag || x.starts_with(&format!("{flag}=")))
        };
        if let Some(l) = &self.eal.lcores {
            a.push("-l".into());
            a.push(l.clone());
        }
        if !has("--file-prefix") && !has("--in-memory") {
            a.push(format!("--file-prefix={}", self.eal.file_prefix));
        }
        let no_huge = match self.eal.hugepages {
            Hugepages::Off => true,
            Hugepages::On => false,
            Hugepages::Auto => !hugepages_free && !has("--in-memory"),
        };
        if no_huge && !has("--no-huge") {
            a.push("--no-huge".into());
        }
        if (no_huge || has("--no-huge")) && !has("-m") && !has("--socket-mem") {
            a.push("-m".into());
            a.push(self.eal.memory_mb.to_string());
        }
        // A file that names only virtual devices needs no PCI scan; without a file the
        // user's EAL arguments decide (a real NIC must stay visible).
        let only_vdevs = !self.ports.is_empty() && self.ports.iter().all(PortConfig::is_vdev);
        if only_vdevs && !has("--no-pci") && !has("-a") && !has("-b") {
            a.push("--no-pci".into());
        }
        for p in &self.ports {
            if p.is_vdev() {
                a.push(format!("--vdev={}", p.devargs));
            } else {
                a.push("-a".into());
                a.push(p.devargs.clone());
            }
        }
        a.extend(self.eal.extra_args.iter().cloned());
        a.extend(cli_eal.iter().cloned());
        a
    }
}

/// True when the kernel has free 2 MiB (or 1 GiB) hugepages and hugetlbfs is mounted.
pub fn hugepages_available() -> bool {
    let free = |size: &str| {
        std::fs::read_to_string(format!(
            "/sys/kernel/mm/hugepages/hugepages-{size}/free_hugepages"
        ))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
    };
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.contains(" hugetlbfs ")))
        .unwrap_or(false);
    mounted && (free("2048kB") >= 64 || free("1048576kB") >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(s).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn full_config_parses_with_defaults_filled_in() {
        let c = parse(
            r#"
            [eal]
            file_prefix = "t1"
            lcores = "0-1"
            [[ports]]
            devargs = "net_tap0,iface=st0"
            [[ports]]
            devargs = "net_tap1,iface=st1"
            allowed_macs = ["02:00:00:00:00:01"]
            learning = false
            [l2]
            aging_secs = 10
            static_macs = [{ mac = "02:00:00:00:00:09", port = 1 }]
            "#,
        )
        .unwrap();
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0].rx_queues, 1);
        assert!(c.ports[0].learning);
        assert!(!c.ports[1].learning);
        assert_eq!(
            c.ports[1].allowed_macs.as_ref().unwrap()[0].to_string(),
            "02:00:00:00:00:01"
        );
        assert_eq!(c.l2.mac_table_size, 65536);
        assert_eq!(c.control.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let e = parse("[[ports]]\ndevargs = \"net_tap0\"\nrx_queue = 2\n").unwrap_err();
        assert!(e.contains("rx_queue"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert!(parse("[[ports]]\ndevargs = \"net_tap0\"\nrx_queues = 0\n")
            .unwrap_err()
            .contains("rx_queues"));
        assert!(parse("[[ports]]\ndevargs = \"net_tap0\"\nbridge = 64\n")
            .unwrap_err()
            .contains("bridge"));
        assert!(parse(
            "[[ports]]\ndevargs = \"net_tap0\"\n[[ports]]\ndevargs = \"net_tap0,iface=x\"\n"
        )
        .unwrap_err()
        .contains("twice"));
        assert!(parse("[[ports]]\ndevargs = \"net_tap0\"\n[l2]\nstatic_macs = [{ mac = \"02:00:00:00:00:01\", port = 3 }]\n")
            .unwrap_err()
            .contains("port 3"));
        assert!(parse("[[ports]]\ndevargs = \"net_tap0\"\nallowed_macs = [\"zz\"]\n").is_err());
    }

    #[test]
    fn eal_args_use_vdev_and_no_huge_when_no_hugepages() {
        let c = parse(
            "[eal]\nfile_prefix = \"x\"\nlcores = \"0-1\"\n[[ports]]\ndevargs = \"net_ring0\"\n",
        )
        .unwrap();
        let a = c.eal_args(&[], false);
        assert_eq!(
            a,
            [
                "stitchd",
                "-l",
                "0-1",
                "--file-prefix=x",
                "--no-huge",
                "-m",
                "1024",
                "--no-pci",
                "--vdev=net_ring0"
            ]
        );
        let a = c.eal_args(&[], true);
        assert!(!a.contains(&"--no-huge".to_string()));
    }

    #[test]
    fn without_ports_the_pci_scan_is_left_to_the_user() {
        let a = Config::default().eal_args(&["--vdev=net_tap0".into()], true);
        assert!(!a.contains(&"--no-pci".to_string()), "{a:?}");
        assert_eq!(a.last().map(String::as_str), Some("--vdev=net_tap0"));
    }

    #[test]
    fn metrics_is_off_by_default_and_its_table_refuses_unknown_keys() {
        assert_eq!(parse("").unwrap().metrics, None);
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert!(
            c.metrics.as_ref().is_some_and(|m| m.console),
            "console on by default"
        );
        let off = parse("[metrics]\nlisten = \"127.0.0.1:0\"\nconsole = false\n").unwrap();
        assert!(off.metrics.is_some_and(|m| !m.console));
        assert_eq!(
            c.metrics.map(|m| m.listen.to_string()).as_deref(),
            Some("127.0.0.1:9464")
        );
        let e = parse("[metrics]\nlisten = \"127.0.0.1:9464\"\npath = \"/m\"\n").unwrap_err();
        assert!(e.contains("path"), "{e}");
        let e = parse("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(e.contains("listen") || e.contains("socket address"), "{e}");
    }

    #[test]
    fn pci_devargs_use_allowlist() {
        let c = parse("[[ports]]\ndevargs = \"0000:01:00.0\"\n").unwrap();
        let a = c.eal_args(&[], true);
        assert!(a.windows(2).any(|w| w[0] == "-a" && w[1] == "0000:01:00.0"));
        assert!(!a.contains(&"--no-pci".to_string()));
    }
}
