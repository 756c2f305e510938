//! Sum (opset 13): `Y = X_1 + ... + X_n`, broadcasting. https://onnx.ai/onnx/operators/onnx__Sum.html
//!
//! dX_i = unbroadcast(dY).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Sum", Kind::Linear).vjp(vjp).torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let mut y = input(&v, 0)?.shallow_clone();
    for i in 1..v.len() {
        y = y.f_add(input(&v, i)?)?;
    }
    one(y)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let y = c.output(0).to_string();
    for i in 0..c.node.input.len() {
        if c.needs(i) {
            c.set_unbroadcast(i, &g, &y)?;
        }
    }
    Ok(())
}

op_tests!(sum = [Case::new("Sum").input(&[2, 3]).input(&[3]).input(&[2, 1])]);
