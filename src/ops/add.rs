//! Add and Sub (opset 14): `Y = A ± B` with multidirectional (numpy) broadcasting.
//! https://onnx.ai/onnx/operators/onnx__Add.html
//!
//! dA = unbroadcast(dY), dB = ±unbroadcast(dY).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static ADD: Rule = Rule::new("Add", Kind::Linear)
    .vjp(|c| add_sub(c, false))
    .torch(torch_add);
pub static SUB: Rule = Rule::new("Sub", Kind::Linear)
    .vjp(|c| add_sub(c, true))
    .torch(torch_sub);

fn torch_add(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_add(input(&v, 1)?)?)
}

fn torch_sub(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_sub(input(&v, 1)?)?)
}

fn add_sub(c: &mut Ctx, sub: bool) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let y = c.output(0).to_string();
    if c.needs(0) {
        c.set_unbroadcast(0, &g, &y)?;
    }
    if c.needs(1) {
        let gb = if sub {
            c.op("Neg", &[&g], vec![])
        } else {
            g.clone()
        };
        c.set_unbroadcast(1, &gb, &y)?;
    }
    Ok(())
}

op_tests!(
    add_broadcasting = [
        Case::new("Add").input(&[2, 3, 4]).input(&[3, 1]),
        Case::new("Add").input(&[4]).input(&[2, 3, 4]),
        Case::new("Add").input(&[2, 3]).input(&[2, 3]),
    ],
    sub_broadcasting = [
        Case::new("Sub").input(&[2, 1, 4]).input(&[3, 1]),
        Case::new("Sub").input(&[1]).input(&[2, 3]),
    ],
);
