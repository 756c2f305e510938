//! Softplus (opset 1): `Y = ln(1 + e^X)`. https://onnx.ai/onnx/operators/onnx__Softplus.html
//!
//! d softplus = sigmoid: dX = dY * sigmoid(X).
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static RULE: Rule = Rule {
    op: "Softplus",
    kind: Kind::Elementwise,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let s = c.op("Sigmoid", &[&x], vec![]);
    let gx = c.op("Mul", &[&g, &s], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    #[test]
    fn softplus() {
        // ONNX Runtime has no f64 Softplus kernel.
        check(Case::new("Softplus").input_in(&[2, 3], -3.0, 3.0).f32());
    }
}
