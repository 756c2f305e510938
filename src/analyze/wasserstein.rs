//! The 1-Wasserstein distance between *windows* of checkpoints, from the quantile functions
//! `probe grad` stores (`/weights/quantiles`: 257 levels u_j = j/256 per tensor and row).
//!
//! Each stored quantile function Q (piecewise linear between the levels, as numpy's default
//! interpolation of order statistics makes it) is read as a distribution in its own right: its
//! CDF F is the inverse of Q, piecewise linear between consecutive quantiles (mass 1/256 spread
//! evenly over [Q(u_j), Q(u_{j+1})]; a flat stretch Q(u_j) = Q(u_{j+1}) is an atom of 1/256).
//! A window of checkpoints is the mixture of its members: F_A = mean of the members' F. Then
//!
//!   W1(A, B) = integral |F_A(x) - F_B(x)| dx,
//!
//! which this module integrates **exactly** for that piecewise-linear model: F_A - F_B is linear
//! between the union of all members' quantiles, so a sweep over those points (sorted once) sums
//! the area of |linear| pieces in closed form, splitting a piece where it crosses zero. The only
//! approximation is the 257-level quantile function itself: within a 1/256 slice of the mass,
//! the entries are taken as spread evenly, which moves no mass across slices. For two single
//! checkpoints this gives integral_0^1 |Q_A(u) - Q_B(u)| du of the interpolated quantile functions.

/// One member of a window: its quantiles at equally spaced levels 0, 1/(m-1), ..., 1, and its
/// weight in the mixture.
struct Member<'a> {
    q: &'a [f64],
    weight: f64,
}

/// Events of one side of the sweep: at `x`, the CDF's slope changes by `dslope` and it jumps by
/// `jump`.
fn events(members: &[Member], sign: f64, out: &mut Vec<(f64, f64, f64)>) {
    for m in members {
        let levels = m.q.len() - 1;
        let mass = m.weight / levels as f64;
        // Slices narrower than this (relative to the member's range) are atoms: their slopes
        // would be huge and cancel badly in the running sum.
        let span = (m.q[levels] - m.q[0]).abs();
        let tiny = span * 1e-12;
        for j in 0..levels {
            let (a, b) = (m.q[j], m.q[j + 1]);
            let h = b - a;
            if h > tiny && h > 0.0 {
                let s = sign * mass / h;
                out.push((a, s, 0.0));
                out.push((b, -s, 0.0));
            } else {
                out.push((a, 0.0, sign * mass));
            }
        }
    }
}

/// W1 between the mixtures of `a` and `b` (each a list of quantile functions at the same number
/// of equally spaced levels, at least 2). Members holding a non-finite value are left out of
/// their window; an empty window gives NaN.
pub fn w1_windows(a: &[&[f64]], b: &[&[f64]]) -> f64 {
    let keep = |side: &[&[f64]]| -> Vec<Vec<f64>> {
        side.iter()
            .filter(|q| q.len() >= 2 && q.iter().all(|v| v.is_finite()))
            .map(|q| {
                // Quantiles are non-decreasing; enforce it against last-bit noise.
                let mut q = q.to_vec();
                for j in 1..q.len() {
                    if q[j] < q[j - 1] {
                        q[j] = q[j - 1];
                    }
                }
                q
            })
            .collect()
    };
    let (ka, kb) = (keep(a), keep(b));
    if ka.is_empty() || kb.is_empty() {
        return f64::NAN;
    }
    fn side(k: &[Vec<f64>]) -> Vec<Member<'_>> {
        let w = 1.0 / k.len() as f64;
        k.iter().map(|q| Member { q, weight: w }).collect()
    }
    let mut ev = Vec::new();
    events(&side(&ka), 1.0, &mut ev);
    events(&side(&kb), -1.0, &mut ev);
    ev.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Sweep: between events D = F_A - F_B is linear with slope `slope`.
    let (mut d, mut slope, mut area) = (0.0f64, 0.0f64, 0.0f64);
    let mut x_prev = ev[0].0;
    for &(x, ds, jump) in &ev {
        let h = x - x_prev;
        if h > 0.0 {
            let d1 = d + slope * h;
            area += abs_linear_area(d, d1, h);
            d = d1;
            x_prev = x;
        }
        slope += ds;
        d += jump;
    }
    area
}

/// integral over [0, h] of |d0 + (d1 - d0) t / h| dt.
fn abs_linear_area(d0: f64, d1: f64, h: f64) -> f64 {
    if d0 * d1 >= 0.0 {
        0.5 * h * (d0.abs() + d1.abs())
    } else {
        // Crosses zero at t = h |d0| / (|d0| + |d1|): two triangles.
        0.5 * h * (d0 * d0 + d1 * d1) / (d0.abs() + d1.abs())
    }
}

/// Quantiles at `levels` equally spaced levels of the entries `v`, by numpy's default
/// (linear interpolation between order statistics): what `/weights/quantiles` holds.
pub fn quantiles(v: &[f64], levels: usize) -> Vec<f64> {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    (0..levels)
        .map(|j| {
            let pos = j as f64 / (levels - 1) as f64 * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(lo: f64, hi: f64) -> Vec<f64> {
        (0..=256)
            .map(|j| lo + (hi - lo) * j as f64 / 256.0)
            .collect()
    }

    #[test]
    fn w1_between_uniform_distributions_in_closed_form() {
        // U[0,1] vs U[0,2]: integral_0^1 (x - x/2) dx + integral_1^2 (1 - x/2) dx = 1/4 + 1/4.
        let (a, b) = (uniform(0.0, 1.0), uniform(0.0, 2.0));
        assert!((w1_windows(&[&a], &[&b]) - 0.5).abs() < 1e-12);
        // A shift by c costs exactly c, whatever the shape.
        let c = uniform(0.3, 1.3);
        assert!((w1_windows(&[&a], &[&c]) - 0.3).abs() < 1e-12);
        assert!(w1_windows(&[&a], &[&a]).abs() < 1e-15);
        // Mixtures: A = {U[0,1], U[0,1]}, B = {U[0,2], U[0,3]}. F_A >= F_B everywhere, so
        // W1 = mean(B) - mean(A) = (1 + 1.5)/2 - 0.5 = 0.75.
        let d = uniform(0.0, 3.0);
        assert!((w1_windows(&[&a, &a], &[&b, &d]) - 0.75).abs() < 1e-12);
        // Crossing CDFs: U[0,2] vs U[0.5,1.5] (same mean): integral |F_A - F_B| =
        // 2 * (integral_0^0.5 x/2 dx + integral_0.5^1 (x/2 - (x - 0.5)) dx) = 2 * (1/16 + 1/16).
        let e = uniform(0.5, 1.5);
        assert!((w1_windows(&[&b], &[&e]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn w1_with_atoms_and_against_sorted_samples() {
        // Two point masses: delta_0 vs delta_1 (all quantiles equal) is 1 apart.
        let (z, o) = (vec![0.0; 257], vec![1.0; 257]);
        assert!((w1_windows(&[&z], &[&o]) - 1.0).abs() < 1e-12);
        // The mixture {delta_0, delta_1} vs delta_0.5: 0.5.
        let h = vec![0.5; 257];
        assert!((w1_windows(&[&z, &o], &[&h]) - 0.5).abs() < 1e-12);
        // Single windows reduce to integral_0^1 |Q_A - Q_B| du of the interpolated quantile
        // functions: check that against the trapezoid rule on a fine subdivision.
        let va: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f64 / 1000.0)
            .collect();
        let vb: Vec<f64> = (0..800)
            .map(|i| (i as f64 / 800.0).powi(2) * 1.3 - 0.2)
            .collect();
        let (qa, qb) = (quantiles(&va, 257), quantiles(&vb, 257));
        let mut want = 0.0;
        let sub = 64;
        for j in 0..256 {
            for s in 0..sub {
                let t0 = s as f64 / sub as f64;
                let t1 = (s + 1) as f64 / sub as f64;
                let at = |t: f64| {
                    let a = qa[j] + (qa[j + 1] - qa[j]) * t;
                    let b = qb[j] + (qb[j + 1] - qb[j]) * t;
                    (a - b).abs()
                };
                want += 0.5 * (at(t0) + at(t1)) / (256 * sub) as f64;
            }
        }
        let got = w1_windows(&[&qa], &[&qb]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!(w1_windows(&[], &[&qb]).is_nan());
    }

    #[test]
    fn quantiles_like_numpy() {
        // numpy.quantile([3, 1, 2, 10], [0, 1/3, 2/3, 1]) = [1, 2, 3, 10].
        let q = quantiles(&[3.0, 1.0, 2.0, 10.0], 4);
        assert_eq!(q, vec![1.0, 2.0, 3.0, 10.0]);
        // numpy.quantile([0, 10], 0.25) = 2.5.
        assert_eq!(quantiles(&[0.0, 10.0], 5)[1], 2.5);
    }
}
