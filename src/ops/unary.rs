//! What the one-input pointwise ops (Abs, Exp, Tanh, ...) share: a libtorch forward that is
//! one tensor method, and a gradient rule that maps dY, with X and Y at hand, to dX.
use super::rule::Ctx;
use super::torch::{input, one, Value};
use anyhow::Result;
use tch::{TchError, Tensor};

/// The forward `f(X)`.
pub fn torch(v: Vec<Value>, f: fn(&Tensor) -> Result<Tensor, TchError>) -> Result<Vec<Value>> {
    one(f(input(&v, 0)?)?)
}

/// dX = `rule(c, dY, X, Y)`, when anything downstream needs dY.
pub fn vjp(c: &mut Ctx, rule: fn(&mut Ctx, &str, &str, &str) -> Result<String>) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (x, y) = (c.input(0).to_string(), c.output(0).to_string());
    let gx = rule(c, &g, &x, &y)?;
    c.set(0, gx);
    Ok(())
}
