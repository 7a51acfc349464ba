//! `stitch-bench-shell`: seed 001's claim measured with real kernels. Client C, shell A
//! (stitch-shell) and core B in namespaces on net_tap ports of stitchd; for one long
//! transfer and for 32 parallel ones: throughput and the shell's CPU seconds per GB
//! (a) relayed by the shell and (b) after bypass, plus plain L2 switching (C to B
//! directly) as the reference; and RTT p50/p99 of 64-byte request/response in each mode.
//! Prints a Markdown table (perf/RESULTS.md). Needs root and built binaries
//! (`cargo build --release --bins`); run from the workspace root:
//! `target/release/stitch-bench-shell [MiB_PER_STREAM=512]`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pmd_tests::shell::ShellProc;
use pmd_tests::{pattern, require_root, unique_id, Netns, Stitchd};

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    Relayed,
    Bypassed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "plain L2 (C to B, no shell)",
            Mode::Relayed => "relayed by the shell",
            Mode::Bypassed => "bypassed (stitched)",
        }
    }
}

/// Sends `bytes` on each of `streams` connections to `to` (from namespace `c`); returns
/// the elapsed time once the core has read everything.
fn transfer(c: &Netns, b: &Netns, to: &'static str, streams: usize, bytes: usize) -> Duration {
    let port: u16 = 9000;
    let srv = b.run(move || {
        let l = TcpListener::bind(("198.18.0.3", port)).unwrap();
        let mut hs = Vec::new();
        for _ in 0..streams {
            let (mut s, _) = l.accept().unwrap();
            hs.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0usize;
                loop {
                    let k = s.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                n
            }));
        }
        hs.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
    });
    std::thread::sleep(Duration::from_millis(200));
    let data = std::sync::Arc::new(pattern(bytes.min(64 << 20), 1));
    let t0 = Instant::now();
    let cs: Vec<_> = (0..streams)
        .map(|_| {
            let data = data.clone();
            c.run(move || {
                let mut s = TcpStream::connect(to).unwrap();
                let mut left = bytes;
                while left > 0 {
                    let k = left.min(data.len());
                    s.write_all(&data[..k]).unwrap();
                    left -= k;
                }
                s.shutdown(Shutdown::Write).unwrap();
                let mut z = [0u8; 1];
                let _ = s.read(&mut z);
            })
        })
        .collect();
    for h in cs {
        h.join().unwrap();
    }
    let got = srv.join().unwrap();
    let dt = t0.elapsed();
    assert_eq!(got, streams * bytes, "bytes lost");
    dt
}

/// 64-byte request/response round trips on one connection; (p50, p99) in microseconds.
fn rtt(
    c: &Netns,
    b: &Netns,
    to: &'static str,
    rounds: usize,
    settle: impl FnOnce() + Send + 'static,
) -> (f64, f64) {
    let srv = b.run(move || {
        let l = TcpListener::bind(("198.18.0.3", 9000)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut v = c
        .run(move || {
            let mut s = TcpStream::connect(to).unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = [7u8; 64];
            // Warm up (and give a bypass policy time to act), then measure.
            for _ in 0..200 {
                s.write_all(&buf).unwrap();
                s.read_exact(&mut buf).unwrap();
            }
            settle();
            let mut v = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let t = Instant::now();
                s.write_all(&buf).unwrap();
                s.read_exact(&mut buf).unwrap();
                v.push(t.elapsed().as_secs_f64() * 1e6);
            }
            v
        })
        .join()
        .unwrap();
    srv.join().unwrap();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn main() {
    require_root();
    let mib: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("MiB"))
        .unwrap_or(512);
    let id = unique_id();
    let dir = Stitchd::make_dir(&id);
    let taps: Vec<String> = ["c", "a", "b"]
        .iter()
        .map(|n| format!("t{id}{n}"))
        .collect();
    let cfg = dir.join("s.toml");
    let mut text = String::from("[eal]\nlcores = \"0,1\"\n");
    for (i, t) in taps.iter().enumerate() {
        text.push_str(&format!("[[ports]]\ndevargs = \"net_tap{i},iface={t}\"\n"));
    }
    text.push_str(&format!(
        "[agent]\nipv4 = \"198.18.0.254\"\nkeys = [{{ id = 7, key = \"{KEY}\" }}]\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    let sd = Stitchd::start(
        &id,
        dir.clone(),
        &[],
        &["--config".into(), cfg.display().to_string()],
    );
    let c = Netns::new(&format!("st{id}c"));
    let a = Netns::new(&format!("st{id}a"));
    let b = Netns::new(&format!("st{id}b"));
    c.attach(&taps[0], None, "198.18.0.1/24");
    a.attach(&taps[1], None, "198.18.0.2/24");
    b.attach(&taps[2], None, "198.18.0.3/24");

    let shell_cfg = |policy: &str| {
        format!(
            "[switch]\naddress = \"198.18.0.254:4790\"\nkey_id = 7\nkey = \"{KEY}\"\nagent_listen = \"198.18.0.2:4791\"\n\
             [[mapping]]\nlisten = \"198.18.0.2:7000\"\ncore = \"198.18.0.3:9000\"\nbypass = {{ policy = \"{policy}\" }}\nlinger_secs = 1\n"
        )
    };
    println!("| mode | streams | MiB each | Gbit/s | ratio to plain L2 | shell CPU s per GB | RTT p50 us | RTT p99 us |");
    println!("|---|---|---|---|---|---|---|---|");
    for streams in [1usize, 32] {
        let bytes = if streams == 1 {
            mib << 20
        } else {
            (mib << 20) / 32
        };
        let mut base = 0.0;
        let mut relayed_cpu_per_gb = 0.0;
        for mode in [Mode::Direct, Mode::Relayed, Mode::Bypassed] {
            let shell = match mode {
                Mode::Direct => None,
                Mode::Relayed => Some(ShellProc::start(&a, &dir, &shell_cfg("never"))),
                Mode::Bypassed => Some(ShellProc::start(&a, &dir, &shell_cfg("immediate"))),
            };
            let to = if mode == Mode::Direct {
                "198.18.0.3:9000"
            } else {
                "198.18.0.2:7000"
            };
            let cpu0 = shell.as_ref().map_or(0.0, |s| s.status().cpu_seconds);
            let dt = transfer(&c, &b, to, streams, bytes);
            let cpu = shell.as_ref().map_or(0.0, |s| s.status().cpu_seconds) - cpu0;
            let total = (streams * bytes) as f64;
            let gbps = total * 8.0 / dt.as_secs_f64() / 1e9;
            if mode == Mode::Direct {
                base = gbps;
            }
            let cpu_per_gb = cpu / (total / 1e9);
            if mode == Mode::Relayed {
                relayed_cpu_per_gb = cpu_per_gb;
            }
            // Wait for the stitches of this run to go (linger), so the next run starts clean.
            std::thread::sleep(Duration::from_millis(1500));
            let (p50, p99) = if streams == 1 {
                let shell_status = shell.as_ref().map(|s| s.status_socket.clone());
                rtt(&c, &b, to, 2000, move || {
                    if let Some(p) = shell_status {
                        // Bypassed: measure only once the connection is stitched.
                        for _ in 0..100 {
                            let t = stitch_shell::status::fetch(&p).unwrap_or_default();
                            let stitched = serde_json::from_str::<stitch_shell::ShellStatus>(&t)
                                .map(|s| s.mappings.iter().any(|m| m.active_stitched > 0))
                                .unwrap_or(false);
                            if stitched {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            } else {
                (f64::NAN, f64::NAN)
            };
            let cpu_col = match mode {
                Mode::Direct => "-".to_string(),
                Mode::Relayed => format!("{cpu_per_gb:.3}"),
                Mode::Bypassed => format!(
                    "{cpu_per_gb:.4} ({:.1}% of relayed)",
                    100.0 * cpu_per_gb / relayed_cpu_per_gb.max(1e-9)
                ),
            };
            let rtt_cols = if p50.is_nan() {
                "- | -".to_string()
            } else {
                format!("{p50:.1} | {p99:.1}")
            };
            println!(
                "| {} | {streams} | {} | {gbps:.2} | {:.2} | {cpu_col} | {rtt_cols} |",
                mode.name(),
                bytes >> 20,
                gbps / base.max(1e-9)
            );
            if let Some(s) = shell {
                let st = s.status();
                if mode == Mode::Bypassed && st.mappings[0].bypassed == 0 {
                    eprintln!("warning: nothing was bypassed: {st:?}");
                }
                s.shutdown();
                std::thread::sleep(Duration::from_millis(1500));
            }
        }
    }
    drop(sd);
}
