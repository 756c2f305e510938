//! Tanh (opset 13): `Y = tanh(X)`. https://onnx.ai/onnx/operators/onnx__Tanh.html
//!
//! d tanh = 1 - y^2: dX = dY * (1 - Y^2).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Tanh", Kind::Elementwise).vjp(vjp).torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_tanh()?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let y = c.output(0).to_string();
    let one = c.scalar(1.0, &y)?;
    let y2 = c.op("Mul", &[&y, &y], vec![]);
    let d = c.op("Sub", &[&one, &y2], vec![]);
    let gx = c.op("Mul", &[&g, &d], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn tanh() {
        tanh_cases(check);
    }
    fn tanh_cases(check: fn(Case)) {
        check(Case::new("Tanh").input_in(&[2, 3], -2.0, 2.0));
    }
    #[test]
    fn torch_forward() {
        tanh_cases(check_torch);
    }
}
