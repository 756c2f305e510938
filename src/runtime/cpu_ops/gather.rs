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
