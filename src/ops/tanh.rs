//! Tanh (opset 13): `Y = tanh(X)`. https://onnx.ai/onnx/operators/onnx__Tanh.html
//!
//! d tanh = 1 - y^2: dX = dY * (1 - Y^2).
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Tanh", Kind::Elementwise)
    .vjp(|c| unary::chain(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_tanh));

/// d tanh = 1 - y^2.
fn d(c: &mut Ctx, _: &str, y: &str) -> Result<String> {
    let one = c.scalar(1.0, y)?;
    let y2 = c.op("Mul", &[y, y], vec![]);
    Ok(c.op("Sub", &[&one, &y2], vec![]))
}

op_tests!(tanh = [Case::new("Tanh").input_in(&[2, 3], -2.0, 2.0)]);
