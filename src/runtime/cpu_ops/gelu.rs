//! `GeluGrad(dY, X) -> dX`, attribute `approximate` ("none", the default, or "tanh"):
//! libtorch's gelu_backward, `dX = dY (Phi(X) + X phi(X))` (or the tanh form's derivative), one
//! pass where the standard form takes eleven ops (Mul, Erf, Add, Mul, Mul, Mul, Exp, Mul, Mul,
//! Add, Mul). Parts take element ranges.
use super::exec::{bounds, split};
use super::ffi;
use super::op::{Attrs, Call, CpuOp, Io};

pub const GELU_GRAD: &str = "GeluGrad";

/// `probe.cpu:GeluGrad`.
pub struct GeluGrad {
    tanh: bool,
}

impl CpuOp for GeluGrad {
    const NAME: &'static str = GELU_GRAD;
    const INPUTS: &'static [Io] = &[Io::F32, Io::F32];
    const OUTPUTS: &'static [Io] = &[Io::F32];
    fn new(a: &Attrs) -> ort::Result<GeluGrad> {
        let tanh = match a.get::<String>("approximate").as_deref().unwrap_or("none") {
            "none" => false,
            "tanh" => true,
            other => return Err(a.fail(format!("approximate = \"{other}\""))),
        };
        Ok(GeluGrad { tanh })
    }
    fn compute(&self, c: &Call) -> ort::Result<()> {
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
            ffi::gelu_grad(&dyv[lo..hi], &xv[lo..hi], self.tanh, dx)
        })
        .map_err(|e| c.torch(e))
    }
}
