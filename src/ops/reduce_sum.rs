//! ReduceSum (opset 13+: axes as an optional input; keepdims, noop_with_empty_axes).
//! https://onnx.ai/onnx/operators/onnx__ReduceSum.html
//!
//! dX = expand(dY with the reduced axes restored as extent 1, shape(X)).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{axis, input, ints, one, opt_input, TorchCtx, Value};
use anyhow::{anyhow, Result};

pub static RULE: Rule = Rule::new("ReduceSum", Kind::Linear).vjp(vjp).torch(torch);

/// The axes a Reduce* node was given (empty: none) as ONNX reads them: none given means every
/// axis, or no reduction at all (`None`) with `noop_with_empty_axes`.
fn given_or_all<A: Attrs + ?Sized>(c: &A, axes: Vec<i64>, rank: i64) -> Option<Vec<i64>> {
    if !axes.is_empty() {
        Some(axes)
    } else if c.attr_i("noop_with_empty_axes", 0) == 1 {
        None
    } else {
        Some((0..rank).collect())
    }
}

/// The normalized axes a Reduce* node reduces over at run time (axes input, else the opset-13
/// attribute, else all), or `None` for the identity (`noop_with_empty_axes`). Shared by
/// ReduceSum and ReduceMean.
pub fn torch_axes(c: &TorchCtx, v: &[Value], rank: i64) -> Result<Option<Vec<i64>>> {
    let axes = match opt_input(v, 1) {
        Some(t) => ints(t)?,
        None => c.attr_ints("axes").unwrap_or_default(),
    };
    given_or_all(c, axes, rank)
        .map(|axes| axes.iter().map(|&a| axis(a, rank)).collect())
        .transpose()
}

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let keep = c.attr_i("keepdims", 1) != 0;
    match torch_axes(c, &v, x.dim() as i64)? {
        None => one(x.shallow_clone()),
        Some(axes) => one(x.f_sum_dim_intlist(axes.as_slice(), keep, x.kind())?),
    }
}

/// The normalized axes a Reduce* node reduces over (all axes when none are given, unless
/// `noop_with_empty_axes`). Shared by ReduceSum and ReduceMean.
pub fn reduced_axes(c: &Ctx) -> Result<Vec<i64>> {
    let x = c.input(0);
    let rank = c.rank(x)? as i64;
    let axes = if c.has_input(1) {
        c.const_ints(1)
            .ok_or_else(|| anyhow!("axes must be a constant"))?
    } else if let Some(a) = c.attr_ints("axes") {
        a
    } else {
        vec![]
    };
    let Some(axes) = given_or_all(c, axes, rank) else {
        return Ok(vec![]);
    };
    let mut a: Vec<i64> = axes
        .iter()
        .map(|&a| if a < 0 { a + rank } else { a })
        .collect();
    a.sort();
    Ok(a)
}

/// dY of a reduction, broadcast back to the input's shape.
pub fn expand_back(c: &mut Ctx, g: &str, axes: &[i64]) -> Result<String> {
    let x = c.input(0).to_string();
    let g = if c.attr_i("keepdims", 1) == 0 && !axes.is_empty() {
        let ax = c.ints(axes);
        c.op("Unsqueeze", &[g, &ax], vec![])
    } else {
        g.to_string()
    };
    let shape = c.shape_of(&x);
    Ok(c.op("Expand", &[&g, &shape], vec![]))
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let axes = reduced_axes(c)?;
    let gx = expand_back(c, &g, &axes)?;
    c.set(0, gx);
    Ok(())
}

/// The cases every Reduce* op is checked on: axes as an input, one of them negative with
/// keepdims 0, and none given (all axes).
#[cfg(test)]
pub(crate) fn reduce_cases(op: &str) -> [crate::ops::testing::Case; 3] {
    use crate::ops::testing::prelude::*;
    [
        Case::new(op).input(&[2, 3, 4]).ints(&[2], &[0, 2]),
        Case::new(op)
            .input(&[2, 3, 4])
            .ints(&[1], &[-1])
            .attr(attr_int("keepdims", 0)),
        Case::new(op).input(&[2, 3]).attr(attr_int("keepdims", 0)),
    ]
}

op_tests!(reduce_sum = crate::ops::reduce_sum::reduce_cases("ReduceSum"));
