//! Exp (opset 13): `Y = e^X`. https://onnx.ai/onnx/operators/onnx__Exp.html
//!
//! d exp = exp: dX = dY * Y.
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Exp", Kind::Elementwise)
    .vjp(|c| unary::chain(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_exp));

/// d exp = exp = y.
fn d(_: &mut Ctx, _: &str, y: &str) -> Result<String> {
    Ok(y.to_string())
}

op_tests!(exp = [Case::new("Exp").input_in(&[2, 3], -2.0, 2.0)]);
