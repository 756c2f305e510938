//! Softmax and LogSoftmax (opset 13 semantics: one `axis`, default -1; the opset 1-11 forms, which
//! flatten to 2-D at `axis`, are not covered).
//! https://onnx.ai/onnx/operators/onnx__Softmax.html
//! https://onnx.ai/onnx/operators/onnx__LogSoftmax.html
//!
//! Both rules use the output Y, not X:
//! - Softmax: dX = Y * (dY - sum(dY * Y, axis))
//! - LogSoftmax: dX = dY - exp(Y) * sum(dY, axis)
use super::attrs::Attrs;
use super::torch::{axis, input, one, TorchCtx, Value};
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use anyhow::Result;

pub static SOFTMAX: Rule = Rule {
    op: "Softmax",
    kind: Kind::Structured,
    vjp: Some(|c| softmax(c, false)),
    torch: Some(torch_softmax),
};
pub static LOG_SOFTMAX: Rule = Rule {
    op: "LogSoftmax",
    kind: Kind::Structured,
    vjp: Some(|c| softmax(c, true)),
    torch: Some(torch_log_softmax),
};

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
    let gx = if log {
        let s = c.reduce_sum(&g, &[axis], true);
        let p = c.op("Exp", &[&y], vec![]);
        let ps = c.op("Mul", &[&p, &s], vec![]);
        c.op("Sub", &[&g, &ps], vec![])
    } else {
        let gy = c.op("Mul", &[&g, &y], vec![]);
        let s = c.reduce_sum(&gy, &[axis], true);
        let d = c.op("Sub", &[&g, &s], vec![]);
        c.op("Mul", &[&y, &d], vec![])
    };
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_int;
    use crate::ops::testing::{check, Case};
    use crate::ops::torch_testing::check_torch;
    #[test]
    fn softmax_axes() {
        softmax_axes_cases(check);
    }
    fn softmax_axes_cases(check: fn(Case)) {
        check(Case::new("Softmax").input_in(&[2, 3, 4], -3.0, 3.0));
        check(
            Case::new("Softmax")
                .input_in(&[2, 3, 4], -3.0, 3.0)
                .attr(attr_int("axis", 1)),
        );
        check(Case::new("Softmax").input(&[5]).attr(attr_int("axis", 0)));
    }
    #[test]
    fn log_softmax_axes() {
        log_softmax_axes_cases(check);
    }
    fn log_softmax_axes_cases(check: fn(Case)) {
        check(Case::new("LogSoftmax").input_in(&[2, 3, 4], -3.0, 3.0));
        check(
            Case::new("LogSoftmax")
                .input_in(&[2, 3, 4], -3.0, 3.0)
                .attr(attr_int("axis", -3)),
        );
        check(
            Case::new("LogSoftmax")
                .input(&[3, 5])
                .attr(attr_int("axis", 0)),
        );
    }
    #[test]
    fn torch_forward() {
        softmax_axes_cases(check_torch);
        log_softmax_axes_cases(check_torch);
    }
}
