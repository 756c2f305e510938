//! Neg (opset 13): `Y = -X`. https://onnx.ai/onnx/operators/onnx__Neg.html
//!
//! dX = -dY.
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static RULE: Rule = Rule {
    op: "Neg",
    kind: Kind::Linear,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let gx = c.op("Neg", &[&g], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    #[test]
    fn neg() {
        check(Case::new("Neg").input(&[2, 3]));
    }
}
