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
use super::op::{Attrs, Call, CpuOp, Io};
use std::ops::Range;

pub const SOFTMAX: &str = "Softmax";
pub const SOFTMAX_GRAD: &str = "SoftmaxGrad";
pub const LOG_SOFTMAX_GRAD: &str = "LogSoftmaxGrad";

/// The attribute all three take.
pub struct Axis(i64);

impl Axis {
    fn read(a: &Attrs) -> ort::Result<Axis> {
        Ok(Axis(a.req("axis")?))
    }
}

/// A libtorch softmax kernel's parts over `out` (of `shape`): the first axis split when the
/// softmax runs along another, else one part. Each piece: its rows of `out`, the same rows'
/// element range in the inputs, and the part's shape.
fn row_parts<'o>(
    c: &Call,
    shape: &[i64],
    axis: usize,
    out: &'o mut [f32],
) -> Vec<(&'o mut [f32], Range<usize>, Vec<i64>)> {
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
    split(out, row, &b)
        .into_iter()
        .zip(&b)
        .map(|(piece, &(lo, hi))| {
            let mut s = shape.to_vec();
            if rows > 1 {
                s[0] = (hi - lo) as i64;
            }
            (piece, lo * row..hi * row, s)
        })
        .collect()
}

/// `dY` and `Y` of one shape.
fn grad_inputs<'c>(c: &Call<'c>) -> ort::Result<(Vec<i64>, &'c [f32], &'c [f32])> {
    let (dys, dyv) = c.input(0)?;
    let (ys, yv) = c.input(1)?;
    if dys[..] != ys[..] {
        return Err(c.fail(format!("dY {:?} and Y {:?} differ", &dys[..], &ys[..])));
    }
    Ok((ys, dyv, yv))
}

/// `probe.cpu:Softmax`.
pub struct Softmax(Axis);

impl CpuOp for Softmax {
    const NAME: &'static str = SOFTMAX;
    const INPUTS: &'static [Io] = &[Io::F32];
    const OUTPUTS: &'static [Io] = &[Io::F32];
    fn new(a: &Attrs) -> ort::Result<Softmax> {
        Ok(Softmax(Axis::read(a)?))
    }
    fn compute(&self, c: &Call) -> ort::Result<()> {
        let (xs, xv) = c.input(0)?;
        let axis = c.axis(self.0 .0, xs.len())?;
        let y = c.required(0, xs.to_vec(), "Y")?;
        c.run(row_parts(c, &xs, axis, y), |_, (y, at, shape)| {
            if at.is_empty() {
                return Ok(());
            }
            ffi::softmax(&xv[at], &shape, axis, y)
        })
        .map_err(|e| c.torch(e))
    }
}

/// `probe.cpu:LogSoftmaxGrad`.
pub struct LogSoftmaxGrad(Axis);

impl CpuOp for LogSoftmaxGrad {
    const NAME: &'static str = LOG_SOFTMAX_GRAD;
    const INPUTS: &'static [Io] = &[Io::F32, Io::F32];
    const OUTPUTS: &'static [Io] = &[Io::F32];
    fn new(a: &Attrs) -> ort::Result<LogSoftmaxGrad> {
        Ok(LogSoftmaxGrad(Axis::read(a)?))
    }
    fn compute(&self, c: &Call) -> ort::Result<()> {
        let (ys, dyv, yv) = grad_inputs(c)?;
        let axis = c.axis(self.0 .0, ys.len())?;
        let dx = c.required(0, ys.to_vec(), "dX")?;
        c.run(row_parts(c, &ys, axis, dx), |_, (dx, at, shape)| {
            if at.is_empty() {
                return Ok(());
            }
            ffi::log_softmax_grad(&dyv[at.clone()], &yv[at], &shape, axis, dx)
        })
        .map_err(|e| c.torch(e))
    }
}

/// `probe.cpu:SoftmaxGrad`.
pub struct SoftmaxGrad(Axis);

impl CpuOp for SoftmaxGrad {
    const NAME: &'static str = SOFTMAX_GRAD;
    const INPUTS: &'static [Io] = &[Io::F32, Io::F32];
    const OUTPUTS: &'static [Io] = &[Io::F32];
    fn new(a: &Attrs) -> ort::Result<SoftmaxGrad> {
        Ok(SoftmaxGrad(Axis::read(a)?))
    }
    fn compute(&self, c: &Call) -> ort::Result<()> {
        let (ys, dyv, yv) = grad_inputs(c)?;
        let axis = c.axis(self.0 .0, ys.len())?;
        let dx = c.required(0, ys.to_vec(), "dX")?;
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
}
