//! Attention (opset 23): scaled dot-product attention as one node, what
//! `torch.onnx.export(..., opset_version=23)` writes for `F.scaled_dot_product_attention` (every
//! Hugging Face model with its default "sdpa" attention).
//! https://onnx.ai/onnx/operators/onnx__Attention.html
//!
//! For Q [B, Hq, L, E], K [B, Hk, S, E], V [B, Hk, S, Ev] (Hq a multiple of Hk: grouped-query
//! attention repeats each K/V head Hq/Hk times, head by head as `repeat_interleave`), with
//! `r = sqrt(scale)` (scale defaults to 1/sqrt(E)) and the spec's order of operations:
//!
//! ```text
//! A = (r Q) (r K')^T + bias,   P = softmax(A) along S,   Y = P V'
//! ```
//!
//! where K', V' are the repeated heads and `bias` is the float mask (added), the boolean mask
//! (True attends: -inf where False) and, with `is_causal`, -inf above the diagonal (j > i).
//! The rule recomputes P from the inputs and, with dY given:
//!
//! ```text
//! dV' = P^T dY,   dP = dY V'^T,   dA = P o (dP - rowsum(dP o P)),
//! dQ = r dA (r K'),   dK' = r dA^T (r Q),   dMask = dA (float mask, summed to its shape)
//! ```
//!
//! and dK, dV sum dK', dV' over each group of repeated heads. This is the gradient PyTorch's
//! SDPA backward computes for the same function. Refused with the reason: 3-D inputs (packed
//! heads), a KV cache (past_key/past_value, nonpad_kv_seqlen), softcap, and the present_key,
//! present_value or qk_matmul_output outputs being differentiated through.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, opt_input, TorchCtx, Value};
use crate::model::graph::{attr_int, attr_tensor};
use crate::tensor::DType;
use anyhow::{anyhow, bail, Result};
use onnx_protobuf::TensorProto;

pub static RULE: Rule = Rule::new("Attention", Kind::Structured)
    .vjp(vjp)
    .torch(torch);

/// What the rule and the libtorch forward cover; the reason otherwise.
fn supported(node: &onnx_protobuf::NodeProto) -> Result<()> {
    if node.attr_f("softcap", 0.0) != 0.0 {
        bail!("softcap is not supported");
    }
    for (i, what) in [(4, "past_key"), (5, "past_value"), (6, "nonpad_kv_seqlen")] {
        if node.input.get(i).is_some_and(|s| !s.is_empty()) {
            bail!("a KV cache input ({what}) is not supported (export without a cache)");
        }
    }
    if node.attr("q_num_heads").is_some() || node.attr("kv_num_heads").is_some() {
        bail!("3-D (packed-head) inputs are not supported; export with 4-D Q, K, V");
    }
    Ok(())
}

/// The scale factor: the `scale` attribute, else 1/sqrt(E).
fn scale(node: &onnx_protobuf::NodeProto, e: usize) -> f64 {
    match node.attr("scale") {
        Some(s) => s.f as f64,
        None => 1.0 / (e as f64).sqrt(),
    }
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(dy) = c.go(0) else { return Ok(()) };
    let fail = |e: anyhow::Error| anyhow!("Attention node '{}': {e}", c.node.name);
    supported(c.node).map_err(fail)?;
    if (1..4).any(|i| c.go(i).is_some()) {
        return Err(fail(anyhow!(
            "a gradient through present_key, present_value or qk_matmul_output is not supported"
        )));
    }
    let (q, k, v) = (
        c.input(0).to_string(),
        c.input(1).to_string(),
        c.input(2).to_string(),
    );
    let (qd, kd, vd) = (c.dims(&q)?, c.dims(&k)?, c.dims(&v)?);
    if qd.len() != 4 || kd.len() != 4 || vd.len() != 4 {
        return Err(fail(anyhow!("Q, K, V must be 4-D")));
    }
    let static_dim = |d: &[Option<usize>], i: usize, what: &str| {
        d[i].ok_or_else(|| anyhow!("{what} must be known statically"))
    };
    let hq = static_dim(&qd, 1, "Q's head count").map_err(fail)?;
    let hk = static_dim(&kd, 1, "K's head count").map_err(fail)?;
    let e = static_dim(&qd, 3, "the head size").map_err(fail)?;
    let ev = static_dim(&vd, 3, "V's head size").map_err(fail)?;
    if hk == 0 || hq % hk != 0 || vd[1] != kd[1] {
        return Err(fail(anyhow!(
            "Q's {hq} heads are not a multiple of K's and V's {hk}"
        )));
    }
    let groups = hq / hk;
    let r = c.scalar(scale(c.node, e).sqrt(), &q)?;
    let qs = c.op("Mul", &[&q, &r], vec![]);
    let ks = c.op("Mul", &[&k, &r], vec![]);
    let ks = repeat_heads(c, &ks, groups, hq, e);
    let vr = repeat_heads(c, &v, groups, hq, ev);
    let kt = c.transpose(&ks, &[0, 1, 3, 2]);
    let mut a = c.op("MatMul", &[&qs, &kt], vec![]);
    let mask = c.input(3).to_string();
    if !mask.is_empty() {
        // A constant mask (an initializer) is not among the observed values: its type is
        // read from the constant.
        let is_bool = match c.shapes.dtype(&mask) {
            Some(dt) => dt == DType::Bool,
            None => c
                .consts
                .get(&mask)
                .is_some_and(|t| t.data_type == DType::Bool.onnx()),
        };
        a = if is_bool {
            let ninf = c.scalar(f64::NEG_INFINITY, &q)?;
            c.op("Where", &[&mask, &a, &ninf], vec![])
        } else {
            c.op("Add", &[&a, &mask], vec![])
        };
    }
    if c.attr_i("is_causal", 0) != 0 {
        let l = static_dim(&qd, 2, "with is_causal, Q's length").map_err(fail)?;
        let s = static_dim(&kd, 2, "with is_causal, K's length").map_err(fail)?;
        let causal = causal_bias(c.dtype(&q)?, l, s)?;
        let cb = c.b.op("Constant", &[], vec![attr_tensor("value", causal)]);
        a = c.op("Add", &[&a, &cb], vec![]);
    }
    let p = c.op("Softmax", &[&a], vec![attr_int("axis", -1)]);
    if c.needs(2) {
        let pt = c.transpose(&p, &[0, 1, 3, 2]);
        let dvr = c.op("MatMul", &[&pt, &dy], vec![]);
        let dv = sum_heads(c, &dvr, groups, hk, ev);
        c.set(2, dv);
    }
    if !(c.needs(0) || c.needs(1) || c.needs(3)) {
        return Ok(());
    }
    let vt = c.transpose(&vr, &[0, 1, 3, 2]);
    let dp = c.op("MatMul", &[&dy, &vt], vec![]);
    let dpp = c.op("Mul", &[&dp, &p], vec![]);
    let rows = c.reduce_sum(&dpp, &[-1], true);
    let centred = c.op("Sub", &[&dp, &rows], vec![]);
    let da = c.op("Mul", &[&p, &centred], vec![]);
    if c.needs(0) {
        let dqs = c.op("MatMul", &[&da, &ks], vec![]);
        let dq = c.op("Mul", &[&dqs, &r], vec![]);
        c.set(0, dq);
    }
    if c.needs(1) {
        let dat = c.transpose(&da, &[0, 1, 3, 2]);
        let dks = c.op("MatMul", &[&dat, &qs], vec![]);
        let dkr = c.op("Mul", &[&dks, &r], vec![]);
        let dk = sum_heads(c, &dkr, groups, hk, e);
        c.set(1, dk);
    }
    if c.needs(3) {
        // A float mask: dA summed over the axes the mask broadcasts along. The scores
        // [B, Hq, L, S] are not a forward value, so their extents come from Q and K.
        let md = c.dims(&mask)?;
        let full = [qd[0], Some(hq), qd[2], kd[2]];
        let lead = 4 - md.len();
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for (i, m) in md.iter().enumerate() {
            if *m == Some(1) && full[lead + i] != Some(1) {
                axes.push((lead + i) as i64);
            }
        }
        let dm = if axes.is_empty() {
            da
        } else {
            let s = c.reduce_sum(&da, &axes, true);
            c.reshape_as(&s, &mask)
        };
        c.set(3, dm);
    }
    Ok(())
}

/// [B, Hk, S, D] -> [B, Hk * groups, S, D], each head repeated `groups` times in place
/// ([h0, h0, h1, h1, ...], as the spec's `np.repeat` and PyTorch's `repeat_interleave`).
fn repeat_heads(c: &mut Ctx, x: &str, groups: usize, hq: usize, d: usize) -> String {
    if groups == 1 {
        return x.to_string();
    }
    let axis = c.ints(&[2]);
    let x5 = c.op("Unsqueeze", &[x, &axis], vec![]);
    let reps = c.ints(&[1, 1, groups as i64, 1, 1]);
    let big = c.op("Expand", &[&x5, &reps], vec![]);
    let shape = c.ints(&[0, hq as i64, -1, d as i64]);
    c.op("Reshape", &[&big, &shape], vec![])
}

/// The adjoint of [`repeat_heads`]: [B, Hk * groups, S, D] summed over each group of heads.
fn sum_heads(c: &mut Ctx, g: &str, groups: usize, hk: usize, d: usize) -> String {
    if groups == 1 {
        return g.to_string();
    }
    let shape = c.ints(&[0, hk as i64, groups as i64, -1, d as i64]);
    let g5 = c.op("Reshape", &[g, &shape], vec![]);
    c.reduce_sum(&g5, &[2], false)
}

/// The causal bias [L, S]: 0 where key j <= query i, -inf above (the spec's offset-0 form).
fn causal_bias(dt: DType, l: usize, s: usize) -> Result<TensorProto> {
    let v: Vec<f64> = (0..l)
        .flat_map(|i| (0..s).map(move |j| if j <= i { 0.0 } else { f64::NEG_INFINITY }))
        .collect();
    let mut t = TensorProto::new();
    t.dims = vec![l as i64, s as i64];
    t.data_type = dt.onnx();
    t.raw_data = match dt {
        DType::F32 => v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
        DType::F64 => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        other => bail!("Attention over {other} is not supported"),
    };
    Ok(t)
}

/// libtorch's `scaled_dot_product_attention` (its GQA repeats heads as the spec does); a boolean
/// mask together with `is_causal`, which libtorch refuses, becomes one float bias.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    supported(c.node()).map_err(|e| anyhow!("Attention node '{}': {e}", c.node().name))?;
    if (1..4).any(|i| c.wants(i)) {
        bail!(
            "Attention node '{}': only output Y is supported",
            c.node().name
        );
    }
    let (q, k, val) = (input(&v, 0)?, input(&v, 1)?, input(&v, 2)?);
    let e = q.size()[3] as usize;
    let scale = scale(c.node(), e);
    let gqa = q.size()[1] != k.size()[1];
    let causal = c.attr_i("is_causal", 0) != 0;
    let mask = opt_input(&v, 3);
    let y = match (mask, causal) {
        (Some(m), true) => {
            let (l, s) = (q.size()[2], k.size()[2]);
            let opts = (q.kind(), q.device());
            let upper = tch::Tensor::f_ones([l, s], (tch::Kind::Bool, q.device()))?.f_triu(1)?;
            let ninf = tch::Tensor::f_full([], f64::NEG_INFINITY, opts)?;
            let zero = tch::Tensor::f_zeros([], opts)?;
            let mut bias = ninf.f_where_self(&upper, &zero)?;
            bias = if m.kind() == tch::Kind::Bool {
                ninf.f_where_self(&m.f_logical_not()?, &bias)?
            } else {
                bias.f_add(m)?
            };
            tch::Tensor::f_scaled_dot_product_attention(
                q,
                k,
                val,
                Some(&bias),
                0.0,
                false,
                scale,
                gqa,
            )?
        }
        (m, causal) => {
            tch::Tensor::f_scaled_dot_product_attention(q, k, val, m, 0.0, causal, scale, gqa)?
        }
    };
    one(y)
}

/// An opset-23 Attention case of Q, K, V with these shapes (f32: ONNX Runtime's Attention
/// kernel has no f64 form).
#[cfg(test)]
fn qkv(q: &[usize], k: &[usize], v: &[usize]) -> crate::ops::testing::Case {
    (crate::ops::testing::Case::new("Attention")
        .input(q)
        .input(k)
        .input(v))
    .opset(23)
    .f32()
}

op_tests!(
    attention = [
        crate::ops::attention::qkv(&[2, 2, 3, 4], &[2, 2, 5, 4], &[2, 2, 5, 3]),
        // Grouped-query attention (4 query heads over 2 K/V heads), a scale, causal.
        crate::ops::attention::qkv(&[1, 4, 3, 4], &[1, 2, 3, 4], &[1, 2, 3, 2])
            .attr(attr_float("scale", 0.3))
            .attr(attr_int("is_causal", 1)),
        // A float mask broadcast over batch and heads: its gradient summed back.
        crate::ops::attention::qkv(&[2, 2, 3, 4], &[2, 2, 5, 4], &[2, 2, 5, 4])
            .input(&[1, 1, 3, 5]),
        // A boolean mask (True attends) with is_causal, as Hugging Face exports pass both.
        crate::ops::attention::qkv(&[1, 2, 3, 4], &[1, 2, 3, 4], &[1, 2, 3, 4])
            .bools(
                &[1, 1, 3, 3],
                &[true, true, false, true, true, true, false, true, true]
            )
            .attr(attr_int("is_causal", 1)),
    ],
);

#[cfg(test)]
mod refusals {
    use super::*;
    use crate::ops::testing::node;

    #[test]
    fn what_is_not_covered_is_named() {
        let mut n = node("Attention", &["q", "k", "v", "", "pk", "pv"], "y");
        n.attribute
            .push(crate::model::graph::attr_float("softcap", 30.0));
        let e = supported(&n).unwrap_err().to_string();
        assert!(e.contains("softcap"), "{e}");
        n.attribute.clear();
        let e = supported(&n).unwrap_err().to_string();
        assert!(e.contains("past_key"), "{e}");
        let mut n = node("Attention", &["q", "k", "v"], "y");
        n.attribute.push(attr_int("q_num_heads", 2));
        assert!(supported(&n).unwrap_err().to_string().contains("3-D"));
    }
}
