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
