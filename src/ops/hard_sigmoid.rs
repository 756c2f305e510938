//! HardSigmoid (opset 6): `Y = max(0, min(1, alpha * X + beta))`, alpha 0.2 and beta 0.5 by
//! default; PyTorch's `hardsigmoid` exports as alpha 1/6, beta 1/2.
//! https://onnx.ai/onnx/operators/onnx__HardSigmoid.html
//!
//! dX = alpha * dY strictly between the bounds lo = -beta/alpha and hi = (1 - beta)/alpha, 0
//! elsewhere, the bounds included: PyTorch's `hardsigmoid_backward` passes `grad / 6` only where
//! `-3 < x < 3`. The attributes are f32, so the bounds are known to f32 precision: they are
//! taken as the nearest f32 (-0.5 / f32(1/6) = -2.99999991 rounds to -3, PyTorch's bound), and
//! X is compared with them, not `alpha * X + beta` with 0 and 1 (rounding in that sum would
//! move the kink by an ulp).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use super::unary;
use anyhow::Result;

pub static RULE: Rule = Rule::new("HardSigmoid", Kind::Elementwise)
    .vjp(|c| unary::chain(c, d))
    .torch(torch);

/// (alpha, beta) as the node gives them, in f64.
fn coefficients(c: &impl Attrs) -> (f64, f64) {
    (c.attr_f("alpha", 0.2) as f64, c.attr_f("beta", 0.5) as f64)
}

/// The kinks (lo, hi), lo < hi, to f32 precision (see the file's comment); `None` for alpha 0.
fn bounds(alpha: f64, beta: f64) -> Option<(f64, f64)> {
    if alpha == 0.0 {
        return None;
    }
    let (a, b) = (
        (-beta / alpha) as f32 as f64,
        ((1.0 - beta) / alpha) as f32 as f64,
    );
    Some((a.min(b), a.max(b)))
}

/// alpha where lo < x < hi, 0 elsewhere.
fn d(c: &mut Ctx, x: &str, _: &str) -> Result<String> {
    let (alpha, beta) = coefficients(c);
    let Some((lo, hi)) = bounds(alpha, beta) else {
        return c.zeros_like(x);
    };
    let (lo, hi) = (c.scalar(lo, x)?, c.scalar(hi, x)?);
    let above = c.op("Greater", &[x, &lo], vec![]);
    let below = c.op("Less", &[x, &hi], vec![]);
    let inside = c.op("And", &[&above, &below], vec![]);
    let a = c.scalar(alpha, x)?;
    let zero = c.scalar(0.0, x)?;
    Ok(c.op("Where", &[&inside, &a, &zero], vec![]))
}

/// PyTorch's own `hardsigmoid` for its attributes (so libtorch's backward is PyTorch's), else
/// the line inside the bounds and the clamped constant outside, which differentiates as [`d`].
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let (alpha, beta) = coefficients(c);
    if alpha == (1.0f32 / 6.0) as f64 && beta == 0.5 {
        return one(x.f_hardsigmoid()?);
    }
    let line = x.f_mul_scalar(alpha)?.f_add_scalar(beta)?;
    let flat = line.f_clamp(0.0, 1.0)?.f_detach()?;
    let Some((lo, hi)) = bounds(alpha, beta) else {
        return one(flat);
    };
    let inside = x.f_gt(lo)?.f_logical_and(&x.f_lt(hi)?)?;
    one(line.f_where_self(&inside, &flat)?)
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::prelude::*;
    use crate::ops::torch_testing::{autograd, check_torch_backward};
    use tch::Tensor;

    /// PyTorch's alpha and beta, as its exporter writes them.
    fn pytorch() -> Case {
        Case::new("HardSigmoid")
            .attr(attr_float("alpha", 1.0 / 6.0))
            .attr(attr_float("beta", 0.5))
            .f32()
    }

    crate::ops::testing::gradient_and_torch_tests!(
        // ONNX Runtime has no f64 HardSigmoid kernel.
        hard_sigmoid = [
            Case::new("HardSigmoid").input_in(&[3, 5], -4.0, 4.0).f32(),
            pytorch().input_in(&[2, 3, 4], -5.0, 5.0),
            Case::new("HardSigmoid")
                .input_in(&[2, 6], -3.0, 3.0)
                .attr(attr_float("alpha", -0.3))
                .attr(attr_float("beta", 0.4))
                .f32(),
        ],
    );

    /// At the kinks x = -3 and 3 (and the f32 neighbours inside) PyTorch passes no gradient
    /// on the bounds themselves.
    #[test]
    fn kinks_as_pytorch() {
        let inside = 3.0f32.next_down() as f64;
        let xs = [-3.0, 3.0, -inside, inside, 0.0, -4.0, 4.0, 1.5];
        check_torch_backward(
            pytorch().values(&[8], &xs),
            &autograd(|x| vec![x[0].hardsigmoid()]),
        );
    }

    /// Breaking the bounds' strictness must fail the comparison above.
    #[test]
    #[should_panic(expected = "PyTorch's backward")]
    fn kink_check_can_fail() {
        check_torch_backward(
            pytorch().values(&[2], &[-3.0, 3.0]),
            // Inclusive bounds: what a clamp's backward would give.
            &|x: &[Tensor], r: &[Tensor]| vec![&r[0] / 6.0 * x[0].abs().le(3.0)],
        );
    }
}
