//! The statistics `probe analyze` applies to one series across checkpoints: an ordinary least
//! squares trend with a Student-t confidence interval, the KPSS level-stationarity test, and the
//! mean absolute change between consecutive checkpoints. Plain f64 code, no dependencies, so
//! every number can be checked by hand (the tests below do).

/// A straight line `y = intercept + slope * x` fitted by ordinary least squares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    pub n: usize,
    pub slope: f64,
    pub intercept: f64,
    /// Standard error of the slope: sqrt(s^2 / Sxx), s^2 = SSR / (n - 2).
    pub slope_se: f64,
    /// The 95% confidence interval of the slope: slope -/+ t_{0.975, n-2} * se.
    pub slope_lo: f64,
    pub slope_hi: f64,
}

impl Trend {
    /// Whether the 95% interval lies wholly below (-1), wholly above (+1) or across zero (0).
    pub fn sign(&self) -> i32 {
        if self.slope_hi < 0.0 {
            -1
        } else if self.slope_lo > 0.0 {
            1
        } else {
            0
        }
    }
}

/// OLS of `y` on `x`. Needs 3 points (one degree of freedom for the interval) and some spread
/// in `x`; otherwise every field but `n` is NaN.
pub fn ols(x: &[f64], y: &[f64]) -> Trend {
    let n = x.len().min(y.len());
    let nan = Trend {
        n,
        slope: f64::NAN,
        intercept: f64::NAN,
        slope_se: f64::NAN,
        slope_lo: f64::NAN,
        slope_hi: f64::NAN,
    };
    if n < 3 {
        return nan;
    }
    let (x, y) = (&x[..n], &y[..n]);
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let sxx: f64 = x.iter().map(|v| (v - mx) * (v - mx)).sum();
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    if sxx <= 0.0 || !sxx.is_finite() {
        return nan;
    }
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ssr: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| {
            let r = b - intercept - slope * a;
            r * r
        })
        .sum();
    let df = (n - 2) as f64;
    let se = (ssr / df / sxx).sqrt();
    let t = student_t_quantile(0.975, df);
    Trend {
        n,
        slope,
        intercept,
        slope_se: se,
        slope_lo: slope - t * se,
        slope_hi: slope + t * se,
    }
}

/// ln Gamma(x) for x > 0 (Lanczos, g = 7, 9 terms: ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Gamma(x) Gamma(1 - x) = pi / sin(pi x).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b), by its continued fraction (modified
/// Lentz), using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly.
pub fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(1.0 - x, b, a);
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp() / a;
    const TINY: f64 = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut f = d;
    for m in 1..500 {
        let m = m as f64;
        // Even step: m (b - m) x / ((a + 2m - 1)(a + 2m)); odd: -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)).
        for num in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + num * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + num / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * f
}

/// P(T <= t) for Student's t with `df` degrees of freedom:
/// for t >= 0, 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / (df + t * t), df / 2.0, 0.5);
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The p-quantile of Student's t (p in (0, 1)), by bisection on the CDF (60 halvings of a
/// bracket that grows until it holds the quantile: ~1e-12 absolute).
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    if p.is_nan() || p <= 0.0 || p >= 1.0 || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if p < 0.5 {
        return -student_t_quantile(1.0 - p, df);
    }
    let mut hi = 1.0;
    while student_t_cdf(hi, df) < p && hi < 1e12 {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-13 * hi.max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// KPSS critical values for level stationarity (Kwiatkowski, Phillips, Schmidt & Shin 1992,
/// table 1): the statistic exceeds these with probability 10%, 5%, 2.5% and 1% under the null.
pub const KPSS_CRITICAL: [(f64, f64); 4] =
    [(0.347, 0.10), (0.463, 0.05), (0.574, 0.025), (0.739, 0.01)];

/// The KPSS test of the null "the series is stationary around a constant level".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kpss {
    pub n: usize,
    /// Bartlett-window lags of the Newey-West long-run variance.
    pub lags: usize,
    pub stat: f64,
    /// The p-value interpolated linearly in the table [`KPSS_CRITICAL`] (as statsmodels does);
    /// clamped to [0.01, 0.10]: 0.10 means "0.10 or more", 0.01 "0.01 or less".
    pub p: f64,
}

impl Kpss {
    /// Rejects level stationarity at 5%.
    pub fn rejects_at_5pct(&self) -> bool {
        self.stat > KPSS_CRITICAL[1].0
    }
    /// The p-value as a range, e.g. "p > 0.10", "0.025 < p < 0.05", "p < 0.01".
    pub fn p_range(&self) -> String {
        if !self.stat.is_finite() {
            return "p undefined".into();
        }
        let c = KPSS_CRITICAL;
        if self.stat < c[0].0 {
            return format!("p > {}", c[0].1);
        }
        for w in c.windows(2) {
            if self.stat < w[1].0 {
                return format!("{} < p < {}", w[1].1, w[0].1);
            }
        }
        format!("p < {}", c[3].1)
    }
}

/// Schwert's lag rule floor(4 (n/100)^(1/4)), at most n - 1.
pub fn kpss_default_lags(n: usize) -> usize {
    ((4.0 * (n as f64 / 100.0).powf(0.25)).floor() as usize).min(n.saturating_sub(1))
}

/// KPSS level-stationarity statistic of `y` with `lags` Bartlett lags:
/// e_t = y_t - mean(y), S_t = e_1 + ... + e_t,
/// eta = sum_t S_t^2 / (n^2 sigma^2), with the long-run variance
/// sigma^2 = (1/n) [sum_t e_t^2 + 2 sum_{s=1}^{l} (1 - s/(l+1)) sum_{t>s} e_t e_{t-s}].
/// A constant series gives 0 (it is as level as can be). Needs 4 points, else NaN.
pub fn kpss(y: &[f64], lags: usize) -> Kpss {
    let n = y.len();
    let lags = lags.min(n.saturating_sub(1));
    if n < 4 {
        return Kpss {
            n,
            lags,
            stat: f64::NAN,
            p: f64::NAN,
        };
    }
    let mean = y.iter().sum::<f64>() / n as f64;
    let e: Vec<f64> = y.iter().map(|v| v - mean).collect();
    let mut s = 0.0;
    let mut ss = 0.0;
    for v in &e {
        s += v;
        ss += s * s;
    }
    let mut lrv: f64 = e.iter().map(|v| v * v).sum();
    for l in 1..=lags {
        let w = 1.0 - l as f64 / (lags as f64 + 1.0);
        let g: f64 = (l..n).map(|t| e[t] * e[t - l]).sum();
        lrv += 2.0 * w * g;
    }
    lrv /= n as f64;
    let stat = if lrv > 0.0 {
        ss / (n as f64 * n as f64) / lrv
    } else if ss == 0.0 {
        0.0
    } else {
        f64::NAN
    };
    Kpss {
        n,
        lags,
        stat,
        p: kpss_p(stat),
    }
}

/// Linear interpolation of the p-value in [`KPSS_CRITICAL`], clamped to the table's range.
pub fn kpss_p(stat: f64) -> f64 {
    if !stat.is_finite() {
        return f64::NAN;
    }
    let c = KPSS_CRITICAL;
    if stat <= c[0].0 {
        return c[0].1;
    }
    for w in c.windows(2) {
        let ((s0, p0), (s1, p1)) = (w[0], w[1]);
        if stat <= s1 {
            return p0 + (p1 - p0) * (stat - s0) / (s1 - s0);
        }
    }
    c[3].1
}

/// The mean of |y_k - y_{k-1}| over consecutive entries (NaN with fewer than 2).
pub fn mean_abs_change(y: &[f64]) -> f64 {
    if y.len() < 2 {
        return f64::NAN;
    }
    y.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (y.len() - 1) as f64
}

pub fn mean(y: &[f64]) -> f64 {
    if y.is_empty() {
        return f64::NAN;
    }
    y.iter().sum::<f64>() / y.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables() {
        // Two-sided 95% critical values from any t table.
        for (df, want) in [
            (1.0, 12.7062),
            (2.0, 4.3027),
            (3.0, 3.1824),
            (10.0, 2.2281),
            (30.0, 2.0423),
            (1000.0, 1.9623),
        ] {
            let got = student_t_quantile(0.975, df);
            assert!((got - want).abs() < 1e-4, "df {df}: {got} vs {want}");
        }
        // df = 1 is the Cauchy distribution: F(t) = 1/2 + atan(t)/pi.
        for t in [-3.0f64, -0.5, 0.0, 0.7, 5.0] {
            let want = 0.5 + f64::atan(t) / std::f64::consts::PI;
            assert!((student_t_cdf(t, 1.0) - want).abs() < 1e-12);
        }
        // df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
        for t in [-2.0f64, 0.3, 4.0] {
            let want = 0.5 + t / (2.0 * (2.0 + t * t).sqrt());
            assert!((student_t_cdf(t, 2.0) - want).abs() < 1e-12);
        }
    }

    #[test]
    fn ols_of_an_exact_line_and_a_hand_computed_fit() {
        let x = [0.0, 1.0, 2.0, 3.0, 4.0];
        let y: Vec<f64> = x.iter().map(|v| 2.0 - 0.5 * v).collect();
        let t = ols(&x, &y);
        assert!((t.slope + 0.5).abs() < 1e-14 && (t.intercept - 2.0).abs() < 1e-14);
        assert!(t.slope_se.abs() < 1e-14 && t.sign() == -1);
        // y = 1, 3, 2, 5: mean x 1.5, Sxx 5, Sxy = 5.5, slope 1.1, intercept 2.75 - 1.65 = 1.1;
        // residuals -0.1, 0.8, -1.3, 0.6: SSR 2.7, se = sqrt(2.7 / 2 / 5) = sqrt(0.27),
        // t_{0.975,2} = 4.302653: CI 1.1 -/+ 4.302653 * 0.5196152 = 1.1 -/+ 2.2357239.
        let t = ols(&[0.0, 1.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 5.0]);
        assert!((t.slope - 1.1).abs() < 1e-12);
        assert!((t.intercept - 1.1).abs() < 1e-12);
        assert!((t.slope_se - 0.27f64.sqrt()).abs() < 1e-12);
        assert!((t.slope_lo - (1.1 - 2.235_723_9)).abs() < 1e-6, "{t:?}");
        assert_eq!(t.sign(), 0);
        assert!(ols(&[1.0, 2.0], &[1.0, 2.0]).slope.is_nan());
        assert!(ols(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).slope.is_nan());
    }

    #[test]
    fn kpss_by_hand() {
        // y = 1, 2, 3, 4: e = -1.5, -0.5, 0.5, 1.5; S = -1.5, -2, -1.5, 0; sum S^2 = 8.5.
        // lags 0: sigma^2 = 5/4, eta = 8.5 / 16 / 1.25 = 0.425.
        let k = kpss(&[1.0, 2.0, 3.0, 4.0], 0);
        assert!((k.stat - 0.425).abs() < 1e-12, "{k:?}");
        // lags 1: gamma_1 sum = (-1.5)(-0.5) + (-0.5)(0.5) + (0.5)(1.5) = 1.25, weight 1/2:
        // sigma^2 = (5 + 2 * 0.5 * 1.25) / 4 = 1.5625, eta = 0.53125 / 1.5625 = 0.34.
        let k = kpss(&[1.0, 2.0, 3.0, 4.0], 1);
        assert!((k.stat - 0.34).abs() < 1e-12, "{k:?}");
        assert_eq!(k.p, 0.10);
        assert_eq!(k.p_range(), "p > 0.1");
        assert!(!k.rejects_at_5pct());
        assert_eq!(kpss(&[2.0; 6], 1).stat, 0.0);
        assert!(kpss(&[1.0, 2.0, 3.0], 1).stat.is_nan());
        assert_eq!(kpss_default_lags(100), 4);
        assert_eq!(kpss_default_lags(10), 2);
        assert_eq!(kpss_default_lags(3), 1);
        // Interpolated p between the 5% and 2.5% values.
        assert!((kpss_p(0.5185) - 0.0375).abs() < 1e-12);
        assert_eq!(kpss_p(2.0), 0.01);
    }

    #[test]
    fn mean_abs_change_by_hand() {
        assert_eq!(mean_abs_change(&[1.0, 3.0, 2.0, 2.0]), 1.0);
        assert!(mean_abs_change(&[1.0]).is_nan());
    }
}
