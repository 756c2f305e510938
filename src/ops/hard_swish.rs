//! HardSwish (opset 14): `Y = X * max(0, min(1, X / 6 + 1/2))`, PyTorch's `hardswish`.
//! https://onnx.ai/onnx/operators/onnx__HardSwish.html
//!
//! dX = dY * (x / 3 + 1/2) for -3 < x < 3, 0 for x <= -3, dY for x >= 3: PyTorch's
//! `hardswish_backward` (checked against torch 2.11's: at x = -3 it gives 0, at x = 3 it
//! gives 1, the values of the outer pieces).
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("HardSwish", Kind::Elementwise)
    .vjp(|c| unary::chain(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_hardswish));

/// 0 for x <= -3, x/3 + 1/2 for x < 3, 1 beyond.
fn d(c: &mut Ctx, x: &str, _: &str) -> Result<String> {
    let (m3, p3) = (c.scalar(-3.0, x)?, c.scalar(3.0, x)?);
    let (zero, one, half, third) = (
        c.scalar(0.0, x)?,
        c.scalar(1.0, x)?,
        c.scalar(0.5, x)?,
        c.scalar(3.0, x)?,
    );
    let ramp = c.op("Div", &[x, &third], vec![]);
    let ramp = c.op("Add", &[&ramp, &half], vec![]);
    let below = c.op("LessOrEqual", &[x, &m3], vec![]);
    let middle = c.op("Less", &[x, &p3], vec![]);
    let upper = c.op("Where", &[&middle, &ramp, &one], vec![]);
    Ok(c.op("Where", &[&below, &zero, &upper], vec![]))
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::prelude::*;
    use crate::ops::torch_testing::{autograd, check_torch_backward};

    crate::ops::testing::gradient_and_torch_tests!(
        // ONNX Runtime has no f64 HardSwish kernel.
        hard_swish = [Case::new("HardSwish").input_in(&[3, 2, 5], -5.0, 5.0).f32()],
    );

    /// At x = -3 and 3, and their f32 neighbours on both sides, as PyTorch's backward.
    #[test]
    fn kinks_as_pytorch() {
        let (a, b) = (3.0f32.next_down() as f64, 3.0f32.next_up() as f64);
        let xs = [-3.0, 3.0, -a, a, -b, b, 0.0, -5.0, 5.0];
        check_torch_backward(
            Case::new("HardSwish").values(&[9], &xs).f32(),
            &autograd(|x| vec![x[0].hardswish()]),
        );
    }
}
