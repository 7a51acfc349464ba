//! Watching TCP segments on every interface: the shell's FIN watcher (figures 4D/4E).
//!
//! In teardown variants 4D and 4E the switch sends the shell an UNtranslated copy of a
//! stitched connection's FIN (addressed to A1 or A2, with the original sequence
//! numbers). The shell's sockets are in repair mode by then, so the shell application
//! never sees it; the agent sees it here, through an `AF_PACKET` socket (`SOCK_DGRAM`:
//! packets start at the IP header; `ETH_P_ALL`; not bound: every interface).
//!
//! A classic BPF program attached to the socket keeps only IPv4/IPv6 TCP segments with
//! FIN or RST set ([`WatchFilter::FinRst`]), so a busy host does not copy every packet
//! to user space. IPv6 extension headers are not followed (a FIN behind one is not
//! seen); IPv4 fragments other than the first are not TCP headers and are skipped.
//!
//! Parsing ([`parse_tcp`]) is safe code over a byte slice and never panics. Needs
//! `CAP_NET_RAW`.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// TCP header flags (the low byte of the flags field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment field is significant.
    pub const ACK: u8 = 0x10;

    /// Whether FIN is set.
    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    /// Whether RST is set.
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    /// Whether SYN is set.
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    /// Whether ACK is set.
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

/// One TCP segment's addressing, flags and sequence fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Header flags.
    pub flags: TcpFlags,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful when ACK is set).
    pub ack: u32,
    /// Payload bytes after the TCP header.
    pub payload_len: usize,
}

/// What a segment seen by a [`PacketWatcher`] is, plus where it was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The segment.
    pub segment: TcpSegment,
    /// Interface index it was seen on.
    pub ifindex: u32,
    /// Whether this host sent it (on loopback every packet is seen twice: once going
    /// out, once coming in).
    pub outgoing: bool,
}

/// Which segments a [`PacketWatcher`] passes to user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFilter {
    /// Only TCP segments with FIN or RST (kernel-side BPF filter).
    FinRst,
    /// Every packet; non-TCP ones are skipped in user space.
    All,
}

/// Parses an IPv4 or IPv6 packet (starting at the IP header) carrying TCP.
/// `None` for anything else, truncated input, a non-first IPv4 fragment or an IPv6
/// extension header.
pub fn parse_tcp(pkt: &[u8]) -> Option<TcpSegment> {
    let version = pkt.first()? >> 4;
    let (src_ip, dst_ip, l4, l4_len): (IpAddr, IpAddr, &[u8], usize) = match version {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if ihl < 20 || pkt.len() < ihl || pkt[9] != 6 {
                return None;
            }
            let frag_offset = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
            if frag_offset != 0 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            let total = total.clamp(ihl, pkt.len());
            let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            (src.into(), dst.into(), &pkt[ihl..], total - ihl)
        }
        6 => {
            if pkt.len() < 40 || pkt[6] != 6 {
                return None;
            }
            let plen = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            let src: [u8; 16] = pkt[8..24].try_into().ok()?;
            let dst: [u8; 16] = pkt[24..40].try_into().ok()?;
            let l4 = &pkt[40..];
            (
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                l4,
                plen.min(l4.len()),
            )
        }
        _ => return None,
    };
    if l4.len() < 20 {
        return None;
    }
    let data_offset = usize::from(l4[12] >> 4) * 4;
    if data_offset < 20 {
        return None;
    }
    let word = |i: usize| u32::from_be_bytes([l4[i], l4[i + 1], l4[i + 2], l4[i + 3]]);
    Some(TcpSegment {
        src: SocketAddr::new(src_ip, u16::from_be_bytes([l4[0], l4[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([l4[2], l4[3]])),
        flags: TcpFlags(l4[13]),
        seq: word(4),
        ack: word(8),
        payload_len: l4_len.saturating_sub(data_offset),
    })
}

/// `SO_ATTACH_FILTER` (asm-generic value; not exported by `libc` for every target).
const SO_ATTACH_FILTER: libc::c_int = 26;
/// `sll_pkttype` of a packet this host sent.
const PACKET_OUTGOING: u8 = 4;

mod bpf {
    pub const LD: u16 = 0x00;
    pub const LDX: u16 = 0x01;
    pub const ALU: u16 = 0x04;
    pub const JMP: u16 = 0x05;
    pub const RET: u16 = 0x06;
    pub const B: u16 = 0x10;
    pub const ABS: u16 = 0x20;
    pub const IND: u16 = 0x40;
    pub const MSH: u16 = 0xa0;
    pub const RSH: u16 = 0x70;
    pub const JEQ: u16 = 0x10;
    pub const JSET: u16 = 0x40;
    pub const K: u16 = 0x00;
}

/// The FIN/RST filter. Offsets are from the IP header (SOCK_DGRAM packet sockets run
/// the filter on the network header). Jumps are relative to the next instruction.
fn fin_rst_program() -> Vec<libc::sock_filter> {
    use bpf::*;
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let fin_rst = u32::from(TcpFlags::FIN | TcpFlags::RST);
    vec![
        ins(LD | B | ABS, 0, 0, 0),         // 0: A = byte 0
        ins(ALU | RSH | K, 0, 0, 4),        // 1: A = IP version
        ins(JMP | JEQ | K, 0, 5, 4),        // 2: v4 ? 3 : 8
        ins(LD | B | ABS, 0, 0, 9),         // 3: A = protocol
        ins(JMP | JEQ | K, 0, 9, 6),        // 4: TCP ? 5 : drop
        ins(LDX | B | MSH, 0, 0, 0),        // 5: X = IHL * 4
        ins(LD | B | IND, 0, 0, 13),        // 6: A = TCP flags
        ins(JMP | JSET | K, 5, 6, fin_rst), // 7: FIN|RST ? accept : drop
        ins(JMP | JEQ | K, 0, 5, 6),        // 8: v6 ? 9 : drop
        ins(LD | B | ABS, 0, 0, 6),         // 9: A = next header
        ins(JMP | JEQ | K, 0, 3, 6),        // 10: TCP ? 11 : drop
        ins(LD | B | ABS, 0, 0, 40 + 13),   // 11: A = TCP flags
        ins(JMP | JSET | K, 0, 1, fin_rst), // 12: FIN|RST ? accept : drop
        ins(RET | K, 0, 0, 0x0004_0000),    // 13: accept
        ins(RET | K, 0, 0, 0),              // 14: drop
    ]
}

/// An `AF_PACKET` socket on every interface yielding TCP segments.
#[derive(Debug)]
pub struct PacketWatcher {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl PacketWatcher {
    /// Opens the watcher; [`PacketWatcher::recv`] blocks at most `read_timeout`.
    ///
    /// # Errors
    /// `EPERM` without `CAP_NET_RAW`; failures attaching the filter.
    pub fn open(filter: WatchFilter, read_timeout: Duration) -> io::Result<PacketWatcher> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; no pointers.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own and nothing else refers to it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if filter == WatchFilter::FinRst {
            let mut prog = fin_rst_program();
            let fprog = libc::sock_fprog {
                len: prog.len() as libc::c_ushort,
                filter: prog.as_mut_ptr(),
            };
            // SAFETY: `fprog` points at `prog`, live for the call; the kernel copies the
            // program and keeps no pointer to it.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_ATTACH_FILTER,
                    (&fprog as *const libc::sock_fprog).cast(),
                    size_of::<libc::sock_fprog>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        crate::sock::set_read_timeout(fd.as_raw_fd(), read_timeout)?;
        Ok(PacketWatcher {
            fd,
            buf: vec![0u8; 65536],
        })
    }

    /// The next TCP segment, or `Ok(None)` when the read timed out or the packet was not
    /// a TCP segment this parser understands.
    ///
    /// # Errors
    /// Socket errors other than a timeout or an interrupted call.
    pub fn recv(&mut self) -> io::Result<Option<Observed>> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut sll_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` is a live buffer of the given length; `sll`/`sll_len` are live
        // locals the kernel writes at most `sll_len` bytes into.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                0,
                (&mut sll as *mut libc::sockaddr_ll).cast(),
                &mut sll_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let len = (n as usize).min(self.buf.len());
        Ok(parse_tcp(&self.buf[..len]).map(|segment| Observed {
            segment,
            ifindex: sll.sll_ifindex as u32,
            outgoing: sll.sll_pkttype == PACKET_OUTGOING,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    #[rustfmt::skip]
    const V4_FIN: [u8; 40] = [
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        0x30, 0x39, 0x1b, 0x58, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0x50, 0x11, 0xff, 0xff, 0, 0, 0, 0,
    ];

    #[test]
    fn parses_ipv4_fin_ack() {
        let s = parse_tcp(&V4_FIN).unwrap();
        assert_eq!(s.src, "198.18.0.1:12345".parse().unwrap());
        assert_eq!(s.dst, "198.18.0.2:7000".parse().unwrap());
        assert!(s.flags.fin() && s.flags.ack() && !s.flags.rst());
        assert_eq!((s.seq, s.ack, s.payload_len), (0x1000, 0x2000, 0));
    }

    #[test]
    fn parses_ipv6_rst() {
        let mut p = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        p.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&[
            0, 80, 0x1f, 0x40, 0, 0, 0, 7, 0, 0, 0, 0, 0x50, 0x04, 0, 0, 0, 0, 0, 0,
        ]);
        let s = parse_tcp(&p).unwrap();
        assert_eq!(s.src, "[2001:db8::1]:80".parse().unwrap());
        assert_eq!(s.dst, "[2001:db8::2]:8000".parse().unwrap());
        assert!(s.flags.rst() && !s.flags.fin());
        assert_eq!(s.seq, 7);
    }

    #[test]
    fn truncated_or_foreign_packets_are_none_never_panic() {
        for n in 0..V4_FIN.len() {
            assert!(parse_tcp(&V4_FIN[..n]).is_none() || n >= 40, "len {n}");
        }
        let mut udp = V4_FIN;
        udp[9] = 17;
        assert!(parse_tcp(&udp).is_none());
        let mut frag = V4_FIN;
        frag[7] = 1;
        assert!(parse_tcp(&frag).is_none());
        assert!(parse_tcp(&[0x60; 39]).is_none());
        assert!(parse_tcp(&[0x90; 60]).is_none());
    }

    #[test]
    fn watcher_sees_a_loopback_fin_and_not_the_data() {
        let mut w = PacketWatcher::open(WatchFilter::FinRst, Duration::from_millis(50))
            .expect("AF_PACKET needs CAP_NET_RAW");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let (from, to) = (c.local_addr().unwrap(), l.local_addr().unwrap());
        c.write_all(b"hello").unwrap();
        drop(c);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = None;
        while Instant::now() < deadline {
            if let Some(o) = w.recv().unwrap() {
                let seg = o.segment;
                if seg.src == from && seg.dst == to && !o.outgoing {
                    seen = Some(seg);
                    break;
                }
                assert!(
                    seg.flags.fin() || seg.flags.rst(),
                    "filter let through {seg:?}"
                );
            }
        }
        let seg = seen.expect("FIN seen");
        assert!(seg.flags.fin());
        drop(s);
    }
}
