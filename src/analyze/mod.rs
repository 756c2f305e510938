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
//! Everything lands in the same file under `/analysis` (replaced on every run; documented in
//! `docs/schema.md`), and [`Analysis::verdict`] answers in words, with the numbers behind each
//! answer: did the gradient norm go to zero, did the loss settle, did the weight distribution
//! settle while the weights kept moving.
pub mod results;
pub mod stats;
pub mod wasserstein;

use crate::error::{input, output};
use anyhow::Result;
use hdf5::types::VarLenUnicode;
use ndarray::Array2;
use results::Results;
use stats::{Kpss, Trend};
use std::path::PathBuf;

pub struct AnalyzePlan {
    pub path: PathBuf,
    /// `--lr`: the learning rate for the edge-of-stability comparison, overriding
    /// `/checkpoints/lr`.
    pub lr: Option<f64>,
    pub command_line: String,
}

/// The series analysed, in the order printed: (dataset, label, how to get it when missing).
pub const SERIES: &[(&str, &str, &str)] = &[
    ("loss", "loss", ""),
    ("accuracy", "accuracy", ""),
    ("grad/l2", "|g|", ""),
    ("grad_reg/l2", "|g + wd w|", "probe grad --weight-decay L"),
    ("weights/l2", "|w|", ""),
    ("noise/batch_var", "batch grad var", "probe grad --noise"),
    (
        "noise/sample_var_trace",
        "sample grad var",
        "probe grad --noise",
    ),
    ("hessian/top", "hessian top", "probe grad --hessian"),
    ("hessian/sharpness", "sharpness", "probe grad --hessian"),
];

/// Below this many checkpoints in the last half, KPSS has little power (it rarely rejects
/// whatever the series does): the verdict says so.
pub const KPSS_FEW: usize = 10;

/// The loss counts as stable when its 95% slope interval, carried across the last half, keeps
/// the change within this fraction of its level.
pub const STABLE_WITHIN: f64 = 0.05;

/// One series over the last half of the checkpoints.
#[derive(Debug, Clone)]
pub struct SeriesStats {
    pub name: String,
    pub label: String,
    /// The value at the first checkpoint (in step order) with a finite value, and its step.
    pub first: f64,
    pub first_step: i64,
    pub last: f64,
    /// The half's steps (first, last) and finite points in it.
    pub half_steps: (i64, i64),
    pub half_n: usize,
    pub half_start: f64,
    pub half_mean: f64,
    pub trend: Trend,
    /// (last - half_start) / |half_start|.
    pub rel_change: f64,
    pub mean_abs_change: f64,
    /// mean_abs_change / |half_mean|.
    pub mean_abs_change_rel: f64,
    pub kpss: Kpss,
}

impl SeriesStats {
    /// The change across the last half relative to its mean level, as the fitted line gives
    /// it and at the two ends of the slope's 95% interval: slope * (step span) / |half mean|.
    pub fn ci_change(&self) -> (f64, f64, f64) {
        let k = (self.half_steps.1 - self.half_steps.0) as f64 / self.half_mean.abs();
        (
            self.trend.slope * k,
            self.trend.slope_lo * k,
            self.trend.slope_hi * k,
        )
    }
}

/// Positions [from, to) in step order.
pub type Span = (usize, usize);

/// A comparison of two windows of checkpoints (positions in step order, half-open).
#[derive(Debug, Clone)]
pub struct Window {
    pub name: String,
    pub a: Span,
    pub b: Span,
    /// Entry-weighted mean over tensors of W1(tensor's distribution in A, in B).
    pub w1: f64,
    /// The weights' RMS over the two windows (entry-weighted over tensors), the scale for `w1`.
    pub rms: f64,
    pub w1_per_param: Vec<f64>,
}

/// The distributional view (schema version 2 and later).
#[derive(Debug, Clone, Default)]
pub struct Distribution {
    /// Whether tensors are weighted by their entry counts (`/weights/hist/counts`), or equally.
    pub by_entries: bool,
    /// Per row (file order), entry-weighted over tensors: W1 to the previous row, mean |dw|,
    /// and their ratio (NaN where nothing moved, e.g. row 0).
    pub w1_prev: Vec<f64>,
    pub move_prev: Vec<f64>,
    pub ratio: Vec<f64>,
    pub ratio_per_param: Option<Array2<f64>>,
    /// Over the last half (rows after the half's first): sum W1 / sum mean|dw|, and the
    /// path length per entry (sum of mean|dw|) relative to the weights' RMS.
    pub half_ratio: f64,
    pub half_path_rel: f64,
    pub windows: Vec<Window>,
    /// How well the 257-level quantile model reproduces the exact W1: per row (file order),
    /// entry-weighted W1 between it and the row before it from `/weights/quantiles`, against
    /// the same from `/weights/w1_prev`; the median over rows of (model - exact) / exact.
    /// NaN without both columns.
    pub quantile_w1_error: f64,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct EdgeOfStability {
    pub lr_source: String,
    /// Per row (file order): lr and hessian/top * lr / 2 (1 = at the edge).
    pub lr: Vec<f64>,
    pub ratio: Vec<f64>,
    pub half_mean: f64,
    pub half_max: f64,
}

pub struct Analysis {
    pub path: PathBuf,
    pub rows: usize,
    pub steps_known: bool,
    pub steps: (i64, i64),
    /// Start of the last half, as a position in step order.
    pub half: usize,
    pub order: Vec<usize>,
    pub series: Vec<SeriesStats>,
    /// Columns absent from the file, with how to get them.
    pub missing: Vec<String>,
    /// Whether `probe grad` finished the file (`complete` = 1); if not, its complete rows
    /// were analysed.
    pub complete: bool,
    pub distribution: Option<Distribution>,
    /// Why the distributional part is missing, when it is.
    pub distribution_skipped: Option<String>,
    pub eos: Option<EdgeOfStability>,
    pub eos_skipped: Option<String>,
    pub params: Vec<String>,
}

/// Runs the analysis, writes `/analysis`, and returns it for printing.
pub fn run(plan: &AnalyzePlan) -> Result<Analysis> {
    if let Some(lr) = plan.lr {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(input(format!("--lr {lr}: need a positive learning rate")));
        }
    }
    // `/analysis` is written like a row (crate::store): under the writer lock, so not while a
    // probe grad appends to the file, and by an atomic commit, so a kill cannot damage it.
    let _lock = crate::store::lock::WriterLock::acquire(&plan.path)?;
    let res = Results::open(&plan.path, 2)?;
    let a = analyze(&res, plan.lr);
    drop(res);
    let mut file = crate::store::atomic::Shadowed::existing(&plan.path);
    file.commit("writing /analysis", &|f: &hdf5::File| {
        write(f, &a, &plan.command_line)
    })?;
    file.close();
    Ok(a)
}

/// The analysis of an open results file (nothing written).
pub fn analyze(res: &Results, lr: Option<f64>) -> Analysis {
    let k = res.rows;
    let half = k / 2;
    let steps = res.sorted_steps();
    let mut series = Vec::new();
    let mut missing = Vec::new();
    for &(name, label, how) in SERIES {
        match res.series(name) {
            Some(v) => {
                if let Some(s) = series_stats(name, label, &steps, &res.sorted(&v), half) {
                    series.push(s);
                }
            }
            None if how.is_empty() && name != "accuracy" => missing.push(format!(
                "/{name} (written by every probe grad run: is the file damaged?)"
            )),
            None if name == "accuracy" => {}
            None => {
                let note = format!("/{name} ({how})");
                missing.push(note);
            }
        }
    }
    let (distribution, distribution_skipped) = distribution(res, half);
    let (eos, eos_skipped) = edge_of_stability(res, lr, half);
    Analysis {
        path: res.path.clone(),
        rows: k,
        steps_known: res.steps_known,
        steps: (steps[0] as i64, steps[k - 1] as i64),
        half,
        order: res.order.clone(),
        series,
        missing,
        complete: res.complete,
        distribution,
        distribution_skipped,
        eos,
        eos_skipped,
        params: res.params.clone(),
    }
}

/// The statistics of one series (values in step order) over positions `half..`.
fn series_stats(
    name: &str,
    label: &str,
    steps: &[f64],
    v: &[f64],
    half: usize,
) -> Option<SeriesStats> {
    let all: Vec<(f64, f64)> = steps
        .iter()
        .zip(v)
        .map(|(&s, &y)| (s, y))
        .filter(|p| p.1.is_finite())
        .collect();
    let (first_step, first) = *all.first()?;
    let last = all.last()?.1;
    let h: Vec<(f64, f64)> = steps[half..]
        .iter()
        .zip(&v[half..])
        .map(|(&s, &y)| (s, y))
        .filter(|p| p.1.is_finite())
        .collect();
    let hx: Vec<f64> = h.iter().map(|p| p.0).collect();
    let hy: Vec<f64> = h.iter().map(|p| p.1).collect();
    let half_start = hy.first().copied().unwrap_or(f64::NAN);
    let half_mean = stats::mean(&hy);
    let mac = stats::mean_abs_change(&hy);
    Some(SeriesStats {
        name: name.to_string(),
        label: label.to_string(),
        first,
        first_step: first_step as i64,
        last,
        half_steps: (
            hx.first().copied().unwrap_or(f64::NAN) as i64,
            hx.last().copied().unwrap_or(f64::NAN) as i64,
        ),
        half_n: h.len(),
        half_start,
        half_mean,
        trend: stats::ols(&hx, &hy),
        rel_change: (last - half_start) / half_start.abs(),
        mean_abs_change: mac,
        mean_abs_change_rel: mac / half_mean.abs(),
        kpss: stats::kpss(&hy, stats::kpss_default_lags(hy.len())),
    })
}

/// Entry-weighted mean over tensors of `row` (weights `w`), skipping non-finite entries.
fn weighted(row: impl Iterator<Item = f64>, w: &[f64]) -> f64 {
    let (mut s, mut n) = (0.0, 0.0);
    for (v, &wi) in row.zip(w) {
        if v.is_finite() {
            s += v * wi;
            n += wi;
        }
    }
    if n > 0.0 {
        s / n
    } else {
        f64::NAN
    }
}

fn distribution(res: &Results, half: usize) -> (Option<Distribution>, Option<String>) {
    if res.schema_version < 2 {
        return (
            None,
            Some(format!(
                "schema_version {} predates the weight-distribution columns (/weights/w1_prev, \
                 /weights/per_param_mean_abs_move, /weights/quantiles; schema 2): rerun probe grad \
                 with a newer probe to get them",
                res.schema_version
            )),
        );
    }
    let w1 = res.matrix("weights/w1_prev");
    let mv = res.matrix("weights/per_param_mean_abs_move");
    const Q: &str = "weights/quantiles";
    let q = res.cube_shape(Q);
    if w1.is_none() && q.is_none() {
        return (
            None,
            Some("the file has neither /weights/w1_prev nor /weights/quantiles".into()),
        );
    }
    let p = w1
        .as_ref()
        .map(|m| m.ncols())
        .or(q.map(|(p, _)| p))
        .unwrap_or(0);
    let mut d = Distribution::default();
    let entries = res.entries().filter(|e| e.len() == p);
    d.by_entries = entries.is_some();
    let ew = entries.unwrap_or_else(|| {
        d.notes.push(
            "no /weights/hist/counts: tensors are weighted equally, not by their entry counts"
                .into(),
        );
        vec![1.0; p]
    });
    match (&w1, &mv) {
        (Some(w1), Some(mv)) if mv.dim() == w1.dim() => {
            d.w1_prev = w1.rows().into_iter().map(|r| weighted(r.iter().copied(), &ew)).collect();
            d.move_prev = mv.rows().into_iter().map(|r| weighted(r.iter().copied(), &ew)).collect();
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            d.ratio = d.w1_prev.iter().zip(&d.move_prev).map(|(&a, &b)| ratio(a, b)).collect();
            d.ratio_per_param = Some(ndarray::Zip::from(w1).and(mv).map_collect(|&a, &b| ratio(a, b)));
            // Over the last half, in step order, each row against the row before it (skip the
            // half's first row: its predecessor lies in the first half).
            let rows: Vec<usize> = res.order[half..].iter().skip(1).copied().collect();
            let sw: f64 = rows.iter().map(|&r| d.w1_prev[r]).filter(|v| v.is_finite()).sum();
            let sm: f64 = rows.iter().map(|&r| d.move_prev[r]).filter(|v| v.is_finite()).sum();
            d.half_ratio = ratio(sw, sm);
            d.half_path_rel = f64::NAN;
            let last = *res.order.last().unwrap();
            if let Some(q) = res.cube_row(Q, last).filter(|q| q.nrows() == p) {
                let ms = q.rows().into_iter().map(|r| rms_of_quantiles(&r.to_vec()).powi(2));
                d.half_path_rel = sm / weighted(ms, &ew).sqrt();
            }
            if !res.has("weights/per_param_mean_abs_move") {
                d.notes.push("no /weights/per_param_mean_abs_move".into());
            }
        }
        _ => d.notes.push(
            "no /weights/w1_prev with a matching /weights/per_param_mean_abs_move: the motion ratio is skipped"
                .into(),
        ),
    }
    match q {
        Some((qp, _)) if qp == p => {
            d.windows = windows(res, p, &ew);
            d.quantile_w1_error = w1
                .as_ref()
                .map(|w1| quantile_w1_error(res, p, &ew, w1))
                .unwrap_or(f64::NAN);
        }
        Some((qp, _)) => d.notes.push(format!(
            "/weights/quantiles holds {qp} tensors, /weights/w1_prev {p}: the window distances are skipped"
        )),
        None => d
            .notes
            .push("no /weights/quantiles: the window distances are skipped".into()),
    }
    (Some(d), None)
}

/// sqrt(integral_0^1 Q(u)^2 du), trapezoid over the stored levels: the RMS of the entries.
fn rms_of_quantiles(q: &[f64]) -> f64 {
    if q.len() < 2 {
        return f64::NAN;
    }
    let n = (q.len() - 1) as f64;
    let s: f64 = q
        .windows(2)
        .map(|w| 0.5 * (w[0] * w[0] + w[1] * w[1]))
        .sum();
    (s / n).sqrt()
}

/// The windows compared: first half vs second half, and consecutive quarters (with 4 or more
/// checkpoints), as positions in step order.
pub fn window_bounds(k: usize) -> Vec<(String, Span, Span)> {
    let mut out = vec![(
        "first half vs second half".to_string(),
        (0, k / 2),
        (k / 2, k),
    )];
    if k >= 4 {
        let b: Vec<usize> = (0..=4).map(|i| (i * k + 2) / 4).collect();
        for i in 0..3 {
            out.push((
                format!("quarter {} vs quarter {}", i + 1, i + 2),
                (b[i], b[i + 1]),
                (b[i + 1], b[i + 2]),
            ));
        }
    }
    out
}

fn windows(res: &Results, p: usize, ew: &[f64]) -> Vec<Window> {
    let bounds = window_bounds(res.rows);
    // per[w][j]: W1 of tensor j between the windows of comparison w; ms: mean square.
    let mut per = vec![vec![f64::NAN; p]; bounds.len()];
    let mut ms = vec![vec![f64::NAN; p]; bounds.len()];
    for j in 0..p {
        let Some(q) = res.cube_param("weights/quantiles", j) else {
            continue;
        };
        // The tensor's quantile function at each position in step order.
        let at: Vec<Vec<f64>> = res.order.iter().map(|&r| q.row(r).to_vec()).collect();
        for (w, (_, a, b)) in bounds.iter().enumerate() {
            let ra: Vec<&[f64]> = at[a.0..a.1].iter().map(|v| v.as_slice()).collect();
            let rb: Vec<&[f64]> = at[b.0..b.1].iter().map(|v| v.as_slice()).collect();
            per[w][j] = wasserstein::w1_windows(&ra, &rb);
            let sq: Vec<f64> = ra
                .iter()
                .chain(&rb)
                .map(|v| rms_of_quantiles(v).powi(2))
                .collect();
            ms[w][j] = stats::mean(&sq);
        }
    }
    bounds
        .into_iter()
        .zip(per.into_iter().zip(ms))
        .map(|((name, a, b), (per, ms))| Window {
            name,
            a,
            b,
            w1: weighted(per.iter().copied(), ew),
            rms: weighted(ms.iter().copied(), ew).sqrt(),
            w1_per_param: per,
        })
        .collect()
}

/// The median over rows of the relative difference between the entry-weighted W1 to the previous
/// row as the quantile model gives it ([`wasserstein::w1_windows`] of two single rows) and as
/// `probe grad` stored it exactly. Tells how far to trust the window distances: the quantile
/// model blurs each 1/256 slice of the mass, which matters most when the distributions are close.
fn quantile_w1_error(res: &Results, p: usize, ew: &[f64], exact: &Array2<f64>) -> f64 {
    let k = res.rows;
    let mut model = Array2::<f64>::from_elem((k, p), f64::NAN);
    for j in 0..p {
        let Some(q) = res.cube_param("weights/quantiles", j) else {
            continue;
        };
        for r in 1..k {
            let (a, b) = (q.row(r - 1).to_vec(), q.row(r).to_vec());
            model[[r, j]] = wasserstein::w1_windows(&[&a], &[&b]);
        }
    }
    let mut rel: Vec<f64> = (1..k)
        .map(|r| {
            let m = weighted(model.row(r).iter().copied(), ew);
            let e = weighted(exact.row(r).iter().copied(), ew);
            (m - e) / e
        })
        .filter(|v| v.is_finite())
        .collect();
    if rel.is_empty() {
        return f64::NAN;
    }
    rel.sort_by(|a, b| a.total_cmp(b));
    let n = rel.len();
    if n % 2 == 1 {
        rel[n / 2]
    } else {
        0.5 * (rel[n / 2 - 1] + rel[n / 2])
    }
}

fn edge_of_stability(
    res: &Results,
    lr: Option<f64>,
    half: usize,
) -> (Option<EdgeOfStability>, Option<String>) {
    let Some(top) = res.series("hessian/top") else {
        return (None, Some("no /hessian/top (probe grad --hessian)".into()));
    };
    let (lrs, source) = match (lr, res.lr()) {
        (Some(l), _) => (vec![l; res.rows], format!("--lr {l}")),
        (None, Some(v)) => (v, "/checkpoints/lr".to_string()),
        (None, None) => {
            return (
                None,
                Some("the learning rate is unknown (no finite /checkpoints/lr): pass --lr".into()),
            )
        }
    };
    let ratio: Vec<f64> = top.iter().zip(&lrs).map(|(t, l)| t * l / 2.0).collect();
    let h: Vec<f64> = res.order[half..]
        .iter()
        .map(|&r| ratio[r])
        .filter(|v| v.is_finite())
        .collect();
    (
        Some(EdgeOfStability {
            lr_source: source,
            lr: lrs,
            half_mean: stats::mean(&h),
            half_max: h.iter().copied().fold(f64::NAN, f64::max),
            ratio,
        }),
        None,
    )
}

/// A number in 4 significant digits, plain or in e-notation; "-" for NaN.
pub fn g(v: f64) -> String {
    if v.is_nan() {
        return "-".into();
    }
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let e = v.abs().log10().floor() as i32;
    if (-3..5).contains(&e) {
        format!("{:.*}", (3 - e).max(0) as usize, v)
    } else {
        format!("{v:.3e}")
    }
}

/// A fraction as a percentage: whole percent from 10%, one decimal from 1%, else 2 digits.
fn pct(v: f64) -> String {
    let p = 100.0 * v;
    if v.is_nan() {
        "-".into()
    } else if p.abs() >= 10.0 {
        format!("{p:.0}%")
    } else if p.abs() >= 1.0 {
        format!("{p:.1}%")
    } else if p == 0.0 {
        "0%".into()
    } else {
        format!(
            "{:.*}%",
            (1 - p.abs().log10().floor() as i32).max(0) as usize,
            p
        )
    }
}

impl Analysis {
    pub fn get(&self, name: &str) -> Option<&SeriesStats> {
        self.series.iter().find(|s| s.name == name)
    }

    /// The table of per-series numbers, as printed.
    pub fn table(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{}: {} checkpoints, {} {}..{}; last half: {} checkpoints from {}",
            self.path.display(),
            self.rows,
            if self.steps_known {
                "steps"
            } else {
                "rows (no steps recorded)"
            },
            self.steps.0,
            self.steps.1,
            self.rows - self.half,
            self.series.first().map(|s| s.half_steps.0).unwrap_or(0),
        )];
        out.push(format!(
            "{:<16} {:>10} {:>10} {:>10}  {:>31}  {:>8}  {:>8}  {:>14}",
            "series",
            "first",
            "last",
            "half mean",
            "slope per step [95% CI]",
            "change",
            "mean|d|",
            "KPSS (lags)"
        ));
        for s in &self.series {
            let ci = format!(
                "{} [{}, {}]",
                g(s.trend.slope),
                g(s.trend.slope_lo),
                g(s.trend.slope_hi)
            );
            let kpss = if s.kpss.stat.is_nan() {
                "-".to_string()
            } else {
                format!(
                    "{:.3} ({}){}",
                    s.kpss.stat,
                    s.kpss.lags,
                    if s.kpss.rejects_at_5pct() { "*" } else { "" }
                )
            };
            out.push(format!(
                "{:<16} {:>10} {:>10} {:>10}  {:>31}  {:>8}  {:>8}  {:>14}",
                s.label,
                g(s.first),
                g(s.last),
                g(s.half_mean),
                ci,
                pct(s.rel_change),
                pct(s.mean_abs_change_rel),
                kpss
            ));
        }
        out.push(
            "(over the last half: change = (last - half's first) / half's first; mean|d| = mean |x_k - x_{k-1}| / half mean; KPSS * = level stationarity rejected at 5%)"
                .into(),
        );
        out
    }

    /// The answers, one paragraph per question, each with the numbers behind it.
    pub fn verdict(&self) -> Vec<String> {
        let mut out = Vec::new();
        let few = self.rows - self.half < KPSS_FEW;
        for name in ["grad/l2", "grad_reg/l2"] {
            if let Some(s) = self.get(name) {
                out.push(self.gradient_verdict(s));
            }
        }
        if let Some(s) = self.get("loss") {
            out.push(self.loss_verdict(s));
        }
        match (&self.distribution, &self.distribution_skipped) {
            (Some(d), _) => out.push(self.distribution_verdict(d)),
            (None, Some(why)) => out.push(format!("Weight distribution: skipped: {why}.")),
            _ => {}
        }
        match (&self.eos, &self.eos_skipped) {
            (Some(e), _) => {
                let top = self
                    .get("hessian/top")
                    .map(|s| s.half_mean)
                    .unwrap_or(f64::NAN);
                let at = if e.half_mean >= 0.9 && e.half_mean <= 1.1 {
                    "at the edge of stability"
                } else if e.half_mean > 1.1 {
                    "above the edge of stability (GD on a quadratic this sharp would diverge)"
                } else {
                    "below the edge of stability"
                };
                out.push(format!(
                    "Edge of stability: lambda_max * lr / 2 = {} on average over the last half (max {}; lambda_max {} vs 2/lr {}, lr from {}): {at}. With heavy-ball momentum b the threshold is 2(1+b)/lr instead (e.g. {} for b = 0.9).",
                    g(e.half_mean),
                    g(e.half_max),
                    g(top),
                    g(2.0 / e.lr[*self.order.last().unwrap()]),
                    e.lr_source,
                    g(3.8 / e.lr[*self.order.last().unwrap()])
                ));
            }
            (None, Some(why)) if self.get("hessian/top").is_some() => {
                out.push(format!("Edge of stability: not compared: {why}."))
            }
            _ => {}
        }
        if few {
            out.push(format!(
                "Note: the last half holds {} checkpoints; KPSS has little power below {KPSS_FEW} (it rarely rejects), so lean on the slopes and levels.",
                self.rows - self.half
            ));
        }
        out
    }

    fn gradient_verdict(&self, s: &SeriesStats) -> String {
        // A start at initialization can be tiny: "65x the start" reads, "6499% of" does not.
        let of_start = |rel: f64| {
            if rel >= 2.0 {
                format!("{}x", g(rel))
            } else {
                format!("{} of", pct(rel))
            }
        };
        let rel = s.half_mean / s.first;
        let t = &s.trend;
        let span = (s.half_steps.1 - s.half_steps.0) as f64;
        let mut v = format!(
            "{} -> 0? {} at step {}, {} over the last half ({} the start), {} at the end; slope {} per step, 95% CI [{}, {}]",
            s.label,
            g(s.first),
            s.first_step,
            g(s.half_mean),
            of_start(rel),
            g(s.last),
            g(t.slope),
            g(t.slope_lo),
            g(t.slope_hi),
        );
        // Changes across the half, relative to its mean level: fitted, and the 95% CI's ends.
        let (fit, lo, hi) = s.ci_change();
        let answer = if t.slope.is_nan() {
            format!(
                ". Too few checkpoints in the last half ({}) for a trend: {}",
                s.half_n,
                if rel < 0.01 {
                    "it is near zero (under 1% of its start)"
                } else {
                    "it stays well above zero"
                }
            )
        } else if t.sign() < 0 {
            // Still falling: a straight line from the half's mean level at the fitted rate
            // (at the CI's slowest) would reach zero after level / |slope| more steps.
            format!(
                ". Not converged yet: still falling (fitted change across the half {}, CI [{}, {}]); at the fitted rate it would reach 0 in ~{} more steps ({}x the half's length), at the CI's slowest in ~{}",
                pct(fit),
                pct(lo),
                pct(hi),
                g(s.half_mean / -t.slope),
                g(s.half_mean / -t.slope / span.max(1.0)),
                g(s.half_mean / -t.slope_hi),
            )
        } else if t.sign() > 0 {
            format!(
                ". No: it is rising (fitted change across the half {}, CI [{}, {}]: the CI excludes a decline)",
                pct(fit),
                pct(lo),
                pct(hi)
            )
        } else if rel < 0.01 {
            ". Yes: flat (the CI includes 0) at under 1% of its start".to_string()
        } else {
            let horizon = if t.slope_lo < 0.0 {
                format!(
                    "; even the steepest decline the CI allows would take ~{} more steps ({}x the half) to reach 0",
                    g(s.half_mean / -t.slope_lo),
                    g(s.half_mean / -t.slope_lo / span.max(1.0))
                )
            } else {
                String::new()
            };
            format!(
                ". No: over the last half it stays at {} its start with no significant trend (fitted change across the half {}, CI [{}, {}]){horizon}",
                of_start(rel),
                pct(fit),
                pct(lo),
                pct(hi)
            )
        };
        v.push_str(&answer);
        v.push_str(&format!(
            "; checkpoint-to-checkpoint change {} of its level",
            pct(s.mean_abs_change_rel)
        ));
        if let Some(n) = self.get("noise/batch_var") {
            // |g|^2 against E|g_B - g|^2: below 1 the minibatch gradient is mostly noise.
            let snr = s.half_mean * s.half_mean / n.half_mean;
            v.push_str(&format!(
                "; |g|^2 / minibatch gradient variance = {} (last half)",
                g(snr)
            ));
        }
        if s.kpss.stat.is_finite() {
            v.push_str(&format!(
                "; KPSS {:.3} ({}): {}",
                s.kpss.stat,
                s.kpss.p_range(),
                if s.kpss.rejects_at_5pct() {
                    "level stationarity rejected at 5%"
                } else {
                    "not rejected at 5%"
                }
            ));
        }
        v.push('.');
        v
    }

    fn loss_verdict(&self, s: &SeriesStats) -> String {
        let t = &s.trend;
        let (fit, lo, hi) = s.ci_change();
        // Stable: no significant trend AND the CI bounds the change across the half to within
        // STABLE_WITHIN of the level (a flat fit through scattered points proves nothing).
        let bounded = lo.abs().max(hi.abs()) <= STABLE_WITHIN;
        let answer = if t.slope.is_nan() {
            "too few checkpoints in the last half for a trend".to_string()
        } else if t.sign() < 0 {
            "no: still decreasing".to_string()
        } else if t.sign() > 0 {
            "no: increasing".to_string()
        } else if !bounded {
            format!(
                "not established: no significant trend, but the checkpoints scatter too much to rule out a change of more than {} across the half",
                pct(STABLE_WITHIN)
            )
        } else if s.kpss.stat.is_finite() && s.kpss.rejects_at_5pct() {
            format!(
                "mostly: no trend beyond {} across the half, but KPSS rejects a constant level (it wanders)",
                pct(STABLE_WITHIN)
            )
        } else {
            format!(
                "yes: no trend beyond {} across the half",
                pct(STABLE_WITHIN)
            )
        };
        let mut v = format!(
            "Loss stabilized? {answer}. {} at step {}, {} over the last half, {} at the end; fitted change across the half {}, 95% CI [{}, {}] (slope {} per step, CI [{}, {}]); checkpoint-to-checkpoint change {} of its level",
            g(s.first),
            s.first_step,
            g(s.half_mean),
            g(s.last),
            pct(fit),
            pct(lo),
            pct(hi),
            g(t.slope),
            g(t.slope_lo),
            g(t.slope_hi),
            pct(s.mean_abs_change_rel)
        );
        if s.kpss.stat.is_finite() {
            v.push_str(&format!("; KPSS {:.3} ({})", s.kpss.stat, s.kpss.p_range()));
        }
        v.push('.');
        v
    }

    fn distribution_verdict(&self, d: &Distribution) -> String {
        let mut parts = Vec::new();
        if !d.ratio.is_empty() {
            parts.push(format!(
                "between consecutive checkpoints of the last half the weights moved {} per entry in total (mean |dw| summed; {} of their RMS), and W1 / mean|dw| = {}: {} of the motion changes the per-tensor distributions, the rest reshuffles values within them",
                g(self.half_sum(&d.move_prev)),
                pct(d.half_path_rel),
                g(d.half_ratio),
                pct(d.half_ratio)
            ));
        }
        let quarters: Vec<&Window> = d
            .windows
            .iter()
            .filter(|w| w.name.starts_with("quarter"))
            .collect();
        if let Some(h) = d.windows.first() {
            let calib = if d.quantile_w1_error.is_finite() {
                format!(
                    "; from the 257-level quantiles, whose W1 on consecutive checkpoints is off the exact value by {} (median of (quantile - exact) / exact)",
                    pct(d.quantile_w1_error)
                )
            } else {
                String::new()
            };
            parts.push(format!(
                "W1 first half vs second half {} ({} of the RMS weight {}{calib})",
                g(h.w1),
                pct(h.w1 / h.rms),
                g(h.rms)
            ));
        }
        if quarters.len() == 3 {
            parts.push(format!(
                "between consecutive quarters {} -> {} -> {} ({} -> {} -> {} of RMS)",
                g(quarters[0].w1),
                g(quarters[1].w1),
                g(quarters[2].w1),
                pct(quarters[0].w1 / quarters[0].rms),
                pct(quarters[1].w1 / quarters[1].rms),
                pct(quarters[2].w1 / quarters[2].rms)
            ));
        }
        // The rule: settled if the last quarter-to-quarter W1 is under 1/4 of the first one,
        // or under 1% of the RMS weight; moving if the last half's path per entry is over 4x
        // the distribution's last quarter-to-quarter W1.
        let answer = if quarters.len() == 3 {
            let (first, last) = (quarters[0].w1, quarters[2].w1);
            let settled = last <= 0.25 * first || last / quarters[2].rms < 0.01;
            let path = self.half_sum(&d.move_prev);
            let moving = !d.move_prev.is_empty() && path > 4.0 * last;
            match (settled, moving) {
                (true, true) => "yes: the distribution settled while the weights kept moving",
                (true, false) => "the distribution settled, and the weights moved little",
                (false, true) => {
                    "no: the distribution is still changing, and the weights keep moving"
                }
                (false, false) => "no: the distribution is still changing",
            }
        } else {
            "too few checkpoints for quarter windows"
        };
        let mut v = format!(
            "Weight distribution settled while the weights moved? {answer}: {}.",
            parts.join("; ")
        );
        for n in &d.notes {
            v.push_str(&format!(" ({n}.)"));
        }
        v
    }

    /// Sum over the last half's rows (step order, each against the row before it; the half's
    /// first row is left out) of a per-row column.
    fn half_sum(&self, v: &[f64]) -> f64 {
        self.order[self.half..]
            .iter()
            .skip(1)
            .map(|&r| v[r])
            .filter(|x| x.is_finite())
            .sum()
    }
}

fn str_attr(loc: &hdf5::Location, name: &str, value: &str) -> hdf5::Result<()> {
    let v: VarLenUnicode = value.parse().unwrap_or_default();
    loc.new_attr::<VarLenUnicode>()
        .create(name)?
        .write_scalar(&v)
}

/// Writes `/analysis` into `f`, replacing what an earlier run left there.
fn write(f: &hdf5::File, a: &Analysis, command_line: &str) -> Result<()> {
    let w = || -> hdf5::Result<()> {
        if f.link_exists("analysis") {
            f.unlink("analysis")?;
        }
        let g = f.create_group("analysis")?;
        str_attr(&g, "probe_version", env!("CARGO_PKG_VERSION"))?;
        str_attr(&g, "command_line", command_line)?;
        g.new_attr::<i64>()
            .create("rows")?
            .write_scalar(&(a.rows as i64))?;
        g.new_attr::<i64>()
            .create("half_start")?
            .write_scalar(&(a.half as i64))?;
        str_attr(&g, "missing", &a.missing.join("; "))?;
        str_attr(&g, "verdict", &a.verdict().join("\n"))?;
        let order: Vec<i64> = a.order.iter().map(|&r| r as i64).collect();
        g.new_dataset_builder().with_data(&order).create("order")?;

        let s = g.create_group("series")?;
        let names: Vec<VarLenUnicode> = a
            .series
            .iter()
            .map(|x| x.name.parse().unwrap_or_default())
            .collect();
        s.new_dataset_builder().with_data(&names).create("name")?;
        let col = |name: &str, f: &dyn Fn(&SeriesStats) -> f64| -> hdf5::Result<()> {
            let v: Vec<f64> = a.series.iter().map(f).collect();
            s.new_dataset_builder().with_data(&v).create(name)?;
            Ok(())
        };
        let icol = |name: &str, f: &dyn Fn(&SeriesStats) -> i64| -> hdf5::Result<()> {
            let v: Vec<i64> = a.series.iter().map(f).collect();
            s.new_dataset_builder().with_data(&v).create(name)?;
            Ok(())
        };
        icol("half_n", &|x| x.half_n as i64)?;
        icol("half_step_first", &|x| x.half_steps.0)?;
        icol("half_step_last", &|x| x.half_steps.1)?;
        col("first", &|x| x.first)?;
        col("last", &|x| x.last)?;
        col("half_start", &|x| x.half_start)?;
        col("half_mean", &|x| x.half_mean)?;
        col("slope", &|x| x.trend.slope)?;
        col("slope_se", &|x| x.trend.slope_se)?;
        col("slope_lo", &|x| x.trend.slope_lo)?;
        col("slope_hi", &|x| x.trend.slope_hi)?;
        col("intercept", &|x| x.trend.intercept)?;
        col("rel_change", &|x| x.rel_change)?;
        col("fit_change", &|x| x.ci_change().0)?;
        col("fit_change_lo", &|x| x.ci_change().1)?;
        col("fit_change_hi", &|x| x.ci_change().2)?;
        col("mean_abs_change", &|x| x.mean_abs_change)?;
        col("mean_abs_change_rel", &|x| x.mean_abs_change_rel)?;
        col("kpss_stat", &|x| x.kpss.stat)?;
        col("kpss_p", &|x| x.kpss.p)?;
        icol("kpss_lags", &|x| x.kpss.lags as i64)?;
        icol("kpss_reject_5pct", &|x| {
            if x.kpss.stat.is_nan() {
                -1
            } else {
                x.kpss.rejects_at_5pct() as i64
            }
        })?;

        if let Some(d) = &a.distribution {
            let dg = g.create_group("distribution")?;
            dg.new_attr::<i64>()
                .create("by_entries")?
                .write_scalar(&(d.by_entries as i64))?;
            str_attr(&dg, "notes", &d.notes.join("; "))?;
            if !d.ratio.is_empty() {
                dg.new_dataset_builder()
                    .with_data(&d.w1_prev)
                    .create("w1_prev")?;
                dg.new_dataset_builder()
                    .with_data(&d.move_prev)
                    .create("mean_abs_move")?;
                dg.new_dataset_builder()
                    .with_data(&d.ratio)
                    .create("ratio")?;
                if let Some(r) = &d.ratio_per_param {
                    dg.new_dataset_builder()
                        .with_data(r)
                        .create("ratio_per_param")?;
                }
                dg.new_attr::<f64>()
                    .create("half_ratio")?
                    .write_scalar(&d.half_ratio)?;
                dg.new_attr::<f64>()
                    .create("half_path_rel")?
                    .write_scalar(&d.half_path_rel)?;
                dg.new_attr::<f64>()
                    .create("quantile_w1_error")?
                    .write_scalar(&d.quantile_w1_error)?;
            }
            if !d.windows.is_empty() {
                let wg = dg.create_group("windows")?;
                let names: Vec<VarLenUnicode> = d
                    .windows
                    .iter()
                    .map(|w| w.name.parse().unwrap_or_default())
                    .collect();
                wg.new_dataset_builder().with_data(&names).create("name")?;
                let bounds: Vec<i64> = d
                    .windows
                    .iter()
                    .flat_map(|w| [w.a.0, w.a.1, w.b.0, w.b.1])
                    .map(|x| x as i64)
                    .collect();
                let bounds = Array2::from_shape_vec((d.windows.len(), 4), bounds).unwrap();
                wg.new_dataset_builder()
                    .with_data(&bounds)
                    .create("bounds")?;
                let w1: Vec<f64> = d.windows.iter().map(|w| w.w1).collect();
                let rms: Vec<f64> = d.windows.iter().map(|w| w.rms).collect();
                let rel: Vec<f64> = d.windows.iter().map(|w| w.w1 / w.rms).collect();
                wg.new_dataset_builder().with_data(&w1).create("w1")?;
                wg.new_dataset_builder().with_data(&rms).create("rms")?;
                wg.new_dataset_builder().with_data(&rel).create("w1_rel")?;
                let p = d.windows[0].w1_per_param.len();
                let per: Vec<f64> = d
                    .windows
                    .iter()
                    .flat_map(|w| w.w1_per_param.iter().copied())
                    .collect();
                let per = Array2::from_shape_vec((d.windows.len(), p), per).unwrap();
                wg.new_dataset_builder()
                    .with_data(&per)
                    .create("w1_per_param")?;
            }
        }
        if let Some(e) = &a.eos {
            let eg = g.create_group("edge_of_stability")?;
            str_attr(&eg, "lr_source", &e.lr_source)?;
            eg.new_dataset_builder().with_data(&e.lr).create("lr")?;
            eg.new_dataset_builder()
                .with_data(&e.ratio)
                .create("ratio")?;
        }
        f.flush()
    };
    w().map_err(|e| output(format!("{}: writing /analysis: {e}", a.path.display())))
}
