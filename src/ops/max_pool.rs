//! MaxPool (opset 12; also 8, 10, 11): any spatial rank, `kernel_shape`, `strides`, `pads`,
//! `dilations`, `ceil_mode`, `auto_pad`; `storage_order` 0 only.
//! https://onnx.ai/onnx/operators/onnx__MaxPool.html
//!
//! dX[j] = sum of dY over the windows whose maximum is X[j]. On ties the first maximum in the
//! window's scan order (row-major) takes it all, as PyTorch's CPU max_pool2d_with_indices picks
//! it (`val > maxval || isnan(val)`: a later equal value does not replace it) and ONNX Runtime's
//! MaxPool Indices do, overlapping windows and padding included (one element can be the first
//! maximum of several; `ties_as_pytorch` holds it). At NaN PyTorch picks the NaN; what ONNX
//! Runtime's Indices pick there is not tested (the loss is NaN either way). The forward node is made to emit its optional Indices output, the flat
//! position of each window's maximum in all of X (N*C*H*W, row-major), and
//! dX = Reshape(ScatterElements(zeros[numel X], Indices, dY, reduction = add), shape X).
use super::attrs::Attrs;
use super::rule::kernels::MAX_POOL_GRAD;
use super::rule::{Ctx, Kernels, Kind, Rule};
use super::torch::{input, TorchCtx, Value};
use super::window::{sizes, Window};
use crate::model::graph::{attr_int, attr_string};
use crate::tensor::DType;
use anyhow::{anyhow, bail, Result};

pub static RULE: Rule = Rule::new("MaxPool", Kind::Structured).vjp(vjp).torch(torch);

/// libtorch's max_pool{1,2,3}d_with_indices: directly when the pads are symmetric and within
/// what libtorch allows (half the dilated kernel), else on X padded with -inf to exactly the
/// extent ONNX's output needs. Indices (if asked for) are made flat over all of X.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    if c.attr_i("storage_order", 0) != 0 {
        bail!("MaxPool with storage_order = 1 (column-major indices) is not supported");
    }
    let kernel = c
        .attr_ints("kernel_shape")
        .ok_or_else(|| anyhow!("MaxPool without kernel_shape"))?;
    let win = Window::of(c, kernel, &sizes(x))?;
    let ceil = c.attr_i("ceil_mode", 0) != 0;
    let tw = win.torch(x, ceil, f64::NEG_INFINITY, |i, p| 2 * p <= win.span(i))?;
    let (k, s, d) = (&win.kernel, &win.strides, &win.dilations);
    let p = tw.padding.as_slice();
    let (y, idx) = match win.rank() {
        1 => {
            tw.x.f_max_pool1d_with_indices(k.as_slice(), s.as_slice(), p, d.as_slice(), tw.ceil)?
        }
        2 => {
            tw.x.f_max_pool2d_with_indices(k.as_slice(), s.as_slice(), p, d.as_slice(), tw.ceil)?
        }
        3 => {
            tw.x.f_max_pool3d_with_indices(k.as_slice(), s.as_slice(), p, d.as_slice(), tw.ceil)?
        }
        r => bail!("MaxPool over {r} spatial axes (libtorch has 1 to 3)"),
    };
    let mut out = vec![Value::Tensor(y)];
    if c.wants(1) {
        out.push(Value::Tensor(flat_indices(x, &idx, &tw.begin, &tw.extent)?));
    }
    Ok(out)
}

/// libtorch's indices count within one (N, C) plane of the tensor pooled (X padded by `begin`
/// at the front, spatial `extent`); ONNX's count over all of X, row-major.
fn flat_indices(
    x: &tch::Tensor,
    idx: &tch::Tensor,
    begin: &[i64],
    extent: &[i64],
) -> Result<tch::Tensor> {
    let xs = x.size();
    let h = &xs[2..];
    let mut rest = idx.shallow_clone();
    let mut flat = idx.f_zeros_like()?;
    let mut stride = 1i64;
    for i in (0..h.len()).rev() {
        let coord = rest.f_remainder(extent[i])?.f_sub_scalar(begin[i])?;
        rest = rest.f_div_tensor_mode(&tch::Tensor::from(extent[i]), "floor")?;
        flat = flat.f_add(&coord.f_mul_scalar(stride)?)?;
        stride *= h[i];
    }
    let planes = xs[0] * xs[1];
    let mut pshape = vec![xs[0], xs[1]];
    pshape.extend(vec![1; h.len()]);
    let offset = tch::Tensor::f_arange(planes, (tch::Kind::Int64, x.device()))?
        .f_mul_scalar(stride)?
        .f_reshape(pshape.as_slice())?;
    Ok(flat.f_add(&offset)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    if c.attr_i("storage_order", 0) != 0 {
        bail!("MaxPool with storage_order = 1 (column-major indices) is not supported");
    }
    let x = c.input(0).to_string();
    let idx = c.require_output(1);
    if c.kernels == Kernels::ProbeCpu && c.dtype(&x)? == DType::F32 {
        // The same adds in one pass (`probe.cpu:MaxPoolGrad`).
        let gx = c.probe_cpu_op(MAX_POOL_GRAD, &[&g, &idx, &x], vec![], 1);
        c.set(0, gx[0].clone());
        return Ok(());
    }
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
    let gx = c.reshape_as(&s, &x);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_int, attr_ints};
    use crate::ops::testing::Case;
    fn pool(x: &[usize], k: &[i64]) -> Case {
        Case::new("MaxPool")
            .input(x)
            .attr(attr_ints("kernel_shape", k))
    }
    /// X of shape `x` holding -1 + 0.01 k for k = 0, 1, ... in a scrambled order (37 k mod n),
    /// f32, with probe's kernels.
    fn spread(x: &[usize], k: &[i64]) -> Case {
        let n: usize = x.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| -1.0 + 0.01 * ((37 * i) % n) as f64)
            .collect();
        Case::new("MaxPool")
            .values(x, &v)
            .attr(attr_ints("kernel_shape", k))
            .f32()
            .probe_cpu()
    }
    /// Indices asked for, with `strides` and `pads` (integer: not in the loss).
    fn with_indices(x: &[usize], k: &[i64], strides: &[i64], pads: &[i64]) -> Case {
        pool(x, k)
            .attr(attr_ints("strides", strides))
            .attr(attr_ints("pads", pads))
            .outputs(2)
    }
    crate::ops::testing::gradient_and_torch_tests!(
        // Paths of the libtorch forward the cases below leave out: ceil mode's last window
        // dropped because it would start in the end padding, and Indices with explicit padding.
        torch_only = [
            with_indices(&[1, 2, 5, 5], &[2, 2], &[2, 2], &[1, 1, 1, 1])
                .attr(attr_int("ceil_mode", 1)),
            with_indices(&[1, 2, 7, 6], &[3, 3], &[2, 2], &[1, 0, 2, 1]),
            with_indices(&[2, 2, 6, 7], &[3, 2], &[2, 3], &[2, 0, 0, 1])
                .attr(attr_int("ceil_mode", 1)),
            with_indices(&[2, 3, 9], &[3], &[2], &[2, 0]).attr(attr_ints("dilations", &[2])),
        ],
        max_pool_plain = [
            pool(&[2, 3, 4, 4], &[2, 2]).attr(attr_ints("strides", &[2, 2])),
            // Overlapping windows: an element can be the maximum of several.
            pool(&[1, 2, 5, 4], &[3, 2]),
        ],
        max_pool_stride_pad_dilation_ceil = [
            pool(&[2, 2, 7, 6], &[3, 3])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 0])),
            pool(&[1, 2, 7, 7], &[2, 2])
                .attr(attr_ints("strides", &[2, 1]))
                .attr(attr_ints("dilations", &[2, 2])),
            pool(&[1, 2, 6, 5], &[3, 2])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 0, 0, 0]))
                .attr(attr_int("ceil_mode", 1)),
        ],
        // probe's kernel (MaxPoolGrad) for dX: disjoint and overlapping windows, padding, 1-D,
        // three samples over two threads; distinct values 0.01 or more apart, so that f32's
        // finite-difference steps change no window's maximum.
        max_pool_probe_cpu = [
            spread(&[3, 2, 4, 4], &[2, 2]).attr(attr_ints("strides", &[2, 2])),
            spread(&[3, 2, 5, 4], &[3, 2]),
            spread(&[3, 2, 7, 6], &[3, 3])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 0])),
            spread(&[3, 3, 9], &[3]).attr(attr_ints("strides", &[2])),
        ],
        max_pool_1d_and_given_indices = [
            pool(&[2, 3, 9], &[3])
                .attr(attr_ints("strides", &[2]))
                .attr(attr_ints("pads", &[1, 1])),
            // The forward already emits Indices (integer: not in the loss).
            pool(&[1, 2, 4, 5], &[2, 2])
                .attr(attr_ints("strides", &[2, 2]))
                .outputs(2),
        ],
    );

    /// Ties as a fresh network makes them (exact zeros after a Relu, equal plateaus), in
    /// overlapping windows, with padding, against libtorch's max_pool2d backward.
    #[test]
    fn ties_as_pytorch() {
        use crate::ops::kink_testing::{autograd, check_kinks};
        #[rustfmt::skip]
        let plateau = [
            0.0, 0.0, 0.0, 1.0,
            0.0, 0.0, 1.0, 1.0,
            2.0, 2.0, 0.0, 0.0,
            2.0, 2.0, 0.0, -0.0,
        ];
        let x: Vec<f64> = plateau.iter().chain(&[-1.0; 16]).copied().collect();
        for (k, s, p) in [(2, 1, 0), (3, 1, 1), (3, 2, 1), (2, 2, 0)] {
            let case = pool(&[1, 2, 4, 4], &[k, k])
                .attr(attr_ints("strides", &[s, s]))
                .attr(attr_ints("pads", &[p, p, p, p]));
            let case = Case {
                inputs: vec![],
                ..case
            }
            .values(&[1, 2, 4, 4], &x);
            let reference = autograd(move |x| {
                x[0].f_max_pool2d([k, k], [s, s], [p, p], [1, 1], false)
                    .unwrap()
            });
            check_kinks(case.clone(), &reference);
            check_kinks(case.f32().probe_cpu(), &reference);
        }
    }
}
