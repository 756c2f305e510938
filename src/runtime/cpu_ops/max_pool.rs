//! `MaxPoolGrad(dY, Indices, X) -> dX`: MaxPool's input gradient from the forward's Indices
//! (the flat position in all of X of each window's maximum, as ONNX Runtime's MaxPool writes
//! them): zeros, then `dX[Indices[j]] += dY[j]` for every output position j in order. The
//! standard form is ConstantOfShape, Reshapes and ScatterElements with reduction add, which
//! ONNX Runtime runs element by element through its generic scatter: on torchvision's
//! resnet18 at 3x224x224 ~5% of a batch. X is read for its shape only.
//!
//! Parts take samples: sample n's maxima lie in its own slab of X (an index outside it is an
//! error, not a write elsewhere), so the parts write disjoint rows. Within a sample the adds
//! run in j order, as ScatterElements' do (same sums where windows overlap).
use super::exec::{bounds, split};
use super::op::{Call, CpuOp, Io::*};
use crate::ops::rule::kernels::MAX_POOL_GRAD;

/// `probe.cpu:MaxPoolGrad`.
pub static MAX_POOL_GRAD_OP: CpuOp<()> =
    CpuOp::new(MAX_POOL_GRAD, max_pool_grad).io(&[F32, I64, F32], &[F32]);

fn max_pool_grad(_: &(), c: &Call) -> ort::Result<()> {
    let (dys, dyv) = c.input_named(0, "dY")?;
    let (is, iv) = c.input_i64(1)?;
    let (xs, _) = c.input_named(2, "X")?;
    if dys[..] != is[..] || xs.len() != dys.len() || xs.is_empty() || xs[0] != dys[0] {
        return Err(c.fail(format!(
            "dY {:?}, Indices {:?} and X {:?}",
            &dys[..],
            &is[..],
            &xs[..]
        )));
    }
    let n = xs[0] as usize;
    let dx = c.required(0, xs.to_vec(), "dX")?;
    if n == 0 {
        return Ok(());
    }
    let (x_row, y_row) = (dx.len() / n, dyv.len() / n);
    let b = bounds(n, c.parts.min(n));
    let pieces = split(dx, x_row, &b).into_iter().zip(b.iter().copied());
    c.run(pieces.collect(), |_, (dx, (lo, hi))| {
        dx.fill(0.0);
        let base = (lo * x_row) as i64;
        let (ys, is) = (&dyv[lo * y_row..hi * y_row], &iv[lo * y_row..hi * y_row]);
        for (k, (&g, &i)) in ys.iter().zip(is).enumerate() {
            // Sample lo + k / y_row's slab of X, relative to this part's rows.
            let sample = (k / y_row) as i64;
            let at = i - base;
            if at < sample * x_row as i64 || at >= (sample + 1) * x_row as i64 {
                return Err(format!(
                    "index {i} of sample {} is outside its {x_row} elements",
                    lo as i64 + sample
                ));
            }
            dx[at as usize] += g;
        }
        Ok(())
    })
    .map_err(|e| c.fail(e))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rand, Node};
    use super::MAX_POOL_GRAD;

    /// X [5, 3, 4, 4] pooled 3x3, stride 1 (overlapping windows: one X element is the maximum
    /// of several), as Indices of each window's first maximum; dX against plain f64 sums.
    #[test]
    fn adds_dy_at_each_windows_maximum() {
        let (n, c, h, o) = (5usize, 3usize, 4usize, 2usize);
        let x = rand(n * c * h * h, 1);
        let dy = rand(n * c * o * o, 2);
        let mut idx = vec![];
        for p in 0..n * c {
            for (oy, ox) in (0..o).flat_map(|a| (0..o).map(move |b| (a, b))) {
                let mut best = (f32::NEG_INFINITY, 0);
                for (ky, kx) in (0..3).flat_map(|a| (0..3).map(move |b| (a, b))) {
                    let j = p * h * h + (oy + ky) * h + ox + kx;
                    if x[j] > best.0 {
                        best = (x[j], j);
                    }
                }
                idx.push(best.1 as i64);
            }
        }
        let mut want = vec![0f64; x.len()];
        for (&i, &g) in idx.iter().zip(&dy) {
            want[i as usize] += g as f64;
        }
        let (xs, ys) = ([n, c, h, h], [n, c, o, o]);
        let node = Node::new(MAX_POOL_GRAD)
            .input(&ys, &dy)
            .ints(&ys, &idx)
            .input(&xs, &x);
        // Up to 4 windows share a maximum: a few f32 additions.
        node.output(&xs, &want, 4.0 * f32::EPSILON as f64).check();
    }

    #[test]
    fn an_index_outside_its_sample_is_an_error() {
        let node = Node::new(MAX_POOL_GRAD)
            .input(&[2, 1, 1, 1], &[1.0, 1.0])
            .ints(&[2, 1, 1, 1], &[0, 0])
            .input(&[2, 1, 2, 2], &[0.0; 8]);
        node.output(&[2, 1, 2, 2], &[0.0; 8], 0.0)
            .fails("index 0 of sample 1 is outside its 4 elements");
    }
}
