//! `Transpose(X) -> Y` with a `perm` attribute (required), parts split Y's first axis: runs of
//! X's last axis copied in Rust when the last axis stays last (an attention head split or
//! merge, runs of the head size), else libtorch's strided copy of the permuted view. ONNX
//! Runtime's Transpose is slow on small rows ([250, 4, 32, 32]).
use super::exec::{bounds, split};
use super::ffi;
use super::op::{Attrs, Call, CpuOp, FromAttrs, Io::*};
use crate::ops::rule::kernels::TRANSPOSE;

/// Attribute `perm`.
pub struct Perm(Vec<i64>);

impl FromAttrs for Perm {
    fn read(a: &Attrs) -> ort::Result<Perm> {
        a.req("perm").map(Perm)
    }
}

/// `probe.cpu:Transpose`.
pub static TRANSPOSE_OP: CpuOp<Perm> = CpuOp::new(TRANSPOSE, transpose).io(&[F32], &[F32]);

fn transpose(a: &Perm, c: &Call) -> ort::Result<()> {
    let (xs, xv) = c.input(0)?;
    let perm = &a.0;
    let mut seen = vec![false; xs.len()];
    if perm.len() != xs.len()
        || perm.iter().any(|&p| {
            p < 0 || p as usize >= xs.len() || std::mem::replace(&mut seen[p as usize], true)
        })
    {
        return Err(c.fail(format!("perm {perm:?} for X {:?}", &xs[..])));
    }
    let ys: Vec<i64> = perm.iter().map(|&p| xs[p as usize]).collect();
    let y = c.required(0, ys.clone(), "Y")?;
    if xv.is_empty() {
        return Ok(());
    }
    let rows = ys[0] as usize;
    let row = ys[1..].iter().product::<i64>() as usize;
    let b = bounds(rows, c.parts_for(rows, xv.len()));
    let pieces: Vec<_> = split(y, row, &b)
        .into_iter()
        .zip(b.iter().copied())
        .collect();
    let r = xs.len();
    if perm[r - 1] as usize == r - 1 && r >= 2 {
        // The last axis stays: Y is runs of X's rows, copied run by run (libtorch's strided
        // copy was slower for a [250, 32, 4, 16] -> [250, 4, 32, 16] head split).
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
        return c
            .run(pieces, |_, (out, (lo, _))| {
                let mut idx = vec![0usize; r - 1];
                idx[0] = lo;
                let mut at: usize = ystep[0] * lo;
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
            .map_err(|e| c.fail(e));
    }
    c.run(pieces, |_, (out, (lo, hi))| {
        if hi == lo {
            return Ok(());
        }
        ffi::transpose((xv, &xs), perm, (lo as i64, hi as i64), out)
    })
    .map_err(|e| c.torch(e))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{f64s, rand, strides, Node};
    use super::TRANSPOSE;
    use crate::model::graph::attr_ints;

    /// X of `xs` permuted by `perm`, in f64, and Y's shape.
    fn permuted(x: &[f32], xs: &[usize], perm: &[usize]) -> (Vec<f64>, Vec<usize>) {
        let ys: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
        let (xst, yst) = (strides(xs), strides(&ys));
        let want = (0..x.len())
            .map(|i| {
                let at: usize = (0..ys.len())
                    .map(|d| i / yst[d] % ys[d] * xst[perm[d]])
                    .sum();
                x[at] as f64
            })
            .collect();
        (want, ys)
    }

    fn node(perm: &[usize], xs: &[usize], x: &[f32]) -> Node {
        let perm: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
        Node::new(TRANSPOSE)
            .attr(attr_ints("perm", &perm))
            .input(xs, x)
    }

    #[test]
    fn permutes_with_and_without_the_last_axis() {
        // 34,255 elements, over the 32,768 at which the kernel splits Y's first axis (5, 31, 17
        // or 13 rows here, none a multiple of 3). The first two keep the last axis (copied
        // in runs), the others move it (libtorch's copy).
        let xs = [5, 13, 31, 17];
        let x = rand(34_255, 1);
        for perm in [[0, 2, 1, 3], [2, 0, 1, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
            let (want, ys) = permuted(&x, &xs, &perm);
            node(&perm, &xs, &x).output(&ys, &want, 0.0).check();
        }
    }

    #[test]
    fn small_empty_and_invalid() {
        let x = rand(6, 2);
        node(&[0], &[6], &x).output(&[6], &f64s(&x), 0.0).check();
        let (want, ys) = permuted(&x, &[2, 3], &[1, 0]);
        node(&[1, 0], &[2, 3], &x).output(&ys, &want, 0.0).check();
        node(&[1, 0], &[0, 4], &[])
            .output(&[4, 0], &[], 0.0)
            .check();
        node(&[2, 0, 1], &[3, 0, 2], &[])
            .output(&[2, 3, 0], &[], 0.0)
            .check();
        let n = node(&[0, 0], &[2, 3], &x).output(&[2, 2], &[0.0; 4], 0.0);
        n.fails("perm [0, 0] for X [2, 3]");
    }
}
