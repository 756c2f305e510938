//! Sqrt (opset 13): `Y = sqrt(X)`. https://onnx.ai/onnx/operators/onnx__Sqrt.html
//!
//! d sqrt(x) = 1 / (2 sqrt(x)): dX = dY * 0.5 / Y (infinite at X = 0, as in PyTorch).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Sqrt", Kind::Elementwise).vjp(vjp).torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_sqrt()?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let y = c.output(0).to_string();
    let half = c.scalar(0.5, &y)?;
    let t = c.op("Div", &[&half, &y], vec![]);
    let gx = c.op("Mul", &[&g, &t], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn sqrt() {
        sqrt_cases(check);
    }
    fn sqrt_cases(check: fn(Case)) {
        check(Case::new("Sqrt").input_in(&[2, 3], 0.2, 3.0));
    }
    #[test]
    fn torch_forward() {
        sqrt_cases(check_torch);
    }
}
