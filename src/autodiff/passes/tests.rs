//! The fast path's pipeline on small graphs: the fusions against the standard-op gradient and
//! finite differences, and which nodes the fused graphs end with.
use super::after_differentiation;
use crate::autodiff::grad::{differentiate_with, Kernels};
use crate::autodiff::shapes::Shapes;
use crate::model::graph::{tensor_f32, value_info};
use crate::ops::testing::check_graph_with;
use crate::tensor::{DType, HostTensor};
use onnx_protobuf::{GraphProto, NodeProto};

const X: &[usize] = &[3, 2, 3, 4];

use crate::ops::testing::node;

/// r = Relu(BN(x)) over 2 channels, the BN's mean and var initializers (var > 0); x,
/// scale and B are inputs.
fn bn_relu(mean: [f32; 2], var: [f32; 2]) -> GraphProto {
    let mut g = GraphProto::new();
    g.initializer.push(tensor_f32("mean", &[2], &mean));
    g.initializer.push(tensor_f32("var", &[2], &var));
    g.node.push(node(
        "BatchNormalization",
        &["x", "scale", "b", "mean", "var"],
        "bn",
    ));
    g.node.push(node("Relu", &["bn"], "r"));
    g
}

/// A residual block in miniature: r = Relu(BN(x)), y = Relu(r * w + r); x, scale, B, w are
/// differentiated.
fn block() -> GraphProto {
    let mut g = bn_relu([0.25, -0.5], [0.5, 2.0]);
    g.node.push(node("Mul", &["r", "w"], "m"));
    g.node.push(node("Add", &["m", "r"], "s"));
    g.node.push(node("Relu", &["s"], "y"));
    g
}

/// The inputs of [`block`].
const BLOCK_INPUTS: [(&str, &[usize]); 4] = [("x", X), ("scale", &[2]), ("b", &[2]), ("w", X)];

/// `g`'s gradient with probe's CPU kernels (its fusions) against the standard-op gradient and
/// finite differences (f32), the loss being sum(`out`).
fn check(label: &str, g: GraphProto, inputs: &[(&str, &[usize])], out: &str, seed: u64) {
    check_graph_with(label, g, inputs, &[out], seed, Kernels::ProbeCpu);
}

/// The three fusions against the standard-op gradient and finite differences.
#[test]
fn residual_block_gradients() {
    check("fused residual block", block(), &BLOCK_INPUTS, "y", 5);
}

/// Just BN -> Relu: the ReluGrad (no Sum) fused into the BatchNormalizationGrad.
#[test]
fn bn_relu_gradients() {
    let g = bn_relu([-0.25, 0.5], [1.5, 0.25]);
    check("fused BN -> Relu", g, &BLOCK_INPUTS[..3], "r", 7);
}

/// The first node of `g` that runs `op`.
fn first<'a>(g: &'a GraphProto, op: &str) -> Option<&'a NodeProto> {
    g.node.iter().find(|n| n.op_type == op)
}

/// `g` (a forward graph over f32 `inputs`, ending in `out`) with the loss sum(out),
/// differentiated with respect to every input, rewritten and fused as `probe grad`'s
/// fast path does; returns the fused graph, the graph before differentiation and the
/// inputs' values (a smooth pattern) as `run_threads` takes them.
fn fused(
    mut g: GraphProto,
    inputs: &[(&str, &[usize])],
    out: &str,
) -> (
    GraphProto,
    GraphProto,
    Vec<(String, DType, Vec<usize>, Vec<f64>)>,
) {
    let (mut feed, mut raw) = (Vec::new(), Vec::new());
    for &(name, dims) in inputs {
        let d: Vec<Option<i64>> = dims.iter().map(|&v| Some(v as i64)).collect();
        g.input.push(value_info(name, DType::F32, &d, "N"));
        let len = dims.iter().product();
        let v: Vec<f32> = (0..len).map(|i| (i as f32 * 0.7).sin()).collect();
        let wide = v.iter().map(|&x| x as f64).collect();
        raw.push((name.to_string(), DType::F32, dims.to_vec(), wide));
        feed.push((name.to_string(), HostTensor::f32(dims.to_vec(), v)));
    }
    let mut loss = node("ReduceSum", &[out], "loss");
    loss.attribute = vec![crate::model::graph::attr_int("keepdims", 0)];
    g.node.push(loss);
    g.output.push(value_info("loss", DType::F32, &[], "N"));
    let m = crate::ops::testing::model_of(g.clone(), 20);
    let mut shapes = Shapes::observe(&m, &[feed]).unwrap();
    let unfused = g.clone();
    let wrt: Vec<String> = inputs.iter().map(|i| i.0.to_string()).collect();
    let diff = differentiate_with(&g, &shapes, "loss", &wrt, Kernels::ProbeCpu).unwrap();
    g.node.extend(diff.nodes);
    after_differentiation(&mut g, &mut shapes, &wrt, Kernels::ProbeCpu);
    (g, unfused, raw)
}

/// Conv -> Relu (libtorch's convolution, 2 input channels, 3x3): the Relu taken in the
/// Conv's copy-out, against the standard-op gradient and finite differences; and the
/// rewrite itself (one probe.cpu:Conv with relu 1 writing r, no Relu left).
#[test]
fn conv_relu_gradients_and_fusion() {
    let mut g = GraphProto::new();
    let mut conv = node("Conv", &["x", "w", "cb"], "z");
    conv.attribute = vec![crate::model::graph::attr_ints("pads", &[1, 1, 1, 1])];
    g.node.push(conv);
    g.node.push(node("Relu", &["z"], "r"));
    let inputs: [(&str, &[usize]); 3] = [("x", X), ("w", &[3, 2, 3, 3]), ("cb", &[3])];
    check("fused Conv -> Relu", g.clone(), &inputs, "r", 3);
    let (g, unfused, raw) = fused(g, &inputs, "r");
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(!ops.contains(&"Relu"), "{ops:?}");
    // The fused forward value: max(Conv, 0), as the unfused graph computes it (the
    // gradients alone cannot tell: ReluGrad masks by r > 0 either way).
    let run = |mut g: GraphProto| {
        g.output.push(value_info("r", DType::F32, &[None; 4], "N"));
        let m = crate::ops::testing::model_of(g, 20);
        crate::ops::testing::run_threads(&m, &raw, &["r".to_string()], 2).remove(0)
    };
    let (fused, plain) = (run(g.clone()), run(unfused));
    assert!(plain.iter().any(|&v| v == 0.0) && plain.iter().any(|&v| v > 0.0));
    for (a, b) in fused.iter().zip(&plain) {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "fused r {a} vs {b}"
        );
    }
    let conv = first(&g, "Conv").unwrap();
    assert_eq!(conv.domain, crate::runtime::cpu_ops::DOMAIN);
    assert_eq!(conv.output, vec!["r".to_string()]);
    assert!(conv.attribute.iter().any(|a| a.name == "relu" && a.i == 1));
}

/// A pre-norm residual step, y = x + LayerNorm(x) * w: x's two gradient contributions,
/// dy itself and the LayerNormalizationGrad's dX, summed inside the LayerNormalizationGrad
/// (no Sum left); against the standard-op gradient and finite differences.
#[test]
fn residual_sum_into_layer_norm_grad() {
    let mut g = GraphProto::new();
    let mut ln = node("LayerNormalization", &["x", "scale", "b"], "ln");
    ln.attribute = vec![crate::model::graph::attr_int("axis", -1)];
    g.node.push(ln);
    g.node.push(node("Mul", &["ln", "w"], "m"));
    g.node.push(node("Add", &["x", "m"], "y"));
    let xd: &[usize] = &[3, 4, 5];
    let inputs: [(&str, &[usize]); 4] = [("x", xd), ("scale", &[5]), ("b", &[5]), ("w", xd)];
    check("x + LN(x) w", g.clone(), &inputs, "y", 9);
    let (g, _, _) = fused(g, &inputs, "y");
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(!ops.contains(&"Sum"), "{ops:?}");
    let lng = first(&g, "LayerNormalizationGrad");
    assert_eq!(lng.map(|n| n.input.len()), Some(4), "{ops:?}");
}

/// Which nodes the block's probe.cpu gradient graph ends with: BN and Relu as one node,
/// Add and Relu as one, and r's two gradient contributions summed and masked inside its
/// BatchNormalizationGrad.
#[test]
fn residual_block_fuses() {
    let (g, _, _) = fused(block(), &BLOCK_INPUTS, "y");
    let ops: Vec<String> = g.node.iter().map(|n| n.op_type.clone()).collect();
    let count = |op: &str| ops.iter().filter(|o| *o == op).count();
    assert_eq!(count("Relu"), 0, "{ops:?}");
    assert_eq!(count("AddRelu"), 1, "{ops:?}");
    assert_eq!(count("SumReluGrad"), 0, "{ops:?}");
    // y's ReluGrad feeds both of the Add's inputs: it stays.
    assert_eq!(count("ReluGrad"), 1, "{ops:?}");
    assert_eq!(count("BatchNormalizationGrad"), 0, "{ops:?}");
    let rbg = first(&g, "ReluBatchNormalizationGrad").unwrap();
    assert_eq!(rbg.input.len(), 6, "r's two contributions: {:?}", rbg.input);
    assert_eq!(count("Sum"), 0, "{ops:?}");
    let bn = first(&g, "BatchNormalization").unwrap();
    assert_eq!(bn.output, vec!["r".to_string()]);
    assert!(bn.attribute.iter().any(|a| a.name == "relu" && a.i == 1));
}

/// The loss head's cross-entropy pick, y = GatherElements(LogSoftmax(x), targets) along the
/// last axis (one target a row, one repeated in a row of two picks): its LogSoftmaxGrad and
/// GatherElementsGrad become one LogSoftmaxPickGrad (no dense one-hot tensor, no Shape of
/// the log-probabilities left), against the standard-op gradient and finite differences.
#[test]
fn log_softmax_pick_fuses() {
    for (k, targets) in [
        (1, vec![4i64, 0, 2, -1, 3, 1]),
        (2, vec![1, 1, 0, 4, 2, 3, 4, 4, 0, 1, 2, 2]),
    ] {
        let mut g = GraphProto::new();
        let idx = crate::model::graph::tensor_i64("t", &[3, 2, k], &targets);
        g.initializer.push(idx);
        let mut ls = node("LogSoftmax", &["x"], "logp");
        ls.attribute = vec![crate::model::graph::attr_int("axis", -1)];
        g.node.push(ls);
        let mut pick = node("GatherElements", &["logp", "t"], "y");
        pick.attribute = vec![crate::model::graph::attr_int("axis", 2)];
        g.node.push(pick);
        let inputs: [(&str, &[usize]); 1] = [("x", &[3, 2, 5])];
        check("LogSoftmax -> GatherElements", g.clone(), &inputs, "y", 11);
        let (g, _, _) = fused(g, &inputs, "y");
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        let count = |op: &str| ops.iter().filter(|o| **o == op).count();
        assert_eq!(count("LogSoftmaxPickGrad"), 1, "{ops:?}");
        for gone in ["LogSoftmaxGrad", "GatherElementsGrad", "Shape"] {
            assert_eq!(count(gone), 0, "{gone}: {ops:?}");
        }
    }
}
