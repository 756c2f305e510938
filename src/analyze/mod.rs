//! `probe analyze`: what a `probe grad` results file says about the end of training.
//!
//! For each scalar series across checkpoints (loss, accuracy, |g|, |g + wd w|, |w|, gradient
//! noise, sharpness; whichever the file holds) over the **last half** of the checkpoints in step
//! order: the OLS slope against step with its 95% Student-t interval ([`stats::ols`]), the
//! relative change across the half, the mean absolute change between consecutive checkpoints
//! (alone and relative to the level), and the KPSS test of level stationarity
//! ([`stats::kpss`]). Then the distributional view, from the schema-2 weight columns: how much of
//! the weights' motion between consecutive checkpoints changes their per-tensor distribution
//! (W1 / mean |dw|, in [0, 1]), and W1 between windows of checkpoints (halves, quarters) from the
//! stored quantile functions ([`wasserstein`]). Last, the top Hessian eigenvalue against the
//! edge of stability 2/lr.
//!
//! Everything lands in the same file under `/analysis` (replaced on every run; written by
//! [`crate::store::analysis`], documented in `docs/schema.md`), and [`Analysis::verdict`] answers
//! in words, with the numbers behind each answer: did the gradient norm go to zero, did the loss
//! settle, did the weight distribution settle while the weights kept moving.
//!
//! The files, in the order the data flows: [`results`] reads the file; [`stats`] and
//! [`wasserstein`] are the plain maths; [`series`] (series statistics, edge of stability) and
//! [`distribution`] (the weight distributions) compute; [`analysis`] gathers them; [`report`]
//! puts them in words; this file runs it all and hands the numbers to the store.
pub mod analysis;
pub mod distribution;
pub mod report;
pub mod results;
pub mod series;
pub mod stats;
pub mod wasserstein;

pub use analysis::{analyze, Analysis};
pub use distribution::{window_bounds, Distribution, Span, Window};
pub use report::{g, KPSS_FEW, STABLE_WITHIN};
pub use series::{EdgeOfStability, SeriesStats, SERIES};

use crate::error::input;
use crate::store::analysis as group;
use anyhow::Result;
use results::Results;
use std::path::PathBuf;

pub struct AnalyzePlan {
    pub path: PathBuf,
    /// `--lr`: the learning rate for the edge-of-stability comparison, overriding
    /// `/checkpoints/lr`.
    pub lr: Option<f64>,
    /// Accept a lone data shard (`--allow-partial`).
    pub allow_partial: bool,
    pub command_line: String,
}

/// Where the analysis went besides the caller's printout.
pub enum Stored {
    /// `/analysis` was written into the file.
    Written,
    /// Another process (its pid and host) holds the file's writer lock, e.g. a `probe grad
    /// --follow` still appending rows: the file was only read, `/analysis` not written.
    Busy(String),
}

/// Runs the analysis and writes `/analysis`, or, while another probe writes the file, only
/// reads it ([`Stored::Busy`]); returns it for printing.
pub fn run(plan: &AnalyzePlan) -> Result<(Analysis, Stored)> {
    if let Some(lr) = plan.lr {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(input(format!("--lr {lr}: need a positive learning rate")));
        }
    }
    // `/analysis` is written like a row (crate::store): under the writer lock, so not while a
    // probe grad appends to the file, and by an atomic commit, so a kill cannot damage it. A
    // writer replaces the file only by renaming a whole closed file over it (store::atomic), so
    // reading it without the lock sees the complete rows of one commit.
    let lock = crate::store::lock::WriterLock::try_acquire(&plan.path)?;
    let res = Results::open(&plan.path, 2, plan.allow_partial)?;
    let a = analyze(&res, plan.lr);
    drop(res);
    match lock {
        Ok(_lock) => {
            group::write(&a.path, &record(&a, &plan.command_line))?;
            Ok((a, Stored::Written))
        }
        Err(holder) => Ok((a, Stored::Busy(holder))),
    }
}

/// The analysis as the store writes it under `/analysis`.
fn record<'a>(a: &'a Analysis, command_line: &'a str) -> group::Analysis<'a> {
    group::Analysis {
        command_line,
        rows: a.rows,
        half_start: a.half,
        missing: a.missing.join("; "),
        verdict: a.verdict().join("\n"),
        order: &a.order,
        series: a.series.iter().map(series_record).collect(),
        distribution: a.distribution.as_ref().map(|d| group::Distribution {
            by_entries: d.by_entries,
            notes: d.notes.join("; "),
            motion: (!d.ratio.is_empty()).then(|| group::Motion {
                w1_prev: &d.w1_prev,
                mean_abs_move: &d.move_prev,
                ratio: &d.ratio,
                ratio_per_param: d.ratio_per_param.as_ref(),
                half_ratio: d.half_ratio,
                half_path_rel: d.half_path_rel,
                quantile_w1_error: d.quantile_w1_error,
            }),
            windows: d
                .windows
                .iter()
                .map(|w| group::Window {
                    name: &w.name,
                    bounds: [w.a.0, w.a.1, w.b.0, w.b.1],
                    w1: w.w1,
                    rms: w.rms,
                    w1_per_param: &w.w1_per_param,
                })
                .collect(),
        }),
        edge_of_stability: a.eos.as_ref().map(|e| group::EdgeOfStability {
            lr_source: &e.lr_source,
            lr: &e.lr,
            ratio: &e.ratio,
        }),
    }
}

impl Analysis {
    /// The series as `/analysis/series` stores them, and as `probe analyze --format csv|json`
    /// prints them (one row each: `name`, then [`group::Series::FIELDS`]).
    pub fn records(&self) -> Vec<group::Series> {
        self.series.iter().map(series_record).collect()
    }
}

fn series_record(s: &SeriesStats) -> group::Series {
    let (t, k) = (&s.trend, &s.kpss);
    let (fit, lo, hi) = s.ci_change();
    group::Series {
        name: s.name.clone(),
        half_n: s.half_n,
        half_step_first: s.half_steps.0,
        half_step_last: s.half_steps.1,
        first: s.first,
        last: s.last,
        half_start: s.half_start,
        half_mean: s.half_mean,
        slope: t.slope,
        slope_se: t.slope_se,
        slope_lo: t.slope_lo,
        slope_hi: t.slope_hi,
        intercept: t.intercept,
        rel_change: s.rel_change,
        fit_change: fit,
        fit_change_lo: lo,
        fit_change_hi: hi,
        mean_abs_change: s.mean_abs_change,
        mean_abs_change_rel: s.mean_abs_change_rel,
        kpss_stat: k.stat,
        kpss_p: k.p,
        kpss_lags: k.lags,
        kpss_reject_5pct: if k.stat.is_nan() {
            -1
        } else {
            k.rejects_at_5pct() as i64
        },
    }
}
