//! Abs (opset 13): `Y = |X|`. https://onnx.ai/onnx/operators/onnx__Abs.html
//!
//! dX = dY * sign(X) (the subgradient 0 at X = 0, as PyTorch takes it).
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static RULE: Rule = Rule {
    op: "Abs",
    kind: Kind::Elementwise,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let s = c.op("Sign", &[&x], vec![]);
    let gx = c.op("Mul", &[&g, &s], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    #[test]
    fn abs() {
        check(Case::new("Abs").values(&[2, 3], &[-0.7, 0.3, -0.1, 0.9, 0.05, -1.2]));
        check(Case::new("Abs").input(&[3, 4]).seed(7));
    }
}
