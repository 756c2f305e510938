//! Curvature of the full-data loss at a checkpoint (`probe grad --hessian`), from exact
//! Hessian-vector products.
//!
//! H v = (1/M) sum_b H_b v, where H_b v is the product for batch b's *summed* loss, computed by
//! the gradient graph differentiated a second time ([`crate::autodiff::hvp`], run by ONNX
//! Runtime) or by libtorch's double backward (`--engine torch`), in f32 per batch, summed in
//! f64. Nothing is estimated by finite differences. From these products:
//! - the extreme eigenvalues by Lanczos with full reorthogonalization: after k products the
//!   tridiagonal T_k's eigenpairs (theta, s) give Ritz pairs (theta, Q_k s) whose residual is
//!   exactly |H Q_k s - theta Q_k s| = |beta_k s_k| (in exact arithmetic; the reorthogonalization
//!   keeps it so in floating point). We stop when the largest Ritz value's relative residual
//!   |beta_k s_k| / |theta| is below the tolerance, or at the iteration budget (then the residual
//!   is reported and the row says `converged = 0`). The eigenvalue's own error is of the order of
//!   residual^2 / gap, far below the residual;
//! - the directional sharpness g^T H g / |g|^2 along the full gradient g (one product);
//! - Hutchinson's trace estimate tr H = E[z^T H z] over Rademacher z (entries +-1), with its
//!   standard error over the m probes; per parameter block p, E[z_p^T (H z)_p] = tr(H_pp), so the
//!   per-block traces come from the same products.
//! The random vectors come from a fixed seed, the same at every checkpoint (common random
//! numbers: differences between checkpoints are not sampling noise of the probes).
use super::engine::HvpEngine;
use crate::data::rng::Rng;
use crate::data::{batches, Dataset};
use crate::model::Checkpoint;
use crate::progress::Progress;
use anyhow::{anyhow, Result};

/// Where the products are taken: the first `samples` samples of the data, in order.
pub struct HvpPass<'a> {
    pub engine: &'a mut dyn HvpEngine,
    pub data: &'a mut dyn Dataset,
    pub samples: usize,
    pub batch: usize,
    /// Target elements per sample (the loss is a mean over all of them).
    pub per_sample: usize,
    pub progress: Progress,
    pub products: usize,
}

impl HvpPass<'_> {
    /// H v of the mean loss over the pass's samples; `v` flat over the parameters in order.
    pub fn apply(&mut self, v: &[f64], sizes: &[usize]) -> Result<Vec<f64>> {
        let mut parts = Vec::with_capacity(sizes.len());
        let mut at = 0;
        for &n in sizes {
            parts.push(
                v[at..at + n]
                    .iter()
                    .map(|&x| x as f32)
                    .collect::<Vec<f32>>(),
            );
            at += n;
        }
        self.engine.set_direction(parts)?;
        let mut acc = vec![0f64; v.len()];
        for (start, count) in batches(self.samples, self.batch) {
            let b = self.data.read(start, count)?;
            let hv = self.engine.hvp(&b)?;
            let mut at = 0;
            for h in &hv {
                for (s, &x) in acc[at..at + h.len()].iter_mut().zip(h) {
                    *s += x as f64;
                }
                at += h.len();
            }
            self.progress.inc(count as u64);
        }
        let m = (self.samples * self.per_sample.max(1)) as f64;
        for s in acc.iter_mut() {
            *s /= m;
        }
        if acc.iter().any(|x| !x.is_finite()) {
            return Err(crate::error::non_finite(
                "non-finite Hessian-vector product".to_string(),
            ));
        }
        self.products += 1;
        Ok(acc)
    }
}

/// Tags of the probes' random streams (SplitMix64 of [`crate::data::rng`], keyed by the seed
/// and the tag: the same on every machine and at every checkpoint).
const LANCZOS_START: u64 = 0x4C41_4E43;
const HUTCHINSON: u64 = 0x4855_5443;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations: eigenvalues
/// (ascending) and eigenvectors as columns (`vecs[i][j]`: component i of vector j).
pub fn symmetric_eigen(mut a: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        let scale: f64 = (0..n).map(|i| a[i][i] * a[i][i]).sum::<f64>().max(1e-300);
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q] == 0.0 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k][p], a[k][q]);
                    a[k][p] = c * akp - s * akq;
                    a[k][q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p][k], a[q][k]);
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for row in v.iter_mut() {
                    let (vkp, vkq) = (row[p], row[q]);
                    row[p] = c * vkp - s * vkq;
                    row[q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[i][i].total_cmp(&a[j][j]));
    let vals = order.iter().map(|&i| a[i][i]).collect();
    let vecs = (0..n)
        .map(|r| order.iter().map(|&j| v[r][j]).collect())
        .collect();
    (vals, vecs)
}

#[derive(Debug, Clone)]
pub struct Lanczos {
    /// Largest eigenvalue (its Ritz value).
    pub top: f64,
    /// |H u - top u| / |top| for its Ritz vector u.
    pub top_residual: f64,
    /// Smallest eigenvalue's Ritz value and relative residual (not what the stopping rule
    /// watches; read it with its residual).
    pub bottom: f64,
    pub bottom_residual: f64,
    pub iterations: usize,
    pub converged: bool,
    /// The top Ritz vector, unit length.
    pub top_vector: Vec<f64>,
}

/// Lanczos with full reorthogonalization on the operator `h` of dimension `dim`, from a seeded
/// random start; stops when the top Ritz value's relative residual is <= `tol`.
pub fn lanczos(
    dim: usize,
    h: &mut dyn FnMut(&[f64]) -> Result<Vec<f64>>,
    max_iter: usize,
    tol: f64,
    seed: u64,
) -> Result<Lanczos> {
    let mut rng = Rng::keyed(seed, LANCZOS_START, 0, 0);
    let mut q: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
    let n0 = norm(&q);
    q.iter_mut().for_each(|x| *x /= n0);
    let mut basis: Vec<Vec<f64>> = vec![q];
    let (mut alpha, mut beta) = (Vec::<f64>::new(), Vec::<f64>::new());
    let max_iter = max_iter.min(dim).max(1);
    let mut last = None;
    for k in 0..max_iter {
        let mut w = h(&basis[k])?;
        let a = dot(&w, &basis[k]);
        alpha.push(a);
        // Full reorthogonalization (twice is enough, Kahan-Parlett), which also removes the
        // three-term recurrence's alpha q_k + beta q_{k-1}.
        for _ in 0..2 {
            for b in &basis {
                let c = dot(&w, b);
                w.iter_mut().zip(b).for_each(|(x, y)| *x -= c * y);
            }
        }
        let bk = norm(&w);
        // Ritz pairs of T_k.
        let kk = k + 1;
        let mut t = vec![vec![0.0; kk]; kk];
        for i in 0..kk {
            t[i][i] = alpha[i];
            if i + 1 < kk {
                t[i][i + 1] = beta[i];
                t[i + 1][i] = beta[i];
            }
        }
        let (vals, vecs) = symmetric_eigen(t);
        let (top, bottom) = (vals[kk - 1], vals[0]);
        let rel = |theta: f64, j: usize| (bk * vecs[kk - 1][j]).abs() / theta.abs().max(1e-300);
        let (rt, rb) = (rel(top, kk - 1), rel(bottom, 0));
        let exhausted = bk
            <= 1e-12
                * alpha
                    .iter()
                    .map(|x| x.abs())
                    .fold(0.0, f64::max)
                    .max(1e-300);
        let done = rt <= tol || exhausted || k + 1 == max_iter;
        if done {
            let mut u = vec![0.0; dim];
            for (j, b) in basis.iter().enumerate() {
                let c = vecs[j][kk - 1];
                u.iter_mut().zip(b).for_each(|(x, y)| *x += c * y);
            }
            let nu = norm(&u).max(1e-300);
            u.iter_mut().for_each(|x| *x /= nu);
            last = Some(Lanczos {
                top,
                top_residual: rt,
                bottom,
                bottom_residual: rb,
                iterations: kk,
                converged: rt <= tol || exhausted,
                top_vector: u,
            });
            break;
        }
        beta.push(bk);
        w.iter_mut().for_each(|x| *x /= bk);
        basis.push(w);
    }
    last.ok_or_else(|| anyhow!("Lanczos ran no iteration"))
}

/// Hutchinson's estimate of tr H and of each block's trace, with standard errors.
#[derive(Debug, Clone)]
pub struct Trace {
    pub trace: f64,
    pub trace_se: f64,
    pub per_block: Vec<f64>,
    pub per_block_se: Vec<f64>,
}

pub fn hutchinson(
    sizes: &[usize],
    h: &mut dyn FnMut(&[f64]) -> Result<Vec<f64>>,
    probes: usize,
    seed: u64,
) -> Result<Trace> {
    let dim: usize = sizes.iter().sum();
    let mut rng = Rng::keyed(seed, HUTCHINSON, 0, 0);
    let mut totals = Vec::with_capacity(probes);
    let mut blocks: Vec<Vec<f64>> = vec![Vec::with_capacity(probes); sizes.len()];
    for _ in 0..probes {
        let z: Vec<f64> = (0..dim).map(|_| rng.rademacher()).collect();
        let hz = h(&z)?;
        let mut at = 0;
        let mut total = 0.0;
        for (p, &n) in sizes.iter().enumerate() {
            let s = dot(&z[at..at + n], &hz[at..at + n]);
            blocks[p].push(s);
            total += s;
            at += n;
        }
        totals.push(total);
    }
    let mean_se = |x: &[f64]| -> (f64, f64) {
        let m = x.len() as f64;
        let mean = x.iter().sum::<f64>() / m;
        if x.len() < 2 {
            return (mean, f64::NAN);
        }
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1.0);
        (mean, (var / m).sqrt())
    };
    let (trace, trace_se) = mean_se(&totals);
    let (per_block, per_block_se) = blocks.iter().map(|b| mean_se(b)).unzip();
    Ok(Trace {
        trace,
        trace_se,
        per_block,
        per_block_se,
    })
}

/// What `--hessian` adds to a row.
#[derive(Debug, Clone)]
pub struct Curvature {
    pub lanczos: Lanczos,
    pub sharpness: f64,
    pub trace: Trace,
    /// Share of the top eigenvector's squared length on each parameter block.
    pub top_mass: Vec<f64>,
    pub samples: usize,
    pub products: usize,
}

#[derive(Debug, Clone)]
pub struct HessianOptions {
    /// Products over the first this many samples (all when `None`).
    pub samples: Option<usize>,
    pub iters: usize,
    pub tol: f64,
    pub probes: usize,
    /// Restrict H to these parameters (a block); all trainable when `None`.
    pub params: Option<Vec<String>>,
    pub seed: u64,
}

/// Everything `--hessian` measures at one checkpoint; `grad` is the full gradient on the
/// engine's parameters (flat) for the sharpness.
#[allow(clippy::too_many_arguments)]
pub fn curvature(
    engine: &mut dyn HvpEngine,
    ckpt: &Checkpoint,
    data: &mut dyn Dataset,
    batch: usize,
    opts: &HessianOptions,
    sizes: &[usize],
    grad: &[f64],
    label: &str,
    quiet: bool,
) -> Result<Curvature> {
    engine.hvp_load(ckpt)?;
    let spec = data.spec().clone();
    let n = opts.samples.unwrap_or(spec.len).min(spec.len);
    let per_sample: usize = spec.y_shape.iter().product::<usize>().max(1);
    let passes = opts.iters + opts.probes + 1;
    crate::progress::add_work((n * passes) as u64);
    let mut pass = HvpPass {
        engine,
        data,
        samples: n,
        batch,
        per_sample,
        progress: Progress::of_phase(
            "hessian",
            &format!("{label} hessian (at most {passes} passes)"),
            (n * passes) as u64,
            quiet,
        ),
        products: 0,
    };
    let dim: usize = sizes.iter().sum();
    let lz = lanczos(
        dim,
        &mut |v| pass.apply(v, sizes),
        opts.iters,
        opts.tol,
        opts.seed,
    )?;
    let gn = norm(grad);
    let sharpness = if gn > 0.0 {
        let u: Vec<f64> = grad.iter().map(|x| x / gn).collect();
        let hu = pass.apply(&u, sizes)?;
        dot(&u, &hu)
    } else {
        f64::NAN
    };
    let trace = hutchinson(sizes, &mut |v| pass.apply(v, sizes), opts.probes, opts.seed)?;
    let mut top_mass = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for &s in sizes {
        top_mass.push(lz.top_vector[at..at + s].iter().map(|x| x * x).sum());
        at += s;
    }
    let products = pass.products;
    // Lanczos may converge before its budget: the passes not made leave the run's count.
    crate::progress::drop_work((n * passes).saturating_sub(n * products) as u64);
    pass.progress.finish();
    Ok(Curvature {
        lanczos: lz,
        sharpness,
        trace,
        top_mass,
        samples: n,
        products,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symmetric matrix with known spectrum: Q diag(d) Q^T with Q from Gram-Schmidt.
    fn known(d: &[f64], seed: u64) -> Vec<Vec<f64>> {
        let n = d.len();
        let mut rng = Rng::keyed(seed, 0, 0, 0);
        let mut q: Vec<Vec<f64>> = Vec::new();
        for _ in 0..n {
            let mut v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
            for b in &q {
                let c = dot(&v, b);
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= c * y);
            }
            let nv = norm(&v);
            v.iter_mut().for_each(|x| *x /= nv);
            q.push(v);
        }
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| (0..n).map(|k| q[k][i] * d[k] * q[k][j]).sum())
                    .collect()
            })
            .collect()
    }

    fn apply(a: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
        a.iter().map(|r| dot(r, v)).collect()
    }

    #[test]
    fn jacobi_recovers_a_known_spectrum() {
        let d = [-3.0, -0.5, 0.0, 1.0, 2.5, 7.0];
        let (vals, vecs) = symmetric_eigen(known(&d, 1));
        for (a, b) in vals.iter().zip(&d) {
            assert!((a - b).abs() < 1e-12, "{vals:?}");
        }
        let a = known(&d, 1);
        let v5: Vec<f64> = (0..6).map(|i| vecs[i][5]).collect();
        let av = apply(&a, &v5);
        assert!(av.iter().zip(&v5).all(|(x, y)| (x - 7.0 * y).abs() < 1e-10));
    }

    #[test]
    fn lanczos_finds_both_ends_and_its_residual_is_honest() {
        let mut d: Vec<f64> = (0..60).map(|i| (i as f64 * 0.37).sin()).collect();
        d[17] = 4.0;
        d[3] = -2.0;
        let a = known(&d, 2);
        let r = lanczos(60, &mut |v| Ok(apply(&a, v)), 60, 1e-10, 9).unwrap();
        assert!(r.converged);
        assert!((r.top - 4.0).abs() < 1e-9, "{}", r.top);
        assert!((r.bottom + 2.0).abs() < 1e-6, "{}", r.bottom);
        // The reported residual is the true one.
        let hu = apply(&a, &r.top_vector);
        let res = norm(
            &hu.iter()
                .zip(&r.top_vector)
                .map(|(x, y)| x - r.top * y)
                .collect::<Vec<_>>(),
        );
        assert!(res / 4.0 <= r.top_residual.max(1e-12) * 10.0 + 1e-12);
        // A budget too small to converge says so.
        let r = lanczos(60, &mut |v| Ok(apply(&a, v)), 3, 1e-12, 9).unwrap();
        assert!(!r.converged && r.top_residual > 1e-12 && r.iterations == 3);
    }

    #[test]
    fn hutchinson_is_unbiased_blockwise() {
        let d: Vec<f64> = (0..12).map(|i| 1.0 + i as f64).collect();
        let a = known(&d, 3);
        let t = hutchinson(&[5, 7], &mut |v| Ok(apply(&a, v)), 4000, 4).unwrap();
        let exact: f64 = d.iter().sum();
        let b0: f64 = (0..5).map(|i| a[i][i]).sum();
        assert!(
            (t.trace - exact).abs() < 4.0 * t.trace_se,
            "{} vs {exact} ({})",
            t.trace,
            t.trace_se
        );
        assert!((t.per_block[0] - b0).abs() < 4.0 * t.per_block_se[0]);
        assert!(t.trace_se > 0.0);
    }
}
