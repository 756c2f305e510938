//! Softplus (opset 1): `Y = ln(1 + e^X)`. https://onnx.ai/onnx/operators/onnx__Softplus.html
//!
//! d softplus = sigmoid: dX = dY * sigmoid(X).
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Softplus", Kind::Elementwise)
    .vjp(|c| unary::vjp(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_softplus));

/// d softplus = sigmoid(x).
fn d(c: &mut Ctx, g: &str, x: &str, _: &str) -> Result<String> {
    let s = c.op("Sigmoid", &[x], vec![]);
    Ok(c.op("Mul", &[g, &s], vec![]))
}

op_tests!(
    softplus = [
        // ONNX Runtime has no f64 Softplus kernel.
        Case::new("Softplus").input_in(&[2, 3], -3.0, 3.0).f32(),
    ],
);
