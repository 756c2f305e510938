//! Exp (opset 13): `Y = e^X`. https://onnx.ai/onnx/operators/onnx__Exp.html
//!
//! d exp = exp: dX = dY * Y.
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Exp", Kind::Elementwise).vjp(vjp).torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_exp()?)
}

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
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn exp() {
        exp_cases(check);
    }
    fn exp_cases(check: fn(Case)) {
        check(Case::new("Exp").input_in(&[2, 3], -2.0, 2.0));
    }
    #[test]
    fn torch_forward() {
        exp_cases(check_torch);
    }
}
