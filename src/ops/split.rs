//! Split (opset 18+: split sizes as an optional input, or `num_outputs` equal parts, the last
//! smaller). https://onnx.ai/onnx/operators/onnx__Split.html
//!
//! The outputs tile X along `axis`, so dX = Concat(dY_1, ..., dY_n, axis), with zeros shaped like
//! Y_k for an output nothing downstream needs.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{axis, input, ints, opt_input, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::Result;

pub static RULE: Rule = Rule::new("Split", Kind::Linear).vjp(vjp).torch(torch);

/// Sizes from the input, else the opset-13 attribute, else `num_outputs` (or as many as the
/// node has outputs) parts of ceil(d / n), the last smaller.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let xs = x.size();
    let a = axis(c.attr_i("axis", 0), xs.len() as i64)?;
    let d = xs[a as usize];
    let sizes = if let Some(t) = opt_input(&v, 1) {
        ints(t)?
    } else if let Some(s) = c.attr_ints("split") {
        s
    } else {
        let n = c.attr_i("num_outputs", c.node.output.len() as i64).max(1);
        let each = (d + n - 1) / n;
        (0..n).map(|k| each.min(d - k * each).max(0)).collect()
    };
    let parts = x.f_split_with_sizes(sizes.as_slice(), a)?;
    Ok(parts.into_iter().map(Value::Tensor).collect())
}

fn vjp(c: &mut Ctx) -> Result<()> {
    if !c.needs(0) {
        return Ok(());
    }
    let x = c.input(0).to_string();
    let rank = c.rank(&x)? as i64;
    let axis = c.attr_i("axis", 0);
    let axis = if axis < 0 { axis + rank } else { axis };
    let mut parts = Vec::new();
    for k in 0..c.node.output.len() {
        let y = c.output(k).to_string();
        parts.push(match c.go(k) {
            Some(g) => g,
            None if y.is_empty() => continue,
            None => c.zeros_like(&y)?,
        });
    }
    let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    let gx = c.op("Concat", &refs, vec![attr_int("axis", axis)]);
    c.set(0, gx);
    Ok(())
}

op_tests!(
    split_sizes = [
        Case::new("Split")
            .input(&[2, 6])
            .ints(&[3], &[1, 2, 3])
            .attr(attr_int("axis", 1))
            .outputs(3),
        Case::new("Split")
            .input(&[5, 2])
            .ints(&[2], &[2, 3])
            .outputs(2),
    ],
    split_num_outputs = [
        // 7 = 3 + 3 + 1 along the last axis.
        Case::new("Split")
            .input(&[2, 7])
            .attr(attr_int("axis", -1))
            .attr(attr_int("num_outputs", 3))
            .outputs(3),
    ],
    split_unused_output = [
        Case::new("Split")
            .input(&[2, 6])
            .ints(&[3], &[1, 2, 3])
            .attr(attr_int("axis", 1))
            .outputs(3)
            .skip_output(1),
        Case::new("Split")
            .input(&[4, 3])
            .attr(attr_int("num_outputs", 2))
            .outputs(2)
            .skip_output(0),
    ],
);
