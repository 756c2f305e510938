//! CumSum (opset 14): running sums along the axis given as a scalar int input; `exclusive`
//! leaves each element's own term out, `reverse` sums from the end.
//! https://onnx.ai/onnx/operators/onnx__CumSum.html
//!
//! Linear: Y_i = sum_{j <= i} X_j (inclusive, forward) has adjoint dX_j = sum_{i >= j} dY_i, a
//! cumulative sum in the other direction; exclusive (j < i) stays exclusive (i > j). So dX =
//! CumSum(dY, axis, exclusive, reverse = !reverse).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{axis, input, ints, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::{bail, Result};
use tch::Tensor;

pub static RULE: Rule = Rule::new("CumSum", Kind::Linear).vjp(vjp).torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let ax = ints(input(&v, 1)?)?;
    let [ax] = ax[..] else {
        bail!("CumSum's axis has {} values, one was expected", ax.len());
    };
    let a = axis(ax, x.dim() as i64)?;
    let reverse = c.attr_i("reverse", 0) != 0;
    let flip = |t: &Tensor| -> Result<Tensor> {
        Ok(if reverse {
            t.f_flip([a])?
        } else {
            t.shallow_clone()
        })
    };
    let mut y = flip(x)?.f_cumsum(a, None)?;
    let n = x.size()[a as usize];
    if c.attr_i("exclusive", 0) != 0 && n > 0 {
        // Shifted by one: 0, X_0, X_0 + X_1, ...
        let head = y.f_narrow(a, 0, 1)?.f_zeros_like()?;
        y = Tensor::f_cat(&[head, y.f_narrow(a, 0, n - 1)?], a)?;
    }
    one(flip(&y)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let ax = c.input(1).to_string();
    let exclusive = c.attr_i("exclusive", 0);
    let reverse = c.attr_i("reverse", 0);
    let attrs = vec![
        attr_int("exclusive", exclusive),
        attr_int("reverse", 1 - reverse.clamp(0, 1)),
    ];
    let gx = c.op("CumSum", &[&g, &ax], attrs);
    c.set(0, gx);
    Ok(())
}

op_tests!(
    cum_sum = [(0, 0), (1, 0), (0, 1), (1, 1)]
        .into_iter()
        .flat_map(|(exclusive, reverse)| {
            let attrs = |c: Case| {
                c.attr(attr_int("exclusive", exclusive))
                    .attr(attr_int("reverse", reverse))
            };
            [
                attrs(Case::new("CumSum").input(&[3, 5]).ints(&[], &[1])),
                attrs(Case::new("CumSum").input(&[4, 2, 3]).ints(&[1], &[-3])),
            ]
        }),
);
