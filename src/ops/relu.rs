//! Relu (opset 14): `Y = max(X, 0)`. https://onnx.ai/onnx/operators/onnx__Relu.html
//!
//! dX = dY * [X > 0] (the subgradient 0 at X = 0, as PyTorch takes it).
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static RULE: Rule = Rule {
    op: "Relu",
    kind: Kind::Elementwise,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let zero = c.scalar(0.0, &x)?;
    let pos = c.op("Greater", &[&x, &zero], vec![]);
    let gx = c.op("Where", &[&pos, &g, &zero], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    #[test]
    fn relu() {
        check(Case::new("Relu").input(&[3, 5]));
    }
}
