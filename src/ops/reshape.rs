//! Reshape (opset 14+), Flatten (opset 13+), Squeeze and Unsqueeze (opset 13+: axes as an input):
//! ops that only relabel the dimensions of a row-major buffer.
//! https://onnx.ai/onnx/operators/onnx__Reshape.html
//! https://onnx.ai/onnx/operators/onnx__Flatten.html
//! https://onnx.ai/onnx/operators/onnx__Squeeze.html
//! https://onnx.ai/onnx/operators/onnx__Unsqueeze.html
//!
//! Y is X's buffer under another shape, so dX = Reshape(dY, shape(X)) (with `allowzero`, as the
//! target is an exact shape, possibly with empty dimensions). The shape/axes inputs are integers.
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use crate::model::graph::attr_int;
use anyhow::Result;

pub static RESHAPE: Rule = Rule {
    op: "Reshape",
    kind: Kind::Linear,
    vjp: Some(vjp),
};
pub static FLATTEN: Rule = Rule {
    op: "Flatten",
    kind: Kind::Linear,
    vjp: Some(vjp),
};
pub static SQUEEZE: Rule = Rule {
    op: "Squeeze",
    kind: Kind::Linear,
    vjp: Some(vjp),
};
pub static UNSQUEEZE: Rule = Rule {
    op: "Unsqueeze",
    kind: Kind::Linear,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    if c.needs(0) {
        let x = c.input(0).to_string();
        let gx = reshape_like(c, &g, &x);
        c.set(0, gx);
    }
    Ok(())
}

/// `g` reshaped to the shape of the forward value `like`.
pub fn reshape_like(c: &mut Ctx, g: &str, like: &str) -> String {
    let shape = c.shape_of(like);
    c.op("Reshape", &[g, &shape], vec![attr_int("allowzero", 1)])
}

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_int;
    use crate::ops::testing::{check, Case};
    #[test]
    fn reshape() {
        check(Case::new("Reshape").input(&[2, 3, 4]).ints(&[2], &[6, -1]));
        check(
            Case::new("Reshape")
                .input(&[2, 3, 4])
                .ints(&[3], &[0, 4, 3]),
        );
        check(Case::new("Reshape").input(&[6]).ints(&[3], &[1, 2, 3]));
    }
    #[test]
    fn flatten() {
        check(Case::new("Flatten").input(&[2, 3, 4]));
        check(
            Case::new("Flatten")
                .input(&[2, 3, 4])
                .attr(attr_int("axis", 2)),
        );
        check(
            Case::new("Flatten")
                .input(&[2, 3, 4])
                .attr(attr_int("axis", 0)),
        );
        check(
            Case::new("Flatten")
                .input(&[2, 3, 4])
                .attr(attr_int("axis", -1)),
        );
    }
    #[test]
    fn squeeze() {
        check(Case::new("Squeeze").input(&[2, 1, 3, 1]).ints(&[1], &[1]));
        check(
            Case::new("Squeeze")
                .input(&[2, 1, 3, 1])
                .ints(&[2], &[-1, 1]),
        );
        check(Case::new("Squeeze").input(&[1, 3, 1]));
    }
    #[test]
    fn unsqueeze() {
        check(Case::new("Unsqueeze").input(&[2, 3]).ints(&[2], &[0, 3]));
        check(Case::new("Unsqueeze").input(&[2, 3]).ints(&[1], &[-1]));
    }
}
