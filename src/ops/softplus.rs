//! Softplus (opset 1): `Y = ln(1 + e^X)`. https://onnx.ai/onnx/operators/onnx__Softplus.html
//!
//! d softplus = sigmoid: dX = dY * sigmoid(X).
use super::rule::{Kind, Rule};
use super::unary;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Softplus", Kind::Elementwise)
    .vjp(|c| unary::chain_op(c, "Sigmoid"))
    .torch(|_, v| unary::torch(v, Tensor::f_softplus));

op_tests!(
    softplus = [
        // ONNX Runtime has no f64 Softplus kernel.
        Case::new("Softplus").input_in(&[2, 3], -3.0, 3.0).f32(),
    ],
);
