//! Two sessions wired by in-memory FIFO paths: the drain keeps one ordered,
//! exactly-once stream with messages in flight on the original path at switch time.

use std::collections::VecDeque;

use super::*;

const T: Timing = Timing {
    heartbeat_interval_us: 100_000,
    heartbeat_timeout_us: 1_000_000,
    drain_timeout_us: 2_000_000,
};

#[derive(Default)]
struct Side {
    got: Vec<u8>,
    fin: bool,
    ended: Option<EndReason>,
}

struct Sim {
    s: [Session; 2],
    side: [Side; 2],
    /// original[i]: frames in flight from i to 1-i on the original path.
    original: [VecDeque<Frame>; 2],
    stitched: [VecDeque<Frame>; 2],
    data_on_original_after_drain: usize,
    now: u64,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            s: [Session::new(T, 0), Session::new(T, 0)],
            side: [Side::default(), Side::default()],
            original: [VecDeque::new(), VecDeque::new()],
            stitched: [VecDeque::new(), VecDeque::new()],
            data_on_original_after_drain: 0,
            now: 0,
        }
    }

    fn input(&mut self, i: usize, inp: Input) {
        for o in self.s[i].handle(inp, self.now) {
            match o {
                Output::ToApp(b) => self.side[i].got.extend(b),
                Output::AppFin => self.side[i].fin = true,
                Output::ToOriginal(f) => {
                    if matches!(f, Frame::Data { .. }) && self.s[i].drain_complete_sent {
                        self.data_on_original_after_drain += 1;
                    }
                    self.original[i].push_back(f)
                }
                Output::ToStitched(f) => self.stitched[i].push_back(f),
                Output::Ended(r) => self.side[i].ended = Some(r),
            }
        }
    }

    /// Delivers at most one frame from each queue, in a fixed interleaving.
    fn step(&mut self) -> bool {
        let mut moved = false;
        for i in 0..2 {
            if let Some(f) = self.original[i].pop_front() {
                self.input(1 - i, Input::Original(f));
                moved = true;
            }
            if let Some(f) = self.stitched[i].pop_front() {
                self.input(1 - i, Input::Stitched(f));
                moved = true;
            }
        }
        self.now += 10;
        moved
    }
}

/// Equal streams, reported by length and first difference (never the whole vectors).
fn same(got: &[u8], want: &[u8]) {
    let first = got.iter().zip(want).position(|(x, y)| x != y);
    assert!(
        got.len() == want.len() && first.is_none(),
        "got {} bytes, want {}, first difference at {first:?}",
        got.len(),
        want.len()
    );
}

fn pattern(tag: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| tag.wrapping_add((i % 251) as u8)).collect()
}

#[test]
fn drain_with_messages_in_flight_keeps_one_exactly_once_stream_both_ways() {
    let mut sim = Sim::new();
    let a = pattern(1, 300_000);
    let b = pattern(7, 200_000);
    // First halves over the original; only some of them arrive before the switch.
    sim.input(0, Input::App(a[..150_000].to_vec()));
    sim.input(1, Input::App(b[..100_000].to_vec()));
    sim.step();
    // Stitch ready at both ends while frames are still in flight on the original.
    sim.input(0, Input::StitchReady);
    sim.input(0, Input::App(a[150_000..].to_vec()));
    sim.step();
    sim.input(1, Input::StitchReady);
    sim.input(1, Input::App(b[100_000..].to_vec()));
    sim.input(0, Input::AppEof);
    sim.input(1, Input::AppEof);
    while sim.step() {}
    assert_eq!(sim.side[0].ended, Some(EndReason::Normal));
    same(&sim.side[1].got, &a);
    same(&sim.side[0].got, &b);
    assert!(sim.side[0].fin && sim.side[1].fin);
    assert_eq!(sim.side[1].ended, Some(EndReason::Normal));
    assert_eq!(sim.data_on_original_after_drain, 0);
    for s in &sim.s {
        let st = s.stats();
        assert!(st.tx_stitched_bytes > 0 && st.tx_original_bytes > 0);
        assert!(!st.drain_timed_out);
        assert!(st.drain_us.is_some());
    }
}

#[test]
fn duplicates_are_dropped_and_gaps_end_the_connection() {
    let mut s = Session::new(T, 0);
    let d = |seq| Frame::Data {
        seq,
        payload: vec![seq as u8],
    };
    assert!(s
        .handle(Input::Original(d(1)), 0)
        .contains(&Output::ToApp(vec![1])));
    assert!(s.handle(Input::Original(d(1)), 1).is_empty());
    assert_eq!(s.stats().duplicates, 1);
    let out = s.handle(Input::Original(d(3)), 2);
    assert_eq!(out, vec![Output::Ended(EndReason::SequenceGap)]);
    assert_eq!(s.phase(), Phase::Ended);
}

#[test]
fn heartbeats_are_sent_and_missing_acks_end_the_connection() {
    let mut s = Session::new(T, 0);
    let out = s.handle(Input::Tick, 0);
    assert_eq!(out, vec![Output::ToOriginal(Frame::Heartbeat { n: 1 })]);
    s.handle(Input::Original(Frame::HeartbeatAck { n: 1 }), 500_000);
    let out = s.handle(Input::Tick, 1_400_000);
    assert!(!out.contains(&Output::Ended(EndReason::HeartbeatTimeout)));
    let out = s.handle(Input::Tick, 1_500_001);
    assert_eq!(out, vec![Output::Ended(EndReason::HeartbeatTimeout)]);
}

#[test]
fn original_closing_before_the_orderly_end_is_an_abnormal_end() {
    let mut s = Session::new(T, 0);
    s.handle(Input::StitchReady, 0);
    let out = s.handle(Input::OriginalClosed, 1);
    assert!(out.contains(&Output::Ended(EndReason::OriginalClosed)));
}

#[test]
fn drain_timeout_releases_held_data_and_a_lost_message_shows_as_a_gap() {
    let mut sim = Sim::new();
    sim.input(0, Input::App(vec![1; 10]));
    // The frame is lost on the original path.
    sim.original[0].clear();
    sim.input(0, Input::StitchReady);
    sim.input(1, Input::StitchReady);
    sim.input(0, Input::App(vec![2; 10]));
    while sim.step() {}
    assert_eq!(
        sim.s[0].held_bytes(),
        10,
        "held until the peer acknowledges"
    );
    sim.now = 3_000_000;
    // Keep heartbeats alive for the tick.
    sim.s[0].last_ack_at = sim.now;
    sim.s[1].last_ack_at = sim.now;
    sim.input(0, Input::Tick);
    sim.input(1, Input::Tick);
    while sim.step() {}
    assert!(sim.s[0].stats().drain_timed_out);
    assert_eq!(sim.side[1].ended, Some(EndReason::SequenceGap));
    assert!(sim.side[1].got.is_empty());
}

#[test]
fn original_closing_during_the_drain_ends_cleanly_without_misordering() {
    let mut sim = Sim::new();
    sim.input(0, Input::App(vec![1; 100]));
    sim.input(0, Input::StitchReady);
    sim.input(1, Input::StitchReady);
    sim.input(0, Input::App(vec![2; 100]));
    // The proxy dies with message 1 still in flight.
    sim.original[0].clear();
    sim.input(1, Input::OriginalClosed);
    sim.input(0, Input::OriginalClosed);
    while sim.step() {}
    assert_eq!(sim.side[0].ended, Some(EndReason::OriginalClosed));
    assert_eq!(sim.side[1].ended, Some(EndReason::OriginalClosed));
    // The held message never went anywhere, so nothing arrived out of order.
    assert!(sim.side[1].got.is_empty());
}

#[test]
fn the_stitched_connection_closing_after_both_fins_is_not_an_abnormal_end() {
    let mut s = Session::new(T, 0);
    s.handle(Input::StitchReady, 0);
    s.handle(Input::Original(Frame::DrainAck { last_received: 0 }), 1);
    s.handle(Input::Original(Frame::DrainComplete { last_sent: 0 }), 2);
    s.handle(Input::AppEof, 3);
    s.handle(Input::Stitched(Frame::Fin { seq: 1 }), 4);
    // The peer ended normally and closed the stitched connection; its Bye is still
    // on the way over the original path.
    let out = s.handle(Input::StitchedClosed, 5);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Ended(_))),
        "{out:?}"
    );
    let out = s.handle(Input::Original(Frame::Bye), 6);
    assert!(out.contains(&Output::Ended(EndReason::Normal)), "{out:?}");
}
