//! Convolutions by libtorch (what PyTorch eager runs; oneDNN on x86), attributes `strides`,
//! `pads` (symmetric, ONNX order: begins then ends), `dilations`, `group`, all required:
//! - `Conv(X, W, B?) -> Y`: ONNX's Conv (libtorch's forward convolution), attribute `relu`
//!   (optional, 0 or 1: `max(Y, 0)`, a Relu after the Conv fused in by `ops/relu.rs`);
//!   for small channel counts ONNX Runtime's im2col + GEMM Conv ran ~3x slower than oneDNN's.
//! - `ConvGrad(dY, X, W) -> (dW?, dB?)`: the parameter gradients of `Y = Conv(X, W, B)` for
//!   the outputs the node names (libtorch's `convolution_backward`, PyTorch's own Conv
//!   backward; for 1x1 kernels and tiny output maps MKL's GEMM, see `dw_path` in
//!   `runtime/torch_kernels.cpp`). Not dX: libtorch's backward-data ran 3-6x slower here than a forward
//!   convolution of dY with the flipped kernel, which is how the rule builds dX.
//! - `ConvGradX(dY, X, W) -> dX`: the input gradient by libtorch's backward-data (X read for
//!   its shape only), for the strided convolutions where it beat ONNX Runtime's ConvTranspose
//!   (see `torch_dx_pays` in `ops/conv/mod.rs`).
//!
//! Why: a convolution's weight gradient `dW[m,c,t] = sum_{n,o} dY[n,m,o] Xpad[n,c,o*s + t*d]`
//! has no standard ONNX op; built from standard ops (im2col as a Conv, then a batched MatMul;
//! see `ops/conv/mod.rs`) it moves the whole im2col matrix through memory, where oneDNN's
//! backward-weights primitive fuses the two.
//!
//! Parts take samples: convolutions are independent per sample, so the parts of Y and dX are
//! disjoint rows; dW and dB are sums over samples, each part's into its own buffer, added at
//! the end. Where a one-group convolution's weights outnumber its input ([`channel_parts`]:
//! the deep stages of a ResNet on small maps), the parts take channels instead: output channels
//! for Y, dW and dB (W's rows; every sample, no sums after), input channels for dX (W's
//! columns), each part writing its own planes of the output.
use super::exec::{add_parts, bounds, deal, split, split_opt, sum_parts};
use super::ffi::{self, ConvGeometry};
use super::op::{Attrs, Call, CpuOp, FromAttrs, Io::*};
use crate::ops::rule::kernels::{CONV, CONV_GRAD, CONV_GRAD_X};

/// Convolution attributes as libtorch takes them (symmetric padding, one value per axis).
#[derive(Debug, Clone)]
pub struct ConvAttrs {
    strides: Vec<i64>,
    padding: Vec<i64>,
    dilations: Vec<i64>,
    group: i64,
    /// Conv only: Y = max(Conv(X), 0), a Relu after the Conv fused in (`ops/relu.rs`).
    relu: bool,
}

impl FromAttrs for ConvAttrs {
    fn read(a: &Attrs) -> ort::Result<ConvAttrs> {
        let strides: Vec<i64> = a.req("strides")?;
        let pads: Vec<i64> = a.req("pads")?;
        let dilations: Vec<i64> = a.req("dilations")?;
        let group: i64 = a.req("group")?;
        let r = strides.len();
        if dilations.len() != r || pads.len() != 2 * r || pads[..r] != pads[r..] {
            return Err(a.fail(format!(
                "strides {strides:?}, dilations {dilations:?} and symmetric pads expected, got \
                 pads {pads:?}"
            )));
        }
        Ok(ConvAttrs {
            padding: pads[..r].to_vec(),
            strides,
            dilations,
            group,
            relu: a.flag("relu"),
        })
    }
}

impl ConvAttrs {
    fn geometry(&self) -> ConvGeometry<'_> {
        ConvGeometry {
            strides: &self.strides,
            padding: &self.padding,
            dilations: &self.dilations,
            group: self.group,
        }
    }
}

/// `shape` with its first axis (the batch) `rows`.
fn with_rows(shape: &[i64], rows: usize) -> Vec<i64> {
    with_axis(shape, 0, rows)
}

/// `shape` with its second axis (the channels) `channels`.
fn with_channels(shape: &[i64], channels: usize) -> Vec<i64> {
    with_axis(shape, 1, channels)
}

fn with_axis(shape: &[i64], axis: usize, extent: usize) -> Vec<i64> {
    let mut s = shape.to_vec();
    s[axis] = extent as i64;
    s
}

/// Elements per sample of `shape`.
fn per_sample(shape: &[i64]) -> usize {
    shape[1..].iter().product::<i64>() as usize
}

/// `probe.cpu:Conv`: libtorch's forward convolution.
pub static CONV_OP: CpuOp<ConvAttrs> = CpuOp::new(CONV, conv).io(&[F32, F32, OptF32], &[F32]);

fn conv(a: &ConvAttrs, c: &Call) -> ort::Result<()> {
    let (xs, xv) = c.input_named(0, "X")?;
    let (ws, wv) = c.input_named(1, "W")?;
    let bv = c.optional(2)?.map(|b| b.1);
    let (rank, k) = (xs.len(), a.strides.len());
    if rank != k + 2 || ws.len() != rank {
        return Err(c.fail(format!(
            "X {:?} and W {:?} with {k} spatial axes",
            &xs[..],
            &ws[..]
        )));
    }
    // o = (h + 2p - d(k-1) - 1) / s + 1 per spatial axis (floor).
    let mut ys = vec![xs[0], ws[0]];
    for i in 0..k {
        let room = xs[2 + i] + 2 * a.padding[i] - a.dilations[i] * (ws[2 + i] - 1) - 1;
        if room < 0 {
            return Err(c.fail(format!(
                "kernel {:?} larger than padded X {:?}",
                &ws[..],
                &xs[..]
            )));
        }
        ys.push(room / a.strides[i] + 1);
    }
    let y = c.required(0, ys.clone(), "Y")?;
    let n = xs[0] as usize;
    let g = a.geometry();
    let plane = numel(&ys[2..]);
    if plane == 0 {
        return Ok(());
    }
    if let Some(cb) = channel_parts(c.parts, &xs, &ws, a.group, ws[0]) {
        // Each part: every sample, its output channels (W's and B's rows of them).
        let w_row = per_sample(&ws);
        return channel_planes(c, y, n, cb, |planes, lo, hi| {
            let (w, w_p) = (&wv[lo * w_row..hi * w_row], with_rows(&ws, hi - lo));
            let ys_p = with_channels(&ys, hi - lo);
            let b = bv.map(|b| &b[lo..hi]);
            ffi::conv((xv, &xs), (w, &w_p), b, &g, a.relu, planes, &ys_p)
        });
    }
    let (x_row, y_row) = (per_sample(&xs), per_sample(&ys));
    let b = bounds(n, c.parts.min(n.max(1)));
    let pieces = split(y, y_row, &b).into_iter().zip(b.iter().copied());
    c.run(pieces.collect(), |_, (y, (lo, hi))| {
        if hi == lo {
            return Ok(());
        }
        let x = &xv[lo * x_row..hi * x_row];
        let (xs_p, ys_p) = (with_rows(&xs, hi - lo), with_rows(&ys, hi - lo));
        let mut planes: Vec<&mut [f32]> = y.chunks_mut(plane).collect();
        ffi::conv((x, &xs_p), (wv, &ws), bv, &g, a.relu, &mut planes, &ys_p)
    })
    .map_err(|e| c.torch(e))
}

/// The output-channel ranges of the parts, when the parts should take channels rather than
/// samples: a one-group convolution whose weights outnumber its input X (e.g. ResNet's last
/// stage, 512 -> 512 3x3 on 2x2 maps at 3x64x64: W 2.4M entries, X 66K at batch 32), with
/// at least a channel a part. Taking samples, every part read and reordered all of W for a
/// few output positions (oneDNN's reorder to its blocked layout, and for dW a whole dW a part
/// summed after); taking channels, each reads its share of W once and X whole. `None`: the
/// parts take samples.
fn channel_parts(
    parts: usize,
    xs: &[i64],
    ws: &[i64],
    group: i64,
    channels: i64,
) -> Option<Vec<(usize, usize)>> {
    let by_channels =
        parts > 1 && group == 1 && xs[0] > 0 && channels >= parts as i64 && numel(ws) > numel(xs);
    by_channels.then(|| bounds(channels as usize, parts))
}

/// `f(planes, lo, hi)` on each part that holds channels `[lo, hi)` of `cb` (consecutive from
/// 0), with its planes of the [N, C, ...] output `out` (n-major).
fn channel_planes(
    c: &Call,
    out: &mut [f32],
    n: usize,
    cb: Vec<(usize, usize)>,
    f: impl Fn(&mut [&mut [f32]], usize, usize) -> Result<(), String> + Sync + Send,
) -> ort::Result<()> {
    let channels = cb.last().map_or(0, |r| r.1);
    let dealt = deal(out, n * channels, &owners(&cb), cb.len());
    let pieces: Vec<_> = dealt.into_iter().zip(cb).collect();
    c.run(pieces, |_, (mut planes, (lo, hi))| match hi > lo {
        true => f(&mut planes, lo, hi),
        false => Ok(()),
    })
    .map_err(|e| c.torch(e))
}

/// For each channel, the part whose range ([`channel_parts`]) holds it.
fn owners(ranges: &[(usize, usize)]) -> Vec<usize> {
    ranges
        .iter()
        .enumerate()
        .flat_map(|(i, &(lo, hi))| std::iter::repeat_n(i, hi - lo))
        .collect()
}

fn numel(shape: &[i64]) -> usize {
    shape.iter().product::<i64>() as usize
}

/// dY, X, W of a convolution's backward, checked against each other and the attributes.
fn backward_inputs<'c>(
    c: &Call<'c>,
    a: &ConvAttrs,
    same_batch: bool,
) -> ort::Result<[(Vec<i64>, &'c [f32]); 3]> {
    let (dy, x, w) = (c.input(0)?, c.input(1)?, c.input(2)?);
    let (dys, xs, ws) = (&dy.0, &x.0, &w.0);
    let rank = xs.len();
    if rank < 3
        || dys.len() != rank
        || ws.len() != rank
        || a.strides.len() != rank - 2
        || (same_batch && dys[0] != xs[0])
    {
        return Err(c.fail(format!(
            "dY {:?}, X {:?}, W {:?} with {} spatial axes",
            &dys[..],
            &xs[..],
            &ws[..],
            a.strides.len()
        )));
    }
    Ok([dy, x, w])
}

/// Samples `[lo, hi)` of a backward (`ins` dY, X, W): libtorch's `convolution_backward` over
/// those samples, into the part's own dX rows (`dx`) and dW, dB buffers (each only when asked).
fn backward_part(
    [(dys, dyv), (xs, xv), (ws, wv)]: &[(Vec<i64>, &[f32]); 3],
    g: &ConvGeometry,
    (lo, hi): (usize, usize),
    dx: Option<&mut [f32]>,
    [dw, db]: [Option<&mut [f32]>; 2],
) -> Result<(), String> {
    if hi == lo {
        // No samples (a batch of 0: one part, empty): dW and dB are sums over none.
        for out in [dw, db].into_iter().flatten() {
            out.fill(0.0);
        }
        return Ok(());
    }
    let (x_row, y_row) = (per_sample(xs), per_sample(dys));
    let (xs_p, dys_p) = (with_rows(xs, hi - lo), with_rows(dys, hi - lo));
    let dy = (&dyv[lo * y_row..hi * y_row], &dys_p[..]);
    let x = (&xv[lo * x_row..hi * x_row], &xs_p[..]);
    let plane = numel(&xs[2..]);
    let mut dx_planes: Option<Vec<&mut [f32]>> = dx.map(|d| d.chunks_mut(plane).collect());
    ffi::conv_grad(dy, 0, x, (wv, ws), g, dx_planes.as_deref_mut(), [dw, db])
}

/// `probe.cpu:ConvGrad`: dW and dB by libtorch's `convolution_backward`.
pub static CONV_GRAD_OP: CpuOp<ConvAttrs> =
    CpuOp::new(CONV_GRAD, conv_grad).io(&[F32, F32, F32], &[OptF32, OptF32]);

fn conv_grad(a: &ConvAttrs, c: &Call) -> ort::Result<()> {
    let ins = backward_inputs(c, a, false)?;
    let (xs, ws) = (&ins[1].0, &ins[2].0);
    // Outputs the node does not name are not computed (libtorch's output_mask).
    let (mut dw, mut db) = (c.output(0, ws.to_vec())?, c.output(1, vec![ws[0]])?);
    let n = xs[0] as usize;
    let g = a.geometry();
    if let Some(cb) = channel_parts(c.parts, xs, ws, a.group, ws[0]) {
        // Each part: every sample, dW's and dB's rows of its output channels (no sums of
        // parts after).
        let w_row = per_sample(ws);
        let pieces: Vec<_> = split_opt(dw, w_row, &cb)
            .into_iter()
            .zip(split_opt(db, 1, &cb))
            .collect();
        let [dy, x, (_, wv)] = &ins;
        return c
            .run(pieces, |i, (dw, db)| {
                let (lo, hi) = cb[i];
                if hi == lo {
                    return Ok(());
                }
                let w = (&wv[lo * w_row..hi * w_row], &with_rows(ws, hi - lo)[..]);
                let (dy, x) = ((dy.1, &dy.0[..]), (x.1, &x.0[..]));
                ffi::conv_grad(dy, lo, x, w, &g, None, [dw, db])
            })
            .map_err(|e| c.torch(e));
    }
    let parts = c.parts.min(n.max(1));
    let (wn, m) = (numel(ws), ws[0] as usize);
    // Part 0 sums into the outputs, the others into their own buffers.
    let mut dw_parts = vec![0f32; if dw.is_none() { 0 } else { wn * (parts - 1) }];
    let mut db_parts = vec![0f32; if db.is_none() { 0 } else { m * (parts - 1) }];
    let pieces: Vec<_> = sum_parts(dw.as_deref_mut(), &mut dw_parts, parts)
        .into_iter()
        .zip(sum_parts(db.as_deref_mut(), &mut db_parts, parts))
        .collect();
    let b = bounds(n, parts);
    c.run(pieces, |i, (dw, db)| {
        backward_part(&ins, &g, b[i], None, [dw, db])
    })
    .map_err(|e| c.torch(e))?;
    // dW = sum over parts (the sum over samples, split), likewise dB.
    for (out, buf) in [(dw, &dw_parts), (db, &db_parts)] {
        if let Some(out) = out {
            add_parts(out, buf);
        }
    }
    Ok(())
}

/// `probe.cpu:ConvGradX`: dX by libtorch's backward-data.
pub static CONV_GRAD_X_OP: CpuOp<ConvAttrs> =
    CpuOp::new(CONV_GRAD_X, conv_grad_x).io(&[F32, F32, F32], &[F32]);

fn conv_grad_x(a: &ConvAttrs, c: &Call) -> ort::Result<()> {
    let ins = backward_inputs(c, a, true)?;
    let (xs, ws) = (&ins[1].0, &ins[2].0);
    let dx = c.required(0, xs.to_vec(), "dX")?;
    let n = xs[0] as usize;
    let g = a.geometry();
    if numel(&xs[2..]) == 0 {
        return Ok(());
    }
    if let Some(cb) = channel_parts(c.parts, xs, ws, a.group, ws[1]) {
        // Each part: every sample, dX's planes of its input channels, from W's columns of
        // them (dX[:, c] = sum over m of dY[:, m] against W[m, c]), copied together; X's
        // same channels likewise (libtorch may read X, not only its shape).
        let [(dys, dyv), (_, xv), (_, wv)] = &ins;
        return channel_planes(c, dx, n, cb, |planes, lo, hi| {
            let (w, ws_p) = channels_of(wv, ws, lo, hi);
            let (x, xs_p) = channels_of(xv, xs, lo, hi);
            let (x, w) = ((&x[..], &xs_p[..]), (&w[..], &ws_p[..]));
            ffi::conv_grad((dyv, dys), 0, x, w, &g, Some(planes), [None, None])
        });
    }
    let b = bounds(n, c.parts.min(n.max(1)));
    let pieces = split(dx, per_sample(xs), &b)
        .into_iter()
        .zip(b.iter().copied());
    c.run(pieces.collect(), |_, (dx, r)| {
        backward_part(&ins, &g, r, Some(dx), [None, None])
    })
    .map_err(|e| c.torch(e))
}

/// Channels `[lo, hi)` (axis 1) of a tensor `t` of shape `shape`, copied together, and their
/// shape.
fn channels_of(t: &[f32], shape: &[i64], lo: usize, hi: usize) -> (Vec<f32>, Vec<i64>) {
    let (c, inner) = (shape[1] as usize, numel(&shape[2..]));
    let out: Vec<f32> = t
        .chunks(c * inner)
        .flat_map(|row| &row[lo * inner..hi * inner])
        .copied()
        .collect();
    (out, with_channels(shape, hi - lo))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rand, sums, Node};
    use super::{CONV, CONV_GRAD, CONV_GRAD_X};
    use crate::model::graph::{attr_int, attr_ints};

    /// A convolution of X [N, Ci, spatial...] by W [Co, Ci / group, kernel...]: its
    /// attributes, per spatial axis (1 to 3).
    struct Geometry<'a> {
        xs: &'a [usize],
        ws: &'a [usize],
        strides: &'a [usize],
        pads: &'a [usize],
        dilations: &'a [usize],
        group: usize,
    }

    /// `v`'s last `r` values lifted to 3 axes (leading `fill`).
    fn lift(v: &[usize], r: usize, fill: usize) -> [usize; 3] {
        let mut o = [fill; 3];
        o[3 - r..].copy_from_slice(&v[v.len() - r..]);
        o
    }

    /// Flat index `i` as coordinates over `d`, and back.
    fn coords(i: usize, d: [usize; 3]) -> [usize; 3] {
        [i / (d[1] * d[2]), i / d[2] % d[1], i % d[2]]
    }
    fn flat(c: [usize; 3], d: [usize; 3]) -> usize {
        (c[0] * d[1] + c[1]) * d[2] + c[2]
    }

    fn numel(s: &[usize]) -> usize {
        s.iter().product()
    }

    impl Geometry<'_> {
        /// Y's shape: `o = (h + 2p - d (k - 1) - 1) / s + 1` per spatial axis.
        fn ys(&self) -> Vec<usize> {
            let mut ys = vec![self.xs[0], self.ws[0]];
            for a in 0..self.strides.len() {
                let (h, k) = (self.xs[2 + a], self.ws[2 + a]);
                let room = h + 2 * self.pads[a] - self.dilations[a] * (k - 1) - 1;
                ys.push(room / self.strides[a] + 1);
            }
            ys
        }

        /// Every tap of the definition `Y[n, m, o] += X[n, g Cg + c, o s + t d - p] W[m, c, t]`
        /// (g = m's group, Cg = Ci / group) that reads X, not padding: [y, x, w] indices.
        fn taps(&self) -> Vec<[usize; 3]> {
            let r = self.strides.len();
            let [xd, kd, yd] = [self.xs, self.ws, &self.ys()].map(|v| lift(v, r, 1));
            let [s, d, p] = [self.strides, self.dilations, self.pads].map(|v| lift(v, r, 0));
            let [xp, kp, yp] = [xd, kd, yd].map(|v| numel(&v));
            let (co, cg) = (self.ws[0], self.ws[1]);
            let mut taps = vec![];
            for (n, m, oi, c, ti) in (0..self.xs[0] * co * yp * cg * kp).map(|i| {
                let (rest, ti) = (i / kp, i % kp);
                (
                    rest / (cg * yp * co),
                    rest / (cg * yp) % co,
                    rest / cg % yp,
                    rest % cg,
                    ti,
                )
            }) {
                let (o, t) = (coords(oi, yd), coords(ti, kd));
                let h = [0, 1, 2].map(|a| (o[a] * s[a] + t[a] * d[a]).wrapping_sub(p[a]));
                if (0..3).any(|a| h[a] >= xd[a]) {
                    continue; // padding (below 0 wraps to a huge index)
                }
                let g = m / (co / self.group);
                let x = (n * self.xs[1] + g * cg + c) * xp + flat(h, xd);
                taps.push([(n * co + m) * yp + oi, x, (m * cg + c) * kp + ti]);
            }
            taps
        }

        fn node(&self, op: &'static str) -> Node {
            let ints = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
            let pads = ints(&[self.pads, self.pads].concat());
            Node::new(op)
                .attr(attr_ints("strides", &ints(self.strides)))
                .attr(attr_ints("pads", &pads))
                .attr(attr_ints("dilations", &ints(self.dilations)))
                .attr(attr_int("group", self.group as i64))
        }

        /// Random dY (Y's shape), X and W (seeded from `seed`).
        fn operands(&self, seed: u64) -> [Vec<f32>; 3] {
            [numel(&self.ys()), numel(self.xs), numel(self.ws)]
                .into_iter()
                .zip(seed..)
                .map(|(n, seed)| rand(n, seed))
                .collect::<Vec<_>>()
                .try_into()
                .unwrap()
        }
    }

    /// A geometry: X's and W's shapes, strides, pads, dilations, group.
    const fn geo(
        xs: &'static [usize],
        ws: &'static [usize],
        strides: &'static [usize],
        pads: &'static [usize],
        dilations: &'static [usize],
        group: usize,
    ) -> Geometry<'static> {
        Geometry {
            xs,
            ws,
            strides,
            pads,
            dilations,
            group,
        }
    }

    /// N = 5 (the parts take samples: 2, 2, 1 at three threads); 1, 2 and 3 spatial axes with
    /// strides, padding, dilations and groups; the last a 2-D depthwise one (two kernels a
    /// channel), which libtorch runs channels-last; then four whose dW goes by MKL's GEMM
    /// (`dw_path` in `runtime/torch_kernels.cpp`): 2x2 output maps (strided, padded, dilated)
    /// and a 1x1 kernel onto 3x3 (im2col, one GEMM), a 1x1 kernel onto 4x4 (X as it lies, a
    /// GEMM a sample) and a strided one onto 5x5 (subsampled by im2col, a GEMM a sample); then
    /// five whose weights outnumber X, where the parts take channels ([`super::channel_parts`]:
    /// 7 output channels as 3, 2, 2 at three threads, and dX's input channels likewise): 2x2
    /// output maps (dW by GEMM), strided, a 3x3 map (dW by oneDNN), 1-D, and a 1x1 kernel.
    const GEOMETRIES: [Geometry; 13] = [
        geo(&[5, 4, 11, 9], &[6, 2, 3, 2], &[2, 1], &[1, 0], &[1, 2], 2),
        geo(&[5, 3, 17], &[4, 3, 3], &[3], &[2], &[2], 1),
        geo(
            &[5, 2, 4, 5, 6],
            &[4, 1, 2, 2, 3],
            &[1, 2, 1],
            &[0, 1, 1],
            &[1, 1, 2],
            2,
        ),
        geo(&[5, 3, 9, 8], &[6, 1, 3, 3], &[1, 2], &[1, 1], &[2, 1], 3),
        geo(&[5, 8, 4, 2], &[6, 8, 3, 2], &[2, 1], &[1, 1], &[1, 2], 1),
        geo(&[5, 4, 3, 3], &[5, 4, 1, 1], &[1, 1], &[0, 0], &[1, 1], 1),
        geo(&[5, 7, 4, 4], &[3, 7, 1, 1], &[1, 1], &[0, 0], &[1, 1], 1),
        geo(&[5, 3, 9, 10], &[4, 3, 1, 1], &[2, 2], &[0, 0], &[1, 1], 1),
        geo(&[5, 4, 2, 2], &[7, 4, 3, 3], &[1, 1], &[1, 1], &[1, 1], 1),
        geo(&[5, 3, 3, 4], &[7, 3, 3, 3], &[2, 2], &[1, 1], &[1, 1], 1),
        geo(&[5, 3, 3, 3], &[7, 3, 3, 3], &[1, 1], &[1, 1], &[1, 1], 1),
        geo(&[5, 4, 3], &[7, 4, 3], &[1], &[1], &[1], 1),
        geo(&[5, 16, 1, 1], &[7, 16, 1, 1], &[1, 1], &[0, 0], &[1, 1], 1),
    ];

    /// The geometries meant to take channels do at three threads, the others do not.
    #[test]
    fn channel_parts_where_weights_outnumber_x() {
        let i64s = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
        for (i, g) in GEOMETRIES.iter().enumerate() {
            let (xs, ws, group) = (i64s(g.xs), i64s(g.ws), g.group as i64);
            let outs = super::channel_parts(3, &xs, &ws, group, ws[0]);
            let ins = super::channel_parts(3, &xs, &ws, group, ws[1]);
            assert_eq!(outs.is_some(), i >= 8, "geometry {i}");
            assert_eq!(ins.is_some(), i >= 8 && ws[1] >= 3, "geometry {i}");
        }
        assert_eq!(
            super::channel_parts(3, &[5, 4, 2, 2], &[7, 4, 3, 3], 1, 7),
            Some(vec![(0, 3), (3, 5), (5, 7)])
        );
        assert_eq!(
            super::owners(&[(0, 3), (3, 5), (5, 7)]),
            [0, 0, 0, 1, 1, 2, 2]
        );
        // One part, an empty batch, too few channels: samples.
        assert!(super::channel_parts(1, &[5, 4, 2, 2], &[7, 4, 3, 3], 1, 7).is_none());
        assert!(super::channel_parts(3, &[0, 4, 2, 2], &[7, 4, 3, 3], 1, 7).is_none());
        assert!(super::channel_parts(8, &[5, 4, 2, 2], &[7, 4, 3, 3], 1, 7).is_none());
    }

    #[test]
    fn conv_with_bias_and_relu() {
        for (i, g) in GEOMETRIES.iter().enumerate() {
            let ([_, x, w], b, ys) = (g.operands(1), rand(g.ws[0], 4), g.ys());
            // A bias on the first geometry and on three of those taking channels.
            let (bias, plane) = (i == 0 || (i >= 8 && i % 2 == 0), numel(&ys[2..]));
            let biases = (0..numel(&ys)).filter(|_| bias);
            let terms = g
                .taps()
                .into_iter()
                .map(|[y, xi, wi]| (y, x[xi] as f64 * w[wi] as f64));
            let (y, mags) = sums(
                numel(&ys),
                terms.chain(biases.map(|j| (j, b[j / plane % ys[1]] as f64))),
            );
            for relu in [0, 1] {
                let want: Vec<f64> = y
                    .iter()
                    .map(|&v| if relu == 1 { v.max(0.0) } else { v })
                    .collect();
                let n = g
                    .node(CONV)
                    .attr(attr_int("relu", relu))
                    .input(g.xs, &x)
                    .input(g.ws, &w);
                let n = if bias {
                    n.input(&[g.ws[0]], &b)
                } else {
                    n.absent()
                };
                // A sum over the taps of one output and its bias.
                n.output_sums(&ys, &want, &mags, numel(&g.ws[1..]) + 1)
                    .check();
            }
        }
    }

    /// A backward node `op(dY, X, W)` of `g` with random operands (seeded from `seed`), the
    /// operands, Y's shape.
    fn backward(g: &Geometry, op: &'static str, seed: u64) -> (Node, [Vec<f32>; 3], Vec<usize>) {
        let ([dy, x, w], ys) = (g.operands(seed), g.ys());
        let n = g.node(op).input(&ys, &dy).input(g.xs, &x).input(g.ws, &w);
        (n, [dy, x, w], ys)
    }

    #[test]
    fn conv_grad_weights_and_bias() {
        for g in &GEOMETRIES {
            let (_, [dy, x, w], ys) = backward(g, CONV_GRAD, 5);
            let dw = sums(
                w.len(),
                g.taps()
                    .into_iter()
                    .map(|[y, xi, wi]| (wi, dy[y] as f64 * x[xi] as f64)),
            );
            let plane = numel(&ys[2..]);
            let db = sums(
                ys[1],
                dy.iter()
                    .enumerate()
                    .map(|(j, &v)| (j / plane % ys[1], v as f64)),
            );
            // Sums over samples and positions (libtorch's), then the parts' added in f32.
            let chain = numel(&ys) / ys[1] + 3;
            for named in [[true, true], [true, false], [false, true]] {
                let mut n = backward(g, CONV_GRAD, 5).0;
                for (named, (shape, (want, mags))) in
                    named.into_iter().zip([(g.ws, &dw), (&ys[1..2], &db)])
                {
                    n = match named {
                        true => n.output_sums(shape, want, mags, chain),
                        false => n.unnamed(),
                    };
                }
                n.check();
            }
        }
    }

    #[test]
    fn conv_grad_x_scatters_dy() {
        for g in &GEOMETRIES {
            let (n, [dy, x, w], _) = backward(g, CONV_GRAD_X, 8);
            let (dx, mags) = sums(
                x.len(),
                g.taps()
                    .into_iter()
                    .map(|[y, xi, wi]| (xi, dy[y] as f64 * w[wi] as f64)),
            );
            // A sum over the output channels and taps that reach each element.
            n.output_sums(g.xs, &dx, &mags, numel(g.ws) / g.ws[1])
                .check();
        }
    }

    #[test]
    fn empty_batch_and_checks() {
        let g = Geometry {
            xs: &[0, 4, 11, 9],
            ..GEOMETRIES[0]
        };
        let (ys, w) = (g.ys(), rand(numel(g.ws), 10));
        let n = g.node(CONV).input(g.xs, &[]).input(g.ws, &w).absent();
        n.output(&ys, &[], 0.0).check();
        let n = g
            .node(CONV_GRAD_X)
            .input(&ys, &[])
            .input(g.xs, &[])
            .input(g.ws, &w);
        n.output(g.xs, &[], 0.0).check();
        // No samples: dW and dB are sums over none.
        let n = g
            .node(CONV_GRAD)
            .input(&ys, &[])
            .input(g.xs, &[])
            .input(g.ws, &w);
        let n = n.output(g.ws, &vec![0.0; w.len()], 0.0);
        n.output(&[6], &[0.0; 6], 0.0).check();
        // Asymmetric pads; a kernel larger than padded X.
        let n = Node::new(CONV)
            .attr(attr_ints("strides", &[1]))
            .attr(attr_ints("pads", &[0, 1]));
        let n = n
            .attr(attr_ints("dilations", &[1]))
            .attr(attr_int("group", 1));
        let n = n
            .input(&[1, 1, 4], &[0.0; 4])
            .input(&[1, 1, 2], &[0.0; 2])
            .absent();
        n.output(&[1, 1, 4], &[0.0; 4], 0.0)
            .fails("symmetric pads expected, got pads [0, 1]");
        let g = Geometry {
            xs: &[1, 4, 9, 1],
            ..GEOMETRIES[0]
        };
        let n = g
            .node(CONV)
            .input(g.xs, &[0.0; 36])
            .input(g.ws, &w)
            .absent();
        let what = "kernel [6, 2, 3, 2] larger than padded X [1, 4, 9, 1]";
        n.output(&[1, 6, 5, 1], &[0.0; 30], 0.0).fails(what);
    }
}
