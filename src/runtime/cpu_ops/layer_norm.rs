//! LayerNormalization's kernels in Rust, one pass per row (the D elements over the normalized
//! axes, from attribute `axis`, required; `epsilon`, default 1e-5), Scale and B of the
//! normalized shape, mean and variance in two passes over a row (the mean first, then the
//! centred squares):
//! - `LayerNormalization(X, Scale, B?) -> Y` (ONNX's, without the statistics outputs):
//!   `Y = (X - mean) invstd Scale + B`;
//! - `LayerNormalizationGrad(dY, X, Scale, dA?) -> (dX?, dScale?, dB?)`, mean and invstd
//!   recomputed from X (the row is in cache), xhat = (X - mean) invstd and g = dY Scale:
//!   `dX = invstd (g - mean(g) - xhat mean(g xhat))`, `dScale = sum_rows dY xhat`,
//!   `dB = sum_rows dY`. With dA (the residual stream's other gradient, taken in by `ops/layer_normalization.rs`), dX
//!   is `dA +` that. Instead of ~20 standard ops.
//!
//! Parts take rows.
use super::exec::{bounds, split, split_opt};
use super::lanes::{dot8, sum8};
use super::op::{Attrs, Call, CpuOp, FromAttrs, Io::*};
use crate::ops::rule::kernels::{LAYER_NORMALIZATION, LAYER_NORMALIZATION_GRAD};

/// The attributes both take.
pub struct LayerNormAttrs {
    /// The first normalized axis (negative: from the end); the rest follow it.
    axis: i64,
    epsilon: f32,
}

impl FromAttrs for LayerNormAttrs {
    fn read(a: &Attrs) -> ort::Result<LayerNormAttrs> {
        Ok(LayerNormAttrs {
            axis: a.req("axis")?,
            epsilon: a.get("epsilon").unwrap_or(1e-5),
        })
    }
}

/// Row `xr`'s mean and `1 / sqrt(var + eps)`, `xc` set to `xr - mean`.
fn centre(xr: &[f32], xc: &mut [f32], eps: f32) -> f32 {
    let inv_d = 1.0 / xr.len() as f32;
    let mean = sum8(xr) * inv_d;
    for (c, &v) in xc.iter_mut().zip(xr) {
        *c = v - mean;
    }
    1.0 / (dot8(xc, xc) * inv_d + eps).sqrt()
}

/// `probe.cpu:LayerNormalization`.
pub static LAYER_NORMALIZATION_OP: CpuOp<LayerNormAttrs> =
    CpuOp::new(LAYER_NORMALIZATION, layer_normalization).io(&[F32, F32, OptF32], &[F32]);

fn layer_normalization(a: &LayerNormAttrs, c: &Call) -> ort::Result<()> {
    let (xs, xv) = c.input(0)?;
    let sv = c.input(1)?.1;
    let bv = c.optional(2)?.map(|b| b.1);
    let axis = c.axis(a.axis, xs.len())?;
    let d = xs[axis..].iter().product::<i64>() as usize;
    if sv.len() != d || bv.is_some_and(|b| b.len() != d) || d == 0 {
        return Err(c.fail(format!(
            "X {:?}, Scale of {} elements, B of {:?} (the normalized shape has {d})",
            &xs[..],
            sv.len(),
            bv.map(|b| b.len())
        )));
    }
    let eps = a.epsilon;
    let y = c.required(0, xs.to_vec(), "Y")?;
    let rows = xv.len() / d;
    let b = bounds(rows, c.parts_for(rows, xv.len()));
    let pieces = split(y, d, &b).into_iter().zip(b.iter().copied());
    c.run(pieces.collect(), |_, (y, (lo, hi))| {
        let mut xc = vec![0f32; d];
        for (r, out) in (lo..hi).zip(y.chunks_exact_mut(d)) {
            let inv = centre(&xv[r * d..][..d], &mut xc, eps);
            match bv {
                Some(b) => {
                    for k in 0..d {
                        out[k] = xc[k] * inv * sv[k] + b[k];
                    }
                }
                None => {
                    for k in 0..d {
                        out[k] = xc[k] * inv * sv[k];
                    }
                }
            }
        }
        Ok(())
    })
    .map_err(|e| c.fail(e))
}

/// `probe.cpu:LayerNormalizationGrad`.
pub static LAYER_NORMALIZATION_GRAD_OP: CpuOp<LayerNormAttrs> =
    CpuOp::new(LAYER_NORMALIZATION_GRAD, layer_normalization_grad)
        .io(&[F32, F32, F32, OptF32], &[OptF32; 3]);

fn layer_normalization_grad(a: &LayerNormAttrs, c: &Call) -> ort::Result<()> {
    let (dys, dyv) = c.input(0)?;
    let (xs, xv) = c.input(1)?;
    let sv = c.input(2)?.1;
    let av = c.optional_like(3, "dA", &xs)?;
    let axis = c.axis(a.axis, xs.len())?;
    let d = xs[axis..].iter().product::<i64>() as usize;
    if dys[..] != xs[..] || sv.len() != d || d == 0 {
        return Err(c.fail(format!(
            "dY {:?}, X {:?}, Scale of {} elements (the normalized shape has {d})",
            &dys[..],
            &xs[..],
            sv.len()
        )));
    }
    let eps = a.epsilon;
    let norm = xs[axis..].to_vec();
    let dx = c.output(0, xs.to_vec())?;
    let ds = c.output(1, norm.clone())?;
    let db = c.output(2, norm)?;
    let rows = xv.len() / d;
    let b = bounds(rows, c.parts_for(rows, xv.len()));
    let pieces = split_opt(dx, d, &b).into_iter().zip(b.iter().copied());
    // Per part: dScale then dB sums (2d values) in f32 over the part's rows, added across
    // parts in f64.
    let sums = std::sync::Mutex::new(vec![0f64; 2 * d]);
    c.run(pieces.collect(), |_, (mut dx, (lo, hi))| {
        let mut acc = vec![0f32; 2 * d];
        let (mut xc, mut g) = (vec![0f32; d], vec![0f32; d]);
        let inv_d = 1.0 / d as f32;
        for r in lo..hi {
            let (xr, gr) = (&xv[r * d..][..d], &dyv[r * d..][..d]);
            let inv = centre(xr, &mut xc, eps);
            for ((g, &dy), &s) in g.iter_mut().zip(gr).zip(sv) {
                *g = dy * s;
            }
            // xhat = xc * inv, kept unscaled: mean(g xhat) = inv mean(g xc).
            let mg = sum8(&g) * inv_d;
            let mgx = dot8(&g, &xc) * inv_d * inv;
            let (ds, db) = acc.split_at_mut(d);
            for k in 0..d {
                ds[k] += gr[k] * xc[k] * inv;
                db[k] += gr[k];
            }
            if let Some(dx) = dx.as_deref_mut() {
                let out = &mut dx[(r - lo) * d..][..d];
                for k in 0..d {
                    out[k] = inv * (g[k] - mg - xc[k] * inv * mgx);
                }
                if let Some(a) = av {
                    for (o, &a) in out.iter_mut().zip(&a[r * d..][..d]) {
                        *o += a;
                    }
                }
            }
        }
        let mut s = sums.lock().unwrap();
        for (s, &a) in s.iter_mut().zip(&acc) {
            *s += a as f64;
        }
        Ok(())
    })
    .map_err(|e| c.fail(e))?;
    let s = sums.into_inner().unwrap();
    for (out, part) in [(ds, &s[..d]), (db, &s[d..])] {
        if let Some(out) = out {
            for (o, &v) in out.iter_mut().zip(part) {
                *o = v as f32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rand, Node};
    use super::{LAYER_NORMALIZATION, LAYER_NORMALIZATION_GRAD};
    use crate::model::graph::{attr_float, attr_int};

    /// 36,400 elements, over the 32,768 at which these kernels split: 91 rows of 400 (axis -1)
    /// or 7 of 5,200 (axis 1), neither a multiple of 3.
    const SHAPE: [usize; 3] = [7, 13, 400];
    const N: usize = 7 * 13 * 400;

    /// The cases: axis, the epsilon attribute (default 1e-5), the normalized shape.
    const CASES: [(i64, Option<f32>, &[usize]); 2] =
        [(-1, None, &[400]), (1, Some(0.1), &[13, 400])];

    /// X in [-1, 1] with a constant first row (variance 0: epsilon alone keeps it finite).
    fn x() -> Vec<f32> {
        let mut x = rand(N, 1);
        x[..400].fill(0.3);
        x
    }

    /// A row's mean, `1 / sqrt(var + eps)` and mean |x|, in f64.
    fn stats(x: &[f32], eps: Option<f32>) -> (f64, f64, f64) {
        let d = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / d;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d;
        let abs = x.iter().map(|&v| v.abs() as f64).sum::<f64>() / d;
        (mean, 1.0 / (var + eps.unwrap_or(1e-5) as f64).sqrt(), abs)
    }

    fn node(op: &'static str, axis: i64, eps: Option<f32>) -> Node {
        let n = Node::new(op).attr(attr_int("axis", axis));
        match eps {
            Some(e) => n.attr(attr_float("epsilon", e)),
            None => n,
        }
    }

    /// The chain of f32 additions of a row's sums (eight lanes, then the lanes and the tail).
    fn chain(d: usize) -> usize {
        d / 8 + 16
    }

    #[test]
    fn layer_normalization_with_and_without_bias() {
        let (x, s, b) = (x(), rand(5200, 2), rand(5200, 3));
        for (bias, (axis, eps, norm)) in [true, false].into_iter().zip(CASES) {
            let d: usize = norm.iter().product();
            let (mut want, mut mags) = (vec![0f64; N], vec![0f64; N]);
            for r in 0..N / d {
                let xr = &x[r * d..][..d];
                let (mean, inv, abs) = stats(xr, eps);
                for k in 0..d {
                    let bk = if bias { b[k] as f64 } else { 0.0 };
                    let xc = xr[k] as f64 - mean;
                    want[r * d + k] = xc * inv * s[k] as f64 + bk;
                    // The mean's error reaches every element, scaled by invstd.
                    mags[r * d + k] = (xc.abs() + abs) * inv * s[k].abs() as f64 + bk.abs();
                }
            }
            let n = node(LAYER_NORMALIZATION, axis, eps).input(&SHAPE, &x);
            let n = n.input(norm, &s[..d]);
            let n = if bias {
                n.input(norm, &b[..d])
            } else {
                n.absent()
            };
            n.output_sums(&SHAPE, &want, &mags, chain(d)).check();
        }
    }

    /// dX (plus dA when given), dScale, dB, each named or not as `named` says.
    fn check_grad(axis: i64, eps: Option<f32>, norm: &[usize], with_da: bool, named: [bool; 3]) {
        let d: usize = norm.iter().product();
        let (dy, x, s, da) = (rand(N, 4), x(), rand(d, 5), rand(N, 6));
        let (mut dx, mut dx_mag) = (vec![0f64; N], vec![0f64; N]);
        let mut sums = [vec![0f64; d], vec![0f64; d], vec![0f64; d], vec![0f64; d]];
        for r in 0..N / d {
            let (xr, gr) = (&x[r * d..][..d], &dy[r * d..][..d]);
            let (mean, inv, abs) = stats(xr, eps);
            let xhat: Vec<f64> = xr.iter().map(|&v| (v as f64 - mean) * inv).collect();
            let g: Vec<f64> = (0..d).map(|k| gr[k] as f64 * s[k] as f64).collect();
            let mean_of = |f: &dyn Fn(usize) -> f64| (0..d).map(f).sum::<f64>() / d as f64;
            let (mg, mgx) = (mean_of(&|k| g[k]), mean_of(&|k| g[k] * xhat[k]));
            let (mg_abs, mgx_abs) = (
                mean_of(&|k| g[k].abs()),
                mean_of(&|k| (g[k] * xhat[k]).abs()),
            );
            for k in 0..d {
                let a = if with_da { da[r * d + k] as f64 } else { 0.0 };
                dx[r * d + k] = inv * (g[k] - mg - xhat[k] * mgx) + a;
                // xhat's own error follows the mean's, as in the forward.
                let xh = xhat[k].abs() + abs * inv;
                dx_mag[r * d + k] = inv * (g[k].abs() + mg_abs + xh * mgx_abs) + a.abs();
                let t = gr[k] as f64;
                let dsk = [t * xhat[k], (t * xh).abs(), t, t.abs()];
                for (s, v) in sums.iter_mut().zip(dsk) {
                    s[k] += v;
                }
            }
        }
        let n = node(LAYER_NORMALIZATION_GRAD, axis, eps).input(&SHAPE, &dy);
        let n = n.input(&SHAPE, &x).input(norm, &s);
        let mut n = if with_da {
            n.input(&SHAPE, &da)
        } else {
            n.absent()
        };
        // dScale and dB: f32 sums over a part's rows, after xhat's row sums.
        let rows = N / d + chain(d);
        let outs = [
            (&SHAPE[..], &dx, &dx_mag, chain(d)),
            (norm, &sums[0], &sums[1], rows),
            (norm, &sums[2], &sums[3], rows),
        ];
        for (named, (shape, want, mags, chain)) in named.into_iter().zip(outs) {
            n = if named {
                n.output_sums(shape, want, mags, chain)
            } else {
                n.unnamed()
            };
        }
        n.check();
    }

    #[test]
    fn layer_normalization_grad_all_outputs_with_da() {
        let (axis, eps, norm) = CASES[0];
        check_grad(axis, eps, norm, true, [true; 3]);
    }

    #[test]
    fn layer_normalization_grad_some_outputs() {
        let (axis, eps, norm) = CASES[1];
        check_grad(axis, eps, norm, false, [false, true, true]);
        check_grad(axis, eps, norm, false, [true, false, false]);
    }

    #[test]
    fn shape_checks() {
        let n = node(LAYER_NORMALIZATION, -1, None).input(&[2, 3], &[0.0; 6]);
        let n = n
            .input(&[2], &[1.0; 2])
            .absent()
            .output(&[2, 3], &[0.0; 6], 0.0);
        n.fails("Scale of 2 elements, B of None (the normalized shape has 3)");
        let n = node(LAYER_NORMALIZATION_GRAD, -1, None).input(&[2, 3], &[0.0; 6]);
        let n = n
            .input(&[2, 3], &[0.0; 6])
            .input(&[3], &[1.0; 3])
            .input(&[3, 2], &[0.0; 6]);
        n.output(&[2, 3], &[0.0; 6], 0.0)
            .fails("dA [3, 2] and X [2, 3] differ");
    }
}
