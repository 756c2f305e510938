//! Distributions: how the weights' per-tensor distributions move across checkpoints, from the
//! schema-2 weight columns. Between consecutive checkpoints, W1 / mean |dw| (in [0, 1]) says how
//! much of the weights' motion changes their distribution; between windows of checkpoints
//! (halves, quarters), W1 comes from the stored quantile functions ([`wasserstein`]).
use super::results::Results;
use super::{stats, wasserstein};
use ndarray::Array2;

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

pub fn distribution(res: &Results, half: usize) -> (Option<Distribution>, Option<String>) {
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
