//! Softmax and LogSoftmax (opset 13 semantics: one `axis`, default -1; the opset 1-11 forms, which
//! flatten to 2-D at `axis`, are not covered).
//! https://onnx.ai/onnx/operators/onnx__Softmax.html
//! https://onnx.ai/onnx/operators/onnx__LogSoftmax.html
//!
//! Both rules use the output Y, not X:
//! - Softmax: dX = Y * (dY - sum(dY * Y, axis))
//! - LogSoftmax: dX = dY - exp(Y) * sum(dY, axis)
//!
//! With probe's CPU kernels (f32), each rule is one node (`probe.cpu:SoftmaxGrad`,
//! `probe.cpu:LogSoftmaxGrad`) and the forward Softmax runs as `probe.cpu:Softmax` (libtorch's
//! kernel); a LogSoftmaxGrad of the loss head's pick is fused with it ([`fuse_pick`]).
use super::attrs::Attrs;
use super::rule::{Ctx, Kernels, Kind, Rule, Shapes, Stage, PROBE_CPU_DOMAIN};
use super::torch::{axis, input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use crate::ops::rule::kernels::{
    GATHER_ELEMENTS_GRAD, LOG_SOFTMAX_GRAD, LOG_SOFTMAX_PICK_GRAD, SOFTMAX_GRAD,
};
use crate::tensor::DType;
use anyhow::Result;
use onnx_protobuf::{GraphProto, NodeProto};

pub static SOFTMAX: Rule = Rule::new("Softmax", Kind::Structured)
    .vjp(|c| softmax(c, false))
    .torch(torch_softmax)
    .probe_cpu_forward(probe_cpu_forward);
pub static LOG_SOFTMAX: Rule = Rule::new("LogSoftmax", Kind::Structured)
    .vjp(|c| softmax(c, true))
    .torch(torch_log_softmax)
    .rewrite(Stage::Fuse, |g, s, _| fuse_pick(g, s))
    .probe_cpu_forward(probe_cpu_forward);

fn torch_softmax(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let a = axis(c.attr_i("axis", -1), x.dim() as i64)?;
    one(x.f_softmax(a, None::<tch::Kind>)?)
}

fn torch_log_softmax(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let a = axis(c.attr_i("axis", -1), x.dim() as i64)?;
    one(x.f_log_softmax(a, None::<tch::Kind>)?)
}

fn softmax(c: &mut Ctx, log: bool) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let y = c.output(0).to_string();
    let rank = c.rank(&y)? as i64;
    let axis = c.attr_i("axis", -1);
    let axis = if axis < 0 { axis + rank } else { axis };
    let fast = c.kernels == Kernels::ProbeCpu && c.dtype(&y)? == DType::F32;
    let gx = if log && fast {
        // libtorch's kernel, one pass (runtime/cpu_ops).
        let attrs = vec![attr_int("axis", axis)];
        c.probe_cpu_op(LOG_SOFTMAX_GRAD, &[&g, &y], attrs, 1)
            .pop()
            .unwrap()
    } else if log {
        let s = c.reduce_sum(&g, &[axis], true);
        let p = c.op("Exp", &[&y], vec![]);
        let ps = c.op("Mul", &[&p, &s], vec![]);
        c.op("Sub", &[&g, &ps], vec![])
    } else if fast {
        // One pass instead of four (runtime/cpu_ops).
        let attrs = vec![attr_int("axis", axis)];
        c.probe_cpu_op(SOFTMAX_GRAD, &[&g, &y], attrs, 1)
            .pop()
            .unwrap()
    } else {
        let gy = c.op("Mul", &[&g, &y], vec![]);
        let s = c.reduce_sum(&gy, &[axis], true);
        let d = c.op("Sub", &[&g, &s], vec![]);
        c.op("Mul", &[&y, &d], vec![])
    };
    c.set(0, gx);
    Ok(())
}

/// `probe.cpu:LogSoftmaxGrad(GatherElementsGrad(dP, I, Shape(Y)), Y)` as one
/// `probe.cpu:LogSoftmaxPickGrad(dP, I, Y)` node: the loss head's cross-entropy, whose dense
/// one-hot gradient was a third logits-sized tensor alive at the loss (262 MB on a
/// 32,000-token vocabulary at batch 8 x 256), with the same numbers (the kernel builds that
/// dY a few rows at a time and runs the same libtorch pass). Only where both run along Y's
/// last axis (of known rank): the kernel's condition.
fn fuse_pick(graph: &mut GraphProto, shapes: &Shapes) {
    let uses = crate::model::graph::Uses::of(graph);
    let probe_cpu = |n: &NodeProto, op: &str| n.op_type == op && n.domain == PROBE_CPU_DOMAIN;
    let mut removed = vec![false; graph.node.len()];
    for j in 0..graph.node.len() {
        let n = &graph.node[j];
        if !probe_cpu(n, LOG_SOFTMAX_GRAD) || n.input.len() != 2 {
            continue;
        }
        let (dy, y) = (&n.input[0], &n.input[1]);
        let Some(i) = uses.sole_producer(dy, j) else {
            continue;
        };
        let p = &graph.node[i];
        if removed[i] || !probe_cpu(p, GATHER_ELEMENTS_GRAD) || p.input.len() != 3 {
            continue;
        }
        let Some(yd) = shapes.get(y).map(|v| &v.dims) else {
            continue;
        };
        // The scatter's shape is Y's own: a Shape node reading Y, or a constant equal to Y's
        // static dims.
        let shape = &p.input[2];
        let Some(sp) = uses.producer.get(shape).map(|&k| &graph.node[k]) else {
            continue;
        };
        let shape_of_y = match sp.op_type.as_str() {
            "Shape" => sp.input == [y.clone()] && sp.attribute.is_empty(),
            "Constant" => {
                let value = sp.attribute.iter().find(|a| a.name == "value");
                let ints = value
                    .and_then(|a| a.t.as_ref())
                    .and_then(|t| crate::model::decode_tensor(t).ok())
                    .and_then(|h| h.as_i64().map(|v| v.to_vec()));
                let dims: Option<Vec<i64>> = yd.iter().map(|d| d.map(|v| v as i64)).collect();
                ints.is_some() && ints == dims
            }
            _ => false,
        } && sp.domain.is_empty();
        let r = yd.len() as i64;
        let last = |n: &NodeProto| {
            let a = n.attr_i("axis", -1);
            r > 0 && (a == r - 1 || a == -1)
        };
        if !shape_of_y || !last(n) || !last(p) {
            continue;
        }
        // The shape's node goes too when the scatter was its only reader.
        if let Some(k) = uses.sole_producer(shape, i) {
            removed[k] = true;
        }
        let (dp, idx, y) = (p.input[0].clone(), p.input[1].clone(), y.clone());
        let n = &mut graph.node[j];
        n.op_type = LOG_SOFTMAX_PICK_GRAD.into();
        n.input = vec![dp, idx, y];
        removed[i] = true;
    }
    crate::model::graph::remove_nodes(&mut graph.node, |k| removed[k]);
}

/// The forward Softmax as `probe.cpu:Softmax` (libtorch's kernel; ONNX Runtime's took 2.8 ms on
/// [250, 4, 32, 32] where libtorch's takes a fraction), LogSoftmax as `probe.cpu:LogSoftmax`
/// (ONNX Runtime's took 2.5x libtorch's on a [2048, 32000] loss head), f32 of known rank;
/// `None` leaves it.
pub fn probe_cpu_forward(n: &NodeProto, shapes: &Shapes) -> Option<NodeProto> {
    let x = n.input.first()?;
    let ours = matches!(n.op_type.as_str(), "Softmax" | "LogSoftmax");
    if !ours || !n.domain.is_empty() || shapes.dtype(x)? != DType::F32 {
        return None;
    }
    let rank = shapes.rank(x)? as i64;
    let axis = n.attr_i("axis", -1);
    let axis = if axis < 0 { axis + rank } else { axis };
    let m = crate::ops::rule::as_probe_cpu(n, vec![attr_int("axis", axis)]);
    Some(m)
}

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_int;
    use crate::ops::testing::{check, Case};
    crate::ops::testing::gradient_and_torch_tests!(
        softmax_axes = softmax_axes_cases(),
        log_softmax_axes = log_softmax_axes_cases(),
    );
    fn softmax_axes_cases() -> [Case; 3] {
        [
            Case::new("Softmax").input_in(&[2, 3, 4], -3.0, 3.0),
            Case::new("Softmax")
                .input_in(&[2, 3, 4], -3.0, 3.0)
                .attr(attr_int("axis", 1)),
            Case::new("Softmax").input(&[5]).attr(attr_int("axis", 0)),
        ]
    }
    #[test]
    fn probe_cpu_kernel() {
        // The last axis (a dot product per row), an inner axis, and axis 0 (one part).
        for c in softmax_axes_cases() {
            check(c.f32().probe_cpu());
        }
    }
    fn log_softmax_axes_cases() -> [Case; 3] {
        [
            Case::new("LogSoftmax").input_in(&[2, 3, 4], -3.0, 3.0),
            Case::new("LogSoftmax")
                .input_in(&[2, 3, 4], -3.0, 3.0)
                .attr(attr_int("axis", -3)),
            Case::new("LogSoftmax")
                .input(&[3, 5])
                .attr(attr_int("axis", 0)),
        ]
    }
    #[test]
    fn probe_cpu_log_softmax() {
        for c in log_softmax_axes_cases() {
            check(c.f32().probe_cpu());
        }
    }
}
