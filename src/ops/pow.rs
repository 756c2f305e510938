//! Pow (opset 15): `Y = X ^ E` with multidirectional broadcasting; E may be an integer tensor.
//! https://onnx.ai/onnx/operators/onnx__Pow.html
//!
//! dX = unbroadcast(dY * E * X^(E - 1)), dE = unbroadcast(dY * Y * ln X) (float E only; NaN
//! where X < 0, as in PyTorch).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Pow", Kind::Elementwise).vjp(vjp).torch(torch);

/// The output has X's type (an integer exponent does not promote it).
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    one(x.f_pow(input(&v, 1)?)?.f_to_kind(x.kind())?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (x, e, y) = c.binary();
    if c.needs(0) && exponent_is_two(c) {
        // dX = dY (2 X), as PyTorch's pow_backward computes it (X^1 is X exactly): two passes,
        // where the general form's Pow(X, E - 1) is ONNX Runtime's slow powf (RMSNorm's
        // square: ~3% of a Llama batch).
        let two = c.scalar(2.0, &x)?;
        let d = c.op("Mul", &[&two, &x], vec![]);
        let t = c.op("Mul", &[&g, &d], vec![]);
        c.set_unbroadcast(0, &t, &y)?;
    } else if c.needs(0) {
        // The exponent in X's type (E may be an integer initializer, whose type the shapes
        // do not record): Pow(X, float E - 1) is exact for integer-valued E.
        let ef = c.cast_like(&e, &x);
        let one = c.scalar(1.0, &x)?;
        let em1 = c.op("Sub", &[&ef, &one], vec![]);
        let p = c.op("Pow", &[&x, &em1], vec![]);
        let d = c.op("Mul", &[&ef, &p], vec![]);
        let t = c.op("Mul", &[&g, &d], vec![]);
        c.set_unbroadcast(0, &t, &y)?;
    }
    if c.needs(1) {
        let ln = c.op("Log", &[&x], vec![]);
        let d = c.op("Mul", &[&y, &ln], vec![]);
        let t = c.op("Mul", &[&g, &d], vec![]);
        c.set_unbroadcast(1, &t, &y)?;
    }
    Ok(())
}

/// Whether the exponent is a constant 2 (a float or integer scalar known when the graph is built).
fn exponent_is_two(c: &Ctx) -> bool {
    let Some(t) = c.consts.get(c.input(1)) else {
        return false;
    };
    let Ok(h) = crate::model::decode_tensor(t) else {
        return false;
    };
    h.numel() == 1 && (h.as_f32() == Some(&[2.0][..]) || h.as_i64() == Some(&[2][..]))
}

op_tests!(
    pow_both_inputs = [Case::new("Pow")
        .input_in(&[2, 3], 0.5, 2.0)
        .input_in(&[2, 3], -2.0, 2.0)],
    pow_broadcasting = [
        Case::new("Pow")
            .input_in(&[2, 3, 4], 0.5, 2.0)
            .input_in(&[3, 1], -2.0, 2.0),
        Case::new("Pow")
            .input_in(&[4], 0.5, 2.0)
            .input_in(&[2, 3, 4], -2.0, 2.0),
        Case::new("Pow")
            .input_in(&[2, 3], 0.5, 2.0)
            .input_in(&[1], 0.5, 3.0),
    ],
    pow_constant_exponent = [
        // Integer exponent (int64 initializer), negative bases allowed.
        Case::new("Pow").input(&[2, 3]).ints(&[], &[3]),
        Case::new("Pow").input(&[2, 3]).ints(&[3], &[2, 1, 3]),
        // A square (dX = dY 2 X), float and integer exponent, broadcasting the exponent.
        Case::new("Pow").input(&[2, 3]).f32_const(&[], &[2.0]).f32(),
        Case::new("Pow").input(&[2, 3]).ints(&[1], &[2]),
    ],
);
