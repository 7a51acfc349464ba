//! One-line logs on standard error: `<unix ms> <component> <message>`.
//!
//! Tests synchronise on these lines (readiness, link events, counters), so
//! their wording is part of the interface: see `docs/fleet.md`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences every log line of this process (the simulation runs thousands
/// of components in one process).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch (for log stamps only; logic gets time as
/// an argument).
pub fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Writes one log line.
pub fn line(component: &str, msg: &str) {
    if QUIET.load(Ordering::Relaxed) {
        return;
    }
    eprintln!("{} {component} {msg}", unix_ms());
}
