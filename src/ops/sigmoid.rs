//! Sigmoid (opset 13): `Y = 1 / (1 + e^-X)`. https://onnx.ai/onnx/operators/onnx__Sigmoid.html
//!
//! d sigmoid = y (1 - y): dX = dY * Y * (1 - Y).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Sigmoid", Kind::Elementwise)
    .vjp(vjp)
    .torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_sigmoid()?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let y = c.output(0).to_string();
    let one = c.scalar(1.0, &y)?;
    let omy = c.op("Sub", &[&one, &y], vec![]);
    let d = c.op("Mul", &[&y, &omy], vec![]);
    let gx = c.op("Mul", &[&g, &d], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn sigmoid() {
        sigmoid_cases(check);
    }
    fn sigmoid_cases(check: fn(Case)) {
        check(Case::new("Sigmoid").input_in(&[2, 3], -3.0, 3.0));
    }
    #[test]
    fn torch_forward() {
        sigmoid_cases(check_torch);
    }
}
