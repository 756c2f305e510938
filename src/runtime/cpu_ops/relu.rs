//! Relu's kernels, in plain Rust, one pass each where the standard form takes several over the
//! same large tensors (each pass of a [250, 8, 28, 28] f32 tensor moves 6 MB):
//! - `ReluGrad(dY, X) -> dX = X <= 0 ? 0 : dY` (PyTorch's `threshold_backward`: NaN passes dY;
//!   standard: LessOrEqual, Not, Cast, Mul; X may be the Relu's output, see `ops/relu.rs`);
//! - `AddRelu(A, B) -> Y = max(A + B, 0)`, one shape (a residual Add and its Relu);
//! - `SumReluGrad(dY1, dY2, X) -> dX = X <= 0 ? 0 : dY1 + dY2`: a Relu whose output has two
//!   consumers (a residual block's input feeds the block and its shortcut) gets the sum of
//!   their gradients; this is that Sum and the ReluGrad in one pass.
//!
//! Parts take equal element ranges ([`elementwise_parts`]).
use super::exec::{bounds, elementwise_parts, split};
use super::op::{Call, CpuOp, Io::*};
use crate::ops::rule::kernels::{ADD_RELU, RELU_GRAD, SUM_RELU_GRAD};

/// `out = x <= 0 ? 0 : a + b` (`[x > 0]`, except that NaN passes, as in PyTorch). The mask is applied as bits (all ones or zero, and-ed with the sum:
/// the same values as a branch, NaN included) so that the loop compiles to vector compares and
/// ands; written as `if x > 0 { a + b } else { 0 }` LLVM kept a branch per element (the loads
/// of a and b sank into it) and ran the loop scalar, ~2x slower than ReluGrad per byte.
pub fn sum_relu_mask(out: &mut [f32], a: &[f32], b: &[f32], x: &[f32]) {
    let n = out.len();
    let (a, b, x) = (&a[..n], &b[..n], &x[..n]);
    for j in 0..n {
        out[j] = masked(a[j] + b[j], x[j]);
    }
}

/// `out = x <= 0 ? 0 : a` (as [`sum_relu_mask`]).
pub fn relu_mask(out: &mut [f32], a: &[f32], x: &[f32]) {
    let n = out.len();
    let (a, x) = (&a[..n], &x[..n]);
    for j in 0..n {
        out[j] = masked(a[j], x[j]);
    }
}

/// +0.0 where `x <= 0`, else `g` (NaN included), without a branch.
#[inline(always)]
fn masked(g: f32, x: f32) -> f32 {
    let m = if x <= 0.0 { 0 } else { u32::MAX };
    f32::from_bits(g.to_bits() & m)
}

/// Inputs `names` of one shape, each checked against the last; `what` says how they differ.
fn same_shape<'c>(
    c: &Call<'c>,
    names: &[&str],
    what: &str,
) -> ort::Result<(Vec<i64>, Vec<&'c [f32]>)> {
    let mut ins = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        ins.push(c.input_named(i, name)?);
    }
    let shape = ins.last().unwrap().0.clone();
    if ins.iter().any(|(s, _)| *s != shape) {
        let listed: Vec<String> = names
            .iter()
            .zip(&ins)
            .map(|(n, (s, _))| format!("{n} {s:?}"))
            .collect();
        return Err(c.fail(format!("{}{what}", join_and(&listed))));
    }
    Ok((shape, ins.into_iter().map(|(_, v)| v).collect()))
}

/// `a, b and c`.
fn join_and(items: &[String]) -> String {
    match items.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// An elementwise kernel: `f(out, [inputs' ranges])` over one output `out_name` of the inputs'
/// shape, parts taking element ranges.
fn elementwise(
    c: &Call,
    names: &[&str],
    differ: &str,
    out_name: &str,
    f: impl Fn(&mut [f32], &[&[f32]]) + Sync + Send,
) -> ort::Result<()> {
    let (shape, ins) = same_shape(c, names, differ)?;
    let out = c.required(0, shape, out_name)?;
    let n = out.len();
    let b = bounds(n, elementwise_parts(n, c.parts));
    let pieces = split(out, 1, &b).into_iter().zip(b.iter().copied());
    c.run(pieces.collect(), |_, (out, (lo, hi))| {
        let ranges: Vec<&[f32]> = ins.iter().map(|v| &v[lo..hi]).collect();
        f(out, &ranges);
        Ok(())
    })
    .map_err(|e| c.fail(e))
}

/// `probe.cpu:ReluGrad`: `dX = X <= 0 ? 0 : dY` in one pass.
pub static RELU_GRAD_OP: CpuOp<()> = CpuOp::new(RELU_GRAD, relu_grad).io(&[F32, F32], &[F32]);

fn relu_grad(_: &(), c: &Call) -> ort::Result<()> {
    elementwise(c, &["dY", "X"], " differ", "dX", |out, v| {
        for ((o, &g), &x) in out.iter_mut().zip(v[0]).zip(v[1]) {
            *o = if x <= 0.0 { 0.0 } else { g };
        }
    })
}

/// `probe.cpu:AddRelu(A, B) -> Y = max(A + B, 0)`, A and B of one shape (no broadcasting): a
/// residual connection's Add and the Relu after it in one pass instead of two.
pub static ADD_RELU_OP: CpuOp<()> = CpuOp::new(ADD_RELU, add_relu).io(&[F32, F32], &[F32]);

fn add_relu(_: &(), c: &Call) -> ort::Result<()> {
    let differ = " differ (no broadcasting here)";
    elementwise(c, &["A", "B"], differ, "Y", |out, v| {
        for ((o, &u), &w) in out.iter_mut().zip(v[0]).zip(v[1]) {
            let t = u + w;
            *o = if t < 0.0 { 0.0 } else { t };
        }
    })
}

/// `probe.cpu:SumReluGrad(dY1, dY2, X) -> dX = X <= 0 ? 0 : dY1 + dY2`.
pub static SUM_RELU_GRAD_OP: CpuOp<()> =
    CpuOp::new(SUM_RELU_GRAD, sum_relu_grad).io(&[F32, F32, F32], &[F32]);

fn sum_relu_grad(_: &(), c: &Call) -> ort::Result<()> {
    elementwise(c, &["dY1", "dY2", "X"], " differ", "dX", |out, v| {
        sum_relu_mask(out, v[0], v[1], v[2])
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{f64s, rand, Node, EPS};
    use super::{ADD_RELU, RELU_GRAD, SUM_RELU_GRAD};

    /// Over the 65,536 elements at which elementwise kernels split, and not a multiple of 3.
    const N: usize = 70_001;

    /// The mask's edge cases, placed first in X: zeros of both signs, NaN, the subnormals
    /// either side of 0, the infinities.
    const EDGES: [f32; 8] = [
        0.0,
        -0.0,
        f32::NAN,
        1e-45,
        -1e-45,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.0,
    ];

    fn x() -> Vec<f32> {
        let mut x = rand(N, 1);
        x[..EDGES.len()].copy_from_slice(&EDGES);
        x
    }

    /// dY with NaN and an infinity where X is 0 and -0.0: masked, they give 0.
    fn dy(seed: u64) -> Vec<f32> {
        let mut dy = rand(N, seed);
        dy[..2].copy_from_slice(&[f32::NAN, f32::INFINITY]);
        dy
    }

    /// Whether the gradient passes at `x`: PyTorch's relu backward (`threshold_backward`,
    /// `x <= 0 ? 0 : dY`) at x = 0, -0.0, the subnormals, and NaN (NaN <= 0 is false: dY
    /// passes).
    fn passes(x: f32) -> bool {
        !(x <= 0.0)
    }

    #[test]
    fn relu_grad_passes_dy_where_x_is_positive() {
        let (dy, x) = (dy(2), x());
        let want: Vec<f64> = (0..N)
            .map(|i| if passes(x[i]) { dy[i] as f64 } else { 0.0 })
            .collect();
        let node = Node::new(RELU_GRAD).input(&[N], &dy).input(&[N], &x);
        node.output(&[N], &want, 0.0).check();
    }

    #[test]
    fn sum_relu_grad_masks_the_sum() {
        let (dy1, dy2, x) = (dy(3), rand(N, 4), x());
        // dY1 + dY2 is rounded once in f32: half an ulp.
        let want: Vec<f64> = (0..N)
            .map(|i| match passes(x[i]) {
                true => dy1[i] as f64 + dy2[i] as f64,
                false => 0.0,
            })
            .collect();
        let node = Node::new(SUM_RELU_GRAD).input(&[N], &dy1).input(&[N], &dy2);
        node.input(&[N], &x).output(&[N], &want, EPS).check();
    }

    #[test]
    fn add_relu_is_max_of_the_sum_and_0() {
        let (a, mut b) = (x(), rand(N, 5));
        // Edges of A + B: -0.0 + -0.0 = -0.0 (kept, as torch.relu keeps it), NaN, inf - inf.
        b[1] = -0.0;
        b[5] = f32::NEG_INFINITY;
        let want: Vec<f64> = f64s(&a)
            .iter()
            .zip(f64s(&b))
            .map(|(a, b)| a + b)
            .map(|t| if t < 0.0 { 0.0 } else { t })
            .collect();
        let node = Node::new(ADD_RELU).input(&[N], &a).input(&[N], &b);
        node.output(&[N], &want, EPS).check();
    }

    #[test]
    fn empty_tensors_and_shape_checks() {
        for op in [RELU_GRAD, ADD_RELU] {
            let node = Node::new(op).input(&[2, 0], &[]).input(&[2, 0], &[]);
            node.output(&[2, 0], &[], 0.0).check();
        }
        let node = Node::new(SUM_RELU_GRAD).input(&[3], &[0.0; 3]);
        let node = node.input(&[3], &[0.0; 3]).input(&[4], &[0.0; 4]);
        node.output(&[3], &[0.0; 3], 0.0)
            .fails("dY1 [3], dY2 [3] and X [4] differ");
    }
}
