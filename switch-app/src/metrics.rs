//! Prometheus exposition: `GET /metrics` on the `[metrics] listen` address (off unless
//! configured), in the OpenMetrics text format written by the `prometheus-client` crate.
//!
//! What it reads, and from where, so that a scrape never slows a worker:
//! - worker counters straight from the workers' shared [`WorkerStats`] (relaxed atomic
//!   loads, the same cells `stats.get` reads; a worker never waits for a reader);
//! - everything only the slow path knows (port counters from the PMD, the MAC tables,
//!   the flow table, stitches, slow-path and agent counters) by the same requests the
//!   control socket sends it (`ports.stats`, `stats.get`, `mac.list`, and `stitch.list`
//!   while there are at most [`STATE_COUNT_LIMIT`] stitches), answered between
//!   its other work. Their JSON answers are turned into the typed [`SlowSample`] here, at
//!   the boundary, and nowhere else.
//!
//! The listener (shared with the web console) is `crate::http`. Every metric name
//! follows the Prometheus conventions: prefix `stitchd_`, counters end in `_total`,
//! bytes in base units (`_bytes`).
//!
//! Cost: `mac.list` copies every MAC entry; a scrape every few seconds of tables of tens
//! of thousands of entries is fine, a table of millions would want a count-only request.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;
use stitch_control::protocol::{MacListParams, Method, PortsStatsParams};
use stitch_control::server::Handler;
use switch_core::verdict::DropReason;

use crate::stats::WorkerStats;
use crate::stitch::handoff::HandoffsView;
use serde::Deserialize;

/// Above this many stitches a scrape does not list them (`stitch.list` copies each one)
/// to count their states: `stitchd_stitches_by_state` is then absent.
pub const STATE_COUNT_LIMIT: u64 = 4096;

/// Content type of the OpenMetrics text format `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a scrape could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The slow path refused or did not answer a request.
    #[error("the slow path did not answer {method}: {message}")]
    SlowPath {
        /// The request.
        method: &'static str,
        /// What it said.
        message: String,
    },
    /// An answer lacked a field this module reads (a bug: the two disagree).
    #[error("{method} answer has no {field}")]
    Missing {
        /// The request.
        method: &'static str,
        /// The field.
        field: &'static str,
    },
    /// The text encoder failed.
    #[error("encoding the metrics failed")]
    Encode,
}

/// One port's PMD counters (`ports.stats`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortSample {
    pub id: u64,
    pub name: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub rx_nombuf: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// One worker's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSample {
    pub lcore: u32,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub flooded: u64,
    pub stitched: u64,
    pub punted: u64,
    pub learn_requests: u64,
    pub learn_dropped: u64,
    /// TSC cycles of the rounds that received packets.
    pub busy_cycles: u64,
    /// Every drop reason, by name, zeros included.
    pub drops: Vec<(&'static str, u64)>,
}

impl WorkerSample {
    /// Reads a worker's shared counters (relaxed loads; never waits).
    pub fn read(w: &WorkerStats) -> WorkerSample {
        WorkerSample {
            lcore: w.lcore,
            rx_packets: w.rx_packets.load(Relaxed),
            rx_bytes: w.rx_bytes.load(Relaxed),
            tx_packets: w.tx_packets.load(Relaxed),
            flooded: w.flooded.load(Relaxed),
            stitched: w.stitched.load(Relaxed),
            punted: w.punted.load(Relaxed),
            learn_requests: w.learn_requests.load(Relaxed),
            learn_dropped: w.learn_dropped.load(Relaxed),
            busy_cycles: w.busy_cycles.load(Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name(), w.drops[r.index()].load(Relaxed)))
                .collect(),
        }
    }
}

/// What only the slow path knows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlowSample {
    pub ports: Vec<PortSample>,
    /// (bridge, entries) for every bridge with a table.
    pub mac_entries: Vec<(u64, u64)>,
    /// Slow-path MAC events (`learned`, `aged`, `moves`, ...), by name.
    pub mac_events: Vec<(String, u64)>,
    pub stitches: u64,
    /// Stitches by state (`stitch.list`); `None` above [`STATE_COUNT_LIMIT`] stitches.
    pub states: Option<Vec<(String, u64)>>,
    pub flow_entries: u64,
    pub flow_capacity: u64,
    pub flow_table_full: u64,
    pub held_total: u64,
    pub acks_to_shell: u64,
    /// Agent protocol counters by name (empty without `[agent]`).
    pub agent: Vec<(String, u64)>,
    /// Hand-off outcomes, removals by reason, freeze times (`stats.get` -> `stitch.handoffs`).
    pub handoffs: HandoffsView,
    /// The balancer's services and destinations (`lb.stats`).
    pub lb: stitch_control::lb::LbStats,
}

fn u64_at(v: &Value, method: &'static str, field: &'static str) -> Result<u64, MetricsError> {
    v[field]
        .as_u64()
        .ok_or(MetricsError::Missing { method, field })
}

fn counters_of(v: &Value) -> Vec<(String, u64)> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, x)| x.as_u64().map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default()
}

/// Counts the stitches of a `stitch.list` answer by state, sorted by state.
///
/// # Errors
/// [`MetricsError::Missing`] when the answer has no `stitches` or a stitch no `state`.
pub fn states_of(list: &Value) -> Result<Vec<(String, u64)>, MetricsError> {
    const SL: &str = "stitch.list";
    let mut out: Vec<(String, u64)> = Vec::new();
    for st in list["stitches"].as_array().ok_or(MetricsError::Missing {
        method: SL,
        field: "stitches",
    })? {
        let state = st["state"].as_str().ok_or(MetricsError::Missing {
            method: SL,
            field: "state",
        })?;
        match out.iter_mut().find(|(k, _)| k == state) {
            Some((_, n)) => *n += 1,
            None => out.push((state.to_string(), 1)),
        }
    }
    out.sort_unstable();
    Ok(out)
}

impl SlowSample {
    /// Asks the slow path (through `h`, as the control socket does).
    ///
    /// # Errors
    /// [`MetricsError`] when a request fails or an answer lacks a field.
    pub fn fetch(h: &dyn Handler) -> Result<SlowSample, MetricsError> {
        let call = |method: &'static str, m: Method| {
            h.call(m).map_err(|e| MetricsError::SlowPath {
                method,
                message: e.message,
            })
        };
        let ports_v = call(
            "ports.stats",
            Method::PortsStats(PortsStatsParams { port: None }),
        )?;
        let stats = call("stats.get", Method::StatsGet)?;
        let macs = call("mac.list", Method::MacList(MacListParams { bridge: None }))?;
        let mut sample = Self::from_answers(&ports_v, &stats, &macs)?;
        let lb = call(
            "lb.stats",
            Method::LbStats(stitch_control::lb::LbStatsParams { service: None }),
        )?;
        sample.lb =
            stitch_control::lb::LbStats::deserialize(&lb).map_err(|_| MetricsError::Missing {
                method: "lb.stats",
                field: "services",
            })?;
        if sample.stitches <= STATE_COUNT_LIMIT {
            let list = call("stitch.list", Method::StitchList)?;
            sample.states = Some(states_of(&list)?);
        }
        Ok(sample)
    }

    /// Builds the sample from the three answers.
    ///
    /// # Errors
    /// [`MetricsError::Missing`] naming the absent field.
    pub fn from_answers(
        ports_v: &Value,
        stats: &Value,
        macs: &Value,
    ) -> Result<SlowSample, MetricsError> {
        const PS: &str = "ports.stats";
        let mut ports = Vec::new();
        for p in ports_v["ports"].as_array().ok_or(MetricsError::Missing {
            method: PS,
            field: "ports",
        })? {
            ports.push(PortSample {
                id: u64_at(p, PS, "id")?,
                name: p["name"].as_str().unwrap_or_default().to_string(),
                rx_packets: u64_at(p, PS, "rx_packets")?,
                rx_bytes: u64_at(p, PS, "rx_bytes")?,
                rx_missed: u64_at(p, PS, "rx_dropped")?,
                rx_errors: u64_at(p, PS, "rx_errors")?,
                rx_nombuf: u64_at(p, PS, "rx_nombuf")?,
                tx_packets: u64_at(p, PS, "tx_packets")?,
                tx_bytes: u64_at(p, PS, "tx_bytes")?,
                tx_errors: u64_at(p, PS, "tx_errors")?,
            });
        }
        let mut mac_entries: Vec<(u64, u64)> = Vec::new();
        for e in macs["entries"].as_array().ok_or(MetricsError::Missing {
            method: "mac.list",
            field: "entries",
        })? {
            let b = u64_at(e, "mac.list", "bridge")?;
            match mac_entries.iter_mut().find(|(x, _)| *x == b) {
                Some((_, n)) => *n += 1,
                None => mac_entries.push((b, 1)),
            }
        }
        mac_entries.sort_unstable();
        const SG: &str = "stats.get";
        let st = &stats["stitch"];
        Ok(SlowSample {
            ports,
            mac_entries,
            mac_events: counters_of(&stats["slow_path"])
                .into_iter()
                .filter(|(k, _)| k != "learn_pending")
                .collect(),
            stitches: u64_at(st, SG, "stitches")?,
            states: None,
            flow_entries: u64_at(st, SG, "flow_entries")?,
            flow_capacity: u64_at(st, SG, "flow_capacity")?,
            flow_table_full: u64_at(st, SG, "table_full")?,
            held_total: u64_at(st, SG, "held_total")?,
            acks_to_shell: u64_at(st, SG, "acks_to_shell")?,
            agent: counters_of(&stats["agent"]["counters"]),
            handoffs: HandoffsView::deserialize(&st["handoffs"]).map_err(|_| {
                MetricsError::Missing {
                    method: SG,
                    field: "stitch.handoffs",
                }
            })?,
            lb: stitch_control::lb::LbStats::default(),
        })
    }
}

/// Everything one scrape shows.
#[derive(Debug, Clone)]
pub struct Sample {
    pub workers: Vec<WorkerSample>,
    pub slow: SlowSample,
    /// Entries per bridge table (`[l2] mac_table_size`).
    pub mac_capacity: u64,
}

impl Collector for Sample {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Labels = Vec<(&'static str, String)>;
        fn counters(
            enc: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            unit: Option<&Unit>,
            rows: &[(Labels, u64)],
        ) -> Result<(), std::fmt::Error> {
            let mut m = enc.encode_descriptor(
                name,
                help,
                unit,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            if let [(labels, v)] = rows {
                if labels.is_empty() {
                    return ConstCounter::new(*v).encode(m);
                }
            }
            for (labels, v) in rows {
                ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
            }
            Ok(())
        }
        fn gauges(
            enc: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            rows: &[(Labels, u64)],
        ) -> Result<(), std::fmt::Error> {
            let mut m = enc.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            let value = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            if let [(labels, v)] = rows {
                if labels.is_empty() {
                    return ConstGauge::new(value(*v)).encode(m);
                }
            }
            for (labels, v) in rows {
                ConstGauge::new(value(*v)).encode(m.encode_family(labels)?)?;
            }
            Ok(())
        }
        let port = |p: &PortSample| -> Labels {
            vec![("port", p.id.to_string()), ("name", p.name.clone())]
        };
        let ports = &self.slow.ports;
        type PortField = (&'static str, &'static str, bool, fn(&PortSample) -> u64);
        let port_metrics: [PortField; 8] = [
            (
                "port_rx_packets",
                "Packets received by the port (PMD)",
                false,
                |p| p.rx_packets,
            ),
            ("port_rx", "Bytes received by the port (PMD)", true, |p| {
                p.rx_bytes
            }),
            (
                "port_tx_packets",
                "Packets sent by the port (PMD)",
                false,
                |p| p.tx_packets,
            ),
            ("port_tx", "Bytes sent by the port (PMD)", true, |p| {
                p.tx_bytes
            }),
            (
                "port_rx_missed_packets",
                "Packets the port dropped for lack of an RX descriptor (imissed)",
                false,
                |p| p.rx_missed,
            ),
            (
                "port_rx_errors",
                "Erroneous received packets (PMD)",
                false,
                |p| p.rx_errors,
            ),
            (
                "port_rx_nombuf",
                "RX mbuf allocation failures (PMD)",
                false,
                |p| p.rx_nombuf,
            ),
            (
                "port_tx_errors",
                "Failed transmitted packets (PMD)",
                false,
                |p| p.tx_errors,
            ),
        ];
        for (name, help, bytes, f) in port_metrics {
            let rows: Vec<_> = ports.iter().map(|p| (port(p), f(p))).collect();
            counters(&mut enc, name, help, bytes.then_some(&Unit::Bytes), &rows)?;
        }

        let worker = |i: usize, w: &WorkerSample| -> Labels {
            vec![("worker", i.to_string()), ("lcore", w.lcore.to_string())]
        };
        type WorkerField = (&'static str, &'static str, bool, fn(&WorkerSample) -> u64);
        let worker_metrics: [WorkerField; 9] = [
            (
                "worker_busy_cycles",
                "TSC cycles of poll rounds that received packets (over worker_rx_packets: cycles per packet, idle polling excluded)",
                false,
                |w| w.busy_cycles,
            ),
            (
                "worker_rx_packets",
                "Packets received by the worker",
                false,
                |w| w.rx_packets,
            ),
            ("worker_rx", "Bytes received by the worker", true, |w| {
                w.rx_bytes
            }),
            (
                "worker_tx_packets",
                "Packets the worker handed to a TX queue",
                false,
                |w| w.tx_packets,
            ),
            (
                "worker_flooded_packets",
                "Packets flooded (broadcast, multicast, unknown unicast)",
                false,
                |w| w.flooded,
            ),
            (
                "worker_stitched_packets",
                "Packets translated by a stitch",
                false,
                |w| w.stitched,
            ),
            (
                "worker_punted_packets",
                "Packets handed to the slow path",
                false,
                |w| w.punted,
            ),
            (
                "worker_learn_requests",
                "MAC learning requests sent to the slow path",
                false,
                |w| w.learn_requests,
            ),
            (
                "worker_learn_dropped",
                "MAC learning requests lost (queue full)",
                false,
                |w| w.learn_dropped,
            ),
        ];
        for (name, help, bytes, f) in worker_metrics {
            let rows: Vec<_> = self
                .workers
                .iter()
                .enumerate()
                .map(|(i, w)| (worker(i, w), f(w)))
                .collect();
            counters(&mut enc, name, help, bytes.then_some(&Unit::Bytes), &rows)?;
        }
        let drops: Vec<_> = self
            .workers
            .iter()
            .enumerate()
            .flat_map(|(i, w)| {
                w.drops.iter().map(move |(r, n)| {
                    let mut l = worker(i, w);
                    l.push(("reason", (*r).to_string()));
                    (l, *n)
                })
            })
            .collect();
        counters(
            &mut enc,
            "worker_drops",
            "Packets dropped by the worker, by reason (README: drop reasons)",
            None,
            &drops,
        )?;

        let s = &self.slow;
        let bridge = |b: u64| -> Labels { vec![("bridge", b.to_string())] };
        let rows: Vec<_> = s.mac_entries.iter().map(|&(b, n)| (bridge(b), n)).collect();
        gauges(
            &mut enc,
            "mac_table_entries",
            "MAC table entries (learned and static)",
            &rows,
        )?;
        let rows: Vec<_> = s
            .mac_entries
            .iter()
            .map(|&(b, _)| (bridge(b), self.mac_capacity))
            .collect();
        gauges(
            &mut enc,
            "mac_table_capacity",
            "MAC table size (entries)",
            &rows,
        )?;
        let rows: Vec<_> = s
            .mac_events
            .iter()
            .map(|(k, n)| (vec![("event", k.clone())], *n))
            .collect();
        counters(
            &mut enc,
            "mac_events",
            "Slow-path MAC table events (learned, refreshed, moves, aged, table_full, ...)",
            None,
            &rows,
        )?;
        let one = |n: u64| vec![(Labels::new(), n)];
        gauges(
            &mut enc,
            "flow_table_entries",
            "Flow table entries in use (four per stitch)",
            &one(s.flow_entries),
        )?;
        gauges(
            &mut enc,
            "flow_table_capacity",
            "Flow table size (entries)",
            &one(s.flow_capacity),
        )?;
        counters(
            &mut enc,
            "flow_table_full",
            "Stitches refused because the flow table was full",
            None,
            &one(s.flow_table_full),
        )?;
        gauges(
            &mut enc,
            "stitches",
            "Stitches known to the switch (any state)",
            &one(s.stitches),
        )?;
        if let Some(states) = &s.states {
            let rows: Vec<_> = states
                .iter()
                .map(|(k, n)| (vec![("state", k.clone())], *n))
                .collect();
            gauges(
                &mut enc,
                "stitches_by_state",
                "Stitches by state (watching, frozen, stitched, closing); absent above 4096 stitches",
                &rows,
            )?;
        }
        counters(
            &mut enc,
            "stitch_held_packets",
            "Packets held while a stitch was frozen",
            None,
            &one(s.held_total),
        )?;
        counters(
            &mut enc,
            "stitch_acks_to_shell",
            "Pure ACKs sent to the shell for held segments",
            None,
            &one(s.acks_to_shell),
        )?;
        let h = &s.handoffs;
        let rows: Vec<_> = [
            ("prepared", h.prepared),
            ("frozen", h.frozen),
            ("committed", h.committed),
            ("commit_refused", h.commit_refused),
            ("aborted", h.aborted),
        ]
        .iter()
        .map(|(k, n)| (vec![("outcome", k.to_string())], *n))
        .collect();
        counters(
            &mut enc,
            "handoffs",
            "Hand-off steps and outcomes (prepared, frozen, committed, commit_refused, aborted)",
            None,
            &rows,
        )?;
        let rows: Vec<_> = h
            .removed
            .iter()
            .map(|(k, n)| (vec![("reason", k.clone())], *n))
            .collect();
        counters(
            &mut enc,
            "stitches_removed",
            "Stitches removed, by reason (closed, idle, rst, deleted, new_connection)",
            None,
            &rows,
        )?;
        let m = enc.encode_descriptor(
            "handoff_frozen",
            "Time a committed stitch was frozen (its data towards the shell held), freeze to commit",
            Some(&Unit::Seconds),
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        FrozenHistogram(h).encode(m)?;
        let agent_rows: Vec<_> = s
            .agent
            .iter()
            .map(|(k, n)| (vec![("event", k.clone())], *n))
            .collect();
        // The balancer: per service, then per destination.
        let svc = |name: &str| -> Labels { vec![("service", name.to_string())] };
        let lb = &s.lb.services;
        let rows: Vec<_> = lb.iter().map(|x| (svc(&x.name), x.conns)).collect();
        counters(
            &mut enc,
            "lb_connections",
            "Connections scheduled by the balancer, per service",
            None,
            &rows,
        )?;
        // One row per service and per value of `label`.
        type SvcSplit = fn(&stitch_control::lb::LbServiceStats) -> [(&'static str, u64); 3];
        let split = |label: &'static str, f: SvcSplit| -> Vec<(Labels, u64)> {
            lb.iter()
                .flat_map(|x| {
                    f(x).map(|(v, n)| {
                        let mut l = svc(&x.name);
                        l.push((label, v.to_string()));
                        (l, n)
                    })
                })
                .collect()
        };
        counters(
            &mut enc,
            "lb_refused",
            "New connections refused (no_dest, table_full) and segments of no connection (no_conn)",
            None,
            &split("reason", |x| {
                [
                    ("no_dest", x.no_dest),
                    ("table_full", x.table_full),
                    ("no_conn", x.no_conn),
                ]
            }),
        )?;
        counters(
            &mut enc,
            "lb_held",
            "Launch on demand: new connections held, released to a backend, dropped at the bound",
            None,
            &split("outcome", |x| {
                [
                    ("held", x.held),
                    ("released", x.released),
                    ("dropped", x.held_dropped),
                ]
            }),
        )?;
        let rows: Vec<_> = lb.iter().map(|x| (svc(&x.name), x.held_now)).collect();
        gauges(&mut enc, "lb_held_now", "New connections held now", &rows)?;
        let rows: Vec<_> = lb.iter().map(|x| (svc(&x.name), x.launches)).collect();
        counters(&mut enc, "lb_launches", "Launch hooks run", None, &rows)?;
        let dest = |x: &stitch_control::lb::LbServiceStats,
                    d: &stitch_control::lb::LbDestStats|
         -> Labels {
            vec![
                ("service", x.name.clone()),
                ("backend", d.backend.clone()),
                ("soft_port", d.soft_port.to_string()),
            ]
        };
        type DestField = (
            &'static str,
            &'static str,
            bool,
            fn(&stitch_control::lb::LbDestStats) -> u64,
        );
        let dest_metrics: [DestField; 8] = [
            (
                "lb_dest_connections",
                "Connections given to the destination",
                true,
                |d| d.conns,
            ),
            (
                "lb_dest_active",
                "Active connections (IPVS activeconns)",
                false,
                |d| d.active,
            ),
            (
                "lb_dest_inactive",
                "Inactive connections (IPVS inactconns)",
                false,
                |d| d.inactive,
            ),
            (
                "lb_dest_inflight_requests",
                "Requests sent and not yet answered (NAT)",
                false,
                |d| d.inflight,
            ),
            (
                "lb_dest_up",
                "1 when the destination takes new connections",
                false,
                |d| u64::from(d.up),
            ),
            (
                "lb_dest_packets_in",
                "Frames sent to the destination",
                true,
                |d| d.packets_in,
            ),
            (
                "lb_dest_packets_out",
                "Reply frames rewritten back to clients (NAT)",
                true,
                |d| d.packets_out,
            ),
            (
                "lb_dest_passive_failures",
                "Client connections refused or unanswered by the destination",
                true,
                |d| d.passive_failures,
            ),
        ];
        for (name, help, counter, f) in dest_metrics {
            let rows: Vec<_> = lb
                .iter()
                .flat_map(|x| x.dests.iter().map(move |d| (dest(x, d), f(d))))
                .collect();
            if counter {
                counters(&mut enc, name, help, None, &rows)?;
            } else {
                gauges(&mut enc, name, help, &rows)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "lb_dest_response_time",
            "Smoothed response time (first request byte to first answer byte, EWMA; 0: unknown)",
            Some(&Unit::Seconds),
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for x in lb {
            for d in &x.dests {
                ConstGauge::new(d.resp_ewma_us as f64 / 1e6)
                    .encode(m.encode_family(&dest(x, d))?)?;
            }
        }
        counters(
            &mut enc,
            "agent_events",
            "In-band agent protocol events (probes answered, requests, refusals, ...)",
            None,
            &agent_rows,
        )?;
        Ok(())
    }
}

/// The freeze-time histogram of a [`HandoffsView`], as an OpenMetrics histogram.
#[derive(Debug)]
struct FrozenHistogram<'a>(&'a HandoffsView);

impl EncodeMetric for FrozenHistogram<'_> {
    fn encode(&self, mut e: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        e.encode_histogram::<()>(
            self.0.frozen_sum_secs,
            self.0.frozen_count(),
            &self.0.frozen_histogram(),
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

impl Sample {
    /// The OpenMetrics text of this sample.
    ///
    /// # Errors
    /// [`MetricsError::Encode`] (only if the formatter fails).
    pub fn into_text(self) -> Result<String, MetricsError> {
        let mut reg = Registry::with_prefix("stitchd");
        reg.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg)
            .map_err(|_| MetricsError::Encode)?;
        Ok(out)
    }
}

/// What the metrics thread needs.
pub struct Exporter {
    pub workers: Vec<Arc<WorkerStats>>,
    pub slow: Arc<dyn Handler>,
    pub mac_capacity: u64,
}

impl Exporter {
    /// One scrape's text.
    ///
    /// # Errors
    /// [`MetricsError`] when the slow path does not answer.
    pub fn render(&self) -> Result<String, MetricsError> {
        let workers = self.workers.iter().map(|w| WorkerSample::read(w)).collect();
        let slow = SlowSample::fetch(self.slow.as_ref())?;
        Sample {
            workers,
            slow,
            mac_capacity: self.mac_capacity,
        }
        .into_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answers() -> (Value, Value, Value) {
        let ports = json!({"ports": [{"id": 0, "name": "net_ring0", "rx_packets": 5, "rx_bytes": 300,
            "rx_dropped": 0, "rx_errors": 0, "rx_nombuf": 0, "tx_packets": 7, "tx_bytes": 420,
            "tx_errors": 1, "queues": []}]});
        let stats = json!({"workers": [], "slow_path": {"learned": 2, "aged": 1, "learn_pending": 0},
            "stitch": {"stitches": 1, "flow_entries": 4, "flow_capacity": 1024, "table_full": 0,
                "held_total": 3, "acks_to_shell": 0,
                "handoffs": {"prepared": 2, "frozen": 2, "committed": 1, "commit_refused": 1,
                    "aborted": 0, "removed": {"rst": 1},
                    "frozen_buckets": [0, 0, 1, 0, 0, 0, 0, 0, 0], "frozen_sum_secs": 0.004}},
            "agent": null});
        let macs = json!({"entries": [{"bridge": 0}, {"bridge": 0}, {"bridge": 2}], "capacity": 8});
        (ports, stats, macs)
    }

    #[test]
    fn slow_answers_become_a_typed_sample() {
        let (p, s, m) = answers();
        let slow = SlowSample::from_answers(&p, &s, &m).unwrap();
        assert_eq!(slow.ports[0].tx_errors, 1);
        assert_eq!(slow.mac_entries, vec![(0, 2), (2, 1)]);
        assert_eq!(slow.stitches, 1);
        assert!(slow.mac_events.contains(&("learned".into(), 2)));
        assert!(!slow.mac_events.iter().any(|(k, _)| k == "learn_pending"));
        assert!(slow.agent.is_empty());
    }

    #[test]
    fn stitches_are_counted_by_state() {
        let list = json!({"stitches": [{"state": "stitched"}, {"state": "watching"}, {"state": "stitched"}]});
        assert_eq!(
            states_of(&list).unwrap(),
            vec![("stitched".to_string(), 2), ("watching".to_string(), 1)]
        );
        let (p, s, m) = answers();
        let mut slow = SlowSample::from_answers(&p, &s, &m).unwrap();
        slow.states = Some(states_of(&list).unwrap());
        let text = Sample {
            workers: vec![],
            slow,
            mac_capacity: 8,
        }
        .into_text()
        .unwrap();
        assert!(
            text.lines()
                .any(|l| l == "stitchd_stitches_by_state{state=\"stitched\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let (p, mut s, m) = answers();
        s["stitch"].as_object_mut().unwrap().remove("flow_capacity");
        let e = SlowSample::from_answers(&p, &s, &m).unwrap_err();
        assert_eq!(e.to_string(), "stats.get answer has no flow_capacity");
    }

    #[test]
    fn text_follows_prometheus_naming() {
        let (p, s, m) = answers();
        let w = WorkerStats::new(1, 0);
        w.rx_packets.store(9, Relaxed);
        w.drops[DropReason::ALL[0].index()].store(4, Relaxed);
        let text = Sample {
            workers: vec![WorkerSample::read(&w)],
            slow: SlowSample::from_answers(&p, &s, &m).unwrap(),
            mac_capacity: 65536,
        }
        .into_text()
        .unwrap();
        for line in [
            "stitchd_port_rx_packets_total{port=\"0\",name=\"net_ring0\"} 5",
            "stitchd_port_rx_bytes_total{port=\"0\",name=\"net_ring0\"} 300",
            "stitchd_worker_rx_packets_total{worker=\"0\",lcore=\"1\"} 9",
            "stitchd_mac_table_entries{bridge=\"2\"} 1",
            "stitchd_mac_table_capacity{bridge=\"0\"} 65536",
            "stitchd_flow_table_entries 4",
            "stitchd_stitches 1",
            "# TYPE stitchd_port_rx_bytes counter",
            "stitchd_handoffs_total{outcome=\"committed\"} 1",
            "stitchd_handoffs_total{outcome=\"commit_refused\"} 1",
            "stitchd_stitches_removed_total{reason=\"rst\"} 1",
            "# TYPE stitchd_handoff_frozen_seconds histogram",
            "stitchd_handoff_frozen_seconds_bucket{le=\"0.005\"} 1",
            "stitchd_handoff_frozen_seconds_bucket{le=\"+Inf\"} 1",
            "stitchd_handoff_frozen_seconds_count 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        let reason = DropReason::ALL[0].name();
        assert!(
            text.contains(&format!(
                "stitchd_worker_drops_total{{worker=\"0\",lcore=\"1\",reason=\"{reason}\"}} 4"
            )),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
