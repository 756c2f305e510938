//! BatchNormalization (opset 15; also 14, 9 in inference mode): per channel (axis 1),
//! `Y = (X - mean) * invstd * scale + B` with `invstd = 1/sqrt(var + epsilon)`.
//! https://onnx.ai/onnx/operators/onnx__BatchNormalization.html
//!
//! - `training_mode = 0`: mean, var are the inputs input_mean, input_var. With k = scale*invstd
//!   and sums over every axis but 1:
//!   dX = dY * k, dscale = sum(dY * xhat), dB = sum(dY), dmean = -k * sum(dY),
//!   dvar = -k * invstd / 2 * sum(dY * xhat). With probe's CPU kernels (`probe grad`'s
//!   default, f32) dX and the two sums are one `probe.cpu:BatchNormalizationGrad` pass.
//! - `training_mode = 1`: mean, var are the batch statistics over every axis but 1 (biased
//!   variance), recomputed here; with M elements per channel,
//!   dX = scale * invstd / M * (M dY - sum(dY) - xhat * sum(dY * xhat)),
//!   dscale = sum(dY * xhat), dB = sum(dY); input_mean and input_var reach Y not at all (zero).
//!   The running statistics outputs (1, 2) are buffers: a loss that depends on them is refused.
//!
//! With probe's CPU kernels an inference-mode BatchNormalization right after a Conv is first
//! folded into the Conv's weight and bias ([`fold_into_conv`], before differentiation), so it
//! costs no pass over the activations at all; one that is not so placed becomes
//! `probe.cpu:BatchNormalization` ([`probe_cpu_forward`]): ONNX Runtime's ran ~3x slower than
//! PyTorch's on the shipped ResNet (17 vs 6 ms a batch), and a Relu after it fuses in.
use super::attrs::Attrs;
use super::rule::{Ctx, Kernels, Kind, Rule, Shapes, Stage};
use super::torch::{f32_as_written, input, one, TorchCtx, Value};
use crate::model::graph::{attr_float, attr_int};
use crate::ops::rule::kernels::{BATCH_NORMALIZATION_GRAD, FOLD_SCALE};
use crate::ops::rule::PROBE_CPU_DOMAIN;
use crate::tensor::DType;
use anyhow::{bail, Result};
use onnx_protobuf::NodeProto;

pub static RULE: Rule = Rule::new("BatchNormalization", Kind::Structured)
    .vjp(vjp)
    .torch(torch)
    .probe_cpu_forward(probe_cpu_forward)
    .rewrite(Stage::Forward, |g, s, _| {
        fold_into_conv(g, s);
    });

/// libtorch's `batch_norm`, what PyTorch's BatchNorm runs. With batch statistics (training),
/// libtorch updates copies of the running statistics exactly as PyTorch does (biased variance
/// to normalize, unbiased variance in the running update, `running = m running + (1 - m) batch`
/// for ONNX momentum m, PyTorch momentum 1 - m); they are outputs 1 and 2, and written back into
/// inputs 3 and 4 when the caller applies write-backs.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let (scale, b) = (input(&v, 1)?, input(&v, 2)?);
    let (mean, var) = (input(&v, 3)?, input(&v, 4)?);
    let eps = f32_as_written(c.attr_f("epsilon", 1e-5));
    let m = f32_as_written(c.attr_f("momentum", 0.9));
    let training = c.training.unwrap_or(c.attr_i("training_mode", 0) != 0);
    if !training {
        let y = x.f_batch_norm(
            Some(scale),
            Some(b),
            Some(mean),
            Some(var),
            false,
            1.0 - m,
            eps,
            true,
        )?;
        return one(y);
    }
    let rm = mean.f_detach()?.copy();
    let rv = var.f_detach()?.copy();
    let y = x.f_batch_norm(
        Some(scale),
        Some(b),
        Some(&rm),
        Some(&rv),
        true,
        1.0 - m,
        eps,
        true,
    )?;
    c.write_back(3, rm.shallow_clone());
    c.write_back(4, rv.shallow_clone());
    Ok(vec![Value::Tensor(y), Value::Tensor(rm), Value::Tensor(rv)])
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let training = c.attr_i("training_mode", 0) != 0;
    if training && (c.go(1).is_some() || c.go(2).is_some()) {
        bail!("the running mean/var outputs of a training-mode BatchNormalization are buffers, not differentiated");
    }
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let rank = c.rank(&x)? as i64;
    let eps = c.attr_f("epsilon", 1e-5) as f64;
    // Every axis but the channel axis.
    let axes: Vec<i64> = std::iter::once(0).chain(2..rank).collect();
    // Per-channel [C] -> [C, 1, ..., 1], to broadcast against X.
    let chan = |c: &mut Ctx, v: &str| -> String {
        if rank <= 2 {
            return v.to_string();
        }
        let ax = c.ints(&(1..rank - 1).collect::<Vec<_>>());
        c.op("Unsqueeze", &[v, &ax], vec![])
    };
    let scale = c.input(1).to_string();
    let e = c.scalar(eps, &x)?;
    if training {
        let ax = c.ints(&axes);
        let keep = || vec![attr_int("keepdims", 1)];
        let mu = c.op("ReduceMean", &[&x, &ax], keep());
        let d = c.op("Sub", &[&x, &mu], vec![]);
        let d2 = c.op("Mul", &[&d, &d], vec![]);
        let var = c.op("ReduceMean", &[&d2, &ax], keep());
        let ve = c.op("Add", &[&var, &e], vec![]);
        let sd = c.op("Sqrt", &[&ve], vec![]);
        let inv = c.op("Reciprocal", &[&sd], vec![]);
        let xhat = c.op("Mul", &[&d, &inv], vec![]);
        let gxh = c.op("Mul", &[&g, &xhat], vec![]);
        if c.needs(0) {
            // scale*invstd * (dY - mean(dY) - xhat*mean(dY*xhat)); means, so M may follow the batch.
            let mg = c.op("ReduceMean", &[&g, &ax], keep());
            let mgx = c.op("ReduceMean", &[&gxh, &ax], keep());
            let t = c.op("Mul", &[&xhat, &mgx], vec![]);
            let u = c.op("Sub", &[&g, &mg], vec![]);
            let u = c.op("Sub", &[&u, &t], vec![]);
            let sc = chan(c, &scale);
            let k = c.op("Mul", &[&sc, &inv], vec![]);
            let gx = c.op("Mul", &[&u, &k], vec![]);
            c.set(0, gx);
        }
        if c.needs(1) {
            let gs = c.reduce_sum(&gxh, &axes, false);
            c.set(1, gs);
        }
        if c.needs(2) {
            let gb = c.reduce_sum(&g, &axes, false);
            c.set(2, gb);
        }
        return Ok(());
    }
    let (mean, var) = (c.input(3).to_string(), c.input(4).to_string());
    let ve = c.op("Add", &[&var, &e], vec![]);
    let sd = c.op("Sqrt", &[&ve], vec![]);
    let inv = c.op("Reciprocal", &[&sd], vec![]);
    let k = c.op("Mul", &[&scale, &inv], vec![]);
    let (need_g, need_gxh) = (c.needs(2) || c.needs(3), c.needs(1) || c.needs(4));
    let (sum_g, sum_gxh) = if c.kernels == Kernels::ProbeCpu && c.dtype(&x)? == DType::F32 {
        // One pass over dY and X for dX and both sums (runtime/cpu_ops); it gives
        // sum dY (X - mean), times invstd that is sum dY xhat.
        let needs = [c.needs(0), need_g, need_gxh];
        let [gx, sum_g, sum_dy_xc] = <[Option<String>; 3]>::try_from(c.probe_cpu_outputs(
            BATCH_NORMALIZATION_GRAD,
            &[&g, &x, &k, &mean],
            vec![],
            &needs,
        ))
        .unwrap();
        if let Some(gx) = gx {
            c.set(0, gx);
        }
        let sum_gxh = sum_dy_xc.map(|s| c.op("Mul", &[&s, &inv], vec![]));
        (sum_g, sum_gxh)
    } else {
        if c.needs(0) {
            let kb = chan(c, &k);
            let gx = c.op("Mul", &[&g, &kb], vec![]);
            c.set(0, gx);
        }
        let sum_g = need_g.then(|| c.reduce_sum(&g, &axes, false));
        let sum_gxh = if need_gxh {
            let mb = chan(c, &mean);
            let ib = chan(c, &inv);
            let d = c.op("Sub", &[&x, &mb], vec![]);
            let xhat = c.op("Mul", &[&d, &ib], vec![]);
            let gxh = c.op("Mul", &[&g, &xhat], vec![]);
            Some(c.reduce_sum(&gxh, &axes, false))
        } else {
            None
        };
        (sum_g, sum_gxh)
    };
    if let Some(s) = &sum_gxh {
        c.set(1, s.clone());
        if c.needs(4) {
            let h = c.scalar(-0.5, &x)?;
            let t = c.op("Mul", &[&k, &inv], vec![]);
            let t = c.op("Mul", &[&t, &h], vec![]);
            let gv = c.op("Mul", &[&t, s], vec![]);
            c.set(4, gv);
        }
    }
    if let Some(s) = &sum_g {
        c.set(2, s.clone());
        if c.needs(3) {
            let t = c.op("Mul", &[&k, s], vec![]);
            let gm = c.op("Neg", &[&t], vec![]);
            c.set(3, gm);
        }
    }
    Ok(())
}

/// The forward node as `probe.cpu:BatchNormalization` (`relu` 0; `ops/relu.rs` may fuse
/// a following Relu in): inference mode, f32 X, only output Y named; `None` leaves the standard
/// node (training mode computes batch statistics, which the kernel does not).
pub fn probe_cpu_forward(n: &NodeProto, shapes: &Shapes) -> Option<NodeProto> {
    if n.op_type != "BatchNormalization" || !n.domain.is_empty() || n.input.len() != 5 {
        return None;
    }
    let x = n.input.first()?;
    if n.attr_i("training_mode", 0) != 0
        || shapes.dtype(x)? != DType::F32
        || n.output.iter().skip(1).any(|o| !o.is_empty())
    {
        return None;
    }
    let mut m = crate::ops::rule::as_probe_cpu(
        n,
        vec![
            attr_float("epsilon", n.attr_f("epsilon", 1e-5)),
            attr_int("relu", 0),
        ],
    );
    m.output.truncate(1);
    Some(m)
}

/// Folds each inference-mode BatchNormalization that reads a Conv's output (and is that
/// output's only reader) into the Conv, before differentiation, with probe's CPU kernels:
///
///   BN(Conv(X, W, b)) = Conv(X, W s, (b - mean) s + B),   s = scale / sqrt(var + epsilon),
///
/// with s broadcast over W's output-channel axis (b = 0 for a Conv without bias). The two are
/// equal as functions of every input, so differentiating the folded graph gives the same
/// gradients for W, b, scale, B, mean and var: the chain rule through `W s` gives
/// dW = s dW' and ds = sum over W's other axes of W dW' (dW' is the folded Conv's weight
/// gradient), where the unfolded BN sums dY xhat over the batch. What it saves is the
/// BatchNormalization's pass over the activations forward (Y from Z) and backward (dZ from
/// dY, and the two sums over dY): on the shipped ResNet 16 to 30 ms a batch of 250, of ~150.
/// The parameter arithmetic is on [C]- and W-sized tensors. Training mode (batch statistics)
/// and non-f32 tensors are left as they are. Returns how many were folded.
pub fn fold_into_conv(graph: &mut onnx_protobuf::GraphProto, shapes: &mut Shapes) -> usize {
    use crate::model::graph::{Builder, Uses};
    use crate::ops::rule::Info;
    let uses = Uses::of(graph);
    let f32_dims = |v: &str| -> Option<Vec<usize>> {
        (shapes.dtype(v) == Some(DType::F32))
            .then(|| shapes.static_dims(v))
            .flatten()
    };
    // (conv index, bn index)
    let mut pairs = Vec::new();
    for (k, bn) in graph.node.iter().enumerate() {
        if bn.op_type != "BatchNormalization"
            || !bn.domain.is_empty()
            || bn.input.len() != 5
            || bn.attr_i("training_mode", 0) != 0
            || bn.output.is_empty()
            || bn.output[1..].iter().any(|o| !o.is_empty())
        {
            continue;
        }
        let z = &bn.input[0];
        let Some(&c) = uses.producer.get(z) else {
            continue;
        };
        let conv = &graph.node[c];
        if conv.op_type != "Conv"
            || !conv.domain.is_empty()
            || conv.output.len() != 1
            || !uses.sole_reader(z, k)
            || conv.input.len() < 2
            || shapes.dtype(z) != Some(DType::F32)
        {
            continue;
        }
        let Some(w) = f32_dims(&conv.input[1]) else {
            continue;
        };
        let ch = [w[0]];
        let per_channel = bn.input[1..]
            .iter()
            .all(|v| f32_dims(v).as_deref() == Some(&ch[..]));
        let bias_fits = conv
            .input
            .get(2)
            .is_none_or(|b| b.is_empty() || f32_dims(b).as_deref() == Some(&ch[..]));
        if w.len() >= 3 && per_channel && bias_fits {
            pairs.push((c, k));
        }
    }
    if pairs.is_empty() {
        return 0;
    }
    let folded = pairs.len();
    let mut at_bn: std::collections::HashMap<usize, Vec<onnx_protobuf::NodeProto>> =
        Default::default();
    let mut convs = std::collections::HashSet::new();
    for (c, k) in pairs {
        let bn = graph.node[k].clone();
        let mut conv = graph.node[c].clone();
        let (scale, b, mean, var) = (&bn.input[1], &bn.input[2], &bn.input[3], &bn.input[4]);
        let w = conv.input[1].clone();
        let wd = shapes.static_dims(&w).unwrap();
        let y = bn.output[0].clone();
        let mut g = Builder::new(&format!("{y}/fold"));
        // The parameter arithmetic runs in float64 and is rounded to float32 once, at W s and
        // at the folded bias: in float32, s = scale / sqrt(var + eps) and (b - mean) s + B
        // round three and five times, and a folded Conv then differs from PyTorch's Conv-then-BN
        // by more than that Conv's own rounding. Its gradients come back through the same f64
        // arithmetic (dW = s dW', ds = sum W dW') and are rounded once into float32.
        let f64 = |g: &mut Builder, v: &str| {
            g.op("Cast", &[v], vec![attr_int("to", DType::F64.onnx() as i64)])
        };
        let (scale, b, mean, var) = (
            f64(&mut g, scale),
            f64(&mut g, b),
            f64(&mut g, mean),
            f64(&mut g, var),
        );
        let eps32 = g.scalar(bn.attr_f("epsilon", 1e-5));
        let eps = f64(&mut g, &eps32);
        let ve = g.op("Add", &[&var, &eps], vec![]);
        let sd = g.op("Sqrt", &[&ve], vec![]);
        let s = g.op("Div", &[&scale, &sd], vec![]);
        // W' = f32(f64(W) s) as one node (its gradient one pass, `ops/fold_scale.rs`).
        let w2 = g
            .op_n_in(PROBE_CPU_DOMAIN, FOLD_SCALE, &[&w, &s], vec![], 1)
            .pop()
            .unwrap();
        let cb64 = conv
            .input
            .get(2)
            .filter(|b| !b.is_empty())
            .map(|cb| f64(&mut g, cb));
        let centred = match &cb64 {
            Some(cb) => g.op("Sub", &[cb, &mean], vec![]),
            None => g.op("Neg", &[&mean], vec![]),
        };
        let shifted = g.op("Mul", &[&centred, &s], vec![]);
        let b2_64 = g.op("Add", &[&shifted, &b], vec![]);
        let b2 = g.op(
            "Cast",
            &[&b2_64],
            vec![attr_int("to", DType::F32.onnx() as i64)],
        );
        let info = |dtype: DType, dims: &[usize]| Info {
            dtype,
            dims: dims.iter().map(|&d| Some(d)).collect(),
        };
        let ch = [wd[0]];
        for (v, dims) in [
            (&scale, &ch[..]),
            (&b, &ch),
            (&mean, &ch),
            (&var, &ch),
            (&ve, &ch),
            (&sd, &ch),
            (&s, &ch),
            (&centred, &ch),
            (&shifted, &ch),
            (&b2_64, &ch),
        ] {
            shapes.map.insert(v.clone(), info(DType::F64, dims));
        }
        if let Some(cb) = cb64 {
            shapes.map.insert(cb, info(DType::F64, &ch));
        }
        shapes.map.insert(w2.clone(), info(DType::F32, &wd));
        shapes.map.insert(b2.clone(), info(DType::F32, &ch));
        shapes.map.insert(eps32.clone(), info(DType::F32, &[]));
        shapes.map.insert(eps.clone(), info(DType::F64, &[]));
        conv.input.truncate(1);
        conv.input.extend([w2, b2]);
        conv.output = vec![y];
        let mut nodes = g.nodes;
        nodes.push(conv);
        at_bn.insert(k, nodes);
        convs.insert(c);
    }
    // The folded Conv moves to the BN's place, after the parameter arithmetic: BN's inputs may
    // be computed after the Conv.
    let mut nodes = Vec::with_capacity(graph.node.len() + 10 * folded);
    for (k, n) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        if convs.contains(&k) {
            continue;
        }
        match at_bn.remove(&k) {
            Some(fold) => nodes.extend(fold),
            None => nodes.push(n),
        }
    }
    graph.node = nodes;
    folded
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_float, attr_int};
    use crate::ops::testing::{check, Case};
    use crate::ops::torch_testing::{check_torch, check_torch_except};
    fn bn(x: &[usize], c: usize) -> Case {
        Case::new("BatchNormalization")
            .input(x)
            .input(&[c])
            .input(&[c])
            .input(&[c])
            .input_in(&[c], 0.5, 1.5)
    }
    /// Conv(x, w[, b]) -> BatchNormalization(scale, bias, mean, var), the variance made
    /// positive in the graph (var = v*v + 0.5, computed after the Conv). With `tap`, the Conv's
    /// output is also a graph output (a second reader: not folded).
    fn conv_bn(conv_bias: bool, group: i64, tap: bool) -> onnx_protobuf::GraphProto {
        use crate::model::graph::{attr_tensor, tensor_f32};
        use crate::ops::testing::node;
        let mut g = onnx_protobuf::GraphProto::new();
        let mut conv = node("Conv", &["x", "w"], "z");
        if conv_bias {
            conv.input.push("b".into());
        }
        conv.attribute = vec![attr_int("group", group)];
        g.node.push(conv);
        let mut half = node("Constant", &[], "half");
        half.attribute = vec![attr_tensor("value", tensor_f32("", &[], &[0.5]))];
        g.node.push(half);
        g.node.push(node("Mul", &["v", "v"], "vv"));
        g.node.push(node("Add", &["vv", "half"], "var"));
        let mut bn = node(
            "BatchNormalization",
            &["z", "scale", "beta", "mean", "var"],
            "y",
        );
        bn.attribute = vec![attr_float("epsilon", 0.01)];
        g.node.push(bn);
        if tap {
            g.node.push(node("Identity", &["z"], "z_out"));
        }
        g
    }

    /// The fold is exact: finite differences and the standard (unfolded) gradient agree for
    /// every input, with and without a Conv bias, grouped, 1-D and 2-D; a Conv output read
    /// twice stays unfolded and still agrees.
    #[test]
    fn fold_into_conv_keeps_every_gradient() {
        use crate::ops::rule::Kernels;
        use crate::ops::testing::check_graph_with;
        for (conv_bias, group, spatial, tap) in [
            (true, 1, &[5usize, 4][..], false),
            (false, 1, &[5, 4][..], false),
            (true, 2, &[6][..], false),
            (true, 1, &[4, 4][..], true),
        ] {
            let (n, ci, co) = (2usize, 4usize, 6usize);
            let k = 3usize.min(spatial[0]);
            let x: Vec<usize> = [n, ci].iter().chain(spatial).copied().collect();
            let w: Vec<usize> = [co, ci / group as usize]
                .into_iter()
                .chain(spatial.iter().map(|_| k))
                .collect();
            let mut inputs: Vec<(&str, &[usize])> = vec![("x", &x), ("w", &w)];
            if conv_bias {
                inputs.push(("b", &[6]));
            }
            for p in ["scale", "beta", "mean", "v"] {
                inputs.push((p, &[6]));
            }
            let mut outs = vec!["y"];
            if tap {
                outs.push("z_out");
            }
            let label = format!("Conv -> BN (bias {conv_bias}, group {group}, {spatial:?})");
            check_graph_with(
                &label,
                conv_bn(conv_bias, group, tap),
                &inputs,
                &outs,
                11,
                Kernels::ProbeCpu,
            );
        }
    }

    /// A fresh network's kink through the default kernels: a freshly initialized BatchNorm
    /// (scale 1, bias 0, mean 0, var 1) maps an all-zero window of its Conv to exactly 0, where
    /// PyTorch's ReLU6 (hardtanh_backward) and Relu (threshold_backward) pass no gradient. Three
    /// chains on one input whose first sample is zero but for two corners (and a -0.0): Conv ->
    /// BN -> Clip(0, 6) recorded as aten.hardtanh (the BN folded into the Conv, run by libtorch),
    /// Conv -> BN -> Relu (folded, the Relu fused into the Conv) and BN -> Relu (probe.cpu's
    /// BatchNormalization with the Relu fused in, and ReluBatchNormalizationGrad); every
    /// gradient against PyTorch autograd through conv2d, batch_norm, relu6 and relu.
    #[test]
    fn fresh_batch_norm_zeros_at_relu6_and_relu_pass_nothing() {
        use crate::model::graph::{attr_ints, attr_tensor, tensor_f32};
        use crate::ops::kink_testing::check_graph_kinks;
        use crate::ops::testing::node;
        use tch::{Kind, Tensor};
        const RELU6: &str = "%hardtanh : [num_users=1] = call_function[target=torch.ops.aten.\
                             hardtanh.default](args = (%getitem, 0.0, 6.0), kwargs = {})";
        let mut g = onnx_protobuf::GraphProto::new();
        let constant = |g: &mut onnx_protobuf::GraphProto, name: &str, dims: &[i64], v: f32| {
            let len = dims.iter().product::<i64>() as usize;
            let mut c = node("Constant", &[], name);
            c.attribute = vec![attr_tensor("value", tensor_f32("", dims, &vec![v; len]))];
            g.node.push(c);
        };
        for (name, dims, v) in [
            ("mean3", &[3i64][..], 0.0),
            ("var3", &[3], 1.0),
            ("mean2", &[2], 0.0),
            ("var2", &[2], 1.0),
            ("lo", &[], 0.0),
            ("hi", &[], 6.0),
        ] {
            constant(&mut g, name, dims, v);
        }
        let conv = |x: &str, w: &str, y: &str| {
            let mut c = node("Conv", &[x, w], y);
            c.attribute = vec![attr_ints("pads", &[1, 1, 1, 1])];
            c
        };
        g.node.push(conv("x", "wa", "za"));
        g.node.push(node(
            "BatchNormalization",
            &["za", "sa", "ba", "mean3", "var3"],
            "ua",
        ));
        let mut clip = node("Clip", &["ua", "lo", "hi"], "ya");
        let mut record = onnx_protobuf::StringStringEntryProto::new();
        (record.key, record.value) = ("pkg.torch.onnx.fx_node".into(), RELU6.into());
        clip.metadata_props.push(record);
        g.node.push(clip);
        g.node.push(conv("x", "wb", "zb"));
        g.node.push(node(
            "BatchNormalization",
            &["zb", "sb", "bb", "mean3", "var3"],
            "ub",
        ));
        g.node.push(node("Relu", &["ub"], "yb"));
        g.node.push(node(
            "BatchNormalization",
            &["x", "sc", "bc", "mean2", "var2"],
            "uc",
        ));
        g.node.push(node("Relu", &["uc"], "yc"));

        // Sample 0: zero but for two corners, so 17 of each channel's 25 windows are all zero;
        // sample 1: values in (-1, 1).
        let mut x = vec![0.0; 2 * 2 * 25];
        (x[0], x[25 + 24], x[12]) = (0.7, -0.9, -0.0);
        for (i, v) in x[50..].iter_mut().enumerate() {
            *v = (i as f64 * 0.61 + 0.3).sin();
        }
        let wa: Vec<f64> = (0..54).map(|i| (i as f64 * 0.37).sin() * 0.8).collect();
        let wb: Vec<f64> = (0..54)
            .map(|i| (i as f64 * 0.53 + 1.0).cos() * 0.8)
            .collect();
        let (ones3, zeros3, ones2, zeros2) = ([1.0; 3], [0.0; 3], [1.0; 2], [0.0; 2]);
        let inputs: [(&str, &[usize], &[f64]); 9] = [
            ("x", &[2, 2, 5, 5], &x),
            ("wa", &[3, 2, 3, 3], &wa),
            ("sa", &[3], &ones3),
            ("ba", &[3], &zeros3),
            ("wb", &[3, 2, 3, 3], &wb),
            ("sb", &[3], &ones3),
            ("bb", &[3], &zeros3),
            ("sc", &[2], &ones2),
            ("bc", &[2], &zeros2),
        ];
        let forward = |t: &[Tensor]| -> Vec<Tensor> {
            let opts = (Kind::Double, tch::Device::Cpu);
            let bn = |z: &Tensor, s: &Tensor, b: &Tensor, c: i64| {
                let (mean, var) = (Tensor::zeros([c], opts), Tensor::ones([c], opts));
                z.batch_norm(
                    Some(s),
                    Some(b),
                    Some(&mean),
                    Some(&var),
                    false,
                    0.1,
                    1e-5,
                    false,
                )
            };
            let conv = |w: &Tensor| t[0].conv2d(w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
            vec![
                bn(&conv(&t[1]), &t[2], &t[3], 3).relu6(),
                bn(&conv(&t[4]), &t[5], &t[6], 3).relu(),
                bn(&t[0], &t[7], &t[8], 2).relu(),
            ]
        };
        check_graph_kinks(
            "fresh BatchNorm at ReLU6 and Relu",
            g,
            &inputs,
            &["ya", "yb", "yc"],
            &forward,
            &[
                "probe.cpu:Conv",
                "probe.cpu:BatchNormalization",
                "probe.cpu:ReluGrad",
                "probe.cpu:ReluBatchNormalizationGrad",
            ],
        );
    }

    /// The rewrite itself: the BN is gone and the Conv (moved to the BN's place) writes Y from
    /// the scaled weight and the shifted bias; training mode and a second reader are refused.
    #[test]
    fn fold_into_conv_rewrites_only_what_it_may() {
        use crate::model::graph::value_info;
        use crate::ops::rule::Shapes;
        use crate::tensor::{DType, HostTensor};
        let graph = |training: bool, tap: bool| {
            let mut g = conv_bn(true, 1, tap);
            if training {
                let bn = g
                    .node
                    .iter_mut()
                    .find(|n| n.op_type == "BatchNormalization");
                let bn = bn.unwrap();
                bn.attribute.push(attr_int("training_mode", 1));
                bn.output.extend(["rm".to_string(), "rv".to_string()]);
            }
            let mut feeds = Vec::new();
            for (name, shape) in [
                ("x", vec![2usize, 4, 5, 5]),
                ("w", vec![6, 4, 3, 3]),
                ("b", vec![6]),
                ("scale", vec![6]),
                ("beta", vec![6]),
                ("mean", vec![6]),
                ("v", vec![6]),
            ] {
                let dims: Vec<Option<i64>> = shape.iter().map(|&d| Some(d as i64)).collect();
                g.input.push(value_info(name, DType::F32, &dims, "N"));
                let len: usize = shape.iter().product();
                let v: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
                feeds.push((name.to_string(), HostTensor::f32(shape, v)));
            }
            g.output.push(value_info("y", DType::F32, &[None; 4], "N"));
            if tap {
                g.output
                    .push(value_info("z_out", DType::F32, &[None; 4], "N"));
            }
            let m = crate::ops::testing::model_of(g, 20);
            let mut shapes = Shapes::observe(&m, &[feeds]).unwrap();
            let mut g = m.graph.unwrap();
            let n = super::fold_into_conv(&mut g, &mut shapes);
            (n, g, shapes)
        };
        let (n, g, shapes) = graph(false, false);
        assert_eq!(n, 1);
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(!ops.contains(&"BatchNormalization"), "{ops:?}");
        let conv = g.node.iter().position(|n| n.op_type == "Conv").unwrap();
        assert_eq!(g.node[conv].output, ["y"]);
        assert_eq!(g.node[conv].input[0], "x");
        // Every input of the Conv is computed before it, and has a shape.
        for i in &g.node[conv].input[1..] {
            let at = g.node.iter().position(|n| n.output.contains(i)).unwrap();
            assert!(at < conv, "{i} computed after the Conv: {ops:?}");
            assert!(shapes.get(i).is_some(), "{i} has no shape");
        }
        assert_eq!(
            shapes.static_dims(&g.node[conv].input[1]),
            Some(vec![6, 4, 3, 3])
        );
        for (training, tap) in [(true, false), (false, true)] {
            let (n, g, _) = graph(training, tap);
            assert_eq!(n, 0);
            assert!(g.node.iter().any(|n| n.op_type == "BatchNormalization"));
        }
    }

    fn batch_norm_inference_cases() -> [Case; 4] {
        [
            bn(&[2, 3, 4, 5], 3),
            bn(&[4, 3], 3).attr(attr_float("epsilon", 0.1)),
            bn(&[2, 2, 5], 2).attr(attr_int("training_mode", 0)),
            // Running statistics as fixed buffers.
            Case::new("BatchNormalization")
                .input(&[2, 3, 2, 2])
                .input(&[3])
                .input(&[3])
                .fixed(&[3])
                .values(&[3], &[0.5, 1.0, 2.0]),
        ]
    }
    fn batch_norm_training_cases() -> [Case; 3] {
        // Training mode must list its three outputs; the running statistics stay out of the loss.
        let t = |case: Case| {
            case.attr(attr_int("training_mode", 1))
                .outputs(3)
                .skip_output(1)
                .skip_output(2)
        };
        [
            t(bn(&[2, 3, 4, 5], 3)),
            t(bn(&[5, 3], 3)).attr(attr_float("epsilon", 0.1)),
            t(bn(&[2, 2, 3], 2)).attr(attr_float("momentum", 0.5)),
        ]
    }
    #[test]
    fn batch_norm_inference() {
        batch_norm_inference_cases().into_iter().for_each(check);
    }
    #[test]
    fn batch_norm_training() {
        batch_norm_training_cases().into_iter().for_each(check);
    }
    /// With probe's kernel, in f32: the inference cases less the one that spells out
    /// `training_mode = 0`; the last one's mean is a fixed buffer.
    #[test]
    fn probe_cpu_kernel() {
        let [plain, epsilon, _, fixed_statistics] = batch_norm_inference_cases();
        for case in [plain, epsilon, fixed_statistics] {
            check(case.f32().probe_cpu());
        }
    }
    #[test]
    fn torch_forward() {
        batch_norm_inference_cases()
            .into_iter()
            .for_each(check_torch);
        // Output 2, the running variance, is PyTorch's (unbiased batch variance), not ONNX's
        // (biased): checked against PyTorch's formula below.
        for case in batch_norm_training_cases() {
            check_torch_except(case, &[2]);
        }
    }
    #[test]
    fn torch_running_statistics_as_pytorch() {
        // running = m running + (1 - m) batch, the variance unbiased; and the forward asks for
        // both to be written back into inputs 3 and 4.
        use crate::ops::{rule, TorchCtx, Value};
        use tch::{Device, Kind, Tensor};
        let mut node = onnx_protobuf::NodeProto::new();
        node.op_type = "BatchNormalization".into();
        node.attribute = vec![attr_float("momentum", 0.75)];
        let x = Tensor::randn([4, 3, 2, 5], (Kind::Float, Device::Cpu));
        let (rm, rv) = (
            Tensor::from_slice(&[0.1f32, -0.2, 0.3]),
            Tensor::from_slice(&[1.0f32, 2.0, 0.5]),
        );
        let inputs = vec![
            Value::Tensor(x.shallow_clone()),
            Value::Tensor(Tensor::ones([3], (Kind::Float, Device::Cpu))),
            Value::Tensor(Tensor::zeros([3], (Kind::Float, Device::Cpu))),
            Value::Tensor(rm.copy()),
            Value::Tensor(rv.copy()),
        ];
        let ctx = TorchCtx::new(&node, Some(true), Device::Cpu);
        let out = (rule("BatchNormalization").unwrap().torch.unwrap())(&ctx, inputs).unwrap();
        let mean = x.mean_dim([0i64, 2, 3].as_slice(), false, None::<Kind>);
        let var = x.var_dim([0i64, 2, 3].as_slice(), true, false);
        let want_m = &rm * 0.75 + mean * 0.25;
        let want_v = &rv * 0.75 + var * 0.25;
        let got_m = out[1].tensor().unwrap();
        let got_v = out[2].tensor().unwrap();
        let err = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
        assert!(
            err(got_m, &want_m) < 1e-6,
            "running mean {got_m} vs {want_m}"
        );
        assert!(
            err(got_v, &want_v) < 1e-6,
            "running var {got_v} vs {want_v}"
        );
        let wb = ctx.take_write_backs();
        assert_eq!(wb.iter().map(|w| w.0).collect::<Vec<_>>(), vec![3, 4]);
        assert!(err(&wb[1].1, &want_v) < 1e-6);
    }
}
