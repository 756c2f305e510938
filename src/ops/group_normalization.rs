//! GroupNormalization (opset 21): X of shape [N, C, D...] in `num_groups` groups of C/G
//! channels, `Y = xhat * scale[c] + bias[c]` with xhat normalized over each (n, group)'s
//! channels and D... (biased variance, `epsilon`). `stash_type` only sets the forward's
//! internal precision; the gradient is computed in X's type.
//! https://onnx.ai/onnx/operators/onnx__GroupNormalization.html
//! nn.GroupNorm exports to it from opset 21 (at opset 20 to InstanceNormalization on a
//! reshaped X). Opset 18's per-group scale and bias are refused with the reason.
//!
//! Gradients: InstanceNormalization's ([`normalization_vjp`]) with X viewed as [N, G, -1].
use super::attrs::Attrs;
use super::instance_normalization::normalization_vjp;
use super::rule::{Kind, Rule};
use super::torch::{f32_as_written, input, one, TorchCtx, Value};
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("GroupNormalization", Kind::Structured)
    .vjp(|c| {
        let g = c.attr_i("num_groups", 0);
        if g <= 0 {
            bail!(
                "GroupNormalization node '{}': num_groups {g} is not positive",
                c.node.name
            );
        }
        normalization_vjp(c, Some(g))
    })
    .torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let (x, scale, bias) = (input(&v, 0)?, input(&v, 1)?, input(&v, 2)?);
    let eps = f32_as_written(c.attr_f("epsilon", 1e-5));
    let g = c.attr_i("num_groups", 0);
    one(x.f_group_norm(g, Some(scale), Some(bias), eps, false)?)
}

op_tests!(
    group_normalization = [
        // stash_type 11 (double): the forward computes in f64, so finite differences are exact.
        Case::new("GroupNormalization")
            .input(&[2, 4, 3, 3])
            .input(&[4])
            .input(&[4])
            .attr(attr_int("num_groups", 2))
            .attr(attr_int("stash_type", 11))
            .opset(21),
        Case::new("GroupNormalization")
            .input(&[3, 6, 5])
            .input(&[6])
            .input(&[6])
            .attr(attr_int("num_groups", 3))
            .attr(attr_float("epsilon", 1e-3))
            .f32()
            .opset(21),
    ],
);
