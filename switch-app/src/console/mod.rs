//! The web console: a read-only status page served on the `[metrics] listen` address
//! (`GET /`), its typed JSON snapshot (`GET /api/snapshot`) and a server-sent event stream
//! (`GET /events`: a snapshot every second plus the slow path's events as they happen).
//! The HTTP side is in `crate::http`; this module says what the page shows.
//!
//! Where the numbers come from, so that watching never slows a worker:
//! - counters by the same requests `stitchctl top` sends (`ports.stats`, `stats.get`,
//!   `stitch.list`, `stitch.get` while there are few stitches), through
//!   [`stitch_control::top::Sample::fetch_with`] and the control [`Handler`]: the slow path
//!   answers them between its other work, the workers are only read (relaxed loads);
//! - the MAC table from `mac.list` (the first [`MAC_SHOWN`] entries are sent);
//! - events from one `events.subscribe` taken at start by the hub thread, which fans them
//!   out to the open streams (bounded channels: a stream that does not keep up loses
//!   messages, never blocks the hub).
//!
//! Rates are counter differences over the time between two samples (`top`'s
//! [`rate`]); the hub samples only while a stream is open. Cycles per packet are the
//! worker's busy cycles (TSC cycles of the rounds that received packets, counted by the
//! worker) over the packets it received in the interval, `top`'s
//! [`top::cycles_per_packet`]: idle polling is not in them. A stitch's age counts from its `prepared` / `installed` event, or,
//! for one the console saw first in a list, from then.
//!
//! Static assets (`index.html`, `console.js`, `console.css`) are compiled into the
//! binary; the page loads nothing from anywhere else (its Content-Security-Policy says so).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use stitch_control::client::ClientError;
use stitch_control::protocol::{MacListParams, Method};
use stitch_control::server::Handler;
use stitch_control::top::{self, rate};

/// The page (`GET /`).
pub const INDEX_HTML: &str = include_str!("index.html");
/// Its script (`GET /console.js`): tables, event list and the canvas charts.
pub const CONSOLE_JS: &str = include_str!("console.js");
/// Its style sheet (`GET /console.css`).
pub const CONSOLE_CSS: &str = include_str!("console.css");

/// At most this many event streams are open at once; one more is refused (503), so
/// browsers left open cannot take every thread or the slow path's time.
pub const MAX_STREAMS: usize = 8;

/// MAC entries sent in a snapshot (the total is always sent).
pub const MAC_SHOWN: usize = 256;

/// Events kept for a stream that opens later (the page shows them at once).
pub const RECENT_EVENTS: usize = 50;

/// Messages queued for one stream; beyond, that stream loses messages until it drains.
const STREAM_QUEUE: usize = 64;

/// How often the hub sends a snapshot while a stream is open.
pub const TICK: Duration = Duration::from_secs(1);

/// Rates are taken against a sample at least this much older when there is one, so two
/// snapshots asked for a few milliseconds apart do not divide noise by nothing.
const MIN_RATE_INTERVAL: Duration = Duration::from_millis(500);

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The slow path did not answer, or answered something unexpected.
    #[error("sampling the counters failed: {0}")]
    Sample(#[from] top::TopError),
    /// `mac.list` failed.
    #[error("mac.list failed: {0}")]
    Macs(String),
}

/// One port, with rates (per second) over the snapshot's interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PortView {
    pub id: u16,
    pub name: String,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Packets the port dropped (no descriptor) and errors, since start.
    pub rx_dropped: u64,
    pub errors: u64,
    pub rx_pps: f64,
    pub tx_pps: f64,
    pub rx_bytes_per_sec: f64,
    pub tx_bytes_per_sec: f64,
}

/// One worker.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerView {
    pub index: usize,
    pub lcore: u32,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_pps: f64,
    pub tx_pps: f64,
    pub stitched_pps: f64,
    /// Busy TSC cycles per received packet over the interval (module doc); `None` when
    /// the worker received nothing.
    pub cycles_per_packet: Option<f64>,
    /// Drops since start, by reason (every reason, zeros included).
    pub drops: BTreeMap<String, u64>,
    pub drops_per_sec: f64,
}

/// One MAC table entry as `mac.list` gives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MacRow {
    pub bridge: u16,
    pub mac: String,
    pub port: u16,
    #[serde(rename = "static")]
    pub is_static: bool,
    pub age_secs: u64,
}

/// The MAC tables.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MacView {
    /// Entries in every bridge.
    pub total: usize,
    /// The first [`MAC_SHOWN`], by bridge, port and MAC.
    pub entries: Vec<MacRow>,
}

/// One stitch.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StitchView {
    pub id: u64,
    pub state: String,
    /// `client <-> shell` on leg A.
    pub leg_a: String,
    /// `shell <-> core` on leg B.
    pub leg_b: String,
    /// Frames and bytes translated, all four directions.
    pub packets: u64,
    pub bytes: u64,
    pub bytes_per_sec: f64,
    /// Seconds since prepared / installed (module doc).
    pub age_secs: Option<u64>,
}

/// Stitches and the flow table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StitchesView {
    pub total: u64,
    pub flow_entries: u64,
    pub flow_capacity: u64,
    /// By state; `None` above `top::STATE_COUNT_LIMIT` stitches.
    pub by_state: Option<BTreeMap<String, u64>>,
    /// Each stitch; empty above `top::BUSIEST_LIMIT` stitches.
    pub rows: Vec<StitchView>,
}

/// What the page shows at one moment (`/api/snapshot`, and each `snapshot` event).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    /// When it was taken, milliseconds since the Unix epoch (the charts' time axis).
    pub time_ms: u64,
    /// Seconds the rates are over; 0 for the first sample (rates 0).
    pub interval_secs: f64,
    pub ports: Vec<PortView>,
    pub workers: Vec<WorkerView>,
    pub macs: MacView,
    pub stitches: StitchesView,
}

/// An event as streamed: when the console received it, and the slow path's event as is.
#[derive(Debug, Serialize)]
struct EventMessage<'a> {
    time_ms: u64,
    event: &'a Value,
}

/// The fields of a slow-path event the console reads (for stitch ages).
#[derive(Debug, Deserialize)]
struct EventIds {
    event: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    first: Option<u64>,
    #[serde(default)]
    last: Option<u64>,
}

/// Counters at one moment, as `top` takes them.
#[derive(Debug, Clone)]
struct Timed {
    at: Instant,
    sample: top::Sample,
}

/// When each stitch was born, as far as the console knows.
#[derive(Debug, Default)]
struct Ages {
    by_id: HashMap<u64, Instant>,
    /// `installed` events name a range of ids; kept whole (bounded, oldest forgotten).
    ranges: VecDeque<(u64, u64, Instant)>,
}

impl Ages {
    const MAX_RANGES: usize = 256;

    fn on_event(&mut self, ev: &EventIds, now: Instant) {
        match (ev.event.as_str(), ev.id, ev.first, ev.last) {
            ("prepared", Some(id), _, _) => {
                self.by_id.insert(id, now);
            }
            ("installed", _, Some(first), Some(last)) => {
                if self.ranges.len() == Self::MAX_RANGES {
                    self.ranges.pop_front();
                }
                self.ranges.push_back((first, last, now));
            }
            ("removed", Some(id), _, _) => {
                self.by_id.remove(&id);
            }
            _ => {}
        }
    }

    /// The age of `id` at `now`; a stitch never heard of is born now.
    fn age(&mut self, id: u64, now: Instant) -> u64 {
        let born = match self.by_id.get(&id) {
            Some(t) => *t,
            None => match self.ranges.iter().find(|(f, l, _)| (*f..=*l).contains(&id)) {
                Some((_, _, t)) => *t,
                None => *self.by_id.entry(id).or_insert(now),
            },
        };
        now.saturating_duration_since(born).as_secs()
    }

    /// Forgets ids not in `live` (removals whose event was missed).
    fn retain(&mut self, live: &[u64]) {
        self.by_id.retain(|id, _| live.contains(id));
    }
}

/// Builds the snapshot of `cur` with rates against `prev` (`None`: rates 0).
///
/// Pure: the times and the MAC answer are inputs.
fn build(
    prev: Option<&Timed>,
    cur: &Timed,
    macs: MacView,
    ages: &mut Ages,
    time_ms: u64,
) -> Snapshot {
    let secs = prev.map_or(0.0, |p| {
        cur.at.saturating_duration_since(p.at).as_secs_f64()
    });
    let empty = top::Sample::default();
    let before = prev.map_or(&empty, |p| &p.sample);
    let ports = cur
        .sample
        .ports
        .iter()
        .map(|p| {
            let b = before
                .ports
                .iter()
                .find(|x| x.id == p.id)
                .cloned()
                .unwrap_or_else(|| p.clone());
            PortView {
                id: p.id,
                name: p.name.clone(),
                rx_packets: p.rx_packets,
                tx_packets: p.tx_packets,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                rx_dropped: p.rx_dropped,
                errors: p.rx_errors + p.tx_errors,
                rx_pps: rate(p.rx_packets, b.rx_packets, secs),
                tx_pps: rate(p.tx_packets, b.tx_packets, secs),
                rx_bytes_per_sec: rate(p.rx_bytes, b.rx_bytes, secs),
                tx_bytes_per_sec: rate(p.tx_bytes, b.tx_bytes, secs),
            }
        })
        .collect();
    let workers = cur
        .sample
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let b = before
                .workers
                .get(i)
                .filter(|x| x.lcore == w.lcore)
                .cloned()
                .unwrap_or_else(|| w.clone());
            let dropped = |r: &top::WorkerRow| r.drops.values().sum::<u64>();
            WorkerView {
                index: i,
                lcore: w.lcore,
                rx_packets: w.rx_packets,
                tx_packets: w.tx_packets,
                rx_pps: rate(w.rx_packets, b.rx_packets, secs),
                tx_pps: rate(w.tx_packets, b.tx_packets, secs),
                stitched_pps: rate(w.stitched, b.stitched, secs),
                cycles_per_packet: (secs > 0.0)
                    .then(|| top::cycles_per_packet(w, &b))
                    .flatten(),
                drops: w.drops.clone(),
                drops_per_sec: rate(dropped(w), dropped(&b), secs),
            }
        })
        .collect();
    let facts = cur.sample.stitch.clone().unwrap_or_default();
    let live: Vec<u64> = cur.sample.stitches.iter().map(|s| s.id).collect();
    if cur.sample.states.is_some() && live.len() as u64 == facts.stitches {
        ages.retain(&live);
    }
    let rows = cur
        .sample
        .stitches
        .iter()
        .map(|s| {
            let b = before
                .stitches
                .iter()
                .find(|x| x.id == s.id)
                .map_or(s.bytes, |x| x.bytes);
            StitchView {
                id: s.id,
                state: s.state.clone(),
                leg_a: format!("{} <-> {}", s.client, s.shell_a),
                leg_b: format!("{} <-> {}", s.shell_b, s.core),
                packets: s.packets,
                bytes: s.bytes,
                bytes_per_sec: rate(s.bytes, b, secs),
                age_secs: Some(ages.age(s.id, cur.at)),
            }
        })
        .collect();
    Snapshot {
        time_ms,
        interval_secs: secs,
        ports,
        workers,
        macs,
        stitches: StitchesView {
            total: facts.stitches,
            flow_entries: facts.flow_entries,
            flow_capacity: facts.flow_capacity,
            by_state: cur.sample.states.clone(),
            rows,
        },
    }
}

/// The `mac.list` answer's shape.
#[derive(Debug, Deserialize)]
struct MacList {
    entries: Vec<MacRow>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One server-sent event: `event: NAME` and one `data:` line (compact JSON has no
/// newline in it).
pub fn sse(event: &str, data: &str) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// Sampling state, shared by the hub and `/api/snapshot`.
#[derive(Debug, Default)]
struct Sampler {
    /// The last few samples (newest last), to take rates against.
    history: VecDeque<Timed>,
    ages: Ages,
}

/// The console's state: how to reach the slow path, the sampler, the open streams.
pub struct Console {
    slow: Arc<dyn Handler>,
    sampler: Mutex<Sampler>,
    streams: Mutex<Vec<SyncSender<Arc<str>>>>,
    recent: Mutex<VecDeque<Arc<str>>>,
    open: AtomicUsize,
}

/// An open event stream's place: messages arrive on `rx`; dropping it frees the place.
pub struct StreamSlot {
    pub rx: Receiver<Arc<str>>,
    /// The recent events, to send first.
    pub backlog: Vec<Arc<str>>,
    console: Arc<Console>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.console.open.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Console {
    /// A console that asks the slow path through `slow`.
    pub fn new(slow: Arc<dyn Handler>) -> Console {
        Console {
            slow,
            sampler: Mutex::new(Sampler::default()),
            streams: Mutex::new(Vec::new()),
            recent: Mutex::new(VecDeque::new()),
            open: AtomicUsize::new(0),
        }
    }

    fn call(&self, method: &'static str, params: Option<Value>) -> Result<Value, ClientError> {
        let to_client = |e: stitch_control::protocol::RpcError| ClientError::Rpc {
            code: e.code,
            message: e.message,
        };
        let m = Method::parse(method, params).map_err(to_client)?;
        self.slow.call(m).map_err(to_client)
    }

    /// Takes a snapshot now, with rates against an earlier sample.
    ///
    /// # Errors
    /// [`ConsoleError`] when the slow path does not answer.
    pub fn snapshot(&self) -> Result<Snapshot, ConsoleError> {
        let sample = top::Sample::fetch_with(&mut |m, p| self.call(m, p))?;
        let macs = self
            .slow
            .call(Method::MacList(MacListParams { bridge: None }))
            .map_err(|e| ConsoleError::Macs(e.message))?;
        let mut list: MacList =
            serde_json::from_value(macs).map_err(|e| ConsoleError::Macs(e.to_string()))?;
        let total = list.entries.len();
        list.entries.truncate(MAC_SHOWN);
        let cur = Timed {
            at: Instant::now(),
            sample,
        };
        let mut s = lock(&self.sampler);
        let Sampler { history, ages } = &mut *s;
        let prev = history
            .iter()
            .rev()
            .find(|t| cur.at.saturating_duration_since(t.at) >= MIN_RATE_INTERVAL)
            .or(history.front());
        let snap = build(
            prev,
            &cur,
            MacView {
                total,
                entries: list.entries,
            },
            ages,
            unix_ms(),
        );
        history.push_back(cur);
        while history.len() > 4 {
            history.pop_front();
        }
        Ok(snap)
    }

    /// A place for one more event stream, or `None` when [`MAX_STREAMS`] are open.
    pub fn open_stream(self: &Arc<Self>) -> Option<StreamSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            });
        taken.ok()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(STREAM_QUEUE);
        let backlog = lock(&self.recent).iter().cloned().collect();
        lock(&self.streams).push(tx);
        Some(StreamSlot {
            rx,
            backlog,
            console: self.clone(),
        })
    }

    /// Sends `msg` to every open stream; forgets closed ones, skips full ones.
    fn broadcast(&self, msg: &Arc<str>) {
        lock(&self.streams).retain(|s| match s.try_send(msg.clone()) {
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    fn on_event(&self, ev: &Value) {
        if let Ok(ids) = serde_json::from_value::<EventIds>(ev.clone()) {
            lock(&self.sampler).ages.on_event(&ids, Instant::now());
        }
        let body = EventMessage {
            time_ms: unix_ms(),
            event: ev,
        };
        let Ok(json) = serde_json::to_string(&body) else {
            return;
        };
        let msg: Arc<str> = sse("stitchd-event", &json).into();
        {
            let mut r = lock(&self.recent);
            if r.len() == RECENT_EVENTS {
                r.pop_front();
            }
            r.push_back(msg.clone());
        }
        self.broadcast(&msg);
    }

    /// Starts the hub (thread `stitchd-console`): it forwards the slow path's events to
    /// the streams as they come, and a snapshot every [`TICK`] while a stream is open,
    /// until `stop` is set.
    ///
    /// # Errors
    /// When the thread cannot be created.
    pub fn spawn_hub(self: Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
        let mut events = self.slow.subscribe();
        std::thread::Builder::new()
            .name("stitchd-console".into())
            .spawn(move || {
                let mut next = Instant::now() + TICK;
                while !stop.load(Ordering::Relaxed) {
                    let wait = next
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(200));
                    match events.as_ref().map(|rx| rx.recv_timeout(wait)) {
                        Some(Ok(ev)) => self.on_event(&ev),
                        Some(Err(RecvTimeoutError::Timeout)) => {}
                        Some(Err(RecvTimeoutError::Disconnected)) => events = None,
                        None => std::thread::sleep(wait),
                    }
                    if Instant::now() < next {
                        continue;
                    }
                    next = Instant::now() + TICK;
                    if self.open.load(Ordering::Acquire) == 0 {
                        continue;
                    }
                    let json = self
                        .snapshot()
                        .map_err(|e| e.to_string())
                        .and_then(|s| serde_json::to_string(&s).map_err(|e| e.to_string()));
                    let msg = match json {
                        Ok(j) => sse("snapshot", &j),
                        // A JSON string: the page shows it in its status line.
                        Err(e) => sse("console-error", &Value::String(e).to_string()),
                    };
                    self.broadcast(&msg.into());
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(rx: u64, bytes: u64) -> top::PortRow {
        top::PortRow {
            id: 0,
            name: "net_tap0".into(),
            rx_packets: rx,
            rx_bytes: bytes,
            ..top::PortRow::default()
        }
    }

    fn timed(at: Instant, rx: u64, stitch_bytes: u64) -> Timed {
        Timed {
            at,
            sample: top::Sample {
                ports: vec![port(rx, rx * 100)],
                workers: vec![top::WorkerRow {
                    lcore: 1,
                    rx_packets: rx,
                    busy_cycles: rx * 250,
                    drops: [("tx_full".to_string(), rx / 10)].into_iter().collect(),
                    ..top::WorkerRow::default()
                }],
                stitch: Some(top::StitchFacts {
                    stitches: 1,
                    flow_entries: 4,
                    flow_capacity: 1024,
                }),
                states: Some([("stitched".to_string(), 1)].into_iter().collect()),
                stitches: vec![top::StitchRow {
                    id: 7,
                    state: "stitched".into(),
                    client: "198.18.0.1:40000".into(),
                    shell_a: "198.18.0.2:7000".into(),
                    shell_b: "198.18.0.2:45000".into(),
                    core: "198.18.0.3:8000".into(),
                    packets: stitch_bytes / 1000,
                    bytes: stitch_bytes,
                }],
            },
        }
    }

    fn macs() -> MacView {
        MacView {
            total: 1,
            entries: vec![MacRow {
                bridge: 0,
                mac: "02:00:00:00:01:01".into(),
                port: 0,
                is_static: false,
                age_secs: 3,
            }],
        }
    }

    #[test]
    fn rates_and_cycles_per_packet_come_from_two_samples() {
        let t0 = Instant::now();
        let mut ages = Ages::default();
        ages.on_event(
            &EventIds {
                event: "prepared".into(),
                id: Some(7),
                first: None,
                last: None,
            },
            t0,
        );
        let a = timed(t0, 1000, 0);
        let b = timed(t0 + Duration::from_secs(2), 3000, 4_000_000);
        let s = build(Some(&a), &b, macs(), &mut ages, 42);
        assert_eq!(s.interval_secs, 2.0);
        assert_eq!(s.ports[0].rx_pps, 1000.0);
        assert_eq!(s.ports[0].rx_bytes_per_sec, 100_000.0);
        let w = &s.workers[0];
        assert_eq!(w.rx_pps, 1000.0);
        // 500k busy cycles over 2000 packets.
        assert_eq!(w.cycles_per_packet, Some(250.0));
        assert_eq!(w.drops_per_sec, 100.0);
        let st = &s.stitches.rows[0];
        assert_eq!(st.bytes_per_sec, 2_000_000.0);
        assert_eq!(st.age_secs, Some(2));
        assert_eq!(st.leg_a, "198.18.0.1:40000 <-> 198.18.0.2:7000");
    }

    #[test]
    fn the_first_snapshot_has_zero_rates_and_no_cycles() {
        let mut ages = Ages::default();
        let s = build(None, &timed(Instant::now(), 500, 10), macs(), &mut ages, 0);
        assert_eq!(s.ports[0].rx_pps, 0.0);
        assert_eq!(s.workers[0].cycles_per_packet, None);
        assert_eq!(s.stitches.rows[0].age_secs, Some(0));
    }

    #[test]
    fn snapshot_json_has_the_fields_the_page_reads() {
        let t0 = Instant::now();
        let mut ages = Ages::default();
        let s = build(
            Some(&timed(t0, 0, 0)),
            &timed(t0 + Duration::from_secs(1), 10, 0),
            macs(),
            &mut ages,
            1_700_000_000_000,
        );
        let v: Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["time_ms"], 1_700_000_000_000u64);
        assert_eq!(v["ports"][0]["name"], "net_tap0");
        assert_eq!(v["ports"][0]["rx_pps"], 10.0);
        assert_eq!(v["workers"][0]["drops"]["tx_full"], 1);
        assert_eq!(v["workers"][0]["cycles_per_packet"], 250.0);
        assert_eq!(v["macs"]["entries"][0]["static"], false);
        assert_eq!(v["macs"]["total"], 1);
        assert_eq!(v["stitches"]["by_state"]["stitched"], 1);
        assert_eq!(v["stitches"]["rows"][0]["state"], "stitched");
        assert_eq!(v["stitches"]["flow_capacity"], 1024);
    }

    #[test]
    fn installed_ranges_and_removals_set_ages() {
        let t0 = Instant::now();
        let mut ages = Ages::default();
        let ev = |event: &str, id, first, last| EventIds {
            event: event.into(),
            id,
            first,
            last,
        };
        ages.on_event(&ev("installed", None, Some(10), Some(19)), t0);
        assert_eq!(ages.age(15, t0 + Duration::from_secs(5)), 5);
        ages.on_event(&ev("prepared", Some(3), None, None), t0);
        ages.on_event(&ev("removed", Some(3), None, None), t0);
        // Unknown again: born when first asked about.
        assert_eq!(ages.age(3, t0 + Duration::from_secs(9)), 0);
    }

    #[test]
    fn an_event_is_one_sse_message() {
        let ev = serde_json::json!({"event": "prepared", "id": 1});
        let body = serde_json::to_string(&EventMessage {
            time_ms: 5,
            event: &ev,
        })
        .unwrap();
        assert_eq!(
            sse("stitchd-event", &body),
            "event: stitchd-event\ndata: {\"time_ms\":5,\"event\":{\"event\":\"prepared\",\"id\":1}}\n\n"
        );
    }
}
