//! Reciprocal (opset 13): `Y = 1 / X`. https://onnx.ai/onnx/operators/onnx__Reciprocal.html
//!
//! d (1/x) = -1/x^2: dX = -dY * Y^2.
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Reciprocal", Kind::Elementwise)
    .vjp(|c| unary::vjp(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_reciprocal));

/// d (1/x) = -1/x^2 = -y^2.
fn d(c: &mut Ctx, g: &str, _: &str, y: &str) -> Result<String> {
    let y2 = c.op("Mul", &[y, y], vec![]);
    let t = c.op("Mul", &[g, &y2], vec![]);
    Ok(c.op("Neg", &[&t], vec![]))
}

op_tests!(
    reciprocal = [
        Case::new("Reciprocal").input_in(&[2, 3], 0.5, 2.0),
        Case::new("Reciprocal").input_in(&[4], -2.0, -0.5),
    ],
);
