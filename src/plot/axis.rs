//! One axis of a panel: linear or log (log only where the data spans a decade or more), its
//! range padded around the data, and its ticks: at least 3 labelled values on every axis, round
//! ones (1, 2, 2.5, 5 times a power of ten), all labels of an axis written with the same number
//! of decimals.

/// A tick: where it is, and its label (`None`: a grid line only).
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub value: f64,
    pub label: Option<Label>,
}

/// A tick label: plain text, or a power of ten set as "10" with a raised exponent, or a
/// mantissa times one ("3x10" and the exponent).
#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    Text(String),
    Pow10(i32),
    Sci(String, i32),
}

#[derive(Debug, Clone)]
pub struct Axis {
    pub log: bool,
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<Tick>,
}

/// The ratio of largest to smallest value above which an axis is logarithmic: the data spans a
/// decade.
const LOG_SPAN: f64 = 10.0;

impl Axis {
    /// An axis for values in [min, max] (finite; positive ones only where `log_ok` asks for
    /// the log test), padded by `pad` of the span on each side, with about `want` labels (at
    /// least 3).
    pub fn fit(min: f64, max: f64, log_ok: bool, pad: f64, want: usize) -> Axis {
        let log = log_ok && min > 0.0 && max / min >= LOG_SPAN;
        let mut a = if log {
            let (l0, l1) = (min.ln(), max.ln());
            let p = pad * (l1 - l0);
            Axis {
                log,
                lo: (l0 - p).exp(),
                hi: (l1 + p).exp(),
                ticks: Vec::new(),
            }
        } else {
            let span = if max > min {
                max - min
            } else {
                // A constant: show it in the middle of +-10% (or +-0.1 around 0).
                0.2 * min.abs().max(0.5)
            };
            let mid = 0.5 * (min + max);
            let half = 0.5 * span + pad * span;
            Axis {
                log,
                lo: mid - half,
                hi: mid + half,
                ticks: Vec::new(),
            }
        };
        a.ticks = if log {
            log_ticks(a.lo, a.hi, want)
        } else {
            linear_ticks(a.lo, a.hi, want)
        };
        a
    }

    /// Grows the range upwards so the top `share` of it is free (room for a legend).
    pub fn grow_top(&mut self, share: f64, want: usize) {
        let (l0, l1) = (self.lin(self.lo), self.lin(self.hi));
        let l1 = l1 + (l1 - l0) * share / (1.0 - share);
        self.hi = self.unlin(l1);
        self.ticks = if self.log {
            log_ticks(self.lo, self.hi, want)
        } else {
            linear_ticks(self.lo, self.hi, want)
        };
    }

    /// The value's place along the axis, 0 at `lo` and 1 at `hi`.
    pub fn frac(&self, v: f64) -> f64 {
        let (a, b) = (self.lin(self.lo), self.lin(self.hi));
        (self.lin(v) - a) / (b - a)
    }

    fn lin(&self, v: f64) -> f64 {
        if self.log {
            v.ln()
        } else {
            v
        }
    }

    fn unlin(&self, v: f64) -> f64 {
        if self.log {
            v.exp()
        } else {
            v
        }
    }

    /// Whether `v` can be drawn on this axis (finite, and positive on a log axis).
    pub fn shows(&self, v: f64) -> bool {
        v.is_finite() && (!self.log || v > 0.0)
    }
}

/// Round steps 1, 2, 2.5, 5 times powers of ten, from large to small, starting above `span`.
fn nice_steps(span: f64) -> impl Iterator<Item = f64> {
    let top = span.log10().ceil() as i32 + 1;
    (0..40).flat_map(move |i| {
        let p = 10f64.powi(top - i);
        [5.0 * p, 2.5 * p, 2.0 * p, 1.0 * p]
    })
}

/// The first and last k with k * step in [lo, hi].
fn span_of(lo: f64, hi: f64, step: f64) -> (i64, i64) {
    (
        (lo / step - 1e-9).ceil() as i64,
        (hi / step + 1e-9).floor() as i64,
    )
}

/// How many multiples of `step` lie in [lo, hi].
fn count(lo: f64, hi: f64, step: f64) -> usize {
    let (a, b) = span_of(lo, hi, step);
    (b - a + 1).max(0) as usize
}

/// The multiples of `step` in [lo, hi].
fn multiples(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let (a, b) = span_of(lo, hi, step);
    (a..=b).map(|k| k as f64 * step).collect()
}

/// Labelled ticks on a linear axis: the largest step of 1, 2 or 5 times a power of ten that
/// gives `want` to `want + 3` of them (at least 3), else the largest round step (2.5 too)
/// giving at least `want`.
pub fn linear_ticks(lo: f64, hi: f64, want: usize) -> Vec<Tick> {
    let want = want.max(3);
    let n = |s: f64| count(lo, hi, s);
    // Steps from large to small, while they give few enough ticks to look at.
    let steps = || nice_steps(hi - lo).take_while(|&s| n(s) <= 4 * want);
    let step = steps()
        .filter(|s| {
            let m = s / 10f64.powi(s.log10().floor() as i32);
            (m - 2.5).abs() > 1e-9
        })
        .find(|&s| (want..=want + 3).contains(&n(s)))
        .or_else(|| steps().find(|&s| n(s) >= want))
        .unwrap_or((hi - lo) / want as f64);
    let values = multiples(lo, hi, step);
    let labels = linear_labels(&values, step);
    values
        .into_iter()
        .zip(labels)
        .map(|(value, l)| Tick {
            value,
            label: Some(Label::Text(l)),
        })
        .collect()
}

/// Labels of a linear axis's ticks, all with the decimals the step needs ("0.0, 0.5, 1.0");
/// thousands as "k" on axes reaching 10^4 with whole-thousand steps ("20k"); a shared power of
/// ten ("1.2e-9") for very large or very small values.
fn linear_labels(values: &[f64], step: f64) -> Vec<String> {
    let top = values.iter().fold(0f64, |m, v| m.max(v.abs()));
    if (1e4..1e7).contains(&top) && (step / 1000.0).fract() == 0.0 {
        return values
            .iter()
            .map(|v| {
                if *v == 0.0 {
                    "0".into()
                } else {
                    format!("{}k", v / 1000.0)
                }
            })
            .collect();
    }
    let fixed = |v: f64, d: usize| {
        let s = format!("{v:.d$}");
        // "-0.0" reads as a different number from "0.0".
        if s.trim_start_matches('-')
            .chars()
            .all(|c| c == '0' || c == '.')
        {
            s.trim_start_matches('-').to_string()
        } else {
            s
        }
    };
    if !(1e-3..1e6).contains(&top) {
        let e = top.log10().floor() as i32;
        let p = 10f64.powi(e);
        let d = decimals(step / p);
        return values
            .iter()
            .map(|&v| {
                if v == 0.0 {
                    "0".into()
                } else {
                    format!("{}e{e}", fixed(v / p, d))
                }
            })
            .collect();
    }
    let d = decimals(step);
    values.iter().map(|&v| fixed(v, d)).collect()
}

/// Decimals a round step needs: 0.25 needs 2, 0.5 needs 1, 20 needs 0.
fn decimals(step: f64) -> usize {
    (0..12)
        .find(|&d| {
            let x = step * 10f64.powi(d as i32);
            (x.round() - x).abs() <= 1e-6 * x.abs().max(1.0)
        })
        .unwrap_or(12)
}

/// Ticks of a log axis over [lo, hi]: labels at powers of ten where at least 3 fall in the
/// range (every n-th decade over many), else at 1-2-5 or 1-3 per decade, else at every integer
/// multiple; grid lines at every integer multiple of a power of ten. Labels far from 1 (below
/// 0.01 or from 10^4) are all set as powers of ten: "10^-3", "3x10^-4".
pub fn log_ticks(lo: f64, hi: f64, want: usize) -> Vec<Tick> {
    let within = |mults: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        for e in e0..=e1 {
            for m in mults {
                let v = m * 10f64.powi(e);
                if v >= lo * (1.0 - 1e-12) && v <= hi * (1.0 + 1e-12) {
                    out.push(v);
                }
            }
        }
        out
    };
    let all: Vec<f64> = (1..10).map(|m| m as f64).collect();
    let most = want.max(3) + 2;
    let mut major = within(&[1.0]);
    if major.len() > most {
        // Every n-th decade, those whose exponent is a multiple of n: 1e-6, 1e-3, 1, 1e3.
        let n = major.len().div_ceil(most) as i64;
        major.retain(|v| (v.log10().round() as i64).rem_euclid(n) == 0);
    }
    for mults in [&[1.0, 2.0, 5.0][..], &[1.0, 3.0][..], &all[..]] {
        if major.len() >= 3 {
            break;
        }
        let m = within(mults);
        if m.len() > major.len() && (m.len() <= most || mults == &all[..]) {
            major = m;
        }
    }
    let far = major.iter().any(|v| *v < 1e-2 || *v >= 1e4);
    let mut ticks: Vec<Tick> = within(&all)
        .into_iter()
        .map(|value| Tick { value, label: None })
        .collect();
    for t in &mut ticks {
        if major.iter().any(|m| (m / t.value - 1.0).abs() < 1e-9) {
            let e = t.value.log10().floor() as i32;
            let m = (t.value / 10f64.powi(e) * 1e6).round() / 1e6;
            t.label = Some(match (far, m == 1.0) {
                (true, true) => Label::Pow10(e),
                (true, false) => Label::Sci(format!("{m}"), e),
                (false, _) => Label::Text(short(t.value)),
            });
        }
    }
    ticks
}

/// A value in at most 4 significant digits, no trailing zeros; e-notation outside [1e-3, 1e5).
pub fn short(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let e = v.abs().log10().floor() as i32;
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if (-3..5).contains(&e) {
        trim(format!("{:.*}", (3 - e).max(0) as usize, v))
    } else {
        let m = v / 10f64.powi(e);
        format!("{}e{e}", trim(format!("{m:.2}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(t: &[Tick]) -> Vec<String> {
        t.iter()
            .filter_map(|t| match &t.label {
                Some(Label::Text(s)) => Some(s.clone()),
                Some(Label::Pow10(e)) => Some(format!("10^{e}")),
                Some(Label::Sci(m, e)) => Some(format!("{m}x10^{e}")),
                None => None,
            })
            .collect()
    }

    #[test]
    fn short_labels() {
        for (v, want) in [
            (400.0, "400"),
            (0.8, "0.8"),
            (0.0005, "5e-4"),
            (1.0, "1"),
            (12345.0, "12345"),
            (2.5e6, "2.5e6"),
            (0.123456, "0.1235"),
            (0.0, "0"),
        ] {
            assert_eq!(short(v), want);
        }
    }

    #[test]
    fn every_axis_has_three_labels_or_more() {
        // Narrow, wide, tiny, huge, constant, negative; linear and log.
        for (a, b) in [
            (0.30, 0.45),
            (0.2977, 0.2978),
            (0.0, 750.0),
            (1.0, 1.0),
            (0.0, 0.0),
            (-3.0, -2.9),
            (2.3, 0.28),
            (1e-6, 1e3),
            (0.05, 30.0),
            (5.0, 500.0),
            (12.0, 130.0),
            (1e-9, 2e-9),
            (0.0, 200_000.0),
            (0.0, 60.0),
            (0.12, 0.89),
            (13.0, 88.0),
            (-7.3, 41.9),
            (-7.5822, 9.0592),
        ] {
            let (lo, hi) = (f64::min(a, b), f64::max(a, b));
            for log_ok in [false, true] {
                let ax = Axis::fit(lo, hi, log_ok, 0.05, 4);
                let l = labels(&ax.ticks);
                assert!(l.len() >= 3, "[{lo}, {hi}] log {}: {l:?}", ax.log);
                assert!(l.len() <= 9, "[{lo}, {hi}] log {}: {l:?}", ax.log);
                for t in &ax.ticks {
                    assert!(t.value >= ax.lo * 0.999999 && t.value <= ax.hi * 1.000001 || !ax.log);
                    assert!(ax.log || (t.value >= ax.lo - 1e-12 && t.value <= ax.hi + 1e-12));
                }
                let mut dedup = l.clone();
                dedup.dedup();
                assert_eq!(dedup, l, "labels repeat: {l:?}");
            }
        }
    }

    #[test]
    fn log_only_over_a_decade() {
        assert!(!Axis::fit(0.3, 2.3, true, 0.05, 4).log);
        assert!(Axis::fit(0.05, 30.0, true, 0.05, 4).log);
        assert!(!Axis::fit(0.05, 30.0, false, 0.05, 4).log);
    }

    #[test]
    fn linear_labels_share_decimals() {
        assert_eq!(
            labels(&linear_ticks(-0.04, 1.04, 4)),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
        );
        assert_eq!(
            labels(&linear_ticks(0.0, 200.0, 4)),
            ["0", "50", "100", "150", "200"]
        );
        assert_eq!(
            labels(&linear_ticks(0.0, 200_000.0, 4)),
            ["0", "50k", "100k", "150k", "200k"]
        );
        assert_eq!(
            labels(&linear_ticks(0.29, 0.46, 4)),
            ["0.30", "0.35", "0.40", "0.45"]
        );
    }

    #[test]
    fn log_labels_are_decades_or_1_2_5() {
        assert_eq!(labels(&log_ticks(0.15, 2.5, 4)), ["0.2", "0.5", "1", "2"]);
        assert_eq!(labels(&log_ticks(0.05, 30.0, 4)), ["0.1", "1", "10"]);
        // Two decades: 1-2-5 would be 7 labels, 1-3 gives 5; far from 1, all as powers.
        assert_eq!(
            labels(&log_ticks(1.6e-4, 0.035, 4)),
            ["3x10^-4", "10^-3", "3x10^-3", "10^-2", "3x10^-2"]
        );
        assert_eq!(
            labels(&log_ticks(1e-6, 1e3, 4)),
            ["10^-6", "10^-4", "10^-2", "10^0", "10^2"]
        );
    }
}
