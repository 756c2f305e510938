//! RMSNormalization (opset 23): `Y = X * invrms * Scale` with `invrms = 1/sqrt(mean(X^2) +
//! epsilon)`, the mean over the axes `axis..rank` (default axis -1); what
//! `torch.onnx.export(..., opset_version=23)` writes for `nn.RMSNorm`. `stash_type` only sets
//! the forward's internal precision; the gradient is computed in X's type.
//! https://onnx.ai/onnx/operators/onnx__RMSNormalization.html
//!
//! invrms is recomputed from X. With `xhat = X * invrms`, `g = dY * Scale` and means over the
//! normalized axes (n elements):
//! - dX = invrms * (g - xhat * mean(g * xhat)),
//!   since d invrms / dX_i = -invrms^3 X_i / n;
//! - dScale = unbroadcast(dY * xhat).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{axis, f32_as_written, input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::Result;

pub static RULE: Rule = Rule::new("RMSNormalization", Kind::Structured)
    .vjp(vjp)
    .torch(torch);

/// libtorch's `rms_norm` when Scale has the normalized shape (what `nn.RMSNorm` runs), else
/// the normalization followed by a broadcasting product.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let (x, scale) = (input(&v, 0)?, input(&v, 1)?);
    let xs = x.size();
    let a = axis(c.attr_i("axis", -1), xs.len() as i64)?;
    let eps = f32_as_written(c.attr_f("epsilon", 1e-5));
    let norm = xs[a as usize..].to_vec();
    if scale.size() == norm {
        return one(x.f_rms_norm(norm.as_slice(), Some(scale), eps)?);
    }
    let y = x.f_rms_norm(norm.as_slice(), None::<&tch::Tensor>, eps)?;
    one(y.f_mul(scale)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(dy) = c.go(0) else { return Ok(()) };
    let (x, scale, y) = (
        c.input(0).to_string(),
        c.input(1).to_string(),
        c.output(0).to_string(),
    );
    let rank = c.rank(&x)? as i64;
    let a = c.attr_i("axis", -1);
    let a = if a < 0 { a + rank } else { a };
    let axes: Vec<i64> = (a..rank).collect();
    let mean = |c: &mut Ctx, v: &str| {
        let ax = c.ints(&axes);
        c.op("ReduceMean", &[v, &ax], vec![attr_int("keepdims", 1)])
    };
    let x2 = c.op("Mul", &[&x, &x], vec![]);
    let ms = mean(c, &x2);
    let eps = c.scalar(c.attr_f("epsilon", 1e-5) as f64, &x)?;
    let var = c.op("Add", &[&ms, &eps], vec![]);
    let rms = c.op("Sqrt", &[&var], vec![]);
    let inv = c.op("Reciprocal", &[&rms], vec![]);
    let xhat = c.op("Mul", &[&x, &inv], vec![]);
    if c.needs(1) {
        let gs = c.op("Mul", &[&dy, &xhat], vec![]);
        c.set_unbroadcast(1, &gs, &y)?;
    }
    if c.needs(0) {
        let g = c.op("Mul", &[&dy, &scale], vec![]);
        let gx = c.op("Mul", &[&g, &xhat], vec![]);
        let m = mean(c, &gx);
        let proj = c.op("Mul", &[&xhat, &m], vec![]);
        let d = c.op("Sub", &[&g, &proj], vec![]);
        let dx = c.op("Mul", &[&inv, &d], vec![]);
        c.set(0, dx);
    }
    Ok(())
}

op_tests!(
    rms_normalization = [
        Case::new("RMSNormalization")
            .input(&[2, 3, 4])
            .input(&[4])
            .opset(23),
        // Two normalized axes, a Scale broadcast over the first of them, a larger epsilon.
        Case::new("RMSNormalization")
            .input(&[2, 3, 4])
            .input(&[1, 4])
            .attr(attr_int("axis", 1))
            .attr(attr_float("epsilon", 0.1))
            .opset(23),
    ],
);
