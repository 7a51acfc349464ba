//! The agent protocol over real UDP sockets, for both agents.
//!
//! `agent-proto` does no I/O and reads no clock; this module supplies the clock (unix
//! milliseconds), the nonces (16 bytes from `/dev/urandom` per datagram) and the
//! sockets:
//!
//! - [`Requester`]: sends one request and waits for its response, retransmitting on the
//!   `agent_proto::retry` schedule (same `request_id`, fresh nonce and timestamp);
//! - [`Responder`]: receives requests (Teardown notices, in practice), authenticates
//!   them, acknowledges each with `Reply::ok` and answers retransmissions from a
//!   [`ReplyCache`] so a notice is delivered once however often it is resent.
//!
//! Every refused datagram is counted by reason ([`AgentCounters`]); nothing a sender
//! without the key sends is logged or parsed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_proto::{
    error_code, open, retry, seal, AgentError, HeaderFields, KeyError, Keyring, Message, Opened,
    ReplayGuard, Reply, ReplyCache, TeardownMsg, MAX_DATAGRAM,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `N` bytes from the kernel's CSPRNG.
///
/// # Errors
/// When `/dev/urandom` cannot be opened or read.
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    static URANDOM: OnceLock<io::Result<File>> = OnceLock::new();
    let f = URANDOM.get_or_init(|| File::open("/dev/urandom"));
    let mut out = [0u8; N];
    match f {
        Ok(f) => {
            let mut f: &File = f;
            f.read_exact(&mut out)?
        }
        Err(e) => return Err(io::Error::new(e.kind(), format!("/dev/urandom: {e}"))),
    }
    Ok(out)
}

/// A fresh random request id.
///
/// # Errors
/// As [`random_bytes`].
pub fn new_request_id() -> io::Result<u64> {
    Ok(u64::from_be_bytes(random_bytes::<8>()?))
}

/// The matching scope an agent signs with: key id and keyring.
#[derive(Debug, Clone)]
pub struct AgentKeys {
    /// Key id put in every datagram this agent sends.
    pub key_id: u32,
    /// Keys accepted on receipt (contains `key_id`).
    pub ring: Keyring,
}

impl AgentKeys {
    /// One scope from a 64-hex-digit key, as configured.
    ///
    /// # Errors
    /// [`KeyError`] when the key is not 64 hex digits.
    pub fn from_hex(key_id: u32, hex: &str) -> Result<AgentKeys, KeyError> {
        Ok(AgentKeys {
            key_id,
            ring: Keyring::from_hex([(key_id, hex)])?,
        })
    }

    /// Seals `msg` with a fresh nonce and the current time.
    ///
    /// # Errors
    /// Sealing errors (over-long strings, unknown key) and nonce failures.
    pub fn seal(
        &self,
        msg: &Message,
        request_id: u64,
        response: bool,
    ) -> Result<Vec<u8>, SendError> {
        self.seal_as(self.key_id, msg, request_id, response)
    }

    /// As [`AgentKeys::seal`], signed with `key_id` (a reply uses its request's key).
    ///
    /// # Errors
    /// As [`AgentKeys::seal`]; `UnknownKey` when `key_id` is not in the ring.
    pub fn seal_as(
        &self,
        key_id: u32,
        msg: &Message,
        request_id: u64,
        response: bool,
    ) -> Result<Vec<u8>, SendError> {
        let nonce = random_bytes::<16>().map_err(SendError::Io)?;
        let hdr = HeaderFields {
            request_id,
            response,
            timestamp_ms: now_ms(),
            nonce,
            key_id,
        };
        seal(msg, hdr, &self.ring).map_err(SendError::Seal)
    }
}

/// Why a request got no usable answer.
#[derive(Debug, Error)]
pub enum SendError {
    /// A socket error.
    #[error("socket: {0}")]
    Io(io::Error),
    /// The message could not be sealed.
    #[error("cannot seal: {0}")]
    Seal(AgentError),
    /// The peer answered, but refused (error code and message).
    #[error("refused (code {code}): {message}")]
    Refused {
        /// `agent_proto::error_code` value.
        code: u16,
        /// The peer's message.
        message: String,
    },
    /// The peer answered with something other than a `Reply`.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// No authenticated response after every retransmission.
    #[error("no reply from {to} after {tries} tries ({waited_ms} ms)")]
    NoReply {
        /// Where the request went.
        to: SocketAddr,
        /// Datagrams sent.
        tries: u32,
        /// Time waited in all.
        waited_ms: u64,
    },
}

/// Drop and delivery counters of one agent socket.
#[derive(Debug, Default)]
pub struct AgentCounters {
    /// Authenticated requests received (retransmissions included).
    pub received: AtomicU64,
    /// Teardown notices delivered (each once).
    pub delivered: AtomicU64,
    /// Retransmissions answered from the reply cache.
    pub duplicates: AtomicU64,
    /// Requests of a type this agent does not serve (answered `BAD_REQUEST`).
    pub unsupported: AtomicU64,
    /// Stray responses (no request of ours waiting for them).
    pub stray_responses: AtomicU64,
    /// Datagrams refused by `open`, per `AgentError::counter_index`.
    pub dropped: [AtomicU64; 12],
}

/// A point-in-time copy of [`AgentCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersSnapshot {
    /// Authenticated requests received (retransmissions included).
    pub received: u64,
    /// Teardown notices delivered (each once).
    pub delivered: u64,
    /// Retransmissions answered from the reply cache.
    pub duplicates: u64,
    /// Requests of a type this agent does not serve.
    pub unsupported: u64,
    /// Stray responses.
    pub stray_responses: u64,
    /// Refused datagrams by reason (`AgentError::counter_name`), zero counts omitted.
    pub dropped: BTreeMap<String, u64>,
}

impl AgentCounters {
    /// Counts a refused datagram.
    pub fn drop_reason(&self, e: &AgentError) {
        self.dropped[e.counter_index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> CountersSnapshot {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersSnapshot {
            received: ld(&self.received),
            delivered: ld(&self.delivered),
            duplicates: ld(&self.duplicates),
            unsupported: ld(&self.unsupported),
            stray_responses: ld(&self.stray_responses),
            dropped: AgentError::COUNTER_NAMES
                .iter()
                .zip(&self.dropped)
                .filter(|(_, c)| ld(c) > 0)
                .map(|(n, c)| ((*n).to_string(), ld(c)))
                .collect(),
        }
    }
}

/// One UDP socket that sends requests and waits for their responses.
#[derive(Debug)]
pub struct Requester {
    sock: UdpSocket,
    keys: AgentKeys,
    guard: ReplayGuard,
    buf: Vec<u8>,
}

impl Requester {
    /// A requester on a socket bound to `bind` (port 0: any).
    ///
    /// # Errors
    /// When the socket cannot be bound.
    pub fn bind(bind: SocketAddr, keys: AgentKeys) -> io::Result<Requester> {
        Ok(Requester::from_socket(UdpSocket::bind(bind)?, keys))
    }

    /// A requester for `to`: bound to the unspecified address of `to`'s family, port 0.
    ///
    /// # Errors
    /// When the socket cannot be bound.
    pub fn for_peer(to: SocketAddr, keys: AgentKeys) -> io::Result<Requester> {
        let any: SocketAddr = if to.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        Requester::bind(any, keys)
    }

    /// A requester on an existing socket (e.g. one with TTL 1 for probes).
    pub fn from_socket(sock: UdpSocket, keys: AgentKeys) -> Requester {
        Requester {
            sock,
            keys,
            guard: ReplayGuard::new(1024),
            buf: vec![0u8; 2048],
        }
    }

    /// The socket, to set options on.
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Sends `msg` to `to` and returns the first authenticated response with the same
    /// request id (and who sent it), retransmitting on the `agent_proto::retry`
    /// schedule; never waits longer than `limit` in all (when given).
    ///
    /// # Errors
    /// [`SendError::NoReply`] after the last try; socket and sealing errors.
    pub fn request(
        &mut self,
        to: SocketAddr,
        msg: &Message,
        limit: Option<Duration>,
    ) -> Result<(Message, SocketAddr), SendError> {
        let request_id = new_request_id().map_err(SendError::Io)?;
        let start = Instant::now();
        let limit = limit.unwrap_or(Duration::from_millis(retry::GIVE_UP_AFTER_MS));
        let mut tries = 0;
        while let Some(wait) = retry::reply_timeout_ms(tries) {
            if start.elapsed() >= limit {
                break;
            }
            let dgram = self.keys.seal(msg, request_id, false)?;
            self.sock.send_to(&dgram, to).map_err(SendError::Io)?;
            tries += 1;
            let until = (Instant::now() + Duration::from_millis(wait)).min(start + limit);
            if let Some(answer) = self.wait_response(request_id, until)? {
                return Ok(answer);
            }
        }
        Err(SendError::NoReply {
            to,
            tries,
            waited_ms: start.elapsed().as_millis() as u64,
        })
    }

    fn wait_response(
        &mut self,
        request_id: u64,
        until: Instant,
    ) -> Result<Option<(Message, SocketAddr)>, SendError> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock
                .set_read_timeout(Some(left))
                .map_err(SendError::Io)?;
            let (n, from) = match self.sock.recv_from(&mut self.buf) {
                Ok(v) => v,
                Err(e) if is_timeout(&e) => return Ok(None),
                // ICMP port unreachable from an earlier send: keep waiting for the
                // retransmission schedule, the switch may come up.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::thread::sleep(left.min(Duration::from_millis(10)));
                    continue;
                }
                Err(e) => return Err(SendError::Io(e)),
            };
            let Ok(Opened { header, msg }) =
                open(&self.buf[..n], &self.keys.ring, &mut self.guard, now_ms())
            else {
                continue;
            };
            if header.is_response() && header.request_id == request_id {
                return Ok(Some((msg, from)));
            }
        }
    }
}

/// Whether an I/O error is a read timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// A teardown notice received and acknowledged, with who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The notice.
    pub msg: TeardownMsg,
    /// Its sender.
    pub from: SocketAddr,
}

/// The receiving side: a bound UDP socket that acknowledges Teardown requests.
#[derive(Debug)]
pub struct Responder {
    sock: UdpSocket,
    keys: AgentKeys,
    guard: ReplayGuard,
    cache: ReplyCache,
    counters: Arc<AgentCounters>,
    buf: Vec<u8>,
}

impl Responder {
    /// Binds `listen`; [`Responder::poll`] waits at most `tick` per call.
    ///
    /// # Errors
    /// When the socket cannot be bound.
    pub fn bind(listen: SocketAddr, keys: AgentKeys, tick: Duration) -> io::Result<Responder> {
        let sock = UdpSocket::bind(listen)?;
        sock.set_read_timeout(Some(tick))?;
        Ok(Responder {
            sock,
            keys,
            guard: ReplayGuard::new(65536),
            cache: ReplyCache::new(4096),
            counters: Arc::new(AgentCounters::default()),
            buf: vec![0u8; MAX_DATAGRAM + 1],
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// As `UdpSocket::local_addr`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Shared counters.
    pub fn counters(&self) -> Arc<AgentCounters> {
        self.counters.clone()
    }

    /// Handles at most one datagram; returns a NEW teardown notice (acknowledged
    /// already), `None` on timeout, a refused datagram, a duplicate or another request.
    ///
    /// # Errors
    /// Socket errors other than a timeout.
    pub fn poll(&mut self) -> io::Result<Option<Received>> {
        let (n, from) = match self.sock.recv_from(&mut self.buf) {
            Ok(v) => v,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::ConnectionRefused => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let now = now_ms();
        let opened = match open(&self.buf[..n], &self.keys.ring, &mut self.guard, now) {
            Ok(o) => o,
            Err(e) => {
                self.counters.drop_reason(&e);
                return Ok(None);
            }
        };
        let c = &self.counters;
        if opened.header.is_response() {
            c.stray_responses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        c.received.fetch_add(1, Ordering::Relaxed);
        let (key_id, rid) = (opened.header.key_id, opened.header.request_id);
        if let Some(cached) = self.cache.get(key_id, rid, now) {
            c.duplicates.fetch_add(1, Ordering::Relaxed);
            let _ = self.sock.send_to(cached, from);
            return Ok(None);
        }
        let (reply, delivered) = match opened.msg {
            Message::Teardown(td) if self.cache.has_room(now) => (
                Reply::ok(Some(td.stitch_id)),
                Some(Received { msg: td, from }),
            ),
            Message::Teardown(td) => (
                Reply::error(Some(td.stitch_id), error_code::BUSY, "reply cache full"),
                None,
            ),
            other => {
                c.unsupported.fetch_add(1, Ordering::Relaxed);
                let text = format!("an agent does not serve {:?}", other.msg_type());
                (Reply::error(None, error_code::BAD_REQUEST, text), None)
            }
        };
        // Replies sign with the key the request came with.
        let Ok(sealed) = self.keys.seal_as(key_id, &Message::Reply(reply), rid, true) else {
            return Ok(None);
        };
        let _ = self.sock.send_to(&sealed, from);
        if delivered.is_some() {
            self.cache.put(key_id, rid, sealed, now);
            c.delivered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::{EndKind, Side, Teardown};

    pub(crate) const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn td() -> TeardownMsg {
        TeardownMsg {
            stitch_id: 5,
            from: Side::Client,
            kind: EndKind::Fin,
            variant: Teardown::B,
            to: Side::Core,
            legs: None,
            bytes: Some((10, 20)),
        }
    }

    #[test]
    fn request_is_acked_and_delivered_once_even_when_retransmitted() {
        let keys = AgentKeys::from_hex(3, KEY).unwrap();
        let mut r = Responder::bind(
            "127.0.0.1:0".parse().unwrap(),
            keys.clone(),
            Duration::from_millis(20),
        )
        .unwrap();
        let to = r.local_addr().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let msg = Message::Teardown(td());
        // The same request id twice, as a retransmission would.
        for _ in 0..2 {
            let d = keys.seal(&msg, 77, false).unwrap();
            sender.send_to(&d, to).unwrap();
        }
        let first = r.poll().unwrap().expect("delivered");
        assert_eq!(first.msg, td());
        assert!(r.poll().unwrap().is_none(), "duplicate not delivered");
        let s = r.counters().snapshot();
        assert_eq!((s.received, s.delivered, s.duplicates), (2, 1, 1));
        // Both were acknowledged.
        let mut guard = ReplayGuard::new(16);
        let mut buf = [0u8; 2048];
        sender
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let n = sender.recv(&mut buf).unwrap();
        let first = buf[..n].to_vec();
        let o = open(&first, &keys.ring, &mut guard, now_ms()).unwrap();
        assert_eq!(o.header.request_id, 77);
        assert_eq!(o.msg, Message::Reply(Reply::ok(Some(5))));
        // The retransmission got the cached answer, byte for byte.
        let n = sender.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &first[..]);
    }

    #[test]
    fn requester_gives_up_after_the_schedule_with_a_reason() {
        let keys = AgentKeys::from_hex(3, KEY).unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut q = Requester::for_peer(silent.local_addr().unwrap(), keys).unwrap();
        let t = Instant::now();
        let e = q
            .request(
                silent.local_addr().unwrap(),
                &Message::Abort { stitch_id: 1 },
                Some(Duration::from_millis(350)),
            )
            .unwrap_err();
        assert!(matches!(e, SendError::NoReply { tries: 3, .. }), "{e}");
        assert!(t.elapsed() < Duration::from_millis(800));
        // Each try was a distinct datagram (fresh nonce) with the same request id.
        let mut buf = [0u8; 2048];
        let mut guard = ReplayGuard::new(16);
        let ring = AgentKeys::from_hex(3, KEY).unwrap().ring;
        let mut ids = vec![];
        silent
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while let Ok(n) = silent.recv(&mut buf) {
            ids.push(
                open(&buf[..n], &ring, &mut guard, now_ms())
                    .unwrap()
                    .header
                    .request_id,
            );
        }
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|&i| i == ids[0]));
    }
}
