//! Trilu (opset 14): the upper (`upper` = 1, default) or lower triangle of the last two axes,
//! offset by the optional integer input `k`. https://onnx.ai/onnx/operators/onnx__Trilu.html
//!
//! A mask, so self-adjoint: dX = Trilu(dY, k) with the same attributes.
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static RULE: Rule = Rule {
    op: "Trilu",
    kind: Kind::Linear,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let k = c.input(1).to_string();
    let inputs: Vec<&str> = if k.is_empty() { vec![&g] } else { vec![&g, &k] };
    let attrs = c.node.attribute.clone();
    let gx = c.op("Trilu", &inputs, attrs);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_int;
    use crate::ops::testing::{check, Case};
    #[test]
    fn trilu_upper() {
        check(Case::new("Trilu").input(&[3, 4]));
        check(Case::new("Trilu").input(&[2, 3, 4]).ints(&[], &[1]));
    }
    #[test]
    fn trilu_lower() {
        check(Case::new("Trilu").input(&[4, 3]).attr(attr_int("upper", 0)));
        check(
            Case::new("Trilu")
                .input(&[2, 4, 3])
                .ints(&[], &[-1])
                .attr(attr_int("upper", 0)),
        );
    }
}
