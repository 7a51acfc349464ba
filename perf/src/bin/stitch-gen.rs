//! `stitch-gen`: a pktgen-like traffic generator and sink on DPDK, for benchmarking
//! stitchd (or any forwarder) over virtual or real ports.
//!
//! ```text
//! stitch-gen EAL-ARGS -- [--profile F.toml] [--kind udp --size 64 --flows 1000 ...]
//!            [--pps N | --line-rate F [--line-gbps G]] [--duration S]
//!            [--search [--loss 0.001] [--trial-secs S] [--latency-at 0.1,0.5,0.9]]
//! ```
//!
//! It sends on `--tx-port` (default 0) and receives on `--rx-port` (default 1). Each frame
//! carries a signature (magic, 64-bit sequence number, TSC); the sink records latency in an
//! hdrhistogram and counts loss, reordering and duplicates over one global sequence with a
//! bitmap window. A progress line goes to stderr every second; the JSON summary to stdout
//! (or `--out`).
//!
//! Lcores: the first worker transmits, the second receives. With a single worker (e.g.
//! `--lcores 0@0,1@0` on a 2-core machine, so the device under test gets the other CPU)
//! that worker does both in one loop. The rate is kept by spacing bursts by TSC.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use dpdk::{tsc, tsc_hz, Eal, Mbuf, Mempool, Port, PortConfig, RxBurst, TxBuffer};
use hdrhistogram::Histogram;

use perf::packet::{read_signature, stamp, Signature};
use perf::profile::{line_rate_pps, Kind, Profile, Stream, Templates};
use perf::range::{IpRange, MacRange, PortRange};
use perf::report::{bisect, Raw, Search, Trial};
use perf::seq::{SeqCounts, SeqTracker};

/// Application arguments (after `--`).
#[derive(Debug, Parser)]
#[command(
    name = "stitch-gen",
    about = "Traffic generator and sink (DPDK): stitch-gen EAL-ARGS -- OPTIONS"
)]
struct Args {
    /// TOML profile (streams, rate); the options below override its rate and duration.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Without a profile: one stream of this kind (l2, udp, tcp, stitched).
    #[arg(long, default_value = "udp")]
    kind: Kind,
    /// Frame size on the wire, FCS included.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Distinct flows (default: the longest range / every stitch).
    #[arg(long)]
    flows: Option<u64>,
    #[arg(long)]
    src_mac: Option<MacRange>,
    #[arg(long)]
    dst_mac: Option<MacRange>,
    #[arg(long)]
    src_ip: Option<IpRange>,
    #[arg(long)]
    dst_ip: Option<IpRange>,
    #[arg(long)]
    src_port: Option<PortRange>,
    #[arg(long)]
    dst_port: Option<PortRange>,
    /// `stitched`: the `stitchctl --json stitch.list` output.
    #[arg(long)]
    stitches: Option<PathBuf>,
    /// `stitched`: the client's MAC.
    #[arg(long)]
    mac_c: Option<String>,
    /// `stitched`: the leg-A shell's MAC.
    #[arg(long)]
    mac_a1: Option<String>,
    /// Offered rate, packets per second.
    #[arg(long)]
    pps: Option<f64>,
    /// Offered rate as a fraction of --line-gbps.
    #[arg(long)]
    line_rate: Option<f64>,
    /// Line rate of the ports in Gbit/s (software ports have none: say what it means).
    #[arg(long)]
    line_gbps: Option<f64>,
    /// Seconds of traffic (one trial).
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long)]
    burst: Option<usize>,
    #[arg(long, default_value_t = 0)]
    tx_port: u16,
    #[arg(long, default_value_t = 1)]
    rx_port: u16,
    /// Seconds to wait for links to come up.
    #[arg(long, default_value_t = 15.0)]
    link_timeout: f64,
    /// Seconds of unmeasured traffic before the first trial (learning, caches).
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Milliseconds the sink keeps receiving after the last frame is sent.
    #[arg(long, default_value_t = 200)]
    drain_ms: u64,
    /// RFC 2544: find the highest rate with loss under --loss, then latency at fractions.
    #[arg(long)]
    search: bool,
    #[arg(long, default_value_t = 0.001)]
    loss: f64,
    /// Seconds per search trial.
    #[arg(long, default_value_t = 2.0)]
    trial_secs: f64,
    /// Most search trials after the saturation trial.
    #[arg(long, default_value_t = 8)]
    search_steps: u32,
    /// Stop when hi - lo is under this fraction of hi.
    #[arg(long, default_value_t = 0.02)]
    resolution: f64,
    /// Fractions of the maximum rate to measure latency at.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.5,0.9")]
    latency_at: Vec<f64>,
    /// Mbufs in the pool.
    #[arg(long, default_value_t = 16383)]
    mbufs: u32,
    /// Write the JSON here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

/// Counters the workers publish once per burst for the progress line.
#[derive(Debug, Default)]
struct Live {
    tx: AtomicU64,
    rx: AtomicU64,
    stop_tx: AtomicBool,
    stop_rx: AtomicBool,
}

/// Transmit side of a trial.
struct Tx {
    port: Port,
    txb: TxBuffer,
    pool: Arc<Mempool>,
    t: Arc<Templates>,
    burst: usize,
    /// Cycles between bursts (0: no pacing) and when the next is due.
    interval: u64,
    next: u64,
    max_lag: u64,
    pat: usize,
    cursor: Vec<usize>,
    seq: u64,
    sent: u64,
    refused: u64,
}

impl Tx {
    #[inline]
    fn poll(&mut self, live: &Live) {
        let now = tsc();
        if self.interval > 0 {
            if now < self.next {
                return;
            }
            self.next += self.interval;
            if now > self.next + self.max_lag {
                self.next = now + self.interval; // more than 10 ms behind: do not burst to catch up
            }
        }
        // One pool call for the whole burst; each mbuf is then filled in Rust.
        let mut slots: [Option<Mbuf>; dpdk::MAX_BURST] = Default::default();
        let n = self.burst.min(dpdk::MAX_BURST);
        if !self.pool.alloc_bulk(&mut slots[..n]) {
            self.refused += 1;
        }
        for slot in &mut slots[..n] {
            let Some(mut m) = slot.take() else { break };
            let s = usize::from(self.t.pattern[self.pat]);
            self.pat = (self.pat + 1) % self.t.pattern.len();
            let frames = &self.t.streams[s];
            let fr = frames[self.cursor[s]];
            self.cursor[s] = (self.cursor[s] + 1) % frames.len();
            if !m.fill(self.t.frame(fr)) {
                self.refused += 1;
                continue;
            }
            let Some(b) = m.data_mut() else { continue };
            stamp(
                b,
                fr.csum,
                Signature {
                    seq: self.seq,
                    tsc: now,
                },
            );
            self.seq += 1;
            let r = self.txb.push(m);
            self.sent += u64::from(r.sent);
            self.refused += u64::from(r.dropped);
        }
        let r = self.txb.flush();
        self.sent += u64::from(r.sent);
        self.refused += u64::from(r.dropped);
        live.tx.store(self.sent, Relaxed);
        let _ = self.port;
    }
}

/// Receive side of a trial.
struct Rx {
    port: Port,
    burst: RxBurst,
    first_seq: u64,
    track: SeqTracker,
    hist: Histogram<u64>,
    ns_per_cycle: f64,
    bytes: u64,
    other: u64,
}

impl Rx {
    #[inline]
    fn poll(&mut self, live: &Live) {
        if self.burst.rx(self.port, 0) == 0 {
            return;
        }
        let now = tsc();
        for m in self.burst.drain() {
            let d = m.data();
            match read_signature(d) {
                Some(sig) if sig.seq >= self.first_seq => {
                    let ns = (now.wrapping_sub(sig.tsc) as f64 * self.ns_per_cycle) as u64;
                    self.hist.saturating_record(ns.max(1));
                    self.track.observe(sig.seq);
                    self.bytes += d.len() as u64;
                }
                Some(sig) => self.track.observe(sig.seq), // counted as stale
                None => self.other += 1,
            }
        }
        live.rx.store(self.track.counts.unique, Relaxed);
    }
}

struct TxOut {
    sent: u64,
    refused: u64,
    next_seq: u64,
    cursor: Vec<usize>,
    pat: usize,
    cycles: u64,
}

struct RxOut {
    counts: SeqCounts,
    hist: Histogram<u64>,
    bytes: u64,
    other: u64,
}

struct Gen {
    eal: Eal,
    pool: Arc<Mempool>,
    t: Arc<Templates>,
    tx_port: Port,
    rx_port: Port,
    burst: usize,
    drain: Duration,
    quiet: bool,
    seq: u64,
    cursor: Vec<usize>,
    pat: usize,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

impl Gen {
    /// One trial at `pps` (None: as fast as possible) for `secs`.
    fn trial(&mut self, pps: Option<f64>, secs: f64) -> Result<Trial> {
        let hz = tsc_hz();
        let live = Arc::new(Live::default());
        let interval = match pps {
            Some(p) if p > 0.0 => ((self.burst as f64) * hz as f64 / p) as u64,
            _ => 0,
        };
        let tx = Tx {
            port: self.tx_port,
            txb: TxBuffer::new(self.tx_port, 0),
            pool: self.pool.clone(),
            t: self.t.clone(),
            burst: self.burst,
            interval: interval.max(u64::from(pps.is_some())),
            next: tsc(),
            max_lag: hz / 100,
            pat: self.pat,
            cursor: self.cursor.clone(),
            seq: self.seq,
            sent: 0,
            refused: 0,
        };
        let rx = Rx {
            port: self.rx_port,
            burst: RxBurst::default(),
            first_seq: self.seq,
            track: SeqTracker::new(self.seq),
            hist: new_hist(),
            ns_per_cycle: 1e9 / hz as f64,
            bytes: 0,
            other: 0,
        };
        let (txs, txr) = mpsc::channel::<TxOut>();
        let (rxs, rxr) = mpsc::channel::<RxOut>();
        let workers = self.eal.worker_lcores();
        let tx_done = |tx: &Tx, start: u64| TxOut {
            sent: tx.sent,
            refused: tx.refused,
            next_seq: tx.seq,
            cursor: tx.cursor.clone(),
            pat: tx.pat,
            cycles: tsc() - start,
        };
        let rx_done = |rx: Rx| RxOut {
            counts: rx.track.counts,
            hist: rx.hist,
            bytes: rx.bytes,
            other: rx.other,
        };
        if workers.len() >= 2 {
            let (l1, mut t) = (live.clone(), tx);
            self.eal.launch(workers[0], move || {
                let start = tsc();
                while !l1.stop_tx.load(Relaxed) {
                    t.poll(&l1);
                }
                let _ = txs.send(tx_done(&t, start));
                0
            })?;
            let (l2, mut r) = (live.clone(), rx);
            self.eal.launch(workers[1], move || {
                while !l2.stop_rx.load(Relaxed) {
                    r.poll(&l2);
                }
                let _ = rxs.send(rx_done(r));
                0
            })?;
        } else {
            let (l, mut t, mut r) = (live.clone(), tx, rx);
            self.eal.launch(workers[0], move || {
                let start = tsc();
                let mut out = None;
                while !l.stop_rx.load(Relaxed) {
                    if out.is_none() {
                        if l.stop_tx.load(Relaxed) {
                            out = Some(tx_done(&t, start));
                        } else {
                            t.poll(&l);
                        }
                    }
                    r.poll(&l);
                }
                let _ = txs.send(out.unwrap_or_else(|| tx_done(&t, start)));
                let _ = rxs.send(rx_done(r));
                0
            })?;
        }
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let (mut ltx, mut lrx, mut tick) = (0u64, 0u64, start);
        while Instant::now() < end {
            std::thread::sleep((end - Instant::now()).min(Duration::from_secs(1)));
            if !self.quiet && tick.elapsed() >= Duration::from_millis(990) {
                let (tx, rx) = (live.tx.load(Relaxed), live.rx.load(Relaxed));
                let dt = tick.elapsed().as_secs_f64();
                let (dtx, drx) = (tx - ltx, rx.saturating_sub(lrx));
                eprintln!(
                    "stitch-gen: {:5.1}s tx {:8.3} Mpps rx {:8.3} Mpps ({:7.3} Gbit/s) loss {:.3}%",
                    start.elapsed().as_secs_f64(),
                    dtx as f64 / dt / 1e6,
                    drx as f64 / dt / 1e6,
                    drx as f64 * (self.t.mean_wire_size() * 8.0) / dt / 1e9,
                    if tx == 0 {
                        0.0
                    } else {
                        100.0 * tx.saturating_sub(rx) as f64 / tx as f64
                    }
                );
                (ltx, lrx, tick) = (tx, rx, Instant::now());
            }
        }
        live.stop_tx.store(true, Relaxed);
        std::thread::sleep(self.drain);
        live.stop_rx.store(true, Relaxed);
        self.eal.wait_workers();
        let t = txr.recv().context("TX worker ended without a result")?;
        let r = rxr.recv().context("RX worker ended without a result")?;
        self.seq = t.next_seq;
        self.cursor = t.cursor;
        self.pat = t.pat;
        let raw = Raw {
            offered_pps: pps,
            secs: t.cycles as f64 / hz as f64,
            flows: self.t.flows(),
            frame_size: self.t.mean_wire_size(),
            tx: t.sent,
            tx_refused: t.refused,
            rx_other: r.other,
            rx_bytes: r.bytes,
            seq: r.counts,
        };
        Ok(Trial::from_raw(&raw, &r.hist))
    }

    fn search(&mut self, a: &Args) -> Result<Search> {
        let sat = self.trial(None, a.trial_secs)?;
        let say = |what: &str, t: &Trial| {
            eprintln!(
                "stitch-gen: {what}: offered {:.3} Mpps, received {:.3} Mpps, loss {:.4}%",
                t.tx_mpps,
                t.rx_mpps,
                100.0 * t.loss_ratio
            )
        };
        say("saturation", &sat);
        let mut s = Search {
            loss_threshold: a.loss,
            saturation: sat.clone(),
            ..Default::default()
        };
        if sat.loss_ratio < a.loss {
            s.max_pps = sat.tx_mpps * 1e6;
            s.max = Some(sat.clone());
        } else {
            let (mut lo, mut hi) = (0.0f64, sat.tx_mpps * 1e6);
            // Start just under what got through: usually one or two steps from the answer.
            let mut rate = Some((sat.rx_mpps * 1e6 * 0.98).min(hi / 2.0f64.max(1.0) * 2.0));
            for _ in 0..a.search_steps {
                let Some(r) = rate else { break };
                std::thread::sleep(Duration::from_millis(200));
                let t = self.trial(Some(r), a.trial_secs)?;
                say(&format!("try {:.3} Mpps", r / 1e6), &t);
                if t.loss_ratio < a.loss {
                    lo = r;
                    s.max_pps = t.tx_mpps * 1e6;
                    s.max = Some(t.clone());
                } else {
                    hi = r;
                }
                s.steps.push(t);
                rate = bisect(lo, hi, a.resolution);
            }
        }
        for &f in &a.latency_at {
            if s.max_pps <= 0.0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            let t = self.trial(Some(s.max_pps * f), a.trial_secs)?;
            say(&format!("latency at {:.0}%", f * 100.0), &t);
            s.latency_at.push((f, t));
        }
        Ok(s)
    }
}

fn streams_from_args(a: &Args) -> Vec<Stream> {
    let mut s = Stream::new(a.kind);
    s.size = a.size;
    s.flows = a.flows;
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f { s.$f = v; } )* };
    }
    set!(src_mac, dst_mac, src_ip, dst_ip, src_port, dst_port);
    s.stitches = a.stitches.clone();
    s.mac_c = a.mac_c.clone();
    s.mac_a1 = a.mac_a1.clone();
    vec![s]
}

fn wait_link(port: Port, limit: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(limit);
    loop {
        if port.link().map(|l| l.up).unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("port {} link still down after {limit} s (is the peer running? memif: same socket name, opposite roles)", port.0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() -> Result<()> {
    let all: Vec<String> = std::env::args().collect();
    let (eal_args, app_args) = match all.iter().position(|a| a == "--") {
        Some(i) => (
            all[..i].to_vec(),
            std::iter::once(all[0].clone())
                .chain(all[i + 1..].iter().cloned())
                .collect(),
        ),
        None => (vec![all[0].clone()], all.clone()),
    };
    let a = Args::parse_from(app_args);
    let mut profile = match &a.profile {
        Some(p) => Profile::from_file(p)?,
        None => toml::from_str::<Profile>("").context("default profile")?,
    };
    if a.profile.is_none() || profile.streams.is_empty() {
        profile.streams = streams_from_args(&a);
    }
    if let Some(d) = a.duration {
        profile.duration_secs = d;
    }
    if let Some(b) = a.burst {
        profile.burst = b;
    }
    if let Some(g) = a.line_gbps {
        profile.line_gbps = g;
    }
    if a.pps.is_some() || a.line_rate.is_some() {
        profile.pps = a.pps;
        profile.line_rate = a.line_rate;
    }
    if !(1..=dpdk::MAX_BURST).contains(&profile.burst) {
        bail!("burst must be 1-{}", dpdk::MAX_BURST);
    }
    let t = Templates::build(&profile.streams)?;
    let pps = match (profile.pps, profile.line_rate) {
        (Some(p), _) => Some(p),
        (None, Some(f)) => Some(line_rate_pps(profile.line_gbps, f, t.mean_wire_size())),
        _ => None,
    };
    eprintln!(
        "stitch-gen: {} flows in {} streams, mean frame {:.1} B on the wire, rate {}",
        t.flows(),
        t.streams.len(),
        t.mean_wire_size(),
        pps.map_or("max".to_string(), |p| format!("{:.0} pps", p))
    );

    let eal = Eal::init(&eal_args)?;
    if eal.worker_lcores().is_empty() {
        bail!("stitch-gen needs at least one worker lcore (e.g. -l 0,1 or --lcores 0@0,1@0)");
    }
    let ports = Port::all(&eal);
    let (tx_port, rx_port) = (Port(a.tx_port), Port(a.rx_port));
    for p in [tx_port, rx_port] {
        if !ports.contains(&p) {
            bail!(
                "no port {} (the EAL found {}): give its --vdev",
                p.0,
                ports.len()
            );
        }
    }
    let pool = Arc::new(Mempool::new(
        &eal,
        "stitch_gen",
        a.mbufs,
        256,
        eal.socket_id(),
    )?);
    let used: Vec<Port> = if tx_port == rx_port {
        vec![tx_port]
    } else {
        vec![tx_port, rx_port]
    };
    let cfg = PortConfig {
        rx_queues: 1,
        tx_queues: 1,
        rx_desc: 1024,
        tx_desc: 1024,
        promiscuous: true,
    };
    for &p in &used {
        p.configure(&cfg, &pool)?;
        p.start()?;
    }
    for &p in &used {
        wait_link(p, a.link_timeout)?;
    }
    let nstreams = t.streams.len();
    let mut g = Gen {
        pool,
        t: Arc::new(t),
        tx_port,
        rx_port,
        burst: profile.burst,
        drain: Duration::from_millis(a.drain_ms),
        quiet: a.quiet,
        seq: 0,
        cursor: vec![0; nstreams],
        pat: 0,
        eal,
    };
    if a.warmup > 0.0 {
        let quiet = std::mem::replace(&mut g.quiet, true);
        g.trial(pps.or(Some(1e6)).map(|p| p.min(1e6)), a.warmup)?;
        g.quiet = quiet;
    }
    let json = if a.search {
        serde_json::to_string_pretty(&g.search(&a)?)?
    } else {
        serde_json::to_string_pretty(&g.trial(pps, profile.duration_secs)?)?
    };
    for &p in &used {
        let _ = p.stop();
        let _ = p.close();
    }
    drop(g.pool);
    drop(g.eal);
    match &a.out {
        Some(p) => {
            std::fs::write(p, json + "\n").with_context(|| format!("writing {}", p.display()))?
        }
        None => println!("{json}"),
    }
    Ok(())
}
