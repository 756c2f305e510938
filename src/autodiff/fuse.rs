//! Fusions over a finished `probe.cpu` gradient graph (after
//! [`super::grad::probe_cpu_rewrite`], forward and gradient nodes): a node whose output has exactly
//! one consumer, and is no graph output, merges with that consumer into one `probe.cpu` node
//! (`runtime/cpu_ops.rs`). Each fusion saves writing the intermediate tensor and reading it
//! back: on the shipped ResNet one [250, 16, 28, 28] f32 tensor is 12.5 MB each way.
//! - `probe.cpu:BatchNormalization` (relu 0) -> Relu: the BatchNormalization with relu 1;
//! - Sum(dA, `probe.cpu:LayerNormalizationGrad` dX): dA as the LayerNormalizationGrad's
//!   fourth input, added as dX is written;
//! - `probe.cpu:Conv` -> Relu: the Conv with relu 1 (the max taken as libtorch's result is
//!   copied into ONNX Runtime's buffer);
//! - Add -> Relu, f32 inputs of one shape (a residual connection): `probe.cpu:AddRelu`;
//! - Sum(dA, dB) -> `probe.cpu:ReluGrad(., X)`: `probe.cpu:SumReluGrad(dA, dB, X)` (a value
//!   with two consumers, a residual block's input, sums its gradients before the ReluGrad);
//! - `probe.cpu:ReluGrad` or `SumReluGrad` -> `probe.cpu:BatchNormalizationGrad`:
//!   `probe.cpu:ReluBatchNormalizationGrad` (the BatchNormalization before a Relu).
//!
//! A forward fusion keeps the first node's name and place (its inputs are computed before it)
//! and takes the second's output; the gradient fusion takes the ReluGrad's place. The
//! intermediate value disappears, which is why the Relu
//! rule masks by its output, not its input (`ops/relu.rs`). Graphs with subgraphs (If, Loop)
//! are left as they are: their consumers are not counted here.
use super::grad::Kernels;
use super::shapes::Shapes;
use crate::model::graph::attr_int;
use crate::runtime::cpu_ops::DOMAIN;
use onnx_protobuf::{GraphProto, NodeProto};

/// The `probe.cpu` rewrites of the forward graph, which must come before differentiation
/// (the rest run on the finished gradient graph: `probe_cpu_rewrite`, [`probe_cpu_fuse`]), for
/// [`Kernels::ProbeCpu`] only; `shapes` gains the values they add.
/// - an inference-mode BatchNormalization after a Conv folds into the Conv's weight and bias
///   (`ops::batch_normalization::fold_into_conv`);
/// - the exporter's decomposed attention becomes one fused attention node
///   (`ops::scaled_dot_product_attention::fuse`).
pub fn before_differentiation(
    graph: &mut GraphProto,
    shapes: &mut Shapes,
    wrt: &[String],
    kernels: Kernels,
) {
    if kernels != Kernels::ProbeCpu {
        return;
    }
    crate::ops::batch_normalization::fold_into_conv(graph, shapes);
    use crate::ops::scaled_dot_product_attention as sdpa;
    let dep = sdpa::dependents(graph, shapes, wrt);
    sdpa::fuse(graph, shapes, &dep);
}

pub fn probe_cpu_fuse(graph: &mut GraphProto, shapes: &Shapes) {
    if graph.node.iter().any(|n| {
        n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    }) {
        return;
    }
    let uses = crate::model::graph::Uses::of(graph);
    // The producer of node j's input `slot` when j is its only consumer.
    let sole = |j: usize, slot: usize, nodes: &[NodeProto]| -> Option<usize> {
        let v = nodes[j].input.get(slot)?;
        if !uses.sole_reader(v, j) {
            return None;
        }
        uses.producer.get(v).copied()
    };
    let mut removed = vec![false; graph.node.len()];
    for j in 0..graph.node.len() {
        let n = &graph.node[j];
        let std_relu = n.op_type == "Relu" && n.domain.is_empty();
        let relu_grad = n.op_type == "ReluGrad" && n.domain == DOMAIN && n.input.len() == 2;
        let bn_grad = n.op_type == "BatchNormalizationGrad" && n.domain == DOMAIN;
        if !std_relu && !relu_grad && !bn_grad {
            continue;
        }
        let Some(i) = sole(j, 0, &graph.node) else {
            continue;
        };
        if removed[i] {
            continue;
        }
        let p = &graph.node[i];
        if std_relu && takes_relu(p) {
            // max(Y, 0) in the BatchNormalization's one pass, or as the Conv's result is
            // copied out.
            let y = graph.node[j].output[0].clone();
            let p = &mut graph.node[i];
            p.output = vec![y];
            p.attribute.retain(|a| a.name != "relu");
            p.attribute.push(attr_int("relu", 1));
            removed[j] = true;
        } else if std_relu && p.op_type == "Add" && p.domain.is_empty() && same_f32(p, shapes) {
            let y = graph.node[j].output[0].clone();
            let p = &mut graph.node[i];
            p.op_type = "AddRelu".into();
            p.domain = DOMAIN.into();
            p.output = vec![y];
            removed[j] = true;
        } else if relu_grad && p.op_type == "Sum" && p.domain.is_empty() && p.input.len() == 2 {
            // (dA + dB) [X > 0], placed where the ReluGrad was (after the Sum's inputs and
            // its own X; the Sum's place need not follow X).
            let (da, db) = (p.input[0].clone(), p.input[1].clone());
            let n = &mut graph.node[j];
            n.op_type = "SumReluGrad".into();
            n.input = vec![da, db, n.input[1].clone()];
            removed[i] = true;
        } else if bn_grad
            && p.domain == DOMAIN
            && matches!(p.op_type.as_str(), "ReluGrad" | "SumReluGrad")
        {
            // BatchNormalizationGrad of (dY [+ dY2]) [Y > 0], the masked gradient formed per
            // plane inside it. ReluGrad(dY, Y), SumReluGrad(dY, dY2, Y).
            let (dy, y, dy2) = match p.input.as_slice() {
                [dy, y] => (dy.clone(), y.clone(), String::new()),
                [dy, dy2, y] => (dy.clone(), y.clone(), dy2.clone()),
                _ => continue,
            };
            let n = &mut graph.node[j];
            let (x, k, mean) = (n.input[1].clone(), n.input[2].clone(), n.input[3].clone());
            n.op_type = "ReluBatchNormalizationGrad".into();
            n.input = vec![dy, y, x, k, mean];
            if !dy2.is_empty() {
                n.input.push(dy2);
            }
            removed[i] = true;
        }
    }
    crate::model::graph::remove_nodes(&mut graph.node, |k| removed[k]);
    sum_into_layer_norm_grad(graph, shapes);
}

/// `Sum(dA, LayerNormalizationGrad(...)[0])`, the two gradients of a residual stream at a
/// pre-norm block's input, as the LayerNormalizationGrad with dA as its fourth input (added
/// as each row of dX is written: one pass over dX where the Sum took another). The node stays
/// in its place when dA is computed before it, else takes the Sum's place if nothing reads
/// its other outputs in between.
fn sum_into_layer_norm_grad(graph: &mut GraphProto, shapes: &Shapes) {
    let uses = crate::model::graph::Uses::of(graph);
    let mut removed = vec![false; graph.node.len()];
    for j in 0..graph.node.len() {
        let n = &graph.node[j];
        if n.op_type != "Sum" || !n.domain.is_empty() || n.input.len() != 2 {
            continue;
        }
        for k in 0..2 {
            let (g, other) = (&graph.node[j].input[k], &graph.node[j].input[1 - k]);
            let Some(&i) = uses.producer.get(g) else {
                continue;
            };
            let p = &graph.node[i];
            if p.op_type != "LayerNormalizationGrad" || p.domain != DOMAIN || p.input.len() != 3 {
                continue;
            }
            // dX has X's shape; so has dA where it is known (a forward value's). A gradient
            // value's is not recorded, but the sweep sums only contributions to one value's
            // gradient, each of that value's shape (and the kernel checks).
            let x_dims = shapes.get(&p.input[1]).map(|i| (i.dtype, i.dims.clone()));
            let other_fits = shapes
                .get(other)
                .is_none_or(|o| Some((o.dtype, o.dims.clone())) == x_dims);
            let fits =
                p.output.first() == Some(g) && uses.sole_reader(g, j) && other_fits && !removed[i];
            if !fits {
                continue;
            }
            let in_place = uses.producer.get(other).is_none_or(|&q| q < i);
            let later = |o: &String| uses.readers(o).iter().all(|&r| r > j);
            let movable = p.output[1..].iter().all(|o| o.is_empty() || later(o));
            if !in_place && !movable {
                continue;
            }
            let mut f = p.clone();
            f.input.push(other.clone());
            f.output[0] = graph.node[j].output[0].clone();
            if in_place {
                graph.node[i] = f;
                removed[j] = true;
            } else {
                graph.node[j] = f;
                removed[i] = true;
            }
            break;
        }
    }
    crate::model::graph::remove_nodes(&mut graph.node, |k| removed[k]);
}

/// A `probe.cpu` BatchNormalization (relu 0) or Conv (one output, no relu yet), whose kernel
/// can apply a Relu after it in its own pass.
fn takes_relu(n: &NodeProto) -> bool {
    let relu = |on: bool| {
        n.attribute
            .iter()
            .any(|a| a.name == "relu" && (a.i != 0) == on)
    };
    n.domain == DOMAIN
        && match n.op_type.as_str() {
            "BatchNormalization" => relu(false),
            "Conv" => n.output.len() == 1 && !relu(true),
            _ => false,
        }
}

/// Whether an Add's two inputs are f32 of one shape (no broadcasting), as far as the observed
/// shapes tell (a dim that follows the batch on both counts as equal; the kernel checks the
/// actual shapes).
fn same_f32(n: &NodeProto, shapes: &Shapes) -> bool {
    let (Some(a), Some(b)) = (
        n.input.first().and_then(|v| shapes.get(v)),
        n.input.get(1).and_then(|v| shapes.get(v)),
    ) else {
        return false;
    };
    a.dtype == crate::tensor::DType::F32 && b.dtype == a.dtype && a.dims == b.dims
}

#[cfg(test)]
mod tests {
    use super::probe_cpu_fuse;
    use crate::autodiff::grad::Kernels;
    use crate::autodiff::grad::{differentiate_with, probe_cpu_rewrite};
    use crate::autodiff::shapes::Shapes;
    use crate::model::graph::{tensor_f32, value_info};
    use crate::ops::testing::check_graph_with;
    use crate::tensor::{DType, HostTensor};
    use onnx_protobuf::GraphProto;

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

    /// The three fusions against the standard-op gradient and finite differences (f32).
    #[test]
    fn residual_block_gradients() {
        check_graph_with(
            "fused residual block",
            block(),
            &[("x", X), ("scale", &[2]), ("b", &[2]), ("w", X)],
            &["y"],
            5,
            Kernels::ProbeCpu,
        );
    }

    /// Just BN -> Relu: the ReluGrad (no Sum) fused into the BatchNormalizationGrad.
    #[test]
    fn bn_relu_gradients() {
        check_graph_with(
            "fused BN -> Relu",
            bn_relu([-0.25, 0.5], [1.5, 0.25]),
            &[("x", X), ("scale", &[2]), ("b", &[2])],
            &["r"],
            7,
            Kernels::ProbeCpu,
        );
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
        let shapes = Shapes::observe(&m, &[feed]).unwrap();
        let unfused = g.clone();
        let wrt: Vec<String> = inputs.iter().map(|i| i.0.to_string()).collect();
        let diff = differentiate_with(&g, &shapes, "loss", &wrt, Kernels::ProbeCpu).unwrap();
        g.node.extend(diff.nodes);
        probe_cpu_rewrite(&mut g, &shapes);
        probe_cpu_fuse(&mut g, &shapes);
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
        check_graph_with(
            "fused Conv -> Relu",
            g.clone(),
            &inputs,
            &["r"],
            3,
            Kernels::ProbeCpu,
        );
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
        let conv = g.node.iter().find(|n| n.op_type == "Conv").unwrap();
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
        check_graph_with(
            "x + LN(x) w",
            g.clone(),
            &inputs,
            &["y"],
            9,
            Kernels::ProbeCpu,
        );
        let (g, _, _) = fused(g, &inputs, "y");
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(!ops.contains(&"Sum"), "{ops:?}");
        let lng = g
            .node
            .iter()
            .find(|n| n.op_type == "LayerNormalizationGrad");
        assert_eq!(lng.map(|n| n.input.len()), Some(4), "{ops:?}");
    }

    /// Which nodes the block's probe.cpu gradient graph ends with: BN and Relu as one node,
    /// Add and Relu as one, and r's two gradient contributions summed and masked inside its
    /// BatchNormalizationGrad.
    #[test]
    fn residual_block_fuses() {
        let mut g = block();
        for (name, dims) in [("x", X), ("scale", &[2][..]), ("b", &[2]), ("w", X)] {
            let d: Vec<Option<i64>> = dims.iter().map(|&v| Some(v as i64)).collect();
            g.input.push(value_info(name, DType::F32, &d, "N"));
        }
        let mut loss = node("ReduceSum", &["y"], "loss");
        loss.attribute = vec![crate::model::graph::attr_int("keepdims", 0)];
        g.node.push(loss);
        g.output.push(value_info("loss", DType::F32, &[], "N"));
        let m = crate::ops::testing::model_of(g.clone(), 20);
        let feed = ["x", "scale", "b", "w"]
            .iter()
            .map(|&n| {
                let dims = if n == "x" || n == "w" {
                    X.to_vec()
                } else {
                    vec![2]
                };
                let len = dims.iter().product();
                (n.to_string(), HostTensor::f32(dims, vec![0.5; len]))
            })
            .collect();
        let shapes = Shapes::observe(&m, &[feed]).unwrap();
        let wrt: Vec<String> = ["x", "scale", "b", "w"].map(String::from).to_vec();
        let diff = differentiate_with(&g, &shapes, "loss", &wrt, Kernels::ProbeCpu).unwrap();
        g.node.extend(diff.nodes);
        probe_cpu_rewrite(&mut g, &shapes);
        probe_cpu_fuse(&mut g, &shapes);
        let ops: Vec<String> = g.node.iter().map(|n| n.op_type.clone()).collect();
        let count = |op: &str| ops.iter().filter(|o| *o == op).count();
        assert_eq!(count("Relu"), 0, "{ops:?}");
        assert_eq!(count("AddRelu"), 1, "{ops:?}");
        assert_eq!(count("SumReluGrad"), 0, "{ops:?}");
        // y's ReluGrad feeds both of the Add's inputs: it stays.
        assert_eq!(count("ReluGrad"), 1, "{ops:?}");
        assert_eq!(count("BatchNormalizationGrad"), 0, "{ops:?}");
        let rbg = g
            .node
            .iter()
            .find(|n| n.op_type == "ReluBatchNormalizationGrad")
            .unwrap();
        assert_eq!(rbg.input.len(), 6, "r's two contributions: {:?}", rbg.input);
        assert_eq!(count("Sum"), 0, "{ops:?}");
        let bn = g
            .node
            .iter()
            .find(|n| n.op_type == "BatchNormalization")
            .unwrap();
        assert_eq!(bn.output, vec!["r".to_string()]);
        assert!(bn.attribute.iter().any(|a| a.name == "relu" && a.i == 1));
    }
}
