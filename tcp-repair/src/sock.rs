//! Socket options and host facts the shell needs that `std` does not expose.
//!
//! - [`connect_with_mss`] / [`set_mss`]: `TCP_MAXSEG` set BEFORE the handshake, so the MSS
//!   each leg announces is one the other leg can honour (DESIGN.md: "an MSS the far side
//!   may exceed is refused ... the shell can set TCP_MAXSEG before it connects leg B");
//! - [`set_keepalive`]: keepalive probes at a chosen idle time, to make a quiet peer send
//!   an ACK;
//! - [`set_hop_limit_v6`]: IPv6 unicast and multicast hop limit, for one-hop probes
//!   (`std` only has `set_ttl`, which is IPv4's `IP_TTL`);
//! - [`interface_addresses`]: which interface owns which address (`getifaddrs`), for the
//!   figure 5B interface count;
//! - [`process_cpu_time`]: user + system CPU time of this process (`getrusage`), for the
//!   "shell load" bypass policy.
//!
//! Every `unsafe` block says why it is sound; the functions themselves are safe.

use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::setsockopt_int;

/// Sets `TCP_MAXSEG` (the MSS this socket announces and the largest segment it sends).
/// On a listener the value is inherited by every accepted connection.
///
/// # Errors
/// `EINVAL` for values the kernel refuses (below 88 or above 32767), or when the socket
/// is not TCP.
pub fn set_mss(sock: &impl AsRawFd, mss: u16) -> io::Result<()> {
    setsockopt_int(
        sock.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_MAXSEG,
        i32::from(mss),
    )
}

/// Turns TCP keepalive on with probes after `idle` without anything received and every
/// `idle` after that (`SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`; whole seconds, at
/// least 1), or off with `None`. A probe is a segment without data one byte behind what
/// the peer has acknowledged: the peer answers it with an ACK, so a quiet peer is made to
/// send a packet (the shell uses this to let the switch see an idle leg).
///
/// # Errors
/// When the socket is not TCP.
pub fn set_keepalive(sock: &impl AsRawFd, idle: Option<Duration>) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let Some(idle) = idle else {
        return setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0);
    };
    let secs = i32::try_from(idle.as_secs()).unwrap_or(i32::MAX).max(1);
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs)?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)
}

/// Sets the IPv6 unicast AND multicast hop limit of a UDP socket (`IPV6_UNICAST_HOPS`,
/// `IPV6_MULTICAST_HOPS`).
///
/// # Errors
/// When the socket is not an IPv6 socket.
pub fn set_hop_limit_v6(sock: &impl AsRawFd, hops: u8) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    setsockopt_int(
        fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_UNICAST_HOPS,
        i32::from(hops),
    )?;
    setsockopt_int(
        fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_HOPS,
        i32::from(hops),
    )
}

/// Binds a socket to one network interface (`SO_BINDTODEVICE`): what it sends leaves
/// through `ifname` whatever the routing table says, so a broadcast probe needs no
/// default route.
///
/// # Errors
/// An unknown interface, a name longer than `IFNAMSIZ - 1`, or no `CAP_NET_RAW`.
pub fn bind_to_device(sock: &impl AsRawFd, ifname: &str) -> io::Result<()> {
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {ifname:?}"),
        ));
    }
    // SAFETY: `name` is a live byte slice and we pass its exact length; the kernel only
    // reads it (an interface name need not be NUL-terminated when the length is given).
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_timeval(fd: RawFd, name: i32, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a live timeval and we pass its exact size; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets `SO_RCVTIMEO` on any socket (zero: block forever).
pub(crate) fn set_read_timeout(fd: RawFd, d: Duration) -> io::Result<()> {
    set_timeval(fd, libc::SO_RCVTIMEO, d)
}

/// A `sockaddr_storage` holding `addr`, and its length.
fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in; we
            // write one whole sockaddr_in at its start.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6; we
            // write one whole sockaddr_in6 at its start.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Connects a TCP socket to `addr`, setting `TCP_MAXSEG` to `mss` first (when given) so
/// the SYN already announces it. Gives up after `timeout` (zero: the kernel's own).
///
/// # Errors
/// Socket creation, the option, or the connect failing; `TimedOut` after `timeout`.
pub fn connect_with_mss(
    addr: SocketAddr,
    mss: Option<u16>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) call; no pointers.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own and nothing else refers to it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(mss) = mss {
        set_mss(&fd, mss)?;
    }
    // A blocking connect honours SO_SNDTIMEO (it then fails with EINPROGRESS).
    set_timeval(fd.as_raw_fd(), libc::SO_SNDTIMEO, timeout)?;
    let (ss, len) = sockaddr_of(&addr);
    // SAFETY: `ss` is a live sockaddr_storage holding a valid address of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {timeout:?}"),
            ));
        }
        return Err(e);
    }
    set_timeval(fd.as_raw_fd(), libc::SO_SNDTIMEO, Duration::ZERO)?;
    Ok(TcpStream::from(fd))
}

/// Every address configured on every interface: (interface name, address).
///
/// # Errors
/// When `getifaddrs` fails.
pub fn interface_addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`, a live local.
    if unsafe { libc::getifaddrs(&mut head) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, which stays
        // valid until freeifaddrs below.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and points at least at a sockaddr header.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let ip = match family {
            libc::AF_INET => {
                // SAFETY: the family says the address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        out.push((name, ip));
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once; no reference into
    // the list outlives this call (names and addresses were copied).
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// User + system CPU time this process has used so far (`getrusage(RUSAGE_SELF)`).
///
/// # Errors
/// When `getrusage` fails (it does not, for `RUSAGE_SELF`).
pub fn process_cpu_time() -> io::Result<Duration> {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live local the kernel fills.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};

    #[test]
    fn connect_with_mss_announces_the_clamped_mss() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c =
            connect_with_mss(l.local_addr().unwrap(), Some(1000), Duration::from_secs(5)).unwrap();
        let (s, _) = l.accept().unwrap();
        // The server's sending MSS is bounded by what the client announced.
        let info = crate::tcp_info(&s).unwrap();
        assert!(info.snd_mss <= 1000, "{info:?}");
        assert!(crate::tcp_info(&c).unwrap().advmss <= 1000);
    }

    #[test]
    fn connect_with_mss_reports_refusal() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = connect_with_mss(addr, None, Duration::from_secs(2)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn loopback_owns_127_0_0_1() {
        let addrs = interface_addresses().unwrap();
        assert!(addrs
            .iter()
            .any(|(_, ip)| *ip == IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let before = process_cpu_time().unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(process_cpu_time().unwrap() > before);
    }

    #[test]
    fn hop_limit_applies_to_ipv6_sockets_only() {
        if let Ok(s6) = UdpSocket::bind("[::1]:0") {
            set_hop_limit_v6(&s6, 1).unwrap();
        }
        let s4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(set_hop_limit_v6(&s4, 1).is_err());
    }
}
