//! SiLU by libtorch's vectorized kernels (what PyTorch runs for `nn.SiLU`), one pass each way:
//! - `Silu(X) -> Y = X sigmoid(X)`;
//! - `SiluGrad(dY, X) -> dX = dY s (1 + X (1 - s))`, `s = sigmoid(X)` (`silu_backward`).
//!
//! The exporter writes SiLU as Sigmoid and a Mul by the same input; differentiated op by op
//! that is five passes over the activations backward (Mul, Mul, Sub, Mul, Sum) and two forward
//! (`ops/silu.rs` fuses the pair). Parts take element ranges.
use super::exec::{bounds, split};
use super::ffi;
use super::op::{Call, CpuOp, Io::*};
use crate::ops::rule::kernels::{SILU, SILU_GRAD};

/// `probe.cpu:Silu`.
pub static SILU_OP: CpuOp<()> = CpuOp::new(SILU, silu).io(&[F32], &[F32]);

fn silu(_: &(), c: &Call) -> ort::Result<()> {
    let (xs, xv) = c.input_named(0, "X")?;
    let y = c.required(0, xs.to_vec(), "Y")?;
    let len = xv.len();
    let b = bounds(len, c.parts_for(len, len));
    let pieces = split(y, 1, &b).into_iter().zip(b.iter().copied());
    c.run(pieces.collect(), |_, (y, (lo, hi))| {
        ffi::silu(&xv[lo..hi], y)
    })
    .map_err(|e| c.torch(e))
}

/// `probe.cpu:SiluGrad`.
pub static SILU_GRAD_OP: CpuOp<()> = CpuOp::new(SILU_GRAD, silu_grad).io(&[F32, F32], &[F32]);

fn silu_grad(_: &(), c: &Call) -> ort::Result<()> {
    c.elementwise_grad(ffi::silu_grad)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{f64s, rand, Node, EPS};
    use super::{SILU, SILU_GRAD};

    /// Over the 32,768 elements at which the kernels split, and not a multiple of 3.
    const N: usize = 40_001;

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// X over [-12, 12], with 0, -0.0 and large magnitudes first.
    fn x() -> Vec<f32> {
        let mut x: Vec<f32> = rand(N, 1).iter().map(|v| 12.0 * v).collect();
        x[..5].copy_from_slice(&[0.0, -0.0, 80.0, -80.0, 1e-30]);
        x
    }

    #[test]
    fn silu_is_x_times_its_sigmoid() {
        let x = x();
        let want: Vec<f64> = f64s(&x).iter().map(|&x| x * sigmoid(x)).collect();
        // A few roundings of exp and a division in f32.
        Node::new(SILU)
            .input(&[N], &x)
            .output(&[N], &want, 8.0 * EPS)
            .check();
    }

    #[test]
    fn silu_grad_is_pytorchs_silu_backward() {
        let (x, dy) = (x(), rand(N, 2));
        let want: Vec<f64> = f64s(&x)
            .iter()
            .zip(f64s(&dy))
            .map(|(&x, dy)| {
                let s = sigmoid(x);
                dy * s * (1.0 + x * (1.0 - s))
            })
            .collect();
        let node = Node::new(SILU_GRAD).input(&[N], &dy).input(&[N], &x);
        // 1 + x (1 - s) cancels near x = -1.28 (its root): the bound scales with |x|.
        node.output(&[N], &want, 64.0 * EPS).check();
    }

    #[test]
    fn shape_checks() {
        let node = Node::new(SILU_GRAD)
            .input(&[3], &[0.0; 3])
            .input(&[4], &[0.0; 4]);
        node.output(&[3], &[0.0; 3], 0.0)
            .fails("dY [3] and X [4] differ");
    }
}
