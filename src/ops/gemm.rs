//! Gemm (opset 13; also 11): `Y = alpha * A' B' + beta * C` with `A' = transA ? A^T : A` ([M, K]),
//! `B' = transB ? B^T : B` ([K, N]), and `C` (optional) unidirectionally broadcast to [M, N].
//! https://onnx.ai/onnx/operators/onnx__Gemm.html
//!
//! dA' = alpha * dY B'^T, dB' = alpha * A'^T dY, dC = beta * unbroadcast(dY); each product is one
//! Gemm whose trans flags fold in both the forward transposes and the adjoint's:
//! - dA = transA ? alpha * B' dY^T : alpha * dY B'^T
//! - dB = transB ? alpha * dY^T A' : alpha * A'^T dY
//!
//! With probe's CPU kernels (f32, alpha = 1) the products run as `probe.cpu:MatMul` and the
//! forward `A' B' + C` (C a bias [N] or [1, N], beta = 1) as `probe.cpu:MatMulAdd`: MKL's GEMM
//! by libtorch, which PyTorch's addmm runs too, where ONNX Runtime's Gemm is MLAS (GPT-2's
//! Conv1D layers are Gemms: 58% of a batch in MLAS).
use super::attrs::Attrs;
use super::rule::{Ctx, Kernels, Kind, Rule, Shapes};
use super::torch::{input, one, opt_input, TorchCtx, Value};
use crate::model::graph::{attr_float, attr_int};
use crate::ops::rule::kernels::{MAT_MUL, MAT_MUL_ADD};
use crate::tensor::DType;
use anyhow::Result;
use onnx_protobuf::NodeProto;

pub static RULE: Rule = Rule::new("Gemm", Kind::Structured)
    .vjp(vjp)
    .torch(torch)
    .probe_cpu_forward(probe_cpu_forward);

/// The forward Gemm as a `probe.cpu` product (f32, alpha = 1; both transposes at once is
/// left to ONNX Runtime, the kernel would run it on one thread): `MatMul(A, B)` without C,
/// `MatMulAdd(A, B, C)` with a bias C of [N] or [1, N] (beta = 1, A not transposed).
pub fn probe_cpu_forward(n: &NodeProto, shapes: &Shapes) -> Option<NodeProto> {
    if n.op_type != "Gemm" || !n.domain.is_empty() || n.attr_f("alpha", 1.0) != 1.0 {
        return None;
    }
    let (ta, tb) = (n.attr_i("transA", 0) != 0, n.attr_i("transB", 0) != 0);
    let (a, b) = (n.input.first()?, n.input.get(1)?);
    let f32s = |v: &str| shapes.dtype(v) == Some(DType::F32);
    if !f32s(a) || !f32s(b) || ta && tb {
        return None;
    }
    let trans = vec![attr_int("transA", ta as i64), attr_int("transB", tb as i64)];
    let Some(cc) = n.input.get(2).filter(|c| !c.is_empty()) else {
        let mut m = crate::ops::rule::as_probe_cpu(n, trans);
        m.op_type = MAT_MUL.into();
        return Some(m);
    };
    let bd = shapes.static_dims(b)?;
    let nn = *bd.get(if tb { 0 } else { 1 })?;
    let bias = matches!(shapes.static_dims(cc)?[..], [k] | [1, k] if k == nn);
    if ta || !bias || !f32s(cc) || n.attr_f("beta", 1.0) != 1.0 {
        return None;
    }
    let mut m = crate::ops::rule::as_probe_cpu(n, vec![attr_int("transB", tb as i64)]);
    m.op_type = MAT_MUL_ADD.into();
    Some(m)
}

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

/// `alpha op(a) op(b)`; with `fast` (probe's CPU kernels, f32) and alpha = 1, one
/// `probe.cpu:MatMul` (not both transposed: see [`probe_cpu_forward`]).
fn gemm(c: &mut Ctx, fast: bool, a: &str, b: &str, ta: bool, tb: bool, alpha: f32) -> String {
    if fast && alpha == 1.0 && !(ta && tb) {
        let attrs = vec![attr_int("transA", ta as i64), attr_int("transB", tb as i64)];
        return c.probe_cpu_op(MAT_MUL, &[a, b], attrs, 1).pop().unwrap();
    }
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
    let fast =
        c.kernels == Kernels::ProbeCpu && c.dtype(&a)? == DType::F32 && c.dtype(&b)? == DType::F32;
    if c.needs(0) {
        // B'^T is B (transB) or B^T; B' is B^T (transB) or B.
        let ga = if ta {
            gemm(c, fast, &b, &g, tb, true, alpha)
        } else {
            gemm(c, fast, &g, &b, false, !tb, alpha)
        };
        c.set(0, ga);
    }
    if c.needs(1) {
        let gb = if tb {
            gemm(c, fast, &g, &a, true, ta, alpha)
        } else {
            gemm(c, fast, &a, &g, !ta, false, alpha)
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
    // probe's kernels: the forward as MatMulAdd (a bias C, B plain or transposed) or MatMul
    // (no C, or a C that is not a bias: then the Gemm stays), the products as MatMul.
    gemm_probe_cpu = [
        (false, false, Some(&[5][..]), true),
        (false, true, Some(&[1, 5]), true),
        (true, false, None, false),
        (false, false, Some(&[3, 5]), false),
    ]
    .map(|(ta, tb, c, add)| {
        let a = if ta { [4, 3] } else { [3, 4] };
        let b = if tb { [5, 4] } else { [4, 5] };
        let mut case = Case::new("Gemm")
            .input(&a)
            .input(&b)
            .attr(attr_int("transA", ta as i64))
            .attr(attr_int("transB", tb as i64));
        if let Some(c) = c {
            case = case.input(c);
        }
        let fwd = if add {
            "probe.cpu:MatMulAdd"
        } else {
            "probe.cpu:MatMul"
        };
        case.f32()
            .probe_cpu()
            .expect_op(fwd)
            .expect_op("probe.cpu:MatMul")
    }),
);
