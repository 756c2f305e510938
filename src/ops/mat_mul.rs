//! MatMul (opset 13; also 1, 9): numpy `matmul`, batched over the leading axes with broadcasting;
//! a 1-D A is promoted to [1, K] and a 1-D B to [K, 1], the added axis removed from Y.
//! https://onnx.ai/onnx/operators/onnx__MatMul.html
//!
//! With A, B promoted to 2+-D (Unsqueeze) and dY given the promoted axes back:
//! dA = unbroadcast(dY B^T), dB = unbroadcast(A^T dY), where ^T swaps the last two axes and
//! unbroadcast sums the batch axes A (or B) lacks or has as 1; the final Reshape to A's (B's)
//! shape also drops the promoted axis. When B is one matrix and A a batch (a Linear layer), dB
//! is one [K, M*batch] x [M*batch, N] product instead.
use super::torch::{input, one, TorchCtx, Value};
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::{anyhow, Result};

pub static RULE: Rule = Rule {
    op: "MatMul",
    kind: Kind::Structured,
    vjp: Some(vjp),
    torch: Some(torch),
};

/// libtorch's matmul has numpy's semantics, 1-D promotion included.
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_matmul(input(&v, 1)?)?)
}

/// Transposes the last two axes of a value of rank `r` (>= 2).
fn swap_last2(c: &mut Ctx, v: &str, r: usize) -> String {
    let mut perm: Vec<i64> = (0..r as i64).collect();
    perm.swap(r - 2, r - 1);
    c.transpose(v, &perm)
}

/// Sums `g` (dims `gd`: batch dims of Y, then the matrix dims of the operand) back to the
/// operand `x` whose promoted dims are `xd`, then reshapes to `x`'s own shape.
fn sum_to(
    c: &mut Ctx,
    g: &str,
    gd: &[Option<usize>],
    xd: &[Option<usize>],
    x: &str,
    promoted: bool,
) -> String {
    let lead = gd.len() - xd.len();
    let mut axes: Vec<i64> = (0..lead as i64).collect();
    for (i, d) in xd[..xd.len() - 2].iter().enumerate() {
        if *d == Some(1) && gd[lead + i] != Some(1) {
            axes.push((lead + i) as i64);
        }
    }
    let g = if axes.is_empty() {
        g.to_string()
    } else {
        c.reduce_sum(g, &axes, true)
    };
    if lead == 0 && !promoted && axes.is_empty() {
        return g;
    }
    let shape = c.shape_of(x);
    c.op("Reshape", &[&g, &shape], vec![])
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (a, b, y) = (
        c.input(0).to_string(),
        c.input(1).to_string(),
        c.output(0).to_string(),
    );
    let (mut ad, mut bd, yd) = (c.dims(&a)?, c.dims(&b)?, c.dims(&y)?);
    let (pa, pb) = (ad.len() == 1, bd.len() == 1);
    if ad.is_empty() || bd.is_empty() {
        return Err(anyhow!("MatMul of a scalar"));
    }
    // Promote 1-D operands and give dY the axes MatMul removed: [.., M, N] throughout.
    let mut y2 = yd.clone();
    let (mut a2, mut b2) = (a.clone(), b.clone());
    if pa {
        let ax = c.ints(&[0]);
        a2 = c.op("Unsqueeze", &[&a, &ax], vec![]);
        ad.insert(0, Some(1));
        let r = y2.len();
        y2.insert(r - if pb { 0 } else { 1 }, Some(1));
    }
    if pb {
        let ax = c.ints(&[1]);
        b2 = c.op("Unsqueeze", &[&b, &ax], vec![]);
        bd.push(Some(1));
        y2.push(Some(1));
    }
    let r = y2.len();
    let g2 = if pa || pb {
        let mut axes = vec![];
        if pa {
            axes.push(r as i64 - 2);
        }
        if pb {
            axes.push(r as i64 - 1);
        }
        let ax = c.ints(&axes);
        c.op("Unsqueeze", &[&g, &ax], vec![])
    } else {
        g.clone()
    };
    let batch = &y2[..r - 2];
    if c.needs(0) {
        let bt = swap_last2(c, &b2, bd.len());
        let ga = c.op("MatMul", &[&g2, &bt], vec![]);
        let mut gd = batch.to_vec();
        gd.extend_from_slice(&ad[ad.len() - 2..]);
        let ga = sum_to(c, &ga, &gd, &ad, &a, pa);
        c.set(0, ga);
    }
    if c.needs(1) && bd.len() == 2 && ad.len() > 2 && bd.iter().all(|d| d.is_some()) {
        // A batch against one matrix (a Linear layer): fold the batch into the rows, so the
        // product is [K, N] at once instead of a [batch.., K, N] tensor summed afterwards.
        let (k, n) = (bd[0].unwrap() as i64, bd[1].unwrap() as i64);
        let sa = c.ints(&[-1, k]);
        let sg = c.ints(&[-1, n]);
        let a2r = c.op("Reshape", &[&a2, &sa], vec![]);
        let g2r = c.op("Reshape", &[&g2, &sg], vec![]);
        let at = c.transpose(&a2r, &[1, 0]);
        let gb = c.op("MatMul", &[&at, &g2r], vec![]);
        let gb = if pb {
            let shape = c.shape_of(&b);
            c.op("Reshape", &[&gb, &shape], vec![])
        } else {
            gb
        };
        c.set(1, gb);
    } else if c.needs(1) {
        let at = swap_last2(c, &a2, ad.len());
        let gb = c.op("MatMul", &[&at, &g2], vec![]);
        let mut gd = batch.to_vec();
        gd.extend_from_slice(&bd[bd.len() - 2..]);
        let gb = sum_to(c, &gb, &gd, &bd, &b, pb);
        c.set(1, gb);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::{check, Case};
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn matmul_batched_broadcasting() {
        matmul_batched_broadcasting_cases(check);
    }
    fn matmul_batched_broadcasting_cases(check: fn(Case)) {
        check(Case::new("MatMul").input(&[3, 4]).input(&[4, 5]));
        check(Case::new("MatMul").input(&[2, 3, 4, 5]).input(&[5, 6]));
        check(Case::new("MatMul").input(&[3, 4]).input(&[2, 4, 5]));
        check(Case::new("MatMul").input(&[2, 1, 3, 4]).input(&[5, 4, 2]));
        check(Case::new("MatMul").input(&[1, 3, 4]).input(&[2, 4, 2]));
    }
    #[test]
    fn matmul_vectors() {
        matmul_vectors_cases(check);
    }
    fn matmul_vectors_cases(check: fn(Case)) {
        check(Case::new("MatMul").input(&[4]).input(&[4, 3]));
        check(Case::new("MatMul").input(&[2, 3, 4]).input(&[4]));
        check(Case::new("MatMul").input(&[4]).input(&[2, 4, 3]));
        check(Case::new("MatMul").input(&[4]).input(&[4]));
    }
    #[test]
    fn torch_forward() {
        matmul_batched_broadcasting_cases(check_torch);
        matmul_vectors_cases(check_torch);
    }
}
