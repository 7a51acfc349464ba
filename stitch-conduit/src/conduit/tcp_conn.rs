//! TCP connections: the application's socket, the original path and (once stitched)
//! the stitched connection around one [`Session`].
//!
//! One loop thread per connection owns the [`Session`]; reader threads only read and
//! forward to it over a channel, so the session sees one ordered event stream; every
//! socket has a writer thread ([`SockWriter`]) so the loop never blocks on a stalled
//! path (a frozen proxy must not stop the heartbeat timeout from firing). Reading from
//! the application stops while more than [`CREDIT_BYTES`] are read but not yet written
//! towards the peer (held during the drain included): back-pressure reaches the
//! application through TCP.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::{initiate, log, register, Ev, MatchState, Publisher, Role, Shared, CREDIT_BYTES};
use crate::desc::{ConnDesc, Proto, Tuple};
use crate::frame::{Frame, FrameReader};
use crate::session::{EndReason, Input, Output, Phase, Session};

/// Bytes read from the application and not yet written out.
pub(super) struct Credit {
    used: Mutex<(usize, bool)>,
    cv: Condvar,
}

impl Credit {
    pub(super) fn new() -> Credit {
        Credit {
            used: Mutex::new((0, false)),
            cv: Condvar::new(),
        }
    }
    /// Waits until below the limit; false once closed.
    pub(super) fn wait(&self) -> bool {
        let mut g = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while g.0 >= CREDIT_BYTES && !g.1 {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        !g.1
    }
    pub(super) fn take(&self, n: usize) {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).0 += n;
    }
    pub(super) fn give(&self, n: usize) {
        let mut g = self.used.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(n);
        self.cv.notify_all();
    }
    pub(super) fn close(&self) {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.cv.notify_all();
    }
}

pub(super) fn open_route(sh: Arc<Shared>, route: crate::config::Route, app: TcpStream) {
    let Some(scope) = sh.scopes().by_name(&route.scope).map(|s| s.key_id) else {
        log(
            &sh,
            format_args!("route {}: scope {:?} is gone", route.listen, route.scope),
        );
        return;
    };
    let Ok(app_addr) = app.peer_addr() else {
        return;
    };
    let orig = match TcpStream::connect_timeout(&route.upstream, Duration::from_secs(5)) {
        Ok(o) => o,
        Err(e) => {
            log(&sh, format_args!("upstream {}: {e}", route.upstream));
            return;
        }
    };
    let _ = orig.set_nodelay(true);
    let _ = app.set_nodelay(true);
    let open = Frame::Open {
        global_id: sh.cfg.global_id,
        scope,
        app: app_addr,
        service: route.service,
    };
    if (&orig).write_all(&open.encode()).is_err() {
        return;
    }
    let desc = ConnDesc {
        tuple: Tuple {
            proto: Proto::Tcp,
            src: app_addr,
            dst: route.service,
        },
        age_ms: 0,
        global_id: sh.cfg.global_id,
        scope,
    };
    run_conn(
        sh,
        Role::Opener,
        desc,
        route.auto,
        route.preconfigured_peer,
        app,
        orig,
    );
}

pub(super) fn accept_inbound(sh: Arc<Shared>, inb: crate::config::Inbound, orig: TcpStream) {
    let Some(scope) = sh.scopes().by_name(&inb.scope).map(|s| s.key_id) else {
        log(
            &sh,
            format_args!("inbound {}: scope {:?} is gone", inb.listen, inb.scope),
        );
        return;
    };
    let _ = orig.set_read_timeout(Some(Duration::from_secs(10)));
    let first = FrameReader::new(&orig).next_frame();
    let app_addr = match first {
        Ok(Frame::Open { app, .. }) => app,
        other => {
            log(
                &sh,
                format_args!("inbound {}: expected Open, got {other:?}", inb.listen),
            );
            return;
        }
    };
    let _ = orig.set_read_timeout(None);
    let target = match TcpStream::connect_timeout(&inb.target, Duration::from_secs(5)) {
        Ok(t) => t,
        Err(e) => {
            log(&sh, format_args!("target {}: {e}", inb.target));
            return;
        }
    };
    let _ = orig.set_nodelay(true);
    let _ = target.set_nodelay(true);
    let desc = ConnDesc {
        tuple: Tuple {
            proto: Proto::Tcp,
            src: inb.service,
            dst: app_addr,
        },
        age_ms: 0,
        global_id: sh.cfg.global_id,
        scope,
    };
    run_conn(sh, Role::Acceptor, desc, inb.auto, None, target, orig);
}

fn spawn_frame_reader(stream: TcpStream, tx: Sender<Ev>, wrap: fn(Frame) -> Input, closed: Input) {
    thread::spawn(move || {
        let mut r = FrameReader::new(stream);
        loop {
            match r.next_frame() {
                Ok(f) => {
                    if tx.send(Ev::In(wrap(f))).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = tx.send(Ev::In(closed));
                    return;
                }
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn run_conn(
    sh: Arc<Shared>,
    role: Role,
    desc: ConnDesc,
    auto: bool,
    preconfigured_peer: Option<SocketAddr>,
    app: TcpStream,
    orig: TcpStream,
) {
    let (tx, rx) = mpsc::channel();
    let conn = register(&sh, role, desc, tx.clone());
    let id = conn.id;
    let credit = Arc::new(Credit::new());
    let clones = (
        app.try_clone(),
        orig.try_clone(),
        app.try_clone(),
        orig.try_clone(),
    );
    let (Ok(app_r), Ok(orig_r), Ok(app_s), Ok(orig_s)) = clones else {
        conn.st().ended = Some(EndReason::ApplicationClosed);
        return;
    };
    {
        let (tx, credit) = (tx.clone(), credit.clone());
        thread::spawn(move || {
            let mut app_r = app_r;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if !credit.wait() {
                    return;
                }
                match app_r.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Ev::In(Input::AppEof));
                        return;
                    }
                    Ok(n) => {
                        credit.take(n);
                        if tx.send(Ev::In(Input::App(buf[..n].to_vec()))).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    spawn_frame_reader(orig_r, tx.clone(), Input::Original, Input::OriginalClosed);

    let mut session = Session::new(sh.timing, sh.now_us());
    let app_w = SockWriter::spawn(app, app_s, credit.clone(), tx.clone(), Ev::AppGone);
    let orig_w = SockWriter::spawn(
        orig,
        orig_s,
        credit.clone(),
        tx.clone(),
        Ev::In(Input::OriginalClosed),
    );
    let mut stitched_w: Option<SockWriter> = None;
    let mut app_bytes: u64 = 0;
    let mut publisher = Publisher::new(&sh, auto, preconfigured_peer);
    let ended: EndReason;
    'outer: loop {
        let wait = Duration::from_micros(session.next_deadline(sh.now_us()).clamp(1_000, 20_000));
        let mut evs = Vec::new();
        match rx.recv_timeout(wait) {
            Ok(e) => evs.push(e),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                ended = EndReason::ProtocolError;
                break;
            }
        }
        while evs.len() < 1024 {
            match rx.try_recv() {
                Ok(e) => evs.push(e),
                Err(_) => break,
            }
        }
        evs.push(Ev::In(Input::Tick));
        for ev in evs {
            let outs = match ev {
                Ev::In(input) => {
                    if let Input::App(b) = &input {
                        app_bytes += b.len() as u64;
                    }
                    session.handle(input, sh.now_us())
                }
                Ev::Initiate(peer) => {
                    let (sh, conn) = (sh.clone(), conn.clone());
                    thread::spawn(move || initiate(sh, conn, peer));
                    Vec::new()
                }
                Ev::Stitched(s, _) => {
                    let (Ok(r), Ok(s2)) = (s.try_clone(), s.try_clone()) else {
                        continue;
                    };
                    let outs = session.handle(Input::StitchReady, sh.now_us());
                    spawn_frame_reader(r, tx.clone(), Input::Stitched, Input::StitchedClosed);
                    stitched_w = Some(SockWriter::spawn(
                        s,
                        s2,
                        credit.clone(),
                        tx.clone(),
                        Ev::In(Input::StitchedClosed),
                    ));
                    let mut st = conn.st();
                    st.match_to_ready_us = st.matched_at.map(|t| t.elapsed().as_micros() as u64);
                    log(
                        &sh,
                        format_args!("conn {id}: stitched connection ready, draining"),
                    );
                    outs
                }
                Ev::Publish => {
                    publisher.request();
                    Vec::new()
                }
                Ev::AppGone => {
                    ended = EndReason::ApplicationClosed;
                    break 'outer;
                }
                Ev::UdpApp(_) | Ev::UdpIn(..) => Vec::new(),
            };
            for o in outs {
                match o {
                    Output::ToApp(b) => {
                        app_bytes += b.len() as u64;
                        app_w.send(WriteOp::Bytes(b, 0));
                    }
                    Output::AppFin => app_w.send(WriteOp::ShutdownWrite),
                    Output::ToOriginal(f) => orig_w.send(frame_op(&f)),
                    Output::ToStitched(f) => match &stitched_w {
                        Some(w) => w.send(frame_op(&f)),
                        None => {
                            let _ = tx.send(Ev::In(Input::StitchedClosed));
                        }
                    },
                    Output::Ended(r) => {
                        ended = r;
                        break 'outer;
                    }
                }
            }
        }
        publisher.tick(&sh, &conn, app_bytes);
        let mut st = conn.st();
        st.phase = session.phase();
        st.stats = session.stats();
    }
    credit.close();
    {
        let mut st = conn.st();
        st.phase = Phase::Ended;
        st.stats = session.stats();
        st.ended = Some(ended);
    }
    log(&sh, format_args!("conn {id}: ended: {ended:?}"));
    // Orderly end: everything queued (the last data, Fin, Bye) is written first. Abnormal
    // end: the sockets are shut at once (unblocking a writer stuck on a dead path); the
    // application sees its connection end as a TCP connection ends (FIN), and what it
    // had not yet received is not delivered.
    let graceful = ended.is_normal();
    app_w.finish(graceful);
    orig_w.finish(graceful);
    if let Some(w) = stitched_w {
        w.finish(graceful);
    }
    if !matches!(conn.st().matching, MatchState::Idle) {
        sh.withdraw(&conn);
    }
}

/// One write for a [`SockWriter`].
enum WriteOp {
    /// Bytes, and how much application credit they return once written.
    Bytes(Vec<u8>, usize),
    /// Close the sending side.
    ShutdownWrite,
}

fn frame_op(f: &Frame) -> WriteOp {
    let credit = match f {
        Frame::Data { payload, .. } => payload.len(),
        _ => 0,
    };
    WriteOp::Bytes(f.encode(), credit)
}

/// A thread that owns the writes to one socket, so the session loop never blocks on a
/// stalled path (a frozen proxy must not stop heartbeat timeouts from firing). The
/// queue holds at most [`CREDIT_BYTES`] of application data towards the conduits (the
/// credit is returned once written); towards the application it is bounded only by
/// what the peer sends (see `docs/source-switching.md`).
struct SockWriter {
    tx: Sender<WriteOp>,
    sock: TcpStream,
    handle: thread::JoinHandle<()>,
}

impl SockWriter {
    /// `w` is written by the thread; `sock` (a clone) is kept to shut it down.
    fn spawn(
        mut w: TcpStream,
        sock: TcpStream,
        credit: Arc<Credit>,
        events: Sender<Ev>,
        on_error: Ev,
    ) -> SockWriter {
        let (tx, rx) = mpsc::channel::<WriteOp>();
        let handle = thread::spawn(move || {
            let mut on_error = Some(on_error);
            for op in rx {
                let ok = match op {
                    WriteOp::Bytes(b, n) => {
                        let ok = on_error.is_none() || w.write_all(&b).is_ok();
                        credit.give(n);
                        ok
                    }
                    WriteOp::ShutdownWrite => {
                        let _ = w.shutdown(Shutdown::Write);
                        true
                    }
                };
                if !ok {
                    if let Some(ev) = on_error.take() {
                        let _ = events.send(ev);
                    }
                }
            }
        });
        SockWriter { tx, sock, handle }
    }

    fn send(&self, op: WriteOp) {
        let _ = self.tx.send(op);
    }

    /// Closes: after the queue is written (`graceful`), or at once.
    fn finish(self, graceful: bool) {
        if !graceful {
            let _ = self.sock.shutdown(Shutdown::Both);
        }
        drop(self.tx);
        let _ = self.handle.join();
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}
