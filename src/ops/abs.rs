//! Abs (opset 13): `Y = |X|`. https://onnx.ai/onnx/operators/onnx__Abs.html
//!
//! dX = dY * sign(X) (the subgradient 0 at X = 0, as PyTorch takes it).
use super::rule::{Kind, Rule};
use super::unary;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Abs", Kind::Elementwise)
    .vjp(|c| unary::chain_op(c, "Sign"))
    .torch(|_, v| unary::torch(v, Tensor::f_abs));

op_tests!(
    abs = [
        Case::new("Abs").values(&[2, 3], &[-0.7, 0.3, -0.1, 0.9, 0.05, -1.2]),
        Case::new("Abs").input(&[3, 4]).seed(7),
    ],
);
