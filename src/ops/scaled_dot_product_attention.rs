//! `probe.cpu:ScaledDotProductAttention`: attention as one node on probe's CPU fast path.
//!
//! PyTorch's exporter writes `F.scaled_dot_product_attention(q, k, v, ...)` as standard ops:
//!
//! ```text
//! KT = Transpose(K) (or Reshape(Transpose(Reshape(K, [-1, S, E]), [0, 2, 1]), [B, H, E, S]))
//! A  = MatMul(Mul(Q, sqrt(s)), Mul(KT, sqrt(s)))        (each scale factor optional)
//! P  = Softmax(Add(A, mask), axis = -1)                  (the Add only with a mask)
//! O  = MatMul(P, V)
//! ```
//!
//! Differentiated op by op that is ~10 nodes forward and ~20 backward per attention, each a
//! pass over [B, H, L, S] or [B, H, L, E] (transposes, two scalings, mask add, softmax, four
//! products, their gradients): ~11 ms per layer for a batch of 250 of the shipped GPT, where
//! PyTorch's own CPU path (flash attention, one fused kernel each way) takes ~3.5 ms.
//! [`fuse`] replaces the pattern, before differentiation and only with [`Kernels::ProbeCpu`],
//! by
//!
//! `ScaledDotProductAttention(Q, K, V, a?, b?, mask?) -> (O, LSE)`,
//! `O = softmax(a b Q K^T + mask) V`, `LSE = log sum_j exp(a b Q K^T + mask)` per row,
//!
//! whose rule emits `ScaledDotProductAttentionGrad(dO, Q, K, V, O, LSE, a?, b?, mask?) ->
//! (dQ, dK, dV)`. With `P = exp(a b Q K^T + mask - LSE)` (recomputed, never stored):
//! `dV = P^T dO`, `dP = dO V^T`, `dS = P o (dP - rowsum(dO o O))`, `dQ = a b dS K`,
//! `dK = a b dS^T Q`. Both run libtorch's flash attention for CPU (`runtime/cpu_ops.rs`).
//!
//! The fusion only fires when the result is the same function of Q, K, V: 4-D f32 Q
//! [B, H, L, E], K and V [B, H, S, E], scalar scale factors and a mask broadcasting to
//! [B, H, L, S], none of which (factors, mask) depends on a differentiated value (a learned
//! bias keeps the op-by-op form). Values the pattern computes on the way (P, the scores) stay
//! computed if anything else reads them; what nothing reads any more is removed.
use super::attrs::Attrs;
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use crate::autodiff::shapes::Shapes;
use crate::model::graph::attr_int;
use crate::tensor::DType;
use anyhow::{anyhow, Result};
use onnx_protobuf::{GraphProto, NodeProto};
use std::collections::{HashMap, HashSet};

pub const OP: &str = "ScaledDotProductAttention";

pub static RULE: Rule = Rule {
    op: OP,
    kind: Kind::Structured,
    vjp: Some(vjp),
    torch: None,
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    if c.needs(3) || c.needs(4) || c.needs(5) {
        // The fusion never builds such a node (see the module doc).
        return Err(anyhow!(
            "no gradient for the scale factors or the mask of a fused attention"
        ));
    }
    let needs = [c.needs(0), c.needs(1), c.needs(2)];
    if !needs.iter().any(|&n| n) {
        return Ok(());
    }
    let lse = c.output(1).to_string();
    if lse.is_empty() {
        return Err(anyhow!("the fused attention node has no LSE output"));
    }
    let ins: Vec<String> = (0..6).map(|i| c.input(i).to_string()).collect();
    let inputs = [
        g.as_str(),
        &ins[0],
        &ins[1],
        &ins[2],
        c.output(0),
        &lse,
        &ins[3],
        &ins[4],
        &ins[5],
    ]
    .map(|s| s.to_string());
    let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
    let attrs = c.node.attribute.clone();
    let outs = c.probe_cpu_outputs(&format!("{OP}Grad"), &refs, attrs, &needs);
    for (i, o) in outs.into_iter().enumerate() {
        if let Some(o) = o {
            c.set(i, o);
        }
    }
    Ok(())
}

/// What one attention fuses from: the final MatMul's index, the Q, K, V, factor and mask
/// values.
struct Found {
    at: usize,
    /// Q, K, V are read as [B, L, H, E] (their Transposes to heads skipped).
    blhe_in: bool,
    /// The Transpose of O back to [B, L, H, E] that the node writes instead (its index).
    out_transpose: Option<usize>,
    q: String,
    k: String,
    v: String,
    a: String,
    b: String,
    mask: String,
    /// Q, K, V read in place from the projection X [B, L, 3 H E] they were split from (X, H).
    packed: Option<(String, i64)>,
}

/// The float (and sequence) values that depend on any of `wrt`, as the reverse sweep's
/// requires-grad pass sees them: integer values (shapes) carry no dependence, and CastLike's
/// second input lends only its type.
pub fn dependents(graph: &GraphProto, shapes: &Shapes, wrt: &[String]) -> HashSet<String> {
    let mut dep: HashSet<String> = wrt.iter().cloned().collect();
    for n in &graph.node {
        let reads = n.input.iter().enumerate();
        if reads
            .filter(|&(i, _)| !(n.op_type == "CastLike" && i == 1))
            .any(|(_, v)| dep.contains(v))
        {
            // Sequences (SplitToSequence) carry their elements' dependence, as in the sweep.
            let seq = crate::autodiff::shapes::SEQUENCE_OPS.contains(&n.op_type.as_str());
            let carries = |o: &&String| seq || shapes.dtype(o).is_some_and(|d| d.is_float());
            dep.extend(
                n.output
                    .iter()
                    .filter(|o| !o.is_empty())
                    .filter(carries)
                    .cloned(),
            );
        }
    }
    dep
}

/// Fuses every attention of the pattern above into one `probe.cpu` node (see the module doc);
/// `dep` are the values that depend on a differentiated value ([`dependents`]). Returns how
/// many were fused.
pub fn fuse(graph: &mut GraphProto, shapes: &Shapes, dep: &HashSet<String>) -> usize {
    let uses = crate::model::graph::Uses::of(graph);
    let node = |v: &str, op: &str| -> Option<&NodeProto> {
        let n = &graph.node[*uses.producer.get(v)?];
        (n.op_type == op && n.domain.is_empty()).then_some(n)
    };
    let dims = |v: &str| shapes.get(v).map(|i| i.dims.clone());
    let f32_of = |v: &str| shapes.dtype(v) == Some(DType::F32);
    // A constant scale factor: a scalar no differentiated value reaches.
    let factor = |v: &str| {
        f32_of(v) && !dep.contains(v) && dims(v).is_some_and(|d| d.iter().all(|&x| x == Some(1)))
    };
    // `x` or `Mul(x, factor)` / `Mul(factor, x)`: (x, factor or "").
    let scaled = |v: &str| -> (String, String) {
        if let Some(m) = node(v, "Mul").filter(|m| m.input.len() == 2) {
            for (xi, fi) in [(0, 1), (1, 0)] {
                if factor(&m.input[fi]) && dims(&m.input[xi]) == dims(v) {
                    return (m.input[xi].clone(), m.input[fi].clone());
                }
            }
        }
        (v.to_string(), String::new())
    };
    // K from K^T: Transpose swapping the last two axes of a 4-D K, or the exporter's
    // Reshape(Transpose(Reshape(K, [-1, S, E]), [0, 2, 1]), [B, H, E, S]).
    let untranspose = |kt: &str| -> Option<String> {
        let ktd = dims(kt)?;
        if ktd.len() != 4 {
            return None;
        }
        let swapped =
            |k: &str| dims(k).is_some_and(|d| d.len() == 4 && [d[0], d[1], d[3], d[2]] == ktd[..]);
        if let Some(t) = node(kt, "Transpose") {
            let perm = t.attr_ints("perm");
            return (perm.as_deref() == Some(&[0, 1, 3, 2][..]) && swapped(&t.input[0]))
                .then(|| t.input[0].clone());
        }
        let r2 = node(kt, "Reshape")?;
        let t = node(&r2.input[0], "Transpose")?;
        let r1 = node(&t.input[0], "Reshape")?;
        let flat = dims(&r1.output[0])?;
        let ok = t.attr_ints("perm").as_deref() == Some(&[0, 2, 1][..])
            && flat.len() == 3
            && swapped(&r1.input[0]);
        ok.then(|| r1.input[0].clone())
    };
    // [B, H, L, E] <-> [B, L, H, E], the heads' transposes around an attention.
    let heads_perm = |t: &NodeProto| t.attr_ints("perm").as_deref() == Some(&[0, 2, 1, 3][..]);
    let blhe = |x: &str| -> Option<String> {
        let t = node(x, "Transpose").filter(|t| heads_perm(t))?;
        f32_of(&t.input[0]).then(|| t.input[0].clone())
    };
    // Position i of a split of X along its last axis into three: (X, i), from
    // SequenceAt(SplitToSequence(X), i) (the exporter's form) or output i of Split(X).
    let consts = crate::autodiff::grad::constants(graph, &HashSet::new(), shapes);
    let position = |v: &str| -> Option<i64> {
        let x = crate::autodiff::grad::const_ints(&consts, v)?;
        (x.len() == 1).then(|| x[0])
    };
    let last_axis = |n: &NodeProto, x: &str| {
        let (a, r) = (n.attr_i("axis", 0), shapes.rank(x).unwrap_or(0) as i64);
        a == -1 || a == r - 1
    };
    let third = |part: &str| -> Option<(String, i64)> {
        let n = &graph.node[*uses.producer.get(part)?];
        if !n.domain.is_empty() {
            return None;
        }
        if n.op_type == "Split" && n.output.len() == 3 && last_axis(n, &n.input[0]) {
            let i = n.output.iter().position(|o| o == part)?;
            return Some((n.input[0].clone(), i as i64));
        }
        if n.op_type != "SequenceAt" {
            return None;
        }
        let seq = node(&n.input[0], "SplitToSequence")?;
        let i = position(&n.input[1])?;
        (last_axis(seq, &seq.input[0]) && (0..3).contains(&i)).then(|| (seq.input[0].clone(), i))
    };
    // Q, K, V [B, L, H, E], each a Reshape of its third of one X [B, L, 3 H E] in order: X.
    let packed = |q: &str, k: &str, v: &str| -> Option<(String, i64)> {
        let qd = dims(q)?;
        let mut x = None;
        for (i, t) in [q, k, v].into_iter().enumerate() {
            let r = node(t, "Reshape")?;
            let (xi, at) = third(&r.input[0])?;
            let pd = dims(&r.input[0])?;
            let fits = dims(t).as_ref() == Some(&qd)
                && at == i as i64
                && pd.len() == 3
                && pd[..2] == qd[..2]
                && x.as_ref().is_none_or(|x| *x == xi);
            if !fits {
                return None;
            }
            x = Some(xi);
        }
        let x = x?;
        let (xd, he) = (dims(&x)?, qd[2]? * qd[3]?);
        let fits = f32_of(&x) && xd.len() == 3 && xd[..2] == qd[..2] && xd[2] == Some(3 * he);
        fits.then(|| (x, qd[2].unwrap() as i64))
    };
    let mut found = Vec::new();
    let mut bypassed = HashSet::new();
    for (k, pv) in graph.node.iter().enumerate() {
        if pv.op_type != "MatMul" || !pv.domain.is_empty() || pv.input.len() != 2 {
            continue;
        }
        let (p, v) = (&pv.input[0], &pv.input[1]);
        let Some(sm) = node(p, "Softmax") else {
            continue;
        };
        let Some(pd) = dims(p) else { continue };
        let axis = sm.attr_i("axis", -1);
        if pd.len() != 4 || !(axis == -1 || axis == 3) {
            continue;
        }
        let (scores, mask) = match node(&sm.input[0], "Add").filter(|a| a.input.len() == 2) {
            Some(add) => {
                let mm = (0..2).find(|&i| node(&add.input[i], "MatMul").is_some());
                match mm {
                    Some(i) => (add.input[i].clone(), add.input[1 - i].clone()),
                    None => continue,
                }
            }
            None => (sm.input[0].clone(), String::new()),
        };
        let Some(qk) = node(&scores, "MatMul").filter(|m| m.input.len() == 2) else {
            continue;
        };
        let (q, a) = scaled(&qk.input[0]);
        let (kt, b) = scaled(&qk.input[1]);
        let Some(kk) = untranspose(&kt) else { continue };
        let (Some(qd), Some(kd), Some(vd)) = (dims(&q), dims(&kk), dims(v)) else {
            continue;
        };
        let shapes_fit = qd.len() == 4
            && kd == vd
            && kd.len() == 4
            && qd[..2] == kd[..2]
            && qd[3] == kd[3]
            && pd[..] == [qd[0], qd[1], qd[2], kd[2]];
        let types_fit = [&q, &kk, v].iter().all(|x| f32_of(x));
        let mask_fits = mask.is_empty()
            || (f32_of(&mask)
                && !dep.contains(&mask)
                && dims(&mask).is_some_and(|m| {
                    m.len() <= 4
                        && (m.iter().zip(&pd[4 - m.len()..])).all(|(&d, &f)| d == Some(1) || d == f)
                }));
        if shapes_fit && types_fit && mask_fits {
            // Heads read and written in place where the graph transposes them anyway.
            let (q, kk, v, blhe_in) = match (blhe(&q), blhe(&kk), blhe(v)) {
                (Some(qs), Some(ks), Some(vs)) => {
                    bypassed.extend([q, kk, v.clone()]);
                    (qs, ks, vs, true)
                }
                _ => (q, kk, v.clone(), false),
            };
            let packed = if blhe_in { packed(&q, &kk, &v) } else { None };
            let o = pv.output[0].as_str();
            let out_transpose = match uses.readers(o) {
                &[t] if uses.sole_reader(o, t) => {
                    let t_node = &graph.node[t];
                    (t_node.op_type == "Transpose"
                        && t_node.domain.is_empty()
                        && heads_perm(t_node))
                    .then_some(t)
                }
                _ => None,
            };
            found.push(Found {
                at: k,
                blhe_in,
                out_transpose,
                q,
                k: kk,
                v,
                a,
                b,
                mask,
                packed,
            });
        }
    }
    let fused = found.len();
    let mut drop = HashSet::new();
    // Packed heads: (Q, K or V as the graph has it, the projection it was split from).
    let mut views: Vec<(String, String)> = Vec::new();
    for f in found {
        let o = match f.out_transpose {
            Some(t) => {
                drop.insert(t);
                graph.node[t].output[0].clone()
            }
            None => graph.node[f.at].output[0].clone(),
        };
        let n = &mut graph.node[f.at];
        n.op_type = OP.into();
        n.domain = crate::runtime::cpu_ops::DOMAIN.into();
        n.input = match &f.packed {
            Some((x, _)) => {
                views.extend([f.q, f.k, f.v].map(|v| (v, x.clone())));
                vec![x.clone(), String::new(), String::new(), f.a, f.b, f.mask]
            }
            None => vec![f.q, f.k, f.v, f.a, f.b, f.mask],
        };
        while n.input.last().is_some_and(|i| i.is_empty()) {
            n.input.pop();
        }
        n.output = vec![o.clone(), format!("{o}/lse")];
        n.attribute = vec![
            attr_int("blhe_in", f.blhe_in as i64),
            attr_int("blhe_out", f.out_transpose.is_some() as i64),
        ];
        if let Some((_, h)) = f.packed {
            n.attribute.push(attr_int("packed_heads", h));
        }
    }
    if fused > 0 {
        crate::model::graph::remove_nodes(&mut graph.node, |k| drop.contains(&k));
        read_shapes_through_transposes(graph, &bypassed);
        read_shapes_through_reshapes(graph, shapes, &views);
        remove_dead(graph);
    }
    fused
}

/// The exporter also reads the heads' Transposes for their shape (the scale is
/// `1/sqrt(Shape(Q)[-1])`, the causal mask is sized by `Shape(Q)` and `Shape(K)`) and their
/// type (CastLike): rewired to the Transpose's input, `Shape(Transpose(X, perm))` as
/// `Gather(Shape(X), perm)` and `CastLike(v, Transpose(X))` as `CastLike(v, X)`, so that a
/// Transpose the fused node bypasses is not computed only to be measured.
fn read_shapes_through_transposes(graph: &mut GraphProto, bypassed: &HashSet<String>) {
    let source: HashMap<String, (String, Vec<i64>)> = (graph.node.iter())
        .filter(|n| n.op_type == "Transpose" && n.domain.is_empty())
        .filter(|n| bypassed.contains(&n.output[0]))
        .filter_map(|n| {
            Some((
                n.output[0].clone(),
                (n.input[0].clone(), n.attr_ints("perm")?),
            ))
        })
        .collect();
    let mut nodes = Vec::with_capacity(graph.node.len());
    for mut n in std::mem::take(&mut graph.node) {
        let src = n.input.first().and_then(|i| source.get(i));
        match (n.op_type.as_str(), src) {
            ("Shape", Some((x, perm))) if n.domain.is_empty() => {
                let r = perm.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = clamp(n.attr_i("start", 0));
                let end = clamp(n.attr_i("end", r));
                let out = n.output[0].clone();
                let idx = format!("{out}/perm");
                let mut c = NodeProto::new();
                c.op_type = "Constant".into();
                c.name = idx.clone();
                c.output = vec![idx.clone()];
                let sel = &perm[start..end.max(start)];
                c.attribute = vec![crate::model::graph::attr_tensor(
                    "value",
                    crate::model::graph::tensor_i64("", &[sel.len() as i64], sel),
                )];
                let mut sh = n.clone();
                sh.input = vec![x.clone()];
                sh.output = vec![format!("{out}/source")];
                sh.attribute.clear();
                let mut g = NodeProto::new();
                g.op_type = "Gather".into();
                g.name = format!("{out}/gather");
                g.input = vec![sh.output[0].clone(), idx];
                g.output = vec![out];
                nodes.extend([c, sh, g]);
                continue;
            }
            _ => {}
        }
        if n.op_type == "CastLike" && n.domain.is_empty() {
            if let Some((x, _)) = n.input.get(1).and_then(|i| source.get(i)) {
                n.input[1] = x.clone();
            }
        }
        nodes.push(n);
    }
    graph.node = nodes;
}

/// With Q, K and V read in place from their projection X, the split and the Reshapes to heads
/// are left for their other readers, the exporter's Shape and CastLike reads: rewired, so that
/// they go. `Shape(Reshape(P, s))` (whole shape) is `s` itself when `s` holds no -1 or 0 (as
/// observed: its values are the batch size and constants); `CastLike(v, Q)` is `CastLike(v, X)`.
fn read_shapes_through_reshapes(
    graph: &mut GraphProto,
    shapes: &Shapes,
    views: &[(String, String)],
) {
    let uses = crate::model::graph::Uses::of(graph);
    let mut to_shape = HashMap::new();
    for (v, _) in views {
        let Some(r) = uses.producer.get(v).map(|&k| &graph.node[k]) else {
            continue;
        };
        let whole = |s: &str| shapes.ints.get(s).is_some_and(|d| d.iter().all(|&d| d > 0));
        if r.op_type == "Reshape" && r.input.len() == 2 && whole(&r.input[1]) {
            to_shape.insert(v.clone(), r.input[1].clone());
        }
    }
    let of: HashMap<&str, &str> = views
        .iter()
        .map(|(v, x)| (v.as_str(), x.as_str()))
        .collect();
    for n in graph.node.iter_mut().filter(|n| n.domain.is_empty()) {
        let whole = n
            .attribute
            .iter()
            .all(|a| a.name != "start" && a.name != "end");
        match (n.op_type.as_str(), n.input.first()) {
            ("Shape", Some(v)) if whole => {
                if let Some(s) = to_shape.get(v) {
                    n.op_type = "Identity".into();
                    n.input = vec![s.clone()];
                    n.attribute.clear();
                }
            }
            ("CastLike", _) => {
                if let Some(x) = n.input.get(1).and_then(|v| of.get(v.as_str())) {
                    n.input[1] = x.to_string();
                }
            }
            _ => {}
        }
    }
}

/// Removes the nodes nothing reads (no graph output, no other node), repeatedly.
fn remove_dead(graph: &mut GraphProto) {
    loop {
        let mut live: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        for n in &graph.node {
            live.extend(n.input.iter().map(|s| s.as_str()));
        }
        let dead: Vec<bool> = (graph.node.iter())
            .map(|n| {
                n.output
                    .iter()
                    .all(|o| o.is_empty() || !live.contains(o.as_str()))
            })
            .collect();
        if !dead.iter().any(|&d| d) {
            return;
        }
        crate::model::graph::remove_nodes(&mut graph.node, |k| dead[k]);
    }
}

#[cfg(test)]
mod tests {
    use crate::autodiff::grad::Kernels;
    use crate::model::graph::{attr_int, attr_ints, attr_tensor, tensor_f32, tensor_i64};
    use crate::ops::testing::check_graph_with;
    use onnx_protobuf::{GraphProto, NodeProto};

    use crate::ops::testing::node;

    fn constant(out: &str, t: onnx_protobuf::TensorProto) -> NodeProto {
        let mut n = node("Constant", &[], out);
        n.attribute = vec![attr_tensor("value", t)];
        n
    }

    /// How the test graph is laid out.
    #[derive(Clone, Copy)]
    struct Form {
        /// K^T by the exporter's Reshape/Transpose/Reshape chain, else one Transpose.
        chain: bool,
        /// A causal mask (-inf above the diagonal) added to the scores.
        masked: bool,
        /// q, k, v given as [b, l, h, e] and transposed to heads, the output transposed back,
        /// the first scale factor computed from Shape(Q) and the second cast like K (as the
        /// exporter does).
        blhe: bool,
    }

    /// The exporter's form of scaled_dot_product_attention for Q [b, h, l, e], K and V
    /// [b, h, s, e] (see [`Form`]); the output is "o".
    fn sdpa_graph(b: usize, h: usize, l: usize, s: usize, e: usize, form: Form) -> GraphProto {
        let Form {
            chain,
            masked,
            blhe,
        } = form;
        let mut g = GraphProto::new();
        let f = (1.0 / (e as f32).sqrt()).sqrt();
        let (q, k, v) = if blhe {
            for x in ["q", "k", "v"] {
                let mut t = node("Transpose", &[x], &format!("{x}h"));
                t.attribute = vec![attr_ints("perm", &[0, 2, 1, 3])];
                g.node.push(t);
            }
            let mut sh = node("Shape", &["qh"], "e_dim");
            sh.attribute = vec![attr_int("start", -1)];
            g.node.push(sh);
            let mut c = node("Cast", &["e_dim"], "e_f");
            c.attribute = vec![attr_int("to", 1)];
            g.node.push(c);
            g.node
                .push(constant("quarter", tensor_f32("", &[], &[-0.25])));
            g.node.push(node("Pow", &["e_f", "quarter"], "fa"));
            g.node.push(constant("fb0", tensor_f32("", &[], &[f])));
            g.node.push(node("CastLike", &["fb0", "kh"], "fb"));
            ("qh", "kh", "vh")
        } else {
            g.node.push(constant("fa", tensor_f32("", &[], &[f])));
            g.node.push(constant("fb", tensor_f32("", &[], &[f])));
            ("q", "k", "v")
        };
        if chain {
            g.node.push(constant(
                "flat",
                tensor_i64("", &[3], &[-1, s as i64, e as i64]),
            ));
            g.node.push(constant(
                "back",
                tensor_i64("", &[4], &[b as i64, h as i64, e as i64, s as i64]),
            ));
            g.node.push(node("Reshape", &[k, "flat"], "k3"));
            let mut t = node("Transpose", &["k3"], "kt3");
            t.attribute = vec![attr_ints("perm", &[0, 2, 1])];
            g.node.push(t);
            g.node.push(node("Reshape", &["kt3", "back"], "kt"));
        } else {
            let mut t = node("Transpose", &[k], "kt");
            t.attribute = vec![attr_ints("perm", &[0, 1, 3, 2])];
            g.node.push(t);
        }
        g.node.push(node("Mul", &[q, "fa"], "qs"));
        g.node.push(node("Mul", &["fb", "kt"], "kts"));
        g.node.push(node("MatMul", &["qs", "kts"], "scores"));
        let logits = if masked {
            let m: Vec<f32> = (0..l * s)
                .map(|i| {
                    if i % s > i / s {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            g.node
                .push(constant("mask", tensor_f32("", &[l as i64, s as i64], &m)));
            g.node.push(node("Add", &["scores", "mask"], "masked"));
            "masked"
        } else {
            "scores"
        };
        let mut sm = node("Softmax", &[logits], "p");
        sm.attribute = vec![attr_int("axis", -1)];
        g.node.push(sm);
        if blhe {
            g.node.push(node("MatMul", &["p", v], "oh"));
            let mut t = node("Transpose", &["oh"], "o");
            t.attribute = vec![attr_ints("perm", &[0, 2, 1, 3])];
            g.node.push(t);
        } else {
            g.node.push(node("MatMul", &["p", v], "o"));
        }
        g
    }

    /// Self-attention whose Q, K, V [b, l, h, e] are thirds of one projection x [b, l, 3 h e],
    /// split as the exporter writes it (SplitToSequence, SequenceAt) or by one Split, each
    /// reshaped to heads with a shape built from x's batch size, then the blhe form.
    fn packed_graph(
        b: usize,
        h: usize,
        l: usize,
        e: usize,
        split: bool,
        masked: bool,
    ) -> GraphProto {
        let mut g = GraphProto::new();
        let he = (h * e) as i64;
        g.node
            .push(constant("sizes", tensor_i64("", &[3], &[he, he, he])));
        if split {
            let mut sp = node("Split", &["x", "sizes"], "");
            sp.output = vec!["p0".into(), "p1".into(), "p2".into()];
            sp.attribute = vec![attr_int("axis", -1)];
            g.node.push(sp);
        } else {
            let mut sp = node("SplitToSequence", &["x", "sizes"], "seq");
            sp.attribute = vec![attr_int("axis", -1)];
            g.node.push(sp);
            for i in 0..3 {
                g.node
                    .push(constant(&format!("at{i}"), tensor_i64("", &[], &[i])));
                g.node.push(node(
                    "SequenceAt",
                    &["seq", &format!("at{i}")],
                    &format!("p{i}"),
                ));
            }
        }
        g.node.push(node("Shape", &["x"], "xs"));
        g.node.push(constant("zero", tensor_i64("", &[1], &[0])));
        g.node.push(node("Gather", &["xs", "zero"], "batch"));
        g.node.push(constant(
            "lhe",
            tensor_i64("", &[3], &[l as i64, h as i64, e as i64]),
        ));
        let mut cat = node("Concat", &["batch", "lhe"], "to_heads");
        cat.attribute = vec![attr_int("axis", 0)];
        g.node.push(cat);
        for (i, x) in ["q", "k", "v"].into_iter().enumerate() {
            g.node
                .push(node("Reshape", &[&format!("p{i}"), "to_heads"], x));
        }
        let form = Form {
            chain: true,
            masked,
            blhe: true,
        };
        g.node.extend(sdpa_graph(b, h, l, l, e, form).node);
        g
    }

    /// Fused attention against the op-by-op standard form and finite differences (f32):
    /// the exporter's K^T chain and a plain Transpose, causal mask or none, self- and
    /// cross-attention (L != S), one batch row and several (the kernel's parts split rows),
    /// heads stored as [B, H, L, E] or read and written as [B, L, H, E].
    #[test]
    fn probe_cpu_fused_attention() {
        let form = |chain, masked, blhe| Form {
            chain,
            masked,
            blhe,
        };
        for (b, h, l, s, e, form) in [
            (3, 2, 5, 5, 4, form(true, true, false)),
            (2, 1, 4, 6, 3, form(false, false, false)),
            (1, 2, 3, 3, 2, form(false, true, false)),
            (3, 2, 5, 5, 4, form(true, true, true)),
        ] {
            let g = sdpa_graph(b, h, l, s, e, form);
            let (qd, kd) = if form.blhe {
                ([b, l, h, e], [b, s, h, e])
            } else {
                ([b, h, l, e], [b, h, s, e])
            };
            let inputs: [(&str, &[usize]); 3] = [("q", &qd), ("k", &kd), ("v", &kd)];
            check_graph_with("attention", g, &inputs, &["o"], 7, Kernels::ProbeCpu);
        }
        // Q, K, V read in place from their projection, its gradient written as one.
        for (b, h, l, e, split, masked) in [(3, 2, 5, 4, false, true), (2, 3, 4, 2, true, false)] {
            let g = packed_graph(b, h, l, e, split, masked);
            let x = [b, l, 3 * h * e];
            check_graph_with(
                "packed attention",
                g,
                &[("x", &x)],
                &["o"],
                7,
                Kernels::ProbeCpu,
            );
        }
    }

    /// The packed rewrite: the attention reads the projection itself, and the split, the
    /// Reshapes to heads and the exporter's Shape reads of them are gone.
    #[test]
    fn reads_a_split_projection_in_place() {
        use crate::autodiff::shapes::Shapes;
        use crate::model::graph::value_info;
        use crate::tensor::{DType, HostTensor};
        let (b, h, l, e) = (2usize, 2usize, 3usize, 4usize);
        for split in [false, true] {
            let mut g = packed_graph(b, h, l, e, split, true);
            let xd = [b, l, 3 * h * e];
            let dims: Vec<Option<i64>> = xd.iter().map(|&d| Some(d as i64)).collect();
            g.input.push(value_info("x", DType::F32, &dims, "N"));
            let n: usize = xd.iter().product();
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let feeds = vec![("x".to_string(), HostTensor::f32(xd.to_vec(), v))];
            g.output.push(value_info("o", DType::F32, &[None; 4], "N"));
            let m = crate::ops::testing::model_of(g, 20);
            let shapes = Shapes::observe(&m, &[feeds]).unwrap();
            let mut g = m.graph.unwrap();
            let wrt = vec!["x".to_string()];
            let dep = super::dependents(&g, &shapes, &wrt);
            assert_eq!(super::fuse(&mut g, &shapes, &dep), 1);
            let at = g.node.iter().find(|n| n.op_type == super::OP).unwrap();
            assert_eq!(at.input, ["x", "", "", "fa", "fb", "mask"]);
            let heads = at.attribute.iter().find(|a| a.name == "packed_heads");
            assert_eq!(heads.map(|a| a.i), Some(h as i64));
            let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
            for gone in [
                "Split",
                "SplitToSequence",
                "SequenceAt",
                "Reshape",
                "Transpose",
            ] {
                assert!(!ops.contains(&gone), "{gone} left in {ops:?}");
            }
        }
    }

    /// The rewrite itself: one ScaledDotProductAttention node in the MatMul's place, the
    /// pattern's other nodes gone; and no fusion when the mask depends on a differentiated
    /// value (a learned bias must keep its gradient).
    #[test]
    fn fuses_the_pattern_and_keeps_a_learned_mask() {
        use crate::autodiff::shapes::Shapes;
        use crate::model::graph::value_info;
        use crate::tensor::{DType, HostTensor};
        let (b, h, l, e) = (2usize, 2usize, 3usize, 4usize);
        for (chain, masked, blhe, learned_mask) in [
            (true, true, false, false),
            (false, false, false, false),
            (true, true, true, false),
            (true, false, false, true),
        ] {
            let mut g = sdpa_graph(
                b,
                h,
                l,
                l,
                e,
                Form {
                    chain,
                    masked,
                    blhe,
                },
            );
            let mut names = vec!["q", "k", "v"];
            if learned_mask {
                // scores + bias, bias a graph input that is differentiated.
                let sm = g.node.iter().position(|n| n.op_type == "Softmax").unwrap();
                g.node
                    .insert(sm, node("Add", &["scores", "bias"], "biased"));
                g.node[sm + 1].input[0] = "biased".into();
                names.push("bias");
            }
            let mut feeds = Vec::new();
            for name in &names {
                let shape: Vec<usize> = match *name {
                    "bias" => vec![l, l],
                    _ if blhe => vec![b, l, h, e],
                    _ => vec![b, h, l, e],
                };
                g.input.push(value_info(
                    name,
                    DType::F32,
                    &shape.iter().map(|&d| Some(d as i64)).collect::<Vec<_>>(),
                    "N",
                ));
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
                feeds.push((name.to_string(), HostTensor::f32(shape, v)));
            }
            g.output.push(value_info("o", DType::F32, &[None; 4], "N"));
            let m = crate::ops::testing::model_of(g, 20);
            let shapes = Shapes::observe(&m, &[feeds]).unwrap();
            let mut g = m.graph.unwrap();
            let wrt: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let dep = super::dependents(&g, &shapes, &wrt);
            let n = super::fuse(&mut g, &shapes, &dep);
            let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
            if learned_mask {
                assert_eq!(n, 0, "{ops:?}");
                assert!(ops.contains(&"Softmax"), "{ops:?}");
            } else {
                assert_eq!(n, 1);
                let at = g.node.iter().find(|n| n.op_type == super::OP).unwrap();
                let mut ins = vec!["q", "k", "v", "fa", "fb"];
                if masked {
                    ins.push("mask");
                }
                assert_eq!(at.input, ins);
                assert_eq!(at.output, ["o", "o/lse"]);
                let flag = |a: &str| at.attribute.iter().find(|x| x.name == a).map(|x| x.i);
                assert_eq!(flag("blhe_in"), Some(blhe as i64));
                assert_eq!(flag("blhe_out"), Some(blhe as i64));
                for gone in ["Softmax", "MatMul", "Add", "Mul", "Transpose", "Reshape"] {
                    assert!(!ops.contains(&gone), "{gone} left in {ops:?}");
                }
            }
        }
    }
}
