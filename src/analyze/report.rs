//! The report's prose: the table of per-series numbers and the verdict, one paragraph per
//! question, each with the numbers behind it (did |g| go to zero, did the loss settle, did the
//! weight distribution settle while the weights kept moving, where the sharpness stands against
//! 2/lr), and the number formats they use.
use super::analysis::Analysis;
use super::distribution::{Distribution, Window};
use super::series::SeriesStats;

/// Below this many checkpoints in the last half, KPSS has little power (it rarely rejects
/// whatever the series does): the verdict says so.
pub const KPSS_FEW: usize = 10;

/// The loss counts as stable when its 95% slope interval, carried across the last half, keeps
/// the change within this fraction of its level.
pub const STABLE_WITHIN: f64 = 0.05;

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
                let lr = e.lr[*self.order.last().unwrap()];
                let b = e.momentum;
                out.push(if e.momentum_known {
                    format!(
                        "Edge of stability: lambda_max * lr / (2(1+b)) = {} on average over the last half (max {}; lambda_max {} vs 2(1+b)/lr {} for the checkpoints' momentum b = {b}, lr from {}): {at}.",
                        g(e.half_mean),
                        g(e.half_max),
                        g(top),
                        g(2.0 * (1.0 + b) / lr),
                        e.lr_source,
                    )
                } else {
                    format!(
                        "Edge of stability: lambda_max * lr / 2 = {} on average over the last half (max {}; lambda_max {} vs 2/lr {}, lr from {}): {at}. The file does not say the optimizer: with heavy-ball momentum b the threshold is 2(1+b)/lr instead (e.g. {} for b = 0.9).",
                        g(e.half_mean),
                        g(e.half_max),
                        g(top),
                        g(2.0 / lr),
                        e.lr_source,
                        g(3.8 / lr)
                    )
                });
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
        // Only for |g| itself: the variance is of the loss's minibatch gradients, not of the
        // regularized objective's.
        if let Some(n) = self.get("noise/batch_var").filter(|_| s.name == "grad/l2") {
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
