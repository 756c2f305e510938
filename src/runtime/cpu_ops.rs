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
//!   strided convolutions where it beat ONNX Runtime's ConvTranspose (see `ops/conv.rs`).
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
    Ok(OperatorDomain::new(DOMAIN)?
        .add(Conv { parts })?
        .add(ConvGrad { parts })?
        .add(ReluGrad { parts })?
        .add(BatchNormalizationGrad { parts })?
        .add(BatchNormalization { parts })?
        .add(AddRelu { parts })?
        .add(SumReluGrad { parts })?
        .add(ReluBatchNormalizationGrad { parts })?
        .add(ConvGradX { parts })?)
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
            let mut err = [0u8; 1024];
            // SAFETY: X, W, B are live dense f32 tensors of the shapes passed; part i reads
            // rows lo..hi of X and writes rows lo..hi of Y, which no other part touches.
            let rc = unsafe {
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
                    yp.get().add((lo * y_row) as usize),
                    err.as_mut_ptr() as *mut c_char,
                    err.len(),
                )
            };
            if rc != 0 {
                return Err(c_error(&err));
            }
            Ok(())
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
        // Outputs the node does not name come back as None: libtorch skips them (output_mask).
        let mut dw = ctx.output(0, ws.to_vec())?;
        let mut db = ctx.output(1, vec![ws[0]])?;
        let ptr = |v: &mut Option<ort::value::ValueRefMut<'_>>| -> ort::Result<Ptr<f32>> {
            Ok(Ptr(match v {
                Some(v) => v.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr(),
                None => std::ptr::null_mut(),
            }))
        };
        let (pdw, pdb) = (ptr(&mut dw)?, ptr(&mut db)?);
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
            let mut err = [0u8; 1024];
            // SAFETY: dY, X, W are live dense f32 tensors of the shapes passed; part i reads
            // rows lo..hi and writes its own dW, dB (no dX: null).
            let rc = unsafe {
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
                    err.as_mut_ptr() as *mut c_char,
                    err.len(),
                )
            };
            if rc != 0 {
                return Err(c_error(&err));
            }
            Ok(())
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
        let mut dx = ctx.output(0, xs.to_vec())?;
        let mut s1 = ctx.output(1, vec![c as i64])?;
        let mut s2 = ctx.output(2, vec![c as i64])?;
        let ptr = |v: &mut Option<ort::value::ValueRefMut<'_>>| -> ort::Result<Ptr<f32>> {
            Ok(Ptr(match v {
                Some(v) => v.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr(),
                None => std::ptr::null_mut(),
            }))
        };
        let (pdx, ps1, ps2) = (ptr(&mut dx)?, ptr(&mut s1)?, ptr(&mut s2)?);
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
                    if !pdx.get().is_null() {
                        // SAFETY: dX has the shape of X; plane (s, ch) belongs to this part.
                        let o = unsafe { std::slice::from_raw_parts_mut(pdx.get().add(at), plane) };
                        for (o, &g) in o.iter_mut().zip(g) {
                            *o = g * kc;
                        }
                    }
                    // Eight f32 lanes per plane (so the loop vectorizes), then f64 across planes.
                    let (mut a1, mut a2) = ([0f32; 8], [0f32; 8]);
                    let (gc, xc) = (g.chunks_exact(8), xp.chunks_exact(8));
                    let (gr, xr) = (gc.remainder(), xc.remainder());
                    for (g8, x8) in gc.zip(xc) {
                        for j in 0..8 {
                            a1[j] += g8[j];
                            a2[j] += g8[j] * (x8[j] - mc);
                        }
                    }
                    for (&g, &v) in gr.iter().zip(xr) {
                        a1[0] += g;
                        a2[0] += g * (v - mc);
                    }
                    t1 += a1.iter().map(|&v| v as f64).sum::<f64>();
                    t2 += a2.iter().map(|&v| v as f64).sum::<f64>();
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
        let mut dx = ctx.output(0, xs.to_vec())?;
        let mut s1 = ctx.output(1, vec![c as i64])?;
        let mut s2 = ctx.output(2, vec![c as i64])?;
        let ptr = |v: &mut Option<ort::value::ValueRefMut<'_>>| -> ort::Result<Ptr<f32>> {
            Ok(Ptr(match v {
                Some(v) => v.try_extract_tensor_mut::<f32>()?.1.as_mut_ptr(),
                None => std::ptr::null_mut(),
            }))
        };
        let (pdx, ps1, ps2) = (ptr(&mut dx)?, ptr(&mut s1)?, ptr(&mut s2)?);
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
                    let (g, xp) = (&gbuf[..], &xv[at..at + plane]);
                    if !pdx.get().is_null() {
                        // SAFETY: dX has the shape of X; plane (s, ch) belongs to this part.
                        let o = unsafe { std::slice::from_raw_parts_mut(pdx.get().add(at), plane) };
                        for (o, &g) in o.iter_mut().zip(g) {
                            *o = g * kc;
                        }
                    }
                    // The sums as BatchNormalizationGrad forms them: eight f32 lanes per plane,
                    // then f64 across planes.
                    let (mut a1, mut a2) = ([0f32; 8], [0f32; 8]);
                    let (gc, xc) = (g.chunks_exact(8), xp.chunks_exact(8));
                    let (gr, xr) = (gc.remainder(), xc.remainder());
                    for (g8, x8) in gc.zip(xc) {
                        for j in 0..8 {
                            a1[j] += g8[j];
                            a2[j] += g8[j] * (x8[j] - mc);
                        }
                    }
                    for (&g, &v) in gr.iter().zip(xr) {
                        a1[0] += g;
                        a2[0] += g * (v - mc);
                    }
                    t1 += a1.iter().map(|&v| v as f64).sum::<f64>();
                    t2 += a2.iter().map(|&v| v as f64).sum::<f64>();
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
            let mut err = [0u8; 1024];
            // SAFETY: dY, X, W are live dense f32 tensors of the shapes passed; part i reads
            // rows lo..hi of dY and X and writes rows lo..hi of dX, which no other part touches.
            let rc = unsafe {
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
                    err.as_mut_ptr() as *mut c_char,
                    err.len(),
                )
            };
            if rc != 0 {
                return Err(c_error(&err));
            }
            Ok(())
        })
        .map_err(|e| fail(format!("libtorch: {e}")))
    }
}
