//! The state file: what the switch should be (static MACs, port policies, committed
//! stitches with their translation constants), so that a restart or an upgrade loses
//! nothing, a live stitched transfer included.
//!
//! Written on every change (a commit or install before its answer goes out, so a shell
//! never silences its sockets for a stitch the file does not hold; removals and L2
//! changes at the end of the slow path's round): write a temporary file, fsync, keep the
//! previous version as `FILE.prev` (a hard link), rename over `FILE`, fsync the directory.
//! A crash at any point leaves `FILE` either the old or the new complete version.
//!
//! What is not here: learned MACs (relearned from traffic in a second), stitches being
//! watched or frozen (the shell aborts and keeps relaying), counters, and the agent keys
//! (they stay in the TOML, which the state refers to by being read with it).
//!
//! The L2 part keeps two sets: `base`, the L2 settings of the TOML the state was last
//! derived from, and `current`, what the switch holds (TOML plus control-socket changes).
//! A restart with an edited TOML, or `config.reload`, applies the TOML's differences from
//! `base` on top of `current`, so a change made on the control socket survives both and a
//! line removed from the TOML is removed from the switch.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stitch_control::protocol::StitchPrepareParams;
use switch_core::stitch::Translation;
use switch_core::MacAddr;

use crate::config::Config;

/// Format version written; a file of another version is refused.
pub const VERSION: u32 = 1;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// When it was written, seconds since the Unix epoch (for the operator).
    pub written_at: u64,
    /// Static MACs and port policies.
    pub l2: L2State,
    /// Committed stitches.
    pub stitches: Vec<SavedStitch>,
    /// Load-balanced services (absent in files written before the balancer: none).
    #[serde(default)]
    pub lb: LbState,
}

/// The balancer part: services by name, with the same `base`/`current` scheme as L2.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbState {
    /// The `[[lb.services]]` of the TOML last applied.
    pub base: Vec<stitch_control::lb::LbService>,
    /// What the switch holds.
    pub current: Vec<stitch_control::lb::LbService>,
}

impl LbState {
    /// `current` with the TOML's changes from `old` to `new` applied, by service name:
    /// a service the TOML dropped is dropped (if unchanged since), one it added or
    /// changed is set; services added on the control socket stay.
    pub fn rebase(
        current: &[stitch_control::lb::LbService],
        old: &[stitch_control::lb::LbService],
        new: &[stitch_control::lb::LbService],
    ) -> Vec<stitch_control::lb::LbService> {
        let mut out: Vec<stitch_control::lb::LbService> = current.to_vec();
        for o in old {
            if !new.iter().any(|n| n.name == o.name) {
                out.retain(|c| c != o);
            }
        }
        for n in new {
            if old.iter().find(|o| o.name == n.name) != Some(n) {
                match out.iter_mut().find(|c| c.name == n.name) {
                    Some(c) => *c = n.clone(),
                    None => out.push(n.clone()),
                }
            }
        }
        out
    }
}

/// The L2 part: see the module documentation for `base` and `current`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2State {
    /// The L2 settings of the TOML last applied.
    pub base: L2Desired,
    /// What the switch holds.
    pub current: L2Desired,
}

/// Static MACs and per-port policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2Desired {
    /// Static MAC -> port.
    pub static_macs: BTreeMap<MacAddr, u16>,
    /// Port id -> policy.
    pub ports: BTreeMap<u16, PortPolicy>,
}

/// A port's source-MAC policy (`port.security.set`, `[[ports]] allowed_macs/learning`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortPolicy {
    /// `None`: any source MAC.
    pub allowed_macs: Option<Vec<MacAddr>>,
    /// Whether sources are learned.
    pub learning: bool,
}

/// A committed stitch as the workers run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedStitch {
    /// Its id (kept: the shell's heartbeats name it).
    pub id: u32,
    /// Legs, protocol, teardown variant, timeouts.
    pub params: StitchPrepareParams,
    /// C->B and B->C translations.
    pub live: [Translation; 2],
    /// Ports out of which C->B and B->C go (B's port, C's port).
    pub out_ports: [u16; 2],
    /// FIN seen from C / from B (a half-closed stitch stays half-closed).
    #[serde(default)]
    pub fin_from_c: bool,
    #[serde(default)]
    pub fin_from_b: bool,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid state file: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path} has format version {found}; this stitchd reads version {VERSION}")]
    Version { path: PathBuf, found: u64 },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl L2Desired {
    /// The L2 settings a configuration asks for (ports by position, which is their id).
    pub fn from_config(cfg: &Config) -> L2Desired {
        L2Desired {
            static_macs: cfg.l2.static_macs.iter().map(|s| (s.mac, s.port)).collect(),
            ports: cfg
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        i as u16,
                        PortPolicy {
                            allowed_macs: p.allowed_macs.clone(),
                            learning: p.learning,
                        },
                    )
                })
                .collect(),
        }
    }

    /// `self` with the differences from `old` to `new` applied: entries `new` dropped
    /// are dropped (if still as `old` had them), entries it added or changed are set;
    /// everything else in `self` (control-socket changes) stays.
    pub fn rebase(&self, old: &L2Desired, new: &L2Desired) -> L2Desired {
        let mut out = self.clone();
        for (mac, port) in &old.static_macs {
            if !new.static_macs.contains_key(mac) && out.static_macs.get(mac) == Some(port) {
                out.static_macs.remove(mac);
            }
        }
        for (mac, port) in &new.static_macs {
            if old.static_macs.get(mac) != Some(port) {
                out.static_macs.insert(*mac, *port);
            }
        }
        for (port, policy) in &new.ports {
            if old.ports.get(port) != Some(policy) {
                out.ports.insert(*port, policy.clone());
            }
        }
        out
    }
}

/// Reads the state file; `Ok(None)` if there is none.
///
/// # Errors
/// A file that cannot be read, does not parse, or has another version.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.into(),
                source,
            })
        }
    };
    let corrupt = |message: String| StateError::Corrupt {
        path: path.into(),
        message,
    };
    // The version first, so a newer format says so instead of "unknown field".
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let found = v
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| corrupt("no \"version\" number".into()))?;
    if found != u64::from(VERSION) {
        return Err(StateError::Version {
            path: path.into(),
            found,
        });
    }
    let st: State = serde_json::from_value(v).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(st))
}

/// Writes `st` to `path` atomically (see the module documentation).
///
/// # Errors
/// Any failed file operation; `path` is then unchanged.
pub fn save(path: &Path, st: &State) -> Result<(), StateError> {
    let werr = |source| StateError::Write {
        path: path.into(),
        source,
    };
    let tmp = with_suffix(path, ".tmp");
    let body = serde_json::to_vec_pretty(st).map_err(|e| werr(std::io::Error::other(e)))?;
    {
        let mut f = File::create(&tmp).map_err(werr)?;
        f.write_all(&body).map_err(werr)?;
        f.write_all(b"\n").map_err(werr)?;
        f.sync_all().map_err(werr)?;
    }
    if path.exists() {
        let prev = with_suffix(path, ".prev");
        let _ = fs::remove_file(&prev);
        fs::hard_link(path, &prev).map_err(werr)?;
    }
    fs::rename(&tmp, path).map_err(werr)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(werr)?;
    }
    Ok(())
}

/// Moves an unreadable state file aside (`FILE.bad-SECS`); returns where it went.
///
/// # Errors
/// The rename failed.
pub fn move_aside(path: &Path, now_secs: u64) -> Result<PathBuf, StateError> {
    let to = with_suffix(path, &format!(".bad-{now_secs}"));
    fs::rename(path, &to).map_err(|source| StateError::Write {
        path: path.into(),
        source,
    })?;
    Ok(to)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Seconds since the Unix epoch (wall clock: only written into the file for people).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where the state is kept and how writing it went, owned by the stitcher (which must
/// save before answering a commit).
#[derive(Debug)]
pub struct StateFile {
    pub path: PathBuf,
    pub l2: L2State,
    pub lb: LbState,
    /// Files written.
    pub writes: u64,
    /// Writes that failed (the file then holds the previous version).
    pub failures: u64,
    /// The last failure, for `stats.get`.
    pub last_error: Option<String>,
}

impl StateFile {
    /// Writes the file with these stitches; a failure is counted and returned.
    pub fn write(&mut self, stitches: Vec<SavedStitch>) -> Result<(), String> {
        let st = State {
            version: VERSION,
            written_at: unix_now(),
            l2: self.l2.clone(),
            stitches,
            lb: self.lb.clone(),
        };
        match save(&self.path, &st) {
            Ok(()) => {
                self.writes += 1;
                Ok(())
            }
            Err(e) => {
                self.failures += 1;
                let m = e.to_string();
                self.last_error = Some(m.clone());
                Err(m)
            }
        }
    }

    /// Counters for `stats.get`.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.path.display().to_string(),
            "writes": self.writes,
            "failures": self.failures,
            "last_error": self.last_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn desired(statics: &[(&str, u16)], ports: &[(u16, bool)]) -> L2Desired {
        L2Desired {
            static_macs: statics.iter().map(|(m, p)| (mac(m), *p)).collect(),
            ports: ports
                .iter()
                .map(|(p, l)| {
                    (
                        *p,
                        PortPolicy {
                            allowed_macs: None,
                            learning: *l,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn rebase_applies_only_what_the_toml_changed() {
        let old = desired(
            &[("02:00:00:00:00:01", 0), ("02:00:00:00:00:02", 1)],
            &[(0, true), (1, true)],
        );
        // The operator added :03 and turned learning off on port 1 at run time.
        let current = desired(
            &[
                ("02:00:00:00:00:01", 0),
                ("02:00:00:00:00:02", 1),
                ("02:00:00:00:00:03", 1),
            ],
            &[(0, true), (1, false)],
        );
        // The TOML drops :01, moves :02 to port 0, turns learning off on port 0.
        let new = desired(&[("02:00:00:00:00:02", 0)], &[(0, false), (1, true)]);
        let got = current.rebase(&old, &new);
        assert_eq!(
            got,
            desired(
                &[("02:00:00:00:00:02", 0), ("02:00:00:00:00:03", 1)],
                &[(0, false), (1, false)],
            )
        );
        // Unchanged TOML: nothing moves.
        assert_eq!(current.rebase(&old, &old), current);
    }

    #[test]
    fn save_then_load_round_trips_and_keeps_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(load(&path).unwrap().is_none());
        let mut st = State {
            version: VERSION,
            written_at: 1,
            l2: L2State::default(),
            stitches: vec![],
            lb: LbState::default(),
        };
        save(&path, &st).unwrap();
        st.l2.current = desired(&[("02:00:00:00:00:09", 3)], &[]);
        save(&path, &st).unwrap();
        assert_eq!(load(&path).unwrap(), Some(st));
        let prev = load(&with_suffix(&path, ".prev")).unwrap().unwrap();
        assert!(prev.l2.current.static_macs.is_empty());
        assert!(!with_suffix(&path, ".tmp").exists());
    }

    #[test]
    fn truncated_unknown_and_newer_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let st = State {
            version: VERSION,
            written_at: 1,
            l2: L2State::default(),
            stitches: vec![],
            lb: LbState::default(),
        };
        save(&path, &st).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, &text[..text.len() / 2]).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("not a valid state file"), "{e}");
        fs::write(&path, r#"{"version": 1, "bogus": 2}"#).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("bogus") || e.contains("missing field"), "{e}");
        fs::write(&path, r#"{"version": 7}"#).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("version 7"), "{e}");
        let moved = move_aside(&path, 42).unwrap();
        assert!(moved.to_string_lossy().ends_with("state.json.bad-42"));
        assert!(!path.exists());
    }
}

#[cfg(test)]
mod lb_tests {
    use super::LbState;
    use stitch_control::lb::LbService;

    fn svc(name: &str, port: u16) -> LbService {
        serde_json::from_value(
            serde_json::json!({"name": name, "vip": "198.18.100.1", "port": port}),
        )
        .unwrap()
    }

    #[test]
    fn lb_rebase_applies_only_what_the_toml_changed() {
        // The TOML had a and b; the socket added c and changed b.
        let old = vec![svc("a", 80), svc("b", 81)];
        let current = vec![svc("a", 80), svc("b", 91), svc("c", 82)];
        // The TOML now drops a, keeps b as it was, adds d.
        let new = vec![svc("b", 81), svc("d", 83)];
        let got = LbState::rebase(&current, &old, &new);
        assert_eq!(got, vec![svc("b", 91), svc("c", 82), svc("d", 83)]);
        assert_eq!(LbState::rebase(&current, &old, &old), current);
    }
}
