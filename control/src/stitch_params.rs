//! Params of the stitch and fault-injection methods (`stitch.*`, `port.fault.set`).
//!
//! A stitch joins connection "leg A" (client C <-> shell A) and "leg B" (shell A <-> core
//! B) into one translated path C <-> B. Addresses are `"ip:port"` strings (`"[v6]:port"`
//! for IPv6), seen from the switch: exactly the 4-tuples the legs' packets carry.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Leg A: the client and the shell's listening side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegA {
    /// C's address and port.
    pub client: SocketAddr,
    /// A's address and port on leg A (A1).
    pub shell: SocketAddr,
}

/// Leg B: the shell's connecting side and the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegB {
    /// A's address and port on leg B (A2).
    pub shell: SocketAddr,
    /// B's address and port.
    pub core: SocketAddr,
}

/// Transport of a stitch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP: sequence, ack, SACK, timestamp and window translation.
    #[default]
    Tcp,
    /// UDP: addresses and ports only.
    Udp,
}

/// Teardown variant (seed 001, figures 4B-4E).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Teardown {
    /// Control messages to core and shell.
    #[serde(rename = "4B")]
    B,
    /// Translated FIN to the core; the core tells the shell.
    #[serde(rename = "4C")]
    C,
    /// Untranslated FIN to the shell; the shell tells the core.
    #[serde(rename = "4D")]
    D,
    /// Both: translated FIN to the core and control messages.
    #[serde(rename = "4E")]
    #[default]
    E,
}

/// `stitch.prepare`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StitchPrepareParams {
    /// C <-> A1.
    pub leg_a: LegA,
    /// A2 <-> B.
    pub leg_b: LegB,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub proto: Proto,
    /// Teardown variant, default `4E`.
    #[serde(default)]
    pub teardown: Teardown,
    /// Seconds without a packet after which the stitch is removed (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u32>,
    /// Seconds the entry lingers after both FINs (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger: Option<u32>,
}

/// `stitch.freeze`, `stitch.abort`, `stitch.get`, `stitch.delete`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StitchIdParams {
    /// The id `stitch.prepare` returned.
    pub id: u32,
}

/// Four values, one per endpoint: C, A1 (shell on leg A), A2 (shell on leg B), B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerEndpoint<T> {
    pub c: T,
    pub a1: T,
    pub a2: T,
    pub b: T,
}

/// Whether an option was negotiated on each leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerLeg {
    pub leg_a: bool,
    pub leg_b: bool,
}

/// `stitch.commit`: the shell's sequence state when it stopped (TCP; absent for UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StitchCommitParams {
    pub id: u32,
    /// Next sequence number the shell sends on leg A.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s1: Option<u32>,
    /// Next sequence number the shell expects on leg A.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r1: Option<u32>,
    /// Next sequence number the shell sends on leg B.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s2: Option<u32>,
    /// Next sequence number the shell expects on leg B.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r2: Option<u32>,
    /// Window-scale shift each endpoint announced (TCP_INFO on the shell gives them);
    /// absent = what the switch saw in SYNs, else no rescaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wscale: Option<PerEndpoint<u8>>,
    /// MSS each endpoint announced; absent = not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mss: Option<PerEndpoint<u16>>,
    /// Timestamps negotiated per leg; absent = as the switch saw in the legs' packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<PerLeg>,
    /// SACK negotiated per leg; absent = assumed on both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sack: Option<PerLeg>,
}

/// `port.fault.set`: faults applied on a port's TX, in parts per million.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortFaultParams {
    pub port: u16,
    #[serde(default)]
    pub drop_ppm: u32,
    #[serde(default)]
    pub reorder_ppm: u32,
    #[serde(default)]
    pub duplicate_ppm: u32,
}

/// Ports of the two ends of an installed stitch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndPorts {
    /// Port C is on.
    pub c: u16,
    /// Port B is on.
    pub b: u16,
}

/// Timestamp shifts of an installed stitch (TSval deltas, mod 2^32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsDeltas {
    pub c_to_b: u32,
    pub b_to_c: u32,
}

/// `stitch.install` and `[[stitch.install]]` in the configuration: a stitch installed
/// directly in the stitched state from complete parameters, without watching the legs
/// or checking a shell's state. For pre-configured stitches (seed 000: "fixed,
/// pre-configured ports can be stitched"), benchmarks and golden tests. `count` > 1
/// installs that many, the client's and the shell's leg-B port counting up from the
/// given one (and the address counting up every 50000).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StitchInstallParams {
    pub leg_a: LegA,
    pub leg_b: LegB,
    #[serde(default)]
    pub proto: Proto,
    #[serde(default)]
    pub teardown: Teardown,
    /// MAC of each endpoint.
    pub macs: PerEndpoint<crate::protocol::Mac>,
    /// Where C and B are.
    pub ports: EndPorts,
    #[serde(default)]
    pub s1: u32,
    #[serde(default)]
    pub r1: u32,
    #[serde(default)]
    pub s2: u32,
    #[serde(default)]
    pub r2: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wscale: Option<PerEndpoint<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<TsDeltas>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sack: Option<PerLeg>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}
