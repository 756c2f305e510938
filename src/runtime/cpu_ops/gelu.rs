//! `GeluGrad(dY, X) -> dX`, attribute `approximate` ("none", the default, or "tanh"):
//! libtorch's gelu_backward, `dX = dY (Phi(X) + X phi(X))` (or the tanh form's derivative), one
//! pass where the standard form takes eleven ops (Mul, Erf, Add, Mul, Mul, Mul, Exp, Mul, Mul,
//! Add, Mul). Parts take element ranges.
use super::ffi;
use super::op::{Attrs, Call, CpuOp, FromAttrs, Io::*};
use crate::ops::rule::kernels::GELU_GRAD;

/// Attribute `approximate`: whether it is "tanh".
pub struct Tanh(bool);

impl FromAttrs for Tanh {
    fn read(a: &Attrs) -> ort::Result<Tanh> {
        match a.get::<String>("approximate").as_deref().unwrap_or("none") {
            "none" => Ok(Tanh(false)),
            "tanh" => Ok(Tanh(true)),
            other => Err(a.fail(format!("approximate = \"{other}\""))),
        }
    }
}

/// `probe.cpu:GeluGrad`.
pub static GELU_GRAD_OP: CpuOp<Tanh> = CpuOp::new(GELU_GRAD, gelu_grad).io(&[F32, F32], &[F32]);

fn gelu_grad(a: &Tanh, c: &Call) -> ort::Result<()> {
    c.elementwise_grad(|dy, x, dx| ffi::gelu_grad(dy, x, a.0, dx))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rand, Node, EPS};
    use super::GELU_GRAD;
    use crate::model::graph::attr_string;
    use std::f64::consts::PI;

    /// Over the 32,768 elements at which the kernel splits, and not a multiple of 3.
    const N: usize = 40_001;

    /// erf in f64 by its series `2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1 3 ... (2n+1))`,
    /// every term positive (no cancellation), to a relative 1e-15.
    fn erf(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / PI.sqrt() * (-x * x).exp() * sum
    }

    /// d gelu(x) / dx: `Phi(x) + x phi(x)`, or the tanh form's derivative.
    fn gelu_grad(x: f64, tanh: bool) -> f64 {
        if tanh {
            let (c, a) = ((2.0 / PI).sqrt(), 0.044715);
            let t = (c * (x + a * x * x * x)).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * a * x * x)
        } else {
            0.5 * (1.0 + erf(x / 2f64.sqrt())) + x * (-x * x / 2.0).exp() / (2.0 * PI).sqrt()
        }
    }

    #[test]
    fn gelu_grad_exact_and_tanh() {
        let dy = rand(N, 1);
        // X in [-6, 6], with 0, -0.0, NaN and the tails (where Phi is 0 or 1 in f32).
        let mut x: Vec<f32> = rand(N, 2).iter().map(|v| 6.0 * v).collect();
        x[..6].copy_from_slice(&[0.0, -0.0, f32::NAN, 12.0, -12.0, 1e-30]);
        for approximate in [None, Some("none"), Some("tanh")] {
            let tanh = approximate == Some("tanh");
            let want: Vec<f64> = (0..N)
                .map(|i| dy[i] as f64 * gelu_grad(x[i] as f64, tanh))
                .collect();
            let n = Node::new(GELU_GRAD);
            let n = match approximate {
                Some(a) => n.attr(attr_string("approximate", a)),
                None => n,
            };
            // erf, exp or tanh in f32 (a few ulps each) and a handful of products and sums:
            // 16 ulps of values up to ~1.1.
            n.input(&[N], &dy)
                .input(&[N], &x)
                .output(&[N], &want, 16.0 * EPS)
                .check();
        }
    }

    #[test]
    fn approximate_and_shapes_checked() {
        let n = Node::new(GELU_GRAD).attr(attr_string("approximate", "fast"));
        let n = n.input(&[2], &[0.0; 2]).input(&[2], &[0.0; 2]);
        n.output(&[2], &[0.0; 2], 0.0)
            .fails("approximate = \"fast\"");
        let n = Node::new(GELU_GRAD)
            .input(&[2], &[0.0; 2])
            .input(&[1, 2], &[0.0; 2]);
        n.output(&[1, 2], &[0.0; 2], 0.0)
            .fails("dY [2] and X [1, 2] differ");
        let n = Node::new(GELU_GRAD).input(&[0], &[]).input(&[0], &[]);
        n.output(&[0], &[], 0.0).check();
    }
}
