//! Transpose (opset 13+): `Y = X` with axes permuted by `perm` (default: reversed).
//! https://onnx.ai/onnx/operators/onnx__Transpose.html
//!
//! Y[i_perm] = X[i], so dX = Transpose(dY, perm^-1) with perm^-1[perm[k]] = k.
//!
//! With probe's CPU kernels (f32), transposes of rank 3 and up, forward and gradient, run as
//! `probe.cpu:Transpose` (libtorch's strided copy): ONNX Runtime's Transpose took 3.2 ms for a
//! [1000, 16, 32] attention operand, libtorch's a fraction of that.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule, Shapes};
use super::torch::{input, one, TorchCtx, Value};
use crate::model::graph::attr_ints;
use crate::tensor::DType;
use anyhow::{bail, Result};
use onnx_protobuf::NodeProto;

pub static RULE: Rule = Rule::new("Transpose", Kind::Linear)
    .vjp(vjp)
    .torch(torch)
    .probe_cpu_forward(probe_cpu_forward);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let rank = x.dim() as i64;
    let perm = c
        .attr_ints("perm")
        .unwrap_or_else(|| (0..rank).rev().collect());
    one(x.f_permute(perm.as_slice())?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let rank = c.rank(c.input(0))?;
    let perm = c
        .attr_ints("perm")
        .unwrap_or_else(|| (0..rank as i64).rev().collect());
    if perm.len() != rank {
        bail!(
            "perm {perm:?} has {} entries for a rank-{rank} input",
            perm.len()
        );
    }
    let gx = c.transpose(&g, &inverse(&perm));
    c.set(0, gx);
    Ok(())
}

/// Whether `probe.cpu:Transpose` beats ONNX Runtime's for this permutation. Not for rank 2: a
/// matrix transpose in front of a MatMul (a Linear layer's weight, a weight gradient's X^T)
/// is folded into the MatMul by ONNX Runtime's optimizer (FusedMatMul), which a custom op
/// would prevent.
pub fn probe_cpu_pays(perm: &[i64]) -> bool {
    perm.len() >= 3
}

/// The forward Transpose as `probe.cpu:Transpose` where that pays (f32, rank 3+); `None`
/// leaves it.
pub fn probe_cpu_forward(n: &NodeProto, shapes: &Shapes) -> Option<NodeProto> {
    let x = n.input.first()?;
    if n.op_type != "Transpose" || !n.domain.is_empty() || shapes.dtype(x)? != DType::F32 {
        return None;
    }
    let rank = shapes.rank(x)? as i64;
    let perm = n
        .attr_ints("perm")
        .unwrap_or_else(|| (0..rank).rev().collect());
    if perm.len() as i64 != rank || !probe_cpu_pays(&perm) {
        return None;
    }
    let m = crate::ops::rule::as_probe_cpu(n, vec![attr_ints("perm", &perm)]);
    Some(m)
}

/// The inverse of a permutation.
pub fn inverse(perm: &[i64]) -> Vec<i64> {
    let mut inv = vec![0i64; perm.len()];
    for (k, &p) in perm.iter().enumerate() {
        inv[p as usize] = k as i64;
    }
    inv
}

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_ints;
    use crate::ops::testing::{check, Case};
    crate::ops::testing::gradient_and_torch_tests!(transpose = transpose_cases(),);
    fn transpose_cases() -> [Case; 3] {
        [
            Case::new("Transpose").input(&[2, 3, 4]),
            Case::new("Transpose")
                .input(&[2, 3, 4])
                .attr(attr_ints("perm", &[1, 2, 0])),
            Case::new("Transpose")
                .input(&[2, 3, 4, 5])
                .attr(attr_ints("perm", &[0, 3, 1, 2])),
        ]
    }
    #[test]
    fn probe_cpu_kernel() {
        // Rank 3 and 4 (rank 2 stays standard ONNX, see probe_cpu_pays).
        for c in transpose_cases() {
            check(c.f32().probe_cpu());
        }
        // The last axis kept (runs copied): an attention head split and a 3-D swap.
        for (shape, perm) in [
            (&[2, 3, 4, 5][..], &[0, 2, 1, 3][..]),
            (&[3, 2, 4], &[1, 0, 2]),
        ] {
            check(
                Case::new("Transpose")
                    .input(shape)
                    .attr(attr_ints("perm", perm))
                    .f32()
                    .probe_cpu(),
            );
        }
    }
}
