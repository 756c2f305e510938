//! Softsign (opset 1): `Y = X / (1 + |X|)`. https://onnx.ai/onnx/operators/onnx__Softsign.html
//!
//! d softsign = 1 / (1 + |x|)^2, smooth (1 at x = 0): dX = dY / (1 + |X|)^2. PyTorch's
//! `F.softsign` is `x / (1 + |x|)` and both of its exporters write that as Abs, Add and Div,
//! so this node comes from other exporters (tf2onnx, hand-built graphs).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, Value};
use super::unary;
use anyhow::Result;

pub static RULE: Rule = Rule::new("Softsign", Kind::Elementwise)
    .vjp(|c| unary::vjp(c, d))
    .torch(|_, v| torch(v));

/// dY / (1 + |x|)^2.
fn d(c: &mut Ctx, g: &str, x: &str, _: &str) -> Result<String> {
    let one = c.scalar(1.0, x)?;
    let a = c.op("Abs", &[x], vec![]);
    let s = c.op("Add", &[&a, &one], vec![]);
    let s2 = c.op("Mul", &[&s, &s], vec![]);
    Ok(c.op("Div", &[g, &s2], vec![]))
}

/// `x / (1 + |x|)`, as PyTorch's `F.softsign` composes it (libtorch has no softsign kernel).
fn torch(v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    one(x.f_div(&x.f_abs()?.f_add_scalar(1.0)?)?)
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::prelude::*;
    use crate::ops::torch_testing::{autograd, check_torch_backward};

    crate::ops::testing::gradient_and_torch_tests!(
        softsign = [
            // ONNX Runtime has no f64 Softsign kernel.
            Case::new("Softsign").input_in(&[3, 2, 5], -4.0, 4.0).f32(),
        ],
    );

    /// PyTorch's backward of `F.softsign`, at 0 (where |x| has its kink) and far out.
    #[test]
    fn as_pytorch() {
        let xs = [0.0, -0.0, 1e-3, -1e-3, -1.0, 1.0, -50.0, 50.0];
        check_torch_backward(
            Case::new("Softsign").values(&[8], &xs).f32(),
            &autograd(|x| vec![&x[0] / (x[0].abs() + 1.0)]),
        );
    }
}
