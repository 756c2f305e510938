//! Float ops that are piecewise constant, so their derivative is 0 wherever it exists:
//! Floor, Ceil (opset 13), Round (opset 11, half to even), Sign (opset 13).
//! https://onnx.ai/onnx/operators/onnx__Floor.html etc.
//!
//! Declared `ZeroGradient`: nothing flows back through them, as PyTorch's derivatives.yaml
//! gives `zeros_like(grad)` for floor, ceil, round and sign (at the jumps too).
use super::rule::{Kind, Rule};
use super::unary;
use tch::Tensor;

pub static FLOOR: Rule =
    Rule::new("Floor", Kind::ZeroGradient).torch(|_, v| unary::torch(v, Tensor::f_floor));
pub static CEIL: Rule =
    Rule::new("Ceil", Kind::ZeroGradient).torch(|_, v| unary::torch(v, Tensor::f_ceil));
pub static ROUND: Rule =
    Rule::new("Round", Kind::ZeroGradient).torch(|_, v| unary::torch(v, Tensor::f_round));
pub static SIGN: Rule =
    Rule::new("Sign", Kind::ZeroGradient).torch(|_, v| unary::torch(v, Tensor::f_sign));

op_tests!(
    // The forwards at the jumps: Round's halves to even, Sign(0) = 0, integers.
    torch_only = ["Floor", "Ceil", "Round", "Sign"]
        .into_iter()
        .map(|op| { Case::new(op).values(&[8], &[-2.5, -1.5, -0.5, -0.0, 0.0, 0.5, 1.5, 2.0]) }),
    // Values away from the jumps (finite differences step 1e-6 across none).
    rounding = ["Floor", "Ceil", "Round", "Sign"]
        .into_iter()
        .flat_map(|op| {
            [
                Case::new(op).values(&[6], &[-2.3, -1.7, -0.4, 0.2, 0.6, 2.9]),
                Case::new(op).input_in(&[3, 4], -3.0, 3.0),
            ]
        }),
);
