//! Inference-mode BatchNormalization's kernels, in plain Rust, per channel c (axis 1):
//! - `BatchNormalization(X, scale, B, mean, var) -> Y`, attributes `epsilon` (float) and `relu`
//!   (int, 0 or 1), both required: `k[c] = scale[c] / sqrt(var[c] + eps)` and
//!   `Y = X k[c] + (B[c] - mean[c] k[c])`, then `max(Y, 0)` when `relu` is 1 (a Relu fused in by
//!   `ops/relu.rs`): one pass over X where ONNX Runtime's BatchNormalization, then Relu,
//!   took two (each a full read and write).
//! - `BatchNormalizationGrad(dY, X, k, mean) -> (dX?, sum_dY?, sum_dY_xc?)`: `dX = dY k[c]`,
//!   `sum_dY[c] = sum dY`, `sum_dY_xc[c] = sum dY (X - mean[c])`, the sums over every axis but
//!   1, in one pass over dY and X (standard: Mul, ReduceSum, Sub, Mul, Mul, ReduceSum). The
//!   rule turns the sums into the scale, bias, mean and var gradients.
//! - `ReluBatchNormalizationGrad(dY, Y, X, k, mean, dY2?) -> (dX?, sum_G?, sum_G_xc?)`:
//!   BatchNormalizationGrad of `G = (dY + dY2) [!(Y <= 0)]` (dY2 absent: 0; NaN passes, as in PyTorch's threshold_backward), the gradient a Relu
//!   after the BatchNormalization passes back (`ReluGrad` or `SumReluGrad`, whose result had
//!   the BatchNormalizationGrad as its only consumer). G is formed one plane at a time in a
//!   buffer that stays in L1, so the full-size G is never written and read back.
//!
//! The forward's parts take (sample, channel) planes; the gradients' parts take whole channels,
//! so each sum has one writer.
use super::exec::{bounds, deal, elementwise_parts, split, split_opt};
use super::op::{Attrs, Call, CpuOp, FromAttrs, Io::*};
use super::relu::{relu_mask, sum_relu_mask};
use crate::ops::rule::kernels::{
    BATCH_NORMALIZATION, BATCH_NORMALIZATION_GRAD, RELU_BATCH_NORMALIZATION_GRAD,
};

impl FromAttrs for BatchNormAttrs {
    fn read(a: &Attrs) -> ort::Result<BatchNormAttrs> {
        let epsilon = a.req("epsilon")?;
        let relu = a.req::<i64>("relu")? != 0;
        Ok(BatchNormAttrs { epsilon, relu })
    }
}

/// The forward's attributes, both required.
pub struct BatchNormAttrs {
    epsilon: f32,
    /// `max(Y, 0)`: a Relu after the BatchNormalization fused in.
    relu: bool,
}

/// `probe.cpu:BatchNormalization` (inference mode).
pub static BATCH_NORMALIZATION_OP: CpuOp<BatchNormAttrs> =
    CpuOp::new(BATCH_NORMALIZATION, batch_normalization).io(&[F32; 5], &[F32]);

fn batch_normalization(a: &BatchNormAttrs, c: &Call) -> ort::Result<()> {
    let (xs, xv) = c.input(0)?;
    let mut pv = Vec::with_capacity(4);
    for i in 1..5 {
        pv.push(c.input(i)?.1);
    }
    let (scale, bias, mean, var) = (pv[0], pv[1], pv[2], pv[3]);
    if xs.len() < 2 || pv.iter().any(|p| p.len() != xs[1] as usize) {
        return Err(c.fail(format!(
            "X {:?} with scale [{}], B [{}], mean [{}], var [{}]: one value per channel \
             (axis 1) expected",
            &xs[..],
            scale.len(),
            bias.len(),
            mean.len(),
            var.len()
        )));
    }
    // ONNX Runtime's own arithmetic (batch_norm.h): inv_std = 1/sqrt(var + eps), then
    // new_scale = scale inv_std, new_bias = B - mean new_scale, all in f32.
    let ch = xs[1] as usize;
    let k: Vec<f32> = (0..ch)
        .map(|i| scale[i] * (1.0 / (var[i] + a.epsilon).sqrt()))
        .collect();
    let b: Vec<f32> = (0..ch).map(|i| bias[i] - mean[i] * k[i]).collect();
    let plane: usize = xs[2..].iter().product::<i64>() as usize;
    let planes = xv.len() / plane.max(1);
    let y = c.required(0, xs.to_vec(), "Y")?;
    let parts = elementwise_parts(xv.len(), c.parts).min(planes.max(1));
    let bs = bounds(planes, parts);
    let pieces = split(y, plane, &bs).into_iter().zip(bs.iter().copied());
    let relu = a.relu;
    c.run(pieces.collect(), |_, (out, (lo, hi))| {
        for (p, out) in (lo..hi).zip(out.chunks_exact_mut(plane.max(1))) {
            let (kc, bc) = (k[p % ch], b[p % ch]);
            let src = &xv[p * plane..][..plane];
            if relu {
                // `v < 0 ? 0 : v` keeps a NaN a NaN, as a Relu after the BatchNormalization.
                for (o, &v) in out.iter_mut().zip(src) {
                    let t = v * kc + bc;
                    *o = if t < 0.0 { 0.0 } else { t };
                }
            } else {
                for (o, &v) in out.iter_mut().zip(src) {
                    *o = v * kc + bc;
                }
            }
        }
        Ok(())
    })
    .map_err(|e| c.fail(e))
}

/// One (sample, channel) plane of the inference-mode BatchNorm backward (per channel k and
/// mean): `dX = G k` into `dx` when asked, and the plane's `sum G` and `sum G (X - mean)`, in
/// eight f32 lanes (so the loop vectorizes), returned in f64 for the sum across planes.
fn bn_grad_plane(g: &[f32], x: &[f32], k: f32, mean: f32, dx: Option<&mut [f32]>) -> (f64, f64) {
    if let Some(dx) = dx {
        for (o, &g) in dx.iter_mut().zip(g) {
            *o = g * k;
        }
    }
    let (mut a1, mut a2) = ([0f32; 8], [0f32; 8]);
    let (gc, xc) = (g.chunks_exact(8), x.chunks_exact(8));
    let (gr, xr) = (gc.remainder(), xc.remainder());
    for (g8, x8) in gc.zip(xc) {
        for j in 0..8 {
            a1[j] += g8[j];
            a2[j] += g8[j] * (x8[j] - mean);
        }
    }
    for (&g, &v) in gr.iter().zip(xr) {
        a1[0] += g;
        a2[0] += g * (v - mean);
    }
    let f64sum = |a: [f32; 8]| a.iter().map(|&v| v as f64).sum::<f64>();
    (f64sum(a1), f64sum(a2))
}

/// The gradient G the backward pass reads: dY, or `(dY + dY2) [!(Y <= 0)]` (formed a plane at a
/// time).
enum Grad<'c> {
    Plain(&'c [f32]),
    Relu {
        dy: &'c [f32],
        y: &'c [f32],
        dy2: Option<&'c [f32]>,
    },
}

impl Grad<'_> {
    /// G's plane at `at`, formed in `buf` when needed.
    fn plane<'b>(&'b self, at: usize, buf: &'b mut [f32]) -> &'b [f32] {
        let len = buf.len();
        match *self {
            Grad::Plain(dy) => &dy[at..at + len],
            Grad::Relu { dy, y, dy2 } => {
                let (g1, yp) = (&dy[at..at + len], &y[at..at + len]);
                // G = (dY + dY2) [!(Y <= 0)], the ReluGrad (or SumReluGrad) it replaces.
                match dy2 {
                    Some(d2) => sum_relu_mask(buf, g1, &d2[at..at + len], yp),
                    None => relu_mask(buf, g1, yp),
                }
                buf
            }
        }
    }
}

/// The backward's pass, shared by both gradient ops: per channel of X [N, C, ...] (k and mean
/// per channel), G's planes, then dX and the two sums over them. Outputs 0-2 are dX, the sums.
fn backward<'c>(
    c: &Call<'c>,
    (xs, xv): (Vec<i64>, &'c [f32]),
    kv: &[f32],
    mv: &[f32],
    grad: Grad<'c>,
) -> ort::Result<()> {
    let (n, ch) = (xs[0] as usize, xs[1] as usize);
    let plane: usize = xs[2..].iter().product::<i64>() as usize;
    let dx = c.output(0, xs.to_vec())?;
    let (s1, s2) = (c.output(1, vec![ch as i64])?, c.output(2, vec![ch as i64])?);
    // Parts take whole channels, so each sum has one writer.
    let parts = if xv.len() < 1 << 16 {
        1
    } else {
        c.parts.min(ch)
    };
    let b = bounds(ch, parts);
    // dX's planes s C + ch, dealt to the part that owns channel ch.
    let owner: Vec<usize> = (0..parts)
        .flat_map(|i| (b[i].0..b[i].1).map(move |_| i))
        .collect();
    let dx_planes: Vec<Option<Vec<&mut [f32]>>> = match dx {
        Some(dx) => deal(dx, n * ch, &owner, parts)
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..parts).map(|_| None).collect(),
    };
    let pieces: Vec<_> = dx_planes
        .into_iter()
        .zip(split_opt(s1, 1, &b).into_iter().zip(split_opt(s2, 1, &b)))
        .collect();
    c.run(pieces, |i, (mut dx, (mut s1, mut s2))| {
        let (lo, hi) = b[i];
        let mut gbuf = vec![0f32; plane];
        for chn in lo..hi {
            let (kc, mc) = (kv[chn], mv[chn]);
            let (mut t1, mut t2) = (0f64, 0f64);
            for s in 0..n {
                let at = (s * ch + chn) * plane;
                let g = grad.plane(at, &mut gbuf);
                let dx = dx.as_mut().map(|d| &mut *d[s * (hi - lo) + chn - lo]);
                let (p1, p2) = bn_grad_plane(g, &xv[at..at + plane], kc, mc, dx);
                t1 += p1;
                t2 += p2;
            }
            if let Some(s1) = s1.as_mut() {
                s1[chn - lo] = t1 as f32;
            }
            if let Some(s2) = s2.as_mut() {
                s2[chn - lo] = t2 as f32;
            }
        }
        Ok(())
    })
    .map_err(|e| c.fail(e))
}

/// `probe.cpu:BatchNormalizationGrad` (inference mode): dX and the two per-channel sums the
/// parameter gradients are made of, in one pass over dY and X.
pub static BATCH_NORMALIZATION_GRAD_OP: CpuOp<()> =
    CpuOp::new(BATCH_NORMALIZATION_GRAD, batch_normalization_grad).io(&[F32; 4], &[OptF32; 3]);

fn batch_normalization_grad(_: &(), c: &Call) -> ort::Result<()> {
    let (dys, dyv) = c.input(0)?;
    let (xs, xv) = c.input(1)?;
    let (kv, mv) = (c.input(2)?.1, c.input(3)?.1);
    if dys[..] != xs[..] || xs.len() < 2 || kv.len() != xs[1] as usize || mv.len() != kv.len() {
        return Err(c.fail(format!(
            "dY {:?}, X {:?}, k [{}], mean [{}]",
            &dys[..],
            &xs[..],
            kv.len(),
            mv.len()
        )));
    }
    backward(c, (xs, xv), kv, mv, Grad::Plain(dyv))
}

/// `probe.cpu:ReluBatchNormalizationGrad`: BatchNormalizationGrad of `G = (dY + dY2) [!(Y <= 0)]`.
pub static RELU_BATCH_NORMALIZATION_GRAD_OP: CpuOp<()> =
    CpuOp::new(RELU_BATCH_NORMALIZATION_GRAD, relu_batch_normalization_grad)
        .io(&[F32, F32, F32, F32, F32, OptF32], &[OptF32; 3]);

fn relu_batch_normalization_grad(_: &(), c: &Call) -> ort::Result<()> {
    let (dys, dyv) = c.input(0)?;
    let (ys, yv) = c.input(1)?;
    let (xs, xv) = c.input(2)?;
    let (kv, mv) = (c.input(3)?.1, c.input(4)?.1);
    let dy2v = c.optional_like(5, "dY2", &xs)?;
    if dys[..] != xs[..]
        || ys[..] != xs[..]
        || xs.len() < 2
        || kv.len() != xs[1] as usize
        || mv.len() != kv.len()
    {
        return Err(c.fail(format!(
            "dY {:?}, Y {:?}, X {:?}, k [{}], mean [{}]",
            &dys[..],
            &ys[..],
            &xs[..],
            kv.len(),
            mv.len()
        )));
    }
    let grad = Grad::Relu {
        dy: dyv,
        y: yv,
        dy2: dy2v,
    };
    backward(c, (xs, xv), kv, mv, grad)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rand, sums, Node, EPS};
    use super::{BATCH_NORMALIZATION, BATCH_NORMALIZATION_GRAD, RELU_BATCH_NORMALIZATION_GRAD};
    use crate::model::graph::{attr_float, attr_int};

    /// 70,000 elements, over the 65,536 at which these kernels split: 35 (sample, channel)
    /// planes of 2,000 (the forward's parts) and 5 channels (the gradients'), neither a
    /// multiple of 3.
    const SHAPE: [usize; 4] = [7, 5, 40, 50];
    const N: usize = 70_000;
    const C: usize = 5;
    const PLANE: usize = 2_000;

    /// Per-channel values in [lo, hi].
    fn channel(seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        rand(C, seed)
            .iter()
            .map(|v| lo + (hi - lo) * (v + 1.0) / 2.0)
            .collect()
    }

    /// X with NaN, infinities and zeros of both signs first (in channel 0).
    fn x() -> Vec<f32> {
        let mut x = rand(N, 1);
        x[..4].copy_from_slice(&[f32::NAN, f32::INFINITY, -0.0, 0.0]);
        x
    }

    #[test]
    fn batch_normalization_with_and_without_relu() {
        let (x, scale, b) = (x(), channel(2, -2.0, 2.0), channel(3, -1.0, 1.0));
        let (mean, var) = (channel(4, -0.5, 0.5), channel(5, 0.1, 2.0));
        // [N, C] too: planes of one element.
        for (shape, relu, eps) in [(&SHAPE[..], 0, 1e-5f32), (&[14_000, C][..], 1, 0.5)] {
            let plane: usize = shape[2..].iter().product();
            let want: Vec<f64> = (0..N)
                .map(|i| {
                    let c = i / plane % C;
                    let k = scale[c] as f64 / (var[c] as f64 + eps as f64).sqrt();
                    let y = (x[i] as f64 - mean[c] as f64) * k + b[c] as f64;
                    // max(y, 0) keeps NaN, as a Relu does.
                    if relu == 1 && y < 0.0 {
                        0.0
                    } else {
                        y
                    }
                })
                .collect();
            let n = Node::new(BATCH_NORMALIZATION).attr(attr_float("epsilon", eps));
            let mut n = n.attr(attr_int("relu", relu)).input(shape, &x);
            for p in [&scale, &b, &mean, &var] {
                n = n.input(&[C], p);
            }
            // A few roundings (k, the folded bias, a multiply-add) of values up to ~10.
            n.output(shape, &want, 16.0 * EPS).check();
        }
    }

    /// BatchNormalizationGrad of `g` (ReluBatchNormalizationGrad passes G = (dY + dY2) [!(Y <= 0)]):
    /// dX = G k, sum G and sum G (X - mean) per channel, the outputs named as `named` says.
    fn expect(n: Node, g: &[f64], x: &[f32], k: &[f32], mean: &[f32], named: [bool; 3]) -> Node {
        let dx: Vec<f64> = (0..N).map(|i| g[i] * k[i / PLANE % C] as f64).collect();
        let c = |i: usize| i / PLANE % C;
        let sum_g = sums(C, (0..N).map(|i| (c(i), g[i])));
        let sum_gx = sums(
            C,
            (0..N).map(|i| (c(i), g[i] * (x[i] as f64 - mean[c(i)] as f64))),
        );
        let mut n = match named[0] {
            // One product of values ~1.
            true => n.output(&SHAPE, &dx, EPS),
            false => n.unnamed(),
        };
        for (named, (s, m)) in named[1..].iter().zip([sum_g, sum_gx]) {
            // A plane's sums in eight f32 lanes, added in f64 across planes.
            n = match named {
                true => n.output_sums(&[C], &s, &m, PLANE / 8 + 8),
                false => n.unnamed(),
            };
        }
        n
    }

    #[test]
    fn batch_normalization_grad_sums_per_channel() {
        let (dy, x, k, mean) = (
            rand(N, 6),
            rand(N, 7),
            channel(8, -2.0, 2.0),
            channel(9, -0.5, 0.5),
        );
        let g: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
        for named in [
            [true; 3],
            [false, true, true],
            [true, false, true],
            [true, false, false],
        ] {
            let n = Node::new(BATCH_NORMALIZATION_GRAD).input(&SHAPE, &dy);
            let n = n.input(&SHAPE, &x).input(&[C], &k).input(&[C], &mean);
            expect(n, &g, &x, &k, &mean, named).check();
        }
    }

    #[test]
    fn relu_batch_normalization_grad_masks_by_y() {
        let (dy, dy2, x) = (rand(N, 10), rand(N, 11), rand(N, 12));
        let (k, mean) = (channel(13, -2.0, 2.0), channel(14, -0.5, 0.5));
        // Y's mask edges (ReluGrad's): 0 and -0.0 block the gradient, NaN passes it (PyTorch's
        // threshold_backward, `y <= 0 ? 0 : dY`).
        let mut y = rand(N, 15);
        y[..4].copy_from_slice(&[0.0, -0.0, f32::NAN, 1e-45]);
        for with_dy2 in [true, false] {
            let g: Vec<f64> = (0..N)
                .map(|i| {
                    let d2 = if with_dy2 { dy2[i] as f64 } else { 0.0 };
                    if !(y[i] <= 0.0) {
                        dy[i] as f64 + d2
                    } else {
                        0.0
                    }
                })
                .collect();
            let n = Node::new(RELU_BATCH_NORMALIZATION_GRAD).input(&SHAPE, &dy);
            let n = n
                .input(&SHAPE, &y)
                .input(&SHAPE, &x)
                .input(&[C], &k)
                .input(&[C], &mean);
            let n = if with_dy2 {
                n.input(&SHAPE, &dy2)
            } else {
                n.absent()
            };
            // G = dY + dY2 is one more half-ulp rounding: dX's two stay within eps.
            expect(n, &g, &x, &k, &mean, [true; 3]).check();
        }
    }

    #[test]
    fn shape_checks() {
        let n = Node::new(BATCH_NORMALIZATION_GRAD).input(&[2, 3], &[0.0; 6]);
        let n = n
            .input(&[2, 3], &[0.0; 6])
            .input(&[2], &[0.0; 2])
            .input(&[2], &[0.0; 2]);
        n.output(&[2, 3], &[0.0; 6], 0.0)
            .fails("dY [2, 3], X [2, 3], k [2], mean [2]");
        let mut n = Node::new(BATCH_NORMALIZATION).attr(attr_float("epsilon", 1e-5));
        n = n.attr(attr_int("relu", 0)).input(&[6], &[0.0; 6]);
        for _ in 0..4 {
            n = n.input(&[6], &[1.0; 6]);
        }
        n.output(&[6], &[0.0; 6], 0.0)
            .fails("one value per channel (axis 1) expected");
    }
}
