//! Reshape (opset 14+), Flatten (opset 13+), Squeeze and Unsqueeze (opset 13+: axes as an input):
//! ops that only relabel the dimensions of a row-major buffer.
//! https://onnx.ai/onnx/operators/onnx__Reshape.html
//! https://onnx.ai/onnx/operators/onnx__Flatten.html
//! https://onnx.ai/onnx/operators/onnx__Squeeze.html
//! https://onnx.ai/onnx/operators/onnx__Unsqueeze.html
//!
//! Y is X's buffer under another shape, so dX = Reshape(dY, shape(X)) (with `allowzero`, as the
//! target is an exact shape, possibly with empty dimensions). The shape/axes inputs are integers.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, ints, one, opt_input, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::{anyhow, bail, Result};

pub static RESHAPE: Rule = Rule::new("Reshape", Kind::Linear)
    .vjp(vjp)
    .torch(torch_reshape);
pub static FLATTEN: Rule = Rule::new("Flatten", Kind::Linear)
    .vjp(vjp)
    .torch(torch_flatten);
pub static SQUEEZE: Rule = Rule::new("Squeeze", Kind::Linear)
    .vjp(vjp)
    .torch(torch_squeeze);
pub static UNSQUEEZE: Rule = Rule::new("Unsqueeze", Kind::Linear)
    .vjp(vjp)
    .torch(torch_unsqueeze);

/// A 0 in the shape copies X's dimension (unless `allowzero`); one -1 is inferred.
fn torch_reshape(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let shape = ints(input(&v, 1)?)?;
    let allowzero = c.attr_i("allowzero", 0) != 0;
    let xs = x.size();
    let target = shape
        .iter()
        .enumerate()
        .map(|(i, &s)| match s {
            0 if !allowzero => xs
                .get(i)
                .copied()
                .ok_or_else(|| anyhow!("shape {shape:?} copies dimension {i} of {xs:?}")),
            s => Ok(s),
        })
        .collect::<Result<Vec<i64>>>()?;
    one(x.f_reshape(target.as_slice())?)
}

/// `[prod(dims before axis), prod(dims from axis)]`.
fn torch_flatten(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let xs = x.size();
    let r = xs.len() as i64;
    let a = c.attr_i("axis", 1);
    let a = if a < 0 { a + r } else { a };
    if !(0..=r).contains(&a) {
        bail!("axis {} is out of range for rank {r}", c.attr_i("axis", 1));
    }
    let (outer, inner) = xs.split_at(a as usize);
    one(x.f_reshape([outer.iter().product::<i64>(), inner.iter().product()])?)
}

/// The axes of a Squeeze/Unsqueeze: the input (opset 13+) or the attribute (older opsets).
fn axes_of(c: &TorchCtx, v: &[Value]) -> Result<Option<Vec<i64>>> {
    Ok(match opt_input(v, 1) {
        Some(t) => Some(ints(t)?),
        None => c.attr_ints("axes"),
    })
}

fn torch_squeeze(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let xs = x.size();
    let r = xs.len() as i64;
    let shape: Vec<i64> = match axes_of(c, &v)? {
        None => xs.iter().copied().filter(|&d| d != 1).collect(),
        Some(axes) => {
            let axes: Vec<i64> = axes
                .iter()
                .map(|&a| super::torch::axis(a, r))
                .collect::<Result<_>>()?;
            if let Some(&a) = axes.iter().find(|&&a| xs[a as usize] != 1) {
                bail!(
                    "cannot squeeze axis {a} of extent {} (shape {xs:?})",
                    xs[a as usize]
                );
            }
            (0..r)
                .filter(|i| !axes.contains(i))
                .map(|i| xs[i as usize])
                .collect()
        }
    };
    one(x.f_reshape(shape.as_slice())?)
}

/// Axes are positions in the output (negative ones counted from its back).
fn torch_unsqueeze(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let xs = x.size();
    let axes = axes_of(c, &v)?.ok_or_else(|| anyhow!("Unsqueeze without axes"))?;
    let r = (xs.len() + axes.len()) as i64;
    let axes: Vec<i64> = axes
        .iter()
        .map(|&a| super::torch::axis(a, r))
        .collect::<Result<_>>()?;
    let mut rest = xs.iter();
    let shape: Vec<i64> = (0..r)
        .map(|i| {
            if axes.contains(&i) {
                1
            } else {
                rest.next().copied().unwrap_or(1)
            }
        })
        .collect();
    one(x.f_reshape(shape.as_slice())?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    if c.needs(0) {
        let x = c.input(0).to_string();
        let gx = reshape_like(c, &g, &x);
        c.set(0, gx);
    }
    Ok(())
}

/// `g` reshaped to the shape of the forward value `like`.
pub fn reshape_like(c: &mut Ctx, g: &str, like: &str) -> String {
    let shape = c.shape_of(like);
    c.op("Reshape", &[g, &shape], vec![attr_int("allowzero", 1)])
}

op_tests!(
    reshape = [
        Case::new("Reshape").input(&[2, 3, 4]).ints(&[2], &[6, -1]),
        Case::new("Reshape")
            .input(&[2, 3, 4])
            .ints(&[3], &[0, 4, 3]),
        Case::new("Reshape").input(&[6]).ints(&[3], &[1, 2, 3]),
    ],
    flatten = [
        Case::new("Flatten").input(&[2, 3, 4]),
        Case::new("Flatten")
            .input(&[2, 3, 4])
            .attr(attr_int("axis", 2)),
        Case::new("Flatten")
            .input(&[2, 3, 4])
            .attr(attr_int("axis", 0)),
        Case::new("Flatten")
            .input(&[2, 3, 4])
            .attr(attr_int("axis", -1)),
    ],
    squeeze = [
        Case::new("Squeeze").input(&[2, 1, 3, 1]).ints(&[1], &[1]),
        Case::new("Squeeze")
            .input(&[2, 1, 3, 1])
            .ints(&[2], &[-1, 1]),
        Case::new("Squeeze").input(&[1, 3, 1]),
    ],
    unsqueeze = [
        Case::new("Unsqueeze").input(&[2, 3]).ints(&[2], &[0, 3]),
        Case::new("Unsqueeze").input(&[2, 3]).ints(&[1], &[-1]),
    ],
);
