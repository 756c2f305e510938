//! Reciprocal (opset 13): `Y = 1 / X`. https://onnx.ai/onnx/operators/onnx__Reciprocal.html
//!
//! d (1/x) = -1/x^2: dX = -dY * Y^2.
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Reciprocal", Kind::Elementwise)
    .vjp(vjp)
    .torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_reciprocal()?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let y = c.output(0).to_string();
    let y2 = c.op("Mul", &[&y, &y], vec![]);
    let t = c.op("Mul", &[&g, &y2], vec![]);
    let gx = c.op("Neg", &[&t], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn reciprocal() {
        reciprocal_cases(check);
    }
    fn reciprocal_cases(check: fn(Case)) {
        check(Case::new("Reciprocal").input_in(&[2, 3], 0.5, 2.0));
        check(Case::new("Reciprocal").input_in(&[4], -2.0, -0.5));
    }
    #[test]
    fn torch_forward() {
        reciprocal_cases(check_torch);
    }
}
