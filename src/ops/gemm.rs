//! Gemm (opset 13; also 11): `Y = alpha * A' B' + beta * C` with `A' = transA ? A^T : A` ([M, K]),
//! `B' = transB ? B^T : B` ([K, N]), and `C` (optional) unidirectionally broadcast to [M, N].
//! https://onnx.ai/onnx/operators/onnx__Gemm.html
//!
//! dA' = alpha * dY B'^T, dB' = alpha * A'^T dY, dC = beta * unbroadcast(dY); each product is one
//! Gemm whose trans flags fold in both the forward transposes and the adjoint's:
//! - dA = transA ? alpha * B' dY^T : alpha * dY B'^T
//! - dB = transB ? alpha * dY^T A' : alpha * A'^T dY
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, opt_input, TorchCtx, Value};
use crate::model::graph::{attr_float, attr_int};
use anyhow::Result;

pub static RULE: Rule = Rule::new("Gemm", Kind::Structured).vjp(vjp).torch(torch);

/// With alpha = beta = 1 and a C, one `addmm(C, A', B')`: what PyTorch's Linear runs.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let alpha = c.attr_f("alpha", 1.0) as f64;
    let beta = c.attr_f("beta", 1.0) as f64;
    let t = |m: &tch::Tensor, flag: &str| -> Result<tch::Tensor> {
        Ok(if c.attr_i(flag, 0) != 0 {
            m.f_transpose(0, 1)?
        } else {
            m.shallow_clone()
        })
    };
    let (a, b) = (t(input(&v, 0)?, "transA")?, t(input(&v, 1)?, "transB")?);
    let y = match opt_input(&v, 2) {
        Some(cc) if alpha == 1.0 && beta == 1.0 => cc.f_addmm(&a, &b)?,
        Some(cc) => a
            .f_matmul(&b)?
            .f_mul_scalar(alpha)?
            .f_add(&cc.f_mul_scalar(beta)?)?,
        None if alpha == 1.0 => a.f_matmul(&b)?,
        None => a.f_matmul(&b)?.f_mul_scalar(alpha)?,
    };
    one(y)
}

fn gemm(c: &mut Ctx, a: &str, b: &str, ta: bool, tb: bool, alpha: f32) -> String {
    let mut attrs = vec![attr_int("transA", ta as i64), attr_int("transB", tb as i64)];
    if alpha != 1.0 {
        attrs.push(attr_float("alpha", alpha));
    }
    c.op("Gemm", &[a, b], attrs)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let alpha = c.attr_f("alpha", 1.0);
    let beta = c.attr_f("beta", 1.0);
    let ta = c.attr_i("transA", 0) != 0;
    let tb = c.attr_i("transB", 0) != 0;
    let (a, b, y) = c.binary();
    if c.needs(0) {
        // B'^T is B (transB) or B^T; B' is B^T (transB) or B.
        let ga = if ta {
            gemm(c, &b, &g, tb, true, alpha)
        } else {
            gemm(c, &g, &b, false, !tb, alpha)
        };
        c.set(0, ga);
    }
    if c.needs(1) {
        let gb = if tb {
            gemm(c, &g, &a, true, ta, alpha)
        } else {
            gemm(c, &a, &g, !ta, false, alpha)
        };
        c.set(1, gb);
    }
    if c.has_input(2) && c.needs(2) {
        let gc = if beta != 1.0 {
            let s = c.scalar(beta as f64, &y)?;
            c.op("Mul", &[&g, &s], vec![])
        } else {
            g.clone()
        };
        c.set_unbroadcast(2, &gc, &y)?;
    }
    Ok(())
}

op_tests!(
    gemm_plain_and_broadcast_c = [
        Case::new("Gemm").input(&[3, 4]).input(&[4, 5]).input(&[5]),
        Case::new("Gemm")
            .input(&[3, 4])
            .input(&[4, 5])
            .input(&[3, 1]),
        Case::new("Gemm").input(&[3, 4]).input(&[4, 5]).input(&[1]),
        Case::new("Gemm")
            .input(&[3, 4])
            .input(&[4, 5])
            .input(&[3, 5]),
        Case::new("Gemm").input(&[3, 4]).input(&[4, 5]),
    ],
    gemm_transposes_alpha_beta = [(0, 1), (1, 0), (1, 1)].map(|(ta, tb)| {
        let a = if ta == 1 { [4, 3] } else { [3, 4] };
        let b = if tb == 1 { [5, 4] } else { [4, 5] };
        Case::new("Gemm")
            .input(&a)
            .input(&b)
            .input(&[1, 5])
            .attr(attr_int("transA", ta))
            .attr(attr_int("transB", tb))
            .attr(attr_float("alpha", 0.75))
            .attr(attr_float("beta", -1.5))
    }),
);
