//! Sqrt (opset 13): `Y = sqrt(X)`. https://onnx.ai/onnx/operators/onnx__Sqrt.html
//!
//! d sqrt(x) = 1 / (2 sqrt(x)): dX = dY * 0.5 / Y (infinite at X = 0, as in PyTorch).
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Sqrt", Kind::Elementwise)
    .vjp(|c| unary::chain(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_sqrt));

/// d sqrt = 0.5 / y.
fn d(c: &mut Ctx, _: &str, y: &str) -> Result<String> {
    let half = c.scalar(0.5, y)?;
    Ok(c.op("Div", &[&half, y], vec![]))
}

op_tests!(sqrt = [Case::new("Sqrt").input_in(&[2, 3], 0.2, 3.0)]);
