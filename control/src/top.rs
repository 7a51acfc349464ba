//! `stitchctl top`: what a live view shows, computed from two successive samples of the
//! daemon's counters (`ports.stats`, `stats.get`, and `stitch.list` while there are few
//! stitches, `stitch.get` per stitch while there are very few, for the busiest). Rates are counter differences divided by the time between the samples,
//! which the caller measures and passes in, so the rendering is a pure function and is
//! tested without a daemon.
//!
//! Only the fields shown are read (serde ignores the rest), so a newer daemon with more
//! counters still works; a counter that went backwards (daemon restarted) shows a rate
//! of 0, not a huge number.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::client::{Client, ClientError};

/// Above this many stitches, `top` does not list them to count their states (one
/// `stitch.list` a second would copy them all); it shows the total only.
pub const STATE_COUNT_LIMIT: u64 = 4096;

/// With at most this many stitches, `top` reads each one's counters (`stitch.get`) to
/// show the busiest.
pub const BUSIEST_LIMIT: usize = 64;

/// How many of the busiest stitches are shown.
pub const BUSIEST_SHOWN: usize = 5;

/// Why a sample could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The call failed (socket, daemon refusal).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon answered something this version cannot read.
    #[error("unexpected {method} result: {error}")]
    Shape {
        /// The method.
        method: &'static str,
        /// What serde said.
        error: serde_json::Error,
    },
}

/// One port's counters (`ports.stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PortRow {
    pub id: u16,
    #[serde(default)]
    pub name: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    #[serde(default)]
    pub rx_dropped: u64,
    #[serde(default)]
    pub rx_errors: u64,
    #[serde(default)]
    pub tx_errors: u64,
}

/// One worker's counters (`stats.get`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct WorkerRow {
    pub lcore: u32,
    pub rx_packets: u64,
    pub tx_packets: u64,
    #[serde(default)]
    pub stitched: u64,
    /// TSC cycles of the rounds that received packets (stitchd's `busy_cycles`).
    #[serde(default)]
    pub busy_cycles: u64,
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
}

impl WorkerRow {
    fn dropped(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// Flow table facts (`stats.get` -> `stitch`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct StitchFacts {
    pub stitches: u64,
    pub flow_entries: u64,
    pub flow_capacity: u64,
}

#[derive(Deserialize)]
struct PortsStats {
    ports: Vec<PortRow>,
}

#[derive(Deserialize)]
struct StatsGet {
    workers: Vec<WorkerRow>,
    #[serde(default)]
    stitch: Option<StitchFacts>,
}

#[derive(Deserialize)]
struct Endpoint {
    #[serde(default)]
    client: String,
    #[serde(default)]
    shell: String,
    #[serde(default)]
    core: String,
}

#[derive(Deserialize)]
struct StitchSummary {
    id: u64,
    state: String,
    leg_a: Endpoint,
    leg_b: Endpoint,
}

#[derive(Deserialize)]
struct DirCounters {
    #[serde(default)]
    packets: u64,
    #[serde(default)]
    bytes: u64,
}

#[derive(Deserialize)]
struct StitchDetail {
    directions: BTreeMap<String, DirCounters>,
}

/// One stitch's traffic (all four directions together), for the busiest list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StitchRow {
    pub id: u64,
    pub state: String,
    pub client: String,
    /// The shell's address on leg A (towards the client).
    pub shell_a: String,
    /// The shell's address on leg B (towards the core).
    pub shell_b: String,
    pub core: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Deserialize)]
struct StitchList {
    stitches: Vec<StitchSummary>,
}

/// The counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub ports: Vec<PortRow>,
    pub workers: Vec<WorkerRow>,
    pub stitch: Option<StitchFacts>,
    /// Stitches by state; `None` when there were more than [`STATE_COUNT_LIMIT`].
    pub states: Option<BTreeMap<String, u64>>,
    /// Every stitch's counters; empty when there were more than [`BUSIEST_LIMIT`].
    pub stitches: Vec<StitchRow>,
}

fn typed<T: DeserializeOwned>(method: &'static str, v: Value) -> Result<T, TopError> {
    serde_json::from_value(v).map_err(|error| TopError::Shape { method, error })
}

impl Sample {
    /// Reads the counters over `client` (two or three calls).
    ///
    /// # Errors
    /// [`TopError`] when a call fails or a result has an unexpected shape.
    pub fn fetch(client: &mut Client) -> Result<Sample, TopError> {
        Self::fetch_with(&mut |method, params| client.call(method, params))
    }

    /// Reads the counters through `call` (method name, params -> result), so that code
    /// inside stitchd (the web console) takes the same sample without a socket.
    ///
    /// # Errors
    /// [`TopError`] when a call fails or a result has an unexpected shape.
    pub fn fetch_with(
        call: &mut dyn FnMut(&'static str, Option<Value>) -> Result<Value, ClientError>,
    ) -> Result<Sample, TopError> {
        let ports: PortsStats = typed("ports.stats", call("ports.stats", None)?)?;
        let stats: StatsGet = typed("stats.get", call("stats.get", None)?)?;
        let few = stats
            .stitch
            .as_ref()
            .is_some_and(|s| s.stitches <= STATE_COUNT_LIMIT);
        let mut states = None;
        let mut stitches = Vec::new();
        if few {
            let list: StitchList = typed("stitch.list", call("stitch.list", None)?)?;
            let mut m = BTreeMap::new();
            for s in &list.stitches {
                *m.entry(s.state.clone()).or_insert(0) += 1;
            }
            states = Some(m);
            if list.stitches.len() <= BUSIEST_LIMIT {
                for s in list.stitches {
                    let params = serde_json::json!({ "id": s.id });
                    let d: StitchDetail = match call("stitch.get", Some(params)) {
                        Ok(v) => typed("stitch.get", v)?,
                        // Removed since the list was taken.
                        Err(ClientError::Rpc { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    stitches.push(StitchRow {
                        id: s.id,
                        state: s.state,
                        client: s.leg_a.client,
                        shell_a: s.leg_a.shell,
                        shell_b: s.leg_b.shell,
                        core: s.leg_b.core,
                        packets: d.directions.values().map(|c| c.packets).sum(),
                        bytes: d.directions.values().map(|c| c.bytes).sum(),
                    });
                }
            }
        }
        Ok(Sample {
            ports: ports.ports,
            workers: stats.workers,
            stitch: stats.stitch,
            states,
            stitches,
        })
    }
}

/// Per-second rate of a counter that went from `before` to `now` in `secs` seconds; 0
/// when it went backwards (daemon restarted) or no time passed.
/// Busy cycles per received packet between two samples of a worker; `None` when it
/// received nothing (an idle worker has no cost per packet).
pub fn cycles_per_packet(now: &WorkerRow, before: &WorkerRow) -> Option<f64> {
    let pkts = now.rx_packets.saturating_sub(before.rx_packets);
    (pkts > 0).then(|| now.busy_cycles.saturating_sub(before.busy_cycles) as f64 / pkts as f64)
}

pub fn rate(now: u64, before: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(before) as f64 / secs
}

/// Packets per second in a short human form: 950, 12.3k, 4.56M.
fn pps(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Bytes per second as Mbit/s.
fn mbps(bytes_per_sec: f64) -> String {
    format!("{:.1}", bytes_per_sec * 8.0 / 1e6)
}

/// Aligned columns: the first `left` left-aligned (names), numbers right-aligned, and
/// with `free_last` the last column (free text) left-aligned.
fn table(rows: &[Vec<String>], left: usize, free_last: bool) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let w = widths[i];
            let _ = match i {
                0 => write!(line, "{cell:<w$}"),
                _ if i < left => write!(line, "  {cell:<w$}"),
                _ if free_last && i + 1 == cols => write!(line, "  {cell}"),
                _ => write!(line, "  {cell:>w$}"),
            };
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The view of `cur`, with rates against `prev` taken `secs` seconds earlier.
pub fn render(prev: &Sample, cur: &Sample, secs: f64) -> String {
    let mut out = String::new();
    let stitch = match (&cur.stitch, &cur.states) {
        (Some(s), Some(states)) if !states.is_empty() => {
            let by: Vec<String> = states.iter().map(|(k, n)| format!("{k} {n}")).collect();
            format!(
                "stitches {} ({})  flows {}/{}",
                s.stitches,
                by.join(", "),
                s.flow_entries,
                s.flow_capacity
            )
        }
        (Some(s), _) => format!(
            "stitches {}  flows {}/{}",
            s.stitches, s.flow_entries, s.flow_capacity
        ),
        (None, _) => "stitches -".to_string(),
    };
    let _ = writeln!(
        out,
        "stitchd top: {} ports, {} workers, {stitch}, rates over {secs:.1} s",
        cur.ports.len(),
        cur.workers.len()
    );
    let mut rows = vec![[
        "PORT",
        "NAME",
        "RX pkt/s",
        "RX Mbit/s",
        "TX pkt/s",
        "TX Mbit/s",
        "RX drop/s",
        "err/s",
    ]
    .map(String::from)
    .to_vec()];
    for p in &cur.ports {
        let b = prev
            .ports
            .iter()
            .find(|x| x.id == p.id)
            .cloned()
            .unwrap_or_default();
        let errs = p.rx_errors + p.tx_errors;
        rows.push(vec![
            p.id.to_string(),
            p.name.clone(),
            pps(rate(p.rx_packets, b.rx_packets, secs)),
            mbps(rate(p.rx_bytes, b.rx_bytes, secs)),
            pps(rate(p.tx_packets, b.tx_packets, secs)),
            mbps(rate(p.tx_bytes, b.tx_bytes, secs)),
            pps(rate(p.rx_dropped, b.rx_dropped, secs)),
            pps(rate(errs, b.rx_errors + b.tx_errors, secs)),
        ]);
    }
    out.push_str(&table(&rows, 2, false));
    let mut rows = vec![[
        "WORKER",
        "LCORE",
        "RX pkt/s",
        "TX pkt/s",
        "stitched/s",
        "drops/s",
        "cyc/pkt",
        "drops since start",
    ]
    .map(String::from)
    .to_vec()];
    for (i, w) in cur.workers.iter().enumerate() {
        let b = prev
            .workers
            .get(i)
            .filter(|x| x.lcore == w.lcore)
            .cloned()
            .unwrap_or_default();
        let reasons: Vec<String> = w
            .drops
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        rows.push(vec![
            i.to_string(),
            w.lcore.to_string(),
            pps(rate(w.rx_packets, b.rx_packets, secs)),
            pps(rate(w.tx_packets, b.tx_packets, secs)),
            pps(rate(w.stitched, b.stitched, secs)),
            pps(rate(w.dropped(), b.dropped(), secs)),
            cycles_per_packet(w, &b).map_or("-".into(), |c| format!("{c:.0}")),
            if reasons.is_empty() {
                "none".into()
            } else {
                reasons.join(", ")
            },
        ]);
    }
    out.push_str(&table(&rows, 1, true));
    let mut busy: Vec<(f64, f64, &StitchRow)> = cur
        .stitches
        .iter()
        .map(|s| {
            let b = prev
                .stitches
                .iter()
                .find(|x| x.id == s.id)
                .cloned()
                .unwrap_or_default();
            (
                rate(s.bytes, b.bytes, secs),
                rate(s.packets, b.packets, secs),
                s,
            )
        })
        .collect();
    if !busy.is_empty() {
        busy.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.id.cmp(&b.2.id)));
        let mut rows = vec![["STITCH", "STATE", "CLIENT", "CORE", "pkt/s", "Mbit/s"]
            .map(String::from)
            .to_vec()];
        for (bytes, packets, s) in busy.into_iter().take(BUSIEST_SHOWN) {
            rows.push(vec![
                s.id.to_string(),
                s.state.clone(),
                s.client.clone(),
                s.core.clone(),
                pps(packets),
                mbps(bytes),
            ]);
        }
        out.push_str(&table(&rows, 4, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rx: u64, bytes: u64, drops: u64) -> Sample {
        Sample {
            ports: vec![PortRow {
                id: 0,
                name: "net_tap0".into(),
                rx_packets: rx,
                rx_bytes: bytes,
                ..PortRow::default()
            }],
            workers: vec![WorkerRow {
                lcore: 1,
                rx_packets: rx,
                busy_cycles: rx * 150,
                drops: [("tx_full".to_string(), drops)].into_iter().collect(),
                ..WorkerRow::default()
            }],
            stitch: Some(StitchFacts {
                stitches: 1,
                flow_entries: 4,
                flow_capacity: 1024,
            }),
            states: Some([("stitched".to_string(), 1)].into_iter().collect()),
            stitches: vec![],
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let text = render(&sample(1000, 0, 0), &sample(3000, 2_500_000, 5), 2.0);
        let port = text.lines().find(|l| l.starts_with("0 ")).expect(&text);
        let cells: Vec<&str> = port.split_whitespace().collect();
        assert_eq!(cells[..4], ["0", "net_tap0", "1.0k", "10.0"], "{text}");
        let worker = text
            .lines()
            .skip_while(|l| !l.starts_with("WORKER"))
            .nth(1)
            .expect(&text);
        let cells: Vec<&str> = worker.split_whitespace().collect();
        assert_eq!(
            cells[..7],
            ["0", "1", "1.0k", "0", "0", "2", "150"],
            "{text}"
        );
        assert!(worker.ends_with("tx_full 5"), "{worker}");
        assert!(text.starts_with("stitchd top: 1 ports, 1 workers, stitches 1 (stitched 1)"));
    }

    #[test]
    fn a_counter_that_went_backwards_shows_zero() {
        let text = render(&sample(5000, 0, 0), &sample(10, 0, 0), 1.0);
        let port = text.lines().find(|l| l.starts_with("0 ")).expect(&text);
        assert_eq!(port.split_whitespace().nth(2), Some("0"), "{text}");
    }

    #[test]
    fn busiest_stitches_come_first_by_byte_rate() {
        let row = |id, bytes| StitchRow {
            id,
            state: "stitched".into(),
            client: format!("198.18.0.1:{id}"),
            core: "198.18.0.3:8000".into(),
            packets: bytes / 1000,
            bytes,
            ..StitchRow::default()
        };
        let mut a = sample(0, 0, 0);
        a.stitches = vec![row(1, 0), row(2, 0), row(3, 0)];
        let mut b = sample(0, 0, 0);
        b.stitches = vec![row(1, 1_000_000), row(2, 9_000_000), row(3, 5_000_000)];
        let text = render(&a, &b, 1.0);
        let ids: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("STITCH "))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(ids, ["2", "3", "1"], "{text}");
        assert!(text.contains("72.0"), "9 MB/s is 72 Mbit/s:\n{text}");
    }

    #[test]
    fn large_rates_are_shortened() {
        assert_eq!(pps(12_345.0), "12.3k");
        assert_eq!(pps(4_560_000.0), "4.56M");
        assert_eq!(pps(950.0), "950");
    }
}
