//! ReduceMean (opset 18+: axes as an optional input; opset 13's `axes` attribute also read;
//! keepdims, noop_with_empty_axes). https://onnx.ai/onnx/operators/onnx__ReduceMean.html
//!
//! Y = sum over the reduced axes / n with n the count of reduced elements, so
//! dX = expand(dY with the reduced axes restored, shape X) / n (ReduceSum's rule, scaled).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, is_float, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use crate::ops::reduce_sum::{expand_back, reduced_axes};
use anyhow::Result;

pub static RULE: Rule = Rule::new("ReduceMean", Kind::Linear).vjp(vjp).torch(torch);

/// Integer inputs: the mean truncated toward zero, in their type.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let keep = c.attr_i("keepdims", 1) != 0;
    let Some(axes) = super::reduce_sum::torch_axes(c, &v, x.dim() as i64)? else {
        return one(x.shallow_clone());
    };
    if is_float(x.kind()) {
        one(x.f_mean_dim(axes.as_slice(), keep, None::<tch::Kind>)?)
    } else {
        let m = x.f_mean_dim(axes.as_slice(), keep, tch::Kind::Double)?;
        one(m.f_to_kind(x.kind())?)
    }
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let x = c.input(0).to_string();
    let axes = reduced_axes(c)?;
    let gx = expand_back(c, &g, &axes)?;
    let gx = divide_by_count(c, &gx, &x, &axes)?;
    c.set(0, gx);
    Ok(())
}

/// `g / n` with n the number of elements of the forward value `x` along `axes` (normalized):
/// a constant when those dimensions are static, else the product of the runtime dimensions.
pub fn divide_by_count(c: &mut Ctx, g: &str, x: &str, axes: &[i64]) -> Result<String> {
    let dims = c.dims(x)?;
    let known: Option<Vec<usize>> = axes.iter().map(|&a| dims[a as usize]).collect();
    if let Some(k) = known {
        let n = k.iter().product::<usize>();
        if n == 1 {
            return Ok(g.to_string());
        }
        let inv = c.scalar(1.0 / n as f64, x)?;
        return Ok(c.op("Mul", &[g, &inv], vec![]));
    }
    let shape = c.op("Shape", &[x], vec![]);
    let ax = c.ints(axes);
    let picked = c.op("Gather", &[&shape, &ax], vec![]);
    let n = c.op("ReduceProd", &[&picked], vec![attr_int("keepdims", 0)]);
    let n = c.cast_like(&n, x);
    Ok(c.op("Div", &[g, &n], vec![]))
}

op_tests!(
    reduce_mean = crate::ops::reduce_sum::reduce_cases("ReduceMean")
        .into_iter()
        .chain([Case::new("ReduceMean").input(&[3, 4])]),
    reduce_mean_noop_with_empty_axes = [Case::new("ReduceMean")
        .input(&[2, 3])
        .attr(attr_int("noop_with_empty_axes", 1))],
    reduce_mean_opset13_axes_attribute = [Case::new("ReduceMean")
        .input(&[2, 3, 4])
        .attr(attr_ints("axes", &[1]))
        .attr(attr_int("keepdims", 0))
        .opset(13)],
);
