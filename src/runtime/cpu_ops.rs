//! The `probe.cpu` custom-operator domain: CPU kernels for gradient ops that standard ONNX ops
//! run too slowly on ONNX Runtime's CPU provider (convolutions by libtorch, what PyTorch eager
//! runs, oneDNN on x86; elementwise gradients in plain Rust), registered on every session
//! [`super::session`] opens.
//!
//! Why: a convolution's weight gradient `dW[m,c,t] = sum_{n,o} dY[n,m,o] Xpad[n,c,o*s + t*d]`
//! has no standard ONNX op; built from standard ops (im2col as a Conv, then a batched MatMul;
//! see `ops/conv.rs`) it moves the whole im2col matrix through memory and took ~20 ms of a
//! 95 ms batch on the hidden CNN, where oneDNN's backward-weights primitive fuses the two.
//!
//! The gradient rules emit these ops only when asked ([`crate::autodiff::grad::Kernels::ProbeCpu`],
//! the default of `probe grad` on CPU); the standard-op form stays what `probe autodiff` writes
//! and what `probe grad --standard-ops` runs, and the tests hold the two to each other.
//!
//! Ops (domain `probe.cpu`, version 1), attributes `strides`, `pads` (symmetric, ONNX order:
//! begins then ends), `dilations`, `group`, all required:
//! - `Conv(X, W, B?) -> Y`: ONNX's Conv (libtorch's forward convolution); for small channel
//!   counts ONNX Runtime's im2col + GEMM Conv ran ~3x slower than oneDNN's.
//! - `ConvGrad(dY, X, W) -> (dW?, dB?)`: the parameter gradients of `Y = Conv(X, W, B)` for
//!   the outputs the node names (an empty name: not computed). Not dX: libtorch's backward-data
//!   ran 3-6x slower here than a forward convolution of dY with the flipped kernel, which is
//!   how the rule builds dX.
//!
//! and, in plain Rust, one pass each where the standard form takes several over the same large
//! tensors (each pass of a [250, 8, 28, 28] f32 tensor moves 6 MB):
//! - `ReluGrad(dY, X) -> dX`: `dX = dY * (X > 0)` (standard: Greater, Cast, Mul);
//! - `BatchNormalizationGrad(dY, X, k, mean) -> (dX?, sum_dY?, sum_dY_xc?)`, inference mode,
//!   per channel c (axis 1): `dX = dY k[c]`, `sum_dY[c] = sum dY`, `sum_dY_xc[c] =
//!   sum dY (X - mean[c])`, the sums over every axis but 1 (standard: Mul, ReduceSum, Sub, Mul,
//!   Mul, ReduceSum). The rule turns the sums into the scale, bias, mean and var gradients;
//! - `BatchNormalization(X, scale, B, mean, var) -> Y`, inference mode, attributes `epsilon`
//!   and `relu`: `Y = X k[c] + (B[c] - mean[c] k[c])` with `k = scale / sqrt(var + epsilon)`,
//!   then `max(Y, 0)` when `relu` is 1 (a Relu fused in, `autodiff/fuse.rs`);
//! - `AddRelu(A, B) -> Y = max(A + B, 0)`, one shape (a residual Add and its Relu);
//! - `SumReluGrad(dY1, dY2, X) -> dX = (dY1 + dY2) (X > 0)` (a gradient Sum and the ReluGrad
//!   it feeds);
//! - `ReluBatchNormalizationGrad(dY, Y, X, k, mean, dY2?) -> (dX?, sum_G?, sum_G_xc?)`:
//!   BatchNormalizationGrad of `G = (dY + dY2) (Y > 0)` (a ReluGrad or SumReluGrad and the
//!   BatchNormalizationGrad it feeds);
//! - `ConvGradX(dY, X, W) -> dX` (attributes as Conv): libtorch's backward-data, for the
//!   strided convolutions where it beat ONNX Runtime's ConvTranspose (see `ops/conv.rs`);
//! - `Interleave(Z) -> Y`, attributes `blocks`, `phases`, `sizes`: the other strided dX, the
//!   phase form's assembly (`ops/conv.rs`, [`Phased`] here): DepthToSpace of Z's phase blocks
//!   with zero blocks and a crop, in one pass (a `Simple` op, at the end of this file).
//!
//! For transformers (the "Transformer kernels" section below; one operator type, `Simple`):
//! `MatMul` (transA/transB) and `MatMulAdd` by libtorch (MKL's GEMM), `Softmax`,
//! `LogSoftmaxGrad` and `GeluGrad` by libtorch's vectorized kernels, `Transpose` (runs copied,
//! or libtorch's strided copy), and in Rust `SoftmaxGrad`, `LayerNormalization` and
//! `LayerNormalizationGrad` (one pass per row), `ReduceSumLeading` (bias gradients),
//! `GatherGrad` and `GatherElementsGrad` (rows or elements added in place, in order), and
//! `ScaledDotProductAttention` / `ScaledDotProductAttentionGrad` (libtorch's flash attention
//! for CPU, one node each way for what the exporter writes as ~10 forward ops; fused before
//! differentiation by `ops/scaled_dot_product_attention.rs`). Each op's maths is at its
//! kernel; the rules that emit them say when (`ops/*.rs`).
//!
//! Threads: libtorch runs single-threaded (its intra-op count is set to 1 where these graphs
//! run) and each kernel splits the batch into one part per ONNX Runtime intra-op thread, run
//! on ONNX Runtime's own pool (`KernelContext_ParallelFor`). Two pools, each with as many
//! spinning threads as cores, would oversubscribe the cores: that ran 2x slower at 2 threads.
//! Convolutions are independent per sample, so the parts of Y and dX are disjoint slices;
//! dW and dB are sums over samples, each part's into its own buffer, added at the end.
//!
//! Memory: libtorch allocates each result (then copied into ONNX Runtime's buffer) with malloc,
//! a few MB a part, on ONNX Runtime's threads. glibc hands such blocks back to the kernel on
//! free (munmap above its mmap threshold, heap trimming above its trim threshold), so every
//! batch faulted the same pages in again: ~16,000 page faults a batch of 250 on the shipped
//! ResNet, ~2 s of system time over 40 batches. [`keep_freed_memory`] keeps freed memory in the
//! process instead.
use anyhow::Result;
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;
use std::os::raw::c_char;

/// The domain name the gradient rules write on the nodes.
pub const DOMAIN: &str = "probe.cpu";

/// `n` as the `probe.cpu` op of the same type, name, inputs and outputs, with `attribute`: the
/// graph rewrites' forward replacements (`probe_cpu_forward` in `ops/*.rs`).
pub fn as_probe_cpu(
    n: &onnx_protobuf::NodeProto,
    attribute: Vec<onnx_protobuf::AttributeProto>,
) -> onnx_protobuf::NodeProto {
    let mut m = n.clone();
    m.domain = DOMAIN.into();
    m.attribute = attribute;
    m
}

extern "C" {
    fn probe_conv(
        x: *const f32,
        x_shape: *const i64,
        w: *const f32,
        w_shape: *const i64,
        b: *const f32,
        y_shape: *const i64,
        rank: i64,
        stride: *const i64,
        padding: *const i64,
        dilation: *const i64,
        groups: i64,
        relu: i32,
        y: *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn probe_conv_grad(
        dy: *const f32,
        dy_shape: *const i64,
        x: *const f32,
        x_shape: *const i64,
        w: *const f32,
        w_shape: *const i64,
        rank: i64,
        stride: *const i64,
        padding: *const i64,
        dilation: *const i64,
        groups: i64,
        dx: *mut f32,
        dw: *mut f32,
        db: *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

/// The `probe.cpu` domain with every op, for `SessionBuilder::with_operators`; `threads` is the
/// session's intra-op thread count (the kernels split their batch that many ways).
pub fn domain(threads: usize) -> Result<OperatorDomain> {
    keep_freed_memory();
    let parts = threads.max(1);
    let mut d = OperatorDomain::new(DOMAIN)?
        .add(Conv { parts })?
        .add(ConvGrad { parts })?
        .add(ReluGrad { parts })?
        .add(BatchNormalizationGrad { parts })?
        .add(BatchNormalization { parts })?
        .add(AddRelu { parts })?
        .add(SumReluGrad { parts })?
        .add(ReluBatchNormalizationGrad { parts })?
        .add(ConvGradX { parts })?;
    for op in simple_ops(parts) {
        d = d.add(op)?;
    }
    Ok(d)
}

/// Convolution attributes as libtorch takes them (symmetric padding, one value per axis).
#[derive(Debug, Clone)]
struct ConvAttrs {
    node: String,
    strides: Vec<i64>,
    padding: Vec<i64>,
    dilations: Vec<i64>,
    group: i64,
}

impl ConvAttrs {
    fn read(k: &KernelContext, op: &str) -> ort::Result<ConvAttrs> {
        let node = k.node_name().unwrap_or_default();
        let ints = |name: &str| -> ort::Result<Vec<i64>> {
            k.get::<Vec<i64>>(name).ok_or_else(|| {
                ort::Error::new(format!(
                    "{DOMAIN}:{op} node '{node}': attribute '{name}' missing"
                ))
            })
        };
        let (strides, pads, dilations) = (ints("strides")?, ints("pads")?, ints("dilations")?);
        let group = k.get::<i64>("group").ok_or_else(|| {
            ort::Error::new(format!(
                "{DOMAIN}:{op} node '{node}': attribute 'group' missing"
            ))
        })?;
        let r = strides.len();
        if dilations.len() != r || pads.len() != 2 * r || pads[..r] != pads[r..] {
            return Err(ort::Error::new(format!(
                "{DOMAIN}:{op} node '{node}': strides {strides:?}, dilations {dilations:?} and \
                 symmetric pads expected, got pads {pads:?}"
            )));
        }
        Ok(ConvAttrs {
            node,
            padding: pads[..r].to_vec(),
            strides,
            dilations,
            group,
        })
    }
}

/// Batch rows `[begin, end)` of part `i` of `parts` over `n` samples (the first `n % parts`
/// parts take one more).
fn part(n: i64, parts: usize, i: usize) -> (i64, i64) {
    let (p, i) = (parts as i64, i as i64);
    let (q, r) = (n / p, n % p);
    let begin = i * q + i.min(r);
    (begin, begin + q + i64::from(i < r))
}

/// Output `i` of `shape` as a raw pointer; null when the node leaves it unnamed (the kernel
/// then skips computing it). ONNX Runtime owns the buffer for the whole compute call.
fn output_ptr(ctx: &ComputeContext, i: usize, shape: Vec<i64>) -> ort::Result<Ptr<f32>> {
    Ok(Ptr(match ctx.output(i, shape)? {
        Some(mut v) => v.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr(),
        None => std::ptr::null_mut(),
    }))
}

/// Runs `f(part)` for each of `parts` parts on ONNX Runtime's intra-op pool; the first error
/// wins.
fn parallel(
    ctx: &ComputeContext,
    parts: usize,
    f: impl Fn(usize) -> std::result::Result<(), String> + Sync + Send,
) -> std::result::Result<(), String> {
    let errors = std::sync::Mutex::new(Vec::new());
    let run = |i: usize| {
        if let Err(e) = f(i) {
            errors.lock().unwrap().push(e);
        }
    };
    if parts == 1 {
        run(0);
    } else {
        ctx.par_for(parts, parts, run).map_err(|e| e.to_string())?;
    }
    match errors.into_inner().unwrap().into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The C++ side's error buffer as a string.
fn c_error(err: &[u8]) -> String {
    let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
    String::from_utf8_lossy(&err[..end]).into_owned()
}

/// A raw pointer that may cross to the pool's threads: each part touches disjoint rows.
#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T> Ptr<T> {
    /// The pointer (a method, so closures capture the whole `Ptr`, not its raw field).
    fn get(self) -> *mut T {
        self.0
    }
}

/// `probe.cpu:Conv`: libtorch's forward convolution.
pub struct Conv {
    parts: usize,
}

pub struct ConvKernel {
    attrs: ConvAttrs,
    parts: usize,
    /// Y = max(Conv(X), 0): a Relu after the Conv fused in (`autodiff/fuse.rs`).
    relu: bool,
}

impl Operator for Conv {
    type Kernel<'attr> = ConvKernel;
    fn name(&self) -> &str {
        "Conv"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Float32),
        ]
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }
    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<ConvKernel> {
        Ok(ConvKernel {
            attrs: ConvAttrs::read(k, "Conv")?,
            parts: self.parts,
            relu: k.get::<i64>("relu").unwrap_or(0) != 0,
        })
    }
}

impl Kernel for ConvKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let a = &self.attrs;
        let fail =
            |what: String| ort::Error::new(format!("{DOMAIN}:Conv node '{}': {what}", a.node));
        let x = ctx
            .input(0)?
            .ok_or_else(|| fail("input X missing".into()))?;
        let w = ctx
            .input(1)?
            .ok_or_else(|| fail("input W missing".into()))?;
        let b = ctx.input(2)?;
        let (xs, xv) = x.try_extract_tensor::<f32>()?;
        let (ws, wv) = w.try_extract_tensor::<f32>()?;
        let bv = match &b {
            Some(b) => Some(b.try_extract_tensor::<f32>()?.1),
            None => None,
        };
        let (rank, k) = (xs.len(), a.strides.len());
        if rank != k + 2 || ws.len() != rank {
            return Err(fail(format!(
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
                return Err(fail(format!(
                    "kernel {:?} larger than padded X {:?}",
                    &ws[..],
                    &xs[..]
                )));
            }
            ys.push(room / a.strides[i] + 1);
        }
        let mut y = ctx
            .output(0, ys.clone())?
            .ok_or_else(|| fail("output Y missing".into()))?;
        let yp = Ptr(y.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
        let (x_row, y_row): (i64, i64) = (xs[1..].iter().product(), ys[1..].iter().product());
        let (xp, wp) = (Ptr(xv.as_ptr() as *mut f32), Ptr(wv.as_ptr() as *mut f32));
        let bp = Ptr(bv.map(|b| b.as_ptr()).unwrap_or(std::ptr::null()) as *mut f32);
        let n = xs[0];
        let parts = self.parts.min(n.max(1) as usize);
        parallel(ctx, parts, |i| {
            let (lo, hi) = part(n, parts, i);
            if hi == lo {
                return Ok(());
            }
            let (mut xs_p, mut ys_p) = (xs.to_vec(), ys.clone());
            xs_p[0] = hi - lo;
            ys_p[0] = hi - lo;
            // SAFETY: X, W, B are live dense f32 tensors of the shapes passed; part i reads
            // rows lo..hi of X and writes rows lo..hi of Y, which no other part touches.
            c_call(|e, el| unsafe {
                probe_conv(
                    xp.get().add((lo * x_row) as usize),
                    xs_p.as_ptr(),
                    wp.get(),
                    ws.as_ptr(),
                    bp.get(),
                    ys_p.as_ptr(),
                    rank as i64,
                    a.strides.as_ptr(),
                    a.padding.as_ptr(),
                    a.dilations.as_ptr(),
                    a.group,
                    self.relu as i32,
                    yp.get().add((lo * y_row) as usize),
                    e,
                    el,
                )
            })
        })
        .map_err(|e| fail(format!("libtorch: {e}")))
    }
}

/// `probe.cpu:ConvGrad`: libtorch's `convolution_backward` (PyTorch's own Conv backward) for
/// dW and dB.
pub struct ConvGrad {
    parts: usize,
}

pub struct ConvGradKernel {
    attrs: ConvAttrs,
    parts: usize,
}

impl Operator for ConvGrad {
    type Kernel<'attr> = ConvGradKernel;
    fn name(&self) -> &str {
        "ConvGrad"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        std::array::from_fn::<_, 3, _>(|_| OperatorInput::required(TensorElementType::Float32))
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        std::array::from_fn::<_, 2, _>(|_| OperatorOutput::optional(TensorElementType::Float32))
    }
    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<ConvGradKernel> {
        Ok(ConvGradKernel {
            attrs: ConvAttrs::read(k, "ConvGrad")?,
            parts: self.parts,
        })
    }
}

impl Kernel for ConvGradKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let a = &self.attrs;
        let fail =
            |what: String| ort::Error::new(format!("{DOMAIN}:ConvGrad node '{}': {what}", a.node));
        let missing = |i: usize| fail(format!("input {i} missing"));
        let (dy, x, w) = (
            ctx.input(0)?.ok_or_else(|| missing(0))?,
            ctx.input(1)?.ok_or_else(|| missing(1))?,
            ctx.input(2)?.ok_or_else(|| missing(2))?,
        );
        let (dys, dyv) = dy.try_extract_tensor::<f32>()?;
        let (xs, xv) = x.try_extract_tensor::<f32>()?;
        let (ws, wv) = w.try_extract_tensor::<f32>()?;
        let rank = xs.len();
        if rank < 3 || dys.len() != rank || ws.len() != rank || a.strides.len() != rank - 2 {
            return Err(fail(format!(
                "dY {:?}, X {:?}, W {:?} with {} spatial axes",
                &dys[..],
                &xs[..],
                &ws[..],
                a.strides.len()
            )));
        }
        // Outputs the node does not name come back as null pointers: libtorch skips them (output_mask).
        let (pdw, pdb) = (
            output_ptr(ctx, 0, ws.to_vec())?,
            output_ptr(ctx, 1, vec![ws[0]])?,
        );
        let n = xs[0];
        let parts = self.parts.min(n.max(1) as usize);
        let (wn, m) = (ws.iter().product::<i64>() as usize, ws[0] as usize);
        // Part 0 sums into the outputs, the others into their own buffers.
        let mut dw_parts = vec![0f32; if pdw.0.is_null() { 0 } else { wn * (parts - 1) }];
        let mut db_parts = vec![0f32; if pdb.0.is_null() { 0 } else { m * (parts - 1) }];
        let (dwq, dbq) = (Ptr(dw_parts.as_mut_ptr()), Ptr(db_parts.as_mut_ptr()));
        let (x_row, y_row): (i64, i64) = (xs[1..].iter().product(), dys[1..].iter().product());
        let (dyp, xp, wp) = (
            Ptr(dyv.as_ptr() as *mut f32),
            Ptr(xv.as_ptr() as *mut f32),
            Ptr(wv.as_ptr() as *mut f32),
        );
        parallel(ctx, parts, |i| {
            let (lo, hi) = part(n, parts, i);
            if hi == lo {
                return Ok(());
            }
            let (mut xs_p, mut dys_p) = (xs.to_vec(), dys.to_vec());
            xs_p[0] = hi - lo;
            dys_p[0] = hi - lo;
            let rows = |p: Ptr<f32>, row: i64| {
                if p.0.is_null() {
                    p.0
                } else {
                    // SAFETY: p is a tensor with n rows of `row` elements and lo < n.
                    unsafe { p.0.add((lo * row) as usize) }
                }
            };
            let own = |out: Ptr<f32>, buf: Ptr<f32>, len: usize| {
                if out.0.is_null() {
                    out.0
                } else if i == 0 {
                    out.0
                } else {
                    // SAFETY: buf holds parts - 1 blocks of len elements.
                    unsafe { buf.0.add((i - 1) * len) }
                }
            };
            // SAFETY: dY, X, W are live dense f32 tensors of the shapes passed; part i reads
            // rows lo..hi and writes its own dW, dB (no dX: null).
            c_call(|e, el| unsafe {
                probe_conv_grad(
                    rows(dyp, y_row),
                    dys_p.as_ptr(),
                    rows(xp, x_row),
                    xs_p.as_ptr(),
                    wp.get(),
                    ws.as_ptr(),
                    rank as i64,
                    a.strides.as_ptr(),
                    a.padding.as_ptr(),
                    a.dilations.as_ptr(),
                    a.group,
                    std::ptr::null_mut(),
                    own(pdw, dwq, wn),
                    own(pdb, dbq, m),
                    e,
                    el,
                )
            })
        })
        .map_err(|e| fail(format!("libtorch: {e}")))?;
        // dW = sum over parts (the sum over samples, split), likewise dB.
        for (out, buf, len) in [(pdw, &dw_parts, wn), (pdb, &db_parts, m)] {
            if out.0.is_null() || parts == 1 {
                continue;
            }
            // SAFETY: out is the output tensor of len elements, written by part 0 above.
            let out = unsafe { std::slice::from_raw_parts_mut(out.0, len) };
            for chunk in buf.chunks(len) {
                for (o, v) in out.iter_mut().zip(chunk) {
                    *o += v;
                }
            }
        }
        Ok(())
    }
}

/// `probe.cpu:ReluGrad`: `dX = dY * (X > 0)` in one pass.
pub struct ReluGrad {
    parts: usize,
}

impl Operator for ReluGrad {
    type Kernel<'attr> = ReluGradKernel;
    fn name(&self) -> &str {
        "ReluGrad"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        std::array::from_fn::<_, 2, _>(|_| OperatorInput::required(TensorElementType::Float32))
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }
    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<ReluGradKernel> {
        Ok(ReluGradKernel {
            node: k.node_name().unwrap_or_default(),
            parts: self.parts,
        })
    }
}

pub struct ReluGradKernel {
    node: String,
    parts: usize,
}

impl Kernel for ReluGradKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let fail = |what: String| {
            ort::Error::new(format!("{DOMAIN}:ReluGrad node '{}': {what}", self.node))
        };
        let dy = ctx
            .input(0)?
            .ok_or_else(|| fail("input dY missing".into()))?;
        let x = ctx
            .input(1)?
            .ok_or_else(|| fail("input X missing".into()))?;
        let (dys, dyv) = dy.try_extract_tensor::<f32>()?;
        let (xs, xv) = x.try_extract_tensor::<f32>()?;
        if dys[..] != xs[..] {
            return Err(fail(format!(
                "dY {:?} and X {:?} differ",
                &dys[..],
                &xs[..]
            )));
        }
        let mut dx = ctx
            .output(0, xs.to_vec())?
            .ok_or_else(|| fail("output dX missing".into()))?;
        let dxp = Ptr(dx.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
        let n = xv.len();
        // Small tensors are not worth a trip to the pool.
        let parts = if n < 1 << 16 { 1 } else { self.parts };
        parallel(ctx, parts, |i| {
            let (lo, hi) = part(n as i64, parts, i);
            let (lo, hi) = (lo as usize, hi as usize);
            // SAFETY: dX has n elements; part i alone writes lo..hi.
            let out = unsafe { std::slice::from_raw_parts_mut(dxp.get().add(lo), hi - lo) };
            for ((o, &g), &v) in out.iter_mut().zip(&dyv[lo..hi]).zip(&xv[lo..hi]) {
                *o = if v > 0.0 { g } else { 0.0 };
            }
            Ok(())
        })
        .map_err(fail)
    }
}

/// One (sample, channel) plane of the inference-mode BatchNorm backward (per channel k and
/// mean): `dX = G k` into `dx` when asked, and the plane's `sum G` and `sum G (X - mean)`, in
/// eight f32 lanes (so the loop vectorizes), returned in f64 for the sum across planes.
fn bn_grad_plane(g: &[f32], x: &[f32], k: f32, mean: f32, dx: Option<&mut [f32]>) -> (f64, f64) {
    if let Some(dx) = dx {
        for (o, &g) in dx.iter_mut().zip(g) {
            *o = g * k;
        }
    }
    let (mut a1, mut a2) = ([0f32; 8], [0f32; 8]);
    let (gc, xc) = (g.chunks_exact(8), x.chunks_exact(8));
    let (gr, xr) = (gc.remainder(), xc.remainder());
    for (g8, x8) in gc.zip(xc) {
        for j in 0..8 {
            a1[j] += g8[j];
            a2[j] += g8[j] * (x8[j] - mean);
        }
    }
    for (&g, &v) in gr.iter().zip(xr) {
        a1[0] += g;
        a2[0] += g * (v - mean);
    }
    let f64sum = |a: [f32; 8]| a.iter().map(|&v| v as f64).sum::<f64>();
    (f64sum(a1), f64sum(a2))
}

/// The `len` elements of an optional output at offset `at`; `None` for an unnamed output.
///
/// # Safety
/// A non-null `p` addresses at least `at + len` elements, and no one else touches these.
unsafe fn plane_of<'a>(p: Ptr<f32>, at: usize, len: usize) -> Option<&'a mut [f32]> {
    (!p.get().is_null()).then(|| std::slice::from_raw_parts_mut(p.get().add(at), len))
}

/// `probe.cpu:BatchNormalizationGrad` (inference mode): dX and the two per-channel sums the
/// parameter gradients are made of, in one pass over dY and X.
pub struct BatchNormalizationGrad {
    parts: usize,
}

impl Operator for BatchNormalizationGrad {
    type Kernel<'attr> = BatchNormalizationGradKernel;
    fn name(&self) -> &str {
        "BatchNormalizationGrad"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        std::array::from_fn::<_, 4, _>(|_| OperatorInput::required(TensorElementType::Float32))
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        std::array::from_fn::<_, 3, _>(|_| OperatorOutput::optional(TensorElementType::Float32))
    }
    fn create_kernel<'attr>(
        &self,
        k: &KernelContext<'attr>,
    ) -> ort::Result<BatchNormalizationGradKernel> {
        Ok(BatchNormalizationGradKernel {
            node: k.node_name().unwrap_or_default(),
            parts: self.parts,
        })
    }
}

pub struct BatchNormalizationGradKernel {
    node: String,
    parts: usize,
}

impl Kernel for BatchNormalizationGradKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let fail = |what: String| {
            ort::Error::new(format!(
                "{DOMAIN}:BatchNormalizationGrad node '{}': {what}",
                self.node
            ))
        };
        let input = |i: usize| -> ort::Result<ort::value::ValueRef<'_>> {
            ctx.input(i)?
                .ok_or_else(|| fail(format!("input {i} missing")))
        };
        let (dy, x, k, mean) = (input(0)?, input(1)?, input(2)?, input(3)?);
        let (dys, dyv) = dy.try_extract_tensor::<f32>()?;
        let (xs, xv) = x.try_extract_tensor::<f32>()?;
        let (_, kv) = k.try_extract_tensor::<f32>()?;
        let (_, mv) = mean.try_extract_tensor::<f32>()?;
        if dys[..] != xs[..] || xs.len() < 2 || kv.len() != xs[1] as usize || mv.len() != kv.len() {
            return Err(fail(format!(
                "dY {:?}, X {:?}, k [{}], mean [{}]",
                &dys[..],
                &xs[..],
                kv.len(),
                mv.len()
            )));
        }
        let (n, c) = (xs[0] as usize, xs[1] as usize);
        let plane: usize = xs[2..].iter().product::<i64>() as usize;
        let (pdx, ps1, ps2) = (
            output_ptr(ctx, 0, xs.to_vec())?,
            output_ptr(ctx, 1, vec![c as i64])?,
            output_ptr(ctx, 2, vec![c as i64])?,
        );
        // Parts take whole channels, so each sum has one writer.
        let parts = if xv.len() < 1 << 16 {
            1
        } else {
            self.parts.min(c)
        };
        parallel(ctx, parts, |i| {
            let (lo, hi) = part(c as i64, parts, i);
            for ch in lo as usize..hi as usize {
                let (kc, mc) = (kv[ch], mv[ch]);
                let (mut t1, mut t2) = (0f64, 0f64);
                for s in 0..n {
                    let at = (s * c + ch) * plane;
                    let (g, xp) = (&dyv[at..at + plane], &xv[at..at + plane]);
                    // SAFETY: dX has the shape of X; plane (s, ch) belongs to this part.
                    let dx = unsafe { plane_of(pdx, at, plane) };
                    let (s1, s2) = bn_grad_plane(g, xp, kc, mc, dx);
                    t1 += s1;
                    t2 += s2;
                }
                // SAFETY: the sums have c elements; channel ch belongs to this part.
                unsafe {
                    if !ps1.get().is_null() {
                        *ps1.get().add(ch) = t1 as f32;
                    }
                    if !ps2.get().is_null() {
                        *ps2.get().add(ch) = t2 as f32;
                    }
                }
            }
            Ok(())
        })
        .map_err(fail)
    }
}

/// The `[begin, end)` element ranges of `parts` parts over `n` elements, or one part when the
/// tensor is too small to be worth a trip to the pool (what ReluGrad does inline).
fn elementwise_parts(n: usize, parts: usize) -> usize {
    if n < 1 << 16 {
        1
    } else {
        parts
    }
}

/// `probe.cpu:BatchNormalization` (inference mode), attributes `epsilon` (float) and `relu`
/// (int, 0 or 1), both required: per channel c (axis 1), `k[c] = scale[c] / sqrt(var[c] + eps)`
/// and `Y = X k[c] + (B[c] - mean[c] k[c])`, then `max(Y, 0)` when `relu` is 1: one pass over X
/// where ONNX Runtime's BatchNormalization, then Relu, took two (each a full read and write).
pub struct BatchNormalization {
    parts: usize,
}

pub struct BatchNormalizationKernel {
    node: String,
    epsilon: f32,
    relu: bool,
    parts: usize,
}

impl Operator for BatchNormalization {
    type Kernel<'attr> = BatchNormalizationKernel;
    fn name(&self) -> &str {
        "BatchNormalization"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        std::array::from_fn::<_, 5, _>(|_| OperatorInput::required(TensorElementType::Float32))
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }
    fn create_kernel<'attr>(
        &self,
        k: &KernelContext<'attr>,
    ) -> ort::Result<BatchNormalizationKernel> {
        let node = k.node_name().unwrap_or_default();
        let missing = |name: &str| {
            ort::Error::new(format!(
                "{DOMAIN}:BatchNormalization node '{node}': attribute '{name}' missing"
            ))
        };
        let epsilon = k.get::<f32>("epsilon").ok_or_else(|| missing("epsilon"))?;
        let relu = k.get::<i64>("relu").ok_or_else(|| missing("relu"))? != 0;
        Ok(BatchNormalizationKernel {
            node,
            epsilon,
            relu,
            parts: self.parts,
        })
    }
}

impl Kernel for BatchNormalizationKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let fail = |what: String| {
            ort::Error::new(format!(
                "{DOMAIN}:BatchNormalization node '{}': {what}",
                self.node
            ))
        };
        let input = |i: usize| -> ort::Result<ort::value::ValueRef<'_>> {
            ctx.input(i)?
                .ok_or_else(|| fail(format!("input {i} missing")))
        };
        let x = input(0)?;
        let (xs, xv) = x.try_extract_tensor::<f32>()?;
        let params: Vec<ort::value::ValueRef<'_>> =
            (1..5).map(input).collect::<ort::Result<_>>()?;
        let mut pv = Vec::with_capacity(4);
        for p in &params {
            pv.push(p.try_extract_tensor::<f32>()?.1);
        }
        let (scale, bias, mean, var) = (pv[0], pv[1], pv[2], pv[3]);
        if xs.len() < 2 || pv.iter().any(|p| p.len() != xs[1] as usize) {
            return Err(fail(format!(
                "X {:?} with scale [{}], B [{}], mean [{}], var [{}]: one value per channel \
                 (axis 1) expected",
                &xs[..],
                scale.len(),
                bias.len(),
                mean.len(),
                var.len()
            )));
        }
        // ONNX Runtime's own arithmetic (batch_norm.h): inv_std = 1/sqrt(var + eps), then
        // new_scale = scale inv_std, new_bias = B - mean new_scale, all in f32.
        let c = xs[1] as usize;
        let k: Vec<f32> = (0..c)
            .map(|i| scale[i] * (1.0 / (var[i] + self.epsilon).sqrt()))
            .collect();
        let b: Vec<f32> = (0..c).map(|i| bias[i] - mean[i] * k[i]).collect();
        let plane: usize = xs[2..].iter().product::<i64>() as usize;
        let planes = xv.len() / plane.max(1);
        let mut y = ctx
            .output(0, xs.to_vec())?
            .ok_or_else(|| fail("output Y missing".into()))?;
        let yp = Ptr(y.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
        let parts = elementwise_parts(xv.len(), self.parts).min(planes.max(1));
        let relu = self.relu;
        parallel(ctx, parts, |i| {
            let (lo, hi) = part(planes as i64, parts, i);
            for p in lo as usize..hi as usize {
                let (kc, bc) = (k[p % c], b[p % c]);
                let at = p * plane;
                // SAFETY: Y has the shape of X; plane p belongs to this part alone.
                let out = unsafe { std::slice::from_raw_parts_mut(yp.get().add(at), plane) };
                let src = &xv[at..at + plane];
                if relu {
                    // `v < 0 ? 0 : v` keeps a NaN a NaN, as a Relu after the BatchNormalization.
                    for (o, &v) in out.iter_mut().zip(src) {
                        let t = v * kc + bc;
                        *o = if t < 0.0 { 0.0 } else { t };
                    }
                } else {
                    for (o, &v) in out.iter_mut().zip(src) {
                        *o = v * kc + bc;
                    }
                }
            }
            Ok(())
        })
        .map_err(fail)
    }
}

/// `probe.cpu:AddRelu(A, B) -> Y = max(A + B, 0)`, A and B of one shape (no broadcasting): a
/// residual connection's Add and the Relu after it in one pass instead of two.
pub struct AddRelu {
    parts: usize,
}

pub struct AddReluKernel {
    node: String,
    parts: usize,
}

impl Operator for AddRelu {
    type Kernel<'attr> = AddReluKernel;
    fn name(&self) -> &str {
        "AddRelu"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        std::array::from_fn::<_, 2, _>(|_| OperatorInput::required(TensorElementType::Float32))
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }
    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<AddReluKernel> {
        Ok(AddReluKernel {
            node: k.node_name().unwrap_or_default(),
            parts: self.parts,
        })
    }
}

impl Kernel for AddReluKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let fail = |what: String| {
            ort::Error::new(format!("{DOMAIN}:AddRelu node '{}': {what}", self.node))
        };
        let a = ctx
            .input(0)?
            .ok_or_else(|| fail("input A missing".into()))?;
        let b = ctx
            .input(1)?
            .ok_or_else(|| fail("input B missing".into()))?;
        let (as_, av) = a.try_extract_tensor::<f32>()?;
        let (bs, bv) = b.try_extract_tensor::<f32>()?;
        if as_[..] != bs[..] {
            return Err(fail(format!(
                "A {:?} and B {:?} differ (no broadcasting here)",
                &as_[..],
                &bs[..]
            )));
        }
        let mut y = ctx
            .output(0, as_.to_vec())?
            .ok_or_else(|| fail("output Y missing".into()))?;
        let yp = Ptr(y.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
        let n = av.len();
        let parts = elementwise_parts(n, self.parts);
        parallel(ctx, parts, |i| {
            let (lo, hi) = part(n as i64, parts, i);
            let (lo, hi) = (lo as usize, hi as usize);
            // SAFETY: Y has n elements; part i alone writes lo..hi.
            let out = unsafe { std::slice::from_raw_parts_mut(yp.get().add(lo), hi - lo) };
            for ((o, &u), &v) in out.iter_mut().zip(&av[lo..hi]).zip(&bv[lo..hi]) {
                let t = u + v;
                *o = if t < 0.0 { 0.0 } else { t };
            }
            Ok(())
        })
        .map_err(fail)
    }
}

/// `probe.cpu:SumReluGrad(dY1, dY2, X) -> dX = (dY1 + dY2) (X > 0)`: a Relu whose output has
/// two consumers (a residual block's input feeds the block and its shortcut) gets the sum of
/// their gradients; this is that Sum and the ReluGrad in one pass (ReluGrad's X may be the
/// Relu's output, see `ops/relu.rs`).
pub struct SumReluGrad {
    parts: usize,
}

pub struct SumReluGradKernel {
    node: String,
    parts: usize,
}

impl Operator for SumReluGrad {
    type Kernel<'attr> = SumReluGradKernel;
    fn name(&self) -> &str {
        "SumReluGrad"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        std::array::from_fn::<_, 3, _>(|_| OperatorInput::required(TensorElementType::Float32))
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }
    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<SumReluGradKernel> {
        Ok(SumReluGradKernel {
            node: k.node_name().unwrap_or_default(),
            parts: self.parts,
        })
    }
}

impl Kernel for SumReluGradKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let fail = |what: String| {
            ort::Error::new(format!("{DOMAIN}:SumReluGrad node '{}': {what}", self.node))
        };
        let input = |i: usize| -> ort::Result<ort::value::ValueRef<'_>> {
            ctx.input(i)?
                .ok_or_else(|| fail(format!("input {i} missing")))
        };
        let (g1, g2, x) = (input(0)?, input(1)?, input(2)?);
        let (g1s, g1v) = g1.try_extract_tensor::<f32>()?;
        let (g2s, g2v) = g2.try_extract_tensor::<f32>()?;
        let (xs, xv) = x.try_extract_tensor::<f32>()?;
        if g1s[..] != xs[..] || g2s[..] != xs[..] {
            return Err(fail(format!(
                "dY1 {:?}, dY2 {:?} and X {:?} differ",
                &g1s[..],
                &g2s[..],
                &xs[..]
            )));
        }
        let mut dx = ctx
            .output(0, xs.to_vec())?
            .ok_or_else(|| fail("output dX missing".into()))?;
        let dxp = Ptr(dx.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
        let n = xv.len();
        let parts = elementwise_parts(n, self.parts);
        parallel(ctx, parts, |i| {
            let (lo, hi) = part(n as i64, parts, i);
            let (lo, hi) = (lo as usize, hi as usize);
            // SAFETY: dX has n elements; part i alone writes lo..hi.
            let out = unsafe { std::slice::from_raw_parts_mut(dxp.get().add(lo), hi - lo) };
            sum_relu_mask(out, &g1v[lo..hi], &g2v[lo..hi], &xv[lo..hi]);
            Ok(())
        })
        .map_err(fail)
    }
}

/// `probe.cpu:ReluBatchNormalizationGrad(dY, Y, X, k, mean, dY2?) -> (dX?, sum_G?, sum_G_xc?)`:
/// `BatchNormalizationGrad` of `G = (dY + dY2) (Y > 0)` (dY2 absent: 0), the gradient a Relu
/// after the BatchNormalization passes back (`ReluGrad` or `SumReluGrad`, whose result had the
/// BatchNormalizationGrad as its only consumer): `dX = G k[c]`, `sum_G[c] = sum G`,
/// `sum_G_xc[c] = sum G (X - mean[c])`. G is formed one plane at a time in a buffer that
/// stays in L1, so the full-size G is never written and read back.
pub struct ReluBatchNormalizationGrad {
    parts: usize,
}

pub struct ReluBatchNormalizationGradKernel {
    node: String,
    parts: usize,
}

impl Operator for ReluBatchNormalizationGrad {
    type Kernel<'attr> = ReluBatchNormalizationGradKernel;
    fn name(&self) -> &str {
        "ReluBatchNormalizationGrad"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let mut v: Vec<OperatorInput> = (0..5)
            .map(|_| OperatorInput::required(TensorElementType::Float32))
            .collect();
        v.push(OperatorInput::optional(TensorElementType::Float32));
        v
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        std::array::from_fn::<_, 3, _>(|_| OperatorOutput::optional(TensorElementType::Float32))
    }
    fn create_kernel<'attr>(
        &self,
        k: &KernelContext<'attr>,
    ) -> ort::Result<ReluBatchNormalizationGradKernel> {
        Ok(ReluBatchNormalizationGradKernel {
            node: k.node_name().unwrap_or_default(),
            parts: self.parts,
        })
    }
}

impl Kernel for ReluBatchNormalizationGradKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let fail = |what: String| {
            ort::Error::new(format!(
                "{DOMAIN}:ReluBatchNormalizationGrad node '{}': {what}",
                self.node
            ))
        };
        let input = |i: usize| -> ort::Result<ort::value::ValueRef<'_>> {
            ctx.input(i)?
                .ok_or_else(|| fail(format!("input {i} missing")))
        };
        let (dy, y, x, k, mean) = (input(0)?, input(1)?, input(2)?, input(3)?, input(4)?);
        let dy2 = ctx.input(5)?;
        let (dys, dyv) = dy.try_extract_tensor::<f32>()?;
        let (ys, yv) = y.try_extract_tensor::<f32>()?;
        let (xs, xv) = x.try_extract_tensor::<f32>()?;
        let (_, kv) = k.try_extract_tensor::<f32>()?;
        let (_, mv) = mean.try_extract_tensor::<f32>()?;
        let dy2v = match &dy2 {
            Some(t) => {
                let (s, v) = t.try_extract_tensor::<f32>()?;
                if s[..] != xs[..] {
                    return Err(fail(format!("dY2 {:?} and X {:?} differ", &s[..], &xs[..])));
                }
                Some(v)
            }
            None => None,
        };
        if dys[..] != xs[..]
            || ys[..] != xs[..]
            || xs.len() < 2
            || kv.len() != xs[1] as usize
            || mv.len() != kv.len()
        {
            return Err(fail(format!(
                "dY {:?}, Y {:?}, X {:?}, k [{}], mean [{}]",
                &dys[..],
                &ys[..],
                &xs[..],
                kv.len(),
                mv.len()
            )));
        }
        let (n, c) = (xs[0] as usize, xs[1] as usize);
        let plane: usize = xs[2..].iter().product::<i64>() as usize;
        let (pdx, ps1, ps2) = (
            output_ptr(ctx, 0, xs.to_vec())?,
            output_ptr(ctx, 1, vec![c as i64])?,
            output_ptr(ctx, 2, vec![c as i64])?,
        );
        // Parts take whole channels, so each sum has one writer (as BatchNormalizationGrad).
        let parts = if xv.len() < 1 << 16 {
            1
        } else {
            self.parts.min(c)
        };
        parallel(ctx, parts, |i| {
            let (lo, hi) = part(c as i64, parts, i);
            let mut gbuf = vec![0f32; plane];
            for ch in lo as usize..hi as usize {
                let (kc, mc) = (kv[ch], mv[ch]);
                let (mut t1, mut t2) = (0f64, 0f64);
                for s in 0..n {
                    let at = (s * c + ch) * plane;
                    let (g1, yp) = (&dyv[at..at + plane], &yv[at..at + plane]);
                    // G = (dY + dY2) [Y > 0], the ReluGrad (or SumReluGrad) it replaces.
                    match dy2v {
                        Some(d2) => sum_relu_mask(&mut gbuf, g1, &d2[at..at + plane], yp),
                        None => relu_mask(&mut gbuf, g1, yp),
                    }
                    // SAFETY: dX has the shape of X; plane (s, ch) belongs to this part.
                    let dx = unsafe { plane_of(pdx, at, plane) };
                    let (s1, s2) = bn_grad_plane(&gbuf, &xv[at..at + plane], kc, mc, dx);
                    t1 += s1;
                    t2 += s2;
                }
                // SAFETY: the sums have c elements; channel ch belongs to this part.
                unsafe {
                    if !ps1.get().is_null() {
                        *ps1.get().add(ch) = t1 as f32;
                    }
                    if !ps2.get().is_null() {
                        *ps2.get().add(ch) = t2 as f32;
                    }
                }
            }
            Ok(())
        })
        .map_err(fail)
    }
}

/// `out = (a + b) [x > 0]`. The mask is applied as bits (all ones or zero, and-ed with the sum:
/// the same values as a branch, NaN included) so that the loop compiles to vector compares and
/// ands; written as `if x > 0 { a + b } else { 0 }` LLVM kept a branch per element (the loads
/// of a and b sank into it) and ran the loop scalar, ~2x slower than ReluGrad per byte.
fn sum_relu_mask(out: &mut [f32], a: &[f32], b: &[f32], x: &[f32]) {
    let n = out.len();
    let (a, b, x) = (&a[..n], &b[..n], &x[..n]);
    for j in 0..n {
        out[j] = masked(a[j] + b[j], x[j]);
    }
}

/// `out = a [x > 0]` (as [`sum_relu_mask`]).
fn relu_mask(out: &mut [f32], a: &[f32], x: &[f32]) {
    let n = out.len();
    let (a, x) = (&a[..n], &x[..n]);
    for j in 0..n {
        out[j] = masked(a[j], x[j]);
    }
}

/// `g` where `x > 0`, else +0.0, without a branch.
#[inline(always)]
fn masked(g: f32, x: f32) -> f32 {
    let m = if x > 0.0 { u32::MAX } else { 0 };
    f32::from_bits(g.to_bits() & m)
}

/// Sets glibc's malloc to keep freed memory for reuse (once per process): blocks up to 32 MiB
/// (the largest threshold glibc takes) come from its heaps rather than their own mmap, and
/// heaps are not trimmed back below 1 GiB of free space at the top. With glibc's dynamic
/// defaults the per-batch blocks of the libtorch kernels were unmapped and faulted in again
/// every batch (see the module doc); with these the same run had 8x fewer page faults and
/// ~0.25 s instead of ~2 s of system time. The process keeps at most its peak heap. glibc only
/// (the mallopt parameters are glibc's): elsewhere this does nothing.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        extern "C" {
            fn mallopt(
                param: std::os::raw::c_int,
                value: std::os::raw::c_int,
            ) -> std::os::raw::c_int;
        }
        // glibc's malloc.h: M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3.
        const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
        const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets malloc's tuning parameters; a refused value (0
            // returned) leaves the default, which is only slower.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}

/// `probe.cpu:ConvGradX(dY, X, W) -> dX`, attributes as `Conv`: the input gradient of
/// `Y = Conv(X, W)` by libtorch's `convolution_backward` (backward-data; X is read for its
/// shape only), for the strided convolutions where it beat ONNX Runtime's ConvTranspose (see
/// `torch_dx_pays` in `ops/conv.rs`).
pub struct ConvGradX {
    parts: usize,
}

pub struct ConvGradXKernel {
    attrs: ConvAttrs,
    parts: usize,
}

impl Operator for ConvGradX {
    type Kernel<'attr> = ConvGradXKernel;
    fn name(&self) -> &str {
        "ConvGradX"
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        std::array::from_fn::<_, 3, _>(|_| OperatorInput::required(TensorElementType::Float32))
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }
    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<ConvGradXKernel> {
        Ok(ConvGradXKernel {
            attrs: ConvAttrs::read(k, "ConvGradX")?,
            parts: self.parts,
        })
    }
}

impl Kernel for ConvGradXKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let a = &self.attrs;
        let fail =
            |what: String| ort::Error::new(format!("{DOMAIN}:ConvGradX node '{}': {what}", a.node));
        let missing = |i: usize| fail(format!("input {i} missing"));
        let (dy, x, w) = (
            ctx.input(0)?.ok_or_else(|| missing(0))?,
            ctx.input(1)?.ok_or_else(|| missing(1))?,
            ctx.input(2)?.ok_or_else(|| missing(2))?,
        );
        let (dys, dyv) = dy.try_extract_tensor::<f32>()?;
        let (xs, xv) = x.try_extract_tensor::<f32>()?;
        let (ws, wv) = w.try_extract_tensor::<f32>()?;
        let rank = xs.len();
        if rank < 3
            || dys.len() != rank
            || ws.len() != rank
            || a.strides.len() != rank - 2
            || dys[0] != xs[0]
        {
            return Err(fail(format!(
                "dY {:?}, X {:?}, W {:?} with {} spatial axes",
                &dys[..],
                &xs[..],
                &ws[..],
                a.strides.len()
            )));
        }
        let mut dx = ctx
            .output(0, xs.to_vec())?
            .ok_or_else(|| fail("output dX missing".into()))?;
        let dxp = Ptr(dx.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr());
        let n = xs[0];
        let parts = self.parts.min(n.max(1) as usize);
        let (x_row, y_row): (i64, i64) = (xs[1..].iter().product(), dys[1..].iter().product());
        let (dyp, xp, wp) = (
            Ptr(dyv.as_ptr() as *mut f32),
            Ptr(xv.as_ptr() as *mut f32),
            Ptr(wv.as_ptr() as *mut f32),
        );
        parallel(ctx, parts, |i| {
            let (lo, hi) = part(n, parts, i);
            if hi == lo {
                return Ok(());
            }
            let (mut xs_p, mut dys_p) = (xs.to_vec(), dys.to_vec());
            xs_p[0] = hi - lo;
            dys_p[0] = hi - lo;
            // SAFETY: dY, X, W are live dense f32 tensors of the shapes passed; part i reads
            // rows lo..hi of dY and X and writes rows lo..hi of dX, which no other part touches.
            c_call(|e, el| unsafe {
                probe_conv_grad(
                    dyp.get().add((lo * y_row) as usize),
                    dys_p.as_ptr(),
                    xp.get().add((lo * x_row) as usize),
                    xs_p.as_ptr(),
                    wp.get(),
                    ws.as_ptr(),
                    rank as i64,
                    a.strides.as_ptr(),
                    a.padding.as_ptr(),
                    a.dilations.as_ptr(),
                    a.group,
                    dxp.get().add((lo * x_row) as usize),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    e,
                    el,
                )
            })
        })
        .map_err(|e| fail(format!("libtorch: {e}")))
    }
}

// ---- Transformer kernels ---------------------------------------------------------------------
// What a GPT-style model's gradient graph spends its time on besides MatMul: each of these is a
// chain of 5-12 standard ops over the same [batch, T, d] tensor (GELU's derivative alone is
// Mul, Erf, Add, Mul, Mul, Mul, Exp, Mul, Mul, Add, Mul), or an ONNX Runtime kernel that is slow
// on small rows (Softmax and Transpose on [250, 4, 32, 32]). The ops below share one operator
// type, [`Simple`], which reads the few attributes they take.

extern "C" {
    fn probe_gelu_grad(
        dy: *const f32,
        x: *const f32,
        n: i64,
        tanh: i32,
        dx: *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn probe_softmax(
        x: *const f32,
        shape: *const i64,
        rank: i64,
        axis: i64,
        y: *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn probe_log_softmax_grad(
        dy: *const f32,
        y: *const f32,
        shape: *const i64,
        rank: i64,
        axis: i64,
        dx: *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn probe_matmul(
        a: *const f32,
        a_shape: *const i64,
        a_rank: i64,
        ta: i32,
        b: *const f32,
        b_shape: *const i64,
        b_rank: i64,
        tb: i32,
        y: *mut f32,
        y_shape: *const i64,
        y_rank: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn probe_sdpa(
        dout: *const f32,
        q: *const f32,
        q_shape: *const i64,
        k: *const f32,
        v: *const f32,
        kv_shape: *const i64,
        blhe_in: i32,
        blhe_out: i32,
        in_row: i64,
        mask: *const f32,
        mask_shape: *const i64,
        mask_rank: i64,
        scale: f64,
        lo: i64,
        hi: i64,
        o: *mut f32,
        lse: *mut f32,
        dq: *mut f32,
        dk: *mut f32,
        dv: *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn probe_matmul_add(
        a: *const f32,
        m: i64,
        k: i64,
        b: *const f32,
        n: i64,
        bias: *const f32,
        y: *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn probe_transpose(
        x: *const f32,
        shape: *const i64,
        rank: i64,
        perm: *const i64,
        lo: i64,
        hi: i64,
        y: *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

/// An input or output slot of a [`Simple`] op.
#[derive(Clone, Copy)]
enum Io {
    F32,
    OptF32,
    I64,
}

/// The node as a [`Simple`] kernel sees it: its name for errors, the part count, and the
/// attributes these ops take (each reads the ones it has).
pub struct Node {
    op: &'static str,
    name: String,
    parts: usize,
    axis: Option<i64>,
    perm: Option<Vec<i64>>,
    epsilon: Option<f32>,
    approximate: Option<String>,
    trans: [bool; 2],
    /// ScaledDotProductAttention: Q, K, V (`blhe_in`) and O (`blhe_out`) stored as
    /// [B, L, H, E] rather than [B, H, L, E].
    blhe: [bool; 2],
    /// ScaledDotProductAttention: Q, K, V packed in one input of H heads (`packed_heads`).
    packed_heads: Option<i64>,
    /// `Interleave`'s attributes: `blocks`, `phases`, `sizes`.
    interleave: [Option<Vec<i64>>; 3],
}

impl Node {
    fn fail(&self, what: impl std::fmt::Display) -> ort::Error {
        ort::Error::new(format!("{DOMAIN}:{} node '{}': {what}", self.op, self.name))
    }
    fn input<'c>(
        &self,
        ctx: &'c ComputeContext,
        i: usize,
    ) -> ort::Result<ort::value::ValueRef<'c>> {
        ctx.input(i)?
            .ok_or_else(|| self.fail(format!("input {i} missing")))
    }
    /// Output `i` of `shape` ([`output_ptr`]).
    fn output(&self, ctx: &ComputeContext, i: usize, shape: Vec<i64>) -> ort::Result<Ptr<f32>> {
        output_ptr(ctx, i, shape)
    }
    fn required(&self, p: Ptr<f32>, what: &str) -> ort::Result<Ptr<f32>> {
        if p.0.is_null() {
            return Err(self.fail(format!("output {what} missing")));
        }
        Ok(p)
    }
    /// The `axis` attribute for a rank-`rank` tensor, made non-negative.
    fn axis(&self, rank: usize) -> ort::Result<usize> {
        let a = self
            .axis
            .ok_or_else(|| self.fail("attribute 'axis' missing"))?;
        let r = rank as i64;
        if a < -r || a >= r.max(1) {
            return Err(self.fail(format!("axis {a} out of range for rank {rank}")));
        }
        Ok(if a < 0 { a + r } else { a } as usize)
    }
    /// How many parts to split `units` independent units of `work` elements in all into
    /// (small work is not worth a trip to the pool).
    fn parts_for(&self, units: usize, work: usize) -> usize {
        if work < 1 << 15 {
            1
        } else {
            self.parts.min(units).max(1)
        }
    }
}

type Run = fn(&Node, &ComputeContext) -> ort::Result<()>;

/// A `probe.cpu` op whose kernel is a function of the node and the compute context.
struct Simple {
    op: &'static str,
    inputs: &'static [Io],
    outputs: &'static [Io],
    parts: usize,
    run: Run,
}

pub struct SimpleKernel {
    node: Node,
    run: Run,
}

fn slot(io: Io) -> (bool, TensorElementType) {
    match io {
        Io::F32 => (true, TensorElementType::Float32),
        Io::OptF32 => (false, TensorElementType::Float32),
        Io::I64 => (true, TensorElementType::Int64),
    }
}

impl Operator for Simple {
    type Kernel<'attr> = SimpleKernel;
    fn name(&self) -> &str {
        self.op
    }
    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        self.inputs.iter().map(|&io| match slot(io) {
            (true, t) => OperatorInput::required(t),
            (false, t) => OperatorInput::optional(t),
        })
    }
    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        self.outputs.iter().map(|&io| match slot(io) {
            (true, t) => OperatorOutput::required(t),
            (false, t) => OperatorOutput::optional(t),
        })
    }
    fn create_kernel<'attr>(&self, k: &KernelContext<'attr>) -> ort::Result<SimpleKernel> {
        Ok(SimpleKernel {
            node: Node {
                op: self.op,
                name: k.node_name().unwrap_or_default(),
                parts: self.parts,
                axis: k.get::<i64>("axis"),
                perm: k.get::<Vec<i64>>("perm"),
                epsilon: k.get::<f32>("epsilon"),
                approximate: k.get::<String>("approximate"),
                trans: ["transA", "transB"].map(|a| k.get::<i64>(a).unwrap_or(0) != 0),
                blhe: ["blhe_in", "blhe_out"].map(|a| k.get::<i64>(a).unwrap_or(0) != 0),
                packed_heads: k.get::<i64>("packed_heads"),
                interleave: ["blocks", "phases", "sizes"].map(|a| k.get::<Vec<i64>>(a)),
            },
            run: self.run,
        })
    }
}

impl Kernel for SimpleKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        (self.run)(&self.node, ctx)
    }
}

/// The ops built on [`Simple`].
fn simple_ops(parts: usize) -> [Simple; 15] {
    use Io::*;
    let op = |op, inputs, outputs, run| Simple {
        op,
        inputs,
        outputs,
        parts,
        run,
    };
    [
        op("GeluGrad", &[F32, F32], &[F32], gelu_grad),
        op("Softmax", &[F32], &[F32], softmax),
        op("SoftmaxGrad", &[F32, F32], &[F32], softmax_grad),
        op("Transpose", &[F32], &[F32], transpose),
        op(
            "LayerNormalizationGrad",
            &[F32, F32, F32, OptF32],
            &[OptF32, OptF32, OptF32],
            layer_norm_grad,
        ),
        op("GatherGrad", &[F32, I64, I64], &[F32], gather_grad),
        op("MatMulAdd", &[F32, F32, F32], &[F32], matmul_add),
        op("ReduceSumLeading", &[F32], &[F32], reduce_sum_leading),
        op("LogSoftmaxGrad", &[F32, F32], &[F32], log_softmax_grad),
        op(
            "GatherElementsGrad",
            &[F32, I64, I64],
            &[F32],
            gather_elements_grad,
        ),
        op(
            "LayerNormalization",
            &[F32, F32, OptF32],
            &[F32],
            layer_norm,
        ),
        op("MatMul", &[F32, F32], &[F32], matmul),
        op(
            "ScaledDotProductAttention",
            // K and V absent when packed with Q in input 0.
            &[F32, OptF32, OptF32, OptF32, OptF32, OptF32],
            &[F32, F32],
            sdpa,
        ),
        op(
            "ScaledDotProductAttentionGrad",
            &[F32, F32, OptF32, OptF32, F32, F32, OptF32, OptF32, OptF32],
            &[OptF32, OptF32, OptF32],
            sdpa_grad,
        ),
        op("Interleave", &[F32], &[F32], interleave),
    ]
}

/// Calls a C++ kernel with an error buffer; its message on failure.
fn c_call(f: impl FnOnce(*mut c_char, usize) -> i32) -> std::result::Result<(), String> {
    let mut err = [0u8; 1024];
    if f(err.as_mut_ptr() as *mut c_char, err.len()) != 0 {
        return Err(c_error(&err));
    }
    Ok(())
}

/// `GeluGrad(dY, X) -> dX`, attribute `approximate` ("none" or "tanh"): libtorch's
/// gelu_backward, `dX = dY (Phi(X) + X phi(X))` (or the tanh form's derivative).
fn gelu_grad(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let (dy, x) = (n.input(ctx, 0)?, n.input(ctx, 1)?);
    let (dys, dyv) = dy.try_extract_tensor::<f32>()?;
    let (xs, xv) = x.try_extract_tensor::<f32>()?;
    if dys[..] != xs[..] {
        return Err(n.fail(format!("dY {:?} and X {:?} differ", &dys[..], &xs[..])));
    }
    let tanh = match n.approximate.as_deref().unwrap_or("none") {
        "none" => 0,
        "tanh" => 1,
        other => return Err(n.fail(format!("approximate = \"{other}\""))),
    };
    let dx = n.required(n.output(ctx, 0, xs.to_vec())?, "dX")?;
    let len = xv.len();
    let parts = n.parts_for(len, len);
    let (dyp, xp) = (Ptr(dyv.as_ptr() as *mut f32), Ptr(xv.as_ptr() as *mut f32));
    parallel(ctx, parts, |i| {
        let (lo, hi) = part(len as i64, parts, i);
        // SAFETY: the three buffers hold len elements; part i alone writes lo..hi of dX.
        c_call(|e, el| unsafe {
            probe_gelu_grad(
                dyp.get().add(lo as usize),
                xp.get().add(lo as usize),
                hi - lo,
                tanh,
                dx.get().add(lo as usize),
                e,
                el,
            )
        })
    })
    .map_err(|e| n.fail(format!("libtorch: {e}")))
}

/// `Softmax(X) -> Y` along `axis` (ONNX's opset-13 Softmax), by libtorch; parts split the
/// first axis when the softmax runs along another.
fn softmax(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let x = n.input(ctx, 0)?;
    let (xs, xv) = x.try_extract_tensor::<f32>()?;
    let axis = n.axis(xs.len())?;
    let y = n.required(n.output(ctx, 0, xs.to_vec())?, "Y")?;
    let rows = if axis == 0 || xs.is_empty() { 1 } else { xs[0] };
    let row: i64 = if rows == 1 {
        xv.len() as i64
    } else {
        xs[1..].iter().product()
    };
    let parts = n.parts_for(rows as usize, xv.len());
    let xp = Ptr(xv.as_ptr() as *mut f32);
    parallel(ctx, parts, |i| {
        let (lo, hi) = part(rows, parts, i);
        if hi == lo {
            return Ok(());
        }
        let mut shape = xs.to_vec();
        if rows > 1 {
            shape[0] = hi - lo;
        }
        // SAFETY: X and Y hold rows * row elements; part i alone writes rows lo..hi of Y.
        c_call(|e, el| unsafe {
            probe_softmax(
                xp.get().add((lo * row) as usize),
                shape.as_ptr(),
                shape.len() as i64,
                axis as i64,
                y.get().add((lo * row) as usize),
                e,
                el,
            )
        })
    })
    .map_err(|e| n.fail(format!("libtorch: {e}")))
}

/// `SoftmaxGrad(dY, Y) -> dX` along `axis`: `dX = Y (dY - sum_axis(dY Y))`, one pass over
/// each [outer, A, inner] slab.
fn softmax_grad(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let (dy, y) = (n.input(ctx, 0)?, n.input(ctx, 1)?);
    let (dys, dyv) = dy.try_extract_tensor::<f32>()?;
    let (ys, yv) = y.try_extract_tensor::<f32>()?;
    if dys[..] != ys[..] {
        return Err(n.fail(format!("dY {:?} and Y {:?} differ", &dys[..], &ys[..])));
    }
    let axis = n.axis(ys.len())?;
    let dx = n.required(n.output(ctx, 0, ys.to_vec())?, "dX")?;
    let dim = |r: std::ops::Range<usize>| ys[r].iter().product::<i64>() as usize;
    let (outer, a, inner) = (dim(0..axis), dim(axis..axis + 1), dim(axis + 1..ys.len()));
    let slab = a * inner;
    let parts = n.parts_for(outer, yv.len());
    parallel(ctx, parts, |i| {
        let (lo, hi) = part(outer as i64, parts, i);
        let mut s = vec![0f32; inner];
        for o in lo as usize..hi as usize {
            let (g, p) = (&dyv[o * slab..][..slab], &yv[o * slab..][..slab]);
            // SAFETY: dX has outer * slab elements; slab o belongs to this part.
            let out = unsafe { std::slice::from_raw_parts_mut(dx.get().add(o * slab), slab) };
            if inner == 1 {
                // The usual last-axis softmax: a dot product per row.
                let s = dot8(g, p);
                for ((o, &g), &p) in out.iter_mut().zip(g).zip(p) {
                    *o = p * (g - s);
                }
                continue;
            }
            s.fill(0.0);
            for (gr, pr) in g.chunks_exact(inner).zip(p.chunks_exact(inner)) {
                for ((s, &g), &p) in s.iter_mut().zip(gr).zip(pr) {
                    *s += g * p;
                }
            }
            for ((or, gr), pr) in out
                .chunks_exact_mut(inner)
                .zip(g.chunks_exact(inner))
                .zip(p.chunks_exact(inner))
            {
                for (((o, &g), &p), &s) in or.iter_mut().zip(gr).zip(pr).zip(&s) {
                    *o = p * (g - s);
                }
            }
        }
        Ok(())
    })
    .map_err(|e| n.fail(e))
}

/// `sum a b` in eight f32 lanes (so the loop vectorizes), the lanes added at the end.
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a8, b8) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += a8[j] * b8[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum a` in eight f32 lanes.
fn sum8(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let c = a.chunks_exact(8);
    let tail: f32 = c.remainder().iter().sum();
    for a8 in c {
        for j in 0..8 {
            acc[j] += a8[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Transpose(X) -> Y` with a `perm` attribute, parts split Y's first axis: runs of X's last
/// axis copied in Rust when the last axis stays last, else libtorch's strided copy of the
/// permuted view.
fn transpose(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let x = n.input(ctx, 0)?;
    let (xs, xv) = x.try_extract_tensor::<f32>()?;
    let perm = n
        .perm
        .clone()
        .ok_or_else(|| n.fail("attribute 'perm' missing"))?;
    let mut seen = vec![false; xs.len()];
    if perm.len() != xs.len()
        || perm.iter().any(|&p| {
            p < 0 || p as usize >= xs.len() || std::mem::replace(&mut seen[p as usize], true)
        })
    {
        return Err(n.fail(format!("perm {perm:?} for X {:?}", &xs[..])));
    }
    let ys: Vec<i64> = perm.iter().map(|&p| xs[p as usize]).collect();
    let y = n.required(n.output(ctx, 0, ys.clone())?, "Y")?;
    if xv.is_empty() {
        return Ok(());
    }
    let rows = ys[0];
    let row: i64 = ys[1..].iter().product();
    let parts = n.parts_for(rows as usize, xv.len());
    let xp = Ptr(xv.as_ptr() as *mut f32);
    let r = xs.len();
    if perm[r - 1] as usize == r - 1 && r >= 2 {
        // The last axis stays: Y is runs of X's rows (an attention head split or merge, runs
        // of the head size), copied run by run; libtorch's strided copy took 0.7 ms for a
        // [250, 32, 4, 16] -> [250, 4, 32, 16] head split here.
        let run = xs[r - 1] as usize;
        let mut xstride = vec![1usize; r];
        for k in (0..r - 1).rev() {
            xstride[k] = xstride[k + 1] * xs[k + 1] as usize;
        }
        // Y's outer axes (all but the last), the X stride each steps.
        let (ydims, ystep): (Vec<usize>, Vec<usize>) = perm[..r - 1]
            .iter()
            .map(|&p| (xs[p as usize] as usize, xstride[p as usize]))
            .unzip();
        return parallel(ctx, parts, |i| {
            let (lo, hi) = part(rows, parts, i);
            let mut idx = vec![0usize; r - 1];
            idx[0] = lo as usize;
            let runs = (hi - lo) as usize * ydims[1..].iter().product::<usize>();
            let mut at: usize = ystep[0] * lo as usize;
            // SAFETY: Y has rows * row elements; part i alone writes rows lo..hi.
            let out = unsafe {
                std::slice::from_raw_parts_mut(y.get().add((lo * row) as usize), runs * run)
            };
            for dst in out.chunks_exact_mut(run) {
                dst.copy_from_slice(&xv[at..at + run]);
                // Odometer over Y's outer axes, innermost first.
                for k in (0..r - 1).rev() {
                    idx[k] += 1;
                    at += ystep[k];
                    if idx[k] < ydims[k] || k == 0 {
                        break;
                    }
                    at -= ystep[k] * ydims[k];
                    idx[k] = 0;
                }
            }
            Ok(())
        })
        .map_err(|e| n.fail(e));
    }
    parallel(ctx, parts, |i| {
        let (lo, hi) = part(rows, parts, i);
        if hi == lo {
            return Ok(());
        }
        // SAFETY: X is dense of shape xs; part i alone writes rows lo..hi of Y.
        c_call(|e, el| unsafe {
            probe_transpose(
                xp.get(),
                xs.as_ptr(),
                xs.len() as i64,
                perm.as_ptr(),
                lo,
                hi,
                y.get().add((lo * row) as usize),
                e,
                el,
            )
        })
    })
    .map_err(|e| n.fail(format!("libtorch: {e}")))
}

/// `LayerNormalizationGrad(dY, X, Scale, dA?) -> (dX?, dScale?, dB?)`, attributes `axis` and
/// `epsilon`, for Scale (and B) of the normalized shape. Per row (the D elements over the
/// normalized axes), with mean and invstd recomputed from X (two passes over a row that is
/// in cache), xhat = (X - mean) invstd and g = dY Scale:
/// `dX = invstd (g - mean(g) - xhat mean(g xhat))`, and `dScale = sum_rows dY xhat`,
/// `dB = sum_rows dY`. With dA (the residual stream's other gradient, `autodiff/fuse.rs`),
/// dX is `dA +` that.
fn layer_norm_grad(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let (dy, x, scale) = (n.input(ctx, 0)?, n.input(ctx, 1)?, n.input(ctx, 2)?);
    let add = ctx.input(3)?;
    let (dys, dyv) = dy.try_extract_tensor::<f32>()?;
    let (xs, xv) = x.try_extract_tensor::<f32>()?;
    let (_, sv) = scale.try_extract_tensor::<f32>()?;
    let av = match &add {
        Some(a) => {
            let (as_, av) = a.try_extract_tensor::<f32>()?;
            if as_[..] != xs[..] {
                return Err(n.fail(format!("dA {:?} and X {:?} differ", &as_[..], &xs[..])));
            }
            Some(av)
        }
        None => None,
    };
    let axis = n.axis(xs.len())?;
    let d = xs[axis..].iter().product::<i64>() as usize;
    if dys[..] != xs[..] || sv.len() != d || d == 0 {
        return Err(n.fail(format!(
            "dY {:?}, X {:?}, Scale of {} elements (the normalized shape has {d})",
            &dys[..],
            &xs[..],
            sv.len()
        )));
    }
    let eps = n.epsilon.unwrap_or(1e-5);
    let norm = xs[axis..].to_vec();
    let dx = n.output(ctx, 0, xs.to_vec())?;
    let ds = n.output(ctx, 1, norm.clone())?;
    let db = n.output(ctx, 2, norm)?;
    let rows = xv.len() / d;
    let parts = n.parts_for(rows, xv.len());
    // Per part: dScale then dB sums (2d values) in f32 over the part's rows, added across
    // parts in f64.
    let sums = std::sync::Mutex::new(vec![0f64; 2 * d]);
    parallel(ctx, parts, |i| {
        let (lo, hi) = part(rows as i64, parts, i);
        let mut acc = vec![0f32; 2 * d];
        let (mut xc, mut g) = (vec![0f32; d], vec![0f32; d]);
        let inv_d = 1.0 / d as f32;
        for r in lo as usize..hi as usize {
            let (xr, gr) = (&xv[r * d..][..d], &dyv[r * d..][..d]);
            // Two-pass variance: the mean first, then the centred squares.
            let mean = sum8(xr) * inv_d;
            for (c, &v) in xc.iter_mut().zip(xr) {
                *c = v - mean;
            }
            let inv = 1.0 / (dot8(&xc, &xc) * inv_d + eps).sqrt();
            for ((g, &dy), &s) in g.iter_mut().zip(gr).zip(sv) {
                *g = dy * s;
            }
            // xhat = xc * inv, kept unscaled: mean(g xhat) = inv mean(g xc).
            let mg = sum8(&g) * inv_d;
            let mgx = dot8(&g, &xc) * inv_d * inv;
            let (ds, db) = acc.split_at_mut(d);
            for k in 0..d {
                ds[k] += gr[k] * xc[k] * inv;
                db[k] += gr[k];
            }
            if !dx.get().is_null() {
                // SAFETY: dX has the shape of X; row r belongs to this part.
                let out = unsafe { std::slice::from_raw_parts_mut(dx.get().add(r * d), d) };
                for k in 0..d {
                    out[k] = inv * (g[k] - mg - xc[k] * inv * mgx);
                }
                if let Some(a) = av {
                    for (o, &a) in out.iter_mut().zip(&a[r * d..][..d]) {
                        *o += a;
                    }
                }
            }
        }
        let mut s = sums.lock().unwrap();
        for (s, &a) in s.iter_mut().zip(&acc) {
            *s += a as f64;
        }
        Ok(())
    })
    .map_err(|e| n.fail(e))?;
    let s = sums.into_inner().unwrap();
    for (p, part) in [(ds, &s[..d]), (db, &s[d..])] {
        if !p.get().is_null() {
            // SAFETY: the output has d elements.
            let out = unsafe { std::slice::from_raw_parts_mut(p.get(), d) };
            for (o, &v) in out.iter_mut().zip(part) {
                *o = v as f32;
            }
        }
    }
    Ok(())
}

/// `GatherGrad(dY, Indices, Shape) -> dX`: the gradient of `Gather(X, Indices, axis = 0)`, X of
/// shape `Shape`: `dX[Indices[i]] += dY[i]` row by row (an embedding table's gradient; negative
/// indices count from the end). In index order on one thread, so the sums are deterministic.
fn gather_grad(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let (dy, idx, shape) = (n.input(ctx, 0)?, n.input(ctx, 1)?, n.input(ctx, 2)?);
    let (_, dyv) = dy.try_extract_tensor::<f32>()?;
    let (_, iv) = idx.try_extract_tensor::<i64>()?;
    let (_, sv) = shape.try_extract_tensor::<i64>()?;
    let xs = sv.to_vec();
    if xs.is_empty() || xs.iter().any(|&v| v < 0) {
        return Err(n.fail(format!("Shape {xs:?}")));
    }
    let (rows, row) = (xs[0], xs[1..].iter().product::<i64>() as usize);
    if dyv.len() != iv.len() * row {
        return Err(n.fail(format!(
            "dY has {} elements for {} indices of rows of {row}",
            dyv.len(),
            iv.len()
        )));
    }
    let dx = n.required(n.output(ctx, 0, xs.clone())?, "dX")?;
    // SAFETY: dX has rows * row elements.
    let out = unsafe { std::slice::from_raw_parts_mut(dx.get(), rows as usize * row) };
    out.fill(0.0);
    for (i, &k) in iv.iter().enumerate() {
        let k = if k < 0 { k + rows } else { k };
        if k < 0 || k >= rows {
            return Err(n.fail(format!("index {} out of range for {rows} rows", iv[i])));
        }
        let dst = &mut out[k as usize * row..][..row];
        for (o, &g) in dst.iter_mut().zip(&dyv[i * row..][..row]) {
            *o += g;
        }
    }
    Ok(())
}

/// `MatMulAdd(A, B, bias) -> Y = A B + bias`, A [..., K], B [K, N], bias [N] (a Linear layer;
/// `ops/mat_mul.rs` fuses it): libtorch's addmm over A's rows as one [M, K] matrix, parts
/// taking rows.
fn matmul_add(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let (a, b, bias) = (n.input(ctx, 0)?, n.input(ctx, 1)?, n.input(ctx, 2)?);
    let (as_, av) = a.try_extract_tensor::<f32>()?;
    let (bs, bv) = b.try_extract_tensor::<f32>()?;
    let (cs, cv) = bias.try_extract_tensor::<f32>()?;
    let k = *as_.last().unwrap_or(&0);
    if as_.len() < 2 || bs.len() != 2 || bs[0] != k || cs[..] != [bs[1]] {
        return Err(n.fail(format!(
            "A {:?}, B {:?}, bias {:?}",
            &as_[..],
            &bs[..],
            &cs[..]
        )));
    }
    let nn = bs[1];
    let mut ys = as_.to_vec();
    *ys.last_mut().unwrap() = nn;
    let y = n.required(n.output(ctx, 0, ys)?, "Y")?;
    let m = if k == 0 { 0 } else { av.len() as i64 / k };
    let parts = n.parts_for(m as usize, (m * nn) as usize);
    let (ap, bp, cp) = (
        Ptr(av.as_ptr() as *mut f32),
        Ptr(bv.as_ptr() as *mut f32),
        Ptr(cv.as_ptr() as *mut f32),
    );
    parallel(ctx, parts, |i| {
        let (lo, hi) = part(m, parts, i);
        if hi == lo {
            return Ok(());
        }
        // SAFETY: A has m rows of k, Y m rows of nn; part i alone writes rows lo..hi of Y.
        c_call(|e, el| unsafe {
            probe_matmul_add(
                ap.get().add((lo * k) as usize),
                hi - lo,
                k,
                bp.get(),
                nn,
                cp.get(),
                y.get().add((lo * nn) as usize),
                e,
                el,
            )
        })
    })
    .map_err(|e| n.fail(format!("libtorch: {e}")))
}

/// `ReduceSumLeading(X) -> Y`: the sum over X's first `axis` axes, kept as 1s (ReduceSum with
/// those axes and keepdims = 1; a bias gradient's sum over batch and positions). X viewed as
/// [M, R]: each part adds its rows into an f32 row of its own (eight rows at a time, so the
/// inner loop vectorizes along R), and the parts' rows are added in f64.
fn reduce_sum_leading(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let x = n.input(ctx, 0)?;
    let (xs, xv) = x.try_extract_tensor::<f32>()?;
    let j = n.axis.ok_or_else(|| n.fail("attribute 'axis' missing"))?;
    if j < 0 || j as usize > xs.len() {
        return Err(n.fail(format!("axis {j} for X {:?}", &xs[..])));
    }
    let j = j as usize;
    let r = xs[j..].iter().product::<i64>() as usize;
    let mut ys = vec![1i64; j];
    ys.extend(&xs[j..]);
    let y = n.required(n.output(ctx, 0, ys)?, "Y")?;
    let m = if r == 0 { 0 } else { xv.len() / r };
    let parts = n.parts_for(m, xv.len());
    let sums = std::sync::Mutex::new(vec![0f64; r]);
    parallel(ctx, parts, |i| {
        let (lo, hi) = part(m as i64, parts, i);
        let mut acc = vec![0f32; r];
        for row in xv[lo as usize * r..hi as usize * r].chunks_exact(r) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        let mut s = sums.lock().unwrap();
        for (s, &a) in s.iter_mut().zip(&acc) {
            *s += a as f64;
        }
        Ok(())
    })
    .map_err(|e| n.fail(e))?;
    // SAFETY: Y has r elements.
    let out = unsafe { std::slice::from_raw_parts_mut(y.get(), r) };
    for (o, &s) in out.iter_mut().zip(sums.into_inner().unwrap().iter()) {
        *o = s as f32;
    }
    Ok(())
}

/// `LogSoftmaxGrad(dY, Y) -> dX` along `axis`: `dX = dY - exp(Y) sum_axis(dY)` (libtorch's
/// kernel); parts split the first axis when the softmax runs along another.
fn log_softmax_grad(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let (dy, y) = (n.input(ctx, 0)?, n.input(ctx, 1)?);
    let (dys, dyv) = dy.try_extract_tensor::<f32>()?;
    let (ys, yv) = y.try_extract_tensor::<f32>()?;
    if dys[..] != ys[..] {
        return Err(n.fail(format!("dY {:?} and Y {:?} differ", &dys[..], &ys[..])));
    }
    let axis = n.axis(ys.len())?;
    let dx = n.required(n.output(ctx, 0, ys.to_vec())?, "dX")?;
    let rows = if axis == 0 || ys.is_empty() { 1 } else { ys[0] };
    let row: i64 = if rows == 1 {
        yv.len() as i64
    } else {
        ys[1..].iter().product()
    };
    let parts = n.parts_for(rows as usize, yv.len());
    let (gp, yp) = (Ptr(dyv.as_ptr() as *mut f32), Ptr(yv.as_ptr() as *mut f32));
    parallel(ctx, parts, |i| {
        let (lo, hi) = part(rows, parts, i);
        if hi == lo {
            return Ok(());
        }
        let mut shape = ys.to_vec();
        if rows > 1 {
            shape[0] = hi - lo;
        }
        let at = (lo * row) as usize;
        // SAFETY: the three buffers hold rows * row elements; part i alone writes its rows.
        c_call(|e, el| unsafe {
            probe_log_softmax_grad(
                gp.get().add(at),
                yp.get().add(at),
                shape.as_ptr(),
                shape.len() as i64,
                axis as i64,
                dx.get().add(at),
                e,
                el,
            )
        })
    })
    .map_err(|e| n.fail(format!("libtorch: {e}")))
}

/// `GatherElementsGrad(dY, Indices, Shape) -> dX` along `axis`: the gradient of
/// `GatherElements(X, Indices, axis)` for X of shape `Shape`: zeros, then
/// `dX[i with i_axis = Indices[i]] += dY[i]` for every position i of Indices (negative indices
/// count from the end), in order on one thread (deterministic sums). The loss head's pick of
/// each target's log-probability is this op's usual case.
fn gather_elements_grad(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let (dy, idx, shape) = (n.input(ctx, 0)?, n.input(ctx, 1)?, n.input(ctx, 2)?);
    let (dys, dyv) = dy.try_extract_tensor::<f32>()?;
    let (is, iv) = idx.try_extract_tensor::<i64>()?;
    let (_, sv) = shape.try_extract_tensor::<i64>()?;
    let xs = sv.to_vec();
    let axis = n.axis(xs.len())?;
    if dys[..] != is[..] || is.len() != xs.len() || xs.iter().any(|&v| v < 0) {
        return Err(n.fail(format!(
            "dY {:?}, Indices {:?}, Shape {xs:?}",
            &dys[..],
            &is[..]
        )));
    }
    let dx = n.required(n.output(ctx, 0, xs.clone())?, "dX")?;
    let total = xs.iter().product::<i64>() as usize;
    // SAFETY: dX has the total elements of Shape.
    let out = unsafe { std::slice::from_raw_parts_mut(dx.get(), total) };
    out.fill(0.0);
    if iv.is_empty() {
        return Ok(());
    }
    // Indices may be smaller than X in every axis: each position's coordinates, with the
    // index along `axis`, go through X's strides.
    let r = xs.len();
    let x_along = xs[axis];
    let mut xstride = vec![1usize; r];
    for k in (0..r - 1).rev() {
        xstride[k] = xstride[k + 1] * xs[k + 1] as usize;
    }
    let mut coord = vec![0usize; r];
    for (p, (&k, &g)) in iv.iter().zip(dyv.iter()).enumerate() {
        let k = if k < 0 { k + x_along } else { k };
        if k < 0 || k >= x_along {
            return Err(n.fail(format!(
                "index {} out of range for axis {axis} of {x_along} at position {p}",
                iv[p]
            )));
        }
        let mut at = 0usize;
        for d in 0..r {
            at += if d == axis { k as usize } else { coord[d] } * xstride[d];
        }
        out[at] += g;
        // Next position of Indices (row-major odometer).
        for d in (0..r).rev() {
            coord[d] += 1;
            if coord[d] < is[d] as usize || d == 0 {
                break;
            }
            coord[d] = 0;
        }
    }
    Ok(())
}

/// `LayerNormalization(X, Scale, B?) -> Y` (ONNX's, without the statistics outputs), Scale and
/// B of the normalized shape: per row of D elements, `Y = (X - mean) invstd Scale + B` with the
/// two-pass variance, as [`layer_norm_grad`] recomputes it. Parts take rows.
fn layer_norm(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let (x, scale) = (n.input(ctx, 0)?, n.input(ctx, 1)?);
    let bias = ctx.input(2)?;
    let (xs, xv) = x.try_extract_tensor::<f32>()?;
    let (_, sv) = scale.try_extract_tensor::<f32>()?;
    let bv = match &bias {
        Some(b) => Some(b.try_extract_tensor::<f32>()?.1),
        None => None,
    };
    let axis = n.axis(xs.len())?;
    let d = xs[axis..].iter().product::<i64>() as usize;
    if sv.len() != d || bv.is_some_and(|b| b.len() != d) || d == 0 {
        return Err(n.fail(format!(
            "X {:?}, Scale of {} elements, B of {:?} (the normalized shape has {d})",
            &xs[..],
            sv.len(),
            bv.map(|b| b.len())
        )));
    }
    let eps = n.epsilon.unwrap_or(1e-5);
    let y = n.required(n.output(ctx, 0, xs.to_vec())?, "Y")?;
    let rows = xv.len() / d;
    let parts = n.parts_for(rows, xv.len());
    parallel(ctx, parts, |i| {
        let (lo, hi) = part(rows as i64, parts, i);
        let inv_d = 1.0 / d as f32;
        let mut xc = vec![0f32; d];
        for r in lo as usize..hi as usize {
            let xr = &xv[r * d..][..d];
            let mean = sum8(xr) * inv_d;
            for (c, &v) in xc.iter_mut().zip(xr) {
                *c = v - mean;
            }
            let inv = 1.0 / (dot8(&xc, &xc) * inv_d + eps).sqrt();
            // SAFETY: Y has the shape of X; row r belongs to this part.
            let out = unsafe { std::slice::from_raw_parts_mut(y.get().add(r * d), d) };
            match bv {
                Some(b) => {
                    for k in 0..d {
                        out[k] = xc[k] * inv * sv[k] + b[k];
                    }
                }
                None => {
                    for k in 0..d {
                        out[k] = xc[k] * inv * sv[k];
                    }
                }
            }
        }
        Ok(())
    })
    .map_err(|e| n.fail(e))
}

/// `MatMul(A, B) -> Y = op(A) op(B)`, attributes `transA`, `transB` (op swaps the last two
/// axes; default 0), A and B of rank 2 or more with equal leading (batch) axes or one of them
/// a matrix: libtorch's matmul, MKL's GEMM, which ran 1.4 ms where ONNX Runtime's MLAS took
/// 2.4 ms for a [8000, 64]^T x [8000, 256] weight gradient here, and 0.3 against 0.8 ms for
/// the [1000, 32, 16] x [1000, 16, 32] attention products. Parts: the rows of op(A) against
/// one matrix B, the batch when both are batched, and for a weight gradient A^T B (both
/// matrices, reducing over their common rows) the reduction, each part into its own buffer,
/// added at the end.
fn matmul(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let (a, b) = (n.input(ctx, 0)?, n.input(ctx, 1)?);
    let (as_, av) = a.try_extract_tensor::<f32>()?;
    let (bs, bv) = b.try_extract_tensor::<f32>()?;
    let [ta, tb] = n.trans;
    let (ar, br) = (as_.len(), bs.len());
    let bad = || {
        n.fail(format!(
            "A {:?} (transA {ta}), B {:?} (transB {tb})",
            &as_[..],
            &bs[..]
        ))
    };
    if ar < 2 || br < 2 {
        return Err(bad());
    }
    // op(A) is [.., m, k], op(B) [.., k2, nn].
    let (m, k) = if ta {
        (as_[ar - 1], as_[ar - 2])
    } else {
        (as_[ar - 2], as_[ar - 1])
    };
    let (k2, nn) = if tb {
        (bs[br - 1], bs[br - 2])
    } else {
        (bs[br - 2], bs[br - 1])
    };
    let batch: Vec<i64> = if br == 2 {
        as_[..ar - 2].to_vec()
    } else if ar == 2 || as_[..ar - 2] == bs[..br - 2] {
        bs[..br - 2].to_vec()
    } else {
        return Err(bad());
    };
    if k != k2 {
        return Err(bad());
    }
    let mut ys = batch.clone();
    ys.extend([m, nn]);
    let y = n.required(n.output(ctx, 0, ys.clone())?, "Y")?;
    let nb: i64 = batch.iter().product();
    let work = (nb * m * nn * k.max(1)) as usize;
    let (ap, bp) = (Ptr(av.as_ptr() as *mut f32), Ptr(bv.as_ptr() as *mut f32));
    let call =
        |a: *const f32, a_sh: &[i64], b: *const f32, b_sh: &[i64], y: *mut f32, y_sh: &[i64]| {
            // SAFETY: each pointer addresses a live dense f32 block of the shape passed with it.
            c_call(|e, el| unsafe {
                probe_matmul(
                    a,
                    a_sh.as_ptr(),
                    a_sh.len() as i64,
                    ta as i32,
                    b,
                    b_sh.as_ptr(),
                    b_sh.len() as i64,
                    tb as i32,
                    y,
                    y_sh.as_ptr(),
                    y_sh.len() as i64,
                    e,
                    el,
                )
            })
        };
    let fail = |e: String| n.fail(format!("libtorch: {e}"));
    if br == 2 && !ta {
        // Rows of A (all its leading axes with m) against one matrix.
        let rows = nb * m;
        let parts = n.parts_for(rows as usize, work >> 6);
        return parallel(ctx, parts, |i| {
            let (lo, hi) = part(rows, parts, i);
            if hi == lo {
                return Ok(());
            }
            // SAFETY: A has rows x k elements, Y rows x nn; part i alone writes its rows.
            let (a0, y0) = unsafe {
                (
                    ap.get().add((lo * k) as usize),
                    y.get().add((lo * nn) as usize),
                )
            };
            call(a0, &[hi - lo, k], bp.get(), &bs, y0, &[hi - lo, nn])
        })
        .map_err(fail);
    }
    if ar > 2 && br > 2 {
        // Both batched alike: parts take whole products.
        let parts = n.parts_for(nb as usize, work >> 6);
        let (a_mat, b_mat, y_mat) = (as_[ar - 2] * as_[ar - 1], bs[br - 2] * bs[br - 1], m * nn);
        return parallel(ctx, parts, |i| {
            let (lo, hi) = part(nb, parts, i);
            if hi == lo {
                return Ok(());
            }
            let c = hi - lo;
            // SAFETY: A, B, Y hold nb matrices each; part i alone writes matrices lo..hi.
            let (a0, b0, y0) = unsafe {
                (
                    ap.get().add((lo * a_mat) as usize),
                    bp.get().add((lo * b_mat) as usize),
                    y.get().add((lo * y_mat) as usize),
                )
            };
            call(
                a0,
                &[c, as_[ar - 2], as_[ar - 1]],
                b0,
                &[c, bs[br - 2], bs[br - 1]],
                y0,
                &[c, m, nn],
            )
        })
        .map_err(fail);
    }
    if ar == 2 && br == 2 && ta && !tb {
        // A weight gradient A^T B, A [r, m], B [r, nn]: the r rows split, partial products
        // summed (part 0 into Y).
        let r = as_[0];
        let parts = n.parts_for(r as usize, work >> 6);
        let len = (m * nn) as usize;
        let mut bufs = vec![0f32; len * parts.saturating_sub(1)];
        let bufp = Ptr(bufs.as_mut_ptr());
        parallel(ctx, parts, |i| {
            let (lo, hi) = part(r, parts, i);
            // SAFETY: A has r x m elements, B r x nn; part i writes Y (i = 0) or its own buffer.
            let (a0, b0, out) = unsafe {
                (
                    ap.get().add((lo * m) as usize),
                    bp.get().add((lo * nn) as usize),
                    if i == 0 {
                        y.get()
                    } else {
                        bufp.get().add((i - 1) * len)
                    },
                )
            };
            if hi == lo {
                // SAFETY: out has len elements.
                unsafe { std::slice::from_raw_parts_mut(out, len) }.fill(0.0);
                return Ok(());
            }
            call(a0, &[hi - lo, m], b0, &[hi - lo, nn], out, &[m, nn])
        })
        .map_err(fail)?;
        // SAFETY: Y has len elements, written by part 0.
        let out = unsafe { std::slice::from_raw_parts_mut(y.get(), len) };
        for chunk in bufs.chunks(len) {
            for (o, v) in out.iter_mut().zip(chunk) {
                *o += v;
            }
        }
        return Ok(());
    }
    call(ap.get(), &as_, bp.get(), &bs, y.get(), &ys).map_err(fail)
}

/// `ScaledDotProductAttention(Q, K, V, a?, b?, mask?) -> (O, LSE)`, attributes `blhe_in`,
/// `blhe_out`: `O = softmax(a b Q K^T + mask) V` over the last axis, and `LSE [B, H, L]`,
/// each row's log-sum-exp of the scaled, masked scores (what the backward needs instead of
/// the probabilities). Q [B, H, L, E], K and V [B, H, S, E], or all three stored as
/// [B, L, H, E] with `blhe_in` (the layout a Linear's output reshaped to heads has; read in
/// place with strides, no transpose); O likewise with `blhe_out`. PyTorch's exporter writes
/// scaled_dot_product_attention as `MatMul(Mul(Q, sqrt(s)), Mul(K^T, sqrt(s)))`, a mask Add,
/// Softmax and MatMul with V: `ops/scaled_dot_product_attention.rs` fuses that into this
/// node. libtorch's flash attention for CPU (PyTorch's own CPU path for
/// F.scaled_dot_product_attention), parts taking batch rows.
fn sdpa(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    run_sdpa(n, ctx, false)
}

/// `ScaledDotProductAttentionGrad(dO, Q, K, V, O, LSE, a?, b?, mask?) -> (dQ?, dK?, dV?)`:
/// the gradient of [`sdpa`]'s O (libtorch's flash attention backward for CPU: P recomputed
/// from Q, K and LSE, `dV = P^T dO`, `dS = P (dO V^T - rowsum(dO o O))`, `dQ = a b dS K`,
/// `dK = a b dS^T Q`).
fn sdpa_grad(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    run_sdpa(n, ctx, true)
}

fn run_sdpa(n: &Node, ctx: &ComputeContext, grad: bool) -> ort::Result<()> {
    // Forward inputs: Q K V [a] [b] [mask]; backward: dO Q K V O LSE [a] [b] [mask].
    let first = if grad { 1 } else { 0 };
    let opt = if grad { 6 } else { 3 };
    // Packed (`packed_heads` H): one [B, L, 3 H E] input holds Q, K and V side by side (a qkv
    // projection, read in place) and one output of its shape their gradients.
    let packed = n.packed_heads;
    let mut values = Vec::new();
    for i in first..first + if packed.is_some() { 1 } else { 3 } {
        values.push(n.input(ctx, i)?);
    }
    let mut scale_values = Vec::new();
    for i in opt..opt + 2 {
        if let Some(x) = ctx.input(i)? {
            scale_values.push(x);
        }
    }
    let mask_value = ctx.input(opt + 2)?;
    let [blhe_in, blhe_out] = n.blhe;
    let (xs, qv) = values[0].try_extract_tensor::<f32>()?;
    // (Q, K, V stored shapes; their first elements; the row stride of a packed input)
    let (qs0, ks0, vs0, [qp, kp, vp], in_row) = match packed {
        Some(h) => {
            let he = xs.last().copied().unwrap_or(0) / 3;
            if !blhe_in || xs.len() != 3 || h < 1 || he % h != 0 || xs[2] != 3 * he {
                return Err(n.fail(format!(
                    "packed Q, K, V {:?} with {h} heads: expected [B, L, 3 H E], blhe_in",
                    &xs[..]
                )));
            }
            let d = vec![xs[0], xs[1], h, he / h];
            let at = |k: i64| Ptr(qv.as_ptr().wrapping_add((k * he) as usize) as *mut f32);
            (d.clone(), d.clone(), d, [at(0), at(1), at(2)], 3 * he)
        }
        None => {
            let (ks0, kv) = values[1].try_extract_tensor::<f32>()?;
            let (vs0, vv) = values[2].try_extract_tensor::<f32>()?;
            let ptr = |v: &[f32]| Ptr(v.as_ptr() as *mut f32);
            (
                xs.to_vec(),
                ks0.to_vec(),
                vs0.to_vec(),
                [ptr(qv), ptr(kv), ptr(vv)],
                0,
            )
        }
    };
    // [B, H, L, E] from an input's stored shape, and back for an output.
    let swap = |d: &[i64], blhe: bool| -> Vec<i64> {
        if blhe && d.len() == 4 {
            vec![d[0], d[2], d[1], d[3]]
        } else {
            d.to_vec()
        }
    };
    let (qs, ks, vs) = (
        swap(&qs0, blhe_in),
        swap(&ks0, blhe_in),
        swap(&vs0, blhe_in),
    );
    if qs.len() != 4 || ks.len() != 4 || ks != vs || ks[..2] != qs[..2] || ks[3] != qs[3] {
        return Err(n.fail(format!(
            "Q {:?}, K {:?}, V {:?}: expected [B, H, L, E], [B, H, S, E] and [B, H, S, E] \
             (as [B, L, H, E] with blhe_in)",
            &qs0[..],
            &ks0[..],
            &vs0[..]
        )));
    }
    let mut scale = 1f64;
    for v in &scale_values {
        let (s, x) = v.try_extract_tensor::<f32>()?;
        if x.len() != 1 {
            return Err(n.fail(format!(
                "a scale factor of shape {:?}, not a scalar",
                &s[..]
            )));
        }
        scale *= x[0] as f64;
    }
    let (b, full) = (qs[0], [qs[0], qs[1], qs[2], ks[2]]);
    let (mask_shape, mask_ptr) = match &mask_value {
        Some(m) => {
            let (ms, mv) = m.try_extract_tensor::<f32>()?;
            let r = ms.len();
            let fits = r <= 4 && (ms.iter().zip(&full[4 - r..])).all(|(&d, &f)| d == f || d == 1);
            if !fits {
                return Err(n.fail(format!("mask {:?} does not broadcast to {full:?}", &ms[..])));
            }
            (ms.to_vec(), Ptr(mv.as_ptr() as *mut f32))
        }
        None => (vec![], Ptr(std::ptr::null_mut())),
    };
    let work = (b * qs[1] * qs[2] * ks[2] * qs[3]) as usize;
    let parts = n.parts_for(b as usize, work);
    let out_shape = swap(&qs, blhe_out);
    let null = || Ptr(std::ptr::null_mut());
    // Forward: O and LSE written; backward: dO, O, LSE read (held until the end), dQ, dK, dV
    // written.
    let read = match grad {
        true => Some([n.input(ctx, 0)?, n.input(ctx, 4)?, n.input(ctx, 5)?]),
        false => None,
    };
    let (dout, o, lse, dq, dk, dv) = if let Some([dout, o, lse]) = &read {
        let (dos, dov) = dout.try_extract_tensor::<f32>()?;
        let (os, ov) = o.try_extract_tensor::<f32>()?;
        let (ls, lv) = lse.try_extract_tensor::<f32>()?;
        if dos[..] != out_shape[..] || os[..] != out_shape[..] || ls[..] != qs[..3] {
            return Err(n.fail(format!(
                "dO {:?}, O {:?}, LSE {:?} for Q {:?}",
                &dos[..],
                &os[..],
                &ls[..],
                &qs[..]
            )));
        }
        let ptr = |v: &[f32]| Ptr(v.as_ptr() as *mut f32);
        let [dq, dk, dv] = match packed {
            Some(_) => {
                let dx = n.output(ctx, 0, xs.to_vec())?;
                let he = xs[2] / 3;
                let at = |k: i64| match dx.0.is_null() {
                    true => dx,
                    false => Ptr(dx.0.wrapping_add((k * he) as usize)),
                };
                [at(0), at(1), at(2)]
            }
            None => [
                n.output(ctx, 0, qs0.clone())?,
                n.output(ctx, 1, ks0.clone())?,
                n.output(ctx, 2, vs0.clone())?,
            ],
        };
        (ptr(dov), ptr(ov), ptr(lv), dq, dk, dv)
    } else {
        let o = n.required(n.output(ctx, 0, out_shape)?, "O")?;
        let lse = n.required(n.output(ctx, 1, qs[..3].to_vec())?, "LSE")?;
        (null(), o, lse, null(), null(), null())
    };
    parallel(ctx, parts, |i| {
        let (lo, hi) = part(b, parts, i);
        if hi == lo {
            return Ok(());
        }
        // SAFETY: every pointer is null or addresses a live dense tensor of the shape passed
        // (or implied) with it; part i alone writes batch rows lo..hi of the outputs.
        c_call(|e, el| unsafe {
            probe_sdpa(
                dout.get(),
                qp.get(),
                qs.as_ptr(),
                kp.get(),
                vp.get(),
                ks.as_ptr(),
                blhe_in as i32,
                blhe_out as i32,
                in_row,
                mask_ptr.get(),
                mask_shape.as_ptr(),
                mask_shape.len() as i64,
                scale,
                lo,
                hi,
                o.get(),
                lse.get(),
                dq.get(),
                dk.get(),
                dv.get(),
                e,
                el,
            )
        })
    })
    .map_err(|e| n.fail(format!("libtorch: {e}")))
}

/// The interleave of the phase form of a strided convolution's dX (`ops/conv.rs`): Z
/// [N, B*C, T...] holds B channel blocks of C, one per phase that has kernel taps; Y is
/// [N, C, sizes...] with `Y[n, c, h] = Z[n, phases[h mod s]*C + c, h div s]` per spatial axis,
/// `phases` listing every phase (h mod s per axis, row-major) with its block in Z, or -1 for
/// a phase no tap reaches, which gives 0. That is DepthToSpace (DCR, blocks s; ONNX Runtime's
/// took 21 ms where this takes 1), the crop of a Slice and the zero blocks of a Concat in one
/// pass over Y. 1 to 3 spatial axes, lifted to 3 (leading axes of extent 1).
struct Phased {
    /// Blocks s, Y's and Z's spatial sizes, over 3 axes.
    s: [usize; 3],
    h: [usize; 3],
    t: [usize; 3],
    phases: Vec<i64>,
    /// Y's channels C and Z's B*C.
    c: usize,
    zc: usize,
    /// Per position on the first two axes, its phase and Z's row (computed once per node: no
    /// division in the loops); per phase q of the last axis, how many positions it fills
    /// (w = q, q + s, ...).
    rows: [Vec<(usize, usize)>; 2],
    cols: Vec<usize>,
}

impl Phased {
    /// The geometry for Z of shape `zs` and the attributes `blocks`, `phases`, `sizes`,
    /// checked.
    fn new(zs: &[i64], attrs: &[Option<Vec<i64>>; 3]) -> std::result::Result<Phased, String> {
        let names = ["blocks", "phases", "sizes"];
        let mut got = Vec::with_capacity(3);
        for (a, v) in names.iter().zip(attrs) {
            got.push(
                v.clone()
                    .ok_or_else(|| format!("attribute '{a}' missing"))?,
            );
        }
        let [blocks, phases, sizes] = <[Vec<i64>; 3]>::try_from(got).unwrap();
        let r = blocks.len();
        let used: Vec<i64> = phases.iter().copied().filter(|&p| p >= 0).collect();
        let nb = used.len() as i64;
        let mut seen = vec![false; used.len()];
        let distinct = used
            .iter()
            .all(|&p| p < nb && !std::mem::replace(&mut seen[p as usize], true));
        if !(1..=3).contains(&r)
            || zs.len() != r + 2
            || sizes.len() != r
            || blocks.iter().any(|&s| s < 1)
            || phases.len() as i64 != blocks.iter().product::<i64>()
            || sizes.iter().any(|&h| h < 0)
            || nb == 0
            || !distinct
            || zs[1] % nb != 0
            || (0..r).any(|a| sizes[a] > 0 && (sizes[a] - 1) / blocks[a] >= zs[2 + a])
        {
            return Err(format!(
                "Z {zs:?} with blocks {blocks:?}, phases {phases:?}, sizes {sizes:?}: expected \
                 1-3 spatial axes, the phases' blocks 0..B each once, Z's channels a multiple \
                 of B and Z's T covering the sizes (T > (H - 1) / s)"
            ));
        }
        let lift = |v: &[i64]| -> [usize; 3] {
            let mut o = [1; 3];
            for (a, &x) in v.iter().enumerate() {
                o[3 - r + a] = x as usize;
            }
            o
        };
        let (s, h, t) = (lift(&blocks), lift(&sizes), lift(&zs[2..]));
        let axis =
            |a: usize| -> Vec<(usize, usize)> { (0..h[a]).map(|x| (x % s[a], x / s[a])).collect() };
        Ok(Phased {
            s,
            h,
            t,
            phases,
            c: (zs[1] / nb) as usize,
            zc: zs[1] as usize,
            rows: [axis(0), axis(1)],
            cols: (0..s[2])
                .map(|q| h[2].saturating_sub(q).div_ceil(s[2]))
                .collect(),
        })
    }
    /// Y's shape for `n` samples and `r` spatial axes.
    fn y_shape(&self, n: i64, r: usize) -> Vec<i64> {
        let mut ys = vec![n, self.c as i64];
        ys.extend(self.h[3 - r..].iter().map(|&x| x as i64));
        ys
    }
    fn plane(&self) -> usize {
        self.h.iter().product()
    }
    fn zsample(&self) -> usize {
        self.zc * self.t.iter().product::<usize>()
    }
    /// Y's plane of channel `ch` from Z's sample `z` (its B*C channels).
    fn fill(&self, z: &[f32], ch: usize, dst: &mut [f32]) {
        let (s, t, h) = (&self.s, &self.t, &self.h);
        let zplane = t[0] * t[1] * t[2];
        let mut rows = dst.chunks_exact_mut(h[2]);
        for &(ph0, t0) in &self.rows[0] {
            for &(ph1, t1) in &self.rows[1] {
                let dst = rows.next().unwrap();
                let (ph, zrow) = ((ph0 * s[1] + ph1) * s[2], (t0 * t[1] + t1) * t[2]);
                // Z's row of phase q of the last axis, or None for a phase without taps.
                let src = |q: usize| -> Option<&[f32]> {
                    let blk = self.phases[ph + q];
                    (blk >= 0).then(|| {
                        let at = (blk as usize * self.c + ch) * zplane + zrow;
                        &z[at..at + self.cols[q]]
                    })
                };
                if s[2] == 2 && h[2] % 2 == 0 {
                    // Stride 2 on an even row: pairs (phase 0, phase 1), which vectorize.
                    let pairs = dst.chunks_exact_mut(2);
                    match (src(0), src(1)) {
                        (Some(a), Some(b)) => {
                            for ((d, &x), &y) in pairs.zip(a).zip(b) {
                                d[0] = x;
                                d[1] = y;
                            }
                        }
                        (Some(a), None) => {
                            for (d, &x) in pairs.zip(a) {
                                d[0] = x;
                                d[1] = 0.0;
                            }
                        }
                        (None, Some(b)) => {
                            for (d, &y) in pairs.zip(b) {
                                d[0] = 0.0;
                                d[1] = y;
                            }
                        }
                        (None, None) => dst.fill(0.0),
                    }
                    continue;
                }
                for q in 0..s[2].min(h[2]) {
                    let d = dst[q..].iter_mut().step_by(s[2]);
                    match src(q) {
                        Some(z) => d.zip(z).for_each(|(d, &v)| *d = v),
                        None => d.for_each(|d| *d = 0.0),
                    }
                }
            }
        }
    }
}

/// `Interleave(Z) -> Y`, attributes `blocks` (s per spatial axis), `phases` and `sizes` (per
/// spatial axis): [`Phased`] as an op; parts split Y's N*C planes.
fn interleave(n: &Node, ctx: &ComputeContext) -> ort::Result<()> {
    let z = n.input(ctx, 0)?;
    let (zs, zv) = z.try_extract_tensor::<f32>()?;
    let g = Phased::new(zs, &n.interleave).map_err(|e| n.fail(e))?;
    let y = n.required(n.output(ctx, 0, g.y_shape(zs[0], zs.len() - 2))?, "Y")?;
    let (plane, planes, zsample) = (g.plane(), zs[0] as usize * g.c, g.zsample());
    if planes * plane == 0 {
        return Ok(());
    }
    let parts = n.parts_for(planes, planes * plane);
    parallel(ctx, parts, |i| {
        let (lo, hi) = part(planes as i64, parts, i);
        // SAFETY: Y has planes * plane elements; part i alone writes planes lo..hi.
        let out = unsafe {
            std::slice::from_raw_parts_mut(
                y.get().add(lo as usize * plane),
                (hi - lo) as usize * plane,
            )
        };
        for (p, dst) in (lo as usize..hi as usize).zip(out.chunks_exact_mut(plane)) {
            g.fill(&zv[p / g.c * zsample..][..zsample], p % g.c, dst);
        }
        Ok(())
    })
    .map_err(|e| n.fail(e))
}
