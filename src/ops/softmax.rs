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
//! kernel).
use super::attrs::Attrs;
use super::rule::{Ctx, Kernels, Kind, Rule, Shapes};
use super::torch::{axis, input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use crate::ops::rule::kernels::{LOG_SOFTMAX_GRAD, SOFTMAX_GRAD};
use crate::tensor::DType;
use anyhow::Result;
use onnx_protobuf::NodeProto;

pub static SOFTMAX: Rule = Rule::new("Softmax", Kind::Structured)
    .vjp(|c| softmax(c, false))
    .torch(torch_softmax)
    .probe_cpu_forward(probe_cpu_forward);
pub static LOG_SOFTMAX: Rule = Rule::new("LogSoftmax", Kind::Structured)
    .vjp(|c| softmax(c, true))
    .torch(torch_log_softmax);

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

/// The forward Softmax as `probe.cpu:Softmax` (libtorch's kernel; ONNX Runtime's took 2.8 ms on
/// [250, 4, 32, 32] where libtorch's takes a fraction), f32 of known rank; `None` leaves it.
pub fn probe_cpu_forward(n: &NodeProto, shapes: &Shapes) -> Option<NodeProto> {
    let x = n.input.first()?;
    if n.op_type != "Softmax" || !n.domain.is_empty() || shapes.dtype(x)? != DType::F32 {
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
