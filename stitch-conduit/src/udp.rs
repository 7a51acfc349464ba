//! UDP switch-over (seed 000: "a stand-off period" or "drop what carries a sequence
//! number below a certain sequence number"), as pure logic with time as an argument.
//!
//! A UDP flow has no acknowledgments to drain by, so the seed gives two methods; both
//! are here, selectable per flow:
//!
//! - [`UdpMode::StandOff`]: at switch-over the sender sends nothing for the stand-off
//!   period (new datagrams are held, bounded), then sends only on the stitched path. The
//!   receiver treats the original path as drained once the first stitched datagram
//!   arrives and drops what still comes that way. No sequence logic: if the stand-off was
//!   shorter than the original path's delay, the late datagrams are lost (counted in
//!   [`UdpRxStats::late_dropped`]).
//! - [`UdpMode::DropBelow`]: every datagram carries a sequence number and stitched ones
//!   also the switch-over sequence `S` (the first sent on the stitched path). The receiver
//!   delivers in order only: anything at or below the highest delivered is dropped (never
//!   twice, never out of order); stitched datagrams are held until everything below `S`
//!   has arrived on the original path or `wait` has passed (then a missing one is counted
//!   and skipped). On a path that loses nothing, nothing is lost or duplicated.
//!
//! On the wire between conduits (original path through UDP proxies, and the stitched
//! path straight to the peer's stitch address) a datagram is
//! `'U' | app addr | seq u64 | switch_seq u64 | payload`; the application's address
//! names the flow at both conduits.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use crate::codec::{Reader, Writer};
use crate::error::WireError;

/// Receive buffer asked for on every UDP socket of a flow (and the relay's), so bursts
/// (the end of a stand-off, a scheduling hiccup) are not lost in the kernel.
pub const RCVBUF_BYTES: usize = 4 << 20;

/// Asks for a [`RCVBUF_BYTES`] receive buffer: past `rmem_max` when privileged
/// (`SO_RCVBUFFORCE`), else up to `rmem_max`. Best effort: failure keeps the default.
pub fn big_receive_buffer(sock: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(sock, sockopt::RcvBufForce, &RCVBUF_BYTES).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &RCVBUF_BYTES);
    }
}

/// Encodes a conduit datagram of the flow of application `app`.
pub fn encode(app: SocketAddr, d: &Datagram) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(b'U');
    w.addr(app);
    w.u64(d.seq);
    w.u64(d.switch_seq);
    w.bytes(&d.payload);
    w.buf
}

/// Decodes a conduit datagram.
///
/// # Errors
/// [`WireError`] when it is not one (never panics).
pub fn decode(b: &[u8]) -> Result<(SocketAddr, Datagram), WireError> {
    let mut r = Reader::new(b);
    if r.u8()? != b'U' {
        return Err(WireError::BadMagic);
    }
    let app = r.addr()?;
    let seq = r.u64()?;
    let switch_seq = r.u64()?;
    Ok((
        app,
        Datagram {
            seq,
            switch_seq,
            payload: r.rest().to_vec(),
        },
    ))
}

/// How a UDP flow switches over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpMode {
    /// Send nothing for this long at switch-over (microseconds).
    StandOff {
        /// The stand-off period.
        standoff_us: u64,
    },
    /// Sequence numbers; hold stitched datagrams until the original is drained or
    /// `wait_us` has passed; drop what is below the delivered point.
    DropBelow {
        /// Longest wait for original-path datagrams below the switch-over sequence.
        wait_us: u64,
    },
}

/// Which path a datagram takes or came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through the proxies.
    Original,
    /// Direct.
    Stitched,
}

/// A datagram between conduits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Sequence number (1, 2, ...).
    pub seq: u64,
    /// First sequence number sent on the stitched path (0 on the original path).
    pub switch_seq: u64,
    /// The application's datagram.
    pub payload: Vec<u8>,
}

/// The sending side of a flow.
#[derive(Debug)]
pub struct UdpSender {
    mode: UdpMode,
    next_seq: u64,
    switch_seq: u64,
    /// Switched, and (stand-off) the time until which nothing is sent.
    switched: Option<u64>,
    held: VecDeque<Datagram>,
    max_held: usize,
    pace_us: u64,
    next_release: u64,
    /// Datagrams dropped because the hold was full.
    pub held_dropped: u64,
}

impl UdpSender {
    /// A sender holding at most `max_held` datagrams during a stand-off and releasing
    /// them one per `pace_us` afterwards (0: all at once), so the end of a stand-off is
    /// not one burst that overflows the receiver's socket buffer.
    pub fn new(mode: UdpMode, max_held: usize, pace_us: u64) -> UdpSender {
        UdpSender {
            mode,
            next_seq: 1,
            switch_seq: 0,
            switched: None,
            held: VecDeque::new(),
            max_held,
            pace_us,
            next_release: 0,
            held_dropped: 0,
        }
    }

    /// The application sent `payload` at `now`: where it goes (nothing while held).
    pub fn send(&mut self, payload: Vec<u8>, now: u64) -> Vec<(Via, Datagram)> {
        let d = Datagram {
            seq: self.next_seq,
            switch_seq: self.switch_seq,
            payload,
        };
        self.next_seq += 1;
        let mut out = Vec::new();
        match self.switched {
            None => out.push((Via::Original, Datagram { switch_seq: 0, ..d })),
            // Held during the stand-off, and behind earlier held ones: order is kept.
            Some(until) if now < until || !self.held.is_empty() => {
                if self.held.len() >= self.max_held {
                    self.held.pop_front();
                    self.held_dropped += 1;
                }
                self.held.push_back(d);
            }
            Some(_) => out.push((Via::Stitched, d)),
        }
        out
    }

    /// The stitched path is ready at `now`.
    pub fn switch(&mut self, now: u64) {
        if self.switched.is_none() {
            self.switch_seq = self.next_seq;
            let until = match self.mode {
                UdpMode::StandOff { standoff_us } => now + standoff_us,
                UdpMode::DropBelow { .. } => now,
            };
            self.switched = Some(until);
            self.next_release = until;
        }
    }

    /// Time passed: once the stand-off is over, releases held datagrams at the pace.
    pub fn tick(&mut self, now: u64) -> Vec<(Via, Datagram)> {
        let mut out = Vec::new();
        match self.switched {
            Some(until) if now >= until => {
                if self.pace_us == 0 {
                    return self.held.drain(..).map(|d| (Via::Stitched, d)).collect();
                }
                // No catching up in a burst after an idle stretch.
                self.next_release = self.next_release.max(now.saturating_sub(4 * self.pace_us));
                while self.next_release <= now {
                    let Some(d) = self.held.pop_front() else {
                        break;
                    };
                    out.push((Via::Stitched, d));
                    self.next_release += self.pace_us;
                }
            }
            _ => {}
        }
        out
    }

    /// Whether datagrams are held (stand-off, or being released).
    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }
}

/// What a receiver did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UdpRxStats {
    /// Delivered to the application.
    pub delivered: u64,
    /// Dropped as at or below the delivered point (duplicates, reordered).
    pub below_dropped: u64,
    /// Stand-off: dropped because they came by the original path after the switch.
    pub late_dropped: u64,
    /// Drop-below: sequence numbers given up after the wait.
    pub skipped: u64,
}

/// The receiving side of a flow.
#[derive(Debug)]
pub struct UdpReceiver {
    mode: UdpMode,
    delivered_upto: u64,
    switch_seq: Option<u64>,
    seen_stitched: bool,
    waiting_since: Option<u64>,
    held: BTreeMap<u64, Vec<u8>>,
    stats: UdpRxStats,
}

impl UdpReceiver {
    /// A receiver.
    pub fn new(mode: UdpMode) -> UdpReceiver {
        UdpReceiver {
            mode,
            delivered_upto: 0,
            switch_seq: None,
            seen_stitched: false,
            waiting_since: None,
            held: BTreeMap::new(),
            stats: UdpRxStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> UdpRxStats {
        self.stats
    }

    /// A datagram arrived at `now`; returns the payloads to deliver, in order.
    pub fn receive(&mut self, d: Datagram, via: Via, now: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        match self.mode {
            UdpMode::StandOff { .. } => {
                if via == Via::Stitched {
                    self.seen_stitched = true;
                } else if self.seen_stitched {
                    self.stats.late_dropped += 1;
                    return out;
                }
                self.stats.delivered += 1;
                out.push(d.payload);
            }
            UdpMode::DropBelow { .. } => {
                if d.seq <= self.delivered_upto {
                    self.stats.below_dropped += 1;
                    return out;
                }
                if via == Via::Stitched {
                    self.switch_seq.get_or_insert(d.switch_seq);
                    self.waiting_since.get_or_insert(now);
                    self.held.insert(d.seq, d.payload);
                } else if self.switch_seq.is_some_and(|s| d.seq >= s) {
                    // Nothing at or above S comes the original way; ignore nonsense.
                    self.stats.below_dropped += 1;
                } else {
                    self.stats.skipped += d.seq - self.delivered_upto - 1;
                    self.delivered_upto = d.seq;
                    self.stats.delivered += 1;
                    out.push(d.payload);
                }
                self.release(now, &mut out);
            }
        }
        out
    }

    /// Time passed: after the wait, gives up on what is missing below S.
    pub fn tick(&mut self, now: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.release(now, &mut out);
        out
    }

    fn release(&mut self, now: u64, out: &mut Vec<Vec<u8>>) {
        let UdpMode::DropBelow { wait_us } = self.mode else {
            return;
        };
        let Some(s) = self.switch_seq else { return };
        let timed_out = self
            .waiting_since
            .is_some_and(|t| now.saturating_sub(t) >= wait_us);
        if self.delivered_upto + 1 < s && !timed_out {
            return;
        }
        while let Some((&seq, _)) = self.held.first_key_value() {
            if seq != self.delivered_upto + 1 && !timed_out {
                break;
            }
            let Some((seq, p)) = self.held.pop_first() else {
                break;
            };
            self.stats.skipped += seq - self.delivered_upto - 1;
            self.delivered_upto = seq;
            self.stats.delivered += 1;
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One datagram a tick for `n` ticks; the stitched path is ready at `switch_at`;
    /// the original path delays by `orig_delay`, the stitched by `stitch_delay`.
    /// Returns (receiver stats, delivered sequence numbers in delivery order).
    fn run(
        mode: UdpMode,
        n: u64,
        switch_at: u64,
        orig_delay: u64,
        stitch_delay: u64,
    ) -> (UdpRxStats, Vec<u64>) {
        let mut tx = UdpSender::new(mode, 10_000, 0);
        let mut rx = UdpReceiver::new(mode);
        let mut wire: Vec<(u64, Via, Datagram)> = Vec::new();
        let mut got = Vec::new();
        let deliver = |got: &mut Vec<u64>, ps: Vec<Vec<u8>>| {
            for p in ps {
                got.push(u64::from_be_bytes(p[..8].try_into().unwrap_or([0; 8])));
            }
        };
        for t in 0..(n + 10 * (orig_delay + stitch_delay) + 2_000) {
            if t == switch_at {
                tx.switch(t);
            }
            let mut sent = tx.tick(t);
            if t < n {
                sent.extend(tx.send((t + 1).to_be_bytes().to_vec(), t));
            }
            for (via, d) in sent {
                let delay = if via == Via::Original {
                    orig_delay
                } else {
                    stitch_delay
                };
                wire.push((t + delay, via, d));
            }
            let (now, later): (Vec<_>, Vec<_>) = wire.drain(..).partition(|(at, _, _)| *at <= t);
            wire = later;
            for (_, via, d) in now {
                let ps = rx.receive(d, via, t);
                deliver(&mut got, ps);
            }
            let ps = rx.tick(t);
            deliver(&mut got, ps);
        }
        (rx.stats(), got)
    }

    #[test]
    fn held_datagrams_leave_at_the_pace_and_in_order() {
        let mut tx = UdpSender::new(UdpMode::StandOff { standoff_us: 100 }, 100, 10);
        tx.switch(0);
        for i in 0..5u8 {
            assert!(tx.send(vec![i], 50).is_empty());
        }
        assert!(tx.tick(99).is_empty());
        let first = tx.tick(100);
        assert_eq!(first.len(), 1);
        // Sent after the stand-off but behind the held ones.
        assert!(tx.send(vec![5], 101).is_empty());
        let rest: Vec<u8> = (110..=160)
            .step_by(10)
            .flat_map(|t| tx.tick(t))
            .map(|(_, d)| d.payload[0])
            .collect();
        assert_eq!(rest, vec![1, 2, 3, 4, 5]);
        assert!(!tx.has_held());
        assert_eq!(tx.send(vec![6], 170).len(), 1);
    }

    #[test]
    fn datagrams_round_trip_and_truncation_is_an_error() {
        let app: SocketAddr = "[2001:db8::7]:5353"
            .parse()
            .unwrap_or(SocketAddr::from(([0; 4], 0)));
        let d = Datagram {
            seq: 7,
            switch_seq: 5,
            payload: b"abc".to_vec(),
        };
        let b = encode(app, &d);
        assert_eq!(decode(&b), Ok((app, d)));
        for n in 0..b.len() - 3 {
            assert!(decode(&b[..n]).is_err());
        }
        assert_eq!(decode(b"X"), Err(WireError::BadMagic));
    }

    fn in_order_exactly_once(got: &[u64], n: u64) -> bool {
        got.len() as u64 == n && got.iter().enumerate().all(|(i, s)| *s == i as u64 + 1)
    }

    #[test]
    fn drop_below_delivers_everything_once_in_order_whatever_the_delays() {
        for (orig, stitched) in [(50, 5), (5, 50), (20, 20), (1, 0)] {
            let (st, got) = run(
                UdpMode::DropBelow { wait_us: 1000 },
                300,
                100,
                orig,
                stitched,
            );
            assert!(
                in_order_exactly_once(&got, 300),
                "{orig}/{stitched}: {st:?}"
            );
            assert_eq!((st.below_dropped, st.skipped), (0, 0));
        }
    }

    #[test]
    fn drop_below_gives_up_on_a_lost_datagram_after_the_wait() {
        let mode = UdpMode::DropBelow { wait_us: 100 };
        let mut rx = UdpReceiver::new(mode);
        let d = |seq, switch_seq| Datagram {
            seq,
            switch_seq,
            payload: vec![seq as u8],
        };
        assert_eq!(rx.receive(d(1, 0), Via::Original, 0), vec![vec![1]]);
        // 2 is lost on the original path; 3 is the first stitched one.
        assert!(rx.receive(d(3, 3), Via::Stitched, 10).is_empty());
        assert!(rx.tick(50).is_empty());
        assert_eq!(rx.tick(110), vec![vec![3]]);
        // 2 finally arrives: below the delivered point, dropped.
        assert!(rx.receive(d(2, 0), Via::Original, 120).is_empty());
        assert_eq!(rx.stats().skipped, 1);
        assert_eq!(rx.stats().below_dropped, 1);
    }

    #[test]
    fn stand_off_long_enough_loses_nothing_and_too_short_loses_the_late_ones() {
        let (st, got) = run(UdpMode::StandOff { standoff_us: 60 }, 300, 100, 50, 5);
        assert!(in_order_exactly_once(&got, 300), "{st:?}");
        assert_eq!(st.late_dropped, 0);
        let (st, got) = run(UdpMode::StandOff { standoff_us: 10 }, 300, 100, 50, 5);
        assert!(st.late_dropped > 0, "{st:?}");
        assert_eq!(got.len() as u64 + st.late_dropped, 300);
        // What arrived was never duplicated.
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), got.len());
    }
}
