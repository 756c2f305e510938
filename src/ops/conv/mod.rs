//! Conv (opset 11; also 1): N-d convolution (1-D, 2-D, 3-D) with `strides`, `pads`, `dilations`,
//! `group`, `kernel_shape`, and `auto_pad` (NOTSET, VALID, and SAME_UPPER/SAME_LOWER when the
//! spatial dims are static). https://onnx.ai/onnx/operators/onnx__Conv.html
//!
//! `Y[n,m,o] = sum_{c,i} Xpad[n, c, o*s + i*d] W[m, c, i] + B[m]` (per group), so
//! - dX = ConvTranspose(dY, W) with the same strides, dilations, pads and group, and
//!   `output_padding = (H + pb + pe - ((k-1)d + 1)) mod s` so that it gives back exactly X's size
//!   (the rows the forward's last stride skipped get zero);
//! - dW[m,c,i] = sum_{n,o} dY[n,m,o] Xpad[n,c,o*s + i*d]: a Conv of X^T ([C, N, ..]: C images of N
//!   channels) with the kernel dY^T ([M, N, ..]) whose strides are the original dilations and
//!   dilations the original strides, same pads; it yields [C, M, k'] with k' >= k, sliced to k and
//!   transposed to [M, C, k]. Per group with Split/Concat when group > 1;
//! - dB = sum over every axis but 1 of dY.
//!
//! With [`Kernels::ProbeCpu`] (`probe grad`'s default), f32 and symmetric pads, libtorch's
//! kernels take over where they were measured faster (`runtime/cpu_ops`,
//! `examples/conv_kernels.rs`): dW and dB are one `probe.cpu:ConvGrad` node (oneDNN's
//! backward-weights, as PyTorch runs it: 2-3x faster than im2col + MatMul in ONNX Runtime); the
//! forward Conv and the stride-1 dX Conv become `probe.cpu:Conv` where [`torch_conv_pays`];
//! a grouped convolution's dX (depthwise included) is `probe.cpu:ConvGradX`, as PyTorch runs
//! it; a strided dX becomes
//! `probe.cpu:ConvGradX` (libtorch's backward-data) where [`torch_dx_pays`], else (one group, dilation 1, any pads) the phase form [`Phases`]: one
//! stride-1 Conv of dY with W's sub-kernels and `probe.cpu:Interleave`, 2-3x faster than
//! ConvTranspose there. The standard-op form stays for `probe autodiff`, for `--standard-ops`
//! and, but for the phase form, for asymmetric pads, which libtorch does not take.
use super::attrs::Attrs;
use super::rule::{Ctx, Kernels, Kind, Rule, Shapes};
use super::torch::{input, one, opt_input, TorchCtx, Value};
pub use super::window::{sizes, spatial_dims, static_kernel, TorchWindow, Window};
use crate::model::graph::{attr_int, attr_ints};
use crate::ops::rule::kernels::{CONV_GRAD, CONV_GRAD_X};
use crate::tensor::DType;
use anyhow::{anyhow, Result};
use onnx_protobuf::NodeProto;
pub use phases::{phase_dx, Phases};

mod phases;

pub static RULE: Rule = Rule::new("Conv", Kind::Structured)
    .vjp(vjp)
    .torch(torch)
    .probe_cpu_forward(probe_cpu_forward);

/// libtorch's convolution (what PyTorch's Conv layers run) with the window's strides,
/// dilations and group; asymmetric pads are applied to X first.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let (x, w) = (input(&v, 0)?, input(&v, 1)?);
    let kernel = w.size()[2..].to_vec();
    let win = Window::of(c, kernel, &sizes(x))?;
    let tw = win.torch(x, false, 0.0, |_, _| true)?;
    let group = c.attr_i("group", 1);
    one(win.convolution(&tw.x, w, opt_input(&v, 2), &tw.padding, group)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (x, w) = (c.input(0).to_string(), c.input(1).to_string());
    let wd = c.dims(&w)?;
    let kernel = match c.attr_ints("kernel_shape") {
        Some(k) => k,
        None => static_kernel(&wd, &w)?,
    };
    let xd = c.dims(&x)?;
    let win = Window::of(c, kernel, &xd[2..])?;
    let k = win.rank();
    let group = c.attr_i("group", 1);
    // probe.cpu (see the module doc): dW and dB by libtorch, dX stays a convolution (libtorch's
    // own backward-data ran 3-6x slower than a forward convolution on the flipped kernel).
    let fast = c.kernels == Kernels::ProbeCpu
        && win.pads[..k] == win.pads[k..]
        && c.dtype(&x)? == DType::F32;
    if fast && (c.needs(1) || c.has_input(2) && c.needs(2)) {
        vjp_probe_cpu(c, &g, &x, &w, &win, group)?;
    }
    // Stride 1, one group: dX[h] = sum_j dYpad[h + j d] W[k-1-j], a plain Conv of dY with the
    // kernel flipped and its two channel axes swapped, padded by (k-1)d - p on each side. A Conv
    // whose weight is a constant lets ONNX Runtime pre-pack it (and use its NCHWc kernels) when
    // the checkpoint is baked into the session; ConvTranspose is the general form.
    let flip_ok = group == 1
        && win.strides.iter().all(|&s| s == 1)
        && (0..k).all(|i| win.pads[i] <= win.span(i) - 1 && win.pads[k + i] <= win.span(i) - 1);
    // A strided dX with probe's CPU kernels, f32 and one group, any pads: the phase form
    // ([`Phases`]) where libtorch's backward-data does not take it.
    let phases = match (wd[0], wd[1]) {
        (Some(m), Some(cin))
            if c.needs(0)
                && c.kernels == Kernels::ProbeCpu
                && c.dtype(&x)? == DType::F32
                && group == 1
                && !flip_ok
                && !(fast && torch_dx_pays(wd[1], &win)) =>
        {
            Phases::of(&win, &spatial_dims(c, &x)?).map(|ph| (ph, m as i64, cin as i64))
        }
        _ => None,
    };
    if c.needs(0) && flip_ok {
        let axes: Vec<i64> = (2..2 + k as i64).collect();
        let (st, en, ax, steps) = (
            c.ints(&vec![-1; k]),
            c.ints(&vec![i64::MIN; k]),
            c.ints(&axes),
            c.ints(&vec![-1; k]),
        );
        let flipped = c.op("Slice", &[&w, &st, &en, &ax, &steps], vec![]);
        let perm: Vec<i64> = [1, 0].into_iter().chain(2..2 + k as i64).collect();
        let wt = c.transpose(&flipped, &perm);
        let pads: Vec<i64> = (0..2 * k)
            .map(|j| win.span(j % k) - 1 - win.pads[j])
            .collect();
        let gx = if fast && torch_conv_pays(wd[0], &win.kernel) {
            let attrs = vec![
                attr_ints("strides", &vec![1; k]),
                attr_ints("pads", &pads),
                attr_ints("dilations", &win.dilations),
                attr_int("group", 1),
            ];
            c.probe_cpu_op("Conv", &[&g, &wt], attrs, 1).pop().unwrap()
        } else {
            c.op(
                "Conv",
                &[&g, &wt],
                vec![
                    attr_ints("dilations", &win.dilations),
                    attr_ints("pads", &pads),
                ],
            )
        };
        c.set(0, gx);
    } else if c.needs(0) && fast && (group > 1 || torch_dx_pays(wd[1], &win)) {
        // A grouped convolution's dX (depthwise: MobileNet, EfficientNet, ConvNeXt; never
        // `flip_ok`) by libtorch's backward-data, as PyTorch runs it: ONNX Runtime's
        // ConvTranspose loops over the groups with one small GEMM each.
        let attrs = win.probe_cpu_attrs(group);
        let gx = c
            .probe_cpu_op(CONV_GRAD_X, &[&g, &x, &w], attrs, 1)
            .pop()
            .unwrap();
        c.set(0, gx);
    } else if let Some((ph, m, cin)) = phases {
        let gx = phase_dx(c.b, &g, &w, m, cin, &ph);
        c.set(0, gx);
    } else if c.needs(0) {
        let h = spatial_dims(c, &x)?;
        let mut attrs = win.onnx_attrs(&win.pads);
        attrs.push(attr_int("group", group));
        attrs.push(attr_ints("output_padding", &win.output_padding(&h)));
        let gx = c.op("ConvTranspose", &[&g, &w], attrs);
        c.set(0, gx);
    }
    if fast {
        // Done above.
    } else if c.needs(1) && group == 1 && std::env::var_os("PROBE_CONV_DW_TRICK").is_none() {
        let h = spatial_dims(c, &x)?;
        let gw = dw_im2col(c, &x, &g, &win, &h, &wd)?;
        c.set(1, gw);
    } else if c.needs(1) {
        let h = spatial_dims(c, &x)?;
        // The trick's kernel spans (Ho-1)*s + 1, so its output has k' >= k taps per axis.
        let kp: Vec<i64> = (0..k)
            .map(|i| {
                let ho = win.out(i, h[i]);
                (h[i] + win.pads[i] + win.pads[k + i] - (ho - 1) * win.strides[i] - 1)
                    / win.dilations[i]
                    + 1
            })
            .collect();
        // Its strides are the window's dilations and its dilations the strides.
        let trick = Window {
            strides: win.dilations.clone(),
            dilations: win.strides.clone(),
            ..win.clone()
        };
        let perm: Vec<i64> = [1, 0].into_iter().chain(2..2 + k as i64).collect();
        let (xs, gs) = if group == 1 {
            (vec![x.clone()], vec![g.clone()])
        } else {
            let cin = xd[1].ok_or_else(|| anyhow!("the channels of '{x}' must be static"))?;
            let m = wd[0].ok_or_else(|| anyhow!("the kernels of '{w}' must be static"))?;
            let gr = group as usize;
            let sx = c.ints(&vec![(cin / gr) as i64; gr]);
            let sg = c.ints(&vec![(m / gr) as i64; gr]);
            let xs = c.op_n("Split", &[&x, &sx], vec![attr_int("axis", 1)], gr);
            let gs = c.op_n("Split", &[&g, &sg], vec![attr_int("axis", 1)], gr);
            (xs, gs)
        };
        let mut parts = Vec::new();
        for (xg, gg) in xs.iter().zip(&gs) {
            let xt = c.transpose(xg, &perm);
            let gt = c.transpose(gg, &perm);
            let r = c.op("Conv", &[&xt, &gt], trick.onnx_attrs(&win.pads));
            let r = if kp != win.kernel {
                let starts = c.ints(&vec![0; k]);
                let ends = c.ints(&win.kernel);
                let axes = c.ints(&(2..2 + k as i64).collect::<Vec<_>>());
                c.op("Slice", &[&r, &starts, &ends, &axes], vec![])
            } else {
                r
            };
            parts.push(c.transpose(&r, &perm));
        }
        let gw = if parts.len() == 1 {
            parts.pop().unwrap()
        } else {
            let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
            c.op("Concat", &refs, vec![attr_int("axis", 0)])
        };
        c.set(1, gw);
    }
    if c.has_input(2) && c.needs(2) && !fast {
        let axes: Vec<i64> = std::iter::once(0).chain(2..2 + k as i64).collect();
        let gb = c.reduce_sum(&g, &axes, false);
        c.set(2, gb);
    }
    Ok(())
}

/// The forward node as `probe.cpu:Conv` (libtorch's convolution), when libtorch takes it: f32,
/// symmetric pads, static spatial dims; `None` leaves the standard Conv.
pub fn probe_cpu_forward(n: &NodeProto, shapes: &Shapes) -> Option<NodeProto> {
    let (x, w) = (n.input.first()?, n.input.get(1)?);
    if n.op_type != "Conv" || !n.domain.is_empty() || shapes.dtype(x)? != DType::F32 {
        return None;
    }
    let kernel = match n.attr_ints("kernel_shape") {
        Some(k) => k,
        None => static_kernel(&shapes.get(w)?.dims, w).ok()?,
    };
    let xd = &shapes.get(x)?.dims;
    let win = Window::of(n, kernel, &xd[2..]).ok()?;
    let k = win.rank();
    let group = n.attr_i("group", 1);
    // A 2-D depthwise convolution with a kernel larger than 3x3 (ConvNeXt's 7x7, EfficientNet's
    // 5x5): libtorch's channels-last kernel (see `runtime/torch_kernels.cpp`); 3x3 ones stay
    // (below).
    let depthwise = group > 1
        && k == 2
        && shapes.get(w)?.dims[1] == Some(1)
        && win.kernel.iter().product::<i64>() > 9;
    if win.pads[..k] != win.pads[k..]
        || !(depthwise || torch_conv_pays(shapes.get(w)?.dims[1], &win.kernel))
    {
        return None;
    }
    let m = crate::ops::rule::as_probe_cpu(n, win.probe_cpu_attrs(group));
    Some(m)
}

/// A 3x3 depthwise forward stays in ONNX Runtime although libtorch's was faster (torchvision
/// mobilenet_v2 at 3x224x224, batch 32, 2 threads: a pass of 7.7 s went to 6.7-7.3 s): it
/// changes the activations' float32 rounding, and in the fresh mobilenet_v2 of
/// `tests/subgradients.rs` a pre-activation of 6.7e-12 (a cancellation of terms ~1e-5) then
/// lands below the ReLU6's bound where PyTorch's lands above it: one tensor 3.2e-4 off where
/// PyTorch float32 is 6e-7 (seen again with the channels-last kernel). Larger depthwise kernels
/// (ConvNeXt's 7x7, where ONNX Runtime's forward took ~0.5 s of a 5.9 s batch of 32) go to
/// libtorch.
///
/// Whether libtorch's forward convolution (oneDNN) beats ONNX Runtime's (MLAS im2col + GEMM)
/// for `cin` input channels per group and this kernel. Measured at batch 250, 1 thread
/// (`examples/conv_kernels.rs`; ms ORT vs libtorch): 3x3 with 3..64 channels in 4.4 vs 3.9,
/// 15.5 vs 7.0 (8 -> 8, 28x28), 19.5 vs 8.4 (32 -> 32, 14x14), 24.6 vs 11.7 (64 -> 64, 7x7); but
/// one input channel 1.0 vs 3.3 and a strided 1x1 1.5 vs 4.4, where ONNX Runtime stays.
fn torch_conv_pays(cin: Option<usize>, kernel: &[i64]) -> bool {
    cin.is_some_and(|c| c >= 2) && kernel.iter().product::<i64>() > 1
}

/// Whether libtorch's backward-data (`probe.cpu:ConvGradX`) beats ONNX Runtime's ConvTranspose
/// for a strided convolution's dX, with `cin` input channels per group (dX's channels).
/// Measured on the shipped ResNet, batch 250, 2 threads, per-node minimum over 40 batches (ms,
/// ConvTranspose vs libtorch): 64 -> 32 channels, 3x3, stride 2 onto 14x14, 7.5 vs 4.4 (9.6
/// vs 6.3 in a busier run); the 1x1 stride-2 shortcut onto 14x14, 2.3 vs 2.5; in Python,
/// libtorch alone on 32 -> 16 channels onto 28x28 (oneDNN's backward-data with 16 output
/// channels in NCHW) took 14 ms a half batch for the 3x3 and 10.5 for the 1x1, against
/// ConvTranspose's 10-11 and 3.3 for the whole batch. So: 3x3-like kernels, 32+ channels.
fn torch_dx_pays(cin: Option<usize>, win: &Window) -> bool {
    cin.is_some_and(|c| c >= 32)
        && win.strides.iter().any(|&s| s > 1)
        && win.kernel.iter().product::<i64>() > 1
}

/// dW and dB as one `probe.cpu:ConvGrad` node; the outputs nobody needs (and dX, see [`vjp`])
/// are left unnamed, so libtorch does not compute them.
fn vjp_probe_cpu(c: &mut Ctx, g: &str, x: &str, w: &str, win: &Window, group: i64) -> Result<()> {
    let needs = [c.needs(1), c.has_input(2) && c.needs(2)];
    let attrs = win.probe_cpu_attrs(group);
    let outs = c.probe_cpu_outputs(CONV_GRAD, &[g, x, w], attrs, &needs);
    for (i, o) in outs.into_iter().enumerate() {
        if let Some(o) = o {
            c.set(i + 1, o);
        }
    }
    Ok(())
}

/// dW for group 1 by im2col and a batched GEMM, in the layout PyTorch's CPU backward uses:
/// `cols[n, (c,t), o] = Xpad[n, c, o*s + t*d]` for every kernel tap t comes from ONNX Runtime's
/// own Conv over the N*C input planes with a one-hot kernel per tap (so padding, strides and
/// dilations are handled by the Conv kernel, not by slices), and then
/// `dW^T[(c,t), m] = sum_n cols[n] . dY[n]^T` is one batched MatMul [N, C*T, P] x [N, P, M]
/// summed over n. ONNX Runtime's Conv on the transposed problem (the "conv trick") builds a
/// kernel as large as the output map and ran 5-20x slower on the shipped ResNet.
pub fn dw_im2col(
    c: &mut Ctx,
    x: &str,
    g: &str,
    win: &Window,
    h: &[i64],
    wd: &[Option<usize>],
) -> Result<String> {
    let k = win.rank();
    let m = wd[0].ok_or_else(|| anyhow!("the kernel count of the weight must be static"))? as i64;
    let cin =
        wd[1].ok_or_else(|| anyhow!("the input channels of the weight must be static"))? as i64;
    let taps: i64 = win.kernel.iter().product();
    let p: i64 = (0..k).map(|i| win.out(i, h[i])).product();
    // One-hot kernel [T, 1, k...]: tap t picks kernel position t (row-major).
    let mut eye = vec![0f32; (taps * taps) as usize];
    for t in 0..taps as usize {
        eye[t * taps as usize + t] = 1.0;
    }
    let mut dims = vec![taps, 1];
    dims.extend(&win.kernel);
    let eye = {
        let t = crate::model::graph::tensor_f32("", &dims, &eye);
        let e = c.op(
            "Constant",
            &[],
            vec![crate::model::graph::attr_tensor("value", t)],
        );
        c.cast_like(&e, x)
    };
    let mut planes = vec![-1, 1];
    planes.extend(h);
    let planes = c.ints(&planes);
    let xr = c.op("Reshape", &[x, &planes], vec![]);
    let cols = c.op("Conv", &[&xr, &eye], win.onnx_attrs(&win.pads));
    let cshape = c.ints(&[-1, cin * taps, p]);
    let cols = c.op("Reshape", &[&cols, &cshape], vec![]);
    let gshape = c.ints(&[-1, m, p]);
    let gr = c.op("Reshape", &[g, &gshape], vec![]);
    let gt = c.transpose(&gr, &[0, 2, 1]);
    let prod = c.op("MatMul", &[&cols, &gt], vec![]);
    let s = c.reduce_sum(&prod, &[0], false);
    let st = c.transpose(&s, &[1, 0]);
    let mut shape = vec![m, cin];
    shape.extend(&win.kernel);
    let shape = c.ints(&shape);
    Ok(c.op("Reshape", &[&st, &shape], vec![]))
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_int, attr_ints, attr_string};
    use crate::ops::testing::{check, Case};
    // ONNX Runtime's CPU Conv and ConvTranspose are float only.
    fn conv(x: &[usize], w: &[usize]) -> Case {
        Case::new("Conv").input(x).input(w).f32()
    }
    crate::ops::testing::gradient_and_torch_tests!(
        conv_plain_and_bias = conv_plain_and_bias_cases(),
        conv_stride_pad_output_padding = conv_stride_pad_output_padding_cases(),
        conv_dilation = conv_dilation_cases(),
        conv_groups = conv_groups_cases(),
        conv_1d_and_auto_pad = conv_1d_and_auto_pad_cases(),
    );
    fn conv_plain_and_bias_cases() -> [Case; 2] {
        [
            conv(&[2, 2, 5, 4], &[3, 2, 3, 2]),
            conv(&[1, 2, 4, 4], &[3, 2, 3, 3]).input(&[3]),
        ]
    }
    fn conv_stride_pad_output_padding_cases() -> [Case; 2] {
        [
            // (6 + 2 - 3) % 2 = 1: the last row of X is skipped by the forward, output_padding 1.
            conv(&[1, 2, 6, 6], &[3, 2, 3, 3])
                .input(&[3])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 1])),
            // Different strides per axis and asymmetric pads.
            conv(&[2, 1, 7, 6], &[2, 1, 3, 2])
                .attr(attr_ints("strides", &[3, 2]))
                .attr(attr_ints("pads", &[0, 1, 2, 0])),
        ]
    }
    fn conv_dilation_cases() -> [Case; 1] {
        [conv(&[1, 2, 7, 6], &[2, 2, 2, 3])
            .attr(attr_ints("dilations", &[2, 2]))
            .attr(attr_ints("strides", &[2, 1]))
            .attr(attr_ints("pads", &[1, 1, 1, 1]))]
    }
    fn conv_groups_cases() -> [Case; 2] {
        [
            conv(&[1, 4, 5, 5], &[6, 2, 3, 3])
                .input(&[6])
                .attr(attr_int("group", 2))
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 0, 1, 2])),
            // Depthwise, with dilation.
            conv(&[2, 3, 6, 5], &[3, 1, 2, 2])
                .attr(attr_int("group", 3))
                .attr(attr_ints("dilations", &[2, 1])),
        ]
    }
    fn conv_1d_and_auto_pad_cases() -> [Case; 4] {
        [
            conv(&[2, 3, 8], &[4, 3, 3])
                .input(&[4])
                .attr(attr_ints("strides", &[2]))
                .attr(attr_ints("pads", &[1, 1])),
            conv(&[1, 2, 6, 5], &[2, 2, 3, 2])
                .attr(attr_string("auto_pad", "SAME_UPPER"))
                .attr(attr_ints("strides", &[2, 2])),
            conv(&[1, 2, 5, 5], &[2, 2, 2, 2])
                .attr(attr_string("auto_pad", "SAME_LOWER"))
                .attr(attr_ints("kernel_shape", &[2, 2])),
            conv(&[1, 2, 5, 5], &[2, 2, 3, 3])
                .attr(attr_string("auto_pad", "VALID"))
                .attr(attr_ints("strides", &[2, 2])),
        ]
    }
    /// The cases above again with probe's libtorch kernels (`probe.cpu:Conv`, `ConvGrad`) where
    /// the rule emits them, against the standard-op gradient and finite differences; cases with
    /// asymmetric pads fall back to standard ops (the check then finds no probe.cpu op, so
    /// those are left out here).
    #[test]
    fn probe_cpu_kernels() {
        let [bias_stride_2, _asymmetric] = conv_stride_pad_output_padding_cases();
        let [_asymmetric, depthwise] = conv_groups_cases();
        let [conv_1d, ..] = conv_1d_and_auto_pad_cases();
        let symmetric = conv_plain_and_bias_cases()
            .into_iter()
            .chain([bias_stride_2])
            .chain(conv_dilation_cases())
            .chain([depthwise, conv_1d]);
        for c in symmetric {
            check(c.probe_cpu());
        }
        // Grouped and depthwise, strided and not: dX by libtorch (ConvGradX).
        check(
            conv(&[3, 4, 6, 5], &[4, 1, 3, 3])
                .input(&[4])
                .attr(attr_int("group", 4))
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 1]))
                .probe_cpu(),
        );
        check(
            conv(&[3, 4, 5, 5], &[6, 2, 3, 3])
                .attr(attr_int("group", 2))
                .attr(attr_ints("pads", &[1, 1, 1, 1]))
                .probe_cpu(),
        );
        // A strided dX by libtorch's backward-data (ConvGradX: 32 input channels, 3x3), three
        // samples split 2 + 1.
        check(
            conv(&[3, 32, 5, 5], &[4, 32, 3, 3])
                .input(&[4])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 1]))
                .probe_cpu(),
        );
        // Three samples over two threads: the kernels split the batch 2 + 1, and the forward
        // and stride-1 dX convolutions (3 channels in, 3x3) run in libtorch too.
        check(
            conv(&[3, 3, 5, 5], &[4, 3, 3, 3])
                .input(&[4])
                .attr(attr_ints("pads", &[1, 1, 1, 1]))
                .probe_cpu(),
        );
    }
    /// The phase form of a strided dX ([`super::Phases`]): each case must emit
    /// `probe.cpu:Interleave` (so it fails if the form stops firing) and match the standard
    /// ConvTranspose gradient to 1e-5 and finite differences.
    #[test]
    fn probe_cpu_phase_dx() {
        let phase = |c: Case| check(c.probe_cpu().expect_op("probe.cpu:Interleave"));
        let s2p1 = |c: Case| {
            c.attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 1]))
        };
        // 3x3, stride 2, pad 1 on an even input (ResNet's downsampling conv: the grid fills X)
        // and an odd one (X is one row and column short of the grid: the crop).
        phase(s2p1(conv(&[3, 3, 6, 6], &[4, 3, 3, 3]).input(&[4])));
        phase(s2p1(conv(&[3, 3, 7, 5], &[4, 3, 3, 3])));
        // 1x1, stride 2, no pad (the shortcut): only phase (0, 0) has a tap, the rest are 0;
        // even and odd.
        let s2 = |c: Case| c.attr(attr_ints("strides", &[2, 2]));
        phase(s2(conv(&[3, 4, 6, 6], &[5, 4, 1, 1])));
        phase(s2(conv(&[2, 4, 7, 5], &[5, 4, 1, 1])));
        // Stride 3: three phases per axis of one tap each; a 2x2 kernel leaves a phase with none.
        phase(
            conv(&[2, 3, 8, 7], &[4, 3, 3, 3])
                .attr(attr_ints("strides", &[3, 3]))
                .attr(attr_ints("pads", &[1, 1, 1, 1])),
        );
        phase(conv(&[2, 3, 8, 9], &[4, 3, 2, 2]).attr(attr_ints("strides", &[3, 3])));
        // Asymmetric pads and strides that differ per axis (with the bias case before it);
        // pads as large as the kernel (a begin pad of k: windows wholly in the padding, m_lo
        // capped at 0 and zero taps).
        conv_stride_pad_output_padding_cases()
            .into_iter()
            .for_each(phase);
        phase(
            conv(&[2, 2, 5, 6], &[3, 2, 3, 3])
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[3, 2, 2, 3])),
        );
        // 1-D and 3-D.
        phase(
            conv(&[2, 3, 9], &[4, 3, 3])
                .attr(attr_ints("strides", &[2]))
                .attr(attr_ints("pads", &[1, 1])),
        );
        phase(
            conv(&[2, 2, 5, 4, 5], &[3, 2, 3, 2, 3])
                .attr(attr_ints("strides", &[2, 2, 2]))
                .attr(attr_ints("pads", &[1, 0, 1, 1, 0, 1])),
        );
    }
    /// The phase form's geometry on the shipped ResNet's downsampling convolutions.
    #[test]
    fn phases_of_resnet_convs() {
        use super::{Phases, Window};
        let win = |k: i64, p: i64| Window {
            kernel: vec![k, k],
            strides: vec![2, 2],
            dilations: vec![1, 1],
            pads: vec![p; 4],
        };
        // 3x3, pad 1 onto 28x28 (dY 14x14): dX[2t] = dY[t] W[1], dX[2t+1] = dY[t] W[2] +
        // dY[t+1] W[0]: a 2-tap window per axis from m = 0, pads (0, 1).
        let ph = Phases::of(&win(3, 1), &[28, 28]).unwrap();
        assert_eq!(ph.window, [2, 2]);
        assert_eq!(ph.pads, [0, 0, 1, 1]);
        assert_eq!(ph.grid, [14, 14]);
        assert_eq!(ph.phases, [0, 1, 2, 3]);
        // Taps row-major over the 3x3 kernel, 9 = the zero tap: phase (0, 0) only W[1, 1];
        // (0, 1) W[1, 2] and W[1, 0]; (1, 1) all four corners.
        assert_eq!(ph.taps[0], [4, 9, 9, 9]);
        assert_eq!(ph.taps[1], [5, 3, 9, 9]);
        assert_eq!(ph.taps[3], [8, 6, 2, 0]);
        // Onto 27x27 (dY 14x14): the same Conv, its 28th row and column cropped.
        let ph = Phases::of(&win(3, 1), &[27, 27]).unwrap();
        assert_eq!((ph.pads, ph.grid), (vec![0, 0, 1, 1], vec![14, 14]));
        // 1x1: one block, the other three phases 0.
        let ph = Phases::of(&win(1, 0), &[14, 14]).unwrap();
        assert_eq!(
            (ph.window, ph.pads, ph.phases, ph.taps),
            (vec![1, 1], vec![0; 4], vec![0, -1, -1, -1], vec![vec![0]])
        );
        // Stride 1 and dilation are not the phase form's.
        let mut w = win(3, 1);
        w.strides = vec![1, 1];
        assert_eq!(Phases::of(&w, &[28, 28]), None);
        let mut w = win(3, 1);
        w.dilations = vec![2, 1];
        assert_eq!(Phases::of(&w, &[28, 28]), None);
    }
}
