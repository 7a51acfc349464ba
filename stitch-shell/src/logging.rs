//! The shell's log: a small [`log::Log`] that writes one line per record, as text or as
//! one JSON object, with the record's key-values (the `log` crate's `kv`) as fields.
//!
//! The library only calls the `log` macros; the binary installs a [`Logger`] (tests can
//! install one writing to a buffer). Nothing here runs per relayed byte: the shell logs
//! hand-offs, discovery changes and stitches freed, each a handful of lines per
//! connection at most.
//!
//! Text: `2024-05-01T12:00:00.123Z INFO stitch_shell::handoff: committed stitch_id=100 ...`
//! (a value with a space or a quote is quoted).
//! JSON: `{"ts":"2024-05-01T12:00:00.123Z","level":"INFO","target":"stitch_shell::handoff",
//! "msg":"committed","stitch_id":100,...}`: integers, floats and booleans as JSON
//! values, everything else as strings. An empty value (`None`) leaves its field out.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{Error as KvError, Key, Value, VisitSource, VisitValue};
use log::{LevelFilter, Log, Metadata, Record};

pub use crate::config::LogFormat;

/// A logger writing one line per record to `out`.
pub struct Logger {
    format: LogFormat,
    level: LevelFilter,
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("format", &self.format)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl Logger {
    /// A logger for records up to `level`, written to `out`.
    pub fn new(format: LogFormat, level: LevelFilter, out: Box<dyn Write + Send>) -> Logger {
        Logger {
            format,
            level,
            out: Mutex::new(out),
        }
    }

    /// A logger writing to standard error.
    pub fn stderr(format: LogFormat, level: LevelFilter) -> Logger {
        Logger::new(format, level, Box::new(std::io::stderr()))
    }

    /// Makes this the process's logger.
    ///
    /// # Errors
    /// When a logger was installed already.
    pub fn install(self) -> Result<(), log::SetLoggerError> {
        let level = self.level;
        log::set_boxed_logger(Box::new(self))?;
        log::set_max_level(level);
        Ok(())
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format_line(self.format, SystemTime::now(), record);
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A log line that cannot be written is dropped: logging must not stop the relay.
        let _ = out.write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}

/// One record as a line (without the newline), stamped `now`.
pub fn format_line(format: LogFormat, now: SystemTime, record: &Record<'_>) -> String {
    let ts = rfc3339_millis(now);
    let mut out = String::with_capacity(160);
    match format {
        LogFormat::Text => {
            let _ = write!(
                out,
                "{ts} {:<5} {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
            let _ = record.key_values().visit(&mut TextFields(&mut out));
        }
        LogFormat::Json => {
            out.push_str("{\"ts\":\"");
            out.push_str(&ts);
            out.push_str("\",\"level\":\"");
            out.push_str(record.level().as_str());
            out.push_str("\",\"target\":");
            json_string(&mut out, record.target());
            out.push_str(",\"msg\":");
            json_string(&mut out, &record.args().to_string());
            let _ = record.key_values().visit(&mut JsonFields(&mut out));
            out.push('}');
        }
    }
    out
}

struct TextFields<'a>(&'a mut String);

/// Whether a value is empty (`None` or `()`): such fields are left out of the line.
fn is_null(v: &Value<'_>) -> bool {
    struct Null(bool);
    impl<'v> VisitValue<'v> for Null {
        fn visit_any(&mut self, _: Value<'_>) -> Result<(), KvError> {
            Ok(())
        }
        fn visit_null(&mut self) -> Result<(), KvError> {
            self.0 = true;
            Ok(())
        }
    }
    let mut n = Null(false);
    let _ = v.visit(&mut n);
    n.0
}

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
        if is_null(&value) {
            return Ok(());
        }
        let v = value.to_string();
        let plain = !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '"');
        if plain {
            let _ = write!(self.0, " {key}={v}");
        } else {
            let _ = write!(self.0, " {key}={v:?}");
        }
        Ok(())
    }
}

struct JsonFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
        if is_null(&value) {
            return Ok(());
        }
        self.0.push(',');
        json_string(self.0, key.as_str());
        self.0.push(':');
        if let Some(b) = value.to_bool() {
            let _ = write!(self.0, "{b}");
        } else if let Some(n) = value.to_u64() {
            let _ = write!(self.0, "{n}");
        } else if let Some(n) = value.to_i64() {
            let _ = write!(self.0, "{n}");
        } else if let Some(f) = value.to_f64().filter(|f| f.is_finite()) {
            let _ = write!(self.0, "{f}");
        } else {
            json_string(self.0, &value.to_string());
        }
        Ok(())
    }
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC); times before 1970 print as the epoch.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_millis() {
        assert_eq!(rfc3339_millis(at(0, 0)), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.789.
        assert_eq!(
            rfc3339_millis(at(951_827_696, 789)),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            rfc3339_millis(at(4_102_444_799, 0)),
            "2099-12-31T23:59:59.000Z"
        );
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    fn line(format: LogFormat) -> String {
        let kvs: [(&str, Value<'_>); 7] = [
            ("stitch_id", Value::from(100u32)),
            ("outcome", Value::from("refused")),
            (
                "reason",
                Value::from("commit refused (code 4): no \"packet\""),
            ),
            ("frozen_ms", Value::from(12.5f64)),
            ("provoke", Value::from(true)),
            ("delta", Value::from(-3i64)),
            ("absent", Value::null()),
        ];
        format_line(
            format,
            at(951_827_696, 789),
            &Record::builder()
                .level(Level::Info)
                .target("stitch_shell::handoff")
                .args(format_args!("hand-off {}", "failed"))
                .key_values(&kvs)
                .build(),
        )
    }

    #[test]
    fn text_lines_carry_the_fields_quoted_when_needed() {
        assert_eq!(
            line(LogFormat::Text),
            "2000-02-29T12:34:56.789Z INFO  stitch_shell::handoff: hand-off failed stitch_id=100 outcome=refused reason=\"commit refused (code 4): no \\\"packet\\\"\" frozen_ms=12.5 provoke=true delta=-3"
        );
    }

    #[test]
    fn json_lines_are_one_object_with_typed_fields() {
        let l = line(LogFormat::Json);
        assert!(!l.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["ts"], "2000-02-29T12:34:56.789Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "stitch_shell::handoff");
        assert_eq!(v["msg"], "hand-off failed");
        assert_eq!(v["stitch_id"], 100);
        assert_eq!(v["outcome"], "refused");
        assert_eq!(v["reason"], "commit refused (code 4): no \"packet\"");
        assert_eq!(v["frozen_ms"], 12.5);
        assert_eq!(v["provoke"], true);
        assert_eq!(v["delta"], -3);
        assert!(v.get("absent").is_none(), "empty fields are left out");
    }

    #[test]
    fn json_escapes_control_characters() {
        let mut s = String::new();
        json_string(&mut s, "a\nb\t\u{1}\\");
        assert_eq!(s, "\"a\\nb\\t\\u0001\\\\\"");
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\nb\t\u{1}\\");
    }

    #[test]
    fn the_logger_filters_by_level_and_writes_lines() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let l = Logger::new(LogFormat::Json, LevelFilter::Info, Box::new(buf.clone()));
        for level in [Level::Debug, Level::Warn] {
            l.log(
                &Record::builder()
                    .level(level)
                    .target("t")
                    .args(format_args!("x"))
                    .build(),
            );
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"level\":\"WARN\"") && text.ends_with("}\n"));
    }
}
