//! ONNX operators: one file per op, each holding the op's attributes, its gradient rule and its
//! tests (and, from the training issue on, its libtorch forward). Adding an op is that file plus
//! one line in [`RULES`]; nothing else matches on op types.
//!
//! Every rule declares its kind, so "no gradient" is never implied by omission:
//! - `Linear`: the gradient is the adjoint linear map (Reshape, Transpose, Concat, ...);
//! - `Elementwise`: a pointwise derivative, possibly with broadcasting (Tanh, Mul, ...);
//! - `ZeroGradient`: differentiable almost everywhere with derivative 0 (ArgMax-like);
//! - `NonDifferentiable`: integer, boolean or shape outputs (Shape, Equal, Range, ...);
//! - `NotImplemented(why)`: known, and a model that needs it is refused with the reason.
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub mod add;
pub mod mul;
pub mod reduce_sum;
pub mod relu;
pub mod sum;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Linear,
    Elementwise,
    /// A rule with more structure than the two above (Conv, BatchNormalization, Softmax, ...).
    Structured,
    ZeroGradient,
    NonDifferentiable,
    NotImplemented(&'static str),
}

pub type Vjp = fn(&mut Ctx) -> Result<()>;

pub struct Rule {
    pub op: &'static str,
    pub kind: Kind,
    /// Emits the gradients of the inputs that need them; `None` for kinds without one.
    pub vjp: Option<Vjp>,
}

/// Every op probe knows, one line each.
pub static RULES: &[&Rule] = &[
    &add::ADD,
    &add::SUB,
    &mul::RULE,
    &reduce_sum::RULE,
    &relu::RULE,
    &sum::RULE,
];

pub fn rule(op_type: &str) -> Option<&'static Rule> {
    RULES.iter().copied().find(|r| r.op == op_type)
}

#[cfg(test)]
pub mod testing;
