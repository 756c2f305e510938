//! Mish (opset 18): `Y = X * tanh(softplus(X))`. https://onnx.ai/onnx/operators/onnx__Mish.html
//!
//! With t = tanh(softplus(x)) and sigmoid(x) = d softplus / dx:
//! d mish = t + x * sigmoid(x) * (1 - t^2), the form of PyTorch's `mish_backward`.
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Mish", Kind::Elementwise)
    .vjp(|c| unary::chain(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_mish));

/// t + x sigmoid(x) (1 - t^2).
fn d(c: &mut Ctx, x: &str, _: &str) -> Result<String> {
    let sp = c.op("Softplus", &[x], vec![]);
    let t = c.op("Tanh", &[&sp], vec![]);
    let s = c.op("Sigmoid", &[x], vec![]);
    let one = c.scalar(1.0, x)?;
    let t2 = c.op("Mul", &[&t, &t], vec![]);
    let sech2 = c.op("Sub", &[&one, &t2], vec![]);
    let xs = c.op("Mul", &[x, &s], vec![]);
    let r = c.op("Mul", &[&xs, &sech2], vec![]);
    Ok(c.op("Add", &[&t, &r], vec![]))
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::prelude::*;
    use crate::ops::torch_testing::{autograd, check_torch_backward};

    crate::ops::testing::gradient_and_torch_tests!(
        // ONNX Runtime has no f64 Mish (nor Softplus) kernel.
        mish = [Case::new("Mish").input_in(&[3, 5], -4.0, 4.0).f32()],
    );

    /// The f32 finite differences (2e-2) cannot tell close formulas apart; PyTorch's
    /// `mish_backward` can, far out on both sides too.
    #[test]
    fn as_pytorch() {
        let xs = [0.0, -1.0, 1.0, -8.0, 8.0, -30.0, 30.0, 0.3];
        check_torch_backward(
            Case::new("Mish").values(&[8], &xs).f32(),
            &autograd(|x| vec![x[0].mish()]),
        );
    }
}
