//! One relayed connection pair (C <-> A1 ... A2 <-> B) and its hand-off to the switch.
//!
//! Two pump threads copy bytes, one per direction. A pump can be *parked*: it finishes
//! writing whatever it already read (so no byte ever waits in user space), then stops
//! reading until released. The hand-off (DESIGN.md, "Hand-off without losing a byte"):
//!
//! 1. Prepare (the switch starts watching both legs) -> stitch id;
//! 2. Freeze (the switch holds data towards the shell);
//! 3. drain: keep relaying until both receive queues are empty and everything sent is
//!    acknowledged (SIOCINQ/SIOCOUTQ = 0 on both sockets), stable for 30 ms, then park
//!    the pumps and check once more;
//! 4. read TCP_INFO, enter TCP_REPAIR on both sockets, read the sequence numbers;
//! 5. Commit (S1 R1 S2 R2, window scales, timestamps, SACK).
//!
//! On ANY failure: leave repair mode if entered, release the pumps, send Abort (best
//! effort), carry on relaying; the client never notices. A Commit that gets no answer
//! at all is resolved by the Abort: if the switch says the stitch is not abortable any
//! more (`BAD_STATE`) it went live, and the hand-off counts as done.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_proto::{error_code, CommitReq, Message, PrepareReq, Proto, Teardown};
use stitch_core::{canonical, AgentKeys, Requester, SendError};

/// How long the queues must stay empty before the pumps are parked.
const QUIET: Duration = Duration::from_millis(30);
/// Pump read timeout: how often an idle pump looks at its flags.
const PUMP_TICK: Duration = Duration::from_millis(10);

/// State a pump shares with its connection.
#[derive(Debug, Default)]
struct PumpShared {
    /// Bytes relayed.
    bytes: AtomicU64,
    /// Reads that returned data (the "packets" approximation).
    reads: AtomicU64,
    /// The pump ended (EOF or error); the other direction may still run.
    finished: AtomicBool,
    /// The pump saw EOF (a FIN), as opposed to an error.
    eof: AtomicBool,
    /// Generation of the last park request this pump obeyed.
    parked_gen: AtomicU64,
}

/// Flags the connection sets for both pumps.
#[derive(Debug, Default)]
struct Control {
    /// Park request; pumps park only with nothing pending.
    park: AtomicBool,
    /// Incremented with every park request.
    park_gen: AtomicU64,
    /// Leave now (shutdown, or the sockets were handed off).
    exit: AtomicBool,
}

/// The legs of a connection pair, as the switch sees them (IPv4-mapped addresses made
/// plain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Legs {
    /// C.
    pub client: SocketAddr,
    /// A1.
    pub shell_a: SocketAddr,
    /// A2.
    pub shell_b: SocketAddr,
    /// B.
    pub core: SocketAddr,
}

impl Legs {
    /// As the agent protocol's `[client, A1, A2, core]`.
    pub fn array(&self) -> [SocketAddr; 4] {
        [self.client, self.shell_a, self.shell_b, self.core]
    }
}

/// The sequence state at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seqs {
    /// Next sequence number the shell sends on leg A.
    pub s1: u32,
    /// Next sequence number the shell expects on leg A.
    pub r1: u32,
    /// Next sequence number the shell sends on leg B.
    pub s2: u32,
    /// Next sequence number the shell expects on leg B.
    pub r2: u32,
}

/// A connection pair being relayed.
#[derive(Debug)]
pub struct Conn {
    ca: TcpStream,
    ab: TcpStream,
    /// The legs.
    pub legs: Legs,
    /// When both legs were up.
    pub started: Instant,
    pumps: [Arc<PumpShared>; 2],
    control: Arc<Control>,
    threads: Threads,
}

/// The pump threads; dropping them stops and joins them.
#[derive(Debug)]
struct Threads {
    control: Arc<Control>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    fn stop(&mut self) {
        self.control.exit.store(true, Ordering::SeqCst);
        for t in self.handles.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A committed hand-off: the silenced sockets (in repair mode; dropping them sends
/// nothing) and what the switch was told.
#[derive(Debug)]
pub struct HandedOff {
    /// Leg A socket, in repair mode.
    pub ca: TcpStream,
    /// Leg B socket, in repair mode.
    pub ab: TcpStream,
    /// The stitch id.
    pub stitch_id: u32,
    /// The legs.
    pub legs: Legs,
    /// Sequence state at commit.
    pub seqs: Seqs,
}

/// Why a hand-off failed, with the stitch id when Prepare got that far.
#[derive(Debug)]
pub struct HandOffError {
    /// Human-readable reason, recorded in the status output.
    pub reason: String,
    /// The connection, relaying again.
    pub conn: Box<Conn>,
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    me: Arc<PumpShared>,
    control: Arc<Control>,
    totals: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let _ = from.set_read_timeout(Some(PUMP_TICK));
    let _ = to.set_write_timeout(Some(Duration::from_millis(50)));
    'outer: loop {
        if control.exit.load(Ordering::SeqCst) {
            break;
        }
        if control.park.load(Ordering::SeqCst) {
            let gen = control.park_gen.load(Ordering::SeqCst);
            me.parked_gen.store(gen, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => {
                // The peer closed its side: pass the FIN on, keep the other direction.
                me.eof.store(true, Ordering::SeqCst);
                let _ = to.shutdown(Shutdown::Write);
                break;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                break;
            }
        };
        me.reads.fetch_add(1, Ordering::Relaxed);
        // Write everything read before looking at any flag: no byte waits in user
        // space while parked, and none is dropped on the way out (only an error does).
        let mut off = 0;
        while off < n {
            match to.write(&buf[off..n]) {
                Ok(0) => break 'outer,
                Ok(w) => off += w,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    if control.exit.load(Ordering::SeqCst) {
                        break 'outer;
                    }
                }
                Err(_) => {
                    let _ = to.shutdown(Shutdown::Both);
                    let _ = from.shutdown(Shutdown::Both);
                    break 'outer;
                }
            }
        }
        me.bytes.fetch_add(n as u64, Ordering::Relaxed);
        totals.fetch_add(n as u64, Ordering::Relaxed);
    }
    me.finished.store(true, Ordering::SeqCst);
}

impl Conn {
    /// Starts relaying between an accepted client socket and a connected core socket.
    /// `totals` are the mapping's byte counters (C->B, B->C).
    ///
    /// # Errors
    /// When a socket cannot be cloned or its addresses read.
    pub fn start(ca: TcpStream, ab: TcpStream, totals: [Arc<AtomicU64>; 2]) -> io::Result<Conn> {
        let legs = Legs {
            client: canonical(ca.peer_addr()?),
            shell_a: canonical(ca.local_addr()?),
            shell_b: canonical(ab.local_addr()?),
            core: canonical(ab.peer_addr()?),
        };
        let pumps = [
            Arc::new(PumpShared::default()),
            Arc::new(PumpShared::default()),
        ];
        let control = Arc::new(Control::default());
        let mut threads = Vec::new();
        let [c_to_b, b_to_c] = totals;
        for (i, (from, to, total)) in [
            (ca.try_clone()?, ab.try_clone()?, c_to_b),
            (ab.try_clone()?, ca.try_clone()?, b_to_c),
        ]
        .into_iter()
        .enumerate()
        {
            let (me, control) = (pumps[i].clone(), control.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(if i == 0 { "pump-c2b" } else { "pump-b2c" }.into())
                    .spawn(move || pump(from, to, me, control, total))?,
            );
        }
        Ok(Conn {
            ca,
            ab,
            legs,
            started: Instant::now(),
            pumps,
            threads: Threads {
                control: control.clone(),
                handles: threads,
            },
            control,
        })
    }

    /// Bytes relayed, both directions.
    pub fn bytes(&self) -> u64 {
        self.pumps
            .iter()
            .map(|p| p.bytes.load(Ordering::Relaxed))
            .sum()
    }

    /// Reads done, both directions.
    pub fn reads(&self) -> u64 {
        self.pumps
            .iter()
            .map(|p| p.reads.load(Ordering::Relaxed))
            .sum()
    }

    /// Both directions ended: the connection is closed.
    pub fn closed(&self) -> bool {
        self.pumps.iter().all(|p| p.finished.load(Ordering::SeqCst))
    }

    /// One direction ended (a FIN passed, or an error): too late to hand off.
    pub fn half_closed(&self) -> bool {
        self.pumps.iter().any(|p| p.finished.load(Ordering::SeqCst))
    }

    /// Stops the pumps and waits for them.
    pub fn stop(&mut self) {
        self.threads.stop();
    }

    fn queues(&self) -> io::Result<[u32; 4]> {
        Ok([
            tcp_repair::unread_bytes(&self.ca)?,
            tcp_repair::unread_bytes(&self.ab)?,
            tcp_repair::unacked_bytes(&self.ca)?,
            tcp_repair::unacked_bytes(&self.ab)?,
        ])
    }

    fn park(&self, until: Instant) -> bool {
        let gen = self.control.park_gen.fetch_add(1, Ordering::SeqCst) + 1;
        self.control.park.store(true, Ordering::SeqCst);
        while Instant::now() < until {
            if self.pumps.iter().all(|p| {
                p.parked_gen.load(Ordering::SeqCst) == gen || p.finished.load(Ordering::SeqCst)
            }) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    fn release(&self) {
        self.control.park.store(false, Ordering::SeqCst);
    }

    /// Relays until both sockets' receive queues are empty and everything sent is
    /// acknowledged, for [`QUIET`]; returns with the pumps parked.
    fn drain(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut empty_since: Option<Instant> = None;
        let mut last = [0u32; 4];
        while Instant::now() < deadline {
            if self.half_closed() {
                return Err("connection closing during hand-off".into());
            }
            last = self
                .queues()
                .map_err(|e| format!("SIOCINQ/SIOCOUTQ: {e}"))?;
            if last == [0; 4] {
                let since = *empty_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= QUIET {
                    if !self.park(deadline) {
                        break;
                    }
                    last = self
                        .queues()
                        .map_err(|e| format!("SIOCINQ/SIOCOUTQ: {e}"))?;
                    if last == [0; 4] && !self.half_closed() {
                        return Ok(());
                    }
                    self.release();
                    empty_since = None;
                }
            } else {
                empty_since = None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.release();
        Err(format!(
            "drain timeout after {} ms: unread C->A {} B->A {}, unacked A->C {} A->B {}",
            limit.as_millis(),
            last[0],
            last[1],
            last[2],
            last[3]
        ))
    }

    /// The whole hand-off (module docs). On success the pumps are gone and the sockets
    /// are silent; on failure the connection is relaying again.
    ///
    /// # Errors
    /// [`HandOffError`] with the reason and the connection back.
    pub fn hand_off(
        mut self,
        keys: &AgentKeys,
        switch: SocketAddr,
        teardown: Teardown,
        idle_timeout_s: Option<u32>,
        linger_s: Option<u32>,
        drain_limit: Duration,
    ) -> Result<HandedOff, HandOffError> {
        let fail = |conn: Conn, reason: String| {
            Err(HandOffError {
                reason,
                conn: Box::new(conn),
            })
        };
        let mut req = match Requester::for_peer(switch, keys.clone()) {
            Ok(r) => r,
            Err(e) => return fail(self, format!("agent socket: {e}")),
        };
        let prepare = Message::Prepare(PrepareReq {
            client: self.legs.client,
            shell_a: self.legs.shell_a,
            shell_b: self.legs.shell_b,
            core: self.legs.core,
            proto: Proto::Tcp,
            teardown,
            idle_timeout_s,
            linger_s,
        });
        let stitch_id = match call(&mut req, switch, &prepare) {
            Ok(id) => match id {
                Some(id) => id,
                None => return fail(self, "prepare: reply without a stitch id".into()),
            },
            Err(e) => {
                // A Prepare that was carried out but whose answers were all lost leaves
                // a stitch we cannot name; the switch ages it out.
                return fail(self, format!("prepare: {e}"));
            }
        };
        let mut in_repair = false;
        match self.freeze_and_commit(&mut req, switch, stitch_id, drain_limit, &mut in_repair) {
            Ok(seqs) => {
                self.stop();
                Ok(HandedOff {
                    stitch_id,
                    legs: self.legs,
                    seqs,
                    ca: self.ca,
                    ab: self.ab,
                })
            }
            Err(reason) => {
                if in_repair {
                    let _ = tcp_repair::leave_repair(&self.ca);
                    let _ = tcp_repair::leave_repair(&self.ab);
                }
                self.release();
                let _ = call(&mut req, switch, &Message::Abort { stitch_id });
                fail(self, reason)
            }
        }
    }

    fn freeze_and_commit(
        &mut self,
        req: &mut Requester,
        switch: SocketAddr,
        stitch_id: u32,
        drain_limit: Duration,
        in_repair: &mut bool,
    ) -> Result<Seqs, String> {
        call(req, switch, &Message::Freeze { stitch_id }).map_err(|e| format!("freeze: {e}"))?;
        self.drain(drain_limit)?;
        let ia = tcp_repair::tcp_info(&self.ca).map_err(|e| format!("TCP_INFO: {e}"))?;
        let ib = tcp_repair::tcp_info(&self.ab).map_err(|e| format!("TCP_INFO: {e}"))?;
        tcp_repair::enter_repair(&self.ca).map_err(|e| format!("TCP_REPAIR: {e}"))?;
        *in_repair = true;
        tcp_repair::enter_repair(&self.ab).map_err(|e| format!("TCP_REPAIR: {e}"))?;
        let a = tcp_repair::read_seqs(&self.ca).map_err(|e| format!("TCP_QUEUE_SEQ: {e}"))?;
        let b = tcp_repair::read_seqs(&self.ab).map_err(|e| format!("TCP_QUEUE_SEQ: {e}"))?;
        let seqs = Seqs {
            s1: a.send,
            r1: a.recv,
            s2: b.send,
            r2: b.recv,
        };
        let ws = |on: bool, shift: u8| if on { shift } else { 0 };
        let commit = Message::Commit(CommitReq {
            stitch_id,
            s1: seqs.s1,
            r1: seqs.r1,
            s2: seqs.s2,
            r2: seqs.r2,
            wscale: Some([
                ws(ia.wscale, ia.peer_wscale),
                ws(ia.wscale, ia.own_wscale),
                ws(ib.wscale, ib.own_wscale),
                ws(ib.wscale, ib.peer_wscale),
            ]),
            mss: None,
            timestamps: Some((ia.timestamps, ib.timestamps)),
            sack: Some((ia.sack, ib.sack)),
        });
        match call(req, switch, &commit) {
            Ok(_) => Ok(seqs),
            Err(CallError::Refused { code, message }) => {
                Err(format!("commit refused (code {code}): {message}"))
            }
            Err(CallError::Send(SendError::NoReply { .. })) => {
                // Did it go live? Ask by aborting: a live stitch cannot be aborted.
                match call(req, switch, &Message::Abort { stitch_id }) {
                    Err(CallError::Refused { code, .. }) if code == error_code::BAD_STATE => {
                        Ok(seqs)
                    }
                    _ => Err(format!("commit: no reply from {switch}")),
                }
            }
            Err(e) => Err(format!("commit: {e}")),
        }
    }
}

/// A request's outcome short of success.
#[derive(Debug)]
pub enum CallError {
    /// Transport failure or no reply.
    Send(SendError),
    /// The switch said no.
    Refused {
        /// `error_code` value.
        code: u16,
        /// Its message.
        message: String,
    },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Send(e) => write!(f, "{e}"),
            CallError::Refused { code, message } => write!(f, "refused (code {code}): {message}"),
        }
    }
}

/// Sends a request to the switch and returns the reply's stitch id when it says ok.
///
/// # Errors
/// [`CallError`].
pub fn call(req: &mut Requester, to: SocketAddr, msg: &Message) -> Result<Option<u32>, CallError> {
    match req.request(to, msg, None).map_err(CallError::Send)?.0 {
        Message::Reply(r) if r.ok => Ok(r.stitch_id),
        Message::Reply(r) => Err(CallError::Refused {
            code: r.error_code,
            message: r.message,
        }),
        other => Err(CallError::Send(SendError::Unexpected(format!(
            "{:?}",
            other.msg_type()
        )))),
    }
}
