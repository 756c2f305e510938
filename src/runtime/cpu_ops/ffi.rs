//! Every `extern "C"` function the kernels call: the libtorch shim (`../torch_kernels.cpp`,
//! compiled by build.rs) and glibc's `mallopt`, each behind a safe wrapper.
//!
//! The C++ functions take raw pointers and shapes: they build libtorch tensors over the
//! pointers with those shapes (`at::from_blob`), read the inputs and write the outputs within
//! them, and return nonzero with a message in `err` on failure. So each wrapper takes slices
//! (read-only inputs as `&[f32]`, outputs as `&mut [f32]`) and checks, before the call, that
//! every slice holds exactly the elements its shape says (or, for the attention kernel's
//! strided views, at least the elements the view reaches); that check is what makes the
//! `unsafe` calls below sound. A failed check is a bug in the kernel that called.
use std::os::raw::{c_char, c_int};

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
        y_planes: *const *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn probe_conv_grad(
        dy: *const f32,
        dy_shape: *const i64,
        dy_lo: i64,
        x: *const f32,
        x_shape: *const i64,
        w: *const f32,
        w_shape: *const i64,
        rank: i64,
        stride: *const i64,
        padding: *const i64,
        dilation: *const i64,
        groups: i64,
        dx_planes: *const *mut f32,
        dw: *mut f32,
        db: *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn probe_silu(x: *const f32, n: i64, y: *mut f32, err: *mut c_char, err_len: usize) -> i32;
    fn probe_silu_grad(
        dy: *const f32,
        x: *const f32,
        n: i64,
        dx: *mut f32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
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
        log: i32,
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
        tb: i32,
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

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    fn mallopt(param: c_int, value: c_int) -> c_int;
}

/// glibc's `mallopt(param, value)`: sets one of malloc's tuning parameters; false when glibc
/// refused the value (the default stays, which is only slower).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn set_malloc_param(param: c_int, value: c_int) -> bool {
    // SAFETY: mallopt only sets a tuning parameter of malloc.
    unsafe { mallopt(param, value) != 0 }
}

/// Calls a C++ kernel with an error buffer; its message on failure.
fn c_call(f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<(), String> {
    let mut err = [0u8; 1024];
    if f(err.as_mut_ptr() as *mut c_char, err.len()) != 0 {
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        return Err(String::from_utf8_lossy(&err[..end]).into_owned());
    }
    Ok(())
}

/// The element count of `shape` (an error for a negative extent).
fn numel(shape: &[i64]) -> Result<usize, String> {
    if shape.iter().any(|&d| d < 0) {
        return Err(format!("shape {shape:?} has a negative extent"));
    }
    Ok(shape.iter().product::<i64>() as usize)
}

/// `len` must be `want` (`what` names the buffer in the error).
fn holds(what: &str, len: usize, want: usize) -> Result<(), String> {
    if len != want {
        return Err(format!("{what} holds {len} elements, {want} expected"));
    }
    Ok(())
}

/// Each buffer `(what, data, shape)` holds exactly what its shape says.
fn dense(bufs: &[(&str, &[f32], &[i64])]) -> Result<(), String> {
    for &(what, data, shape) in bufs {
        holds(what, data.len(), numel(shape)?)?;
    }
    Ok(())
}

/// `v`'s pointer, null for `None`.
fn ptr_or_null(v: Option<&[f32]>) -> *const f32 {
    v.map_or(std::ptr::null(), <[f32]>::as_ptr)
}

fn mut_or_null(v: Option<&mut [f32]>) -> *mut f32 {
    v.map_or(std::ptr::null_mut(), <[f32]>::as_mut_ptr)
}

/// A convolution's geometry as libtorch takes it: per spatial axis (1 to 3), the stride, the
/// symmetric padding and the dilation; the group count.
pub struct ConvGeometry<'a> {
    pub strides: &'a [i64],
    pub padding: &'a [i64],
    pub dilations: &'a [i64],
    pub group: i64,
}

impl ConvGeometry<'_> {
    /// The rank of tensors `shapes` (all alike), checked against the spatial axes.
    fn rank(&self, shapes: &[&[i64]]) -> Result<usize, String> {
        let k = self.strides.len();
        let rank = k + 2;
        if !(1..=3).contains(&k)
            || self.padding.len() != k
            || self.dilations.len() != k
            || shapes.iter().any(|s| s.len() != rank)
        {
            return Err(format!(
                "shapes {shapes:?} for strides {:?}, padding {:?}, dilations {:?}",
                self.strides, self.padding, self.dilations
            ));
        }
        Ok(rank)
    }
}

/// The planes of an [N, C, ...] tensor of shape `shape` as the C++ side takes them: one pointer
/// a plane, n-major, each plane checked to hold its elements.
fn plane_ptrs(
    what: &str,
    planes: &mut [&mut [f32]],
    shape: &[i64],
) -> Result<Vec<*mut f32>, String> {
    let count = numel(&shape[..2])?;
    let plane = numel(&shape[2..])?;
    if planes.len() != count || count == 0 {
        return Err(format!(
            "{what}: {} planes for shape {shape:?} ({count} expected, at least one)",
            planes.len()
        ));
    }
    planes
        .iter_mut()
        .map(|p| {
            holds(what, p.len(), plane)?;
            Ok(p.as_mut_ptr())
        })
        .collect()
}

/// `y = Conv(x, w, b)` (then `max(y, 0)` with `relu`), y of shape `ys` given as its planes
/// (`ys[0] * ys[1]` of them, n-major: a part taking output channels holds its planes of a
/// larger Y, and passes W's and B's rows of them).
#[allow(clippy::too_many_arguments)]
pub fn conv(
    (x, xs): (&[f32], &[i64]),
    (w, ws): (&[f32], &[i64]),
    b: Option<&[f32]>,
    g: &ConvGeometry,
    relu: bool,
    y: &mut [&mut [f32]],
    ys: &[i64],
) -> Result<(), String> {
    let rank = g.rank(&[xs, ws, ys])?;
    dense(&[("X", x, xs), ("W", w, ws)])?;
    if let Some(b) = b {
        holds("B", b.len(), ws[0] as usize)?;
    }
    if ys[1] != ws[0] {
        return Err(format!("Y {ys:?} for W {ws:?}"));
    }
    let planes = plane_ptrs("Y", y, ys)?;
    // SAFETY: the module doc: every buffer holds what its shape says (Y's planes each theirs).
    c_call(|e, el| unsafe {
        probe_conv(
            x.as_ptr(),
            xs.as_ptr(),
            w.as_ptr(),
            ws.as_ptr(),
            ptr_or_null(b),
            ys.as_ptr(),
            rank as i64,
            g.strides.as_ptr(),
            g.padding.as_ptr(),
            g.dilations.as_ptr(),
            g.group,
            relu as i32,
            planes.as_ptr(),
            e,
            el,
        )
    })
}

/// The gradients of `Y = Conv(X, W, B)` the caller asks for: dX (X's shape, as its planes,
/// n-major), dW, dB. `dy_lo`: W holds output channels `dy_lo..` of the convolution whose dY is
/// given whole (then dW's and dB's rows are those channels').
pub fn conv_grad(
    (dy, dys): (&[f32], &[i64]),
    dy_lo: usize,
    (x, xs): (&[f32], &[i64]),
    (w, ws): (&[f32], &[i64]),
    g: &ConvGeometry,
    dx: Option<&mut [&mut [f32]]>,
    [dw, db]: [Option<&mut [f32]>; 2],
) -> Result<(), String> {
    let rank = g.rank(&[dys, xs, ws])?;
    dense(&[("dY", dy, dys), ("X", x, xs), ("W", w, ws)])?;
    if dy_lo as i64 + ws[0] > dys[1] {
        return Err(format!("W {ws:?} from channel {dy_lo} of dY {dys:?}"));
    }
    for (what, out, want) in [("dW", &dw, numel(ws)?), ("dB", &db, ws[0] as usize)] {
        if let Some(out) = out {
            holds(what, out.len(), want)?;
        }
    }
    let dx_planes = match dx {
        Some(planes) => Some(plane_ptrs("dX", planes, xs)?),
        None => None,
    };
    // SAFETY: the module doc: every buffer holds what its shape says (dX's planes each theirs,
    // W's rows within dY's channels).
    c_call(|e, el| unsafe {
        probe_conv_grad(
            dy.as_ptr(),
            dys.as_ptr(),
            dy_lo as i64,
            x.as_ptr(),
            xs.as_ptr(),
            w.as_ptr(),
            ws.as_ptr(),
            rank as i64,
            g.strides.as_ptr(),
            g.padding.as_ptr(),
            g.dilations.as_ptr(),
            g.group,
            dx_planes.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
            mut_or_null(dw),
            mut_or_null(db),
            e,
            el,
        )
    })
}

/// libtorch's silu over flat buffers.
pub fn silu(x: &[f32], y: &mut [f32]) -> Result<(), String> {
    holds("X", x.len(), y.len())?;
    // SAFETY: the module doc: both buffers hold n elements.
    c_call(|e, el| unsafe { probe_silu(x.as_ptr(), y.len() as i64, y.as_mut_ptr(), e, el) })
}

/// libtorch's silu_backward over flat buffers.
pub fn silu_grad(dy: &[f32], x: &[f32], dx: &mut [f32]) -> Result<(), String> {
    holds("dY", dy.len(), dx.len())?;
    holds("X", x.len(), dx.len())?;
    // SAFETY: the module doc: the three buffers hold n elements.
    c_call(|e, el| unsafe {
        probe_silu_grad(
            dy.as_ptr(),
            x.as_ptr(),
            dx.len() as i64,
            dx.as_mut_ptr(),
            e,
            el,
        )
    })
}

/// libtorch's gelu_backward over flat buffers (`tanh`: the tanh approximation's).
pub fn gelu_grad(dy: &[f32], x: &[f32], tanh: bool, dx: &mut [f32]) -> Result<(), String> {
    holds("dY", dy.len(), dx.len())?;
    holds("X", x.len(), dx.len())?;
    // SAFETY: the module doc: the three buffers hold n elements.
    c_call(|e, el| unsafe {
        probe_gelu_grad(
            dy.as_ptr(),
            x.as_ptr(),
            dx.len() as i64,
            tanh as i32,
            dx.as_mut_ptr(),
            e,
            el,
        )
    })
}

/// `y = softmax(x)` (with `log`, log-softmax) along `axis`, both of `shape`.
pub fn softmax(
    x: &[f32],
    shape: &[i64],
    axis: usize,
    log: bool,
    y: &mut [f32],
) -> Result<(), String> {
    dense(&[("X", x, shape), ("Y", y, shape)])?;
    // SAFETY: the module doc: X and Y hold what `shape` says.
    c_call(|e, el| unsafe {
        probe_softmax(
            x.as_ptr(),
            shape.as_ptr(),
            shape.len() as i64,
            axis as i64,
            log as i32,
            y.as_mut_ptr(),
            e,
            el,
        )
    })
}

/// The gradient of a log-softmax along `axis` (libtorch's), all three of `shape`.
pub fn log_softmax_grad(
    dy: &[f32],
    y: &[f32],
    shape: &[i64],
    axis: usize,
    dx: &mut [f32],
) -> Result<(), String> {
    let rank = shape.len() as i64;
    dense(&[("dY", dy, shape), ("Y", y, shape), ("dX", dx, shape)])?;
    // SAFETY: the module doc: the three buffers hold what `shape` says.
    c_call(|e, el| unsafe {
        probe_log_softmax_grad(
            dy.as_ptr(),
            y.as_ptr(),
            shape.as_ptr(),
            rank,
            axis as i64,
            dx.as_mut_ptr(),
            e,
            el,
        )
    })
}

/// Rows `[lo, hi)` (first axis) of `X.permute(perm)` into `y` (those rows only); `perm` a
/// permutation of X's axes.
pub fn transpose(
    (x, xs): (&[f32], &[i64]),
    perm: &[i64],
    (lo, hi): (i64, i64),
    y: &mut [f32],
) -> Result<(), String> {
    let r = xs.len();
    let mut seen = vec![false; r];
    if r == 0
        || perm.len() != r
        || perm
            .iter()
            .any(|&p| p < 0 || p as usize >= r || std::mem::replace(&mut seen[p as usize], true))
        || lo < 0
        || lo > hi
        || hi > xs[perm[0] as usize]
    {
        return Err(format!("perm {perm:?}, rows {lo}..{hi} for X {xs:?}"));
    }
    holds("X", x.len(), numel(xs)?)?;
    let row: i64 = perm[1..].iter().map(|&p| xs[p as usize]).product();
    holds("Y", y.len(), ((hi - lo) * row) as usize)?;
    // SAFETY: the module doc: X holds what `xs` says, Y the rows asked for.
    c_call(|e, el| unsafe {
        probe_transpose(
            x.as_ptr(),
            xs.as_ptr(),
            r as i64,
            perm.as_ptr(),
            lo,
            hi,
            y.as_mut_ptr(),
            e,
            el,
        )
    })
}

/// `y = a b + bias`, a [m, k], b [k, n], bias [n], y [m, n] (libtorch's addmm).
pub fn matmul_add(
    a: &[f32],
    [m, k, n]: [i64; 3],
    (b, tb): (&[f32], bool),
    bias: &[f32],
    y: &mut [f32],
) -> Result<(), String> {
    let bs = if tb { [n, k] } else { [k, n] };
    dense(&[
        ("A", a, &[m, k]),
        ("B", b, &bs),
        ("bias", bias, &[n]),
        ("Y", y, &[m, n]),
    ])?;
    // SAFETY: the module doc: every buffer holds what its shape says.
    c_call(|e, el| unsafe {
        probe_matmul_add(
            a.as_ptr(),
            m,
            k,
            b.as_ptr(),
            n,
            tb as i32,
            bias.as_ptr(),
            y.as_mut_ptr(),
            e,
            el,
        )
    })
}

/// `y = op(a) op(b)` (libtorch's matmul), op swapping the last two axes where `ta` / `tb`.
pub fn matmul(
    (a, a_sh, ta): (&[f32], &[i64], bool),
    (b, b_sh, tb): (&[f32], &[i64], bool),
    y: &mut [f32],
    y_sh: &[i64],
) -> Result<(), String> {
    dense(&[("A", a, a_sh), ("B", b, b_sh), ("Y", y, y_sh)])?;
    // SAFETY: the module doc: every buffer holds what its shape says.
    c_call(|e, el| unsafe {
        probe_matmul(
            a.as_ptr(),
            a_sh.as_ptr(),
            a_sh.len() as i64,
            ta as i32,
            b.as_ptr(),
            b_sh.as_ptr(),
            b_sh.len() as i64,
            tb as i32,
            y.as_mut_ptr(),
            y_sh.as_ptr(),
            y_sh.len() as i64,
            e,
            el,
        )
    })
}

/// One attention's inputs as the C++ side reads them. Shapes are [B, H, L, E] for Q and
/// [B, H, S, E] for K and V; with `blhe_in` the data is stored as [B, L, H, E] with rows of
/// `in_row` elements (0: H E, dense; 3 H E: Q, K and V packed side by side, each slice then
/// starting at its own first element); O likewise with `blhe_out`, dense.
pub struct Attention<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub q_shape: &'a [i64],
    pub kv_shape: &'a [i64],
    pub blhe_in: bool,
    pub blhe_out: bool,
    pub in_row: i64,
    /// Broadcast to [B, H, L, S] (up to 4 axes, aligned at the end).
    pub mask: Option<(&'a [f32], &'a [i64])>,
    pub scale: f64,
}

/// How many elements the heads view of `bhle` (as the C++ side's `heads`) reaches.
fn heads_reach(bhle: &[i64], blhe: bool, row: i64) -> Result<usize, String> {
    numel(bhle)?;
    if !blhe || bhle.contains(&0) {
        return numel(bhle);
    }
    let (b, h, l, e) = (bhle[0], bhle[1], bhle[2], bhle[3]);
    let row = if row <= 0 { h * e } else { row };
    Ok(((b - 1) * l * row + (l - 1) * row + (h - 1) * e + e) as usize)
}

/// At least `want` elements in `what`.
fn reaches(what: &str, len: usize, want: usize) -> Result<(), String> {
    if len < want {
        return Err(format!("{what} holds {len} elements, {want} read"));
    }
    Ok(())
}

impl Attention<'_> {
    fn check(&self) -> Result<(), String> {
        if self.q_shape.len() != 4 || self.kv_shape.len() != 4 {
            return Err(format!("Q {:?}, K {:?}", self.q_shape, self.kv_shape));
        }
        let (bi, row) = (self.blhe_in, self.in_row);
        reaches("Q", self.q.len(), heads_reach(self.q_shape, bi, row)?)?;
        reaches("K", self.k.len(), heads_reach(self.kv_shape, bi, row)?)?;
        reaches("V", self.v.len(), heads_reach(self.kv_shape, bi, row)?)?;
        if let Some((m, ms)) = self.mask {
            if ms.len() > 4 {
                return Err(format!("mask {ms:?}"));
            }
            holds("mask", m.len(), numel(ms)?)?;
        }
        Ok(())
    }
    /// Elements of one batch row of an output of `bhle` (both layouts have B first).
    fn per_row(bhle: &[i64]) -> usize {
        bhle[1..].iter().product::<i64>() as usize
    }
}

/// Where a backward part's gradients go, each the part's batch rows `[lo, hi)` of its output.
pub enum AttentionGrads<'a> {
    /// dQ, dK, dV, each an output of its input's shape, or not asked for.
    Separate([Option<&'a mut [f32]>; 3]),
    /// One output of the packed input's shape [B, L, 3 H E] for all three.
    Packed(Option<&'a mut [f32]>),
}

/// The pointer to row 0 of a tensor whose rows `[lo, ..)` start at `part`: the C++ side takes
/// whole-tensor pointers and narrows to rows `[lo, hi)` itself, so it touches `part` only.
fn row0(part: &mut [f32], lo: i64, per_row: usize) -> *mut f32 {
    part.as_mut_ptr().wrapping_sub(lo as usize * per_row)
}

/// Forward attention for batch rows `[lo, hi)`: O's and LSE's rows, `o` and `lse`.
pub fn attention(
    a: &Attention,
    (lo, hi): (i64, i64),
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<(), String> {
    a.check()?;
    if lo < 0 || lo > hi || hi > a.q_shape[0] {
        return Err(format!("rows {lo}..{hi} of Q {:?}", a.q_shape));
    }
    let n = (hi - lo) as usize;
    let (o_row, lse_row) = (
        Attention::per_row(a.q_shape),
        Attention::per_row(&a.q_shape[..3]),
    );
    holds("O", o.len(), n * o_row)?;
    holds("LSE", lse.len(), n * lse_row)?;
    let (o, lse) = (row0(o, lo, o_row), row0(lse, lo, lse_row));
    let null = std::ptr::null_mut();
    sdpa_call(a, std::ptr::null(), (lo, hi), [o, lse, null, null, null])
}

/// The saved forward values a backward part reads whole: dO and O (of O's shape) and LSE
/// [B, H, L].
pub struct AttentionSaved<'a> {
    pub dout: &'a [f32],
    pub o: &'a [f32],
    pub lse: &'a [f32],
}

/// Backward attention for batch rows `[lo, hi)`.
pub fn attention_grad(
    a: &Attention,
    s: &AttentionSaved,
    (lo, hi): (i64, i64),
    grads: AttentionGrads,
) -> Result<(), String> {
    a.check()?;
    if lo < 0 || lo > hi || hi > a.q_shape[0] {
        return Err(format!("rows {lo}..{hi} of Q {:?}", a.q_shape));
    }
    let n = (hi - lo) as usize;
    holds("dO", s.dout.len(), numel(a.q_shape)?)?;
    holds("O", s.o.len(), numel(a.q_shape)?)?;
    holds("LSE", s.lse.len(), numel(&a.q_shape[..3])?)?;
    let (q_row, kv_row) = (
        Attention::per_row(a.q_shape),
        Attention::per_row(a.kv_shape),
    );
    let null = std::ptr::null_mut::<f32>();
    let [dq, dk, dv] = match grads {
        AttentionGrads::Separate([dq, dk, dv]) => {
            if a.in_row != 0 {
                return Err("separate gradients of a packed Q, K, V".to_string());
            }
            let at = |what: &str, g: Option<&mut [f32]>, per_row: usize| match g {
                Some(g) => holds(what, g.len(), n * per_row).map(|_| row0(g, lo, per_row)),
                None => Ok(null),
            };
            [
                at("dQ", dq, q_row)?,
                at("dK", dk, kv_row)?,
                at("dV", dv, kv_row)?,
            ]
        }
        AttentionGrads::Packed(None) => [null; 3],
        AttentionGrads::Packed(Some(g)) => {
            // [B, L, 3 H E]: dQ, dK, dV side by side in each row of in_row = 3 H E.
            let he = a.q_shape[1] * a.q_shape[3];
            if a.in_row != 3 * he || a.kv_shape != a.q_shape || !a.blhe_in {
                return Err(format!("packed gradients for Q {:?}", a.q_shape));
            }
            holds("dQKV", g.len(), n * 3 * q_row)?;
            let base = row0(g, lo, 3 * q_row);
            [0, he, 2 * he].map(|k| base.wrapping_add(k as usize))
        }
    };
    // The C++ signature takes O and LSE mutable for the forward's sake; the backward only
    // reads them.
    let (o, lse) = (s.o.as_ptr().cast_mut(), s.lse.as_ptr().cast_mut());
    sdpa_call(a, s.dout.as_ptr(), (lo, hi), [o, lse, dq, dk, dv])
}

/// `probe_sdpa` over checked buffers: `outs` are O, LSE, dQ, dK, dV (O and LSE only read when
/// `dout` is not null: the C++ side writes them in the forward only).
fn sdpa_call(
    a: &Attention,
    dout: *const f32,
    (lo, hi): (i64, i64),
    [o, lse, dq, dk, dv]: [*mut f32; 5],
) -> Result<(), String> {
    let (mask, mask_shape) = a
        .mask
        .map_or((std::ptr::null(), &[][..]), |(m, s)| (m.as_ptr(), s));
    // SAFETY: the module doc: the callers checked every buffer against the views the C++ side
    // makes of it, and each output pointer reaches only the part's rows [lo, hi).
    c_call(|e, el| unsafe {
        probe_sdpa(
            dout,
            a.q.as_ptr(),
            a.q_shape.as_ptr(),
            a.k.as_ptr(),
            a.v.as_ptr(),
            a.kv_shape.as_ptr(),
            a.blhe_in as i32,
            a.blhe_out as i32,
            a.in_row,
            mask,
            mask_shape.as_ptr(),
            mask_shape.len() as i64,
            a.scale,
            lo,
            hi,
            o,
            lse,
            dq,
            dk,
            dv,
            e,
            el,
        )
    })
}
