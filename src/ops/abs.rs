//! Abs (opset 13): `Y = |X|`. https://onnx.ai/onnx/operators/onnx__Abs.html
//!
//! dX = dY * sign(X) (the subgradient 0 at X = 0, as PyTorch takes it).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Abs", Kind::Elementwise).vjp(vjp).torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_abs()?)
}

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
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn abs() {
        abs_cases(check);
    }
    fn abs_cases(check: fn(Case)) {
        check(Case::new("Abs").values(&[2, 3], &[-0.7, 0.3, -0.1, 0.9, 0.05, -1.2]));
        check(Case::new("Abs").input(&[3, 4]).seed(7));
    }
    #[test]
    fn torch_forward() {
        abs_cases(check_torch);
    }
}
