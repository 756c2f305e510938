//! Sum (opset 13): `Y = X_1 + ... + X_n`, broadcasting. https://onnx.ai/onnx/operators/onnx__Sum.html
//!
//! dX_i = unbroadcast(dY).
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static RULE: Rule = Rule {
    op: "Sum",
    kind: Kind::Linear,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let y = c.output(0).to_string();
    for i in 0..c.node.input.len() {
        if c.needs(i) {
            let x = c.input(i).to_string();
            let gx = c.unbroadcast(&g, &y, &x)?;
            c.set(i, gx);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    #[test]
    fn sum() {
        check(Case::new("Sum").input(&[2, 3]).input(&[3]).input(&[2, 1]));
    }
}
