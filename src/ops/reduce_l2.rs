//! ReduceL2 (opset 18+: axes as an optional input; opset 13's `axes` attribute also read;
//! keepdims, noop_with_empty_axes): `Y = sqrt(sum X^2)` over the reduced axes.
//! https://onnx.ai/onnx/operators/onnx__ReduceL2.html
//!
//! dX = X * dY / Y. Where Y = 0 (a group of zeros) the norm has no derivative; PyTorch's
//! `norm_backward` for p = 2 (what `x.norm(dim)` and `linalg.vector_norm`, which export to this
//! op, run) takes `self * (grad / norm).masked_fill_(norm == 0, 0)`: 0 there, as here.
use super::attrs::Attrs;
use super::reduce_max::keep_dims;
use super::reduce_sum::{reduced_axes, torch_axes};
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("ReduceL2", Kind::Structured)
    .vjp(vjp)
    .torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let keep = c.attr_i("keepdims", 1) != 0;
    let Some(axes) = torch_axes(c, &v, x.dim() as i64)? else {
        // No reduction: sqrt(x^2) = |x| elementwise.
        return one(x.f_abs()?);
    };
    one(x.f_norm_scalaropt_dim(2.0, axes.as_slice(), keep)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let (x, y) = (c.input(0).to_string(), c.output(0).to_string());
    let axes = reduced_axes(c)?;
    let gk = keep_dims(c, &g, &axes);
    let yk = keep_dims(c, &y, &axes);
    let zero = c.scalar(0.0, &x)?;
    let q = c.op("Div", &[&gk, &yk], vec![]);
    let at_zero = c.op("Equal", &[&yk, &zero], vec![]);
    let q = c.op("Where", &[&at_zero, &zero, &q], vec![]);
    let gx = c.op("Mul", &[&x, &q], vec![]);
    c.set(0, gx);
    Ok(())
}

op_tests!(
    reduce_l2 = crate::ops::reduce_sum::reduce_cases("ReduceL2"),
    // A group of zeros (row 0) takes gradient 0, as PyTorch's norm_backward gives it; finite
    // differences there see |h| / h = 0 too (central differences of an even function).
    reduce_l2_zero_group = [Case::new("ReduceL2")
        .values(&[2, 3], &[0.0, 0.0, 0.0, 0.5, -0.25, 1.0])
        .ints(&[1], &[1])
        .attr(attr_int("keepdims", 0))],
);
