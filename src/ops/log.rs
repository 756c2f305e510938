//! Log (opset 13): `Y = ln X`. https://onnx.ai/onnx/operators/onnx__Log.html
//!
//! d ln x = 1 / x: dX = dY / X.
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Log", Kind::Elementwise).vjp(vjp).torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_log()?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let gx = c.op("Div", &[&g, &x], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn log() {
        log_cases(check);
    }
    fn log_cases(check: fn(Case)) {
        check(Case::new("Log").input_in(&[2, 3], 0.5, 2.0));
    }
    #[test]
    fn torch_forward() {
        log_cases(check_torch);
    }
}
