//! Add and Sub (opset 14): `Y = A ± B` with multidirectional (numpy) broadcasting.
//! https://onnx.ai/onnx/operators/onnx__Add.html
//!
//! dA = unbroadcast(dY), dB = ±unbroadcast(dY).
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static ADD: Rule = Rule {
    op: "Add",
    kind: Kind::Linear,
    vjp: Some(|c| add_sub(c, false)),
};
pub static SUB: Rule = Rule {
    op: "Sub",
    kind: Kind::Linear,
    vjp: Some(|c| add_sub(c, true)),
};

fn add_sub(c: &mut Ctx, sub: bool) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    if c.needs(0) {
        let a = c.input(0).to_string();
        let y = c.output(0).to_string();
        let ga = c.unbroadcast(&g, &y, &a)?;
        c.set(0, ga);
    }
    if c.needs(1) {
        let b = c.input(1).to_string();
        let y = c.output(0).to_string();
        let gb = if sub {
            c.op("Neg", &[&g], vec![])
        } else {
            g.clone()
        };
        let gb = c.unbroadcast(&gb, &y, &b)?;
        c.set(1, gb);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    #[test]
    fn add_broadcasting() {
        check(Case::new("Add").input(&[2, 3, 4]).input(&[3, 1]));
        check(Case::new("Add").input(&[4]).input(&[2, 3, 4]));
        check(Case::new("Add").input(&[2, 3]).input(&[2, 3]));
    }
    #[test]
    fn sub_broadcasting() {
        check(Case::new("Sub").input(&[2, 1, 4]).input(&[3, 1]));
        check(Case::new("Sub").input(&[1]).input(&[2, 3]));
    }
}
