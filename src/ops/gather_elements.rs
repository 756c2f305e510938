//! GatherElements (opset 13+): `Y[i] = X[i with i_axis replaced by idx[i]]`, idx shaped like Y,
//! negative indices counting from the back. https://onnx.ai/onnx/operators/onnx__GatherElements.html
//!
//! dX = ScatterElements(zeros like X, idx, dY, axis, reduction = add): each dY element goes back
//! where it was read from, summed where a position was read several times. The indices are
//! integers and get no gradient. With probe's CPU kernels (f32) one
//! `probe.cpu:GatherElementsGrad` node adds each dY element in place.
use super::attrs::Attrs;
use super::rule::{Ctx, Kernels, Kind, Rule};
use super::torch::{axis, input, one, TorchCtx, Value};
use crate::model::graph::{attr_int, attr_string};
use crate::ops::rule::kernels::GATHER_ELEMENTS_GRAD;
use crate::tensor::DType;
use anyhow::Result;

pub static RULE: Rule = Rule::new("GatherElements", Kind::Linear)
    .vjp(vjp)
    .torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let (x, idx) = (input(&v, 0)?, input(&v, 1)?);
    let xs = x.size();
    let a = axis(c.attr_i("axis", 0), xs.len() as i64)?;
    let idx = super::gather::wrap_negative(idx, xs[a as usize])?;
    one(x.f_gather(a, &idx, false)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let (x, idx) = (c.input(0).to_string(), c.input(1).to_string());
    let axis = c.attr_i("axis", 0);
    if c.kernels == Kernels::ProbeCpu && c.dtype(&x)? == DType::F32 {
        // No zero tensor written first and no scatter (runtime/cpu_ops).
        let idx = c.op("Cast", &[&idx], vec![attr_int("to", 7)]);
        let shape = c.shape_of(&x);
        let attrs = vec![attr_int("axis", axis)];
        let gx = c
            .probe_cpu_op(GATHER_ELEMENTS_GRAD, &[&g, &idx, &shape], attrs, 1)
            .pop()
            .unwrap();
        c.set(0, gx);
        return Ok(());
    }
    let zeros = c.zeros_like(&x)?;
    let gx = c.op(
        "ScatterElements",
        &[&zeros, &idx, &g],
        vec![attr_int("axis", axis), attr_string("reduction", "add")],
    );
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_int;
    use crate::ops::testing::{check, Case};
    crate::ops::testing::gradient_and_torch_tests!(gather_elements = gather_elements_cases(),);
    fn gather_elements_cases() -> [Case; 3] {
        [
            Case::new("GatherElements")
                .input(&[3, 4])
                .ints(&[2, 4], &[0, 2, 2, 1, -1, 0, 2, -3]),
            Case::new("GatherElements")
                .input(&[3, 4])
                .ints(&[3, 3], &[0, 3, 3, -1, 1, 0, 2, 2, 2])
                .attr(attr_int("axis", 1)),
            Case::new("GatherElements")
                .input(&[2, 3, 2])
                .ints(&[2, 2, 2], &[0, 1, 1, 1, 2, 0, -1, -3])
                .attr(attr_int("axis", -2)),
        ]
    }
    #[test]
    fn probe_cpu_kernel() {
        for c in gather_elements_cases() {
            check(c.f32().probe_cpu());
        }
    }
}
