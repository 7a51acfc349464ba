//! Figure 5B, step 542: how many ingress and egress interfaces the shell has.
//!
//! Stitching is attempted only in the topology of figure 5A: one ingress/egress
//! interface, the switch one hop away. The host is read from plain files so tests can
//! feed a fake one:
//!
//! - interfaces: `/sys/class/net/<name>/{flags,operstate,ifindex}`. Usable = `IFF_UP` set
//!   in `flags`, `IFF_LOOPBACK` clear, and `operstate` "up" or "unknown" (virtual
//!   devices such as tun report "unknown" while working);
//! - addresses: `getifaddrs` (sysfs does not list them); tests pass them in;
//! - routes: `/proc/net/route` (IPv4) and `/proc/net/ipv6_route` (IPv6).
//!
//! Ingress = usable interfaces owning a mapping's listen address (every usable one for
//! 0.0.0.0 / ::). Egress = usable interfaces of the longest-prefix routes to each
//! mapping's core (several routes of equal prefix, ECMP, count each). When no route is
//! found (routing in another table, policy routing, a local core) the count falls back
//! to every usable interface and says it guessed (`egress_guessed`): with one usable
//! interface that is still exact, with several it refuses stitching, which is the safe
//! side.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const RTF_UP: u32 = 0x1;

/// One network interface as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetIface {
    /// Interface name.
    pub name: String,
    /// Kernel interface index (0 if unreadable).
    pub ifindex: u32,
    /// Administratively up and operationally up (or "unknown").
    pub up: bool,
    /// A loopback device.
    pub loopback: bool,
}

impl NetIface {
    /// Whether it can carry the shell's traffic.
    pub fn usable(&self) -> bool {
        self.up && !self.loopback
    }
}

/// One route: destination prefix and the interface it leaves by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Interface name.
    pub iface: String,
    /// Destination network.
    pub dest: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Route {
    fn matches(&self, ip: IpAddr) -> bool {
        match (self.dest, ip) {
            (IpAddr::V4(d), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix.min(32)))
                    .unwrap_or(0);
                u32::from(d) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(d), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix.min(128)))
                    .unwrap_or(0);
                u128::from(d) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// What the host looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// Every interface.
    pub ifaces: Vec<NetIface>,
    /// (interface, address) pairs.
    pub addrs: Vec<(String, IpAddr)>,
    /// Routes of the main table(s).
    pub routes: Vec<Route>,
}

/// The result of counting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceCount {
    /// Ingress interface names.
    pub ingress: Vec<String>,
    /// Egress interface names.
    pub egress: Vec<String>,
    /// Whether the egress count fell back to "every usable interface".
    pub egress_guessed: bool,
}

impl IfaceCount {
    /// `None` when exactly one of each (stitching may be available), else the reason.
    pub fn refusal(&self) -> Option<String> {
        if self.ingress.len() != 1 {
            return Some(format!(
                "{} ingress interfaces ({})",
                self.ingress.len(),
                self.ingress.join(", ")
            ));
        }
        if self.egress.len() != 1 {
            return Some(format!(
                "{} egress interfaces ({}{})",
                self.egress.len(),
                self.egress.join(", "),
                if self.egress_guessed {
                    "; no route found, counted all"
                } else {
                    ""
                }
            ));
        }
        None
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Lists interfaces under a sysfs `class/net` directory.
///
/// # Errors
/// When the directory cannot be read.
pub fn read_sysfs(dir: &Path) -> io::Result<Vec<NetIface>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let p = entry.path();
        let flags = read_trim(&p.join("flags"))
            .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0);
        let oper = read_trim(&p.join("operstate")).unwrap_or_default();
        let ifindex = read_trim(&p.join("ifindex"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        out.push(NetIface {
            loopback: flags & IFF_LOOPBACK != 0 || name == "lo",
            up: flags & IFF_UP != 0 && matches!(oper.as_str(), "up" | "unknown"),
            name,
            ifindex,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Parses `/proc/net/route` text (addresses are printed in host byte order, i.e.
/// little-endian hex on the hosts this runs on).
pub fn parse_route_v4(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            let flags = hex(f[3])?;
            if flags & RTF_UP == 0 {
                return None;
            }
            let dest = Ipv4Addr::from(hex(f[1])?.to_le_bytes());
            let mask = hex(f[7])?;
            Some(Route {
                iface: f[0].to_string(),
                dest: dest.into(),
                prefix: mask.count_ones() as u8,
            })
        })
        .collect()
}

/// Parses `/proc/net/ipv6_route` text.
pub fn parse_route_v6(text: &str) -> Vec<Route> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[0].len() != 32 {
                return None;
            }
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            if flags & RTF_UP == 0 {
                return None;
            }
            Some(Route {
                iface: f[9].to_string(),
                dest: Ipv6Addr::from(u128::from_str_radix(f[0], 16).ok()?).into(),
                prefix: u8::from_str_radix(f[1], 16).ok()?,
            })
        })
        .collect()
}

impl HostView {
    /// Reads the real host: sysfs directory, `/proc/net`-like directory, `getifaddrs`.
    ///
    /// # Errors
    /// When the sysfs directory or the interface addresses cannot be read (missing route
    /// files only mean "no routes").
    pub fn read(sysfs_net: &Path, proc_net: &Path) -> io::Result<HostView> {
        let ifaces = read_sysfs(sysfs_net)?;
        let addrs = tcp_repair::interface_addresses()?;
        let mut routes = Vec::new();
        if let Ok(t) = std::fs::read_to_string(proc_net.join("route")) {
            routes.extend(parse_route_v4(&t));
        }
        if let Ok(t) = std::fs::read_to_string(proc_net.join("ipv6_route")) {
            routes.extend(parse_route_v6(&t));
        }
        Ok(HostView {
            ifaces,
            addrs,
            routes,
        })
    }

    fn usable(&self, name: &str) -> bool {
        self.ifaces.iter().any(|i| i.name == name && i.usable())
    }

    /// Index of interface `name`.
    pub fn ifindex(&self, name: &str) -> Option<u32> {
        self.ifaces
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.ifindex)
    }

    /// Counts ingress interfaces for `listens` and egress interfaces towards `cores`.
    pub fn count(&self, listens: &[SocketAddr], cores: &[SocketAddr]) -> IfaceCount {
        let all: BTreeSet<String> = self
            .ifaces
            .iter()
            .filter(|i| i.usable())
            .map(|i| i.name.clone())
            .collect();
        let mut ingress = BTreeSet::new();
        for l in listens {
            if l.ip().is_unspecified() {
                ingress.extend(all.iter().cloned());
            } else {
                let ip = l.ip().to_canonical();
                ingress.extend(
                    self.addrs
                        .iter()
                        .filter(|(n, a)| *a == ip && self.usable(n))
                        .map(|(n, _)| n.clone()),
                );
            }
        }
        let mut egress = BTreeSet::new();
        let mut guessed = false;
        for c in cores {
            let ip = c.ip().to_canonical();
            let candidates: Vec<&Route> = self
                .routes
                .iter()
                .filter(|r| r.matches(ip) && self.usable(&r.iface))
                .collect();
            match candidates.iter().map(|r| r.prefix).max() {
                Some(best) => egress.extend(
                    candidates
                        .iter()
                        .filter(|r| r.prefix == best)
                        .map(|r| r.iface.clone()),
                ),
                None => {
                    guessed = true;
                    egress.extend(all.iter().cloned());
                }
            }
        }
        IfaceCount {
            ingress: ingress.into_iter().collect(),
            egress: egress.into_iter().collect(),
            egress_guessed: guessed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_iface(root: &Path, name: &str, flags: &str, oper: &str, idx: u32) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("flags"), format!("{flags}\n")).unwrap();
        std::fs::write(d.join("operstate"), format!("{oper}\n")).unwrap();
        std::fs::write(d.join("ifindex"), format!("{idx}\n")).unwrap();
    }

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010012C6\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000012C6\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth1\t000013C6\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth2\t008013C6\t00000000\t0000\t0\t0\t0\t0080FFFF\t0\t0\t0
";

    const ROUTE6: &str = "20010db8000000000000000000000000 20 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    fn host(dir: &Path) -> HostView {
        fake_iface(dir, "lo", "0x9", "unknown", 1);
        fake_iface(dir, "eth0", "0x1003", "up", 2);
        fake_iface(dir, "eth1", "0x1003", "up", 3);
        fake_iface(dir, "eth2", "0x1002", "down", 4);
        fake_iface(dir, "tun0", "0x1091", "unknown", 5);
        let mut routes = parse_route_v4(ROUTE);
        routes.extend(parse_route_v6(ROUTE6));
        HostView {
            ifaces: read_sysfs(dir).unwrap(),
            addrs: vec![
                ("lo".into(), "127.0.0.1".parse().unwrap()),
                ("eth0".into(), "198.18.0.2".parse().unwrap()),
                ("eth0".into(), "2001:db8::2".parse().unwrap()),
                ("eth1".into(), "198.19.9.2".parse().unwrap()),
            ],
            routes,
        }
    }

    #[test]
    fn sysfs_flags_and_operstate_decide_usable() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let usable: Vec<&str> = h
            .ifaces
            .iter()
            .filter(|i| i.usable())
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(usable, ["eth0", "eth1", "tun0"]);
        assert_eq!(h.ifindex("eth1"), Some(3));
    }

    #[test]
    fn routes_parse_in_host_byte_order() {
        let r = parse_route_v4(ROUTE);
        assert_eq!(r.len(), 3, "eth2's route is not up");
        assert_eq!(r[1].dest, "198.18.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(r[1].prefix, 16);
        assert_eq!(r[0].prefix, 0);
        let r6 = parse_route_v6(ROUTE6);
        assert_eq!(r6[0].dest, "2001:db8::".parse::<IpAddr>().unwrap());
        assert_eq!(r6[0].prefix, 32);
    }

    #[test]
    fn one_ingress_one_egress_on_the_figure_5a_topology() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let c = h.count(
            &["198.18.0.2:7000".parse().unwrap()],
            &["198.18.0.3:8000".parse().unwrap()],
        );
        assert_eq!(c.ingress, ["eth0"]);
        assert_eq!(
            c.egress,
            ["eth0"],
            "longest prefix wins over the default route"
        );
        assert_eq!(c.refusal(), None);
        let c6 = h.count(
            &["[2001:db8::2]:7000".parse().unwrap()],
            &["[2001:db8::3]:8000".parse().unwrap()],
        );
        assert_eq!((c6.ingress.len(), c6.egress.len()), (1, 1));
    }

    #[test]
    fn wildcard_listen_or_two_cores_on_two_interfaces_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let c = h.count(
            &["0.0.0.0:7000".parse().unwrap()],
            &["198.18.0.3:8000".parse().unwrap()],
        );
        assert_eq!(c.ingress, ["eth0", "eth1", "tun0"]);
        assert_eq!(
            c.refusal().unwrap(),
            "3 ingress interfaces (eth0, eth1, tun0)"
        );
        let c = h.count(
            &["198.18.0.2:7000".parse().unwrap()],
            &[
                "198.18.0.3:8000".parse().unwrap(),
                "198.19.9.9:8000".parse().unwrap(),
            ],
        );
        assert_eq!(c.egress, ["eth0", "eth1"]);
        assert!(c.refusal().unwrap().starts_with("2 egress interfaces"));
    }

    #[test]
    fn loopback_listen_has_no_ingress_and_unrouted_core_is_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = host(dir.path());
        let c = h.count(
            &["127.0.0.1:7000".parse().unwrap()],
            &["198.18.0.3:8000".parse().unwrap()],
        );
        assert!(c.ingress.is_empty());
        assert_eq!(c.refusal().unwrap(), "0 ingress interfaces ()");
        h.routes.clear();
        let c = h.count(
            &["198.18.0.2:7000".parse().unwrap()],
            &["198.18.0.3:8000".parse().unwrap()],
        );
        assert!(c.egress_guessed);
        assert_eq!(c.egress.len(), 3);
    }
}
