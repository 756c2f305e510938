//! Expand (opset 13): `Y = X` broadcast to (the broadcast of X's shape with) the shape input.
//! https://onnx.ai/onnx/operators/onnx__Expand.html
//!
//! dX = unbroadcast(dY) back to X's shape; the shape input is integer, not differentiable.
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static RULE: Rule = Rule {
    op: "Expand",
    kind: Kind::Linear,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (x, y) = (c.input(0).to_string(), c.output(0).to_string());
    let gx = c.unbroadcast(&g, &y, &x)?;
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    #[test]
    fn expand() {
        check(Case::new("Expand").input(&[3, 1]).ints(&[3], &[2, 3, 4]));
        check(Case::new("Expand").input(&[1, 4]).ints(&[2], &[3, 1]));
        check(Case::new("Expand").input(&[2, 3]).ints(&[2], &[2, 3]));
        check(Case::new("Expand").input(&[]).ints(&[1], &[5]));
    }
}
