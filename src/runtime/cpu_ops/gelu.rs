//! `GeluGrad(dY, X) -> dX`, attribute `approximate` ("none", the default, or "tanh"):
//! libtorch's gelu_backward, `dX = dY (Phi(X) + X phi(X))` (or the tanh form's derivative), one
//! pass where the standard form takes eleven ops (Mul, Erf, Add, Mul, Mul, Mul, Exp, Mul, Mul,
//! Add, Mul). Parts take element ranges.
use super::exec::{bounds, split};
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
    let (dys, dyv) = c.input(0)?;
    let (xs, xv) = c.input(1)?;
    if dys[..] != xs[..] {
        return Err(c.fail(format!("dY {:?} and X {:?} differ", &dys[..], &xs[..])));
    }
    let dx = c.required(0, xs.to_vec(), "dX")?;
    let len = xv.len();
    let b = bounds(len, c.parts_for(len, len));
    let pieces = split(dx, 1, &b).into_iter().zip(b.iter().copied());
    c.run(pieces.collect(), |_, (dx, (lo, hi))| {
        ffi::gelu_grad(&dyv[lo..hi], &xv[lo..hi], a.0, dx)
    })
    .map_err(|e| c.torch(e))
}
