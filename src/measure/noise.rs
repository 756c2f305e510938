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

/// Minibatch sums collected during the gradient pass, kept so that the sums of consecutive
/// runs of batches (data shards) add up to the sums of the whole pass, not only up to rounding:
/// sum_b g_b is kept as the sum of the batches' summed-loss gradients (f32 values added in
/// f64, like the full gradient) per batch size, divided only at the end; sum_b |g_b,p|^2 in
/// double-double ([`Dd`]), whose 106 bits make the order of the additions invisible after the
/// final rounding to f64.
#[derive(Debug, Clone)]
pub struct BatchSums {
    pub batches: usize,
    /// sum_b |g_b,p|^2 per parameter.
    pub sq: Vec<Dd>,
    /// Per distinct batch size E (target elements; a pass has at most two: --batch and its
    /// last batch), in ascending E: sum over those batches of the summed-loss gradient, per
    /// parameter. sum_b g_b = sum_E S_E / E.
    pub by_size: Vec<(usize, Vec<Vec<f64>>)>,
}

/// A double-double: the unevaluated sum hi + lo, |lo| <= ulp(hi)/2, accumulated with
/// Knuth's TwoSum so that each addition's rounding error is carried, not lost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Dd {
    pub hi: f64,
    pub lo: f64,
}

impl Dd {
    pub fn add(&mut self, x: f64) {
        // TwoSum: s + e == hi + x exactly.
        let s = self.hi + x;
        let bb = s - self.hi;
        let e = (self.hi - (s - bb)) + (x - bb);
        self.hi = s;
        self.lo += e;
    }
    pub fn add_dd(&mut self, o: Dd) {
        self.add(o.hi);
        self.lo += o.lo;
    }
    pub fn value(self) -> f64 {
        self.hi + self.lo
    }
}

impl crate::measure::resume::Saved for BatchSums {
    fn save(&self, w: &mut crate::measure::resume::Writer) {
        w.u64(self.batches as u64);
        let (hi, lo): (Vec<f64>, Vec<f64>) = self.sq.iter().map(|d| (d.hi, d.lo)).unzip();
        w.f64s(&hi);
        w.f64s(&lo);
        w.u64(self.by_size.len() as u64);
        for (e, vs) in &self.by_size {
            w.u64(*e as u64);
            w.u64(vs.len() as u64);
            for v in vs {
                w.f64s(v);
            }
        }
    }
    fn restore(r: &mut crate::measure::resume::Reader) -> Result<BatchSums> {
        let batches = r.usize()?;
        let (hi, lo) = (r.f64s()?, r.f64s()?);
        anyhow::ensure!(hi.len() == lo.len(), "noise sums of two lengths");
        let sq = hi
            .into_iter()
            .zip(lo)
            .map(|(hi, lo)| Dd { hi, lo })
            .collect();
        let sizes = r.count(16)?;
        let mut by_size = Vec::with_capacity(sizes);
        for _ in 0..sizes {
            let e = r.usize()?;
            let n = r.count(8)?;
            by_size.push((e, (0..n).map(|_| r.f64s()).collect::<Result<Vec<_>>>()?));
        }
        Ok(BatchSums {
            batches,
            sq,
            by_size,
        })
    }
}

impl BatchSums {
    pub fn new(like: &[Vec<f64>]) -> BatchSums {
        BatchSums {
            batches: 0,
            sq: vec![Dd::default(); like.len()],
            by_size: Vec::new(),
        }
    }

    /// The sums of batches of `elements` target elements, created zero where new.
    /// The sums of batches of `elements` target elements, zeros of the lengths `lens` if new.
    fn of_size(&mut self, elements: usize, lens: &[usize]) -> &mut Vec<Vec<f64>> {
        let i = match self.by_size.binary_search_by_key(&elements, |(e, _)| *e) {
            Ok(i) => i,
            Err(i) => {
                let zero = lens
                    .iter()
                    .map(|&n| crate::measure::reduce::zeros(n))
                    .collect();
                self.by_size.insert(i, (elements, zero));
                i
            }
        };
        &mut self.by_size[i].1
    }

    /// Adds one batch, given the gradient of its *summed* loss over `elements` target elements.
    pub fn add(&mut self, summed: &[&[f32]], elements: usize) {
        let e = elements as f64;
        for (p, g) in summed.iter().enumerate() {
            let sq: f64 = g.iter().map(|&x| (x as f64 / e) * (x as f64 / e)).sum();
            self.sq[p].add(sq);
        }
        let lens: Vec<usize> = summed.iter().map(|g| g.len()).collect();
        let sums = self.of_size(elements, &lens);
        for (s, g) in sums.iter_mut().zip(summed) {
            for (a, &x) in s.iter_mut().zip(g.iter()) {
                *a += x as f64;
            }
        }
        self.batches += 1;
    }

    /// Adds the sums over the batches that follow (the next data shard's).
    pub fn add_sums(&mut self, next: &BatchSums) {
        self.batches += next.batches;
        for (a, b) in self.sq.iter_mut().zip(&next.sq) {
            a.add_dd(*b);
        }
        for (e, sums) in &next.by_size {
            let lens: Vec<usize> = sums.iter().map(|v| v.len()).collect();
            let mine = self.of_size(*e, &lens);
            for (a, b) in mine.iter_mut().zip(sums) {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
            }
        }
    }

    /// Per parameter: (mean_b |g_b,p|^2, mean_b |g_b,p - g_p|^2), given the full gradient g.
    pub fn finish(&self, g: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
        let k = self.batches.max(1) as f64;
        let mut sq_mean = Vec::with_capacity(g.len());
        let mut var = Vec::with_capacity(g.len());
        for (p, gp) in g.iter().enumerate() {
            let m = self.sq[p].value() / k;
            let mut cross = 0.0;
            for (i, gi) in gp.iter().enumerate() {
                // sum_b g_b at this entry, batch sizes in ascending order.
                let sum_gb: f64 = self.by_size.iter().map(|(e, s)| s[p][i] / *e as f64).sum();
                cross += gi * sum_gb / k;
            }
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
    ckpt: &crate::model::Checkpoint,
    data: &mut dyn Dataset,
    n: usize,
    g: &[Vec<f64>],
    label: &str,
    quiet: bool,
) -> Result<SampleNoise> {
    let spec = data.spec().clone();
    let n = n.min(spec.len);
    let per: f64 = spec.y_shape.iter().product::<usize>().max(1) as f64;
    let mut progress = Progress::of_phase("noise", &format!("{label} per-sample"), n as u64, quiet);
    let mut sq = vec![0f64; g.len()];
    let mut dev: Vec<Vec<f64>> = g.iter().map(|v| vec![0.0; v.len()]).collect();
    for i in 0..n {
        let b = data.read(i, 1)?;
        let r = engine
            .batch(ckpt, &b)
            .with_context(|| format!("per-sample gradient of sample {i}"))?;
        for (p, gi) in r.grads.slices()?.into_iter().enumerate() {
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
        let batches: Vec<(Vec<f32>, usize)> = vec![
            (vec![1.0, -2.0, 0.5], 2),
            (vec![0.25, 4.0, -1.0], 2),
            (vec![3.0, 0.0, 1.5], 1),
        ];
        let mut s = BatchSums::new(&[vec![0.0; 3]]);
        let mut total = vec![0.0f64; 3];
        for (g, m) in &batches {
            s.add(&[&g[..]], *m);
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
                    .map(|(&x, y)| (x as f64 / *m as f64 - y).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 3.0;
        let direct_sq: f64 = batches
            .iter()
            .map(|(gb, m)| {
                gb.iter()
                    .map(|&x| (x as f64 / *m as f64).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 3.0;
        assert!((var[0] - direct_var).abs() < 1e-12 * direct_var);
        assert!((sq[0] - direct_sq).abs() < 1e-12 * direct_sq);
    }

    /// Data shards: the sums of runs of consecutive batches, added run after run, give the
    /// moments of the whole pass to the bit (with these values plain f64 sums of the squares
    /// round differently in the two orders).
    #[test]
    fn shard_sums_add_up_to_the_whole_pass() {
        let batch = |k: usize| -> (Vec<f32>, usize) {
            let scale = [0.01f32, 0.1, 1.0, 10.0, 100.0][k % 5];
            let v = (0..5)
                .map(|i| (((k * 7 + i * 3) as f64 * 0.37).sin() as f32) * scale)
                .collect();
            (v, if k == 10 { 3 } else { 4 })
        };
        let whole = {
            let mut s = BatchSums::new(&[vec![0.0; 5]]);
            (0..11).for_each(|k| {
                let (g, e) = batch(k);
                s.add(&[&g], e)
            });
            s
        };
        let mut parts = Vec::new();
        for range in [0..3, 3..6, 6..11] {
            let mut s = BatchSums::new(&[vec![0.0; 5]]);
            for k in range {
                let (g, e) = batch(k);
                s.add(&[&g], e);
            }
            parts.push(s);
        }
        let mut merged = parts[0].clone();
        merged.add_sums(&parts[1]);
        merged.add_sums(&parts[2]);
        let g = vec![vec![0.1, -0.2, 0.3, 0.05, 1.0]];
        assert_eq!(merged.finish(&g), whole.finish(&g));
        assert_eq!(merged.batches, 11);
    }
}
