//! Linux TCP connection state for the shell side of a stitch, behind a safe API.
//!
//! The shell (a relay proxy) hands a connection to the switch by reading its exact
//! sequence state (`TCP_REPAIR` + `TCP_QUEUE_SEQ`: the next byte it will send and the next
//! it expects), the options each end negotiated (`TCP_INFO`), and then keeping its socket
//! in repair mode: in repair mode the kernel sends nothing for it, and closing it sends
//! neither FIN nor RST (FIELD-NOTES, "Linux TCP hand-off"). Needs `CAP_NET_ADMIN`.
//!
//! Beside that, the OS facts the endpoint agents need and `std` lacks: `TCP_MAXSEG` before
//! connect ([`connect_with_mss`]), keepalive probes that make a quiet peer send a packet
//! ([`set_keepalive`]), IPv6 hop limits for one-hop probes, interface
//! addresses, process CPU time (module `sock`), and an `AF_PACKET` watcher that sees the
//! FINs the switch copies to the shell in teardown variants 4D/4E ([`PacketWatcher`]).
//!
//! This crate is the only place the endpoint side writes `unsafe`; every block says why it
//! is sound.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};

mod sock;
mod watch;

pub use sock::{
    bind_to_device, connect_with_mss, interface_addresses, process_cpu_time, set_hop_limit_v6,
    set_keepalive, set_mss,
};
pub use watch::{parse_tcp, Observed, PacketWatcher, TcpFlags, TcpSegment, WatchFilter};

/// Which socket queue a `TCP_QUEUE_SEQ` read refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Receive queue: `TCP_QUEUE_SEQ` gives `rcv_nxt`.
    Recv = 1,
    /// Send queue: `TCP_QUEUE_SEQ` gives `write_seq` (next byte the socket will send).
    Send = 2,
}

/// What `TCP_INFO` says about a connection, in the terms a stitch needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    /// TCP state (1 = ESTABLISHED).
    pub state: u8,
    /// Timestamps negotiated.
    pub timestamps: bool,
    /// SACK negotiated.
    pub sack: bool,
    /// Window scaling negotiated.
    pub wscale: bool,
    /// The shift the peer announced (applies to windows the peer sends).
    pub peer_wscale: u8,
    /// The shift this socket announced (applies to windows it sends).
    pub own_wscale: u8,
    /// Current sending MSS (payload bytes per segment, options excluded).
    pub snd_mss: u32,
    /// The MSS this socket advertised.
    pub advmss: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Segments received so far, pure ACKs and window probes included
    /// (`tcpi_segs_in`, Linux 4.2+; `None` from a kernel that does not report it).
    /// Wraps around.
    pub segs_in: Option<u32>,
}

/// Sequence state read in repair mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqState {
    /// Next sequence number this socket sends (all before it were sent).
    pub send: u32,
    /// Next sequence number this socket expects.
    pub recv: u32,
}

pub(crate) fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live i32 and we pass its exact size; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt_u32(fd: RawFd, level: i32, name: i32) -> io::Result<u32> {
    let mut v: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: v and len are live locals; the kernel writes at most `len` bytes into v.
    let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut u32).cast(), &mut len) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

fn ioctl_int(fd: RawFd, request: libc::Ioctl) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: SIOCINQ/SIOCOUTQ write one int through the pointer, which is a live local.
    let r = unsafe { libc::ioctl(fd, request, &mut v as *mut libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v as u32)
    }
}

/// `TCP_INFO` of a connected socket.
///
/// # Errors
/// When `fd` is not a TCP socket.
pub fn tcp_info(sock: &impl AsRawFd) -> io::Result<TcpInfo> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: info and len are live locals; the kernel writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let has_segs_in =
        len as usize >= std::mem::offset_of!(libc::tcp_info, tcpi_segs_in) + size_of::<u32>();
    Ok(TcpInfo {
        state: info.tcpi_state,
        timestamps: info.tcpi_options & 1 != 0,
        sack: info.tcpi_options & 2 != 0,
        wscale: info.tcpi_options & 4 != 0,
        peer_wscale: info.tcpi_snd_rcv_wscale & 0x0f,
        own_wscale: info.tcpi_snd_rcv_wscale >> 4,
        snd_mss: info.tcpi_snd_mss,
        advmss: info.tcpi_advmss,
        unacked: info.tcpi_unacked,
        segs_in: has_segs_in.then_some(info.tcpi_segs_in),
    })
}

/// Bytes in the send queue not yet acknowledged by the peer (sent or not).
///
/// # Errors
/// When `fd` is not a TCP socket.
pub fn unacked_bytes(sock: &impl AsRawFd) -> io::Result<u32> {
    ioctl_int(sock.as_raw_fd(), libc::TIOCOUTQ)
}

/// Bytes received and not yet read by the application.
///
/// # Errors
/// When `fd` is not a TCP socket.
pub fn unread_bytes(sock: &impl AsRawFd) -> io::Result<u32> {
    ioctl_int(sock.as_raw_fd(), libc::FIONREAD)
}

/// Puts the socket in repair mode: from now on the kernel sends nothing for it (no data,
/// no ACK, no FIN or RST when closed).
///
/// # Errors
/// `EPERM` without `CAP_NET_ADMIN`.
pub fn enter_repair(sock: &impl AsRawFd) -> io::Result<()> {
    setsockopt_int(sock.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_REPAIR, 1)
}

/// Leaves repair mode; the connection carries on (the kernel sends a window probe).
///
/// # Errors
/// When the socket is not in repair mode.
pub fn leave_repair(sock: &impl AsRawFd) -> io::Result<()> {
    setsockopt_int(sock.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_REPAIR, 0)
}

/// Reads `rcv_nxt` and `write_seq`. The socket must be in repair mode.
///
/// # Errors
/// When it is not, or the socket is not TCP.
pub fn read_seqs(sock: &impl AsRawFd) -> io::Result<SeqState> {
    let fd = sock.as_raw_fd();
    setsockopt_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR_QUEUE,
        Queue::Send as i32,
    )?;
    let send = getsockopt_u32(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)?;
    setsockopt_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR_QUEUE,
        Queue::Recv as i32,
    )?;
    let recv = getsockopt_u32(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)?;
    Ok(SeqState { send, recv })
}

/// The TSval the socket would put in its next segment.
///
/// # Errors
/// When the socket is not TCP.
pub fn timestamp(sock: &impl AsRawFd) -> io::Result<u32> {
    getsockopt_u32(sock.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_TIMESTAMP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn sequence_state_matches_bytes_exchanged_on_loopback() {
        assert!(
            is_root(),
            "tcp-repair tests need root (CAP_NET_ADMIN for TCP_REPAIR)"
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let info = tcp_info(&c).unwrap();
        assert_eq!(info.state, 1, "established");
        assert!(
            info.timestamps && info.sack && info.wscale,
            "Linux defaults: {info:?}"
        );
        enter_repair(&c).unwrap();
        let before = read_seqs(&c).unwrap();
        leave_repair(&c).unwrap();
        c.write_all(&[7u8; 1000]).unwrap();
        let mut buf = [0u8; 1000];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&[9u8; 300]).unwrap();
        c.read_exact(&mut buf[..300]).unwrap();
        // Wait for our 1000 bytes to be acknowledged.
        for _ in 0..100 {
            if unacked_bytes(&c).unwrap() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(unacked_bytes(&c).unwrap(), 0);
        assert_eq!(unread_bytes(&c).unwrap(), 0);
        enter_repair(&c).unwrap();
        let after = read_seqs(&c).unwrap();
        assert_eq!(after.send.wrapping_sub(before.send), 1000);
        assert_eq!(after.recv.wrapping_sub(before.recv), 300);
        enter_repair(&s).unwrap();
        let peer = read_seqs(&s).unwrap();
        assert_eq!(
            peer.recv, after.send,
            "server expects what the client sends next"
        );
        assert_eq!(peer.send, after.recv);
        assert!(timestamp(&c).is_ok());
    }

    #[test]
    fn segments_in_counts_pure_acks_and_keepalive_answers() {
        assert!(
            is_root(),
            "tcp-repair tests need root (CAP_NET_ADMIN for TCP_REPAIR)"
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let segs = |c: &TcpStream| tcp_info(c).unwrap().segs_in.expect("Linux 4.2+");
        let before = segs(&c);
        // Data one way: the client receives only the server's ACK(s), no data.
        c.write_all(&[1u8; 100]).unwrap();
        let mut buf = [0u8; 100];
        s.read_exact(&mut buf).unwrap();
        for _ in 0..100 {
            if unacked_bytes(&c).unwrap() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let acked = segs(&c);
        assert!(acked != before, "a pure ACK counts");
        // Idle: nothing arrives. With a 1 s keepalive the server answers a probe.
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(segs(&c), acked, "idle: nothing counted");
        set_keepalive(&c, Some(std::time::Duration::from_secs(1))).unwrap();
        let t = std::time::Instant::now();
        while segs(&c) == acked {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "no answer to a keepalive probe"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        set_keepalive(&c, None).unwrap();
        // The probe carried no data: nothing to read on the server.
        assert_eq!(unread_bytes(&s).unwrap(), 0);
    }
}
