//! ReduceLogSumExp (opset 18+: axes as an optional input; opset 13's `axes` attribute also
//! read; keepdims, noop_with_empty_axes): `Y = log(sum exp X)` over the reduced axes.
//! https://onnx.ai/onnx/operators/onnx__ReduceLogSumExp.html
//!
//! dX = dY * exp(X - Y) (the softmax of each group), as PyTorch's `logsumexp_backward`
//! takes it (`grad * (self - result).exp()`).
use super::attrs::Attrs;
use super::reduce_max::keep_dims;
use super::reduce_sum::{reduced_axes, torch_axes};
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("ReduceLogSumExp", Kind::Structured)
    .vjp(vjp)
    .torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let keep = c.attr_i("keepdims", 1) != 0;
    let Some(axes) = torch_axes(c, &v, x.dim() as i64)? else {
        return one(x.shallow_clone());
    };
    one(x.f_logsumexp(axes.as_slice(), keep)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let (x, y) = (c.input(0).to_string(), c.output(0).to_string());
    let axes = reduced_axes(c)?;
    if axes.is_empty() {
        c.set(0, g);
        return Ok(());
    }
    let gk = keep_dims(c, &g, &axes);
    let yk = keep_dims(c, &y, &axes);
    let d = c.op("Sub", &[&x, &yk], vec![]);
    let p = c.op("Exp", &[&d], vec![]);
    let gx = c.op("Mul", &[&gk, &p], vec![]);
    c.set(0, gx);
    Ok(())
}

op_tests!(
    reduce_log_sum_exp = crate::ops::reduce_sum::reduce_cases("ReduceLogSumExp"),
    reduce_log_sum_exp_noop = [Case::new("ReduceLogSumExp")
        .input(&[2, 3])
        .attr(attr_int("noop_with_empty_axes", 1))],
);
