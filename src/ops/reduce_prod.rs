//! ReduceProd (opset 18+: axes as an optional input; opset 13's `axes` attribute also read;
//! keepdims, noop_with_empty_axes): `Y = prod X` over the reduced axes.
//! https://onnx.ai/onnx/operators/onnx__ReduceProd.html
//!
//! dX_i = dY * prod_{j != i} X_j, exact with zeros in the group, as PyTorch's `prod_backward`
//! takes it: with z the number of zeros in the group and P the product of its nonzero elements,
//! - z = 0: prod_{j != i} X_j = P / X_i (PyTorch's `grad * result / input` in that case);
//! - z = 1: P at the zero element, 0 elsewhere (every other product contains the zero);
//! - z >= 2: 0 everywhere.
//! P and the divisions use X with its zeros replaced by 1, so no 0/0 is ever formed.
use super::attrs::Attrs;
use super::reduce_max::keep_dims;
use super::reduce_sum::{reduced_axes, torch_axes};
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::Result;

pub static RULE: Rule = Rule::new("ReduceProd", Kind::Structured)
    .vjp(vjp)
    .torch(torch);

/// libtorch's prod reduces one dimension at a time: the axes from the last, keeping dims
/// until the end so the remaining axis numbers stay valid.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let keep = c.attr_i("keepdims", 1) != 0;
    let Some(mut axes) = torch_axes(c, &v, x.dim() as i64)? else {
        return one(x.shallow_clone());
    };
    axes.sort();
    let mut y = x.shallow_clone();
    for &a in axes.iter().rev() {
        y = y.f_prod_dim_int(a, true, None::<tch::Kind>)?;
    }
    if !keep {
        for &a in axes.iter().rev() {
            y = y.f_squeeze_dim(a)?;
        }
    }
    one(y)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let x = c.input(0).to_string();
    let axes = reduced_axes(c)?;
    if axes.is_empty() {
        c.set(0, g);
        return Ok(());
    }
    let gk = keep_dims(c, &g, &axes);
    let zero = c.scalar(0.0, &x)?;
    let one = c.scalar(1.0, &x)?;
    let is_zero = c.op("Equal", &[&x, &zero], vec![]);
    let zf = c.op("Where", &[&is_zero, &one, &zero], vec![]);
    let z = c.reduce_sum(&zf, &axes, true);
    let safe = c.op("Where", &[&is_zero, &one, &x], vec![]);
    let ax = c.ints(&axes);
    let p = c.op("ReduceProd", &[&safe, &ax], vec![attr_int("keepdims", 1)]);
    let others = c.op("Div", &[&p, &safe], vec![]);
    // z = 1: P at the zero only; z >= 2 (and z = 1 off the zero): 0.
    let none = c.op("Equal", &[&z, &zero], vec![]);
    let single = c.op("Equal", &[&z, &one], vec![]);
    let at_single = c.op("And", &[&single, &is_zero], vec![]);
    let with_zero = c.op("Where", &[&at_single, &p, &zero], vec![]);
    let d = c.op("Where", &[&none, &others, &with_zero], vec![]);
    let gx = c.op("Mul", &[&gk, &d], vec![]);
    c.set(0, gx);
    Ok(())
}

op_tests!(
    reduce_prod = crate::ops::reduce_sum::reduce_cases("ReduceProd"),
    // Rows with no zero, one zero, two zeros: the product is linear in each element, so
    // central differences are exact at zeros too.
    reduce_prod_zeros = [
        Case::new("ReduceProd")
            .values(
                &[3, 4],
                &[0.5, -2.0, 0.75, 1.5, 0.5, 0.0, -0.75, 2.0, 0.0, 1.5, 0.0, 0.25],
            )
            .ints(&[1], &[1])
            .attr(attr_int("keepdims", 0)),
        Case::new("ReduceProd")
            .values(&[2, 3], &[0.0, 0.5, 2.0, -1.5, 0.0, 0.25])
            .attr(attr_int("keepdims", 0)),
    ],
);
