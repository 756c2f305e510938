//! Cast (opset 19) and CastLike (opset 19): change of element type.
//! https://onnx.ai/onnx/operators/onnx__Cast.html, https://onnx.ai/onnx/operators/onnx__CastLike.html
//!
//! Float to float: dX = CastLike(dY, X), the gradient cast back to X's type. To or from a
//! non-float type there is no gradient (the output, or the input, is never differentiated);
//! CastLike's second input only lends its type.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, kind_of, one, TorchCtx, Value};
use anyhow::Result;

pub static CAST: Rule = Rule::new("Cast", Kind::Elementwise)
    .vjp(vjp)
    .torch(torch_cast);
pub static CAST_LIKE: Rule = Rule::new("CastLike", Kind::Elementwise)
    .vjp(vjp)
    .torch(torch_cast_like);

/// Float to integer truncates toward zero, anything to bool is `!= 0`, as in ONNX Runtime.
fn torch_cast(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let to = c
        .attr("to")
        .ok_or_else(|| anyhow::anyhow!("Cast without a 'to' attribute"))?
        .i;
    one(input(&v, 0)?.f_to_kind(kind_of(to as i32)?)?)
}

fn torch_cast_like(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_to_kind(input(&v, 1)?.kind())?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (x, y) = (c.input(0).to_string(), c.output(0).to_string());
    if !c.needs(0) || !c.dtype(&x)?.is_float() || !c.dtype(&y)?.is_float() {
        return Ok(());
    }
    let gx = if c.dtype(&x)? == c.dtype(&y)? {
        g
    } else {
        c.cast_like(&g, &x)
    };
    c.set(0, gx);
    Ok(())
}

op_tests!(
    cast_float_to_float = [
        // f32 input, f64 output: the gradient comes back as f32.
        Case::new("Cast")
            .input(&[2, 3])
            .attr(attr_int("to", DType::F64.onnx() as i64))
            .f32(),
        Case::new("Cast")
            .input(&[2, 3])
            .attr(attr_int("to", DType::F64.onnx() as i64)),
    ],
    cast_like = [
        // Both float inputs are differentiated; only the first one gets a gradient (the second's
        // is zero).
        Case::new("CastLike").input(&[2, 3]).input(&[1]),
    ],
);
