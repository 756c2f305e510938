//! Neg (opset 13): `Y = -X`. https://onnx.ai/onnx/operators/onnx__Neg.html
//!
//! dX = -dY.
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Neg", Kind::Linear)
    .vjp(|c| unary::vjp(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_neg));

/// d (-x) = -1.
fn d(c: &mut Ctx, g: &str, _: &str, _: &str) -> Result<String> {
    Ok(c.op("Neg", &[g], vec![]))
}

op_tests!(neg = [Case::new("Neg").input(&[2, 3])]);
