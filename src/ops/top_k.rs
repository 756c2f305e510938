//! TopK (opset 11): the K largest (or smallest) elements along `axis` (-1 by default), K a
//! one-element int64 input; outputs Values and Indices. PyTorch's `torch.topk` and `torch.sort`
//! export as it. https://onnx.ai/onnx/operators/onnx__TopK.html
//!
//! Values[.., j, ..] = X[.., Indices[.., j, ..], ..] along the axis, a gather with distinct
//! indices: dX = dValues scattered to Indices in zeros shaped like X (PyTorch's
//! `value_selecting_reduction_backward`). Indices carry no gradient. Among equal elements the
//! one the forward picked (ONNX Runtime: the lower index first) takes the gradient.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{axis, input, ints, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("TopK", Kind::Structured).vjp(vjp).torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let k = ints(input(&v, 1)?)?;
    let [k] = k[..] else {
        bail!("TopK's K has {} values, one was expected", k.len());
    };
    let a = axis(c.attr_i("axis", -1), x.dim() as i64)?;
    let largest = c.attr_i("largest", 1) != 0;
    let sorted = c.attr_i("sorted", 1) != 0;
    let (values, indices) = x.f_topk(k, a, largest, sorted)?;
    Ok(vec![Value::Tensor(values), Value::Tensor(indices)])
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let x = c.input(0).to_string();
    let a = c.attr_i("axis", -1);
    let indices = c.require_output(1);
    let zeros = c.zeros_like(&x)?;
    let gx = c.op(
        "ScatterElements",
        &[&zeros, &indices, &g],
        vec![attr_int("axis", a)],
    );
    c.set(0, gx);
    Ok(())
}

op_tests!(
    top_k = [
        Case::new("TopK").input(&[3, 6]).ints(&[1], &[2]).outputs(2),
        Case::new("TopK")
            .input(&[2, 5, 3])
            .ints(&[1], &[3])
            .attr(attr_int("axis", 1))
            .attr(attr_int("largest", 0))
            .outputs(2),
        // torch.sort: K = the whole axis.
        Case::new("TopK")
            .input(&[4, 5])
            .ints(&[1], &[4])
            .attr(attr_int("axis", 0))
            .outputs(2),
    ],
);
