//! The gradients of the gathers, rows or elements added in place, in index order on one thread
//! (so the sums are deterministic), with no zero tensor written first by another op and no
//! scatter:
//! - `GatherGrad(dY, Indices, Shape) -> dX`: the gradient of `Gather(X, Indices, axis = 0)`, X
//!   of shape `Shape`: `dX[Indices[i]] += dY[i]` row by row (an embedding table's gradient);
//! - `GatherElementsGrad(dY, Indices, Shape) -> dX` along attribute `axis` (required): the
//!   gradient of `GatherElements(X, Indices, axis)`: zeros, then
//!   `dX[i with i_axis = Indices[i]] += dY[i]` for every position i of Indices (the loss
//!   head's pick of each target's log-probability is the usual case).
//!
//! Negative indices count from the end.
use super::op::{Axis, Call, CpuOp, Io::*};
use crate::ops::rule::kernels::{GATHER_ELEMENTS_GRAD, GATHER_GRAD};

/// dY, Indices and Shape (as a Vec).
#[allow(clippy::type_complexity)]
fn inputs<'c>(
    c: &Call<'c>,
) -> ort::Result<((Vec<i64>, &'c [f32]), (Vec<i64>, &'c [i64]), Vec<i64>)> {
    let dy = c.input(0)?;
    let idx = c.input_i64(1)?;
    let shape = c.input_i64(2)?.1.to_vec();
    Ok((dy, idx, shape))
}

/// `probe.cpu:GatherGrad`.
pub static GATHER_GRAD_OP: CpuOp<()> =
    CpuOp::new(GATHER_GRAD, gather_grad).io(&[F32, I64, I64], &[F32]);

fn gather_grad(_: &(), c: &Call) -> ort::Result<()> {
    let ((_, dyv), (_, iv), xs) = inputs(c)?;
    if xs.is_empty() || xs.iter().any(|&v| v < 0) {
        return Err(c.fail(format!("Shape {xs:?}")));
    }
    let (rows, row) = (xs[0], xs[1..].iter().product::<i64>() as usize);
    if dyv.len() != iv.len() * row {
        return Err(c.fail(format!(
            "dY has {} elements for {} indices of rows of {row}",
            dyv.len(),
            iv.len()
        )));
    }
    let out = c.required(0, xs.clone(), "dX")?;
    out.fill(0.0);
    for (i, &k) in iv.iter().enumerate() {
        let k = if k < 0 { k + rows } else { k };
        if k < 0 || k >= rows {
            return Err(c.fail(format!("index {} out of range for {rows} rows", iv[i])));
        }
        let dst = &mut out[k as usize * row..][..row];
        for (o, &g) in dst.iter_mut().zip(&dyv[i * row..][..row]) {
            *o += g;
        }
    }
    Ok(())
}

/// `probe.cpu:GatherElementsGrad`.
pub static GATHER_ELEMENTS_GRAD_OP: CpuOp<Axis> =
    CpuOp::new(GATHER_ELEMENTS_GRAD, gather_elements_grad).io(&[F32, I64, I64], &[F32]);

fn gather_elements_grad(a: &Axis, c: &Call) -> ort::Result<()> {
    let ((dys, dyv), (is, iv), xs) = inputs(c)?;
    let axis = c.axis(a.0, xs.len())?;
    if dys[..] != is[..] || is.len() != xs.len() || xs.iter().any(|&v| v < 0) {
        return Err(c.fail(format!(
            "dY {:?}, Indices {:?}, Shape {xs:?}",
            &dys[..],
            &is[..]
        )));
    }
    let out = c.required(0, xs.clone(), "dX")?;
    out.fill(0.0);
    if iv.is_empty() {
        return Ok(());
    }
    // Indices may be smaller than X in every axis: each position's coordinates, with the
    // index along `axis`, go through X's strides.
    let r = xs.len();
    let x_along = xs[axis];
    let mut xstride = vec![1usize; r];
    for k in (0..r - 1).rev() {
        xstride[k] = xstride[k + 1] * xs[k + 1] as usize;
    }
    let mut coord = vec![0usize; r];
    for (p, (&k, &g)) in iv.iter().zip(dyv.iter()).enumerate() {
        let k = if k < 0 { k + x_along } else { k };
        if k < 0 || k >= x_along {
            return Err(c.fail(format!(
                "index {} out of range for axis {axis} of {x_along} at position {p}",
                iv[p]
            )));
        }
        let mut at = 0usize;
        for d in 0..r {
            at += if d == axis { k as usize } else { coord[d] } * xstride[d];
        }
        out[at] += g;
        // Next position of Indices (row-major odometer).
        for d in (0..r).rev() {
            coord[d] += 1;
            if coord[d] < is[d] as usize || d == 0 {
                break;
            }
            coord[d] = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rand, strides, sums, Node};
    use super::{GATHER_ELEMENTS_GRAD, GATHER_GRAD};
    use crate::model::graph::attr_int;

    /// dX: `dy[p]` added at `at(p)` for every position p, and the magnitudes. The kernels add
    /// in index order on one thread (the chain: how often an element is hit, at most
    /// `dy.len()`).
    fn scatter(n: usize, dy: &[f32], at: impl Fn(usize) -> usize) -> (Vec<f64>, Vec<f64>) {
        sums(n, dy.iter().enumerate().map(|(p, &g)| (at(p), g as f64)))
    }

    #[test]
    fn gather_grad_adds_rows() {
        // X [10, 3, 4] gathered by Indices [6, 7] on axis 0: repeats and negative indices.
        let idx: Vec<i64> = (0..42).map(|i| (i * 7 % 20) - 10).collect();
        let dy = rand(42 * 12, 1);
        let row = |p: usize| (idx[p / 12].rem_euclid(10) as usize) * 12 + p % 12;
        let (want, mags) = scatter(120, &dy, row);
        let n = Node::new(GATHER_GRAD)
            .input(&[6, 7, 3, 4], &dy)
            .ints(&[6, 7], &idx);
        let n = n.ints(&[3], &[10, 3, 4]);
        n.output_sums(&[10, 3, 4], &want, &mags, 42).check();
        // No indices: zeros.
        let n = Node::new(GATHER_GRAD).input(&[0, 3], &[]).ints(&[0], &[]);
        n.ints(&[2], &[4, 3])
            .output(&[4, 3], &[0.0; 12], 0.0)
            .check();
    }

    #[test]
    fn gather_grad_checks_indices() {
        let n = Node::new(GATHER_GRAD)
            .input(&[2, 3], &[0.0; 6])
            .ints(&[2], &[0, 10]);
        let n = n.ints(&[2], &[10, 3]).output(&[10, 3], &[0.0; 30], 0.0);
        n.fails("index 10 out of range for 10 rows");
    }

    #[test]
    fn gather_elements_grad_along_each_axis() {
        // X [5, 7, 3]; Indices [4, 6, 2] but 9 along `axis`: smaller than X on the other
        // axes, longer along it; repeats and negative indices.
        let xs = [5usize, 7, 3];
        for axis in [0i64, 1, -1] {
            let a = axis.rem_euclid(3) as usize;
            let mut is = [4usize, 6, 2];
            is[a] = 9;
            let n = is.iter().product::<usize>();
            let dy = rand(n, 2);
            let idx: Vec<i64> = (0..n as i64)
                .map(|i| (i * 5 % 11) % xs[a] as i64 - 2)
                .collect();
            let (xst, ist) = (strides(&xs), strides(&is));
            let at = |p: usize| {
                (0..3)
                    .map(|d| match d == a {
                        true => idx[p].rem_euclid(xs[a] as i64) as usize * xst[d],
                        false => p / ist[d] % is[d] * xst[d],
                    })
                    .sum()
            };
            let (want, mags) = scatter(xs.iter().product(), &dy, at);
            let node = Node::new(GATHER_ELEMENTS_GRAD).attr(attr_int("axis", axis));
            let node = node.input(&is, &dy).ints(&is, &idx).ints(&[3], &[5, 7, 3]);
            node.output_sums(&xs, &want, &mags, n).check();
        }
        let node = Node::new(GATHER_ELEMENTS_GRAD).attr(attr_int("axis", 1));
        let node = node.input(&[1, 2], &[1.0; 2]).ints(&[1, 2], &[0, -4]);
        let node = node.ints(&[2], &[1, 3]).output(&[1, 3], &[0.0; 3], 0.0);
        node.fails("index -4 out of range for axis 1 of 3 at position 1");
    }
}
