//! GlobalAveragePool (opset 1+): `Y[n, c, 1, ...] = mean of X[n, c, ...]` over all spatial axes.
//! https://onnx.ai/onnx/operators/onnx__GlobalAveragePool.html
//!
//! dX = Expand(dY, shape X) / (H * W * ...).
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use crate::ops::reduce_mean::divide_by_count;
use anyhow::Result;

pub static RULE: Rule = Rule::new("GlobalAveragePool", Kind::Linear)
    .vjp(vjp)
    .torch(torch);

fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let spatial: Vec<i64> = (2..x.dim() as i64).collect();
    one(x.f_mean_dim(spatial.as_slice(), true, None::<tch::Kind>)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let x = c.input(0).to_string();
    let spatial: Vec<i64> = (2..c.rank(&x)? as i64).collect();
    let shape = c.shape_of(&x);
    let gx = c.op("Expand", &[&g, &shape], vec![]);
    let gx = divide_by_count(c, &gx, &x, &spatial)?;
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::Case;
    // ONNX Runtime's CPU provider has no f64 GlobalAveragePool; the rule is linear, so f32 is
    // as exact as the check's tolerance.
    crate::ops::testing::gradient_and_torch_tests!(
        global_average_pool = [
            Case::new("GlobalAveragePool").input(&[2, 3, 4, 5]).f32(),
            Case::new("GlobalAveragePool").input(&[1, 2, 6]).f32(),
            Case::new("GlobalAveragePool").input(&[2, 2, 2, 3, 2]).f32(),
        ],
    );
}
