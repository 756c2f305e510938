//! Mod (opset 13): the remainder of A / B, broadcasting both ways. `fmod = 1` (C's fmod, the
//! sign of A; required for floats, PyTorch's `torch.fmod`) or `fmod = 0` (the sign of B, integers
//! only; PyTorch's `torch.remainder` exports as Div, Floor, Mul, Sub instead).
//! https://onnx.ai/onnx/operators/onnx__Mod.html
//!
//! For floats, Y = A - trunc(A / B) * B with trunc piecewise constant: dA = dY and
//! dB = -dY * trunc(A / B), each summed back to its shape; PyTorch's derivatives.yaml for
//! `fmod.Tensor` (`self: grad`, `other: -grad * self.div(other, rounding_mode="trunc")`).
//! Integer Mod has no gradient (the sweep never reaches it).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, is_float, one, TorchCtx, Value};
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("Mod", Kind::Elementwise).vjp(vjp).torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let (a, b) = (input(&v, 0)?, input(&v, 1)?);
    if c.attr_i("fmod", 0) != 0 {
        return one(a.f_fmod_tensor(b)?);
    }
    if is_float(a.kind()) {
        bail!("Mod of floats needs fmod = 1 (the ONNX spec), the node has fmod = 0");
    }
    one(a.f_remainder_tensor(b)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    if c.attr_i("fmod", 0) == 0 {
        bail!("Mod of floats needs fmod = 1 (the ONNX spec), the node has fmod = 0");
    }
    let (a, b, y) = c.binary();
    if c.needs(0) {
        c.set_unbroadcast(0, &g, &y)?;
    }
    if c.needs(1) {
        // trunc(q) = sign(q) * floor(|q|): ONNX has no Trunc.
        let q = c.op("Div", &[&a, &b], vec![]);
        let aq = c.op("Abs", &[&q], vec![]);
        let fl = c.op("Floor", &[&aq], vec![]);
        let s = c.op("Sign", &[&q], vec![]);
        let t = c.op("Mul", &[&s, &fl], vec![]);
        let gt = c.op("Mul", &[&g, &t], vec![]);
        let gb = c.op("Neg", &[&gt], vec![]);
        c.set_unbroadcast(1, &gb, &y)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::prelude::*;
    use crate::ops::torch_testing::{autograd, check_torch_backward};

    crate::ops::testing::gradient_and_torch_tests!(
        // Integer remainders (both signs, fmod 0 and 1), forward only.
        torch_only = [0, 1].into_iter().map(|fmod| {
            Case::new("Mod")
                .ints(&[6], &[7, -7, 7, -7, 0, 5])
                .ints(&[6], &[3, 3, -3, -3, 2, 5])
                .attr(attr_int("fmod", fmod))
        }),
        // A in [-3, 3] and B in [0.5, 1.3] (both signs through the values below) keep
        // trunc(A / B) away from its jumps at these draws.
        modulo = [
            Case::new("Mod")
                .input_in(&[3, 4], -3.0, 3.0)
                .input_in(&[3, 4], 0.5, 1.3)
                .attr(attr_int("fmod", 1)),
            Case::new("Mod")
                .input_in(&[2, 3], -3.0, 3.0)
                .values(&[3], &[-0.7, 0.9, 1.1])
                .attr(attr_int("fmod", 1)),
        ],
    );

    /// dB = -dY * trunc(A / B), against PyTorch's fmod backward, signs of both operands.
    #[test]
    fn as_pytorch() {
        check_torch_backward(
            Case::new("Mod")
                .values(&[4], &[5.3, -5.3, 5.3, -5.3])
                .values(&[4], &[2.0, 2.0, -2.0, -2.0])
                .attr(attr_int("fmod", 1)),
            &autograd(|v| vec![v[0].fmod_tensor(&v[1])]),
        );
    }
}
