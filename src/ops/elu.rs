//! The exponential linear units, one family: each is `poscoef * x` for x > 0 and
//! `negcoef * (exp(input_scale * x) - 1)` for x <= 0, as PyTorch's `elu(x, alpha, scale,
//! input_scale)` computes all three.
//! - Elu (opset 6): alpha (default 1); negcoef = alpha, input_scale = poscoef = 1.
//!   https://onnx.ai/onnx/operators/onnx__Elu.html
//! - Selu (opset 6): alpha, gamma (PyTorch's constants, rounded to f32); negcoef = gamma *
//!   alpha, poscoef = gamma, input_scale = 1. https://onnx.ai/onnx/operators/onnx__Selu.html
//! - Celu (opset 12): alpha (default 1); negcoef = alpha, input_scale = 1/alpha, poscoef = 1.
//!   https://onnx.ai/onnx/operators/onnx__Celu.html
//!
//! dX = dY * poscoef for x > 0, dY * negcoef * input_scale * exp(input_scale * x) for x <= 0:
//! PyTorch's `elu_backward` (is_result = false) takes the exponential side at x = 0, where
//! Elu with alpha != 1 and Selu have a kink (slope alpha, resp. gamma * alpha, there).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, Value};
use super::unary;
use anyhow::Result;

pub static ELU: Rule = Rule::new("Elu", Kind::Elementwise)
    .vjp(|c| unary::chain(c, |c, x, _| d(c, x, elu(c))))
    .torch(|c, v| torch(v, elu(c)));
pub static SELU: Rule = Rule::new("Selu", Kind::Elementwise)
    .vjp(|c| unary::chain(c, |c, x, _| d(c, x, selu(c))))
    .torch(|c, v| torch(v, selu(c)));
pub static CELU: Rule = Rule::new("Celu", Kind::Elementwise)
    .vjp(|c| unary::chain(c, |c, x, _| d(c, x, celu(c))))
    .torch(|c, v| torch(v, celu(c)));

/// `elu`'s coefficients, as PyTorch names them.
#[derive(Clone, Copy)]
struct Coef {
    negcoef: f64,
    poscoef: f64,
    input_scale: f64,
}

fn elu(c: &impl Attrs) -> Coef {
    Coef {
        negcoef: c.attr_f("alpha", 1.0) as f64,
        poscoef: 1.0,
        input_scale: 1.0,
    }
}

fn selu(c: &impl Attrs) -> Coef {
    let alpha = c.attr_f("alpha", 1.673_263_2) as f64;
    let gamma = c.attr_f("gamma", 1.050_701) as f64;
    Coef {
        negcoef: gamma * alpha,
        poscoef: gamma,
        input_scale: 1.0,
    }
}

fn celu(c: &impl Attrs) -> Coef {
    let alpha = c.attr_f("alpha", 1.0) as f64;
    Coef {
        negcoef: alpha,
        poscoef: 1.0,
        input_scale: 1.0 / alpha,
    }
}

/// negcoef * input_scale * exp(input_scale * x) where x <= 0, poscoef elsewhere.
fn d(c: &mut Ctx, x: &str, k: Coef) -> Result<String> {
    let s = c.scalar(k.input_scale, x)?;
    let sx = c.op("Mul", &[x, &s], vec![]);
    let e = c.op("Exp", &[&sx], vec![]);
    let ns = c.scalar(k.negcoef * k.input_scale, x)?;
    let neg = c.op("Mul", &[&e, &ns], vec![]);
    let pos = c.scalar(k.poscoef, x)?;
    let zero = c.scalar(0.0, x)?;
    let le = c.op("LessOrEqual", &[x, &zero], vec![]);
    // exp overflows to inf for large positive x; Where leaves that side unread there.
    Ok(c.op("Where", &[&le, &neg, &pos], vec![]))
}

/// `poscoef * x` for x > 0, else `negcoef * expm1(input_scale * min(x, 0))`: the clamp keeps
/// the unused side finite (a large x would make it inf, and its zero gradient NaN), and
/// libtorch's autograd of it is PyTorch's `elu_backward`, exponential side at 0 included
/// (`clamp_max` passes the gradient at its bound).
fn torch(v: Vec<Value>, k: Coef) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let neg = (x.f_clamp_max(0.0)?.f_mul_scalar(k.input_scale)?)
        .f_expm1()?
        .f_mul_scalar(k.negcoef)?;
    let pos = x.f_mul_scalar(k.poscoef)?;
    one(pos.f_where_self(&x.f_gt(0.0)?, &neg)?)
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::prelude::*;
    use crate::ops::torch_testing::check_torch_backward;
    use tch::Tensor;

    crate::ops::testing::gradient_and_torch_tests!(
        // ONNX Runtime has no f64 Elu, Selu or Celu kernels.
        elu = [
            Case::new("Elu").input_in(&[3, 5], -3.0, 3.0).f32(),
            Case::new("Elu")
                .input_in(&[2, 3, 2], -2.0, 2.0)
                .attr(attr_float("alpha", 0.7))
                .f32(),
        ],
        selu = [
            Case::new("Selu").input_in(&[3, 5], -3.0, 3.0).f32(),
            Case::new("Selu")
                .input_in(&[4, 3], -2.0, 2.0)
                .attr(attr_float("alpha", 1.5))
                .attr(attr_float("gamma", 0.8))
                .f32(),
        ],
        celu = [
            Case::new("Celu").input_in(&[3, 5], -3.0, 3.0).f32(),
            Case::new("Celu")
                .input_in(&[4, 3], -2.0, 2.0)
                .attr(attr_float("alpha", 1.3))
                .f32(),
        ],
    );

    /// Each against PyTorch's `elu_backward` with the coefficients its module passes, at the
    /// kink x = 0 and around it.
    #[test]
    fn kink_as_pytorch() {
        let xs = [0.0, -0.0, 1e-3, -1e-3, -2.0, 2.0];
        let elu_backward = |alpha: f64, scale: f64, input_scale: f64| {
            move |x: &[Tensor], r: &[Tensor]| {
                vec![Tensor::elu_backward(
                    &r[0],
                    alpha,
                    scale,
                    input_scale,
                    false,
                    &x[0],
                )]
            }
        };
        let alpha = 0.7f32 as f64;
        check_torch_backward(
            Case::new("Elu")
                .values(&[6], &xs)
                .attr(attr_float("alpha", 0.7))
                .f32(),
            &elu_backward(alpha, 1.0, 1.0),
        );
        // torch.selu: elu(x, alpha, scale) with its f64 constants.
        check_torch_backward(
            Case::new("Selu").values(&[6], &xs).f32(),
            &elu_backward(1.6732632423543772, 1.0507009873554805, 1.0),
        );
        let alpha = 1.3f32 as f64;
        check_torch_backward(
            Case::new("Celu")
                .values(&[6], &xs)
                .attr(attr_float("alpha", 1.3))
                .f32(),
            &elu_backward(alpha, 1.0, 1.0 / alpha),
        );
    }
}
