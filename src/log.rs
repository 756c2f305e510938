//! Logs a batch system can read: `--log-json FILE` (or `-` for stderr) writes one JSON object per
//! line, each with `time` (UTC, RFC 3339) and `event`:
//!
//! - `start`: the command, its output, how many checkpoints this run measures;
//! - `progress` (every 10 s): the phase (`grad`, `eval`, `noise`, `hessian`, `train`), the
//!   checkpoint(s) and their place (`index` of `of`), samples done of this pass, rate, and for the
//!   whole run the fraction done and its ETA in seconds;
//! - `row`: one per finished results row, with its numbers (what the table prints);
//! - `end`: exit code, rows written, seconds.
//!
//! The log is one process's: a global sink set once by the command line, written under a mutex
//! and flushed per line, so that `tail -f` and a scheduler's log collector see whole lines.
use serde_json::{json, Map, Value};
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

static SINK: Mutex<Option<Box<dyn Write + Send>>> = Mutex::new(None);

/// Opens the JSON-lines log: a file (created or appended to), or `-` for stderr.
pub fn open(dest: &std::path::Path) -> anyhow::Result<()> {
    let sink: Box<dyn Write + Send> = if dest.as_os_str() == "-" {
        Box::new(std::io::stderr())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dest)
                .map_err(|e| {
                    crate::error::output(format!("{}: cannot open the log: {e}", dest.display()))
                })?,
        )
    };
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    Ok(())
}

pub fn enabled() -> bool {
    SINK.lock().map(|s| s.is_some()).unwrap_or(false)
}

/// Writes one event with `fields` (an object) after `time` and `event`. A failed write is
/// dropped: the log must never stop a measurement.
pub fn event(kind: &str, fields: Value) {
    let mut guard = SINK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(sink) = guard.as_mut() else { return };
    let mut m = Map::new();
    m.insert("time".into(), json!(utc_now()));
    m.insert("event".into(), json!(kind));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    let _ = writeln!(sink, "{}", Value::Object(m)).and_then(|_| sink.flush());
}

/// Now, UTC, to the second: `2026-12-06T21:40:12Z`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc(secs)
}

/// `secs` since the epoch as RFC 3339 UTC (Howard Hinnant's days-to-civil algorithm).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A duration for people: `45s`, `12m05s`, `3h07m`.
pub fn human(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_592_012), "2026-12-06T21:20:12Z");
        assert_eq!(human(3725.0), "1h02m");
        assert_eq!(human(65.0), "1m05s");
    }
}
