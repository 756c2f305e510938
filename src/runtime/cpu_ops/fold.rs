//! The BatchNormalization fold's weight arithmetic (`ops/batch_normalization.rs`'s
//! `fold_into_conv`), one pass each way over the Conv's weight:
//! - `FoldScale(W, s) -> W'`: `W'[c, ...] = f32(f64(W[c, ...]) s[c])`, W f32 [C, ...], s f64 [C];
//! - `FoldScaleGrad(dW', W, s) -> (dW?, ds?)`: `dW[c, ...] = f32(s[c] f64(dW'[c, ...]))` and
//!   `ds[c] = sum over the rest of f64(W) f64(dW')`, in f64.
//!
//! The standard form is Cast, Mul and Cast forward and Cast, Mul, Mul, ReduceSum and Cast
//! backward, each a pass over the weight in f64: on torchvision's resnet18 at 3x64x64 the
//! backward's Cast and Mul were ~14% of a batch (the forward runs once per checkpoint, hoisted).
//! The same products, rounded where the standard form rounds; ds sums each channel in eight
//! f64 lanes (`lanes::dot8_f64`).
//! Parts take channels.
use super::exec::{bounds, split, split_opt};
use super::lanes::dot8_f64;
use super::op::{Call, CpuOp, Io::*};
use crate::ops::rule::kernels::{FOLD_SCALE, FOLD_SCALE_GRAD};

/// W [C, ...] and s [C], checked; (shape of W, elements per channel).
fn weight_and_scale<'c>(
    c: &Call<'c>,
    w_at: usize,
) -> ort::Result<(Vec<i64>, &'c [f32], &'c [f64], usize)> {
    let (ws, wv) = c.input_named(w_at, "W")?;
    let (ss, sv) = c.input_f64(w_at + 1)?;
    if ws.is_empty() || ss[..] != [ws[0]] {
        return Err(c.fail(format!(
            "W {:?} and s {:?}: s [W's first axis] expected",
            &ws[..],
            &ss[..]
        )));
    }
    let per = if ws[0] == 0 {
        0
    } else {
        wv.len() / ws[0] as usize
    };
    Ok((ws, wv, sv, per))
}

/// `probe.cpu:FoldScale`.
pub static FOLD_SCALE_OP: CpuOp<()> = CpuOp::new(FOLD_SCALE, fold_scale).io(&[F32, F64], &[F32]);

fn fold_scale(_: &(), c: &Call) -> ort::Result<()> {
    let (ws, wv, sv, per) = weight_and_scale(c, 0)?;
    let out = c.required(0, ws.clone(), "W'")?;
    let ch = sv.len();
    let b = bounds(ch, c.parts_for(ch, wv.len()));
    let pieces = split(out, per, &b).into_iter().zip(b.iter().copied());
    c.run(pieces.collect(), |_, (out, (lo, hi))| {
        for (k, o) in (lo..hi).zip(out.chunks_exact_mut(per.max(1))) {
            for (o, &w) in o.iter_mut().zip(&wv[k * per..(k + 1) * per]) {
                *o = (w as f64 * sv[k]) as f32;
            }
        }
        Ok(())
    })
    .map_err(|e| c.fail(e))
}

/// `probe.cpu:FoldScaleGrad`.
pub static FOLD_SCALE_GRAD_OP: CpuOp<()> =
    CpuOp::new(FOLD_SCALE_GRAD, fold_scale_grad).io(&[F32, F32, F64], &[OptF32, OptF64]);

fn fold_scale_grad(_: &(), c: &Call) -> ort::Result<()> {
    let (gs, gv) = c.input_named(0, "dW'")?;
    let (ws, wv, sv, per) = weight_and_scale(c, 1)?;
    if gs != ws {
        return Err(c.fail(format!("dW' {:?} and W {:?} differ", &gs[..], &ws[..])));
    }
    let dw = c.output(0, ws.clone())?;
    let ds = c.output_f64(1, vec![ws[0]])?;
    let ch = sv.len();
    let b = bounds(ch, c.parts_for(ch, wv.len()));
    let pieces: Vec<_> = split_opt(dw, per, &b)
        .into_iter()
        .zip(split_opt(ds, 1, &b))
        .zip(b.iter().copied())
        .collect();
    c.run(pieces, |_, ((mut dw, mut ds), (lo, hi))| {
        for k in lo..hi {
            let (g, w) = (&gv[k * per..(k + 1) * per], &wv[k * per..(k + 1) * per]);
            if let Some(dw) = dw.as_deref_mut() {
                let out = &mut dw[(k - lo) * per..(k - lo + 1) * per];
                for (o, &g) in out.iter_mut().zip(g) {
                    *o = (sv[k] * g as f64) as f32;
                }
            }
            if let Some(ds) = ds.as_deref_mut() {
                ds[k - lo] = dot8_f64(w, g);
            }
        }
        Ok(())
    })
    .map_err(|e| c.fail(e))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{f64s, rand, Node};
    use super::{FOLD_SCALE, FOLD_SCALE_GRAD};

    /// W [7, 3, 40, 40] (past the 32,768 elements at which kernels split, channels split
    /// unevenly over three parts), s per channel, dW' random.
    fn operands() -> (Vec<f32>, Vec<f64>, Vec<f32>) {
        let w = rand(7 * 4800, 1);
        let s: Vec<f64> = (0..7).map(|c| 0.3 + 0.17 * c as f64).collect();
        (w, s, rand(7 * 4800, 2))
    }

    #[test]
    fn fold_scale_rounds_each_product_once() {
        let (w, s, _) = operands();
        let want: Vec<f64> = (0..w.len())
            .map(|i| ((w[i] as f64 * s[i / 4800]) as f32) as f64)
            .collect();
        let shape = [7, 3, 40, 40];
        let node = Node::new(FOLD_SCALE).input(&shape, &w).f64s(&[7], &s);
        node.output(&shape, &want, 0.0).check();
    }

    #[test]
    fn fold_scale_grad_scales_dw_and_sums_ds_in_f64() {
        let (w, s, g) = operands();
        let dw: Vec<f64> = (0..w.len())
            .map(|i| ((s[i / 4800] * g[i] as f64) as f32) as f64)
            .collect();
        let (wf, gf) = (f64s(&w), f64s(&g));
        let ds: Vec<f64> = (0..7)
            .map(|c| (c * 4800..(c + 1) * 4800).map(|i| wf[i] * gf[i]).sum())
            .collect();
        let mags: Vec<f64> = (0..7)
            .map(|c| {
                (c * 4800..(c + 1) * 4800)
                    .map(|i| (wf[i] * gf[i]).abs())
                    .sum()
            })
            .collect();
        let shape = [7, 3, 40, 40];
        let node = Node::new(FOLD_SCALE_GRAD)
            .input(&shape, &g)
            .input(&shape, &w)
            .f64s(&[7], &s);
        // ds: 4800 f64 additions in order, the same order as the reference (f64 rounding only).
        let bound: Vec<f64> = mags.iter().map(|m| m * 1e-13).collect();
        let node = node.output(&shape, &dw, 0.0);
        node.output_bounds(&[7], &ds, &bound).check();
        // Either output alone.
        let only_ds = Node::new(FOLD_SCALE_GRAD)
            .input(&shape, &g)
            .input(&shape, &w)
            .f64s(&[7], &s);
        only_ds.unnamed().output_bounds(&[7], &ds, &bound).check();
    }

    #[test]
    fn shape_checks() {
        let node = Node::new(FOLD_SCALE)
            .input(&[2, 3], &[0.0; 6])
            .f64s(&[3], &[1.0; 3]);
        node.output(&[2, 3], &[0.0; 6], 0.0)
            .fails("W [2, 3] and s [3]: s [W's first axis] expected");
    }
}
