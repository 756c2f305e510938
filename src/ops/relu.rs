//! Relu (opset 14): `Y = max(X, 0)`. https://onnx.ai/onnx/operators/onnx__Relu.html
//!
//! dX = X <= 0 ? 0 : dY, PyTorch's `threshold_backward(dY, Y, 0)`: the subgradient 0 at X = 0
//! (and -0.0), and dY at X = NaN (NaN <= 0 is false; Y = NaN there). With probe's CPU kernels
//! (`probe grad`'s default, f32) one `probe.cpu:ReluGrad` node, which reads Y for the mask
//! (Y <= 0 iff X <= 0, and Y is NaN iff X is).
//!
//! `probe grad`'s fast path also merges a Relu, and its ReluGrad, with the node next to it
//! ([`fuse`], at [`Stage::Fuse`]): the BatchNormalization, Conv or Add computing X, and the
//! Sum or BatchNormalizationGrad around dX.
use super::rule::{Ctx, Kernels, Kind, Rule, Shapes, Stage, PROBE_CPU_DOMAIN};
use super::torch::{input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use crate::ops::rule::kernels::{
    ADD_RELU, BATCH_NORMALIZATION_GRAD, RELU_BATCH_NORMALIZATION_GRAD, RELU_GRAD, SUM_RELU_GRAD,
};
use crate::tensor::DType;
use anyhow::Result;
use onnx_protobuf::{GraphProto, NodeProto};

pub static RULE: Rule = Rule::new("Relu", Kind::Elementwise)
    .vjp(vjp)
    .torch(torch)
    .rewrite(Stage::Fuse, |g, s, _| fuse(g, s));

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_relu()?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    if c.kernels == Kernels::ProbeCpu && c.dtype(&x)? == DType::F32 {
        // One pass instead of four (the `probe.cpu` kernel ReluGrad), masked by the output: Y <= 0
        // exactly where X <= 0, and reading Y leaves X free to be fused away (a BatchNormalization or an
        // Add before the Relu computes Y directly, [`fuse`]).
        let y = c.output(0).to_string();
        let gx = c
            .probe_cpu_op(RELU_GRAD, &[&g, &y], vec![], 1)
            .pop()
            .unwrap();
        c.set(0, gx);
        return Ok(());
    }
    let zero = c.scalar(0.0, &x)?;
    // dY * float(!(X <= 0)): ONNX Runtime's Where with a broadcast scalar ran at half the speed
    // of a compare + Cast + Mul here. Not(LessOrEqual), not Greater: NaN passes dY.
    let stop = c.op("LessOrEqual", &[&x, &zero], vec![]);
    let pos = c.op("Not", &[&stop], vec![]);
    let mask = c.cast_like(&pos, &x);
    let gx = c.op("Mul", &[&g, &mask], vec![]);
    c.set(0, gx);
    Ok(())
}

/// The Relu fusions over a finished `probe.cpu` gradient graph (forward and gradient nodes):
/// a node whose output has exactly one consumer, and is no graph output, merges with that
/// consumer into one `probe.cpu` node. Each fusion saves writing the intermediate tensor and
/// reading it back: on the shipped ResNet one [250, 16, 28, 28] f32 tensor is 12.5 MB each way.
/// - `probe.cpu:BatchNormalization` (relu 0) -> Relu: the BatchNormalization with relu 1;
/// - `probe.cpu:Conv` -> Relu: the Conv with relu 1 (the max taken as libtorch's result is
///   copied into ONNX Runtime's buffer);
/// - Add -> Relu, f32 inputs of one shape (a residual connection): `probe.cpu:AddRelu`;
/// - Sum(dA, dB) -> `probe.cpu:ReluGrad(., X)`: `probe.cpu:SumReluGrad(dA, dB, X)` (a value
///   with two consumers, a residual block's input, sums its gradients before the ReluGrad);
/// - `probe.cpu:ReluGrad` or `SumReluGrad` -> `probe.cpu:BatchNormalizationGrad`:
///   `probe.cpu:ReluBatchNormalizationGrad` (the BatchNormalization before a Relu).
///
/// A forward fusion keeps the first node's name and place (its inputs are computed before it)
/// and takes the second's output; the gradient fusion takes the ReluGrad's place. The
/// intermediate value disappears, which is why the rule masks by the output, not the input.
fn fuse(graph: &mut GraphProto, shapes: &Shapes) {
    let uses = crate::model::graph::Uses::of(graph);
    // The producer of node j's input `slot` when j is its only consumer.
    let sole = |j: usize, slot: usize, nodes: &[NodeProto]| -> Option<usize> {
        uses.sole_producer(nodes[j].input.get(slot)?, j)
    };
    let mut removed = vec![false; graph.node.len()];
    for j in 0..graph.node.len() {
        let n = &graph.node[j];
        let std_relu = n.op_type == "Relu" && n.domain.is_empty();
        let relu_grad =
            n.op_type == RELU_GRAD && n.domain == PROBE_CPU_DOMAIN && n.input.len() == 2;
        let bn_grad = n.op_type == BATCH_NORMALIZATION_GRAD && n.domain == PROBE_CPU_DOMAIN;
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
            p.op_type = ADD_RELU.into();
            p.domain = PROBE_CPU_DOMAIN.into();
            p.output = vec![y];
            removed[j] = true;
        } else if relu_grad && p.op_type == "Sum" && p.domain.is_empty() && p.input.len() == 2 {
            // (dA + dB) [!(X <= 0)], placed where the ReluGrad was (after the Sum's inputs and
            // its own X; the Sum's place need not follow X).
            let (da, db) = (p.input[0].clone(), p.input[1].clone());
            let n = &mut graph.node[j];
            n.op_type = SUM_RELU_GRAD.into();
            n.input = vec![da, db, n.input[1].clone()];
            removed[i] = true;
        } else if bn_grad
            && p.domain == PROBE_CPU_DOMAIN
            && (p.op_type == RELU_GRAD || p.op_type == SUM_RELU_GRAD)
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
            n.op_type = RELU_BATCH_NORMALIZATION_GRAD.into();
            n.input = vec![dy, y, x, k, mean];
            if !dy2.is_empty() {
                n.input.push(dy2);
            }
            removed[i] = true;
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
    n.domain == PROBE_CPU_DOMAIN
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
    a.dtype == DType::F32 && b.dtype == a.dtype && a.dims == b.dims
}

#[cfg(test)]
mod tests {
    use crate::ops::kink_testing::{autograd, check_kinks};
    use crate::ops::testing::{check, Case};
    crate::ops::testing::gradient_and_torch_tests!(relu = [Case::new("Relu").input(&[3, 5])]);
    #[test]
    fn probe_cpu_kernel() {
        check(Case::new("Relu").input(&[3, 5]).f32().probe_cpu());
    }

    /// At 0 (a fresh BatchNormalization's output on an all-zero window), -0.0, the smallest
    /// numbers either side, and NaN, against libtorch's relu backward.
    #[test]
    fn kinks() {
        let x = [
            0.0,
            -0.0,
            f64::NAN,
            1e-300,
            -1e-300,
            1e-40,
            -1e-40,
            0.5,
            -0.5,
            0.0,
        ];
        let case = Case::new("Relu").values(&[2, 5], &x);
        let relu = autograd(|x| x[0].f_relu().unwrap());
        check_kinks(case.clone(), &relu);
        check_kinks(case.f32().probe_cpu(), &relu);
    }
}
