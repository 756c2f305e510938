//! Cast (opset 19) and CastLike (opset 19): change of element type.
//! https://onnx.ai/onnx/operators/onnx__Cast.html, https://onnx.ai/onnx/operators/onnx__CastLike.html
//!
//! Float to float: dX = CastLike(dY, X), the gradient cast back to X's type. To or from a
//! non-float type there is no gradient (the output, or the input, is never differentiated);
//! CastLike's second input only lends its type.
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static CAST: Rule = Rule {
    op: "Cast",
    kind: Kind::Elementwise,
    vjp: Some(vjp),
};
pub static CAST_LIKE: Rule = Rule {
    op: "CastLike",
    kind: Kind::Elementwise,
    vjp: Some(vjp),
};

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

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_int;
    use crate::ops::testing::{check, Case};
    use crate::tensor::DType;
    #[test]
    fn cast_float_to_float() {
        // f32 input, f64 output: the gradient comes back as f32.
        check(
            Case::new("Cast")
                .input(&[2, 3])
                .attr(attr_int("to", DType::F64.onnx() as i64))
                .f32(),
        );
        check(
            Case::new("Cast")
                .input(&[2, 3])
                .attr(attr_int("to", DType::F64.onnx() as i64)),
        );
    }
    #[test]
    fn cast_like() {
        // Both float inputs are differentiated; only the first one gets a gradient (the second's
        // is zero).
        check(Case::new("CastLike").input(&[2, 3]).input(&[1]));
    }
}
