//! Lifting a model's state to graph inputs and appending the loss head: the evaluation graph,
//! and what the gradient graphs built on it are fed.
use super::loss::{self, Head, LossKind};
use super::shapes::Feed;
use crate::model::graph::{value_info, Builder};
use crate::model::Model;
use crate::tensor::{DType, HostTensor};
use anyhow::Result;
use onnx_protobuf::{GraphProto, ModelProto};
use std::collections::BTreeMap;

/// What a graph with its state lifted is fed, by input name.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The data input's name (as in the model).
    pub data: String,
    /// The targets' input name.
    pub target: String,
    /// State tensors fed per checkpoint, in the order they are graph inputs.
    pub state: Vec<String>,
}

impl Inputs {
    /// The feed of one shape-observing run: data `x`, targets `t`, and the state `own`.
    pub fn feed<'a>(
        &self,
        x: &'a HostTensor,
        t: &'a HostTensor,
        own: &'a BTreeMap<String, HostTensor>,
    ) -> Feed<'a> {
        use std::borrow::Cow::Borrowed;
        let mut f: Feed = vec![
            (self.data.clone(), Borrowed(x)),
            (self.target.clone(), Borrowed(t)),
        ];
        for s in &self.state {
            f.push((s.clone(), Borrowed(&own[s])));
        }
        f
    }
}

/// The graph `probe eval` runs, and what it is fed.
pub struct EvalGraph {
    pub proto: ModelProto,
    pub inputs: Inputs,
    pub loss: String,
    pub correct: Option<String>,
}

pub const TARGET: &str = "probe/target";

/// Moves every state initializer of `model` to the graph's inputs (keeping its name, type and
/// shape) and removes the rest of what the caller does not need; the inputs' targets are
/// [`TARGET`], which [`loss_head`] declares. Float state must be float32; int64 buffers are
/// lifted too (fed per checkpoint, never differentiated), other integer buffers stay
/// initializers as the ONNX file holds them (checkpoint matching checks that a checkpoint agrees).
pub fn lift_state(model: &Model) -> Result<(ModelProto, Inputs)> {
    let data = model.data_input()?.name.clone();
    let mut proto = model.proto.clone();
    let g = proto.graph.as_mut().unwrap();
    let mut state = Vec::new();
    let mut bad = Vec::new();
    for p in model.state() {
        if p.dtype.is_float() && p.dtype != DType::F32 {
            bad.push(format!("'{}' is {}", p.name, p.dtype));
        }
        if p.dtype == DType::F32 || p.dtype == DType::I64 {
            state.push(p.name.clone());
        }
    }
    if !bad.is_empty() {
        return Err(crate::error::input(format!(
            "{}: probe computes in float32 and the model's float state must be float32: {}",
            model.path.display(),
            bad.join(", ")
        )));
    }
    normalize_constants(g);
    let is_state: std::collections::HashSet<&str> = state.iter().map(|s| s.as_str()).collect();
    g.initializer
        .retain(|t| !is_state.contains(t.name.as_str()));
    g.input.retain(|i| !is_state.contains(i.name.as_str()));
    for p in model.state().filter(|p| is_state.contains(p.name.as_str())) {
        let dims: Vec<Option<i64>> = p.shape.iter().map(|&d| Some(d as i64)).collect();
        g.input.push(value_info(&p.name, p.dtype, &dims, "N"));
    }
    let target = TARGET.into();
    Ok((
        proto,
        Inputs {
            data,
            target,
            state,
        },
    ))
}

/// Declares the target input [`TARGET`] of `g` (rank `target_rank`, the type `kind` takes),
/// clears `g`'s outputs and writes the loss head after the model's output into the returned
/// builder, whose nodes the caller appends to `g` once it has added its own.
pub(super) fn loss_head(
    model: &Model,
    g: &mut GraphProto,
    kind: LossKind,
    target_rank: usize,
) -> (Builder, Head) {
    let mut b = Builder::new("probe/loss");
    let head = loss::append(&mut b, &model.outputs[0].name, TARGET, kind);
    let dims = vec![None; target_rank];
    g.input
        .push(value_info(TARGET, kind.target_dtype(), &dims, "N"));
    g.output.clear();
    (b, head)
}

/// The forward graph with its state as inputs, a target input, and the loss head as outputs.
pub fn eval_graph(model: &Model, kind: LossKind, target_rank: usize) -> Result<EvalGraph> {
    let (mut proto, inputs) = lift_state(model)?;
    // Loss heads need opset >= 13 (Unsqueeze/Reshape with tensor axes, GatherElements).
    if model.opset() < 13 {
        return Err(crate::error::input(format!(
            "{}: opset {} is older than 13, which probe's loss head needs; re-export with a newer opset",
            model.path.display(),
            model.opset()
        )));
    }
    let g = proto.graph.as_mut().unwrap();
    let (b, head) = loss_head(model, g, kind, target_rank);
    g.node.extend(b.nodes);
    g.output
        .push(value_info(&head.loss, DType::F32, &[None], "M"));
    if let Some(c) = &head.correct {
        g.output.push(value_info(c, DType::F32, &[None], "M"));
    }
    Ok(EvalGraph {
        proto,
        inputs,
        loss: head.loss,
        correct: head.correct,
    })
}

/// Rewrites `Constant` nodes given by a scalar attribute (`value_float`, `value_int`, and their
/// list forms) into the `value` tensor form. Why: the protobuf code writes proto3-style fields, so
/// a zero scalar (`value_float: 0.0`, common in exported attention) would be written with no
/// value at all, which onnx.checker rejects; a tensor keeps its bytes.
pub fn normalize_constants(g: &mut onnx_protobuf::GraphProto) {
    use crate::model::graph::{attr_tensor, tensor_f32, tensor_i64};
    for n in g.node.iter_mut().filter(|n| n.op_type == "Constant") {
        let Some(a) = n.attribute.first() else {
            continue;
        };
        let t = match a.name.as_str() {
            "value_float" => tensor_f32("", &[], &[a.f]),
            "value_floats" => tensor_f32("", &[a.floats.len() as i64], &a.floats),
            "value_int" => tensor_i64("", &[], &[a.i]),
            "value_ints" => tensor_i64("", &[a.ints.len() as i64], &a.ints),
            _ => continue,
        };
        n.attribute = vec![attr_tensor("value", t)];
    }
}
