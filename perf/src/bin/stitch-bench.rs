//! `stitch-bench`: one command for the whole comparison. Runs back to back, on the same
//! memif ports and the same traffic (TCP segments of installed stitches, from
//! `stitch-gen`): `dpdk-testpmd --forward-mode=io` and `macswap` (references), stitchd L2
//! forwarding (a static MAC entry), stitchd stitch translation at each stitch count, and
//! OVS-DPDK when installed (skipped with a note otherwise). For each: an RFC 2544 search
//! (highest rate with < 0.1% loss) and latency at 10/50/90% of it; then Markdown tables
//! and PNG plots, written into perf/RESULTS.md between markers.
//!
//! Topology: generator port 0 <-> DUT port 0 and DUT port 1 <-> generator port 1, each a
//! `net_memif` pair (DUT = server, generator = client). The DUT forwards 0 -> 1.
//! Pinning for a 2-core machine: the generator (main + one worker doing TX and RX) on
//! CPU 0, the DUT's main lcore on CPU 0 and its one worker on CPU 1.
//!
//! Usage (root, release build): `target/release/stitch-bench [--quick] [--trial-secs S]
//! [--stitches 1000,100000,1000000] [--no-results]`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use perf::plot;
use perf::proc::{cpu_mhz, memif_devargs, require_root, sibling_bin, unique_id, which, Proc};
use perf::report::{Search, Trial};
use perf::stitches::install_list_json;

#[derive(Debug, Parser)]
#[command(
    name = "stitch-bench",
    about = "testpmd, stitchd L2 and stitch translation over memif, RFC 2544; tables and plots to perf/RESULTS.md"
)]
struct Args {
    /// Seconds per trial.
    #[arg(long, default_value_t = 2.0)]
    trial_secs: f64,
    /// Short run: 1 s trials, 4 search steps, stitch counts 1000,100000.
    #[arg(long)]
    quick: bool,
    /// Installed stitch counts (= flows of the traffic) for the translation runs.
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    stitches: Vec<u32>,
    /// Flows for the reference and L2 runs.
    #[arg(long, default_value_t = 1000)]
    flows: u32,
    /// Frame size on the wire (stitched TCP segments with timestamps need at least 90).
    #[arg(long, default_value_t = 90)]
    size: usize,
    /// Most search steps per forwarder.
    #[arg(long, default_value_t = 7)]
    search_steps: u32,
    /// CPU of the generator and of the DUT's main lcore.
    #[arg(long, default_value_t = 0)]
    gen_cpu: u32,
    /// CPU of the DUT's worker.
    #[arg(long, default_value_t = 1)]
    dut_cpu: u32,
    /// Where the plots and raw JSON go (relative to the repository).
    #[arg(long, default_value = "perf/results")]
    out_dir: PathBuf,
    /// Do not touch perf/RESULTS.md (print the section instead).
    #[arg(long)]
    no_results: bool,
}

const MAC_C: &str = "02:00:00:00:0c:01";
const MAC_A1: &str = "02:00:00:00:0a:01";
const MAC_B: &str = "02:00:00:00:0b:01";

struct Run {
    name: String,
    stitches: Option<u32>,
    flows: u32,
    search: Search,
}

struct Bench {
    a: Args,
    id: String,
    dir: PathBuf,
    gen: PathBuf,
    stitchd: PathBuf,
    lists: std::collections::HashMap<u32, PathBuf>,
}

impl Bench {
    /// The stitch.list JSON of `n` installed stitches (as bench-fastpath.sh installs them).
    fn list(&mut self, n: u32) -> Result<PathBuf> {
        if let Some(p) = self.lists.get(&n) {
            return Ok(p.clone());
        }
        let a = |s: &str| s.parse().expect("literal");
        let p = self.dir.join(format!("stitches-{n}.json"));
        std::fs::write(
            &p,
            install_list_json(
                a("198.18.0.1:10000"),
                a("198.18.0.2:7000"),
                a("198.18.0.2:10000"),
                a("198.18.0.3:8000"),
                n,
            ),
        )?;
        self.lists.insert(n, p.clone());
        Ok(p)
    }

    fn gen(&mut self, tag: &str, flows: u32) -> Result<Search> {
        let list = self.list(flows)?;
        let prefix = format!("sbg{}{tag}", self.id);
        let out = self.dir.join(format!("{tag}.json"));
        let mut args: Vec<String> = vec![
            "--lcores".into(),
            format!("0@{c},1@{c}", c = self.a.gen_cpu),
            "--no-huge".into(),
            "-m".into(),
            "1024".into(),
            "--no-pci".into(),
            format!("--file-prefix={prefix}"),
            format!("--vdev={}", memif_devargs(0, &self.id, 0, false)),
            format!("--vdev={}", memif_devargs(1, &self.id, 1, false)),
            "--".into(),
            "--kind".into(),
            "stitched".into(),
            "--stitches".into(),
            list.display().to_string(),
            "--mac-c".into(),
            MAC_C.into(),
            "--mac-a1".into(),
            MAC_A1.into(),
            "--size".into(),
            self.a.size.to_string(),
            "--search".into(),
            "--trial-secs".into(),
            self.a.trial_secs.to_string(),
            "--search-steps".into(),
            self.a.search_steps.to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        args.push("--warmup".into());
        args.push("1".into());
        let log = self.dir.join(format!("{tag}-gen.log"));
        let mut g = Proc::spawn(&self.gen, &args, &log, &prefix)?;
        let st = g
            .wait(Duration::from_secs(900))
            .context("stitch-gen did not finish in 15 min")?;
        if !st.success() {
            bail!("stitch-gen failed ({st}):\n{}", g.log_text());
        }
        let s: Search =
            serde_json::from_str(&std::fs::read_to_string(&out)?).context("stitch-gen output")?;
        Ok(s)
    }

    fn memif_server(&self, i: u32) -> String {
        memif_devargs(i, &self.id, i, true)
    }

    fn testpmd(&mut self, mode: &str) -> Result<Search> {
        let prefix = format!("sbt{}{mode}", self.id);
        let args: Vec<String> = vec![
            "--lcores".into(),
            format!("0@{},1@{}", self.a.gen_cpu, self.a.dut_cpu),
            "--no-huge".into(),
            "-m".into(),
            "1024".into(),
            "--no-pci".into(),
            format!("--file-prefix={prefix}"),
            format!("--vdev={}", self.memif_server(0)),
            format!("--vdev={}", self.memif_server(1)),
            "--".into(),
            format!("--forward-mode={mode}"),
            "--nb-cores=1".into(),
            "--total-num-mbufs=16384".into(),
            "--stats-period=10".into(),
        ];
        let log = self.dir.join(format!("testpmd-{mode}.log"));
        let mut p = Proc::spawn(Path::new("dpdk-testpmd"), &args, &log, &prefix)?;
        wait_for(&mut p, 30, |p| {
            p.log_text().contains("packet forwarding - ports=")
        })?;
        let s = self.gen(&format!("testpmd-{mode}"), self.a.flows);
        p.stop_with(nix::sys::signal::Signal::SIGINT, Duration::from_secs(10));
        s
    }

    fn stitchd(&mut self, tag: &str, stitches: Option<u32>, flows: u32) -> Result<Search> {
        let prefix = format!("sbs{}{tag}", self.id);
        let sock = self.dir.join(format!("{tag}.sock"));
        let mut cfg = format!(
            "[eal]\nfile_prefix = \"{prefix}\"\nlcores = \"{g},{d}\"\nhugepages = \"off\"\nmemory_mb = 2048\n\
             [mempool]\nmbufs = 32767\n\
             [[ports]]\ndevargs = \"{p0}\"\n[[ports]]\ndevargs = \"{p1}\"\n\
             [control]\nsocket = \"{s}\"\n",
            g = self.a.gen_cpu,
            d = self.a.dut_cpu,
            p0 = self.memif_server(0),
            p1 = self.memif_server(1),
            s = sock.display()
        );
        match stitches {
            None => write!(cfg, "[l2]\nstatic_macs = [{{ mac = \"{MAC_A1}\", port = 1 }}]\n")?,
            Some(n) => write!(
                cfg,
                "[stitch]\nflow_table_size = {}\n[[stitch.install]]\n\
                 leg_a = {{ client = \"198.18.0.1:10000\", shell = \"198.18.0.2:7000\" }}\n\
                 leg_b = {{ shell = \"198.18.0.2:10000\", core = \"198.18.0.3:8000\" }}\n\
                 macs = {{ c = \"{MAC_C}\", a1 = \"{MAC_A1}\", a2 = \"{MAC_A1}\", b = \"{MAC_B}\" }}\n\
                 ports = {{ c = 0, b = 1 }}\ns1 = 1000\nr1 = 1000\ns2 = 5000\nr2 = 2000\n\
                 ts = {{ c_to_b = 7, b_to_c = 9 }}\ncount = {n}\n",
                u64::from(n) * 4 + 64
            )?,
        }
        let conf = self.dir.join(format!("{tag}.toml"));
        std::fs::write(&conf, cfg)?;
        let log = self.dir.join(format!("{tag}-stitchd.log"));
        let mut p = Proc::spawn(
            &self.stitchd,
            &["--config".into(), conf.display().to_string()],
            &log,
            &prefix,
        )?;
        wait_for(&mut p, 300, |_| sock.exists())?;
        let s = self.gen(tag, flows);
        p.stop();
        s
    }
}

fn wait_for(p: &mut Proc, secs: u64, mut f: impl FnMut(&Proc) -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f(p) {
            return Ok(());
        }
        if let Some(st) = p.exited() {
            bail!(
                "{} exited ({st}) before it was ready:\n{}",
                p.name,
                p.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{} not ready after {secs} s:\n{}", p.name, p.log_text())
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn lat(t: Option<&Trial>) -> String {
    t.map_or("-".into(), |t| {
        format!(
            "{:.1} / {:.1} / {:.1}",
            t.latency_ns.p50 as f64 / 1e3,
            t.latency_ns.p99 as f64 / 1e3,
            t.latency_ns.p999 as f64 / 1e3
        )
    })
}

fn tables(runs: &[Run], mhz: f64) -> String {
    let io = runs
        .iter()
        .find(|r| r.name == "dpdk-testpmd io")
        .map(|r| r.search.max_pps)
        .unwrap_or(0.0);
    // When a forwarder outruns testpmd io, the generator (not testpmd) was the limit:
    // ratios to testpmd io would mislead, so they are withheld and the table says why.
    let generator_limited = runs
        .iter()
        .any(|r| r.name != "dpdk-testpmd io" && r.search.max_pps > io * 1.05);
    let mut s = String::new();
    if generator_limited {
        s.push_str("**Limit: the generator.** A forwarder outran testpmd io, so these rates say how fast `stitch-gen` drove each one, not how they compare: ratios withheld (use `perf/bench-fastpath.sh` for the per-packet comparison).\n\n");
    }
    s.push_str("| forwarder | stitches | flows | Mpps (< 0.1% loss) | Gbit/s | wall-clock cycles/packet | ratio to testpmd io | saturation Mpps | frame B |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        let m = &r.search;
        let gbps = m.max.as_ref().map_or(0.0, |t| t.rx_gbps);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.2} | {} | {} | {:.3} | {:.0} |",
            r.name,
            r.stitches.map_or("-".into(), |n| n.to_string()),
            r.flows,
            m.max_pps / 1e6,
            gbps,
            if m.max_pps > 0.0 {
                format!("{:.0}", mhz * 1e6 / m.max_pps)
            } else {
                "-".into()
            },
            if io > 0.0 && !generator_limited {
                format!("{:.2}", m.max_pps / io)
            } else {
                "-".into()
            },
            m.saturation.rx_mpps,
            m.saturation.frame_size
        );
    }
    s.push_str("\nLatency p50 / p99 / p99.9 in µs at fractions of each forwarder's own maximum rate:\n\n| forwarder | stitches | 10% | 50% | 90% |\n|---|---|---|---|---|\n");
    for r in runs {
        let at = |f: f64| {
            r.search
                .latency_at
                .iter()
                .find(|(x, _)| (x - f).abs() < 1e-6)
                .map(|(_, t)| t)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.name,
            r.stitches.map_or("-".into(), |n| n.to_string()),
            lat(at(0.1)),
            lat(at(0.5)),
            lat(at(0.9))
        );
    }
    s
}

fn main() -> Result<()> {
    let mut a = Args::parse();
    require_root("stitch-bench")?;
    if a.quick {
        a.trial_secs = a.trial_secs.min(1.0);
        a.search_steps = a.search_steps.min(4);
        a.stitches.retain(|&n| n <= 100_000);
    }
    if which("dpdk-testpmd").is_none() {
        bail!("dpdk-testpmd missing: apt-get install dpdk-dev");
    }
    let root = PathBuf::from(sh("git", &["rev-parse", "--show-toplevel"]));
    let root = if root.as_os_str().is_empty() {
        std::env::current_dir()?
    } else {
        root
    };
    let id = unique_id();
    let dir = std::env::temp_dir().join(format!("stitch-bench-{id}"));
    std::fs::create_dir_all(&dir)?;
    let mut b = Bench {
        id,
        dir: dir.clone(),
        gen: sibling_bin("stitch-gen")?,
        stitchd: sibling_bin("stitchd")?,
        lists: Default::default(),
        a,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runs = Vec::new();
    let flows = b.a.flows;
    for mode in ["io", "macswap"] {
        eprintln!("stitch-bench: dpdk-testpmd {mode}");
        runs.push(Run {
            name: format!("dpdk-testpmd {mode}"),
            stitches: None,
            flows,
            search: b.testpmd(mode)?,
        });
    }
    eprintln!("stitch-bench: stitchd L2");
    runs.push(Run {
        name: "stitchd L2".into(),
        stitches: None,
        flows,
        search: b.stitchd("l2", None, flows)?,
    });
    for n in b.a.stitches.clone() {
        eprintln!("stitch-bench: stitchd stitch translation, {n} stitches");
        runs.push(Run {
            name: "stitchd stitch translation".into(),
            stitches: Some(n),
            flows: n,
            search: b.stitchd(&format!("st{n}"), Some(n), n)?,
        });
    }
    let mut notes = Vec::new();
    if which("ovs-vswitchd").is_none()
        && !Path::new("/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk").exists()
    {
        let n = "OVS-DPDK not installed (Debian openvswitch-switch-dpdk): skipped".to_string();
        eprintln!("stitch-bench: {n}");
        notes.push(n);
    } else {
        let n = "OVS-DPDK is installed, but its run is not automated yet: skipped".to_string();
        eprintln!("stitch-bench: {n}");
        notes.push(n);
    }
    if cpus > 2 {
        notes.push(format!("{cpus} CPUs: worker scaling (2+ stitchd workers) needs a multi-queue generator, not done yet; 1 worker measured"));
    } else {
        notes.push(format!("{cpus} CPUs: one for the generator, one for the DUT worker, so worker scaling stops at 1"));
    }

    // Plots and raw data.
    let out_dir = root.join(&b.a.out_dir);
    std::fs::create_dir_all(&out_dir)?;
    let mut raw = serde_json::Map::new();
    for r in &runs {
        raw.insert(
            format!(
                "{}{}",
                r.name,
                r.stitches.map_or(String::new(), |n| format!(" {n}"))
            ),
            serde_json::to_value(&r.search)?,
        );
    }
    std::fs::write(
        out_dir.join("stitch-bench.json"),
        serde_json::to_string_pretty(&raw)?,
    )?;
    let io = runs[0].search.max_pps / 1e6;
    let st: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|r| r.stitches.map(|n| (f64::from(n), r.search.max_pps / 1e6)))
        .collect();
    let xs: Vec<f64> = st.iter().map(|p| p.0).collect();
    let tput = vec![
        ("stitchd stitch translation".to_string(), st),
        (
            "dpdk-testpmd io (1k flows)".to_string(),
            xs.iter().map(|&x| (x, io)).collect(),
        ),
    ];
    let cdf: Vec<plot::Series> = runs
        .iter()
        .filter_map(|r| {
            let t = r
                .search
                .latency_at
                .iter()
                .find(|(f, _)| (f - 0.5).abs() < 1e-6)?;
            let name = format!(
                "{}{}",
                r.name,
                r.stitches.map_or(String::new(), |n| format!(" ({n})"))
            );
            Some((
                name,
                t.1.cdf
                    .iter()
                    .map(|&(p, ns)| (ns as f64 / 1e3, p))
                    .collect(),
            ))
        })
        .collect();
    let mut plots = String::new();
    match plot::throughput_vs_flows(
        &out_dir.join("throughput-vs-flows.png"),
        "Throughput vs installed stitches (1 worker, memif)",
        &tput,
    )
    .and_then(|_| {
        plot::latency_cdf(
            &out_dir.join("latency-cdf.png"),
            "Latency CDF at 50% of each forwarder's max rate",
            &cdf,
        )
    }) {
        Ok(()) => {
            let rel =
                b.a.out_dir
                    .strip_prefix("perf")
                    .unwrap_or(&b.a.out_dir)
                    .display()
                    .to_string();
            let _ = write!(plots, "![throughput vs flows]({rel}/throughput-vs-flows.png)\n![latency CDF]({rel}/latency-cdf.png)\n");
        }
        Err(e) => {
            eprintln!("stitch-bench: no plots: {e:#}");
            notes.push(format!("no plots: {e:#}"));
        }
    }

    let mhz = cpu_mhz();
    let cmd: Vec<String> = std::env::args().collect();
    let cmd = format!("{} {}", "target/release/stitch-bench", cmd[1..].join(" "))
        .trim()
        .to_string();
    let commit = sh(
        "git",
        &[
            "-C",
            &root.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = if sh(
        "git",
        &["-C", &root.display().to_string(), "status", "--porcelain"],
    )
    .is_empty()
    {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mut sec = String::new();
    let _ = write!(
        sec,
        "<!-- stitch-bench:begin -->\n## Generator over memif: testpmd, stitchd L2, stitch translation (stitch-bench)\n\n\
         - Date: {date}, commit {commit}{dirty}, machine: {cpus} CPU ({model}, {mhz:.0} MHz), no hugepages.\n\
         - Command: `{cmd}` (as root, after `cargo build --release -p perf -p switch-app`)\n\
         - Traffic: `stitch-gen`, TCP segments C -> A1 of the installed stitches ({size}-byte frames on the wire with \
           timestamps), over two `net_memif` pairs; the DUT forwards port 0 -> 1 (testpmd: io / macswap; stitchd L2: a static \
           entry for A1's MAC; stitch translation: `[[stitch.install]]` with `count`). Generator on CPU {g} (main + one \
           TX/RX worker), DUT main lcore on CPU {g}, DUT worker on CPU {d}.\n\
         - Method: RFC 2544 style: an unthrottled trial (saturation), then a binary search for the highest offered rate \
           with < 0.1% loss ({steps} steps at most, {secs} s trials), then latency at 10/50/90% of that rate. \
           Cycles/packet = CPU MHz / rate (one busy worker). The generator shares the machine: when testpmd io is no faster than the \
           others, the generator is the limit and the ratios are lower bounds.\n\n{t}\n{plots}\n{n}\n<!-- stitch-bench:end -->\n",
        date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        size = b.a.size,
        g = b.a.gen_cpu,
        d = b.a.dut_cpu,
        steps = b.a.search_steps,
        secs = b.a.trial_secs,
        t = tables(&runs, mhz),
        n = notes.iter().map(|n| format!("- {n}")).collect::<Vec<_>>().join("\n"),
    );
    if b.a.no_results {
        println!("{sec}");
    } else {
        let path = root.join("perf/RESULTS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmark results\n".into());
        let new = match (
            old.find("<!-- stitch-bench:begin -->"),
            old.find("<!-- stitch-bench:end -->"),
        ) {
            (Some(s), Some(e)) if e > s => {
                let e = e + "<!-- stitch-bench:end -->".len();
                let e = if old[e..].starts_with('\n') { e + 1 } else { e };
                format!("{}{sec}{}", &old[..s], &old[e..])
            }
            _ => format!("{}\n{sec}", old.trim_end_matches('\n').to_string() + "\n"),
        };
        std::fs::write(&path, new)?;
        println!("{}", tables(&runs, mhz));
        eprintln!("stitch-bench: section written to {}", path.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
