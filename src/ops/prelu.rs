//! PRelu (opset 16): `Y = X` where X >= 0, `slope * X` elsewhere; slope broadcasts to X
//! (unidirectionally: PyTorch's per-channel `nn.PReLU(C)` exports its weight reshaped to
//! [C, 1, 1]). https://onnx.ai/onnx/operators/onnx__PRelu.html
//!
//! With m = [X > 0]: dX = dY * (m ? 1 : slope), dSlope = sum over the broadcast axes of
//! dY * (m ? 0 : X). At X = 0 that is slope for X and 0 for the slope, as PyTorch's
//! `_prelu_kernel_backward` takes it (its mask is `input > 0`).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::Result;

pub static RULE: Rule = Rule::new("PRelu", Kind::Elementwise).vjp(vjp).torch(torch);

/// PyTorch's own kernel (which broadcasts the weight), so libtorch's backward is PyTorch's.
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_internal_prelu_kernel(input(&v, 1)?)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (x, slope, y) = c.binary();
    let zero = c.scalar(0.0, &x)?;
    let pos = c.op("Greater", &[&x, &zero], vec![]);
    if c.needs(0) {
        let one = c.scalar(1.0, &x)?;
        let k = c.op("Where", &[&pos, &one, &slope], vec![]);
        let gx = c.op("Mul", &[&g, &k], vec![]);
        c.set(0, gx);
    }
    if c.needs(1) {
        let k = c.op("Where", &[&pos, &zero, &x], vec![]);
        let gs = c.op("Mul", &[&g, &k], vec![]);
        c.set_unbroadcast(1, &gs, &y)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::prelude::*;
    use crate::ops::torch_testing::{autograd, check_torch_backward};

    crate::ops::testing::gradient_and_torch_tests!(
        // ONNX Runtime has no f64 PRelu kernel.
        prelu = [
            // One slope for all (nn.PReLU()).
            Case::new("PRelu").input(&[3, 5]).input(&[1]).f32(),
            // Per channel (nn.PReLU(3) on N, C, H, W): slope [C, 1, 1].
            // (Seed 2 draws no X within the f32 step 1e-2 of the kink.)
            Case::new("PRelu")
                .input(&[2, 3, 2, 2])
                .input(&[3, 1, 1])
                .f32()
                .seed(2),
            // Slope as large as X.
            Case::new("PRelu").input(&[2, 4]).input(&[2, 4]).f32(),
        ],
    );

    /// Zeros in X (a fresh network's activations): PyTorch's backward gives X the slope there
    /// and the slope nothing.
    #[test]
    fn zero_as_pytorch() {
        let xs = [0.0, -0.0, 1.0, -1.0, 0.0, 0.5];
        check_torch_backward(
            Case::new("PRelu")
                .values(&[2, 3], &xs)
                .values(&[3], &[0.25, -0.5, 2.0])
                .f32(),
            &autograd(|v| vec![v[0].internal_prelu_kernel(&v[1])]),
        );
    }
}
