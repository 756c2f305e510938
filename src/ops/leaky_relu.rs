//! LeakyRelu (opset 16): `Y = X` where X >= 0, `alpha * X` elsewhere (alpha default 0.01).
//! https://onnx.ai/onnx/operators/onnx__LeakyRelu.html
//!
//! dX = dY where X > 0, alpha * dY elsewhere (slope alpha at X = 0, as PyTorch takes it).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, scalar, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("LeakyRelu", Kind::Elementwise)
    .vjp(vjp)
    .torch(torch);

/// `alpha * x` where x < 0 (x itself at 0).
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let alpha = c.attr_f("alpha", 0.01) as f64;
    let neg = x.f_lt_tensor(&scalar(0.0, x)?)?;
    one(x.f_mul_scalar(alpha)?.f_where_self(&neg, x)?)
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
