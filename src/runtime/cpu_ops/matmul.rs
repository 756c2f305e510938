//! Matrix products by libtorch (MKL's GEMM):
//! - `MatMul(A, B) -> Y = op(A) op(B)`, attributes `transA`, `transB` (op swaps the last two
//!   axes; default 0), A and B of rank 2 or more with equal leading (batch) axes or one of
//!   them a matrix. MKL's GEMM ran faster than ONNX Runtime's MLAS here, e.g. for a
//!   [8000, 64]^T x [8000, 256] weight gradient and the [1000, 32, 16] x [1000, 16, 32]
//!   attention products.
//! - `MatMulAdd(A, B, bias) -> Y = A B + bias`, A [..., K], B [K, N], bias [N] (a Linear layer;
//!   `ops/mat_mul.rs` fuses it): libtorch's addmm over A's rows as one [M, K] matrix.
//!
//! Parts: the rows of op(A) against one matrix B, the batch when both are batched, and for a
//! weight gradient A^T B (both matrices, reducing over their common rows) the reduction, each
//! part into its own buffer, added at the end.
use super::exec::{add_parts, bounds, split, sum_parts};
use super::ffi;
use super::op::{Attrs, Call, CpuOp, FromAttrs, Io::*};
use crate::ops::rule::kernels::{MAT_MUL, MAT_MUL_ADD};

/// Attributes `transA`, `transB` (default 0).
pub struct Trans([bool; 2]);

impl FromAttrs for Trans {
    fn read(a: &Attrs) -> ort::Result<Trans> {
        Ok(Trans(["transA", "transB"].map(|n| a.flag(n))))
    }
}

/// `probe.cpu:MatMul`.
pub static MAT_MUL_OP: CpuOp<Trans> = CpuOp::new(MAT_MUL, mat_mul).io(&[F32, F32], &[F32]);

fn mat_mul(t: &Trans, c: &Call) -> ort::Result<()> {
    let (as_, av) = c.input(0)?;
    let (bs, bv) = c.input(1)?;
    let [ta, tb] = t.0;
    let (ar, br) = (as_.len(), bs.len());
    let bad = || {
        c.fail(format!(
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
    let y = c.required(0, ys.clone(), "Y")?;
    let nb: i64 = batch.iter().product();
    let work = (nb * m * nn * k.max(1)) as usize;
    let (m, k, nn) = (m as usize, k as usize, nn as usize);
    if br == 2 && !ta {
        // Rows of A (all its leading axes with m) against one matrix.
        let rows = nb as usize * m;
        let b = bounds(rows, c.parts_for(rows, work >> 6));
        let pieces = split(y, nn, &b).into_iter().zip(b.iter().copied());
        return c
            .run(pieces.collect(), |_, (y, (lo, hi))| {
                if hi == lo {
                    return Ok(());
                }
                let (r, kk, n) = ((hi - lo) as i64, k as i64, nn as i64);
                let a = (&av[lo * k..hi * k], &[r, kk][..], ta);
                ffi::matmul(a, (bv, &bs, tb), y, &[r, n])
            })
            .map_err(|e| c.torch(e));
    }
    if ar > 2 && br > 2 {
        // Both batched alike: parts take whole products.
        let (am, bm) = ([as_[ar - 2], as_[ar - 1]], [bs[br - 2], bs[br - 1]]);
        let (a_mat, b_mat, y_mat) = ((am[0] * am[1]) as usize, (bm[0] * bm[1]) as usize, m * nn);
        let b = bounds(nb as usize, c.parts_for(nb as usize, work >> 6));
        let pieces = split(y, y_mat, &b).into_iter().zip(b.iter().copied());
        return c
            .run(pieces.collect(), |_, (y, (lo, hi))| {
                if hi == lo {
                    return Ok(());
                }
                let n = (hi - lo) as i64;
                let a = (&av[lo * a_mat..hi * a_mat], &[n, am[0], am[1]][..], ta);
                let b = (&bv[lo * b_mat..hi * b_mat], &[n, bm[0], bm[1]][..], tb);
                ffi::matmul(a, b, y, &[n, m as i64, nn as i64])
            })
            .map_err(|e| c.torch(e));
    }
    if ar == 2 && br == 2 && ta && !tb {
        // A weight gradient A^T B, A [r, m], B [r, nn]: the r rows split, partial products
        // summed (part 0 into Y).
        let r = as_[0] as usize;
        let parts = c.parts_for(r, work >> 6);
        let mut spare = vec![0f32; m * nn * parts.saturating_sub(1)];
        let b = bounds(r, parts);
        c.run(sum_parts(Some(&mut *y), &mut spare, parts), |i, out| {
            let (lo, hi) = b[i];
            let out = out.unwrap();
            if hi == lo {
                out.fill(0.0);
                return Ok(());
            }
            let n = (hi - lo) as i64;
            let a = (&av[lo * m..hi * m], &[n, m as i64][..], ta);
            let b = (&bv[lo * nn..hi * nn], &[n, nn as i64][..], tb);
            ffi::matmul(a, b, out, &[m as i64, nn as i64])
        })
        .map_err(|e| c.torch(e))?;
        add_parts(y, &spare);
        return Ok(());
    }
    ffi::matmul((av, &as_, ta), (bv, &bs, tb), y, &ys).map_err(|e| c.torch(e))
}

/// `probe.cpu:MatMulAdd`: attribute `transB` (B stored [N, K], default 0); `transA` must be 0.
pub static MAT_MUL_ADD_OP: CpuOp<Trans> =
    CpuOp::new(MAT_MUL_ADD, mat_mul_add).io(&[F32, F32, F32], &[F32]);

fn mat_mul_add(t: &Trans, c: &Call) -> ort::Result<()> {
    let (as_, av) = c.input(0)?;
    let (bs, bv) = c.input(1)?;
    let (cs, cv) = c.input(2)?;
    let [ta, tb] = t.0;
    let k = *as_.last().unwrap_or(&0);
    let (bk, nn) = match bs[..] {
        [r, c] if tb => (c, r),
        [r, c] => (r, c),
        _ => (-1, -1),
    };
    // A bias of [N], or [1, N] as a Gemm's C may be (the same values in memory).
    let bias = cs[..] == [nn] || cs[..] == [1, nn];
    if ta || as_.len() < 2 || bk != k || !bias {
        return Err(c.fail(format!(
            "A {:?}, B {:?} (transB {tb}), bias {:?}",
            &as_[..],
            &bs[..],
            &cs[..]
        )));
    }
    let mut ys = as_.to_vec();
    *ys.last_mut().unwrap() = nn;
    let y = c.required(0, ys, "Y")?;
    // A's rows from its shape (with K = 0 there are still rows: Y is the bias).
    let m = as_[..as_.len() - 1].iter().product::<i64>() as usize;
    let b = bounds(m, c.parts_for(m, m * nn as usize));
    let pieces = split(y, nn as usize, &b).into_iter().zip(b.iter().copied());
    let ku = k as usize;
    c.run(pieces.collect(), |_, (y, (lo, hi))| {
        if hi == lo {
            return Ok(());
        }
        ffi::matmul_add(
            &av[lo * ku..hi * ku],
            [(hi - lo) as i64, k, nn],
            (bv, tb),
            cv,
            y,
        )
    })
    .map_err(|e| c.torch(e))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rand, Node};
    use super::{MAT_MUL, MAT_MUL_ADD};
    use crate::model::graph::attr_int;

    /// `op(A) op(B)` from the definition, op swapping the last two axes where `t`, a matrix
    /// operand broadcast over the other's batch: Y's shape, values and the sums of the
    /// products' magnitudes.
    fn product(
        (a, as_, ta): (&[f32], &[usize], bool),
        (b, bs, tb): (&[f32], &[usize], bool),
    ) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
        let (ar, br) = (as_.len(), bs.len());
        let (m, k) = if ta {
            (as_[ar - 1], as_[ar - 2])
        } else {
            (as_[ar - 2], as_[ar - 1])
        };
        let nn = if tb { bs[br - 2] } else { bs[br - 1] };
        let batch = if ar > 2 {
            &as_[..ar - 2]
        } else {
            &bs[..br - 2]
        };
        let nb: usize = batch.iter().product();
        let (am, bm) = (
            if ar > 2 { m * k } else { 0 },
            if br > 2 { k * nn } else { 0 },
        );
        let (mut want, mut mags) = (vec![0f64; nb * m * nn], vec![0f64; nb * m * nn]);
        for q in 0..nb {
            for i in 0..m {
                for j in 0..nn {
                    for l in 0..k {
                        let x = a[q * am + if ta { l * m + i } else { i * k + l }] as f64;
                        let y = b[q * bm + if tb { j * k + l } else { l * nn + j }] as f64;
                        want[(q * m + i) * nn + j] += x * y;
                        mags[(q * m + i) * nn + j] += (x * y).abs();
                    }
                }
            }
        }
        let mut ys = batch.to_vec();
        ys.extend([m, nn]);
        (ys, want, mags)
    }

    /// MatMul of A [as_] and B [bs] (transA, transB) against [`product`].
    fn check(as_: &[usize], ta: bool, bs: &[usize], tb: bool) {
        let a = rand(as_.iter().product(), 1);
        let b = rand(bs.iter().product(), 2);
        let (ys, want, mags) = product((&a, as_, ta), (&b, bs, tb));
        let mut n = Node::new(MAT_MUL);
        // The attributes default to 0: set only when 1.
        for (name, t) in [("transA", ta), ("transB", tb)] {
            if t {
                n = n.attr(attr_int(name, 1));
            }
        }
        let k = as_[as_.len() - 1 - ta as usize];
        // GEMM's sums over K, in whatever blocking: at most K additions in a row.
        n.input(as_, &a)
            .input(bs, &b)
            .output_sums(&ys, &want, &mags, k)
            .check();
    }

    // The kernel splits work of over 2^21 multiply-adds; each case here has ~2.3M, and parts
    // of 91 rows, 7 products or 901 reduced rows (none a multiple of 3).

    #[test]
    fn rows_against_one_matrix() {
        check(&[7, 13, 64], false, &[64, 400], false);
        check(&[7, 13, 64], false, &[400, 64], true);
    }

    #[test]
    fn batched_products() {
        check(&[7, 40, 64], false, &[7, 64, 130], false);
        check(&[7, 64, 40], true, &[7, 130, 64], true);
    }

    #[test]
    fn weight_gradient_splits_the_reduction() {
        check(&[901, 40], true, &[901, 64], false);
    }

    #[test]
    fn other_forms_and_degenerate_shapes() {
        check(&[40, 64], false, &[7, 64, 30], false);
        check(&[64, 40], true, &[30, 64], true);
        check(&[7, 64, 40], true, &[64, 30], false);
        check(&[5, 0], false, &[0, 4], false);
        check(&[0, 3], false, &[3, 4], false);
        check(&[0, 3], true, &[0, 4], false);
        let n = Node::new(MAT_MUL)
            .input(&[2, 3], &[0.0; 6])
            .input(&[4, 5], &[0.0; 20]);
        n.output(&[2, 5], &[0.0; 10], 0.0)
            .fails("A [2, 3] (transA false), B [4, 5] (transB false)");
    }

    /// MatMulAdd of A [as_], B [K, N] (with `tb` stored [N, K]), bias [N] (with `row`
    /// [1, N], a Gemm's C): `A op(B) + bias`.
    fn check_add_as(as_: &[usize], nn: usize, tb: bool, row: bool) {
        let k = as_[as_.len() - 1];
        let (a, b, bias) = (rand(as_.iter().product(), 3), rand(k * nn, 4), rand(nn, 5));
        let bs = if tb { [nn, k] } else { [k, nn] };
        let (ys, mut want, mut mags) = product((&a, as_, false), (&b, &bs, tb));
        for i in 0..want.len() {
            want[i] += bias[i % nn] as f64;
            mags[i] += bias[i % nn].abs() as f64;
        }
        let mut n = Node::new(MAT_MUL_ADD);
        if tb {
            n = n.attr(attr_int("transB", 1));
        }
        let n = n.input(as_, &a).input(&bs, &b);
        let cs: &[usize] = if row { &[1, nn] } else { &[nn] };
        n.input(cs, &bias)
            .output_sums(&ys, &want, &mags, k + 1)
            .check();
    }

    fn check_add(as_: &[usize], nn: usize) {
        check_add_as(as_, nn, false, false);
    }

    /// A Gemm's `A B^T + C` (a Linear layer on a matrix), C of [N] or [1, N].
    #[test]
    fn mat_mul_add_reads_b_transposed() {
        check_add_as(&[91, 64], 400, true, false);
        check_add_as(&[91, 64], 400, true, true);
        check_add_as(&[5, 7], 3, false, true);
    }

    #[test]
    fn mat_mul_add_adds_the_bias() {
        // 91 rows of 400: 36,400 outputs, over the 32,768 at which the kernel splits.
        check_add(&[7, 13, 64], 400);
        check_add(&[0, 3], 4);
    }

    #[test]
    fn mat_mul_add_with_k_0_is_the_bias() {
        check_add(&[5, 0], 4);
    }
}
