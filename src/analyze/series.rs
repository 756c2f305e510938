//! Series statistics: each scalar series of a results file (loss, accuracy, |g|, ...) over the
//! last half of the checkpoints in step order, the OLS trend with its 95% interval
//! ([`stats::ols`]), the relative and mean absolute changes and the KPSS test ([`stats::kpss`]);
//! and the edge-of-stability series, the top Hessian eigenvalue against 2/lr.
use super::results::Results;
use super::stats::{self, Kpss, Trend};

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

#[derive(Debug, Clone)]
pub struct EdgeOfStability {
    pub lr_source: String,
    /// Heavy-ball momentum b (0 for plain SGD or when unknown): the threshold is 2(1+b)/lr.
    pub momentum: f64,
    /// Whether the momentum came from the file (the checkpoints' optimizer metadata).
    pub momentum_known: bool,
    /// Per row (file order): lr and hessian/top * lr / 2 (1 = at the edge).
    pub lr: Vec<f64>,
    pub ratio: Vec<f64>,
    pub half_mean: f64,
    pub half_max: f64,
}

/// The statistics of one series (values in step order) over positions `half..`.
pub fn series_stats(
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

pub fn edge_of_stability(
    res: &Results,
    lr: Option<f64>,
    half: usize,
) -> (Option<EdgeOfStability>, Option<String>) {
    let Some(top) = res.series("hessian/top") else {
        return (None, Some("no /hessian/top (probe grad --hessian)".into()));
    };
    if let Some(o) = res.optimizer.as_ref().filter(|o| o.adaptive()) {
        return (
            None,
            Some(format!(
                "the checkpoints were trained with {}, whose steps are preconditioned: its edge of stability \
                 is on the preconditioned sharpness (the top eigenvalue of P^-1 H, P = diag(sqrt(v)+eps); \
                 Cohen et al. 2022), not on lambda_max of H, which probe measures; 2/lr does not apply",
                o.kind
            )),
        );
    }
    let (momentum, momentum_known) = match res.optimizer.as_ref().and_then(|o| o.momentum) {
        Some(b) => (b, true),
        None => (0.0, false),
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
    // lambda_max against the threshold 2(1+b)/lr of heavy-ball GD on a quadratic: 1 = at the edge.
    let ratio: Vec<f64> = top
        .iter()
        .zip(&lrs)
        .map(|(t, l)| t * l / (2.0 * (1.0 + momentum)))
        .collect();
    let h: Vec<f64> = res.order[half..]
        .iter()
        .map(|&r| ratio[r])
        .filter(|v| v.is_finite())
        .collect();
    (
        Some(EdgeOfStability {
            lr_source: source,
            momentum,
            momentum_known,
            lr: lrs,
            half_mean: stats::mean(&h),
            half_max: h.iter().copied().fold(f64::NAN, f64::max),
            ratio,
        }),
        None,
    )
}
