//! Abs (opset 13): `Y = |X|`. https://onnx.ai/onnx/operators/onnx__Abs.html
//!
//! dX = dY * sign(X) (the subgradient 0 at X = 0, as PyTorch takes it).
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Abs", Kind::Elementwise)
    .vjp(|c| unary::vjp(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_abs));

/// d |x| = sign(x).
fn d(c: &mut Ctx, g: &str, x: &str, _: &str) -> Result<String> {
    let s = c.op("Sign", &[x], vec![]);
    Ok(c.op("Mul", &[g, &s], vec![]))
}

op_tests!(
    abs = [
        Case::new("Abs").values(&[2, 3], &[-0.7, 0.3, -0.1, 0.9, 0.05, -1.2]),
        Case::new("Abs").input(&[3, 4]).seed(7),
    ],
);
