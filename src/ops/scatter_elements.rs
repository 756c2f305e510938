//! ScatterElements (opset 16+ for `reduction`): `Y = X` except at the positions `idx` names along
//! `axis`, which get `U` (reduction `none`) or `X + U` summed over repeats (reduction `add`).
//! https://onnx.ai/onnx/operators/onnx__ScatterElements.html
//!
//! Our own rules emit it (Gather and GatherElements scatter their gradients back with
//! `reduction = add`), so this rule is what lets a gradient graph be differentiated again
//! (Hessian-vector products, [`crate::autodiff::hvp`]). Y is linear in (X, U):
//! - `add`: dX = dY, dU = GatherElements(dY, idx, axis);
//! - `none` (indices unique, as ONNX requires): dX = dY with the written positions zeroed,
//!   i.e. ScatterElements(dY, idx, 0); dU = GatherElements(dY, idx, axis).
//!
//! Reductions `mul`, `max`, `min` are not linear and are refused.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{axis, input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("ScatterElements", Kind::Linear)
    .vjp(vjp)
    .torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let (x, idx, u) = (input(&v, 0)?, input(&v, 1)?, input(&v, 2)?);
    let xs = x.size();
    let a = axis(c.attr_i("axis", 0), xs.len() as i64)?;
    let idx = super::gather::wrap_negative(idx, xs[a as usize])?;
    match c.attr_s("reduction").unwrap_or("none".into()).as_str() {
        "none" => one(x.f_scatter(a, &idx, u)?),
        "add" => one(x.f_scatter_add(a, &idx, u)?),
        r => bail!("ScatterElements with reduction '{r}' is not supported"),
    }
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let idx = c.input(1).to_string();
    let axis = c.attr_i("axis", 0);
    let reduction = c.attr_s("reduction").unwrap_or("none".into());
    if reduction != "none" && reduction != "add" {
        bail!("reduction '{reduction}' is not linear: no gradient rule");
    }
    if c.needs(0) {
        if reduction == "add" {
            c.set(0, g.clone());
        } else {
            let u = c.input(2).to_string();
            let zeros = c.zeros_like(&u)?;
            let gx = c.op(
                "ScatterElements",
                &[&g, &idx, &zeros],
                vec![attr_int("axis", axis)],
            );
            c.set(0, gx);
        }
    }
    if c.needs(2) {
        let gu = c.op("GatherElements", &[&g, &idx], vec![attr_int("axis", axis)]);
        c.set(2, gu);
    }
    Ok(())
}

op_tests!(
    scatter_elements = [
        // add, with a repeated index (both updates land on X[2, 1]) and a negative one.
        Case::new("ScatterElements")
            .input(&[3, 4])
            .ints(&[2, 3], &[0, 2, 2, 2, -2, 1])
            .input(&[2, 3])
            .attr(attr_string("reduction", "add")),
        // none, unique positions, along axis 1.
        Case::new("ScatterElements")
            .input(&[2, 5])
            .ints(&[2, 2], &[4, 0, 1, -2])
            .input(&[2, 2])
            .attr(attr_int("axis", 1)),
        Case::new("ScatterElements")
            .input(&[2, 3, 2])
            .ints(&[2, 1, 2], &[0, 2, 1, 1])
            .input(&[2, 1, 2])
            .attr(attr_int("axis", -2))
            .attr(attr_string("reduction", "add")),
    ],
);
