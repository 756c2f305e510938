//! Concat (opset 13+): `Y = [X_1, ..., X_n]` joined along `axis` (negative counts from the back).
//! https://onnx.ai/onnx/operators/onnx__Concat.html
//!
//! dX_i is the slab of dY that X_i filled: Split(dY, sizes = [dim_axis(X_1), ...], axis).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{axis, input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::Result;

pub static RULE: Rule = Rule::new("Concat", Kind::Linear).vjp(vjp).torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let parts: Vec<&tch::Tensor> = (0..v.len()).map(|i| input(&v, i)).collect::<Result<_>>()?;
    let rank = parts.first().map(|t| t.dim() as i64).unwrap_or(0);
    let a = axis(c.attr_i("axis", 0), rank)?;
    one(tch::Tensor::f_cat(&parts, a)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let n = c.node.input.len();
    if !(0..n).any(|i| c.needs(i)) {
        return Ok(());
    }
    let rank = c.rank(c.output(0))? as i64;
    let axis = c.attr_i("axis", 0);
    let axis = if axis < 0 { axis + rank } else { axis };
    let inputs: Vec<String> = c.node.input.clone();
    let sizes = sizes_along(c, &inputs, axis)?;
    let parts = c.op_n("Split", &[&g, &sizes], vec![attr_int("axis", axis)], n);
    for (i, p) in parts.into_iter().enumerate() {
        c.set(i, p);
    }
    Ok(())
}

/// The extents of `values` along `axis` as one 1-D int64 tensor: a constant when all are static,
/// else gathered from their runtime shapes.
pub fn sizes_along(c: &mut Ctx, values: &[String], axis: i64) -> Result<String> {
    let mut known = Vec::new();
    for v in values {
        known.push(c.dims(v)?[axis as usize]);
    }
    if known.iter().all(|d| d.is_some()) {
        let k: Vec<i64> = known.iter().map(|d| d.unwrap() as i64).collect();
        return Ok(c.ints(&k));
    }
    let each: Vec<String> = values
        .iter()
        .map(|v| {
            c.op(
                "Shape",
                &[v],
                vec![attr_int("start", axis), attr_int("end", axis + 1)],
            )
        })
        .collect();
    let refs: Vec<&str> = each.iter().map(|s| s.as_str()).collect();
    Ok(c.op("Concat", &refs, vec![attr_int("axis", 0)]))
}

op_tests!(
    concat = [
        Case::new("Concat")
            .input(&[2, 3])
            .input(&[2, 1])
            .input(&[2, 4])
            .attr(attr_int("axis", 1)),
        Case::new("Concat")
            .input(&[1, 3, 2])
            .input(&[2, 3, 2])
            .attr(attr_int("axis", 0)),
        Case::new("Concat")
            .input(&[2, 3, 2])
            .fixed(&[2, 3, 1])
            .input(&[2, 3, 3])
            .attr(attr_int("axis", -1)),
    ],
);
