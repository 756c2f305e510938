//! Log (opset 13): `Y = ln X`. https://onnx.ai/onnx/operators/onnx__Log.html
//!
//! d ln x = 1 / x: dX = dY / X.
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Log", Kind::Elementwise)
    .vjp(|c| unary::vjp(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_log));

/// d log = 1 / x.
fn d(c: &mut Ctx, g: &str, x: &str, _: &str) -> Result<String> {
    Ok(c.op("Div", &[g, x], vec![]))
}

op_tests!(log = [Case::new("Log").input_in(&[2, 3], 0.5, 2.0)]);
