//! `probe.cpu:ScaledDotProductAttention`: attention as one node on probe's CPU fast path.
//!
//! PyTorch's exporter writes `F.scaled_dot_product_attention(q, k, v, ...)` as standard ops:
//!
//! ```text
//! KT = Transpose(K) (or Reshape(Transpose(Reshape(K, [-1, S, E]), [0, 2, 1]), [B, H, E, S]))
//! A  = MatMul(Mul(Q, sqrt(s)), Mul(KT, sqrt(s)))        (each scale factor optional)
//! P  = Softmax(Add(A, mask), axis = -1)                  (the Add only with a mask)
//!      (or Where(IsNaN(P), 0, P): the guard written for a boolean mask, see fusion.rs)
//! O  = MatMul(P, V)
//! ```
//!
//! Differentiated op by op that is ~10 nodes forward and ~20 backward per attention, each a
//! pass over [B, H, L, S] or [B, H, L, E] (transposes, two scalings, mask add, softmax, four
//! products, their gradients): ~11 ms per layer for a batch of 250 of the shipped GPT, where
//! PyTorch's own CPU path (flash attention, one fused kernel each way) takes ~3.5 ms.
//! [`fusion::fuse`] replaces the pattern, before differentiation and only with [`Kernels::ProbeCpu`],
//! by
//!
//! `ScaledDotProductAttention(Q, K, V, a?, b?, mask?) -> (O, LSE)`,
//! `O = softmax(a b Q K^T + mask) V`, `LSE = log sum_j exp(a b Q K^T + mask)` per row,
//!
//! whose rule emits `ScaledDotProductAttentionGrad(dO, Q, K, V, O, LSE, a?, b?, mask?) ->
//! (dQ, dK, dV)`. With `P = exp(a b Q K^T + mask - LSE)` (recomputed, never stored):
//! `dV = P^T dO`, `dP = dO V^T`, `dS = P o (dP - rowsum(dO o O))`, `dQ = a b dS K`,
//! `dK = a b dS^T Q`. Both run libtorch's flash attention for CPU (probe's `probe.cpu` kernels).
//!
//! The fusion only fires when the result is the same function of Q, K, V: 4-D f32 Q
//! [B, H, L, E], K and V [B, H, S, E], scalar scale factors and a mask broadcasting to
//! [B, H, L, S], none of which (factors, mask) depends on a differentiated value (a learned
//! bias keeps the op-by-op form). Values the pattern computes on the way (P, the scores) stay
//! computed if anything else reads them; what nothing reads any more is removed.
use super::rule::{Ctx, Kind, Rule, Stage};
use crate::ops::rule::kernels::SCALED_DOT_PRODUCT_ATTENTION_GRAD;
use anyhow::{anyhow, Result};

pub mod fusion;

pub use super::rule::kernels::SCALED_DOT_PRODUCT_ATTENTION as OP;

pub static RULE: Rule =
    Rule::new(OP, Kind::Structured)
        .vjp(vjp)
        .rewrite(Stage::Forward, |g, s, wrt| {
            let dep = fusion::dependents(g, s, wrt);
            fusion::fuse(g, s, &dep);
        });

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
    let outs = c.probe_cpu_outputs(SCALED_DOT_PRODUCT_ATTENTION_GRAD, &refs, attrs, &needs);
    for (i, o) in outs.into_iter().enumerate() {
        if let Some(o) = o {
            c.set(i, o);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_int, attr_ints, attr_tensor, tensor_f32, tensor_i64};
    use crate::ops::rule::Kernels;
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
        /// The softmax behind the exporter's guard for rows masked entirely,
        /// `Where(IsNaN(P), 0, P)` (what it writes for a boolean mask).
        guard: bool,
    }

    /// The exporter's form of scaled_dot_product_attention for Q [b, h, l, e], K and V
    /// [b, h, s, e] (see [`Form`]); the output is "o".
    fn sdpa_graph(b: usize, h: usize, l: usize, s: usize, e: usize, form: Form) -> GraphProto {
        let Form {
            chain,
            masked,
            blhe,
            guard,
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
        let mut sm = node("Softmax", &[logits], if guard { "p0" } else { "p" });
        sm.attribute = vec![attr_int("axis", -1)];
        g.node.push(sm);
        if guard {
            g.node.push(node("IsNaN", &["p0"], "nan"));
            g.node.push(constant("zero_p", tensor_f32("", &[], &[0.0])));
            g.node.push(node("Where", &["nan", "zero_p", "p0"], "p"));
        }
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
            guard: false,
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
        let form = |chain, masked, blhe, guard| Form {
            chain,
            masked,
            blhe,
            guard,
        };
        for (b, h, l, s, e, form) in [
            (3, 2, 5, 5, 4, form(true, true, false, false)),
            (2, 1, 4, 6, 3, form(false, false, false, false)),
            (1, 2, 3, 3, 2, form(false, true, false, false)),
            (3, 2, 5, 5, 4, form(true, true, true, false)),
            (3, 2, 5, 5, 4, form(true, true, true, true)),
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
        use crate::model::graph::value_info;
        use crate::ops::rule::Shapes;
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
            let dep = super::fusion::dependents(&g, &shapes, &wrt);
            assert_eq!(super::fusion::fuse(&mut g, &shapes, &dep), 1);
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
        use crate::model::graph::value_info;
        use crate::ops::rule::Shapes;
        use crate::tensor::{DType, HostTensor};
        let (b, h, l, e) = (2usize, 2usize, 3usize, 4usize);
        for (chain, masked, blhe, learned_mask, guard) in [
            (true, true, false, false, false),
            (false, false, false, false, false),
            (true, true, true, false, false),
            (true, false, false, true, false),
            (true, true, true, false, true),
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
                    guard,
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
            let dep = super::fusion::dependents(&g, &shapes, &wrt);
            let n = super::fusion::fuse(&mut g, &shapes, &dep);
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
                let pattern = ["Softmax", "MatMul", "Add", "Mul", "Transpose", "Reshape"];
                for gone in pattern.into_iter().chain(["IsNaN", "Where"]) {
                    assert!(!ops.contains(&gone), "{gone} left in {ops:?}");
                }
            }
        }
    }
}
