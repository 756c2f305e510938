//! Sin and Cos (opset 7): https://onnx.ai/onnx/operators/onnx__Sin.html,
//! https://onnx.ai/onnx/operators/onnx__Cos.html
//!
//! d sin = cos, d cos = -sin.
use super::rule::{Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static SIN: Rule = Rule::new("Sin", Kind::Elementwise)
    .vjp(|c| unary::chain_op(c, "Cos"))
    .torch(|_, v| unary::torch(v, Tensor::f_sin));
pub static COS: Rule = Rule::new("Cos", Kind::Elementwise)
    .vjp(|c| {
        unary::chain(c, |c, x, _| -> Result<String> {
            let s = c.op("Sin", &[x], vec![]);
            Ok(c.op("Neg", &[&s], vec![]))
        })
    })
    .torch(|_, v| unary::torch(v, Tensor::f_cos));

op_tests!(
    sin = [Case::new("Sin").input_in(&[3, 5], -4.0, 4.0)],
    cos = [Case::new("Cos").input_in(&[3, 5], -4.0, 4.0)],
);
