//! Pad (opset 11+: pads, constant_value and, from opset 18, axes as inputs): modes constant,
//! reflect, edge and wrap (opset 19); negative pads crop.
//! https://onnx.ai/onnx/operators/onnx__Pad.html
//!
//! - constant: Y is X shifted by the leading pads with a border of the constant, so
//!   dX = Pad(dY, -pads, same axes, constant 0) (cropping the border, and zero-filling where the
//!   forward pass cropped), and d constant_value = sum(dY) - sum(dX) (the border's share).
//! - reflect, edge, wrap: border elements copy elements of X, possibly several times, so the rule
//!   lets Pad itself say which (see [`super::slice`]): idx = Pad(positions of X, pads, mode) and
//!   dX = ScatterElements(zeros, flat idx, flat dY, reduction = add).
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use crate::model::graph::attr_string;
use crate::ops::reshape::reshape_like;
use crate::ops::slice::{flat_positions, scatter_back};
use anyhow::{bail, Result};

pub static RULE: Rule = Rule {
    op: "Pad",
    kind: Kind::Linear,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let mode = c.attr_s("mode").unwrap_or_else(|| "constant".into());
    let pads = c.input(1).to_string();
    let axes = c.input(3).to_string();
    match mode.as_str() {
        "constant" => {
            let neg = c.op("Neg", &[&pads], vec![]);
            let gx = c.op("Pad", &[&g, &neg, "", &axes], vec![]);
            if c.needs(2) {
                let v = c.input(2).to_string();
                let all = c.op(
                    "ReduceSum",
                    &[&g],
                    vec![crate::model::graph::attr_int("keepdims", 0)],
                );
                let inner = c.op(
                    "ReduceSum",
                    &[&gx],
                    vec![crate::model::graph::attr_int("keepdims", 0)],
                );
                let gv = c.op("Sub", &[&all, &inner], vec![]);
                let gv = reshape_like(c, &gv, &v);
                c.set(2, gv);
            }
            c.set(0, gx);
        }
        "reflect" | "edge" | "wrap" => {
            if c.needs(0) {
                let pos = flat_positions(c, &x);
                let idx = c.op(
                    "Pad",
                    &[&pos, &pads, "", &axes],
                    vec![attr_string("mode", &mode)],
                );
                let gx = scatter_back(c, &x, &idx, &g, true)?;
                c.set(0, gx);
            }
        }
        other => bail!("unknown Pad mode '{other}'"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_string;
    use crate::ops::testing::{check, Case};
    #[test]
    fn pad_constant() {
        check(Case::new("Pad").input(&[2, 3]).ints(&[4], &[1, 0, 2, 3]));
        // negative pads crop; a differentiated constant value
        check(
            Case::new("Pad")
                .input(&[3, 4])
                .ints(&[4], &[-1, 2, 1, -2])
                .input(&[]),
        );
        // axes given (opset 18+), negatively
        check(
            Case::new("Pad")
                .input(&[2, 3, 2])
                .ints(&[2], &[1, 2])
                .input(&[])
                .ints(&[1], &[-2]),
        );
    }
    #[test]
    fn pad_copying_modes() {
        for mode in ["reflect", "edge", "wrap"] {
            check(
                Case::new("Pad")
                    .input(&[3, 4])
                    .ints(&[4], &[1, 2, 2, 3])
                    .attr(attr_string("mode", mode)),
            );
            check(
                Case::new("Pad")
                    .input(&[2, 3, 4])
                    .ints(&[2], &[2, 1])
                    .absent()
                    .ints(&[1], &[2])
                    .attr(attr_string("mode", mode)),
            );
        }
    }
}
