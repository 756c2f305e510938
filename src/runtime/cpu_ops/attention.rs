//! Scaled dot-product attention by libtorch's flash attention for CPU (PyTorch's own CPU path
//! for F.scaled_dot_product_attention), one node each way for what the exporter writes as ~10
//! forward ops (`MatMul(Mul(Q, sqrt(s)), Mul(K^T, sqrt(s)))`, a mask Add, Softmax and MatMul
//! with V), fused before differentiation by `ops/scaled_dot_product_attention/fusion.rs`:
//! - `ScaledDotProductAttention(Q, K, V, a?, b?, mask?) -> (O, LSE)`:
//!   `O = softmax(a b Q K^T + mask) V` over the last axis, and `LSE [B, H, L]`, each row's
//!   log-sum-exp of the scaled, masked scores (what the backward needs instead of the
//!   probabilities);
//! - `ScaledDotProductAttentionGrad(dO, Q, K, V, O, LSE, a?, b?, mask?) -> (dQ?, dK?, dV?)`:
//!   the gradient of O (P recomputed from Q, K and LSE, `dV = P^T dO`,
//!   `dS = P (dO V^T - rowsum(dO o O))`, `dQ = a b dS K`, `dK = a b dS^T Q`).
//!
//! Q [B, H, L, E], K and V [B, H, S, E], or all three stored as [B, L, H, E] with attribute
//! `blhe_in` (the layout a Linear's output reshaped to heads has; read in place with strides,
//! no transpose); O likewise with `blhe_out`. With `packed_heads` H, one [B, L, 3 H E] input
//! holds Q, K and V side by side (a qkv projection, read in place; K and V absent) and one
//! output of its shape their gradients. Parts take batch rows.
use super::exec::{bounds, split, split_opt};
use super::ffi::{self, Attention, AttentionGrads, AttentionSaved};
use super::op::{Attrs, Call, CpuOp, FromAttrs, Io, Io::*};
use crate::ops::rule::kernels::{SCALED_DOT_PRODUCT_ATTENTION, SCALED_DOT_PRODUCT_ATTENTION_GRAD};

/// The attributes both take.
pub struct AttentionAttrs {
    /// Q, K, V (`blhe_in`) and O (`blhe_out`) stored as [B, L, H, E] rather than [B, H, L, E].
    blhe: [bool; 2],
    /// Q, K, V packed in one input of H heads.
    packed_heads: Option<i64>,
}

impl FromAttrs for AttentionAttrs {
    fn read(a: &Attrs) -> ort::Result<AttentionAttrs> {
        Ok(AttentionAttrs {
            blhe: ["blhe_in", "blhe_out"].map(|n| a.flag(n)),
            packed_heads: a.get("packed_heads"),
        })
    }
}

/// `d` ([B, L, H, E] when `blhe`) as [B, H, L, E], or back.
fn swap(d: &[i64], blhe: bool) -> Vec<i64> {
    if blhe && d.len() == 4 {
        vec![d[0], d[2], d[1], d[3]]
    } else {
        d.to_vec()
    }
}

/// What both ways read: Q, K, V (views of one packed input, or three), their stored shapes,
/// the scale, the mask.
struct Operands<'c> {
    /// The packed input's shape [B, L, 3 H E], or empty.
    packed: Vec<i64>,
    /// Q, K, V as stored.
    stored: [Vec<i64>; 3],
    /// Q and K as [B, H, L, E] and [B, H, S, E].
    qs: Vec<i64>,
    ks: Vec<i64>,
    data: [&'c [f32]; 3],
    in_row: i64,
    scale: f64,
    mask: Option<(Vec<i64>, &'c [f32])>,
}

fn operands<'c>(c: &Call<'c>, at: &AttentionAttrs, grad: bool) -> ort::Result<Operands<'c>> {
    // Forward inputs: Q K V [a] [b] [mask]; backward: dO Q K V O LSE [a] [b] [mask].
    let first = if grad { 1 } else { 0 };
    let opt = if grad { 6 } else { 3 };
    let [blhe_in, _] = at.blhe;
    let (xs, qv) = c.input(first)?;
    let (packed, stored, data, in_row) = match at.packed_heads {
        Some(h) => {
            let he = xs.last().copied().unwrap_or(0) / 3;
            if !blhe_in || xs.len() != 3 || h < 1 || he % h != 0 || xs[2] != 3 * he {
                return Err(c.fail(format!(
                    "packed Q, K, V {:?} with {h} heads: expected [B, L, 3 H E], blhe_in",
                    &xs[..]
                )));
            }
            let d = vec![xs[0], xs[1], h, he / h];
            let from = |k: i64| qv.get((k * he) as usize..).unwrap_or(&[]);
            let data = [from(0), from(1), from(2)];
            (xs, [d.clone(), d.clone(), d], data, 3 * he)
        }
        None => {
            let (ks0, kv) = c.input(first + 1)?;
            let (vs0, vv) = c.input(first + 2)?;
            (vec![], [xs, ks0, vs0], [qv, kv, vv], 0)
        }
    };
    let [qs, ks, vs] = [0, 1, 2].map(|i| swap(&stored[i], blhe_in));
    if qs.len() != 4 || ks.len() != 4 || ks != vs || ks[..2] != qs[..2] || ks[3] != qs[3] {
        return Err(c.fail(format!(
            "Q {:?}, K {:?}, V {:?}: expected [B, H, L, E], [B, H, S, E] and [B, H, S, E] \
             (as [B, L, H, E] with blhe_in)",
            &stored[0][..],
            &stored[1][..],
            &stored[2][..]
        )));
    }
    let mut scale = 1f64;
    for i in opt..opt + 2 {
        if let Some((s, x)) = c.optional(i)? {
            if x.len() != 1 {
                return Err(c.fail(format!(
                    "a scale factor of shape {:?}, not a scalar",
                    &s[..]
                )));
            }
            scale *= x[0] as f64;
        }
    }
    let full = [qs[0], qs[1], qs[2], ks[2]];
    let mask = match c.optional(opt + 2)? {
        Some((ms, mv)) => {
            let r = ms.len();
            let fits = r <= 4 && (ms.iter().zip(&full[4 - r..])).all(|(&d, &f)| d == f || d == 1);
            if !fits {
                return Err(c.fail(format!("mask {:?} does not broadcast to {full:?}", &ms[..])));
            }
            Some((ms, mv))
        }
        None => None,
    };
    Ok(Operands {
        packed,
        stored,
        qs,
        ks,
        data,
        in_row,
        scale,
        mask,
    })
}

impl Operands<'_> {
    fn attention(&self, at: &AttentionAttrs) -> Attention<'_> {
        Attention {
            q: self.data[0],
            k: self.data[1],
            v: self.data[2],
            q_shape: &self.qs,
            kv_shape: &self.ks,
            blhe_in: at.blhe[0],
            blhe_out: at.blhe[1],
            in_row: self.in_row,
            mask: self.mask.as_ref().map(|(s, m)| (*m, &s[..])),
            scale: self.scale,
        }
    }
    /// Batch rows per part.
    fn bounds(&self, c: &Call) -> Vec<(usize, usize)> {
        let (qs, ks) = (&self.qs, &self.ks);
        let b = qs[0];
        let work = (b * qs[1] * qs[2] * ks[2] * qs[3]) as usize;
        bounds(b as usize, c.parts_for(b as usize, work))
    }
}

/// Elements per batch row of `shape`.
fn per_row(shape: &[i64]) -> usize {
    shape[1..].iter().product::<i64>() as usize
}

/// `probe.cpu:ScaledDotProductAttention`.
// K and V absent when packed with Q in input 0.
pub static SCALED_DOT_PRODUCT_ATTENTION_OP: CpuOp<AttentionAttrs> =
    CpuOp::new(SCALED_DOT_PRODUCT_ATTENTION, scaled_dot_product_attention)
        .io(&[F32, OptF32, OptF32, OptF32, OptF32, OptF32], &[F32, F32]);

fn scaled_dot_product_attention(at: &AttentionAttrs, c: &Call) -> ort::Result<()> {
    let ops = operands(c, at, false)?;
    let out_shape = swap(&ops.qs, at.blhe[1]);
    let o = c.required(0, out_shape.clone(), "O")?;
    let lse = c.required(1, ops.qs[..3].to_vec(), "LSE")?;
    let b = ops.bounds(c);
    let pieces: Vec<_> = split(o, per_row(&out_shape), &b)
        .into_iter()
        .zip(split(lse, per_row(&ops.qs[..3]), &b))
        .zip(b.iter().copied())
        .collect();
    let a = ops.attention(at);
    c.run(pieces, |_, ((o, lse), (lo, hi))| {
        if hi == lo {
            return Ok(());
        }
        ffi::attention(&a, (lo as i64, hi as i64), o, lse)
    })
    .map_err(|e| c.torch(e))
}

/// dO Q K V O LSE a? b? mask?, with K and V absent when packed with Q.
const GRAD_INPUTS: &[Io] = &[F32, F32, OptF32, OptF32, F32, F32, OptF32, OptF32, OptF32];

/// `probe.cpu:ScaledDotProductAttentionGrad`.
pub static SCALED_DOT_PRODUCT_ATTENTION_GRAD_OP: CpuOp<AttentionAttrs> = CpuOp::new(
    SCALED_DOT_PRODUCT_ATTENTION_GRAD,
    scaled_dot_product_attention_grad,
)
.io(GRAD_INPUTS, &[OptF32; 3]);

fn scaled_dot_product_attention_grad(at: &AttentionAttrs, c: &Call) -> ort::Result<()> {
    let ops = operands(c, at, true)?;
    let (qs, out_shape) = (&ops.qs, swap(&ops.qs, at.blhe[1]));
    // dO, O, LSE: read whole by every part.
    let (dos, dov) = c.input(0)?;
    let (os, ov) = c.input(4)?;
    let (ls, lv) = c.input(5)?;
    if dos[..] != out_shape[..] || os[..] != out_shape[..] || ls[..] != qs[..3] {
        return Err(c.fail(format!(
            "dO {:?}, O {:?}, LSE {:?} for Q {:?}",
            &dos[..],
            &os[..],
            &ls[..],
            &qs[..]
        )));
    }
    let b = ops.bounds(c);
    type Piece<'o> = (AttentionGrads<'o>, (usize, usize));
    let pieces: Vec<Piece> = if ops.packed.is_empty() {
        let [qs0, ks0, vs0] = &ops.stored;
        let dq = split_opt(c.output(0, qs0.clone())?, per_row(qs0), &b);
        let dk = split_opt(c.output(1, ks0.clone())?, per_row(ks0), &b);
        let dv = split_opt(c.output(2, vs0.clone())?, per_row(vs0), &b);
        dq.into_iter()
            .zip(dk.into_iter().zip(dv))
            .zip(b.iter().copied())
            .map(|((dq, (dk, dv)), r)| (AttentionGrads::Separate([dq, dk, dv]), r))
            .collect()
    } else {
        let dx = c.output(0, ops.packed.clone())?;
        split_opt(dx, per_row(&ops.packed), &b)
            .into_iter()
            .zip(b.iter().copied())
            .map(|(g, r)| (AttentionGrads::Packed(g), r))
            .collect()
    };
    let a = ops.attention(at);
    let saved = AttentionSaved {
        dout: dov,
        o: ov,
        lse: lv,
    };
    c.run(pieces, |_, (grads, (lo, hi))| {
        if hi == lo {
            return Ok(());
        }
        ffi::attention_grad(&a, &saved, (lo as i64, hi as i64), grads)
    })
    .map_err(|e| c.torch(e))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{f32s, rand, Node, EPS};
    use super::{SCALED_DOT_PRODUCT_ATTENTION, SCALED_DOT_PRODUCT_ATTENTION_GRAD};
    use crate::model::graph::attr_int;

    /// Batch rows, heads, head size. With L, S = 17, 19 (or 19, 19 packed) the work is over
    /// the 32,768 multiply-adds at which the kernels split the batch: 5 rows in 3 parts.
    const B: usize = 5;
    const H: usize = 3;
    const E: usize = 8;

    enum Mask {
        No,
        /// [L, S]: -inf above the diagonal (aligned bottom-right), a causal mask.
        Causal,
        /// [B, 1, L, S]: values in [-1, 1], per batch row (split with the parts), broadcast
        /// over the heads.
        PerRow,
        /// Causal, with the first two query rows masked entirely (padding): their O is 0 and
        /// they add nothing to any gradient, as in PyTorch's flash attention (the
        /// exporter's `Where(IsNaN(P), 0, P)` guard gives the same O).
        Padded,
    }

    /// One attention's form: Q's and K's lengths, the layouts (`blhe_in`, `blhe_out`), Q, K,
    /// V packed in one input, the scale factors a and b (given as [] and [1]), the mask.
    struct Case {
        l: usize,
        s: usize,
        blhe: [bool; 2],
        packed: bool,
        scales: [Option<f32>; 2],
        mask: Mask,
    }

    /// Where element (b, h, t, e) of a logical [B, H, T, E] tensor is stored.
    type At = Box<dyn Fn(usize, usize, usize, usize) -> usize>;

    /// [B, H, T, E] stored as such, or as [B, T, H, E] (`blhe`) with rows `row` elements apart
    /// from column `col` (Q, K, V packed side by side).
    fn at(blhe: bool, t_len: usize, row: usize, col: usize) -> At {
        Box::new(move |b, h, t, e| match blhe {
            true => (b * t_len + t) * row + col + h * E + e,
            false => ((b * H + h) * t_len + t) * E + e,
        })
    }

    /// The reference's outputs, stored as the node stores them: O, LSE [B, H, L], and dQ, dK,
    /// dV (all three in the first when packed).
    struct Want {
        o: Vec<f64>,
        lse: Vec<f64>,
        grads: [Vec<f64>; 3],
    }

    impl Case {
        /// The stored shapes and index maps of Q, K and V.
        fn inputs(&self) -> [(Vec<usize>, At); 3] {
            let (l, s, he) = (self.l, self.s, H * E);
            if self.packed {
                return [0, 1, 2].map(|i| (vec![B, l, 3 * he], at(true, l, 3 * he, i * he)));
            }
            let b = self.blhe[0];
            let dims = |t| {
                if b {
                    vec![B, t, H, E]
                } else {
                    vec![B, H, t, E]
                }
            };
            [
                (dims(l), at(b, l, he, 0)),
                (dims(s), at(b, s, he, 0)),
                (dims(s), at(b, s, he, 0)),
            ]
        }
        fn output(&self) -> (Vec<usize>, At) {
            let (l, b) = (self.l, self.blhe[1]);
            let dims = if b {
                vec![B, l, H, E]
            } else {
                vec![B, H, l, E]
            };
            (dims, at(b, l, H * E, 0))
        }
        fn mask(&self) -> (Vec<usize>, Vec<f32>) {
            let (l, s) = (self.l, self.s);
            match self.mask {
                Mask::No => (vec![], vec![]),
                Mask::Causal => {
                    let m = (0..l * s).map(|i| match i % s > i / s + (s - l) {
                        true => f32::NEG_INFINITY,
                        false => 0.0,
                    });
                    (vec![l, s], m.collect())
                }
                Mask::Padded => {
                    let m = (0..l * s).map(|i| match i % s > i / s + (s - l) || i / s < 2 {
                        true => f32::NEG_INFINITY,
                        false => 0.0,
                    });
                    (vec![l, s], m.collect())
                }
                Mask::PerRow => (vec![B, 1, l, s], rand(B * l * s, 4)),
            }
        }

        /// The definition in f64: `P = softmax(scale Q K^T + mask)` over S, `O = P V`, `LSE =
        /// log sum exp`; from dO, `dV = P^T dO`, `dS = P (dO V^T - rowsum(dO o O))`,
        /// `dQ = scale dS K`, `dK = scale dS^T Q`.
        fn reference(&self, qkv: [&[f32]; 3], mask: &[f32], dout: &[f32]) -> Want {
            let (l, s) = (self.l, self.s);
            let c: f64 = self.scales.iter().flatten().map(|&a| a as f64).product();
            let [(_, qi), (_, ki), (_, vi)] = self.inputs();
            let oi = self.output().1;
            let mask_at = |b: usize, i: usize, j: usize| match self.mask {
                Mask::No => 0.0,
                Mask::Causal | Mask::Padded => mask[i * s + j] as f64,
                Mask::PerRow => mask[(b * l + i) * s + j] as f64,
            };
            let (mut o, mut lse) = (vec![0f64; B * H * l * E], vec![0f64; B * H * l]);
            let mut grads = qkv.map(|t| vec![0f64; t.len()]);
            let slot = |k: usize| if self.packed { 0 } else { k };
            let (q, k, v) = (
                |b, h, i, e| qkv[0][qi(b, h, i, e)] as f64,
                |b, h, j, e| qkv[1][ki(b, h, j, e)] as f64,
                |b, h, j, e| qkv[2][vi(b, h, j, e)] as f64,
            );
            for (b, h, i) in (0..B * H * l).map(|r| (r / (H * l), r / l % H, r % l)) {
                let scores = (0..s).map(|j| {
                    c * (0..E).map(|e| q(b, h, i, e) * k(b, h, j, e)).sum::<f64>()
                        + mask_at(b, i, j)
                });
                let scores: Vec<f64> = scores.collect();
                let m = scores.iter().copied().fold(f64::MIN, f64::max);
                let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
                if z == 0.0 {
                    // Masked entirely: O = 0 and no gradient. libtorch writes LSE 0 (any
                    // finite value gives the backward P = exp(-inf - LSE) = 0).
                    continue;
                }
                let p: Vec<f64> = scores.iter().map(|x| (x - m).exp() / z).collect();
                lse[(b * H + h) * l + i] = m + z.ln();
                let mut dsum = 0.0;
                for e in 0..E {
                    let ov: f64 = (0..s).map(|j| p[j] * v(b, h, j, e)).sum();
                    o[oi(b, h, i, e)] = ov;
                    dsum += dout[oi(b, h, i, e)] as f64 * ov;
                }
                for j in 0..s {
                    let dov = |e| dout[oi(b, h, i, e)] as f64;
                    let dp: f64 = (0..E).map(|e| dov(e) * v(b, h, j, e)).sum();
                    let ds = p[j] * (dp - dsum);
                    for e in 0..E {
                        grads[0][qi(b, h, i, e)] += c * ds * k(b, h, j, e);
                        grads[slot(1)][ki(b, h, j, e)] += c * ds * q(b, h, i, e);
                        grads[slot(2)][vi(b, h, j, e)] += p[j] * dov(e);
                    }
                }
            }
            Want { o, lse, grads }
        }

        fn node(&self, op: &'static str) -> Node {
            let mut n = Node::new(op)
                .attr(attr_int("blhe_in", self.blhe[0] as i64))
                .attr(attr_int("blhe_out", self.blhe[1] as i64));
            if self.packed {
                n = n.attr(attr_int("packed_heads", H as i64));
            }
            n
        }

        /// Q, K, V (K and V absent when packed).
        fn qkv(&self, mut n: Node, qkv: &[Vec<f32>; 3]) -> Node {
            for (i, (shape, _)) in self.inputs().iter().enumerate() {
                n = match self.packed && i > 0 {
                    true => n.absent(),
                    false => n.input(shape, &qkv[i]),
                };
            }
            n
        }

        /// The scale factors a and b and the mask, each absent where the case has none.
        fn extras(&self, mut n: Node) -> Node {
            for (a, shape) in self.scales.iter().zip([&[][..], &[1]]) {
                n = match a {
                    Some(a) => n.input(shape, &[*a]),
                    None => n.absent(),
                };
            }
            match self.mask() {
                (s, _) if s.is_empty() => n.absent(),
                (s, m) => n.input(&s, &m),
            }
        }

        /// Q, K, V as stored (the one packed tensor three times when packed), dO.
        fn data(&self) -> ([Vec<f32>; 3], Vec<f32>) {
            let [q, k, v] = self.inputs().map(|(s, _)| s.iter().product::<usize>());
            let qkv = match self.packed {
                true => [rand(q, 1), rand(q, 1), rand(q, 1)],
                false => [rand(q, 1), rand(k, 2), rand(v, 3)],
            };
            (qkv, rand(B * H * self.l * E, 5))
        }

        fn reference_of(&self, qkv: &[Vec<f32>; 3], dout: &[f32]) -> Want {
            self.reference([&qkv[0], &qkv[1], &qkv[2]], &self.mask().1, dout)
        }

        /// Tolerance, relative above 1 and absolute below: sums over S or L (and E) of
        /// products of values ~1 with probabilities, an exp per score, flash attention's
        /// rescalings: a few ulps per term of the longest sums.
        fn tol(&self) -> f64 {
            4.0 * (self.l + self.s + E) as f64 * EPS
        }

        fn check_forward(&self) {
            let (qkv, dout) = self.data();
            let want = self.reference_of(&qkv, &dout);
            let n = self.extras(self.qkv(self.node(SCALED_DOT_PRODUCT_ATTENTION), &qkv));
            let n = n.output(&self.output().0, &want.o, self.tol());
            n.output(&[B, H, self.l], &want.lse, self.tol()).check();
        }

        /// The gradients, those `named` (dQ, dK, dV; the packed gradient is one output), from
        /// the reference's O and LSE.
        fn check_grad(&self, named: [bool; 3]) {
            let (qkv, dout) = self.data();
            let want = self.reference_of(&qkv, &dout);
            let os = self.output().0;
            let n = self
                .node(SCALED_DOT_PRODUCT_ATTENTION_GRAD)
                .input(&os, &dout);
            let n = self.qkv(n, &qkv).input(&os, &f32s(&want.o));
            let mut n = self.extras(n.input(&[B, H, self.l], &f32s(&want.lse)));
            let outputs = if self.packed { 1 } else { 3 };
            for (i, (shape, _)) in self.inputs().iter().enumerate().take(outputs) {
                n = match named[i] {
                    true => n.output(shape, &want.grads[i], self.tol()),
                    false => n.unnamed(),
                };
            }
            n.check();
        }
    }

    const CASES: [Case; 4] = [
        Case {
            l: 17,
            s: 19,
            blhe: [false, false],
            packed: false,
            scales: [Some(0.5), Some(0.7)],
            mask: Mask::Causal,
        },
        // No scale factors: scale 1 (not 1 / sqrt(E)).
        Case {
            l: 17,
            s: 19,
            blhe: [true, true],
            packed: false,
            scales: [None, None],
            mask: Mask::PerRow,
        },
        Case {
            l: 19,
            s: 19,
            blhe: [true, false],
            packed: true,
            scales: [Some(0.35), None],
            mask: Mask::No,
        },
        Case {
            l: 17,
            s: 17,
            blhe: [true, true],
            packed: false,
            scales: [Some(0.5), None],
            mask: Mask::Padded,
        },
    ];

    #[test]
    fn attention_layouts_scales_and_masks() {
        for case in &CASES {
            case.check_forward();
        }
    }

    #[test]
    fn attention_grad_layouts_scales_and_masks() {
        for case in &CASES {
            case.check_grad([true; 3]);
        }
        CASES[0].check_grad([false, true, false]);
        CASES[1].check_grad([true, false, true]);
    }

    #[test]
    fn shapes_checked() {
        let case = &CASES[0];
        let (qkv, _) = case.data();
        let n = case
            .node(SCALED_DOT_PRODUCT_ATTENTION)
            .input(&[B, H, 17, E], &qkv[0]);
        let n = n
            .input(&[B, H, 19, E], &qkv[1])
            .input(&[B, H, 19, E], &qkv[1][..B * H * 19 * E]);
        let n = n.input(&[2], &[1.0, 1.0]).absent().absent();
        let n = n.output(&[B, H, 17, E], &vec![0.0; B * H * 17 * E], 0.0);
        n.output(&[B, H, 17], &vec![0.0; B * H * 17], 0.0)
            .fails("a scale factor of shape [2], not a scalar");
    }
}
