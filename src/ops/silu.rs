//! `probe.cpu:Silu(X) -> Y = X sigmoid(X)`: SiLU (swish) as one node on `probe grad`'s fast path.
//!
//! PyTorch's exporter writes `nn.SiLU` (EfficientNet, MobileNetV3's relatives, Llama's SwiGLU
//! MLP) as `Mul(X, Sigmoid(X))`. Differentiated op by op that is the Sigmoid's and the Mul's
//! rules: dX = dY s + (dY X) s (1 - s), five passes over the activations (Mul, Mul, Sub, Mul,
//! Sum) besides the forward's two; on torchvision's efficientnet_b0 at 3x224x224 the
//! backward's Mul, Sum and Sub were 25% of a batch. [`fuse`] replaces the pair, before
//! differentiation and only with [`Kernels::ProbeCpu`], by one Silu node, whose rule emits
//! `probe.cpu:SiluGrad(dY, X) = dY s (1 + X (1 - s))`: libtorch's `silu_backward`, PyTorch's
//! own formula (the same function as the chain rule's, rounded once per element instead of
//! five times). Both run libtorch's kernels (`runtime/cpu_ops/silu.rs`).
//!
//! The fusion fires only for f32 X and a Sigmoid whose one reader is that Mul (and no graph
//! output): a sigmoid read elsewhere (a gate) stays as it is.
use super::rule::{Ctx, Kernels, Kind, Rule, Shapes, Stage, PROBE_CPU_DOMAIN};
use crate::model::graph::{remove_nodes, Uses};
use crate::ops::rule::kernels::{SILU, SILU_GRAD};
use crate::tensor::DType;
use anyhow::{bail, Result};
use onnx_protobuf::GraphProto;

pub static RULE: Rule =
    Rule::new(SILU, Kind::Elementwise)
        .vjp(vjp)
        .rewrite(Stage::Forward, |g, s, _| {
            fuse(g, s);
        });

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    if c.kernels != Kernels::ProbeCpu {
        // Only the fast path builds Silu nodes.
        bail!("probe.cpu:Silu outside probe's CPU kernels");
    }
    let x = c.input(0).to_string();
    let gx = c.probe_cpu_op(SILU_GRAD, &[&g, &x], vec![], 1);
    c.set(0, gx[0].clone());
    Ok(())
}

/// Every `Mul(X, Sigmoid(X))` (either operand order) whose Sigmoid has that Mul as its one
/// reader, X f32, as one `probe.cpu:Silu` node in the Mul's place (X is computed before the
/// Sigmoid, so before it). Returns how many were fused.
pub fn fuse(graph: &mut GraphProto, shapes: &Shapes) -> usize {
    let uses = Uses::of(graph);
    let mut sigmoids = std::collections::HashSet::new();
    for j in 0..graph.node.len() {
        let m = &graph.node[j];
        if m.op_type != "Mul" || !m.domain.is_empty() || m.input.len() != 2 {
            continue;
        }
        let found = [(0, 1), (1, 0)].into_iter().find_map(|(a, s)| {
            let i = *uses.producer.get(&m.input[s])?;
            let sig = &graph.node[i];
            (sig.op_type == "Sigmoid"
                && sig.domain.is_empty()
                && sig.input.first() == Some(&m.input[a])
                && uses.sole_reader(&m.input[s], j)
                && shapes.dtype(&m.input[a]) == Some(DType::F32))
            .then_some((i, m.input[a].clone()))
        });
        let Some((i, x)) = found else { continue };
        sigmoids.insert(i);
        let m = &mut graph.node[j];
        m.op_type = SILU.into();
        m.domain = PROBE_CPU_DOMAIN.into();
        m.input = vec![x];
        m.attribute.clear();
    }
    remove_nodes(&mut graph.node, |k| sigmoids.contains(&k));
    sigmoids.len()
}

#[cfg(test)]
mod tests {
    use crate::autodiff::grad::Kernels;
    use crate::model::graph::Builder;
    use crate::ops::testing::check_graph_with;

    /// Y = X sigmoid(X) in both operand orders, and a Sigmoid with a second reader (left alone),
    /// differentiated with probe's kernels: held to the standard-op gradient and to finite
    /// differences; the fused graph must hold Silu nodes (the check requires a probe.cpu op).
    #[test]
    fn fused_silu_gives_the_chain_rules_gradient() {
        let mut b = Builder::new("t");
        let s = b.op("Sigmoid", &["x"], vec![]);
        let y1 = b.op("Mul", &["x", &s], vec![]);
        let s2 = b.op("Sigmoid", &["z"], vec![]);
        let y2 = b.op("Mul", &[&s2, "z"], vec![]);
        let s3 = b.op("Sigmoid", &["w"], vec![]);
        let y3 = b.op("Mul", &["w", &s3], vec![]);
        let mut g = onnx_protobuf::GraphProto::default();
        g.node = b.nodes;
        let (ins, outs) = (
            [("x", &[3usize, 50][..]), ("z", &[2, 7]), ("w", &[4])],
            [y1.as_str(), y2.as_str(), y3.as_str(), s3.as_str()],
        );
        for kernels in [Kernels::Standard, Kernels::ProbeCpu] {
            check_graph_with("silu", g.clone(), &ins, &outs, 7, kernels);
        }
    }

    #[test]
    fn fuses_only_a_sigmoid_read_by_its_mul() {
        let mut b = Builder::new("t");
        let s = b.op("Sigmoid", &["x"], vec![]);
        b.op("Mul", &["x", &s], vec![]);
        let s2 = b.op("Sigmoid", &["z"], vec![]);
        b.op("Mul", &["z", &s2], vec![]);
        b.op("Mul", &["x", &s2], vec![]);
        let mut g = onnx_protobuf::GraphProto::default();
        g.node = b.nodes;
        let mut shapes = crate::autodiff::shapes::Shapes::default();
        for v in ["x", "z"] {
            shapes.map.insert(
                v.into(),
                crate::ops::rule::Info {
                    dtype: crate::tensor::DType::F32,
                    dims: vec![Some(3)],
                },
            );
        }
        assert_eq!(super::fuse(&mut g, &shapes), 1);
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Silu", "Sigmoid", "Mul", "Mul"]);
        assert_eq!(g.node[0].input, ["x"]);
    }
}
