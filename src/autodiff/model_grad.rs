//! The gradient graph of a model: forward graph (state lifted to inputs) + loss head + reverse
//! sweep. Inputs: the data, the targets, every state tensor. Outputs: the batch's summed loss,
//! its correct count (cross-entropy) and, for each trainable parameter, the gradient of the
//! summed loss (`grad/<parameter>`). Standard ONNX ops only by default, so stock ONNX Runtime
//! runs it and `probe autodiff` can write it out for inspection; with
//! [`Kernels::ProbeCpu`] some rules emit probe's own CPU ops instead (`probe grad`'s fast path,
//! which only probe's sessions run).
use super::grad::{apply_forward_outputs, differentiate_with, Kernels};
use super::lift::{lift_state, loss_head, Inputs};
use super::loss::LossKind;
use super::shapes::{Feed, Shapes};
use crate::model::graph::{attr_int, value_info};
use crate::model::Model;
use crate::tensor::{DType, HostTensor, Values};
use anyhow::{Context, Result};
use onnx_protobuf::ModelProto;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct GradOptions {
    pub loss: LossKind,
    /// BatchNormalization with batch statistics (training mode) instead of running statistics.
    pub bn_train: bool,
    /// Parameters to differentiate; `None`: every trainable parameter of the model.
    pub wrt: Option<Vec<String>>,
    /// Standard ONNX ops only, or probe's CPU custom ops where they are faster.
    pub kernels: Kernels,
    /// Threads for the forward runs that observe shapes.
    pub threads: usize,
    /// Where observed shapes are kept between runs (None: observed every run).
    pub shape_cache: Option<super::shape_cache::ShapeCache>,
}

pub struct GradGraph {
    pub proto: ModelProto,
    pub inputs: Inputs,
    pub loss_sum: String,
    pub correct_sum: Option<String>,
    /// (parameter, gradient output), in the model's order.
    pub grads: Vec<(String, String)>,
}

pub const LOSS_SUM: &str = "probe/loss_sum";
pub const CORRECT_SUM: &str = "probe/correct_sum";

/// Inputs to observe shapes with when no data is at hand: the model's input and the targets at
/// batch sizes 2 and 3, from the static per-sample shapes the graph declares.
pub fn synthetic_feeds(model: &Model, kind: LossKind) -> Result<Vec<(HostTensor, HostTensor)>> {
    let input = model.data_input()?;
    let per = input.sample_shape().ok_or_else(|| {
        crate::error::input(format!(
            "{}: input '{}' has dynamic dimensions besides the batch; give --data so shapes can be observed",
            model.path.display(),
            input.name
        ))
    })?;
    let out = model.outputs[0].sample_shape().ok_or_else(|| {
        crate::error::input(format!(
            "{}: output '{}' has dynamic dimensions besides the batch; give --data",
            model.path.display(),
            model.outputs[0].name
        ))
    })?;
    let tper: Vec<usize> = match kind {
        LossKind::CrossEntropy => out[..out.len().saturating_sub(1)].to_vec(),
        LossKind::Mse => out.clone(),
    };
    let mut feeds = Vec::new();
    for n in [2usize, 3] {
        let mut xs = vec![n];
        xs.extend(&per);
        let numel: usize = xs.iter().product();
        let x = match input.dtype {
            Some(d) if !d.is_float() => HostTensor {
                shape: xs,
                dtype: DType::I64,
                values: Values::I64(vec![0; numel]),
            },
            _ => HostTensor::f32(
                xs,
                (0..numel)
                    .map(|i| ((i * 7919 % 13) as f32 - 6.0) / 6.0)
                    .collect(),
            ),
        };
        let mut ts = vec![n];
        ts.extend(&tper);
        let tn: usize = ts.iter().product();
        let t = match kind {
            LossKind::CrossEntropy => HostTensor {
                shape: ts,
                dtype: DType::I64,
                values: Values::I64(vec![0; tn]),
            },
            LossKind::Mse => HostTensor::f32(ts, vec![0.0; tn]),
        };
        feeds.push((x, t));
    }
    Ok(feeds)
}

/// Builds the gradient graph; `samples` are (x, target) batches of two different sizes (real data
/// or [`synthetic_feeds`]) on which the forward graph is run once to observe shapes.
pub fn grad_graph(
    model: &Model,
    opts: &GradOptions,
    samples: &[(HostTensor, HostTensor)],
) -> Result<GradGraph> {
    grad_graph_at(model, opts, samples, &model.own_state()?)
}

/// [`grad_graph`] with the shapes observed at `state` (every state tensor by initializer name,
/// a checkpoint's): the model's own weights need not be held.
pub fn grad_graph_at(
    model: &Model,
    opts: &GradOptions,
    samples: &[(HostTensor, HostTensor)],
    state: &BTreeMap<String, HostTensor>,
) -> Result<GradGraph> {
    let (mut proto, inputs) = lift_state(model)?;
    if model.opset() < 15 && opts.bn_train {
        return Err(crate::error::input(format!(
            "{}: --bn train needs opset >= 15 (BatchNormalization's training_mode)",
            model.path.display()
        )));
    }
    let wrt: Vec<String> = match &opts.wrt {
        Some(w) => w.clone(),
        None => model.trainable().map(|p| p.name.clone()).collect(),
    };
    if wrt.is_empty() {
        return Err(crate::error::input(format!(
            "{}: the model has no trainable (float parameter) initializers: nothing to differentiate",
            model.path.display()
        )));
    }
    let g = proto.graph.as_mut().unwrap();
    if opts.bn_train {
        for n in g
            .node
            .iter_mut()
            .filter(|n| n.op_type == "BatchNormalization")
        {
            n.attribute.retain(|a| a.name != "training_mode");
            n.attribute.push(attr_int("training_mode", 1));
            // Training mode must name all three outputs (y, running mean, running var); the
            // updated statistics are not used.
            n.output.truncate(1);
            let y = n.output[0].clone();
            n.output.push(format!("{y}/running_mean"));
            n.output.push(format!("{y}/running_var"));
        }
    }
    let target_rank = samples.first().map(|s| s.1.shape.len()).unwrap_or(1);
    let (mut b, head) = loss_head(model, g, opts.loss, target_rank);
    let ls = b.op("ReduceSum", &[&head.loss], vec![attr_int("keepdims", 0)]);
    b.nodes.push(identity(&ls, LOSS_SUM));
    let mut correct_sum = None;
    if let Some(c) = &head.correct {
        let cs = b.op("ReduceSum", &[c], vec![attr_int("keepdims", 0)]);
        b.nodes.push(identity(&cs, CORRECT_SUM));
        correct_sum = Some(CORRECT_SUM.to_string());
    }
    g.node.extend(b.nodes);
    g.output.push(value_info(LOSS_SUM, DType::F32, &[], "N"));
    if let Some(c) = &correct_sum {
        g.output.push(value_info(c, DType::F32, &[], "N"));
    }

    // Observe shapes on real batches, at `state`.
    let feeds: Vec<Feed> = samples
        .iter()
        .map(|(x, t)| inputs.feed(x, t, state))
        .collect();
    let mut shapes = match &opts.shape_cache {
        Some(c) => c.observe(&proto, &feeds, &|n| state.contains_key(n), opts.threads)?,
        None => Shapes::observe_with(&proto, &feeds, opts.threads)?,
    };
    let g = proto.graph.as_mut().unwrap();
    super::passes::before_differentiation(g, &mut shapes, &wrt, opts.kernels);
    let diff = differentiate_with(g, &shapes, LOSS_SUM, &wrt, opts.kernels)
        .with_context(|| model.path.display().to_string())?;
    let grads = attach(g, diff, model, "grad");
    super::passes::after_differentiation(g, &mut shapes, &wrt, opts.kernels);
    let custom = crate::ops::rule::PROBE_CPU_DOMAIN;
    if g.node.iter().any(|n| n.domain == custom) {
        let mut o = onnx_protobuf::OperatorSetIdProto::new();
        o.domain = custom.into();
        o.version = 1;
        proto.opset_import.push(o);
    }
    Ok(GradGraph {
        proto,
        inputs,
        loss_sum: LOSS_SUM.into(),
        correct_sum,
        grads,
    })
}

/// Appends a reverse sweep to `g`: the forward outputs its rules asked for, its nodes, and one
/// graph output `{prefix}/<p>` per differentiated parameter (an Identity of its result);
/// returns (parameter, output name) in the sweep's order.
pub(super) fn attach(
    g: &mut onnx_protobuf::GraphProto,
    diff: super::grad::Diff,
    model: &Model,
    prefix: &str,
) -> Vec<(String, String)> {
    apply_forward_outputs(g, &diff.forward_outputs);
    g.node.extend(diff.nodes);
    let mut outs = Vec::new();
    for (p, name) in diff.grads {
        let out = format!("{prefix}/{p}");
        g.node.push(identity(&name, &out));
        g.output
            .push(value_info(&out, DType::F32, &param_dims(model, &p), "N"));
        outs.push((p, out));
    }
    outs
}

/// A parameter's dims as a graph input or output declares them (static).
pub(super) fn param_dims(model: &Model, p: &str) -> Vec<Option<i64>> {
    model
        .param(p)
        .map(|i| i.shape.iter().map(|&d| Some(d as i64)).collect())
        .unwrap_or_default()
}

/// `to = Identity(from)`, the node named after its output.
pub(super) fn identity(from: &str, to: &str) -> onnx_protobuf::NodeProto {
    let mut n = onnx_protobuf::NodeProto::new();
    n.op_type = "Identity".into();
    n.name = to.to_string();
    n.input = vec![from.to_string()];
    n.output = vec![to.to_string()];
    n
}
