//! What the one-input pointwise ops (Abs, Exp, Tanh, ...) share: a libtorch forward that is
//! one tensor method, and a gradient rule that maps dY, with X and Y at hand, to dX; for most,
//! the chain rule dX = dY * f'(X), with f' written from X or Y ([`chain`]).
use super::rule::Ctx;
use super::torch::{input, one, Value};
use anyhow::Result;
use tch::{TchError, Tensor};

/// The forward `f(X)`.
pub fn torch(v: Vec<Value>, f: fn(&Tensor) -> Result<Tensor, TchError>) -> Result<Vec<Value>> {
    one(f(input(&v, 0)?)?)
}

/// dX = `rule(c, dY, X, Y)`, when anything downstream needs dY.
pub fn vjp(
    c: &mut Ctx,
    rule: impl FnOnce(&mut Ctx, &str, &str, &str) -> Result<String>,
) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (x, y) = (c.input(0).to_string(), c.output(0).to_string());
    let gx = rule(c, &g, &x, &y)?;
    c.set(0, gx);
    Ok(())
}

/// dX = dY * `derivative(c, X, Y)`: the chain rule for a pointwise `Y = f(X)` whose derivative
/// f' the rule builds from X or Y.
pub fn chain(
    c: &mut Ctx,
    derivative: impl FnOnce(&mut Ctx, &str, &str) -> Result<String>,
) -> Result<()> {
    vjp(c, |c, g, x, y| {
        let d = derivative(c, x, y)?;
        Ok(c.op("Mul", &[g, &d], vec![]))
    })
}

/// [`chain`] where f' is one ONNX op of X (|x|' = Sign(x), softplus' = Sigmoid(x)).
pub fn chain_op(c: &mut Ctx, derivative: &str) -> Result<()> {
    chain(c, |c, x, _| Ok(c.op(derivative, &[x], vec![])))
}
