//! Expand (opset 13): `Y = X` broadcast to (the broadcast of X's shape with) the shape input.
//! https://onnx.ai/onnx/operators/onnx__Expand.html
//!
//! dX = unbroadcast(dY) back to X's shape; the shape input is integer, not differentiable.
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, ints, one, TorchCtx, Value};
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("Expand", Kind::Linear).vjp(vjp).torch(torch);

/// The shape input and X's shape broadcast against each other (either may have the 1s).
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let shape = ints(input(&v, 1)?)?;
    let xs = x.size();
    let r = xs.len().max(shape.len());
    let at = |s: &[i64], i: usize| {
        if i + s.len() >= r {
            s[i + s.len() - r]
        } else {
            1
        }
    };
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let (a, b) = (at(&xs, i), at(&shape, i));
        out.push(match (a, b) {
            _ if a == b || b == 1 => a,
            (1, _) => b,
            _ => bail!("cannot expand shape {xs:?} to {shape:?}"),
        });
    }
    one(x.f_expand(out.as_slice(), false)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let y = c.output(0).to_string();
    c.set_unbroadcast(0, &g, &y)?;
    Ok(())
}

op_tests!(
    expand = [
        Case::new("Expand").input(&[3, 1]).ints(&[3], &[2, 3, 4]),
        Case::new("Expand").input(&[1, 4]).ints(&[2], &[3, 1]),
        Case::new("Expand").input(&[2, 3]).ints(&[2], &[2, 3]),
        Case::new("Expand").input(&[]).ints(&[1], &[5]),
    ],
);
