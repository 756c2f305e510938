//! `ReduceSumLeading(X) -> Y`, attribute `axis` (required): the sum over X's first `axis` axes,
//! kept as 1s (ReduceSum with those axes and keepdims = 1; a bias gradient's sum over batch and
//! positions). X viewed as [M, R]: each part adds its rows into an f32 row of its own, so the
//! inner loop vectorizes along R, and the parts' rows are added in f64.
use super::exec::bounds;
use super::op::{Axis, Call, CpuOp, Io::*};
use crate::ops::rule::kernels::REDUCE_SUM_LEADING;

/// `probe.cpu:ReduceSumLeading`.
pub static REDUCE_SUM_LEADING_OP: CpuOp<Axis> =
    CpuOp::new(REDUCE_SUM_LEADING, reduce_sum_leading).io(&[F32], &[F32]);

fn reduce_sum_leading(a: &Axis, c: &Call) -> ort::Result<()> {
    let (xs, xv) = c.input(0)?;
    let j = a.0;
    if j < 0 || j as usize > xs.len() {
        return Err(c.fail(format!("axis {j} for X {:?}", &xs[..])));
    }
    let j = j as usize;
    let r = xs[j..].iter().product::<i64>() as usize;
    let mut ys = vec![1i64; j];
    ys.extend(&xs[j..]);
    let y = c.required(0, ys, "Y")?;
    let m = if r == 0 { 0 } else { xv.len() / r };
    let b = bounds(m, c.parts_for(m, xv.len()));
    let sums = std::sync::Mutex::new(vec![0f64; r]);
    c.run(b, |_, (lo, hi)| {
        let mut acc = vec![0f32; r];
        // r = 0 (X empty along a kept axis): no rows, and no chunks of 0 (a panic, which
        // aborts: this runs inside ONNX Runtime's C call).
        for row in xv[lo * r..hi * r].chunks_exact(r.max(1)) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        let mut s = sums.lock().unwrap();
        for (s, &a) in s.iter_mut().zip(&acc) {
            *s += a as f64;
        }
        Ok(())
    })
    .map_err(|e| c.fail(e))?;
    for (o, &s) in y.iter_mut().zip(sums.into_inner().unwrap().iter()) {
        *o = s as f32;
    }
    Ok(())
}
