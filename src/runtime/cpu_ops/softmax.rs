//! Softmax's kernels along attribute `axis` (required):
//! - `Softmax(X) -> Y` (ONNX's opset-13 Softmax) by libtorch's vectorized kernel (ONNX
//!   Runtime's is slow on small rows, e.g. [250, 4, 32, 32]);
//! - `SoftmaxGrad(dY, Y) -> dX = Y (dY - sum_axis(dY Y))` in Rust, one pass over each
//!   [outer, A, inner] slab;
//! - `LogSoftmaxGrad(dY, Y) -> dX = dY - exp(Y) sum_axis(dY)` by libtorch's kernel.
//!
//! Parts split the first axis when the softmax runs along another (libtorch's kernels), or the
//! slabs (SoftmaxGrad).
use super::exec::{bounds, split};
use super::ffi;
use super::lanes::dot8;
use super::op::{Axis, Call, CpuOp, Io::*};
use crate::ops::rule::kernels::{LOG_SOFTMAX_GRAD, SOFTMAX, SOFTMAX_GRAD};
use std::ops::Range;

/// A libtorch softmax kernel `f(input range, part shape, part of out)` over `out` (of `shape`),
/// in parts: the first axis split when the softmax runs along another, else one part.
fn by_rows(
    c: &Call,
    shape: &[i64],
    axis: usize,
    out: &mut [f32],
    f: impl Fn(Range<usize>, &[i64], &mut [f32]) -> Result<(), String> + Sync + Send,
) -> ort::Result<()> {
    let len = out.len();
    let rows = if axis == 0 || shape.is_empty() {
        1
    } else {
        shape[0] as usize
    };
    let row = if rows == 1 {
        len
    } else {
        shape[1..].iter().product::<i64>() as usize
    };
    let b = bounds(rows, c.parts_for(rows, len));
    let pieces = split(out, row, &b).into_iter().zip(b.iter().copied());
    c.run(pieces.collect(), |_, (out, (lo, hi))| {
        if hi == lo {
            return Ok(());
        }
        let mut part = shape.to_vec();
        if rows > 1 {
            part[0] = (hi - lo) as i64;
        }
        f(lo * row..hi * row, &part, out)
    })
    .map_err(|e| c.torch(e))
}

/// A gradient's `dY` and `Y` (of one shape), its axis and its output dX.
type GradIo<'c> = (Vec<i64>, &'c [f32], &'c [f32], usize, &'c mut [f32]);

fn grad_io<'c>(a: &Axis, c: &Call<'c>) -> ort::Result<GradIo<'c>> {
    let (dys, dyv) = c.input(0)?;
    let (ys, yv) = c.input(1)?;
    if dys[..] != ys[..] {
        return Err(c.fail(format!("dY {:?} and Y {:?} differ", &dys[..], &ys[..])));
    }
    let axis = c.axis(a.0, ys.len())?;
    let dx = c.required(0, ys.to_vec(), "dX")?;
    Ok((ys, dyv, yv, axis, dx))
}

/// `probe.cpu:Softmax`.
pub static SOFTMAX_OP: CpuOp<Axis> = CpuOp::new(SOFTMAX, softmax).io(&[F32], &[F32]);

fn softmax(a: &Axis, c: &Call) -> ort::Result<()> {
    let (xs, xv) = c.input(0)?;
    let axis = c.axis(a.0, xs.len())?;
    let y = c.required(0, xs.to_vec(), "Y")?;
    by_rows(c, &xs, axis, y, |at, part, y| {
        ffi::softmax(&xv[at], part, axis, y)
    })
}

/// `probe.cpu:LogSoftmaxGrad`.
pub static LOG_SOFTMAX_GRAD_OP: CpuOp<Axis> =
    CpuOp::new(LOG_SOFTMAX_GRAD, log_softmax_grad).io(&[F32, F32], &[F32]);

fn log_softmax_grad(a: &Axis, c: &Call) -> ort::Result<()> {
    let (ys, dyv, yv, axis, dx) = grad_io(a, c)?;
    by_rows(c, &ys, axis, dx, |at, part, dx| {
        ffi::log_softmax_grad(&dyv[at.clone()], &yv[at], part, axis, dx)
    })
}

/// `probe.cpu:SoftmaxGrad`.
pub static SOFTMAX_GRAD_OP: CpuOp<Axis> =
    CpuOp::new(SOFTMAX_GRAD, softmax_grad).io(&[F32, F32], &[F32]);

fn softmax_grad(a: &Axis, c: &Call) -> ort::Result<()> {
    let (ys, dyv, yv, axis, dx) = grad_io(a, c)?;
    let dim = |r: Range<usize>| ys[r].iter().product::<i64>() as usize;
    let (outer, a, inner) = (dim(0..axis), dim(axis..axis + 1), dim(axis + 1..ys.len()));
    let slab = a * inner;
    let b = bounds(outer, c.parts_for(outer, yv.len()));
    let pieces = split(dx, slab, &b).into_iter().zip(b.iter().copied());
    c.run(pieces.collect(), |_, (out, (lo, hi))| {
        let mut s = vec![0f32; inner];
        for (o, out) in (lo..hi).zip(out.chunks_exact_mut(slab.max(1))) {
            let (g, p) = (&dyv[o * slab..][..slab], &yv[o * slab..][..slab]);
            if inner == 1 {
                // The usual last-axis softmax: a dot product per row.
                let s = dot8(g, p);
                for ((o, &g), &p) in out.iter_mut().zip(g).zip(p) {
                    *o = p * (g - s);
                }
                continue;
            }
            s.fill(0.0);
            for (gr, pr) in g.chunks_exact(inner).zip(p.chunks_exact(inner)) {
                for ((s, &g), &p) in s.iter_mut().zip(gr).zip(pr) {
                    *s += g * p;
                }
            }
            for ((or, gr), pr) in out
                .chunks_exact_mut(inner)
                .zip(g.chunks_exact(inner))
                .zip(p.chunks_exact(inner))
            {
                for (((o, &g), &p), &s) in or.iter_mut().zip(gr).zip(pr).zip(&s) {
                    *o = p * (g - s);
                }
            }
        }
        Ok(())
    })
    .map_err(|e| c.fail(e))
}
