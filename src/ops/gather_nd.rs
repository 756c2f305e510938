//! GatherND (opset 13+): with `b = batch_dims`, X of shape [B..., D1..Dk, R...] and indices of
//! shape [B..., I..., k], `Y[β, i, :] = X[β, idx[β, i, 0], ..., idx[β, i, k-1], :]`, negative
//! indices counting from the back. https://onnx.ai/onnx/operators/onnx__GatherND.html
//!
//! Y only copies elements of X, so with P the row-major positions of X (P[j] = j, shaped like X),
//! `pos = GatherND(P, idx)` names the source of every Y element and
//! dX = zeros with dY added at `pos` (ScatterElements on the flat view, `reduction = add`: an
//! element read several times receives the sum of its dY elements, as PyTorch's index backward
//! accumulates). Running the forward op itself on P gives batch_dims and negative indices the
//! exact meaning ONNX Runtime gives them. ScatterElements and not ScatterND: see Gather's
//! `scatter_add` (ONNX Runtime's ScatterND with `reduction = add` was not reproducible).
//! The indices are integers and get no gradient.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::slice::{flat_positions, scatter_back};
use super::torch::{input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("GatherND", Kind::Linear).vjp(vjp).torch(torch);

/// X viewed as [B, D, R] (B the batch dims' product, D the k indexed dims', R the rest's) and
/// the indices as [B, M, k]; Y rows are rows `β D + Σ_j idx_j stride_j` of the [B D, R] view.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let (x, idx) = (input(&v, 0)?, input(&v, 1)?);
    let xs = x.size();
    let is = idx.size();
    let b = c.attr_i("batch_dims", 0) as usize;
    let Some(&k) = is.last() else {
        bail!("GatherND: the indices must have rank >= 1, found a scalar")
    };
    let k = k as usize;
    if b + k > xs.len() || b >= is.len() {
        bail!(
            "GatherND: batch_dims {b} and index depth {k} do not fit data {xs:?}, indices {is:?}"
        );
    }
    let bsz: i64 = xs[..b].iter().product();
    let dims = &xs[b..b + k];
    let d: i64 = dims.iter().product();
    let rest = &xs[b + k..];
    let r: i64 = rest.iter().product();
    let idx = idx
        .f_to_kind(tch::Kind::Int64)?
        .f_reshape([bsz, -1, k as i64])?;
    let mut lin = tch::Tensor::f_zeros([bsz, idx.size()[1]], (tch::Kind::Int64, x.device()))?;
    for (j, &dj) in dims.iter().enumerate() {
        let ij = idx.f_select(2, j as i64)?;
        let ij = super::gather::wrap_negative(&ij, dj)?;
        lin = lin.f_mul_scalar(dj)?.f_add(&ij)?;
    }
    let base = tch::Tensor::f_arange(bsz, (tch::Kind::Int64, x.device()))?
        .f_mul_scalar(d)?
        .f_unsqueeze(1)?;
    let rows = lin.f_add(&base)?.f_reshape([-1])?;
    let picked = x.f_reshape([bsz * d, r])?.f_index_select(0, &rows)?;
    let mut shape = is[..is.len() - 1].to_vec();
    shape.extend(rest);
    one(picked.f_reshape(shape.as_slice())?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let (x, idx) = (c.input(0).to_string(), c.input(1).to_string());
    let p = flat_positions(c, &x);
    let batch = c.attr_i("batch_dims", 0);
    let pos = c.op("GatherND", &[&p, &idx], vec![attr_int("batch_dims", batch)]);
    let gx = scatter_back(c, &x, &pos, &g, true)?;
    c.set(0, gx);
    Ok(())
}

op_tests!(
    gather_nd = [
        // Whole rows, with a repeated and a negative index (-3 is row 0, as is 0).
        Case::new("GatherND")
            .input(&[3, 4])
            .ints(&[4, 1], &[0, 2, -3, 2]),
        // Single elements of a 3-D tensor, one read twice.
        Case::new("GatherND")
            .input(&[2, 3, 4])
            .ints(&[2, 2, 3], &[0, 1, 2, 1, 2, 3, 0, 1, 2, -1, 0, -4]),
        // k = 2 of rank 4 with a 1 x 2 grid of indices (the adaptive-pooling export's form).
        Case::new("GatherND")
            .input(&[3, 2, 2, 3])
            .ints(&[1, 2, 2], &[0, 1, 2, 0]),
    ],
    gather_nd_batch_dims = [
        Case::new("GatherND")
            .input(&[2, 3, 4])
            .ints(&[2, 3, 1], &[1, 1, -1, 0, 2, 0])
            .attr(attr_int("batch_dims", 1)),
        Case::new("GatherND")
            .input(&[2, 2, 3, 2])
            .ints(&[2, 2, 2, 1], &[0, 2, 2, 2, 1, 0, 0, -3])
            .attr(attr_int("batch_dims", 2)),
    ],
);
