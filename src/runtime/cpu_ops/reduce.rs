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

#[cfg(test)]
mod tests {
    use super::super::testing::{rand, sums, Node};
    use super::REDUCE_SUM_LEADING;
    use crate::model::graph::attr_int;

    fn node(axis: i64, shape: &[usize], x: &[f32]) -> Node {
        Node::new(REDUCE_SUM_LEADING)
            .attr(attr_int("axis", axis))
            .input(shape, x)
    }

    #[test]
    fn sums_over_the_leading_axes() {
        // 36,400 elements, over the 32,768 at which the kernel splits its rows: 7 or 91 rows
        // (axes 1, 2), none a multiple of 3; axis 0 sums nothing, axis 3 everything.
        let shape = [7, 13, 400];
        let x = rand(36_400, 1);
        for axis in 0..=3 {
            let r: usize = shape[axis..].iter().product();
            let (want, mags) = sums(r, x.iter().enumerate().map(|(i, &v)| (i % r, v as f64)));
            let mut ys = vec![1; axis];
            ys.extend(&shape[axis..]);
            // Each part sums its rows in f32 (the chain: all rows at one part), then in f64.
            let rows = x.len() / r;
            node(axis as i64, &shape, &x)
                .output_sums(&ys, &want, &mags, rows)
                .check();
        }
    }

    #[test]
    fn empty_and_out_of_range() {
        node(1, &[0, 5], &[])
            .output(&[1, 5], &[0.0; 5], 0.0)
            .check();
        node(1, &[5, 0], &[]).output(&[1, 0], &[], 0.0).check();
        node(3, &[2, 3], &[0.0; 6])
            .output(&[1, 1], &[0.0], 0.0)
            .fails("axis 3 for X [2, 3]");
    }
}
