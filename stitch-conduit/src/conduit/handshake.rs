//! The stitch handshake on the TCP stitch listener: the initiator's sealed hello, the
//! acceptor's checks (authentic, fresh, a member, a connection with the mirror
//! description, not refused by the application, its stitch slot free) and its answer.
//! The stitched connection is then handed to the connection's loop.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{log, unix_ms, Conn, Ev, MatchState, Shared, Slot};
use crate::envelope::open;
use crate::frame::{Frame, FrameReader};
use crate::msg::{Message, Reason};

pub(super) fn initiate(sh: Arc<Shared>, conn: Arc<Conn>, peer: SocketAddr) {
    {
        let mut st = conn.st();
        if st.refused {
            st.last_reason = Some(Reason::RefusedByApplication.to_string());
            return;
        }
        if st.slot != Slot::Free {
            st.last_reason = Some(Reason::AlreadyStitched.to_string());
            return;
        }
        st.slot = Slot::Outgoing;
    }
    let fail = |why: String| {
        log(
            &sh,
            format_args!("conn {}: stitch to {peer} failed: {why}", conn.id),
        );
        let mut st = conn.st();
        if st.slot == Slot::Outgoing {
            st.slot = Slot::Free;
        }
        st.last_reason = Some(why);
    };
    let Some(hello) = sh.seal(
        &Message::StitchHello {
            desc: conn.desc_now(),
            stitch_addr: sh.cfg.stitch_listen,
        },
        conn.desc.scope,
    ) else {
        return fail("cannot seal hello".into());
    };
    let mut s = match TcpStream::connect_timeout(&peer, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => return fail(format!("connect: {e}")),
    };
    let _ = s.set_nodelay(true);
    if let Err(e) = s.write_all(&Frame::StitchHello { sealed: hello }.encode()) {
        return fail(format!("send hello: {e}"));
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    match FrameReader::new(&s).next_frame() {
        Ok(Frame::StitchAccept) => {
            let _ = s.set_read_timeout(None);
            let mut st = conn.st();
            if st.slot != Slot::Outgoing {
                return;
            }
            st.slot = Slot::Established;
            drop(st);
            log(
                &sh,
                format_args!("conn {}: peer {peer} accepted the stitch", conn.id),
            );
            let _ = conn.tx.send(Ev::Stitched(s, peer));
        }
        Ok(Frame::StitchRefuse { reason }) => {
            let mut st = conn.st();
            if st.slot == Slot::Outgoing {
                st.slot = Slot::Free;
            }
            if st.slot == Slot::Free {
                st.matching = MatchState::Refused {
                    reason: format!("peer refused: {reason}"),
                };
            }
            st.last_reason = Some(format!("peer refused: {reason}"));
            drop(st);
            log(
                &sh,
                format_args!("conn {}: peer {peer} refused: {reason}", conn.id),
            );
        }
        other => fail(format!("no answer to hello: {other:?}")),
    }
}

pub(super) fn accept_stitch(sh: Arc<Shared>, s: TcpStream) {
    let from = s.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let sealed = match FrameReader::new(&s).next_frame() {
        Ok(Frame::StitchHello { sealed }) => sealed,
        other => {
            log(
                &sh,
                format_args!("stitched connection from {from}: expected hello, got {other:?}"),
            );
            return;
        }
    };
    let opened = {
        let mut g = sh.guard.lock().unwrap_or_else(|p| p.into_inner());
        open(&sealed, &sh.scopes(), &mut g, unix_ms())
    };
    let refuse = |r: Reason| {
        log(
            &sh,
            format_args!("refused stitched connection from {from}: {r}"),
        );
        let _ = (&s).write_all(&Frame::StitchRefuse { reason: r }.encode());
    };
    let (desc, peer_stitch) = match opened {
        Ok(o) => match o.msg {
            Message::StitchHello { desc, stitch_addr } if desc.scope == o.key_id => {
                (desc, stitch_addr)
            }
            Message::StitchHello { .. } => return refuse(Reason::ScopeMismatch),
            _ => {
                log(
                    &sh,
                    format_args!("stitched connection from {from}: not a hello"),
                );
                return;
            }
        },
        Err(e) => {
            log(
                &sh,
                format_args!("refused stitched connection from {from}: {e}"),
            );
            return;
        }
    };
    if !sh
        .scopes()
        .get(desc.scope)
        .is_some_and(|sc| sc.admits(desc.global_id))
    {
        return refuse(Reason::NotMember);
    }
    let Some(conn) = sh.find(&desc.tuple.mirror(), desc.scope) else {
        return refuse(Reason::UnknownConnection);
    };
    {
        let mut st = conn.st();
        if st.refused {
            st.last_reason = Some(format!(
                "refused stitch from global id {}: {}",
                desc.global_id,
                Reason::RefusedByApplication
            ));
            drop(st);
            return refuse(Reason::RefusedByApplication);
        }
        let take = match st.slot {
            Slot::Free => true,
            Slot::Outgoing => desc.global_id < sh.cfg.global_id,
            Slot::Established => false,
        };
        if !take {
            st.last_reason = Some(format!(
                "refused stitch from global id {}: {}",
                desc.global_id,
                Reason::AlreadyStitched
            ));
            drop(st);
            return refuse(Reason::AlreadyStitched);
        }
        st.slot = Slot::Established;
        if st.matched_at.is_none() {
            st.matched_at = Some(Instant::now());
        }
    }
    if (&s).write_all(&Frame::StitchAccept.encode()).is_err() {
        conn.st().slot = Slot::Free;
        return;
    }
    let _ = s.set_read_timeout(None);
    let _ = s.set_nodelay(true);
    log(
        &sh,
        format_args!(
            "conn {}: accepted stitch from {from} (global id {})",
            conn.id, desc.global_id
        ),
    );
    let _ = conn.tx.send(Ev::Stitched(s, peer_stitch));
}
