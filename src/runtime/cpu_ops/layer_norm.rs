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
