//! Convolutions by libtorch (what PyTorch eager runs; oneDNN on x86), attributes `strides`,
//! `pads` (symmetric, ONNX order: begins then ends), `dilations`, `group`, all required:
//! - `Conv(X, W, B?) -> Y`: ONNX's Conv (libtorch's forward convolution), attribute `relu`
//!   (optional, 0 or 1: `max(Y, 0)`, a Relu after the Conv fused in by `autodiff/fuse.rs`);
//!   for small channel counts ONNX Runtime's im2col + GEMM Conv ran ~3x slower than oneDNN's.
//! - `ConvGrad(dY, X, W) -> (dW?, dB?)`: the parameter gradients of `Y = Conv(X, W, B)` for
//!   the outputs the node names (libtorch's `convolution_backward`, PyTorch's own Conv
//!   backward). Not dX: libtorch's backward-data ran 3-6x slower here than a forward
//!   convolution of dY with the flipped kernel, which is how the rule builds dX.
//! - `ConvGradX(dY, X, W) -> dX`: the input gradient by libtorch's backward-data (X read for
//!   its shape only), for the strided convolutions where it beat ONNX Runtime's ConvTranspose
//!   (see `torch_dx_pays` in `ops/conv.rs`).
//!
//! Why: a convolution's weight gradient `dW[m,c,t] = sum_{n,o} dY[n,m,o] Xpad[n,c,o*s + t*d]`
//! has no standard ONNX op; built from standard ops (im2col as a Conv, then a batched MatMul;
//! see `ops/conv.rs`) it moves the whole im2col matrix through memory, where oneDNN's
//! backward-weights primitive fuses the two.
//!
//! Parts take samples: convolutions are independent per sample, so the parts of Y and dX are
//! disjoint rows; dW and dB are sums over samples, each part's into its own buffer, added at
//! the end.
use super::exec::{add_parts, bounds, split, sum_parts};
use super::ffi::{self, ConvGeometry};
use super::op::{Attrs, Call, CpuOp, FromAttrs, Io::*};
use crate::ops::rule::kernels::{CONV, CONV_GRAD, CONV_GRAD_X};

/// Convolution attributes as libtorch takes them (symmetric padding, one value per axis).
#[derive(Debug, Clone)]
pub struct ConvAttrs {
    strides: Vec<i64>,
    padding: Vec<i64>,
    dilations: Vec<i64>,
    group: i64,
    /// Conv only: Y = max(Conv(X), 0), a Relu after the Conv fused in (`autodiff/fuse.rs`).
    relu: bool,
}

impl FromAttrs for ConvAttrs {
    fn read(a: &Attrs) -> ort::Result<ConvAttrs> {
        let strides: Vec<i64> = a.req("strides")?;
        let pads: Vec<i64> = a.req("pads")?;
        let dilations: Vec<i64> = a.req("dilations")?;
        let group: i64 = a.req("group")?;
        let r = strides.len();
        if dilations.len() != r || pads.len() != 2 * r || pads[..r] != pads[r..] {
            return Err(a.fail(format!(
                "strides {strides:?}, dilations {dilations:?} and symmetric pads expected, got \
                 pads {pads:?}"
            )));
        }
        Ok(ConvAttrs {
            padding: pads[..r].to_vec(),
            strides,
            dilations,
            group,
            relu: a.flag("relu"),
        })
    }
}

impl ConvAttrs {
    fn geometry(&self) -> ConvGeometry<'_> {
        ConvGeometry {
            strides: &self.strides,
            padding: &self.padding,
            dilations: &self.dilations,
            group: self.group,
        }
    }
}

/// `shape` with its first axis (the batch) `rows`.
fn with_rows(shape: &[i64], rows: usize) -> Vec<i64> {
    let mut s = shape.to_vec();
    s[0] = rows as i64;
    s
}

/// Elements per sample of `shape`.
fn per_sample(shape: &[i64]) -> usize {
    shape[1..].iter().product::<i64>() as usize
}

/// `probe.cpu:Conv`: libtorch's forward convolution.
pub static CONV_OP: CpuOp<ConvAttrs> = CpuOp::new(CONV, conv).io(&[F32, F32, OptF32], &[F32]);

fn conv(a: &ConvAttrs, c: &Call) -> ort::Result<()> {
    let (xs, xv) = c.input_named(0, "X")?;
    let (ws, wv) = c.input_named(1, "W")?;
    let bv = c.optional(2)?.map(|b| b.1);
    let (rank, k) = (xs.len(), a.strides.len());
    if rank != k + 2 || ws.len() != rank {
        return Err(c.fail(format!(
            "X {:?} and W {:?} with {k} spatial axes",
            &xs[..],
            &ws[..]
        )));
    }
    // o = (h + 2p - d(k-1) - 1) / s + 1 per spatial axis (floor).
    let mut ys = vec![xs[0], ws[0]];
    for i in 0..k {
        let room = xs[2 + i] + 2 * a.padding[i] - a.dilations[i] * (ws[2 + i] - 1) - 1;
        if room < 0 {
            return Err(c.fail(format!(
                "kernel {:?} larger than padded X {:?}",
                &ws[..],
                &xs[..]
            )));
        }
        ys.push(room / a.strides[i] + 1);
    }
    let y = c.required(0, ys.clone(), "Y")?;
    let (x_row, y_row) = (per_sample(&xs), per_sample(&ys));
    let n = xs[0] as usize;
    let b = bounds(n, c.parts.min(n.max(1)));
    let pieces = split(y, y_row, &b).into_iter().zip(b.iter().copied());
    let g = a.geometry();
    c.run(pieces.collect(), |_, (y, (lo, hi))| {
        if hi == lo {
            return Ok(());
        }
        let x = &xv[lo * x_row..hi * x_row];
        let (xs_p, ys_p) = (with_rows(&xs, hi - lo), with_rows(&ys, hi - lo));
        ffi::conv((x, &xs_p), (wv, &ws), bv, &g, a.relu, y, &ys_p)
    })
    .map_err(|e| c.torch(e))
}

/// dY, X, W of a convolution's backward, checked against each other and the attributes.
fn backward_inputs<'c>(
    c: &Call<'c>,
    a: &ConvAttrs,
    same_batch: bool,
) -> ort::Result<[(Vec<i64>, &'c [f32]); 3]> {
    let (dy, x, w) = (c.input(0)?, c.input(1)?, c.input(2)?);
    let (dys, xs, ws) = (&dy.0, &x.0, &w.0);
    let rank = xs.len();
    if rank < 3
        || dys.len() != rank
        || ws.len() != rank
        || a.strides.len() != rank - 2
        || (same_batch && dys[0] != xs[0])
    {
        return Err(c.fail(format!(
            "dY {:?}, X {:?}, W {:?} with {} spatial axes",
            &dys[..],
            &xs[..],
            &ws[..],
            a.strides.len()
        )));
    }
    Ok([dy, x, w])
}

/// Samples `[lo, hi)` of a backward (`ins` dY, X, W): libtorch's `convolution_backward` over
/// those samples, into the part's own `outs` (dX, dW, dB, each only when asked).
fn backward_part(
    [(dys, dyv), (xs, xv), (ws, wv)]: &[(Vec<i64>, &[f32]); 3],
    g: &ConvGeometry,
    (lo, hi): (usize, usize),
    outs: [Option<&mut [f32]>; 3],
) -> Result<(), String> {
    if hi == lo {
        // No samples (a batch of 0: one part, empty): dW and dB are sums over none.
        for out in outs.into_iter().flatten() {
            out.fill(0.0);
        }
        return Ok(());
    }
    let (x_row, y_row) = (per_sample(xs), per_sample(dys));
    let (xs_p, dys_p) = (with_rows(xs, hi - lo), with_rows(dys, hi - lo));
    let dy = (&dyv[lo * y_row..hi * y_row], &dys_p[..]);
    let x = (&xv[lo * x_row..hi * x_row], &xs_p[..]);
    ffi::conv_grad(dy, x, (wv, ws), g, outs)
}

/// `probe.cpu:ConvGrad`: dW and dB by libtorch's `convolution_backward`.
pub static CONV_GRAD_OP: CpuOp<ConvAttrs> =
    CpuOp::new(CONV_GRAD, conv_grad).io(&[F32, F32, F32], &[OptF32, OptF32]);

fn conv_grad(a: &ConvAttrs, c: &Call) -> ort::Result<()> {
    let ins = backward_inputs(c, a, false)?;
    let (xs, ws) = (&ins[1].0, &ins[2].0);
    // Outputs the node does not name are not computed (libtorch's output_mask).
    let (mut dw, mut db) = (c.output(0, ws.to_vec())?, c.output(1, vec![ws[0]])?);
    let n = xs[0] as usize;
    let parts = c.parts.min(n.max(1));
    let (wn, m) = (ws.iter().product::<i64>() as usize, ws[0] as usize);
    // Part 0 sums into the outputs, the others into their own buffers.
    let mut dw_parts = vec![0f32; if dw.is_none() { 0 } else { wn * (parts - 1) }];
    let mut db_parts = vec![0f32; if db.is_none() { 0 } else { m * (parts - 1) }];
    let pieces: Vec<_> = sum_parts(dw.as_deref_mut(), &mut dw_parts, parts)
        .into_iter()
        .zip(sum_parts(db.as_deref_mut(), &mut db_parts, parts))
        .collect();
    let (b, g) = (bounds(n, parts), a.geometry());
    c.run(pieces, |i, (dw, db)| {
        backward_part(&ins, &g, b[i], [None, dw, db])
    })
    .map_err(|e| c.torch(e))?;
    // dW = sum over parts (the sum over samples, split), likewise dB.
    for (out, buf) in [(dw, &dw_parts), (db, &db_parts)] {
        if let Some(out) = out {
            add_parts(out, buf);
        }
    }
    Ok(())
}

/// `probe.cpu:ConvGradX`: dX by libtorch's backward-data.
pub static CONV_GRAD_X_OP: CpuOp<ConvAttrs> =
    CpuOp::new(CONV_GRAD_X, conv_grad_x).io(&[F32, F32, F32], &[F32]);

fn conv_grad_x(a: &ConvAttrs, c: &Call) -> ort::Result<()> {
    let ins = backward_inputs(c, a, true)?;
    let xs = &ins[1].0;
    let dx = c.required(0, xs.to_vec(), "dX")?;
    let n = xs[0] as usize;
    let (b, g) = (bounds(n, c.parts.min(n.max(1))), a.geometry());
    let pieces = split(dx, per_sample(xs), &b)
        .into_iter()
        .zip(b.iter().copied());
    c.run(pieces.collect(), |_, (dx, r)| {
        backward_part(&ins, &g, r, [Some(dx), None, None])
    })
    .map_err(|e| c.torch(e))
}
