//! One conduit-to-conduit connection: sequencing, the drain, heartbeats, the end.
//!
//! [`Session`] is pure logic: the I/O driver feeds it [`Input`]s (bytes from the
//! application, frames from the original path or the stitched connection, ticks) with
//! the current time in microseconds, and performs the [`Output`]s it returns.
//!
//! Guarantees (the application sees one ordered, exactly-once byte stream):
//! - every message carries a sequence number (1, 2, ... per direction); a message is
//!   delivered only if it is the next one; an older one is a duplicate and dropped
//!   (counted); a newer one means a gap and ends the connection (never delivered out of
//!   order, never silently lost);
//! - drain (seed 000), both directions in parallel: when the stitched connection is
//!   ready, each side freezes its sending on the original path at `switch_point` (its
//!   last sent), holds new data, and sends its last received sequence number
//!   ([`Frame::DrainAck`]) on the original path, again after every message it receives
//!   there. When the peer's last received equals `switch_point`, everything sent on the
//!   original arrived: it sends [`Frame::DrainComplete`] and from then on sends only on
//!   the stitched connection. It keeps receiving on the original until the peer's
//!   DrainComplete. After `drain_timeout` the drain is assumed complete (a message lost
//!   by that assumption shows up as a gap and ends the connection, never as corruption);
//! - heartbeats flow over the original path in every phase; no acknowledgment within
//!   `heartbeat_timeout`, or the original closing before the orderly end, ends the
//!   connection: the driver closes the stitched connection and the application's;
//! - the orderly end: each side sends [`Frame::Fin`] after the application's last byte;
//!   once a side has sent its Fin and delivered the peer's, it sends [`Frame::Bye`] on
//!   the original path; both Byes exchanged means both streams were fully delivered.

use std::collections::VecDeque;

use serde::Serialize;

use crate::frame::{Frame, MAX_PAYLOAD};

/// Timing parameters, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Interval between heartbeats on the original path.
    pub heartbeat_interval_us: u64,
    /// The original path is declared dead when no heartbeat was acknowledged this long.
    pub heartbeat_timeout_us: u64,
    /// The drain is assumed complete after this long.
    pub drain_timeout_us: u64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Bytes the application sent.
    App(Vec<u8>),
    /// The application closed its sending side.
    AppEof,
    /// A frame from the original path.
    Original(Frame),
    /// The original path ended (EOF, reset or error).
    OriginalClosed,
    /// A frame from the stitched connection.
    Stitched(Frame),
    /// The stitched connection ended.
    StitchedClosed,
    /// The stitched connection is established (hello accepted): start draining.
    StitchReady,
    /// Time passed.
    Tick,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the application.
    ToApp(Vec<u8>),
    /// Close the application's receiving side (its peer finished sending).
    AppFin,
    /// Send on the original path.
    ToOriginal(Frame),
    /// Send on the stitched connection.
    ToStitched(Frame),
    /// The connection is over: close everything.
    Ended(EndReason),
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Both streams delivered, Byes exchanged.
    Normal,
    /// No heartbeat acknowledged within the timeout.
    HeartbeatTimeout,
    /// The original path closed before the orderly end.
    OriginalClosed,
    /// The stitched connection closed before the orderly end.
    StitchedClosed,
    /// A message is missing (the peer skipped a sequence number).
    SequenceGap,
    /// The peer broke the protocol.
    ProtocolError,
    /// The application's socket failed (set by the driver, not by [`Session`]).
    ApplicationClosed,
}

impl EndReason {
    /// Whether this is the orderly end.
    pub fn is_normal(self) -> bool {
        self == EndReason::Normal
    }
}

/// Where this side's outgoing messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Over the original path.
    Original,
    /// Drain in progress: new data held.
    Draining,
    /// Over the stitched connection only.
    Stitched,
    /// Ended.
    Ended,
}

/// Counters and timings, for the control socket.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SessionStats {
    /// Application bytes sent over the original path.
    pub tx_original_bytes: u64,
    /// Application bytes sent over the stitched connection.
    pub tx_stitched_bytes: u64,
    /// Application bytes received over the original path.
    pub rx_original_bytes: u64,
    /// Application bytes received over the stitched connection.
    pub rx_stitched_bytes: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Heartbeat acknowledgments received.
    pub heartbeat_acks: u64,
    /// Microseconds from stitch ready to the drain's end (both directions).
    pub drain_us: Option<u64>,
    /// Microseconds from stitch ready to the first data byte received over the stitched
    /// connection.
    pub first_stitched_byte_us: Option<u64>,
    /// Whether the drain ended by timeout rather than by DrainComplete.
    pub drain_timed_out: bool,
}

/// One connection's state.
#[derive(Debug)]
pub struct Session {
    timing: Timing,
    phase: Phase,
    next_seq: u64,
    last_recv: u64,
    fin_sent: bool,
    fin_received: bool,
    bye_sent: bool,
    bye_received: bool,
    switch_point: u64,
    peer_last_received: u64,
    drain_complete_sent: bool,
    drain_complete_received: bool,
    held: VecDeque<Frame>,
    ready_at: u64,
    hb_n: u64,
    next_hb_at: u64,
    last_ack_at: u64,
    stats: SessionStats,
}

impl Session {
    /// A new session at time `now` (microseconds), sending over the original path.
    pub fn new(timing: Timing, now: u64) -> Session {
        Session {
            timing,
            phase: Phase::Original,
            next_seq: 1,
            last_recv: 0,
            fin_sent: false,
            fin_received: false,
            bye_sent: false,
            bye_received: false,
            switch_point: 0,
            peer_last_received: 0,
            drain_complete_sent: false,
            drain_complete_received: false,
            held: VecDeque::new(),
            ready_at: 0,
            hb_n: 0,
            next_hb_at: now,
            last_ack_at: now,
            stats: SessionStats::default(),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Counters and timings.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Bytes held during the drain (not yet sent anywhere).
    pub fn held_bytes(&self) -> usize {
        self.held
            .iter()
            .map(|f| match f {
                Frame::Data { payload, .. } => payload.len(),
                _ => 0,
            })
            .sum()
    }

    /// Handles one input at time `now` (microseconds).
    pub fn handle(&mut self, input: Input, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if self.phase == Phase::Ended {
            return out;
        }
        match input {
            Input::App(bytes) => {
                for chunk in bytes.chunks(MAX_PAYLOAD) {
                    let f = Frame::Data {
                        seq: self.next_seq,
                        payload: chunk.to_vec(),
                    };
                    self.next_seq += 1;
                    self.send(f, &mut out);
                }
            }
            Input::AppEof => {
                if !self.fin_sent {
                    self.fin_sent = true;
                    let f = Frame::Fin { seq: self.next_seq };
                    self.next_seq += 1;
                    self.send(f, &mut out);
                }
            }
            Input::Original(f) => self.on_frame(f, true, now, &mut out),
            Input::Stitched(f) => self.on_frame(f, false, now, &mut out),
            Input::OriginalClosed => {
                if !self.bye_received {
                    self.end(EndReason::OriginalClosed, &mut out);
                }
            }
            Input::StitchedClosed => {
                // Once both Fins are through, the stitched connection is no longer
                // needed: the peer may close it (its orderly end) before its Bye, which
                // takes the slower original path, arrives.
                let done = self.fin_sent && self.fin_received && self.held.is_empty();
                if !self.bye_received && !done && self.phase != Phase::Original {
                    self.end(EndReason::StitchedClosed, &mut out);
                }
            }
            Input::StitchReady => {
                if self.phase == Phase::Original {
                    self.phase = Phase::Draining;
                    self.ready_at = now;
                    self.switch_point = self.next_seq - 1;
                    out.push(Output::ToOriginal(Frame::DrainAck {
                        last_received: self.last_recv,
                    }));
                    self.check_drain_ack(now, &mut out);
                }
            }
            Input::Tick => {}
        }
        self.on_time(now, &mut out);
        self.check_end(&mut out);
        out
    }

    fn send(&mut self, f: Frame, out: &mut Vec<Output>) {
        let n = match &f {
            Frame::Data { payload, .. } => payload.len() as u64,
            _ => 0,
        };
        match self.phase {
            Phase::Original => {
                self.stats.tx_original_bytes += n;
                out.push(Output::ToOriginal(f));
            }
            Phase::Draining if !self.drain_complete_sent => self.held.push_back(f),
            Phase::Draining | Phase::Stitched => {
                self.stats.tx_stitched_bytes += n;
                out.push(Output::ToStitched(f));
            }
            Phase::Ended => {}
        }
    }

    fn deliver(&mut self, seq: u64, f: Frame, original: bool, now: u64, out: &mut Vec<Output>) {
        if seq <= self.last_recv {
            self.stats.duplicates += 1;
            return;
        }
        if seq != self.last_recv + 1 || self.fin_received {
            self.end(EndReason::SequenceGap, out);
            return;
        }
        self.last_recv = seq;
        match f {
            Frame::Data { payload, .. } => {
                let n = payload.len() as u64;
                if original {
                    self.stats.rx_original_bytes += n;
                } else {
                    self.stats.rx_stitched_bytes += n;
                    if self.stats.first_stitched_byte_us.is_none() && n > 0 {
                        self.stats.first_stitched_byte_us = Some(now.saturating_sub(self.ready_at));
                    }
                }
                out.push(Output::ToApp(payload));
            }
            _ => {
                self.fin_received = true;
                out.push(Output::AppFin);
            }
        }
        if original && self.phase == Phase::Draining && !self.drain_complete_received {
            out.push(Output::ToOriginal(Frame::DrainAck {
                last_received: self.last_recv,
            }));
        }
    }

    fn on_frame(&mut self, f: Frame, original: bool, now: u64, out: &mut Vec<Output>) {
        match f {
            Frame::Data { seq, .. } | Frame::Fin { seq } => {
                if original && self.drain_complete_received {
                    // The peer promised nothing more comes this way.
                    self.end(EndReason::ProtocolError, out);
                    return;
                }
                if !original && self.phase == Phase::Original {
                    self.end(EndReason::ProtocolError, out);
                    return;
                }
                self.deliver(seq, f, original, now, out);
            }
            Frame::Heartbeat { n } => {
                let ack = Frame::HeartbeatAck { n };
                out.push(if original {
                    Output::ToOriginal(ack)
                } else {
                    Output::ToStitched(ack)
                });
            }
            Frame::HeartbeatAck { .. } => {
                if original {
                    self.stats.heartbeat_acks += 1;
                    self.last_ack_at = now;
                }
            }
            Frame::DrainAck { last_received } => {
                if last_received >= self.next_seq {
                    self.end(EndReason::ProtocolError, out);
                    return;
                }
                self.peer_last_received = self.peer_last_received.max(last_received);
                self.check_drain_ack(now, out);
            }
            Frame::DrainComplete { last_sent } => {
                if last_sent > self.last_recv {
                    self.end(EndReason::SequenceGap, out);
                    return;
                }
                self.drain_complete_received = true;
                self.check_drained(now);
            }
            Frame::Bye => self.bye_received = true,
            Frame::Open { .. }
            | Frame::StitchHello { .. }
            | Frame::StitchAccept
            | Frame::StitchRefuse { .. } => self.end(EndReason::ProtocolError, out),
        }
    }

    fn check_drain_ack(&mut self, now: u64, out: &mut Vec<Output>) {
        if self.phase == Phase::Draining
            && !self.drain_complete_sent
            && self.peer_last_received == self.switch_point
        {
            self.finish_tx_drain(out);
            out.push(Output::ToOriginal(Frame::DrainComplete {
                last_sent: self.switch_point,
            }));
            self.check_drained(now);
        }
    }

    /// This side's sending direction is drained: release held messages to the stitched
    /// connection.
    fn finish_tx_drain(&mut self, out: &mut Vec<Output>) {
        self.drain_complete_sent = true;
        while let Some(f) = self.held.pop_front() {
            if let Frame::Data { payload, .. } = &f {
                self.stats.tx_stitched_bytes += payload.len() as u64;
            }
            out.push(Output::ToStitched(f));
        }
    }

    fn check_drained(&mut self, now: u64) {
        if self.phase == Phase::Draining && self.drain_complete_sent && self.drain_complete_received
        {
            self.phase = Phase::Stitched;
            self.stats.drain_us = Some(now.saturating_sub(self.ready_at));
        }
    }

    fn on_time(&mut self, now: u64, out: &mut Vec<Output>) {
        if self.phase == Phase::Ended {
            return;
        }
        if now.saturating_sub(self.last_ack_at) > self.timing.heartbeat_timeout_us {
            self.end(EndReason::HeartbeatTimeout, out);
            return;
        }
        if now >= self.next_hb_at {
            self.hb_n += 1;
            self.stats.heartbeats_sent += 1;
            out.push(Output::ToOriginal(Frame::Heartbeat { n: self.hb_n }));
            self.next_hb_at = now + self.timing.heartbeat_interval_us;
        }
        if self.phase == Phase::Draining
            && now.saturating_sub(self.ready_at) > self.timing.drain_timeout_us
        {
            self.stats.drain_timed_out = true;
            if !self.drain_complete_sent {
                self.finish_tx_drain(out);
            }
            self.drain_complete_received = true;
            self.check_drained(now);
        }
    }

    fn check_end(&mut self, out: &mut Vec<Output>) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.fin_sent && self.fin_received && self.held.is_empty() && !self.bye_sent {
            self.bye_sent = true;
            out.push(Output::ToOriginal(Frame::Bye));
        }
        if self.bye_sent && self.bye_received {
            self.end(EndReason::Normal, out);
        }
    }

    fn end(&mut self, why: EndReason, out: &mut Vec<Output>) {
        if self.phase != Phase::Ended {
            self.phase = Phase::Ended;
            out.push(Output::Ended(why));
        }
    }

    /// Microseconds until the next timer (heartbeat) is due, for the driver's wait.
    pub fn next_deadline(&self, now: u64) -> u64 {
        self.next_hb_at.saturating_sub(now)
    }
}

#[cfg(test)]
mod tests;
