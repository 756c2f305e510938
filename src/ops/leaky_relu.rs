//! LeakyRelu (opset 16): `Y = X` where X >= 0, `alpha * X` elsewhere (alpha default 0.01).
//! https://onnx.ai/onnx/operators/onnx__LeakyRelu.html
//!
//! dX = dY where X > 0, alpha * dY elsewhere: slope alpha at X = 0, -0.0 and NaN, as PyTorch's
//! leaky_relu_backward takes it (`x > 0 ? dY : dY * alpha`).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, scalar, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("LeakyRelu", Kind::Elementwise)
    .vjp(vjp)
    .torch(torch);

/// `x` where x > 0, `alpha * x` elsewhere: the same values as `x < 0 ? alpha x : x`, and
/// written with `x > 0` so that autograd's where sends alpha dY at 0 and NaN, as
/// leaky_relu_backward does.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let alpha = c.attr_f("alpha", 0.01) as f64;
    let pos = x.f_gt_tensor(&scalar(0.0, x)?)?;
    one(x.f_where_self(&pos, &x.f_mul_scalar(alpha)?)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let alpha = c.attr_f("alpha", 0.01) as f64;
    let zero = c.scalar(0.0, &x)?;
    let a = c.scalar(alpha, &x)?;
    let one = c.scalar(1.0, &x)?;
    let pos = c.op("Greater", &[&x, &zero], vec![]);
    let slope = c.op("Where", &[&pos, &one, &a], vec![]);
    let gx = c.op("Mul", &[&g, &slope], vec![]);
    c.set(0, gx);
    Ok(())
}

op_tests!(
    leaky_relu = [
        // ONNX Runtime has no f64 LeakyRelu kernel.
        Case::new("LeakyRelu").input(&[3, 5]).f32(),
        Case::new("LeakyRelu")
            .input(&[2, 3, 2])
            .attr(attr_float("alpha", 0.2))
            .f32(),
    ],
);

/// At 0, -0.0 and NaN (slope alpha at all three: `x > 0 ? dY : alpha dY`), against libtorch's
/// leaky_relu_backward.
#[cfg(test)]
mod kinks {
    use crate::model::graph::attr_float;
    use crate::ops::kink_testing::check_kinks;
    use crate::ops::testing::Case;
    #[test]
    fn zero_and_nan() {
        let x = [0.0, -0.0, f64::NAN, 1e-30, -1e-30, -0.5];
        let case = Case::new("LeakyRelu")
            .values(&[2, 3], &x)
            .attr(attr_float("alpha", 0.2))
            .f32();
        // alpha as the f32 attribute holds it.
        let alpha = 0.2f32 as f64;
        check_kinks(case, &|x, r| {
            vec![x[0].f_leaky_relu_backward(r, alpha, false).unwrap()]
        });
    }
}
