//! Softmax's kernels along attribute `axis` (required):
//! - `Softmax(X) -> Y` (ONNX's opset-13 Softmax) by libtorch's vectorized kernel (ONNX
//!   Runtime's is slow on small rows, e.g. [250, 4, 32, 32]), and `LogSoftmax(X) -> Y` likewise
//!   (ONNX Runtime's took 409 ms on a Llama decoder's [2048, 32000] loss head, libtorch's 164);
//! - `SoftmaxGrad(dY, Y) -> dX = Y (dY - sum_axis(dY Y))` in Rust, one pass over each
//!   [outer, A, inner] slab;
//! - `LogSoftmaxGrad(dY, Y) -> dX = dY - exp(Y) sum_axis(dY)` by libtorch's kernel;
//! - `LogSoftmaxPickGrad(dPicked, Indices, Y) -> dX`: the same with `dY` the gradient of
//!   `GatherElements(Y, Indices, axis)` (the loss head's pick of each target's
//!   log-probability; `ops/softmax.rs` fuses the two), built a few rows at a time instead of a
//!   whole dense tensor of Y's size: the same numbers as GatherElementsGrad then
//!   LogSoftmaxGrad, one logits-sized tensor less (262 MB on a 32,000-token vocabulary at
//!   batch 8 x 256). The axis must be the last.
//!
//! Parts split the first axis when the softmax runs along another (libtorch's kernels), or the
//! slabs (SoftmaxGrad).
use super::exec::{bounds, split};
use super::ffi;
use super::lanes::dot8;
use super::op::{Axis, Call, CpuOp, Io::*};
use crate::ops::rule::kernels::{
    LOG_SOFTMAX, LOG_SOFTMAX_GRAD, LOG_SOFTMAX_PICK_GRAD, SOFTMAX, SOFTMAX_GRAD,
};
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
pub static SOFTMAX_OP: CpuOp<Axis> =
    CpuOp::new(SOFTMAX, |a, c| forward(a, c, false)).io(&[F32], &[F32]);

/// `probe.cpu:LogSoftmax`.
pub static LOG_SOFTMAX_OP: CpuOp<Axis> =
    CpuOp::new(LOG_SOFTMAX, |a, c| forward(a, c, true)).io(&[F32], &[F32]);

fn forward(a: &Axis, c: &Call, log: bool) -> ort::Result<()> {
    let (xs, xv) = c.input(0)?;
    let axis = c.axis(a.0, xs.len())?;
    let y = c.required(0, xs.to_vec(), "Y")?;
    by_rows(c, &xs, axis, y, |at, part, y| {
        ffi::softmax(&xv[at], part, axis, log, y)
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

/// `probe.cpu:LogSoftmaxPickGrad`.
pub static LOG_SOFTMAX_PICK_GRAD_OP: CpuOp<Axis> =
    CpuOp::new(LOG_SOFTMAX_PICK_GRAD, log_softmax_pick_grad).io(&[F32, I64, F32], &[F32]);

/// Rows of dY built at a time: about 256 KB, so the dense rows stay in cache between their
/// scatter and libtorch's pass over them.
const PICK_CHUNK: usize = 1 << 16;

fn log_softmax_pick_grad(a: &Axis, c: &Call) -> ort::Result<()> {
    let (ps, pv) = c.input(0)?;
    let (is, iv) = c.input_i64(1)?;
    let (ys, yv) = c.input(2)?;
    let r = ys.len();
    let axis = c.axis(a.0, r)?;
    // GatherElements' Indices: Y's rank, no larger than Y but along the axis (here the last).
    let fits = is.len() == r && (0..r.saturating_sub(1)).all(|d| is[d] <= ys[d]);
    if r == 0 || axis != r - 1 || ps[..] != is[..] || !fits {
        return Err(c.fail(format!(
            "dPicked {:?}, Indices {:?}, Y {:?} along axis {axis}: the axis must be the last, \
             dPicked Indices' shape, and Indices no larger than Y but along the axis",
            &ps[..],
            &is[..],
            &ys[..]
        )));
    }
    let dx = c.required(0, ys.to_vec(), "dX")?;
    if dx.is_empty() {
        // No rows, or rows of width 0 (then no pick is in range, and GatherElements would
        // have refused any): nothing to write, and no chunk of 0 elements to cut.
        return match iv.first() {
            Some(i) if ys[r - 1] == 0 => Err(c.fail(format!(
                "index {i} out of range for axis {axis} of 0 in row 0"
            ))),
            _ => Ok(()),
        };
    }
    let (width, k) = (ys[r - 1], is[r - 1] as usize);
    let (lead_y, lead_i) = (&ys[..r - 1], &is[..r - 1]);
    let rows = lead_y.iter().product::<i64>() as usize;
    // Y's row `row` as a row of Indices, None outside Indices' extent (dY's row is zero there).
    let pick_row = |row: usize| -> Option<usize> {
        if lead_i == lead_y {
            return Some(row);
        }
        let (mut rest, mut at, mut stride) = (row, 0usize, 1usize);
        for d in (0..r - 1).rev() {
            let (n, m) = (lead_y[d] as usize, lead_i[d] as usize);
            let coord = rest % n;
            rest /= n;
            if coord >= m {
                return None;
            }
            at += coord * stride;
            stride *= m;
        }
        Some(at)
    };
    let w = width as usize;
    let chunk = (PICK_CHUNK / w.max(1)).max(1);
    let b = bounds(rows, c.parts_for(rows, dx.len()));
    let pieces = split(dx, w, &b).into_iter().zip(b.iter().copied());
    c.run(pieces.collect(), |_, (out, (lo, hi))| {
        let mut dy = vec![0f32; chunk.min(hi - lo) * w];
        for (at, out) in (lo..hi).step_by(chunk).zip(out.chunks_mut(chunk * w)) {
            let n = out.len() / w.max(1);
            let dy = &mut dy[..n * w];
            dy.fill(0.0);
            // dY's rows: each pick's gradient added at its index, in index order (as
            // GatherElementsGrad adds them).
            for row in 0..n {
                let Some(pr) = pick_row(at + row) else {
                    continue;
                };
                for (&i, &g) in iv[pr * k..][..k].iter().zip(&pv[pr * k..][..k]) {
                    let j = if i < 0 { i + width } else { i };
                    if j < 0 || j >= width {
                        return Err(format!(
                            "index {i} out of range for axis {axis} of {width} in row {}",
                            at + row
                        ));
                    }
                    dy[row * w + j as usize] += g;
                }
            }
            let y = &yv[at * w..(at + n) * w];
            ffi::log_softmax_grad(dy, y, &[n as i64, width], 1, out)?;
        }
        Ok(())
    })
    .map_err(|e| c.fail(e))
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

#[cfg(test)]
mod tests {
    use super::super::testing::{f32s, rand, Node};
    use super::{LOG_SOFTMAX, LOG_SOFTMAX_GRAD, LOG_SOFTMAX_PICK_GRAD, SOFTMAX, SOFTMAX_GRAD};
    use crate::model::graph::attr_int;

    /// 36,400 elements, over the 32,768 at which these kernels split; 7 rows and 91 slabs
    /// before the last axis, neither a multiple of 3.
    const SHAPE: [usize; 3] = [7, 13, 400];
    const N: usize = 7 * 13 * 400;

    /// The axes tried: the last (the row kernels), a middle one (strided lanes), the first (one
    /// part), the last counted from the end.
    const AXES: [i64; 4] = [2, 1, 0, -1];

    /// Each lane of `SHAPE` along `axis`: its elements' flat indices.
    fn lanes(axis: i64) -> Vec<Vec<usize>> {
        let axis = axis.rem_euclid(3) as usize;
        let a = SHAPE[axis];
        let inner: usize = SHAPE[axis + 1..].iter().product();
        let outer = N / (a * inner);
        let lane = |o: usize, i: usize| (0..a).map(|j| (o * a + j) * inner + i).collect();
        (0..outer)
            .flat_map(|o| (0..inner).map(move |i| lane(o, i)))
            .collect()
    }

    /// X in [-4, 4], with lanes that overflow exp unless the maximum is taken out first (1000
    /// and 900 at the first two elements, which lead lanes along every axis) and a -inf
    /// (probability 0).
    fn x() -> Vec<f32> {
        let mut x: Vec<f32> = rand(N, 1).iter().map(|v| 4.0 * v).collect();
        x[..3].copy_from_slice(&[1000.0, 900.0, f32::NEG_INFINITY]);
        x
    }

    /// Softmax of `x` along `axis` (log-softmax with `log`), in f64.
    fn softmax(x: &[f32], axis: i64, log: bool) -> Vec<f64> {
        let mut y = vec![0f64; N];
        for lane in lanes(axis) {
            let m = lane.iter().map(|&i| x[i] as f64).fold(f64::MIN, f64::max);
            let s: f64 = lane.iter().map(|&i| (x[i] as f64 - m).exp()).sum();
            for &i in &lane {
                let z = x[i] as f64 - m;
                y[i] = if log { z - s.ln() } else { z.exp() / s };
            }
        }
        y
    }

    /// The lane's length: the f32 sums' chain (the exp's few ulps on top).
    fn chain(axis: i64) -> usize {
        SHAPE[axis.rem_euclid(3) as usize] + 4
    }

    #[test]
    fn softmax_along_each_axis() {
        let x = x();
        for axis in AXES {
            let y = softmax(&x, axis, false);
            // Each output's error is relative to itself (a quotient of two rounded values).
            let node = Node::new(SOFTMAX).attr(attr_int("axis", axis));
            let node = node.input(&SHAPE, &x);
            node.output_sums(&SHAPE, &y, &y, chain(axis)).check();
        }
    }

    #[test]
    fn log_softmax_along_each_axis() {
        let x = x();
        for axis in AXES {
            let y = softmax(&x, axis, true);
            // y = (x - max) - ln(sum): the error follows both terms' magnitudes, |x - max|
            // (its rounding) and |ln(sum)| (the sum's chain); bounded by |y| + 2 |ln(sum)|.
            let lse: Vec<f64> = softmax(&x, axis, false)
                .iter()
                .zip(&y)
                .map(|(&p, &l)| if p > 0.0 { (l - p.ln()).abs() } else { 0.0 })
                .collect();
            let mags: Vec<f64> = y
                .iter()
                .zip(&lse)
                .map(|(l, s)| l.abs() + 2.0 * s + 1.0)
                .collect();
            let node = Node::new(LOG_SOFTMAX).attr(attr_int("axis", axis));
            let node = node.input(&SHAPE, &x);
            node.output_sums(&SHAPE, &y, &mags, chain(axis)).check();
        }
    }

    /// `op` along each axis, Y the softmax of X (log-softmax with `log`): `rule(dY, Y)` gives
    /// each lane's dX and the magnitudes its error follows.
    fn check_grad(op: &'static str, log: bool, rule: impl Fn(&[f64], &[f64]) -> Vec<(f64, f64)>) {
        let dy = rand(N, 2);
        for axis in AXES {
            let y = f32s(&softmax(&x(), axis, log));
            let (mut want, mut mags) = (vec![0f64; N], vec![0f64; N]);
            for lane in lanes(axis) {
                let of = |v: &[f32]| lane.iter().map(|&i| v[i] as f64).collect::<Vec<_>>();
                for (&i, (w, m)) in lane.iter().zip(rule(&of(&dy), &of(&y))) {
                    (want[i], mags[i]) = (w, m);
                }
            }
            let node = Node::new(op).attr(attr_int("axis", axis));
            let node = node.input(&SHAPE, &dy).input(&SHAPE, &y);
            node.output_sums(&SHAPE, &want, &mags, chain(axis)).check();
        }
    }

    #[test]
    fn softmax_grad_along_each_axis() {
        // dX = Y (dY - sum(dY Y)); the error follows Y (|dY| + sum |dY Y|).
        check_grad(SOFTMAX_GRAD, false, |dy, y| {
            let s: f64 = dy.iter().zip(y).map(|(g, p)| g * p).sum();
            let m: f64 = dy.iter().zip(y).map(|(g, p)| (g * p).abs()).sum();
            dy.iter()
                .zip(y)
                .map(|(g, p)| (p * (g - s), p * (g.abs() + m)))
                .collect()
        });
    }

    #[test]
    fn log_softmax_grad_along_each_axis() {
        // dX = dY - exp(Y) sum(dY); the error follows |dY| + exp(Y) sum |dY|.
        check_grad(LOG_SOFTMAX_GRAD, true, |dy, y| {
            let (s, m): (f64, f64) = (dy.iter().sum(), dy.iter().map(|g| g.abs()).sum());
            let p = y.iter().map(|y| y.exp());
            dy.iter()
                .zip(p)
                .map(|(g, p)| (g - p * s, g.abs() + p * m))
                .collect()
        });
    }

    /// The loss head's pick fused in: Y a log-softmax [7, 13, 400] along the last axis,
    /// Indices [7, 13, 1] (one target a row), [7, 13, 3] (repeats, negative indices) and
    /// [5, 9, 2] (smaller than Y: the rows outside get dY = 0). Want: GatherElements' scatter
    /// of dPicked, then dY - exp(Y) sum(dY), in f64.
    #[test]
    fn log_softmax_pick_grad_is_the_scatter_then_the_grad() {
        let y = f32s(&softmax(&x(), 2, true));
        for is in [[7usize, 13, 1], [7, 13, 3], [5, 9, 2]] {
            let n = is.iter().product::<usize>();
            let dp = rand(n, 3);
            let idx: Vec<i64> = (0..n as i64).map(|i| (i * 37 % 425) - 25).collect();
            let mut dy = vec![0f64; N];
            for (p, (&i, &g)) in idx.iter().zip(&dp).enumerate() {
                let (a, b) = (p / (is[1] * is[2]), p / is[2] % is[1]);
                dy[(a * 13 + b) * 400 + i.rem_euclid(400) as usize] += g as f64;
            }
            let (mut want, mut mags) = (vec![0f64; N], vec![0f64; N]);
            for row in 0..N / 400 {
                let r = row * 400..(row + 1) * 400;
                let s: f64 = dy[r.clone()].iter().sum();
                let m: f64 = dy[r.clone()].iter().map(|g| g.abs()).sum();
                for i in r {
                    let p = (y[i] as f64).exp();
                    (want[i], mags[i]) = (dy[i] - p * s, dy[i].abs() + p * m);
                }
            }
            let node = Node::new(LOG_SOFTMAX_PICK_GRAD).attr(attr_int("axis", 2));
            let node = node.input(&is, &dp).ints(&is, &idx).input(&SHAPE, &y);
            node.output_sums(&SHAPE, &want, &mags, chain(2)).check();
        }
        let node = Node::new(LOG_SOFTMAX_PICK_GRAD).attr(attr_int("axis", 1));
        let node = node.input(&[1, 1], &[1.0]).ints(&[1, 1], &[3]);
        let node = node
            .input(&[1, 3], &[0.0; 3])
            .output(&[1, 3], &[0.0; 3], 0.0);
        node.fails("index 3 out of range for axis 1 of 3 in row 0");
        let node = Node::new(LOG_SOFTMAX_PICK_GRAD).attr(attr_int("axis", 0));
        let node = node.input(&[1, 1], &[1.0]).ints(&[1, 1], &[0]);
        let node = node
            .input(&[1, 3], &[0.0; 3])
            .output(&[1, 3], &[0.0; 3], 0.0);
        node.fails("the axis must be the last");
    }

    #[test]
    fn empty_tensors_and_checks() {
        let one = |op| Node::new(op).attr(attr_int("axis", 1));
        for op in [SOFTMAX, LOG_SOFTMAX] {
            one(op)
                .input(&[0, 5], &[])
                .output(&[0, 5], &[], 0.0)
                .check();
            one(op)
                .input(&[3, 0], &[])
                .output(&[3, 0], &[], 0.0)
                .check();
        }
        for op in [SOFTMAX_GRAD, LOG_SOFTMAX_GRAD] {
            let node = one(op).input(&[0, 5], &[]).input(&[0, 5], &[]);
            node.output(&[0, 5], &[], 0.0).check();
            let node = one(op).input(&[2, 3], &[0.0; 6]).input(&[3, 2], &[0.0; 6]);
            node.output(&[3, 2], &[0.0; 6], 0.0)
                .fails("dY [2, 3] and Y [3, 2] differ");
        }
        // The fused pick with no rows, and with rows of width 0 (no pick, or one out of range).
        let pick = |ys: &[usize], is: &[usize], idx: &[i64]| {
            let node = one(LOG_SOFTMAX_PICK_GRAD).input(is, &vec![1.0; idx.len()]);
            node.ints(is, idx).input(ys, &[]).output(ys, &[], 0.0)
        };
        pick(&[0, 5], &[0, 1], &[]).check();
        pick(&[3, 0], &[3, 0], &[]).check();
        pick(&[1, 0], &[1, 1], &[0]).fails("index 0 out of range for axis 1 of 0 in row 0");
        let node = Node::new(SOFTMAX).attr(attr_int("axis", 2));
        node.input(&[2, 3], &[0.0; 6])
            .output(&[2, 3], &[0.0; 6], 0.0)
            .fails("axis 2 out of range");
    }
}
