//! AveragePool (opset 19; also 7, 10, 11): any spatial rank, `kernel_shape`, `strides`, `pads`,
//! `dilations`, `ceil_mode`, `count_include_pad`, `auto_pad`.
//! https://onnx.ai/onnx/operators/onnx__AveragePool.html
//!
//! Y is linear: each output is the sum of its window's real elements divided by a per-window
//! count D, so dX = ConvTranspose(dY / D, ones kernel) with the pool's strides, dilations and
//! pads, run on dY reshaped to [N*C, 1, ...] (one channel, so C need not be known) and cropped or
//! padded (end pads, output_padding) to exactly X's size.
//! - Every window full (no padding, or `count_include_pad = 1`) and no `ceil_mode` window running
//!   past the end: D = prod(kernel), folded into the kernel.
//! - Otherwise D varies at the borders; rather than restate the runtime's rule, 1/D is measured:
//!   AveragePool(ones) = valid/D and valid = Conv(ones, ones kernel), both on [1, 1, H, W].
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use super::window::{sizes, spatial_dims, Window};
use crate::model::graph::attr_ints;
use anyhow::{anyhow, bail, Result};

pub static RULE: Rule = Rule::new("AveragePool", Kind::Linear).vjp(vjp).torch(torch);

/// libtorch's avg_pool{1,2,3}d (what PyTorch's AvgPool runs) when the pads are symmetric, at
/// most half the kernel, and there is no dilation: its divisors are ONNX's (`count_include_pad`
/// counts the pads, not the ceil-mode overhang). Otherwise by definition: window sums by a
/// depthwise convolution with a ones kernel over X padded with zeros to the output's extent,
/// divided by the counts, the same convolution over a mask of what counts (the input, and the
/// explicit pads with `count_include_pad`).
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let kernel = c
        .attr_ints("kernel_shape")
        .ok_or_else(|| anyhow!("AveragePool without kernel_shape"))?;
    let win = Window::of(c, kernel, &sizes(x))?;
    let ceil = c.attr_i("ceil_mode", 0) != 0;
    let include = c.attr_i("count_include_pad", 0) != 0;
    let plain = win.dilations.iter().all(|&d| d == 1);
    let tw = win.torch(x, ceil, 0.0, |i, p| plain && 2 * p <= win.kernel[i])?;
    let (k, s, p) = (
        win.kernel.as_slice(),
        win.strides.as_slice(),
        tw.padding.as_slice(),
    );
    if tw.direct {
        return one(match win.rank() {
            1 => x.f_avg_pool1d(k, s, p, ceil, include)?,
            2 => x.f_avg_pool2d(k, s, p, ceil, include, None::<i64>)?,
            3 => x.f_avg_pool3d(k, s, p, ceil, include, None::<i64>)?,
            r => bail!("AveragePool over {r} spatial axes (libtorch has 1 to 3)"),
        });
    }
    let r = win.rank();
    let ch = x.size()[1];
    let zeros = vec![0; r];
    let opts = (x.kind(), x.device());
    let mut kshape = vec![ch, 1];
    kshape.extend(k);
    let ones_k = tch::Tensor::f_ones(kshape.as_slice(), opts)?;
    let sum = win.convolution(&tw.x, &ones_k, None, &zeros, ch)?;
    // The mask: 1 on the input (and on the explicit pads with count_include_pad), 0 elsewhere
    // in the extent the windows cover.
    let h = &x.size()[2..];
    let mut mshape = vec![1, 1];
    mshape.extend(h);
    let mut mask = tch::Tensor::f_ones(mshape.as_slice(), opts)?;
    let torch_order = |pairs: Vec<(i64, i64)>| -> Vec<i64> {
        pairs.into_iter().rev().flat_map(|(b, e)| [b, e]).collect()
    };
    if include {
        let pads: Vec<(i64, i64)> = (0..r).map(|i| (win.pads[i], win.pads[r + i])).collect();
        mask = mask.f_pad(torch_order(pads).as_slice(), "constant", 1.0)?;
        let rest: Vec<(i64, i64)> = (0..r)
            .map(|i| {
                (
                    tw.begin[i] - win.pads[i],
                    tw.extent[i] - tw.begin[i] - h[i] - win.pads[r + i],
                )
            })
            .collect();
        mask = mask.f_pad(torch_order(rest).as_slice(), "constant", 0.0)?;
    } else {
        let pads: Vec<(i64, i64)> = (0..r)
            .map(|i| (tw.begin[i], tw.extent[i] - tw.begin[i] - h[i]))
            .collect();
        mask = mask.f_pad(torch_order(pads).as_slice(), "constant", 0.0)?;
    }
    let mut ones = vec![1, 1];
    ones.extend(k);
    let ones = tch::Tensor::f_ones(ones.as_slice(), opts)?;
    let count = win.convolution(&mask, &ones, None, &zeros, 1)?;
    one(sum.f_div(&count)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let (x, y) = (c.input(0).to_string(), c.output(0).to_string());
    let kernel = c
        .attr_ints("kernel_shape")
        .ok_or_else(|| anyhow!("AveragePool without kernel_shape"))?;
    let xd = c.dims(&x)?;
    let win = Window::of(c, kernel, &xd[2..])?;
    let k = win.rank();
    let h = spatial_dims(c, &x)?;
    let ho = spatial_dims(c, &y)?;
    // The transposed convolution covers full = (Ho-1)*s + span from -pb; X needs H of it.
    let mut end_pads = vec![0; k];
    let mut output_padding = vec![0; k];
    let mut clipped = false;
    for i in 0..k {
        let full = (ho[i] - 1) * win.strides[i] + win.span(i);
        let t = full - h[i] - win.pads[i];
        if t >= 0 {
            end_pads[i] = t;
        } else {
            output_padding[i] = -t;
        }
        clipped |= full > h[i] + win.pads[i] + win.pads[k + i];
    }
    let padded = win.pads.iter().any(|&p| p != 0);
    let include_pad = c.attr_i("count_include_pad", 0) != 0;
    let uniform = !clipped && (!padded || include_pad);

    let taps: i64 = win.kernel.iter().product();
    let kshape: Vec<i64> = [1, 1]
        .into_iter()
        .chain(win.kernel.iter().copied())
        .collect();
    let kshape = c.ints(&kshape);
    let kv = c.scalar(if uniform { 1.0 / taps as f64 } else { 1.0 }, &x)?;
    let ones_k = c.op("Expand", &[&kv, &kshape], vec![]);
    let g = if uniform {
        g
    } else {
        let one = c.scalar(1.0, &x)?;
        let s: Vec<i64> = [1, 1].into_iter().chain(h.iter().copied()).collect();
        let s = c.ints(&s);
        let ones = c.op("Expand", &[&one, &s], vec![]);
        let ap = c.op("AveragePool", &[&ones], c.node.attribute.clone());
        // End pads that give the Conv the windows running past the end, too.
        let conv_pads: Vec<i64> = (0..k)
            .map(|i| win.pads[i])
            .chain((0..k).map(|i| win.pads[k + i].max(end_pads[i])))
            .collect();
        let valid = c.op("Conv", &[&ones, &ones_k], win.onnx_attrs(&conv_pads));
        let valid = c.op("Max", &[&valid, &one], vec![]);
        let wgt = c.op("Div", &[&ap, &valid], vec![]);
        c.op("Mul", &[&g, &wgt], vec![])
    };
    let rs: Vec<i64> = [-1, 1].into_iter().chain(vec![0; k]).collect();
    let rs = c.ints(&rs);
    let gr = c.op("Reshape", &[&g, &rs], vec![]);
    let pads: Vec<i64> = win.pads[..k].iter().copied().chain(end_pads).collect();
    let mut attrs = win.onnx_attrs(&pads);
    attrs.push(attr_ints("output_padding", &output_padding));
    let gx = c.op("ConvTranspose", &[&gr, &ones_k], attrs);
    let gx = c.reshape_as(&gx, &x);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_int, attr_ints};
    use crate::ops::testing::Case;
    fn pool(x: &[usize], k: &[i64]) -> Case {
        Case::new("AveragePool")
            .input(x)
            .attr(attr_ints("kernel_shape", k))
            .f32()
    }
    crate::ops::testing::gradient_and_torch_tests!(
        // Paths of the libtorch forward the cases below leave out: libtorch's own ceil mode with
        // symmetric pads, its last window dropped because it would start in the end padding.
        torch_only = [0, 1].into_iter().flat_map(|include| {
            [
                pool(&[1, 2, 5, 5], &[2, 2])
                    .attr(attr_ints("strides", &[2, 2]))
                    .attr(attr_ints("pads", &[1, 1, 1, 1]))
                    .attr(attr_int("ceil_mode", 1))
                    .attr(attr_int("count_include_pad", include)),
                pool(&[1, 1, 8, 7], &[3, 3])
                    .attr(attr_ints("strides", &[2, 2]))
                    .attr(attr_ints("pads", &[1, 1, 1, 1]))
                    .attr(attr_int("ceil_mode", 1))
                    .attr(attr_int("count_include_pad", include)),
            ]
        }),
        average_pool_uniform = [
            pool(&[2, 3, 4, 4], &[2, 2]).attr(attr_ints("strides", &[2, 2])),
            // (7 - 3) % 2 = 0 on one axis, (6 - 2) % 3 = 1 on the other: output_padding 1.
            pool(&[1, 2, 7, 6], &[3, 2]).attr(attr_ints("strides", &[2, 3])),
            pool(&[1, 2, 6, 6], &[3, 3])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 0]))
                .attr(attr_int("count_include_pad", 1)),
            pool(&[2, 2, 9], &[3])
                .attr(attr_ints("strides", &[2]))
                .attr(attr_ints("dilations", &[2])),
        ],
        average_pool_border_counts = [
            // Padding excluded from the count: smaller divisors at the borders.
            pool(&[1, 2, 6, 5], &[3, 3])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 1])),
            // ceil_mode: a last window running past the end.
            pool(&[1, 2, 6, 6], &[3, 2])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_int("ceil_mode", 1)),
            pool(&[1, 2, 6, 7], &[3, 3])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 0, 1, 1]))
                .attr(attr_int("ceil_mode", 1))
                .attr(attr_int("count_include_pad", 1)),
        ],
    );
}
