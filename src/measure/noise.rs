//! Gradient noise at a checkpoint (`probe grad --noise`): how far the gradients SGD actually
//! follows are from the full gradient g.
//!
//! **Minibatches** (at `--batch` B, in the pass's fixed partition, b = 1..K batches): with g_b the
//! gradient of batch b's mean loss,
//!
//! ```text
//! mean_b |g_b|^2                      (/noise/batch_sq_mean)
//! mean_b |g_b - g|^2 = mean_b |g_b|^2 - 2 g . mean_b g_b + |g|^2      (/noise/batch_var)
//! ```
//!
//! The identity is exact (no sampling) and lets the same data pass that computes g collect
//! sum_b |g_b|^2 and sum_b g_b, so no second pass is needed; when every batch has the same size
//! mean_b g_b = g and it reduces to mean_b |g_b|^2 - |g|^2. Sums are in f64.
//!
//! **Per sample**: with g_i the gradient of sample i's loss (mean over its target elements), the
//! trace of the per-sample gradient covariance over the first n samples S (all by default),
//!
//! ```text
//! tr Sigma = (1/n) sum_{i in S} |g_i - gbar_S|^2 = (1/n) sum_i |g_i - g|^2 - |gbar_S - g|^2,
//! ```
//!
//! computed around the full gradient g (known from the first pass), so no large mean is
//! subtracted from another (with S the whole data set, gbar_S = g and the correction is 0).
//! Per-sample gradients come from the same gradient graph run on batches of one sample: exact,
//! and valid for any model whose samples do not interact (BatchNorm in eval mode). The
//! gradient-noise scale B_noise = tr Sigma / |g|^2 (McCandlish et al. 2018, "B_simple") is the
//! batch size at which minibatch noise and signal are of equal size.
use super::engine::BatchEngine;
use crate::data::Dataset;
use crate::progress::Progress;
use anyhow::{Context, Result};

#[derive(Debug, Clone)]
pub struct NoiseOptions {
    /// Per-sample part over the first this many samples; `Some(0)` skips it; `None`: all.
    pub samples: Option<usize>,
}

/// Minibatch sums collected during the gradient pass.
#[derive(Debug, Clone)]
pub struct BatchSums {
    pub batches: usize,
    /// sum_b |g_b,p|^2 per parameter.
    pub sq: Vec<f64>,
    /// sum_b g_b,p per parameter.
    pub sum: Vec<Vec<f64>>,
}

impl BatchSums {
    pub fn new(like: &[Vec<f64>]) -> BatchSums {
        BatchSums {
            batches: 0,
            sq: vec![0.0; like.len()],
            sum: like.iter().map(|v| vec![0.0; v.len()]).collect(),
        }
    }
    /// Adds one batch, given the gradient of its *summed* loss over `elements` target elements.
    pub fn add(&mut self, summed: &[Vec<f32>], elements: f64) {
        for (p, g) in summed.iter().enumerate() {
            let mut sq = 0.0;
            for (s, &x) in self.sum[p].iter_mut().zip(g) {
                let gb = x as f64 / elements;
                *s += gb;
                sq += gb * gb;
            }
            self.sq[p] += sq;
        }
        self.batches += 1;
    }
    /// Adds the sums over the batches that follow (the next data shard's).
    pub fn add_sums(&mut self, next: &BatchSums) {
        self.batches += next.batches;
        for (a, b) in self.sq.iter_mut().zip(&next.sq) {
            *a += b;
        }
        for (a, b) in self.sum.iter_mut().zip(&next.sum) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }
    /// Per parameter: (mean_b |g_b,p|^2, mean_b |g_b,p - g_p|^2), given the full gradient g.
    pub fn finish(&self, g: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
        let k = self.batches.max(1) as f64;
        let mut sq_mean = Vec::with_capacity(g.len());
        let mut var = Vec::with_capacity(g.len());
        for (p, gp) in g.iter().enumerate() {
            let m = self.sq[p] / k;
            let cross: f64 = gp.iter().zip(&self.sum[p]).map(|(a, b)| a * b / k).sum();
            let gg: f64 = gp.iter().map(|x| x * x).sum();
            sq_mean.push(m);
            // Rounding can leave a tiny negative where the variance is ~0.
            var.push((m - 2.0 * cross + gg).max(0.0));
        }
        (sq_mean, var)
    }
}

/// The per-sample part: tr Sigma per parameter over the first `n` samples.
#[derive(Debug, Clone)]
pub struct SampleNoise {
    pub samples: usize,
    pub per_param: Vec<f64>,
}

impl SampleNoise {
    pub fn trace(&self) -> f64 {
        self.per_param.iter().sum()
    }
}

pub fn per_sample(
    engine: &mut dyn BatchEngine,
    data: &mut dyn Dataset,
    n: usize,
    g: &[Vec<f64>],
    label: &str,
    quiet: bool,
) -> Result<SampleNoise> {
    let spec = data.spec().clone();
    let n = n.min(spec.len);
    let per: f64 = spec.y_shape.iter().product::<usize>().max(1) as f64;
    let mut progress = Progress::new(&format!("{label} per-sample"), n as u64, quiet);
    let mut sq = vec![0f64; g.len()];
    let mut dev: Vec<Vec<f64>> = g.iter().map(|v| vec![0.0; v.len()]).collect();
    for i in 0..n {
        let b = data.read(i, 1)?;
        let r = engine
            .batch(&b)
            .with_context(|| format!("per-sample gradient of sample {i}"))?;
        for (p, gi) in r.grads.iter().enumerate() {
            let mut s = 0.0;
            for ((d, &x), &gf) in dev[p].iter_mut().zip(gi).zip(&g[p]) {
                let e = x as f64 / per - gf;
                *d += e;
                s += e * e;
            }
            sq[p] += s;
        }
        progress.inc(1);
    }
    progress.finish();
    let nn = n.max(1) as f64;
    let per_param: Vec<f64> = sq
        .iter()
        .zip(&dev)
        .map(|(s, d)| {
            let shift: f64 = d.iter().map(|x| (x / nn) * (x / nn)).sum();
            (s / nn - shift).max(0.0)
        })
        .collect();
    if per_param.iter().any(|x| !x.is_finite()) {
        return Err(crate::error::non_finite(
            "non-finite per-sample gradient".to_string(),
        ));
    }
    Ok(SampleNoise {
        samples: n,
        per_param,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_identity_matches_direct_sum() {
        // Three batches of different sizes (2, 2, 1 elements), one parameter of 3 entries.
        let batches: Vec<(Vec<f32>, f64)> = vec![
            (vec![1.0, -2.0, 0.5], 2.0),
            (vec![0.25, 4.0, -1.0], 2.0),
            (vec![3.0, 0.0, 1.5], 1.0),
        ];
        let mut s = BatchSums::new(&[vec![0.0; 3]]);
        let mut total = vec![0.0f64; 3];
        for (g, m) in &batches {
            s.add(&[g.clone()], *m);
            for (t, &x) in total.iter_mut().zip(g) {
                *t += x as f64;
            }
        }
        let g: Vec<f64> = total.iter().map(|t| t / 5.0).collect();
        let (sq, var) = s.finish(&[g.clone()]);
        let direct_var: f64 = batches
            .iter()
            .map(|(gb, m)| {
                gb.iter()
                    .zip(&g)
                    .map(|(&x, y)| (x as f64 / m - y).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 3.0;
        let direct_sq: f64 = batches
            .iter()
            .map(|(gb, m)| gb.iter().map(|&x| (x as f64 / m).powi(2)).sum::<f64>())
            .sum::<f64>()
            / 3.0;
        assert!((var[0] - direct_var).abs() < 1e-12 * direct_var);
        assert!((sq[0] - direct_sq).abs() < 1e-12 * direct_sq);
    }
}
