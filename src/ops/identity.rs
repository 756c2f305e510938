//! Identity (opset 19), tensors only: `Y = X`. https://onnx.ai/onnx/operators/onnx__Identity.html
//!
//! dX = dY.
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static RULE: Rule = Rule {
    op: "Identity",
    kind: Kind::Linear,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    c.set(0, g);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    #[test]
    fn identity() {
        check(Case::new("Identity").input(&[2, 3]));
    }
}
