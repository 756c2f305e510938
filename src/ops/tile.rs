//! Tile (opset 13+): `Y = X` repeated `repeats[k]` times along each axis k.
//! https://onnx.ai/onnx/operators/onnx__Tile.html
//!
//! Along each axis Y's index is (copy r, element j) in row-major order, so with dY viewed as
//! [r_0, d_0, r_1, d_1, ...] (d = shape X), dX = ReduceSum over the copy axes 0, 2, 4, ...
//! The repeats are integers and get no gradient.
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, ints, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("Tile", Kind::Linear).vjp(vjp).torch(torch);

/// libtorch's `repeat` with one count per axis is ONNX's Tile.
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let repeats = ints(input(&v, 1)?)?;
    if repeats.len() != x.dim() {
        bail!("{} repeats for a rank-{} input", repeats.len(), x.dim());
    }
    one(x.f_repeat(repeats.as_slice())?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let (x, repeats) = (c.input(0).to_string(), c.input(1).to_string());
    let rank = c.rank(&x)? as i64;
    // [r_0, d_0, r_1, d_1, ...] = Reshape(Concat([repeats[:, None], shape[:, None]], 1), [-1])
    let one = c.ints(&[1]);
    let r = c.op("Unsqueeze", &[&repeats, &one], vec![]);
    let shape = c.shape_of(&x);
    let d = c.op("Unsqueeze", &[&shape, &one], vec![]);
    let rd = c.op("Concat", &[&r, &d], vec![attr_int("axis", 1)]);
    let flat = c.ints(&[-1]);
    let rd = c.op("Reshape", &[&rd, &flat], vec![]);
    let gv = c.op("Reshape", &[&g, &rd], vec![]);
    let copies: Vec<i64> = (0..rank).map(|k| 2 * k).collect();
    let gx = c.reduce_sum(&gv, &copies, false);
    c.set(0, gx);
    Ok(())
}

op_tests!(
    tile = [
        Case::new("Tile").input(&[2, 3]).ints(&[2], &[3, 2]),
        Case::new("Tile").input(&[2, 1, 3]).ints(&[3], &[1, 4, 1]),
        Case::new("Tile").input(&[4]).ints(&[1], &[3]),
    ],
);
