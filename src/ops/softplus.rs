//! Softplus (opset 1): `Y = ln(1 + e^X)`. https://onnx.ai/onnx/operators/onnx__Softplus.html
//!
//! d softplus = sigmoid: dX = dY * sigmoid(X).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Softplus", Kind::Elementwise)
    .vjp(vjp)
    .torch(torch);

/// libtorch's softplus returns x above 20, where ln(1 + e^x) = x in f32.
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_softplus()?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let s = c.op("Sigmoid", &[&x], vec![]);
    let gx = c.op("Mul", &[&g, &s], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn softplus() {
        softplus_cases(check);
    }
    fn softplus_cases(check: fn(Case)) {
        // ONNX Runtime has no f64 Softplus kernel.
        check(Case::new("Softplus").input_in(&[2, 3], -3.0, 3.0).f32());
    }
    #[test]
    fn torch_forward() {
        softplus_cases(check_torch);
    }
}
