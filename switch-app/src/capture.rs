//! Packet capture in stitchd: the workers' tap and the slow path's writer.
//!
//! Workers ([`CaptureTap`]): once per poll round a worker loads one word, the capture
//! generation (0: nothing armed, the production case: nothing else is read, nothing per
//! packet is done beyond a branch on a local). When it changes, the worker takes the
//! published [`CaptureSet`]; while one is held, frames received on a captured port are
//! copied into the worker's own ring once per burst, and frames handed to a captured
//! port's TX buffer as they are pushed (after translation). The time stamp is the TSC the
//! worker already read for its round: no syscall, no clock read per packet.
//!
//! Slow path ([`Captures`]): `capture.start` checks the port and that no capture runs on
//! it, creates the file (so a bad path is refused with nothing changed), allocates the
//! rings, and publishes a new set; every slow-path loop drains the rings into the pcap
//! file (stamps turned into wall-clock time from the TSC at start), and ends a capture at
//! its count, its timeout, `capture.stop` or a write error by publishing a set without
//! it. A set replaced is kept a while before it is dropped, so the last reference (and
//! the rings' memory) is never freed by a worker on its hot path.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::BufWriter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use dpdk::Mbuf;
use serde_json::Value;
use stitch_control::capture::{
    CaptureDir, CaptureEnd, CaptureInfo, CaptureList, CaptureStartParams, CaptureState,
};
use stitch_control::protocol::RpcError;
use switch_core::capture::pcap::PcapWriter;
use switch_core::capture::{ring_slots, CaptureSet, Direction, PortCapture};
use switch_core::PortId;

/// What the slow path publishes and the workers read.
#[derive(Default)]
pub struct CaptureCtl {
    /// 0 when no capture is armed; otherwise changes with every new set.
    generation: AtomicU64,
    set: ArcSwapOption<CaptureSet>,
}

/// A worker's view of the captures.
pub struct CaptureTap {
    ctl: Arc<CaptureCtl>,
    /// This worker's index: its ring in every port's capture.
    worker: usize,
    seen: u64,
    set: Option<Arc<CaptureSet>>,
    stamp: u64,
}

impl CaptureTap {
    /// Worker number `worker`'s tap.
    pub fn new(ctl: Arc<CaptureCtl>, worker: usize) -> CaptureTap {
        CaptureTap {
            ctl,
            worker,
            seen: 0,
            set: None,
            stamp: 0,
        }
    }

    /// Once per poll round: one load of the generation; the set is taken again only when
    /// it changed. `now_tsc` stamps every frame captured this round.
    #[inline]
    pub fn refresh(&mut self, now_tsc: u64) {
        // Acquire (a plain load on x86): the set stored before the generation is seen.
        let g = self.ctl.generation.load(Ordering::Acquire);
        if g != self.seen {
            self.seen = g;
            self.set = if g == 0 {
                None
            } else {
                self.ctl.set.load_full()
            };
        }
        self.stamp = now_tsc;
    }

    /// Captures a received burst, if `port`'s rx is captured (one check per burst).
    #[inline]
    pub fn rx_burst<'a>(&self, port: PortId, pkts: impl Iterator<Item = &'a Mbuf>) {
        let Some(set) = &self.set else { return };
        if let Some(ring) = set.rx(port, self.worker) {
            for m in pkts {
                ring.push(m.data(), m.pkt_len(), self.stamp);
            }
        }
    }

    /// Captures a frame handed to `port`'s TX buffer, if `port`'s tx is captured.
    #[inline]
    pub fn tx(&self, port: usize, m: &Mbuf) {
        let Some(set) = &self.set else { return };
        let Ok(p) = u16::try_from(port) else { return };
        if let Some(ring) = set.tx(PortId(p), self.worker) {
            ring.push(m.data(), m.pkt_len(), self.stamp);
        }
    }
}

/// How long a replaced set is kept before it is dropped (workers take a new one within a
/// poll round, microseconds).
const RETIRE_AFTER: Duration = Duration::from_secs(1);

/// The file a running capture writes.
type Out = PcapWriter<BufWriter<File>>;

/// One port's capture, running or ended.
struct Session {
    info: CaptureInfo,
    started: Instant,
    /// Wall clock (ns since 1970) and TSC at start: frame stamps become times.
    wall0_ns: u64,
    tsc0: u64,
    /// While running: the file and the rings.
    run: Option<(Out, Arc<PortCapture>)>,
}

/// The slow path's side of capture.
pub struct Captures {
    ctl: Arc<CaptureCtl>,
    workers: usize,
    tsc_hz: u64,
    generation: u64,
    next_id: u64,
    published: Arc<CaptureSet>,
    sessions: BTreeMap<u16, Session>,
    retired: VecDeque<(Instant, Arc<CaptureSet>)>,
    /// Reused for every frame drained.
    scratch: Vec<u8>,
}

impl Captures {
    /// Captures for `workers` workers; stamps count `tsc_hz` per second.
    pub fn new(workers: usize, tsc_hz: u64) -> Captures {
        Captures {
            ctl: Arc::new(CaptureCtl::default()),
            workers,
            tsc_hz: tsc_hz.max(1),
            generation: 0,
            next_id: 1,
            published: Arc::new(CaptureSet::default()),
            sessions: BTreeMap::new(),
            retired: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// What the workers' taps read.
    pub fn ctl(&self) -> Arc<CaptureCtl> {
        self.ctl.clone()
    }

    fn running(&self) -> bool {
        self.sessions.values().any(|s| s.run.is_some())
    }

    fn publish(&mut self, set: CaptureSet) {
        let empty = set.is_empty();
        let set = Arc::new(set);
        self.ctl.set.store(Some(set.clone()));
        self.generation += 1;
        let g = if empty { 0 } else { self.generation };
        self.ctl.generation.store(g, Ordering::Release);
        let old = std::mem::replace(&mut self.published, set);
        self.retired.push_back((Instant::now(), old));
    }

    /// `capture.start` on a port that exists (the caller checked). Nothing changes when
    /// it fails.
    ///
    /// # Errors
    ///
    /// A capture already running on the port; the file cannot be created or written.
    pub fn start(
        &mut self,
        p: &CaptureStartParams,
        now: Instant,
        tsc: u64,
    ) -> Result<Value, RpcError> {
        if let Some(s) = self.sessions.get(&p.port).filter(|s| s.run.is_some()) {
            return Err(RpcError::app(format!(
                "port {} already has a capture running (id {}, {} of {} packets into {}); \
                 one capture at a time per port: wait for it or stop it with \
                 `stitchctl capture.stop {}`",
                p.port, s.info.id, s.info.captured, s.info.count, s.info.path, p.port
            )));
        }
        let file = File::create(&p.path)
            .map_err(|e| RpcError::app(format!("cannot create {}: {e}", p.path)))?;
        let out = PcapWriter::new(BufWriter::with_capacity(1 << 16, file), p.snaplen)
            .map_err(|e| RpcError::app(format!("cannot write {}: {e}", p.path)))?;
        let dir = match p.dir {
            CaptureDir::Rx => Direction::Rx,
            CaptureDir::Tx => Direction::Tx,
            CaptureDir::Both => Direction::Both,
        };
        let slots = ring_slots(p.snaplen);
        let cap = Arc::new(PortCapture::new(dir, self.workers, slots, p.snaplen));
        let id = self.next_id;
        self.next_id += 1;
        let wall0_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let info = CaptureInfo {
            id,
            port: p.port,
            dir: p.dir,
            snaplen: p.snaplen,
            count: p.count,
            path: p.path.clone(),
            timeout_secs: p.timeout_secs,
            state: CaptureState::Running,
            end: None,
            error: None,
            captured: 0,
            dropped: 0,
            ring_slots: slots as u64,
            elapsed_secs: 0.0,
        };
        let set = self.published.with(PortId(p.port), Some(cap.clone()));
        self.sessions.insert(
            p.port,
            Session {
                info: info.clone(),
                started: now,
                wall0_ns,
                tsc0: tsc,
                run: Some((out, cap)),
            },
        );
        self.publish(set);
        Ok(serde_json::to_value(info).unwrap_or_default())
    }

    /// Every slow-path loop: drains the rings into the files and ends captures that are
    /// complete or timed out. Cheap when nothing runs.
    pub fn poll(&mut self, now: Instant) {
        while self
            .retired
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RETIRE_AFTER)
        {
            self.retired.pop_front();
        }
        if !self.running() {
            return;
        }
        let mut ended = Vec::new();
        for (port, s) in &mut self.sessions {
            let Some((out, cap)) = &mut s.run else {
                continue;
            };
            let mut end = None;
            // Worker by worker; frames of different workers are not merged by time.
            for ring in cap.rings() {
                while s.info.captured < s.info.count {
                    let Some(m) = ring.pop(&mut self.scratch) else {
                        break;
                    };
                    let dt = i128::from(m.stamp.wrapping_sub(s.tsc0) as i64);
                    let ts = i128::from(s.wall0_ns) + dt * 1_000_000_000 / i128::from(self.tsc_hz);
                    if let Err(e) = out.write(ts.max(0) as u64, &self.scratch, m.orig_len) {
                        let msg = format!("writing {}: {e}", s.info.path);
                        end = Some((CaptureEnd::Error, Some(msg)));
                        break;
                    }
                    s.info.captured += 1;
                }
                if end.is_some() || s.info.captured >= s.info.count {
                    break;
                }
            }
            if end.is_none() {
                if s.info.captured >= s.info.count {
                    end = Some((CaptureEnd::Count, None));
                } else if s.info.timeout_secs.is_some_and(|t| {
                    now.duration_since(s.started) >= Duration::from_secs(u64::from(t))
                }) {
                    end = Some((CaptureEnd::Timeout, None));
                }
            }
            s.info.dropped = cap.dropped();
            if let Some(e) = end {
                ended.push((*port, e));
            }
        }
        for (port, (end, error)) in ended {
            self.finish(port, end, error, now);
        }
    }

    /// Ends `port`'s capture: the file is flushed, the rings unpublished.
    fn finish(&mut self, port: u16, end: CaptureEnd, error: Option<String>, now: Instant) {
        let Some(s) = self.sessions.get_mut(&port) else {
            return;
        };
        let Some((mut out, cap)) = s.run.take() else {
            return;
        };
        let (mut end, mut error) = (end, error);
        if let Err(e) = out.flush() {
            if error.is_none() {
                (end, error) = (
                    CaptureEnd::Error,
                    Some(format!("writing {}: {e}", s.info.path)),
                );
            }
        }
        s.info.state = CaptureState::Done;
        s.info.end = Some(end);
        s.info.error = error;
        s.info.dropped = cap.dropped();
        s.info.elapsed_secs = now.duration_since(s.started).as_secs_f64();
        let set = self.published.with(PortId(port), None);
        self.publish(set);
    }

    /// `capture.stop`: ends the port's capture with what was written (its final state if
    /// it had already ended).
    ///
    /// # Errors
    ///
    /// No capture on the port since stitchd started.
    pub fn stop(&mut self, port: u16, now: Instant) -> Result<Value, RpcError> {
        self.poll(now);
        if !self.sessions.contains_key(&port) {
            return Err(RpcError::app(format!("no capture on port {port}")));
        }
        self.finish(port, CaptureEnd::Stopped, None, now);
        Ok(self
            .sessions
            .get(&port)
            .map(|s| serde_json::to_value(&s.info).unwrap_or_default())
            .unwrap_or_default())
    }

    /// Ends every capture (stitchd shutting down): files complete.
    pub fn stop_all(&mut self, now: Instant) {
        self.poll(now);
        let ports: Vec<u16> = self.sessions.keys().copied().collect();
        for p in ports {
            self.finish(p, CaptureEnd::Stopped, None, now);
        }
    }

    /// `capture.status` (and `stats.get`'s `capture`): running captures and the last
    /// one of each port, with their counters.
    pub fn status(&self, port: Option<u16>, now: Instant) -> Value {
        let captures = self
            .sessions
            .iter()
            .filter(|(p, _)| port.is_none_or(|x| x == **p))
            .map(|(_, s)| {
                let mut i = s.info.clone();
                if let Some((_, cap)) = &s.run {
                    i.dropped = cap.dropped();
                    i.elapsed_secs = now.duration_since(s.started).as_secs_f64();
                }
                i
            })
            .collect();
        serde_json::to_value(CaptureList { captures }).unwrap_or_default()
    }
}
