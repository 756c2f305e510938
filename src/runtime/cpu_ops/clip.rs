//! `ClipGrad(dY, X, lo?, hi?) -> dX = pass ? dY : 0`, attribute `inclusive` (0 or 1), the input
//! gradient of `Clip(X, lo, hi)` in one pass where the standard form takes four (Greater, Less,
//! And, Where; on torchvision's mobilenet_v2 at 3x224x224 those were 31% of a batch, Where
//! alone 24%: ONNX Runtime's Where with a broadcast scalar runs elementwise without vectors).
//! - inclusive 0, hardtanh (`nn.ReLU6`, `hardtanh_backward`): pass = lo < X < hi;
//! - inclusive 1, clamp (`clamp_backward`): pass = lo <= X <= hi.
//!
//! An absent bound does not constrain; NaN passes nothing (every comparison with it is false).
//! lo and hi are scalars (one element), as Clip's are. Parts take element ranges.
use super::op::{Attrs, Call, CpuOp, FromAttrs, Io::*};
use crate::ops::rule::kernels::CLIP_GRAD;

/// Attribute `inclusive`: whether the bounds themselves pass the gradient (clamp) or not
/// (hardtanh).
pub struct Inclusive(bool);

impl FromAttrs for Inclusive {
    fn read(a: &Attrs) -> ort::Result<Inclusive> {
        Ok(Inclusive(a.flag("inclusive")))
    }
}

/// `probe.cpu:ClipGrad`.
pub static CLIP_GRAD_OP: CpuOp<Inclusive> =
    CpuOp::new(CLIP_GRAD, clip_grad).io(&[F32, F32, OptF32, OptF32], &[F32]);

/// The bound in input `i`, or None when absent.
fn bound(c: &Call, i: usize, name: &str) -> ort::Result<Option<f32>> {
    match c.optional(i)? {
        None => Ok(None),
        Some((_, [v])) => Ok(Some(*v)),
        Some((s, _)) => Err(c.fail(format!("{name} {:?} is not a scalar", &s[..]))),
    }
}

/// `out = lo < x < hi ? g : +0.0`, each side `<=` where its flag says so; the mask applied as
/// bits so that the loop compiles to vector compares and ands (see `relu::sum_relu_mask`). The
/// sides are const parameters: one loop without branches per combination.
fn masked<const LO_IN: bool, const HI_IN: bool>(
    out: &mut [f32],
    g: &[f32],
    x: &[f32],
    lo: f32,
    hi: f32,
) {
    let n = out.len();
    let (g, x) = (&g[..n], &x[..n]);
    let bits = |pass: bool| if pass { u32::MAX } else { 0 };
    for j in 0..n {
        let above = if LO_IN { x[j] >= lo } else { x[j] > lo };
        let below = if HI_IN { x[j] <= hi } else { x[j] < hi };
        out[j] = f32::from_bits(g[j].to_bits() & bits(above) & bits(below));
    }
}

/// dX for bounds `lo`, `hi` (None: that side does not clip, only NaN stops there).
pub fn clip_mask(
    out: &mut [f32],
    g: &[f32],
    x: &[f32],
    lo: Option<f32>,
    hi: Option<f32>,
    inclusive: bool,
) {
    // An absent bound is an infinity compared inclusively: -inf <= x holds for every x but NaN.
    let (lo_in, hi_in) = (inclusive || lo.is_none(), inclusive || hi.is_none());
    let (lo, hi) = (lo.unwrap_or(f32::NEG_INFINITY), hi.unwrap_or(f32::INFINITY));
    match (lo_in, hi_in) {
        (false, false) => masked::<false, false>(out, g, x, lo, hi),
        (false, true) => masked::<false, true>(out, g, x, lo, hi),
        (true, false) => masked::<true, false>(out, g, x, lo, hi),
        (true, true) => masked::<true, true>(out, g, x, lo, hi),
    }
}

fn clip_grad(a: &Inclusive, c: &Call) -> ort::Result<()> {
    let (lo, hi) = (bound(c, 2, "lo")?, bound(c, 3, "hi")?);
    c.elementwise_grad(|dy, x, dx| {
        clip_mask(dx, dy, x, lo, hi, a.0);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rand, Node};
    use super::CLIP_GRAD;
    use crate::model::graph::attr_int;

    /// Over the 65,536 elements at which elementwise kernels split, and not a multiple of 3.
    const N: usize = 70_001;

    /// The bounds 0 and 6 exactly, either side of them, zeros of both signs, NaN, infinities.
    const EDGES: [f32; 10] = [
        0.0,
        -0.0,
        6.0,
        5.999_999_5,
        6.000_001,
        1e-45,
        -1e-45,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];

    /// X over [-2, 8] with the edges first; dY with NaN and an infinity where X is 0 and -0.0.
    fn operands() -> (Vec<f32>, Vec<f32>) {
        let mut x: Vec<f32> = rand(N, 1).iter().map(|v| 3.0 + 5.0 * v).collect();
        x[..EDGES.len()].copy_from_slice(&EDGES);
        let mut dy = rand(N, 2);
        dy[..2].copy_from_slice(&[f32::NAN, f32::INFINITY]);
        (dy, x)
    }

    /// PyTorch's backward kernels: hardtanh_backward passes dY where lo < x < hi, clamp's where
    /// lo <= x <= hi; neither at NaN.
    /// An absent bound passes every X but NaN (the standard form leaves its compare out).
    fn want(dy: &[f32], x: &[f32], lo: Option<f32>, hi: Option<f32>, inclusive: bool) -> Vec<f64> {
        let pass = |x: f32| {
            let above = lo.map_or(!x.is_nan(), |lo| if inclusive { lo <= x } else { lo < x });
            let below = hi.map_or(!x.is_nan(), |hi| if inclusive { x <= hi } else { x < hi });
            above && below
        };
        (0..dy.len())
            .map(|i| if pass(x[i]) { dy[i] as f64 } else { 0.0 })
            .collect()
    }

    #[test]
    fn passes_dy_strictly_inside_for_hardtanh_and_at_the_bounds_for_clamp() {
        let (dy, x) = operands();
        for inclusive in [false, true] {
            let node = Node::new(CLIP_GRAD)
                .attr(attr_int("inclusive", inclusive as i64))
                .input(&[N], &dy)
                .input(&[N], &x)
                .input(&[], &[0.0])
                .input(&[1], &[6.0]);
            node.output(&[N], &want(&dy, &x, Some(0.0), Some(6.0), inclusive), 0.0)
                .check();
        }
    }

    #[test]
    fn an_absent_bound_does_not_clip() {
        let (dy, x) = operands();
        let only_lo = Node::new(CLIP_GRAD)
            .input(&[N], &dy)
            .input(&[N], &x)
            .input(&[], &[0.0]);
        // X = +inf passes with no upper bound; -inf with no lower one.
        only_lo
            .output(&[N], &want(&dy, &x, Some(0.0), None, false), 0.0)
            .check();
        let only_hi = Node::new(CLIP_GRAD)
            .input(&[N], &dy)
            .input(&[N], &x)
            .absent()
            .input(&[], &[6.0]);
        only_hi
            .output(&[N], &want(&dy, &x, None, Some(6.0), false), 0.0)
            .check();
    }

    #[test]
    fn shape_checks() {
        let node = Node::new(CLIP_GRAD)
            .input(&[3], &[0.0; 3])
            .input(&[4], &[0.0; 4]);
        node.output(&[3], &[0.0; 3], 0.0)
            .fails("dY [3] and X [4] differ");
        let node = Node::new(CLIP_GRAD)
            .input(&[2], &[0.0; 2])
            .input(&[2], &[0.0; 2])
            .input(&[2], &[0.0; 2]);
        node.output(&[2], &[0.0; 2], 0.0)
            .fails("lo [2] is not a scalar");
    }
}
