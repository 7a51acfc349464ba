//! Figure 5B: is a switch that can stitch one hop away?
//!
//! Count interfaces (step 542, [`crate::ifaces`]); with exactly one each way send a
//! Probe at IP TTL / hop limit 1 (546) to the configured service address, or to
//! 255.255.255.255 / ff02::1 when none is configured; no authenticated ProbeReply within
//! `probe_timeout_ms` (547) or one lacking what a mapping needs (548): not available
//! (554). The TTL makes the probe die at the first router, so only a switch on the
//! shell's own link can answer (figure 5C).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::time::Duration;

use agent_proto::{CapFlags, Capabilities, Message, Probe, Teardown, DEFAULT_PORT};
use stitch_core::{names, AgentKeys, Requester, SendError};

use crate::config::Mapping;

/// Capabilities a mapping needs: TCP, its address family, its teardown variant.
pub fn needed_caps(m: &Mapping) -> CapFlags {
    let family = if m.core.is_ipv4() {
        CapFlags::IPV4
    } else {
        CapFlags::IPV6
    };
    let teardown = match m.teardown {
        Teardown::B => CapFlags::TEARDOWN_4B,
        Teardown::C => CapFlags::TEARDOWN_4C,
        Teardown::D => CapFlags::TEARDOWN_4D,
        _ => CapFlags::TEARDOWN_4E,
    };
    CapFlags::TCP | family | teardown
}

/// `Ok` when the switch's capabilities cover what `m` needs, else the reason.
///
/// # Errors
/// The missing capabilities, named.
pub fn check_caps(caps: &Capabilities, m: &Mapping) -> Result<(), String> {
    let missing = needed_caps(m).difference(caps.flags);
    if missing.is_empty() {
        return Ok(());
    }
    let mut what = vec![];
    if missing.contains(CapFlags::TCP) {
        what.push("TCP".to_string());
    }
    if missing.intersects(CapFlags::IPV4 | CapFlags::IPV6) {
        what.push(if m.core.is_ipv4() { "IPv4" } else { "IPv6" }.to_string());
    }
    if missing.intersects(
        CapFlags::TEARDOWN_4B
            | CapFlags::TEARDOWN_4C
            | CapFlags::TEARDOWN_4D
            | CapFlags::TEARDOWN_4E,
    ) {
        what.push(format!("teardown {}", names::variant(m.teardown)));
    }
    Err(format!("switch lacks {}", what.join(", ")))
}

/// Where to send the probe: the configured address, or the family's "everyone on this
/// link" address (`ff02::1` scoped to `ifindex`).
pub fn probe_target(configured: Option<SocketAddr>, ipv6: bool, ifindex: u32) -> SocketAddr {
    match configured {
        Some(a) => a,
        None if ipv6 => SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            DEFAULT_PORT,
            0,
            ifindex,
        )),
        None => SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), DEFAULT_PORT),
    }
}

/// Sends one Probe (retransmitted on the agent schedule, never past `timeout`) and
/// returns the switch's capabilities with `request_addr` made usable (an unspecified
/// address in the reply means "the address that answered").
///
/// # Errors
/// A text reason: no reply, an unexpected answer, a socket error.
///
/// `egress`, the shell's one egress interface when known: the probe is sent out of it
/// (`SO_BINDTODEVICE`), so a broadcast probe needs no default route.
pub fn probe(
    keys: &AgentKeys,
    target: SocketAddr,
    counts: (u8, u8),
    want: CapFlags,
    timeout: Duration,
    egress: Option<&str>,
) -> Result<Capabilities, String> {
    let bind: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("probe socket: {e}"))?;
    if let Some(dev) = egress {
        tcp_repair::bind_to_device(&sock, dev)
            .map_err(|e| format!("probe socket: SO_BINDTODEVICE {dev}: {e}"))?;
    }
    match target.ip() {
        IpAddr::V4(ip) => {
            sock.set_ttl(1).map_err(|e| format!("IP_TTL: {e}"))?;
            if ip.is_broadcast() {
                sock.set_broadcast(true)
                    .map_err(|e| format!("SO_BROADCAST: {e}"))?;
            }
        }
        IpAddr::V6(_) => {
            tcp_repair::set_hop_limit_v6(&sock, 1).map_err(|e| format!("IPV6_UNICAST_HOPS: {e}"))?
        }
    }
    let mut req = Requester::from_socket(sock, keys.clone());
    let msg = Message::Probe(Probe {
        ingress_ifaces: counts.0,
        egress_ifaces: counts.1,
        want,
    });
    match req.request(target, &msg, Some(timeout)) {
        Ok((Message::ProbeReply(mut caps), from)) => {
            if caps.request_addr.ip().is_unspecified() {
                caps.request_addr = SocketAddr::new(from.ip(), caps.request_addr.port());
            }
            Ok(caps)
        }
        Ok((other, _)) => Err(format!(
            "switch answered the probe with {:?}",
            other.msg_type()
        )),
        Err(SendError::NoReply { .. }) => Err(format!(
            "no reply to probe sent to {target} within {} ms",
            timeout.as_millis()
        )),
        Err(e) => Err(format!("probe to {target}: {e}")),
    }
}
