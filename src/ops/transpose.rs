//! Transpose (opset 13+): `Y = X` with axes permuted by `perm` (default: reversed).
//! https://onnx.ai/onnx/operators/onnx__Transpose.html
//!
//! Y[i_perm] = X[i], so dX = Transpose(dY, perm^-1) with perm^-1[perm[k]] = k.
use super::attrs::Attrs;
use super::torch::{input, one, TorchCtx, Value};
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::{bail, Result};

pub static RULE: Rule = Rule {
    op: "Transpose",
    kind: Kind::Linear,
    vjp: Some(vjp),
    torch: Some(torch),
};

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let rank = x.dim() as i64;
    let perm = c
        .attr_ints("perm")
        .unwrap_or_else(|| (0..rank).rev().collect());
    one(x.f_permute(perm.as_slice())?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    if !c.needs(0) {
        return Ok(());
    }
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
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn transpose() {
        transpose_cases(check);
    }
    fn transpose_cases(check: fn(Case)) {
        check(Case::new("Transpose").input(&[2, 3, 4]));
        check(
            Case::new("Transpose")
                .input(&[2, 3, 4])
                .attr(attr_ints("perm", &[1, 2, 0])),
        );
        check(
            Case::new("Transpose")
                .input(&[2, 3, 4, 5])
                .attr(attr_ints("perm", &[0, 3, 1, 2])),
        );
    }
    #[test]
    fn torch_forward() {
        transpose_cases(check_torch);
    }
}
