//! Sigmoid (opset 13): `Y = 1 / (1 + e^-X)`. https://onnx.ai/onnx/operators/onnx__Sigmoid.html
//!
//! d sigmoid = y (1 - y): dX = dY * Y * (1 - Y).
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Sigmoid", Kind::Elementwise)
    .vjp(|c| unary::chain(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_sigmoid));

/// d sigmoid = y (1 - y).
fn d(c: &mut Ctx, _: &str, y: &str) -> Result<String> {
    let one = c.scalar(1.0, y)?;
    let omy = c.op("Sub", &[&one, y], vec![]);
    Ok(c.op("Mul", &[y, &omy], vec![]))
}

op_tests!(sigmoid = [Case::new("Sigmoid").input_in(&[2, 3], -3.0, 3.0)]);
