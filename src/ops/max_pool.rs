//! MaxPool (opset 12; also 8, 10, 11): any spatial rank, `kernel_shape`, `strides`, `pads`,
//! `dilations`, `ceil_mode`, `auto_pad`; `storage_order` 0 only.
//! https://onnx.ai/onnx/operators/onnx__MaxPool.html
//!
//! dX[j] = sum of dY over the windows whose maximum is X[j] (the first maximum on ties, as the
//! runtime picks it). The forward node is made to emit its optional Indices output, the flat
//! position of each window's maximum in all of X (N*C*H*W, row-major), and
//! dX = Reshape(ScatterElements(zeros[numel X], Indices, dY, reduction = add), shape X).
use super::{Kind, Rule};
use crate::autodiff::ctx::Ctx;
use crate::model::graph::{attr_int, attr_string};
use anyhow::{bail, Result};

pub static RULE: Rule = Rule {
    op: "MaxPool",
    kind: Kind::Structured,
    vjp: Some(vjp),
};

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    if !c.needs(0) {
        return Ok(());
    }
    if c.attr_i("storage_order", 0) != 0 {
        bail!("MaxPool with storage_order = 1 (column-major indices) is not supported");
    }
    let x = c.input(0).to_string();
    let idx = c.require_output(1);
    let flat = c.ints(&[-1]);
    let z = c.zeros_like(&x)?;
    let z = c.op("Reshape", &[&z, &flat], vec![]);
    let i = c.op("Reshape", &[&idx, &flat], vec![]);
    let v = c.op("Reshape", &[&g, &flat], vec![]);
    let s = c.op(
        "ScatterElements",
        &[&z, &i, &v],
        vec![attr_int("axis", 0), attr_string("reduction", "add")],
    );
    let shape = c.shape_of(&x);
    let gx = c.op("Reshape", &[&s, &shape], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_int, attr_ints};
    use crate::ops::testing::{check, Case};
    fn pool(x: &[usize], k: &[i64]) -> Case {
        Case::new("MaxPool")
            .input(x)
            .attr(attr_ints("kernel_shape", k))
    }
    #[test]
    fn max_pool_plain() {
        check(pool(&[2, 3, 4, 4], &[2, 2]).attr(attr_ints("strides", &[2, 2])));
        // Overlapping windows: an element can be the maximum of several.
        check(pool(&[1, 2, 5, 4], &[3, 2]));
    }
    #[test]
    fn max_pool_stride_pad_dilation_ceil() {
        check(
            pool(&[2, 2, 7, 6], &[3, 3])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 0])),
        );
        check(
            pool(&[1, 2, 7, 7], &[2, 2])
                .attr(attr_ints("strides", &[2, 1]))
                .attr(attr_ints("dilations", &[2, 2])),
        );
        check(
            pool(&[1, 2, 6, 5], &[3, 2])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 0, 0, 0]))
                .attr(attr_int("ceil_mode", 1)),
        );
    }
    #[test]
    fn max_pool_1d_and_given_indices() {
        check(
            pool(&[2, 3, 9], &[3])
                .attr(attr_ints("strides", &[2]))
                .attr(attr_ints("pads", &[1, 1])),
        );
        // The forward already emits Indices (integer: not in the loss).
        check(
            pool(&[1, 2, 4, 5], &[2, 2])
                .attr(attr_ints("strides", &[2, 2]))
                .outputs(2),
        );
    }
}
