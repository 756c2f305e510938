//! Mul (opset 14): `Y = A * B` with multidirectional broadcasting.
//! https://onnx.ai/onnx/operators/onnx__Mul.html
//!
//! dA = unbroadcast(dY * B), dB = unbroadcast(dY * A).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Mul", Kind::Elementwise).vjp(vjp).torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_mul(input(&v, 1)?)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (a, b, y) = c.binary();
    if c.needs(0) {
        let t = c.op("Mul", &[&g, &b], vec![]);
        c.set_unbroadcast(0, &t, &y)?;
    }
    if c.needs(1) {
        let t = c.op("Mul", &[&g, &a], vec![]);
        c.set_unbroadcast(1, &t, &y)?;
    }
    Ok(())
}

op_tests!(
    mul_broadcasting = [
        Case::new("Mul").input(&[2, 3, 4]).input(&[3, 1]),
        Case::new("Mul").input(&[1]).input(&[2, 3]),
        Case::new("Mul").input(&[2, 3]).fixed(&[2, 3]),
    ],
);
