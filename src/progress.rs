//! Progress reporting: a bar on a terminal, timestamped plain lines otherwise (batch jobs), and
//! `progress` events in the JSON log ([`crate::log`]).
//!
//! Two levels: a [`Progress`] is one pass (a checkpoint's, or a group's with
//! `--ckpts-per-pass`), counted in samples; the run ([`plan`]) is every pass this process will
//! make, counted in sample-passes (a pass over N samples for K checkpoints is N K), so that the
//! ETA printed is the whole run's, not the current checkpoint's.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The whole run's work and how much of it is done.
struct Run {
    phase: String,
    total: u64,
    done: u64,
    /// Of `done`, what an earlier process did (a resumed pass): not in the rate.
    skipped: u64,
    start: Option<Instant>,
    /// When the last plain line or log event was written (one every 10 s, whatever the pass).
    last_line: Option<Instant>,
    /// The current pass's checkpoint(s): 1-based index of the first, how many in the pass, and
    /// how many in the run.
    index: usize,
    count: usize,
    of: usize,
    /// Seconds between plain lines and log events.
    every: Duration,
}

static RUN: Mutex<Run> = Mutex::new(Run {
    phase: String::new(),
    total: 0,
    done: 0,
    skipped: 0,
    start: None,
    last_line: None,
    index: 0,
    count: 1,
    of: 0,
    every: Duration::from_secs(10),
});

/// How often plain progress lines and log events are written (`--progress-every`).
pub fn set_every(every: Duration) {
    run().every = every;
}

/// How often plain progress lines and log events are written.
pub fn every() -> Duration {
    run().every
}

fn run() -> std::sync::MutexGuard<'static, Run> {
    RUN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the run's count: `phase` (grad, eval, train) over `total` sample-passes, `of`
/// checkpoints.
pub fn plan(phase: &str, total: u64, of: usize) {
    let mut r = run();
    r.phase = phase.to_string();
    r.total = total;
    r.done = 0;
    r.skipped = 0;
    r.last_line = None;
    r.start = Some(Instant::now());
    r.index = 0;
    r.of = of;
}

/// Adds work found on the way (a pass whose length was not known at the start).
pub fn add_work(n: u64) {
    run().total += n;
}

/// Takes back work planned but not done (a Lanczos run that converged before its budget).
pub fn drop_work(n: u64) {
    let mut r = run();
    r.total = r.total.saturating_sub(n);
}

/// The pass about to run is for `count` checkpoints from `index` (1-based) of the run's.
pub fn at_checkpoint(index: usize, count: usize) {
    let mut r = run();
    r.index = index;
    r.count = count.max(1);
}

/// Whether a line is due (10 s since the last, or since the run started), marking it written.
fn line_due() -> bool {
    let mut r = run();
    let now = Instant::now();
    let since = r.last_line.or(r.start).unwrap_or(now);
    if r.last_line.is_none() && r.start.is_none() {
        r.start = Some(now);
    }
    if now.duration_since(since) < r.every {
        return false;
    }
    r.last_line = Some(now);
    true
}

/// The run's fraction done and its ETA in seconds (None before anything is done).
fn run_eta() -> (f64, Option<f64>, usize, usize, usize) {
    let r = run();
    let frac = if r.total > 0 {
        (r.done as f64 / r.total as f64).min(1.0)
    } else {
        0.0
    };
    let eta = r.start.and_then(|s| {
        let did = r.done - r.skipped;
        (did > 0).then(|| {
            let t = s.elapsed().as_secs_f64();
            t / did as f64 * r.total.saturating_sub(r.done) as f64
        })
    });
    (frac, eta, r.index, r.count, r.of)
}

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    phase: String,
    total: u64,
    done: u64,
    skipped: u64,
    /// Sample-passes per sample (the checkpoints of a group).
    weight: u64,
    start: Instant,
    quiet: bool,
}

impl Progress {
    /// `quiet` silences the bar and the lines (tests, `--quiet`); the JSON log still gets its
    /// events.
    pub fn new(label: &str, total: u64, quiet: bool) -> Progress {
        Progress::of_phase("", label, total, quiet)
    }

    /// A pass of `phase` (grad, eval, noise, hessian, train) over `total` samples.
    pub fn of_phase(phase: &str, label: &str, total: u64, quiet: bool) -> Progress {
        let bar = if !quiet && std::io::stderr().is_terminal() {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {pos}/{len} samples, {per_sec}, {prefix}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            b.set_message(label.to_string());
            Some(b)
        } else {
            None
        };
        let now = Instant::now();
        let phase = if phase.is_empty() {
            run().phase.clone()
        } else {
            phase.to_string()
        };
        Progress {
            bar,
            label: label.to_string(),
            phase,
            total,
            done: 0,
            skipped: 0,
            weight: 1,
            start: now,
            quiet,
        }
    }

    /// Each sample of this pass is `k` sample-passes of the run (a group of k checkpoints).
    pub fn weighted(mut self, k: u64) -> Progress {
        self.weight = k.max(1);
        self
    }

    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// Samples already done before this process (a pass resumed from its save): they count as
    /// done, not into the rate.
    pub fn skip(&mut self, n: u64) {
        self.done += n;
        self.skipped += n;
        let mut r = run();
        r.done += n * self.weight;
        r.skipped += n * self.weight;
        if let Some(b) = &self.bar {
            b.set_position(self.done);
            b.reset_elapsed();
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        run().done += n * self.weight;
        let (frac, eta, index, count, of) = run_eta();
        let which = match count {
            1 => format!("checkpoint {index} of {of}"),
            c => format!("checkpoints {index}-{} of {of}", index + c - 1),
        };
        let run_text = match (of, eta) {
            (0, Some(e)) => format!("{:.1}%, eta {}", 100.0 * frac, crate::log::human(e)),
            (0, None) => String::new(),
            (_, Some(e)) => format!(
                "{which}, run {:.1}%, eta {}",
                100.0 * frac,
                crate::log::human(e)
            ),
            (_, None) => which,
        };
        if let Some(b) = &self.bar {
            b.set_prefix(run_text.clone());
            b.inc(n);
        }
        if !line_due() {
            return;
        }
        let rate = self.rate();
        if self.bar.is_none() && !self.quiet {
            eprintln!(
                "[{}] {} {}: {}/{} samples, {:.1} samples/s{}{}",
                crate::log::utc_now(),
                self.phase,
                self.label,
                self.done,
                self.total,
                rate,
                if run_text.is_empty() { "" } else { "; " },
                run_text
            );
        }
        crate::log::event(
            "progress",
            json!({
                "phase": self.phase,
                "checkpoint": self.label,
                "index": index,
                "count": count,
                "of": of,
                "samples_done": self.done,
                "samples": self.total,
                "rate": rate,
                "run_fraction": frac,
                "eta_s": eta,
            }),
        );
    }

    fn rate(&self) -> f64 {
        (self.done - self.skipped) as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
