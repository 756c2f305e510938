//! `--follow DIR`: measure a training run's checkpoints as they are written, beside the trainer.
//!
//! The follower polls DIR. A checkpoint is taken only when it is whole:
//! - its size and modification time have not changed for `settle` seconds (a file written in
//!   pieces by `torch.save` or `save_file` without a rename grows, or is touched, while being
//!   written), and
//! - its safetensors header parses and the data section it describes ends exactly at the file's
//!   end (a file cut short, or still being appended to, fails this even when it paused).
//!
//! Files whose names start with `.` (writers' temporaries, as `probe train` and the README's
//! PyTorch snippet write them before a rename) and optimizer-state files are never taken. The
//! checkpoints taken are measured in step order by the command's own code (so rows, resume and
//! shards behave as without `--follow`), then the follower waits for more, until: a checkpoint
//! at or past `--until-step` is done, the trainer's done marker `DIR/DONE` exists (written by
//! `probe train` when it ends; `touch DIR/DONE` from any loop) and every whole checkpoint is
//! done, or no new checkpoint has come for `--idle-timeout` seconds. A file that changes after it
//! was measured is reported (its row stays: it is of the content whose sha256 it records).
//!
//! What the follower does, and what it waits for since when, goes to stderr (timestamped lines,
//! unless `--quiet`) and to the JSON log as `follow` events ([`Say`]): when it starts, while the
//! folder does not exist yet, when new checkpoints are taken, each time it starts waiting and then
//! every `--progress-every` seconds while it waits, and why it stops.
use crate::model::checkpoint::{step_by_pattern, step_from_name};
use anyhow::Result;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The trainer's done marker in the followed folder.
pub const DONE_MARKER: &str = "DONE";

#[derive(Debug, Clone)]
pub struct FollowOptions {
    pub dir: PathBuf,
    pub until_step: Option<i64>,
    pub idle_timeout: Duration,
    /// How long a file's size and time must hold still.
    pub settle: Duration,
    pub poll: Duration,
    /// How often a wait is logged again (`--progress-every`).
    pub note_every: Duration,
    /// `--step-from REGEX`: the steps (order, `--until-step`) come from the path, as the
    /// measurement takes them.
    pub step_from: Option<String>,
    pub quiet: bool,
}

/// What a file looked like when seen: (size, modification time).
type Seen = (u64, SystemTime);

fn look(path: &Path) -> Option<Seen> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Whether `path` is a whole safetensors file: its header parses and its tensors' data ends at
/// the file's end.
pub fn is_whole(path: &Path) -> bool {
    use std::io::Read;
    let Ok((mut f, len)) = crate::model::checkpoint::open_regular(path) else {
        return false;
    };
    let mut n = [0u8; 8];
    if f.read_exact(&mut n).is_err() {
        return false;
    }
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 || n > len.saturating_sub(8) {
        return false;
    }
    let mut json = vec![0u8; n as usize];
    if f.read_exact(&mut json).is_err() {
        return false;
    }
    let Ok(serde_json::Value::Object(h)) = serde_json::from_slice::<serde_json::Value>(&json)
    else {
        return false;
    };
    let end = h
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    8 + n + end == len
}

/// The step of a followed checkpoint as the measurement takes it: `--step-from`'s match when
/// given, else its header's metadata `step`, else its name's, else -1 (also where `--step-from`
/// does not match: the measurement then says so).
fn step_of(path: &Path, step_from: Option<&str>) -> i64 {
    if let Some(p) = step_from {
        return step_by_pattern(path, p).unwrap_or(-1);
    }
    let meta = crate::model::checkpoint_set::header(path)
        .map(|h| h.1)
        .unwrap_or_default();
    meta.get("step")
        .and_then(|s| s.parse().ok())
        .or_else(|| step_from_name(path))
        .unwrap_or(-1)
}

/// What a round measures: the new checkpoints, the one before each (in step order; `moved` and
/// the W1 distances need it) and the first (the distances to it), so that a round reads a few
/// files, not the whole run. Where a step is unknown, every checkpoint taken (the order is then
/// the names').
fn to_measure(
    taken: &BTreeMap<PathBuf, Seen>,
    fresh: &[PathBuf],
    step_from: Option<&str>,
) -> Vec<PathBuf> {
    let mut order: Vec<(i64, &PathBuf)> =
        taken.keys().map(|p| (step_of(p, step_from), p)).collect();
    if order.iter().any(|(s, _)| *s < 0) {
        return taken.keys().cloned().collect();
    }
    order.sort();
    let mut keep = vec![false; order.len()];
    keep[0] = true;
    for (k, (_, p)) in order.iter().enumerate() {
        if fresh.contains(p) {
            keep[k] = true;
            if k > 0 {
                keep[k - 1] = true;
            }
        }
    }
    order
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|((_, p), _)| p.clone())
        .collect()
}

/// The follower's log: a timestamped line on stderr (unless `--quiet`) and a `follow` event in
/// the JSON log, whose `state` is `watching`, `waiting`, `new`, `changed` or `done`.
struct Say {
    quiet: bool,
}

impl Say {
    fn say(&self, state: &str, line: &str, mut fields: serde_json::Value) {
        if !self.quiet {
            eprintln!("[{}] follow: {line}", crate::log::utc_now());
        }
        fields["state"] = json!(state);
        fields["message"] = json!(line);
        crate::log::event("follow", fields);
    }

    /// What the follower waits for, since when (UTC), and for how long so far.
    fn waiting(&self, what: &str, dir: &Path, since: &str, waited: Duration, more: Value) {
        let mut fields = json!({
            "waiting_for": what,
            "dir": dir.display().to_string(),
            "since": since,
            "waited_seconds": waited.as_secs(),
        });
        if let (Value::Object(f), Value::Object(m)) = (&mut fields, more) {
            f.extend(m);
        }
        let line = format!("waiting for {what} since {since} ({} s)", waited.as_secs());
        self.say("waiting", &line, fields);
    }
}

fn file_names(paths: &[&PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Follows `opts.dir`, calling `measure` with the checkpoints to measure ([`to_measure`]; the
/// command skips those already in its results file) each time new ones are whole. Returns when
/// a stop condition holds (see the module doc).
pub fn follow(
    opts: &FollowOptions,
    mut measure: impl FnMut(&[PathBuf]) -> Result<()>,
) -> Result<()> {
    let log = Say { quiet: opts.quiet };
    let dir = opts.dir.display().to_string();
    let step_from = opts.step_from.as_deref();
    // The trainer may not have made its folder yet.
    let t0 = Instant::now();
    let started = crate::log::utc_now();
    let mut last_note: Option<Instant> = None;
    while !opts.dir.is_dir() {
        if opts.dir.exists() {
            return Err(crate::error::input(format!("--follow {dir}: not a folder")));
        }
        if t0.elapsed() >= opts.idle_timeout {
            return Err(crate::error::input(format!(
                "--follow {dir}: no such folder after {} s (--idle-timeout)",
                opts.idle_timeout.as_secs()
            )));
        }
        if last_note.is_none_or(|t| t.elapsed() >= opts.note_every) {
            let what = format!("{dir} to be created");
            log.waiting(&what, &opts.dir, &started, t0.elapsed(), json!({}));
            last_note = Some(Instant::now());
        }
        std::thread::sleep(opts.poll);
    }
    // Candidates: first sight and when it last changed.
    let mut pending: HashMap<PathBuf, (Seen, Instant)> = HashMap::new();
    let mut taken: BTreeMap<PathBuf, Seen> = BTreeMap::new();
    let mut reported_changed: std::collections::HashSet<PathBuf> = Default::default();
    let mut last_new = Instant::now();
    let mut waiting_since = crate::log::utc_now();
    let mut last_note: Option<Instant> = None;
    let changed = |p: &Path, line: String| {
        eprintln!("warning: {line}");
        crate::log::event(
            "follow",
            json!({"state": "changed", "file": p.display().to_string(), "message": line}),
        );
    };
    let stops = match opts.until_step {
        Some(s) => format!("step {s}, at {DONE_MARKER}"),
        None => DONE_MARKER.to_string(),
    };
    log.say(
        "watching",
        &format!(
            "watching {dir} (stops at {stops}, or {} s without a new checkpoint)",
            opts.idle_timeout.as_secs()
        ),
        json!({"dir": dir, "until_step": opts.until_step, "idle_timeout": opts.idle_timeout.as_secs_f64()}),
    );
    loop {
        let done_marker = opts.dir.join(DONE_MARKER).exists();
        let mut names: Vec<PathBuf> = std::fs::read_dir(&opts.dir)
            .map_err(|e| crate::error::input(format!("{dir}: {e}")))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().map(|n| n.to_string_lossy().to_string());
                n.is_some_and(|n| n.ends_with(".safetensors") && !n.starts_with('.'))
                    && p.is_file()
                    && !crate::model::checkpoint_set::is_optimizer_state(p)
            })
            .collect();
        names.sort();
        let mut fresh = Vec::new();
        for p in &names {
            let Some(now) = look(p) else { continue };
            if let Some(seen) = taken.get(p) {
                if *seen != now && reported_changed.insert(p.clone()) {
                    changed(p, format!(
                        "{} changed after it was measured; its row is of the content measured (see /checkpoints/sha256)",
                        p.display()
                    ));
                }
                continue;
            }
            match pending.get(p) {
                Some((seen, since)) if *seen == now => {
                    if since.elapsed() >= opts.settle && is_whole(p) {
                        fresh.push(p.clone());
                    }
                }
                _ => {
                    pending.insert(p.clone(), (now, Instant::now()));
                }
            }
        }
        if !fresh.is_empty() {
            for p in &fresh {
                let (seen, _) = pending.remove(p).unwrap();
                taken.insert(p.clone(), seen);
            }
            let list = file_names(&fresh.iter().collect::<Vec<_>>());
            log.say(
                "new",
                &format!("{} new checkpoint(s): {list}", fresh.len()),
                json!({"dir": dir, "new": fresh.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()}),
            );
            measure(&to_measure(&taken, &fresh, step_from))?;
            // A file that changed while it was measured: its row may be of either content.
            for p in &fresh {
                if look(p) != taken.get(p).copied() && reported_changed.insert(p.clone()) {
                    changed(p, format!(
                        "{} changed while it was measured; its row is of the content whose sha256 it records",
                        p.display()
                    ));
                }
            }
            last_new = Instant::now();
            waiting_since = crate::log::utc_now();
            last_note = None;
        }
        let top = taken.keys().map(|p| step_of(p, step_from)).max();
        let done = |why: String| {
            log.say(
                "done",
                &format!("{why}: done"),
                json!({"dir": dir, "measured": taken.len()}),
            );
        };
        if let (Some(u), Some(t)) = (opts.until_step, top) {
            if t >= u {
                done(format!("step {t} reached --until-step {u}"));
                return Ok(());
            }
        }
        // Done when the trainer says so and nothing it wrote is still waiting to settle.
        let settling: Vec<&PathBuf> = names.iter().filter(|p| pending.contains_key(*p)).collect();
        if done_marker && settling.is_empty() {
            done(format!("{DONE_MARKER} found and every checkpoint measured"));
            return Ok(());
        }
        if last_new.elapsed() >= opts.idle_timeout {
            done(format!(
                "no new checkpoint for {} s (--idle-timeout)",
                opts.idle_timeout.as_secs()
            ));
            return Ok(());
        }
        if fresh.is_empty() && last_note.is_none_or(|t| t.elapsed() >= opts.note_every) {
            let what = if settling.is_empty() {
                format!("a new checkpoint in {dir} (or {DONE_MARKER})")
            } else {
                format!(
                    "{} to be whole (unchanged for {} s, data complete) in {dir}",
                    file_names(&settling),
                    opts.settle.as_secs_f64()
                )
            };
            log.waiting(
                &what,
                &opts.dir,
                &waiting_since,
                last_new.elapsed(),
                json!({
                    "measured": taken.len(),
                    "settling": settling.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                }),
            );
            last_note = Some(Instant::now());
        }
        std::thread::sleep(opts.poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_files_only() {
        let dir = std::env::temp_dir().join(format!("probe-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("step-1.safetensors");
        let data = [0u8; 16];
        let v =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
        safetensors::tensor::serialize_to_file(vec![("w".to_string(), v)], &None, &p).unwrap();
        assert!(is_whole(&p));
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(!is_whole(&p), "cut short");
        std::fs::write(&p, &bytes[..5]).unwrap();
        assert!(!is_whole(&p), "header cut");
        let mut more = bytes.clone();
        more.push(0);
        std::fs::write(&p, &more).unwrap();
        assert!(!is_whole(&p), "longer than its header says");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
