//! Exp (opset 13): `Y = e^X`. https://onnx.ai/onnx/operators/onnx__Exp.html
//!
//! d exp = exp: dX = dY * Y.
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static RULE: Rule = Rule {
    op: "Exp",
    kind: Kind::Elementwise,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let y = c.output(0).to_string();
    let gx = c.op("Mul", &[&g, &y], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    #[test]
    fn exp() {
        check(Case::new("Exp").input_in(&[2, 3], -2.0, 2.0));
    }
}
