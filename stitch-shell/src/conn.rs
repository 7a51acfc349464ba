//! One relayed connection pair (C <-> A1 ... A2 <-> B) and its hand-off to the switch.
//!
//! Two pump threads copy bytes, one per direction. A pump can be *parked*: it finishes
//! writing whatever it already read (so no byte ever waits in user space), then stops
//! reading until released. The hand-off (DESIGN.md, "Hand-off without losing a byte"):
//!
//! 1. Prepare (the switch starts watching both legs) -> stitch id ([`Conn::prepare`]);
//! 2. wait, relaying, until both C and B have sent a packet through the switch since
//!    Prepare ([`Conn::legs_seen`]): the switch learns where each end is and its clock
//!    from its packets and refuses a commit without them. The shell cannot see the
//!    switch's state, but every segment its own socket receives after the Prepare answer
//!    (`tcpi_segs_in`, pure ACKs included) passed the watching switch. A request/response
//!    connection is often quiet between requests; optionally 1 s keepalives make a quiet
//!    peer answer with an ACK (a segment without data, one byte behind; the switch's
//!    checks ignore its sequence number, as it is not after anything seen). The caller
//!    gives up waiting with [`Conn::abort`], having frozen nothing;
//! 3. Freeze (the switch holds data towards the shell) ([`Conn::commit`] from here on);
//! 4. drain: keep relaying until both receive queues are empty and everything sent is
//!    acknowledged (SIOCINQ/SIOCOUTQ = 0 on both sockets), stable for 30 ms, then park
//!    the pumps and check once more;
//! 5. read TCP_INFO, enter TCP_REPAIR on both sockets, read the sequence numbers;
//! 6. Commit (S1 R1 S2 R2, window scales, timestamps, SACK).
//!
//! On ANY failure: leave repair mode if entered, release the pumps, send Abort (best
//! effort), carry on relaying; the client never notices. A Commit that gets no answer
//! at all is resolved by the Abort: if the switch says the stitch is not abortable any
//! more (`BAD_STATE`) it went live, and the hand-off counts as done. What failed is a
//! [`Failure`], with a stable [`Failure::key`] for counters.
//!
//! A failure after step 3 is what costs: the switch held the connection's packets
//! towards the shell for the whole drain (up to `drain_timeout_ms`), so the ends saw a
//! stall, and possibly retransmissions. Step 2 exists so that the predictable refusal
//! ("no packet seen yet") never costs a freeze.

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
/// Keepalive idle time and interval while a prepared stitch waits for a quiet leg (the
/// kernel's minimum).
const PROVOKE_IDLE: Duration = Duration::from_secs(1);

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
    /// The switch's request address.
    pub switch: SocketAddr,
    /// The legs.
    pub legs: Legs,
    /// Sequence state at commit.
    pub seqs: Seqs,
    /// From the Freeze request to the Commit's answer: how long the switch may have held
    /// packets and the shell drained.
    pub frozen_for: Duration,
}

/// A failed freeze-drain-commit: why, and the connection back (relaying again).
#[derive(Debug)]
pub struct HandOffError {
    /// Why.
    pub failure: Failure,
    /// From the Freeze request to the failure (`None`: it failed before the freeze).
    pub frozen_for: Option<Duration>,
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

fn queue_error(error: io::Error) -> Failure {
    Failure::Socket {
        what: "SIOCINQ/SIOCOUTQ",
        error,
    }
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
    fn drain(&self, limit: Duration) -> Result<(), Failure> {
        let deadline = Instant::now() + limit;
        let mut empty_since: Option<Instant> = None;
        let mut last = [0u32; 4];
        while Instant::now() < deadline {
            if self.half_closed() {
                return Err(Failure::Closing);
            }
            last = self.queues().map_err(queue_error)?;
            if last == [0; 4] {
                let since = *empty_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= QUIET {
                    if !self.park(deadline) {
                        break;
                    }
                    last = self.queues().map_err(queue_error)?;
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
        Err(Failure::DrainTimeout {
            limit,
            queues: last,
        })
    }

    /// Step 1: Prepare. The switch starts watching both legs; the answer names the
    /// stitch. From here on every segment the shell's sockets receive has passed the
    /// watching switch, which is what [`Conn::legs_seen`] counts. With `provoke`, both
    /// sockets get 1 s keepalives until [`Conn::commit`] or [`Conn::abort`]: a leg that
    /// stays quiet is made to send an ACK (module docs).
    ///
    /// # Errors
    /// [`Failure::AgentSocket`] or [`Failure::Switch`] (the connection relays on; a
    /// Prepare that was carried out but whose answers were all lost leaves a stitch the
    /// shell cannot name, which the switch ages out).
    pub fn prepare(
        &self,
        keys: &AgentKeys,
        switch: SocketAddr,
        p: PrepareParams,
    ) -> Result<Prepared, Failure> {
        let mut req = Requester::for_peer(switch, keys.clone()).map_err(Failure::AgentSocket)?;
        let prepare = Message::Prepare(PrepareReq {
            client: self.legs.client,
            shell_a: self.legs.shell_a,
            shell_b: self.legs.shell_b,
            core: self.legs.core,
            proto: Proto::Tcp,
            teardown: p.teardown,
            idle_timeout_s: p.idle_timeout_s,
            linger_s: p.linger_s,
        });
        let step = |error| Failure::Switch {
            step: Step::Prepare,
            error,
        };
        let stitch_id = call(&mut req, switch, &prepare)
            .map_err(step)?
            .ok_or_else(|| {
                step(CallError::Send(SendError::Unexpected(
                    "reply without a stitch id".into(),
                )))
            })?;
        let mut prepared = Prepared {
            stitch_id,
            switch,
            req,
            base: self.segs_in(),
            at: Instant::now(),
            provoking: false,
        };
        if p.provoke {
            prepared.provoking = self.keepalive(Some(PROVOKE_IDLE)).is_ok();
        }
        Ok(prepared)
    }

    /// Segments received on leg A and leg B so far (`None`: the kernel does not say).
    fn segs_in(&self) -> [Option<u32>; 2] {
        let n = |s: &TcpStream| tcp_repair::tcp_info(s).ok().and_then(|i| i.segs_in);
        [n(&self.ca), n(&self.ab)]
    }

    fn keepalive(&self, idle: Option<Duration>) -> io::Result<()> {
        let a = tcp_repair::set_keepalive(&self.ca, idle);
        let b = tcp_repair::set_keepalive(&self.ab, idle);
        a.and(b)
    }

    /// Which legs have sent anything through the switch since it started watching them:
    /// the switch can commit only when both have (it learns where C and B are, and their
    /// clocks, from their packets). A kernel that does not count received segments
    /// makes both count as seen, as before this check existed.
    pub fn legs_seen(&self, p: &Prepared) -> LegsSeen {
        let [a, b] = self.segs_in();
        let moved = |now: Option<u32>, base: Option<u32>| match (now, base) {
            (Some(now), Some(base)) => now != base,
            _ => true,
        };
        LegsSeen {
            client: moved(a, p.base[0]),
            core: moved(b, p.base[1]),
        }
    }

    /// Gives a prepared stitch back (best effort) without having frozen anything.
    pub fn abort(&self, mut p: Prepared) {
        if p.provoking {
            let _ = self.keepalive(None);
        }
        let _ = call(
            &mut p.req,
            p.switch,
            &Message::Abort {
                stitch_id: p.stitch_id,
            },
        );
    }

    /// Steps 2-5 (module docs): freeze, drain, repair mode, commit. Call it once
    /// [`Conn::legs_seen`] says both legs were seen, or the switch refuses the commit.
    /// On success the pumps are gone and the sockets are silent; on failure the
    /// connection is relaying again and the stitch was aborted.
    ///
    /// # Errors
    /// [`HandOffError`] with the reason and the connection back.
    pub fn commit(
        mut self,
        mut p: Prepared,
        drain_limit: Duration,
    ) -> Result<HandedOff, HandOffError> {
        if p.provoking {
            // No keepalive may leave a socket in repair mode, or after a failure.
            let _ = self.keepalive(None);
        }
        let stitch_id = p.stitch_id;
        let mut in_repair = false;
        let mut frozen_at = None;
        match self.freeze_and_commit(&mut p, drain_limit, &mut in_repair, &mut frozen_at) {
            Ok(seqs) => {
                let frozen_for = frozen_at.map(|t| t.elapsed()).unwrap_or_default();
                self.stop();
                Ok(HandedOff {
                    stitch_id,
                    switch: p.switch,
                    legs: self.legs,
                    seqs,
                    frozen_for,
                    ca: self.ca,
                    ab: self.ab,
                })
            }
            Err(failure) => {
                if in_repair {
                    let _ = tcp_repair::leave_repair(&self.ca);
                    let _ = tcp_repair::leave_repair(&self.ab);
                }
                self.release();
                let _ = call(&mut p.req, p.switch, &Message::Abort { stitch_id });
                Err(HandOffError {
                    failure,
                    frozen_for: frozen_at.map(|t| t.elapsed()),
                    conn: Box::new(self),
                })
            }
        }
    }

    fn freeze_and_commit(
        &mut self,
        p: &mut Prepared,
        drain_limit: Duration,
        in_repair: &mut bool,
        frozen_at: &mut Option<Instant>,
    ) -> Result<Seqs, Failure> {
        let (stitch_id, switch, req) = (p.stitch_id, p.switch, &mut p.req);
        let sw = |step| move |error| Failure::Switch { step, error };
        let sock = |what| move |error| Failure::Socket { what, error };
        let sent = Instant::now();
        call(req, switch, &Message::Freeze { stitch_id }).map_err(sw(Step::Freeze))?;
        // From the request on: the switch may hold packets as soon as it has it.
        *frozen_at = Some(sent);
        self.drain(drain_limit)?;
        let ia = tcp_repair::tcp_info(&self.ca).map_err(sock("TCP_INFO"))?;
        let ib = tcp_repair::tcp_info(&self.ab).map_err(sock("TCP_INFO"))?;
        tcp_repair::enter_repair(&self.ca).map_err(sock("TCP_REPAIR"))?;
        *in_repair = true;
        tcp_repair::enter_repair(&self.ab).map_err(sock("TCP_REPAIR"))?;
        let a = tcp_repair::read_seqs(&self.ca).map_err(sock("TCP_QUEUE_SEQ"))?;
        let b = tcp_repair::read_seqs(&self.ab).map_err(sock("TCP_QUEUE_SEQ"))?;
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
            Err(CallError::Send(SendError::NoReply {
                to,
                tries,
                waited_ms,
            })) => {
                // Did it go live? Ask by aborting: a live stitch cannot be aborted.
                match call(req, switch, &Message::Abort { stitch_id }) {
                    Err(CallError::Refused { code, .. }) if code == error_code::BAD_STATE => {
                        Ok(seqs)
                    }
                    _ => Err(Failure::Switch {
                        step: Step::Commit,
                        error: CallError::Send(SendError::NoReply {
                            to,
                            tries,
                            waited_ms,
                        }),
                    }),
                }
            }
            Err(e) => Err(sw(Step::Commit)(e)),
        }
    }
}

/// What Prepare asks of the switch, and whether to provoke quiet legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareParams {
    /// Teardown variant.
    pub teardown: Teardown,
    /// Idle timeout passed to the switch.
    pub idle_timeout_s: Option<u32>,
    /// Linger passed to the switch.
    pub linger_s: Option<u32>,
    /// Keepalive probes on both legs while waiting for them to be seen.
    pub provoke: bool,
}

/// A stitch the switch watches for this connection; nothing is frozen yet. Hand it to
/// [`Conn::commit`] or [`Conn::abort`]; dropping it leaves the stitch to the switch's
/// idle timeout.
#[derive(Debug)]
pub struct Prepared {
    /// The stitch id.
    pub stitch_id: u32,
    switch: SocketAddr,
    req: Requester,
    /// Segments received on leg A and leg B when the switch answered Prepare.
    base: [Option<u32>; 2],
    /// When the switch answered Prepare.
    pub at: Instant,
    /// Keepalives are on (to be turned off).
    provoking: bool,
}

/// Which legs sent a packet through the switch since Prepare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegsSeen {
    /// C, on leg A.
    pub client: bool,
    /// B, on leg B.
    pub core: bool,
}

impl LegsSeen {
    /// Both: a commit can succeed.
    pub fn both(self) -> bool {
        self.client && self.core
    }

    /// The legs not seen, for logs: "C", "B" or "C and B" (empty when both were).
    pub fn missing(self) -> &'static str {
        match (self.client, self.core) {
            (false, false) => "C and B",
            (false, true) => "C",
            (true, false) => "B",
            (true, true) => "",
        }
    }
}

/// The agent protocol step a request belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Prepare.
    Prepare,
    /// Freeze.
    Freeze,
    /// Commit.
    Commit,
}

impl Step {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::Freeze => "freeze",
            Step::Commit => "commit",
        }
    }
}

/// Why a hand-off attempt failed; the connection carries on through the shell.
#[derive(Debug)]
pub enum Failure {
    /// No agent socket could be opened.
    AgentSocket(io::Error),
    /// The switch refused a step, did not answer it, or answered something else.
    Switch {
        /// Which request.
        step: Step,
        /// What went wrong.
        error: CallError,
    },
    /// One direction of the connection ended during the hand-off.
    Closing,
    /// The relay did not drain in time.
    DrainTimeout {
        /// The limit.
        limit: Duration,
        /// Unread C->A, unread B->A, unacknowledged A->C, unacknowledged A->B at the end.
        queues: [u32; 4],
    },
    /// A socket call failed.
    Socket {
        /// Which one (`SIOCINQ/SIOCOUTQ`, `TCP_INFO`, `TCP_REPAIR`, `TCP_QUEUE_SEQ`).
        what: &'static str,
        /// The OS error.
        error: io::Error,
    },
}

/// An agent protocol error code as a word, for counter keys.
pub fn code_name(code: u16) -> &'static str {
    match code {
        error_code::UNSPECIFIED => "unspecified",
        error_code::BAD_REQUEST => "bad_request",
        error_code::NO_SUCH_STITCH => "no_such_stitch",
        error_code::BAD_STATE => "bad_state",
        error_code::BUSY => "busy",
        error_code::UNSUPPORTED => "unsupported",
        error_code::SEQ_MISMATCH => "seq_mismatch",
        _ => "other",
    }
}

impl Failure {
    /// A short stable key for counters: `agent_socket`, `<step>_refused_<code>`,
    /// `<step>_no_reply`, `<step>_error`, `closing`, `drain_timeout`, `socket_error`.
    pub fn key(&self) -> String {
        match self {
            Failure::AgentSocket(_) => "agent_socket".into(),
            Failure::Switch { step, error } => match error {
                CallError::Refused { code, .. } => {
                    format!("{}_refused_{}", step.name(), code_name(*code))
                }
                CallError::Send(SendError::NoReply { .. }) => format!("{}_no_reply", step.name()),
                CallError::Send(_) => format!("{}_error", step.name()),
            },
            Failure::Closing => "closing".into(),
            Failure::DrainTimeout { .. } => "drain_timeout".into(),
            Failure::Socket { .. } => "socket_error".into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::AgentSocket(e) => write!(f, "agent socket: {e}"),
            Failure::Switch {
                step,
                error: CallError::Refused { code, message },
            } => write!(f, "{} refused (code {code}): {message}", step.name()),
            Failure::Switch { step, error } => write!(f, "{}: {error}", step.name()),
            Failure::Closing => write!(f, "connection closing during hand-off"),
            Failure::DrainTimeout { limit, queues: q } => write!(
                f,
                "drain timeout after {} ms: unread C->A {} B->A {}, unacked A->C {} A->B {}",
                limit.as_millis(),
                q[0],
                q[1],
                q[2],
                q[3]
            ),
            Failure::Socket { what, error } => write!(f, "{what}: {error}"),
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
