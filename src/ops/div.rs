//! Div (opset 14): `Y = A / B` with multidirectional broadcasting.
//! https://onnx.ai/onnx/operators/onnx__Div.html
//!
//! dA = unbroadcast(dY / B), dB = unbroadcast(-dY * A / B^2) = unbroadcast(-dY * Y / B).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, is_float, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Div", Kind::Elementwise).vjp(vjp).torch(torch);

/// Integer division truncates toward zero (as ONNX Runtime's C++ `/` does).
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let (a, b) = (input(&v, 0)?, input(&v, 1)?);
    if is_float(a.kind()) {
        one(a.f_div(b)?)
    } else {
        one(a.f_div_tensor_mode(b, "trunc")?)
    }
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (_, b, y) = c.binary();
    // Integer division has no gradient; its output never needs one.
    if !c.dtype(&y)?.is_float() {
        return Ok(());
    }
    let gb_full = if c.needs(1) {
        let t = c.op("Mul", &[&g, &y], vec![]);
        let t = c.op("Div", &[&t, &b], vec![]);
        Some(c.op("Neg", &[&t], vec![]))
    } else {
        None
    };
    if c.needs(0) {
        let t = c.op("Div", &[&g, &b], vec![]);
        c.set_unbroadcast(0, &t, &y)?;
    }
    if let Some(t) = gb_full {
        c.set_unbroadcast(1, &t, &y)?;
    }
    Ok(())
}

op_tests!(
    div_broadcasting = [
        Case::new("Div")
            .input(&[2, 3, 4])
            .input_in(&[3, 1], 0.5, 2.0),
        Case::new("Div").input(&[1]).input_in(&[2, 3], -2.0, -0.5),
        Case::new("Div").input(&[4]).input_in(&[2, 3, 4], 0.5, 2.0),
        Case::new("Div").fixed(&[2, 3]).input_in(&[2, 3], 0.5, 2.0),
        Case::new("Div").input(&[2, 3]).fixed(&[3]),
    ],
);
