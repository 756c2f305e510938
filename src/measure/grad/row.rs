//! A checkpoint's results row (columns in `docs/schema.md`): the gradient pass's loss and
//! accuracy, the norms of the gradient and of the weights, the weights' distances and
//! distribution against the previous and the first checkpoint, and the optional parts
//! (`--noise`, `--hessian`, `--weight-decay`, `--save-grad`), each from what its pass gave.
use super::pass::{GradResult, PassSums};
use crate::measure::hessian::Curvature;
use crate::measure::noise::SampleNoise;
use crate::measure::reduce;
use crate::measure::weights::{self, Distribution};
use crate::model::Checkpoint;
use crate::store::{Cell, Row};
use std::sync::Arc;

/// A printed row.
pub struct GradRow {
    pub path: String,
    pub step: i64,
    pub loss: f64,
    pub accuracy: f64,
    pub grad_l2: f64,
    pub grad_reg_l2: Option<f64>,
    pub weights_l2: f64,
    pub dist_prev: f64,
    /// With --noise: tr(Sigma)/|g|^2.
    pub b_noise: Option<f64>,
    /// With --hessian: the top eigenvalue.
    pub hessian_top: Option<f64>,
    pub seconds: f64,
}

/// The weights a row compares a checkpoint with: the first checkpoint's, and the previous
/// one's, each with its distribution. The last row's are kept for the next (sorting every
/// tensor is the costly part); a previous checkpoint that was not a row here (another shard's,
/// or already complete) is read afresh.
pub struct History<'a> {
    first_w: Vec<&'a [f32]>,
    /// Sorted at the first row, not before the first pass (a model's size in memory).
    first_dist: Option<Arc<Distribution>>,
    last: Option<(usize, Vec<&'a [f32]>, Arc<Distribution>)>,
}

/// Checkpoint `k`'s weights (its own f32 tensors, per parameter) and the previous checkpoint's,
/// with their distributions. Borrowed and shared, not copied: a model's weights sorted are 4
/// bytes a parameter (0.5 GB for GPT-2 small), and the first checkpoint's serve every row.
pub struct Weights<'a> {
    pub w: Vec<&'a [f32]>,
    pub dist: Arc<Distribution>,
    pub prev_w: Vec<&'a [f32]>,
    pub prev_dist: Arc<Distribution>,
    /// The first checkpoint's.
    pub first_dist: Arc<Distribution>,
}

impl<'a> History<'a> {
    /// `first` is checkpoint 0 of the run's set.
    pub fn new(names: &[String], first: &'a Checkpoint) -> History<'a> {
        History {
            first_w: weights_of(names, first),
            first_dist: None,
            last: None,
        }
    }

    /// The weights of checkpoint `k` of `all` and of the one before it.
    pub fn at(&mut self, names: &[String], all: &'a [Checkpoint], k: usize) -> Weights<'a> {
        let w = weights_of(names, &all[k]);
        let first_w = &self.first_w;
        let first_dist = self
            .first_dist
            .get_or_insert_with(|| Arc::new(Distribution::of(first_w)))
            .clone();
        let dist = if k == 0 {
            first_dist.clone()
        } else {
            Arc::new(Distribution::of(&w))
        };
        let (prev_w, prev_dist) = match self.last.take() {
            Some((j, pw, pd)) if j + 1 == k => (pw, pd),
            _ if k > 0 => {
                let pw = weights_of(names, &all[k - 1]);
                let pd = Arc::new(Distribution::of(&pw));
                (pw, pd)
            }
            _ => (w.clone(), dist.clone()),
        };
        Weights {
            w,
            dist,
            prev_w,
            prev_dist,
            first_dist,
        }
    }

    /// Keeps checkpoint `k`'s weights, written to a row, for the next checkpoint.
    pub fn keep(&mut self, k: usize, w: Weights<'a>) {
        self.last = Some((k, w.w, w.dist));
    }
}

/// The row's `row` event in the JSON log (`--log-json`): its printed numbers, and how many rows
/// the results file holds with it.
pub fn log(r: &GradRow, rows: usize) {
    crate::log::event(
        "row",
        serde_json::json!({
            "checkpoint": r.path, "step": r.step, "loss": r.loss, "accuracy": r.accuracy,
            "grad_l2": r.grad_l2, "grad_reg_l2": r.grad_reg_l2, "weights_l2": r.weights_l2,
            "dist_prev": r.dist_prev, "b_noise": r.b_noise, "hessian_top": r.hessian_top,
            "seconds": r.seconds, "rows": rows,
        }),
    );
}

/// The columns every row has, from the gradient pass `r` at checkpoint `c`, and the printed row
/// as far as they go (the optional parts and the row's time are the caller's to fill in).
pub fn gradient(r: &GradResult, c: &Checkpoint, hist: &History, cur: &Weights) -> (Row, GradRow) {
    let (mut row, g_l2) = gradient_columns(r);
    let (w_row, w_l2, dist_prev) = weight_columns(c, hist, cur);
    row.extend(w_row);
    row.push(("seconds".into(), Cell::F64(r.seconds)));
    (row, printed(r, c, g_l2, w_l2, dist_prev))
}

/// The printed row of `r` at `c`, as far as the columns every row has go.
pub fn printed(r: &GradResult, c: &Checkpoint, g_l2: f64, w_l2: f64, dist_prev: f64) -> GradRow {
    GradRow {
        path: c.path.display().to_string(),
        step: c.step,
        loss: r.loss,
        accuracy: r.accuracy,
        grad_l2: g_l2,
        grad_reg_l2: None,
        weights_l2: w_l2,
        dist_prev,
        b_noise: None,
        hessian_top: None,
        seconds: r.seconds,
    }
}

/// The columns that come from the data: loss, accuracy, counts and the gradient's norms (what
/// `probe merge` computes again from the shards' sums). Returns them and |g|.
pub fn gradient_columns(r: &GradResult) -> (Row, f64) {
    let threads = crate::runtime::default_threads();
    let per = reduce::per_tensor(&r.grads, threads, |g| g.len(), |g| reduce::norms(g));
    let per_g: Vec<f64> = per.iter().map(|n| n.sq.sqrt()).collect();
    let g_l2 = per.iter().map(|n| n.sq).sum::<f64>().sqrt();
    let g_l1: f64 = per.iter().map(|n| n.abs).sum();
    // NaN when any entry is (a NaN max poisons the fold: f64::max would skip it).
    let g_linf = per.iter().fold(0f64, |m, n| {
        if m.is_nan() || n.max_abs.is_nan() {
            f64::NAN
        } else {
            m.max(n.max_abs)
        }
    });
    let row: Row = vec![
        ("loss".into(), Cell::F64(r.loss)),
        ("accuracy".into(), Cell::F64(r.accuracy)),
        ("samples".into(), Cell::I64(r.samples as i64)),
        ("elements".into(), Cell::I64(r.elements as i64)),
        ("grad/l2".into(), Cell::F64(g_l2)),
        ("grad/l1".into(), Cell::F64(g_l1)),
        ("grad/linf".into(), Cell::F64(g_linf)),
        (
            "grad/per_param_l2".into(),
            Cell::F64s(vec![per_g.len()], per_g),
        ),
        (
            "nonfinite_batches".into(),
            Cell::I64(r.nonfinite_batches.len() as i64),
        ),
    ];
    (row, g_l2)
}

/// The columns that come from the weights alone (the checkpoint, its norms, its distances and
/// distribution against the previous and the first checkpoint): the same in every data shard.
/// Returns them, |w| and the distance to the previous checkpoint.
pub fn weight_columns(c: &Checkpoint, hist: &History, cur: &Weights) -> (Row, f64, f64) {
    let Weights {
        w,
        dist,
        prev_w,
        prev_dist,
        first_dist,
    } = cur;
    // Every per-tensor sum over the weights in one sweep of the tensors, on every core.
    let first_w = &hist.first_w;
    let threads = crate::runtime::default_threads();
    let sums = reduce::per_index(
        w.len(),
        threads,
        |i| w[i].len(),
        |i| {
            let sq = reduce::sq_f32(w[i]);
            // At the first checkpoint the previous and the first weights are these very ones:
            // every entry is 0 from itself, or NaN where it is not finite, which |w|^2 tells
            // (finite exactly when every entry is: at most 2^53 squares of f32, each below
            // 2^256, cannot overflow f64). Three sweeps of the weights saved, same values (a
            // NaN's sign and payload aside).
            let zero = if sq.is_finite() { 0.0 } else { f64::NAN };
            let apart = |b: &[f32]| match std::ptr::eq(w[i], b) {
                true => reduce::Apart {
                    sq: zero,
                    abs: zero,
                },
                false => reduce::apart(w[i], b),
            };
            let moved = apart(at(prev_w, i));
            let from_first = apart(at(first_w, i));
            let w1 = |o: &Distribution| match (std::ptr::eq(&**dist, o), w[i].is_empty()) {
                (true, false) => zero,
                _ => weights::w1_sorted(&dist.sorted[i], &o.sorted[i]),
            };
            let mean = |s: f64, b: &[f32]| {
                if w[i].is_empty() || w[i].len() != b.len() {
                    f64::NAN
                } else {
                    s / w[i].len() as f64
                }
            };
            PerTensor {
                sq,
                moved_sq: moved.sq,
                moved_mean_abs: mean(moved.abs, at(prev_w, i)),
                first_sq: from_first.sq,
                w1_prev: w1(prev_dist),
                w1_first: w1(first_dist),
            }
        },
    );
    let per_w: Vec<f64> = sums.iter().map(|t| t.sq.sqrt()).collect();
    let w_l2 = sums.iter().map(|t| t.sq).sum::<f64>().sqrt();
    let dist_prev = sums.iter().map(|t| t.moved_sq).sum::<f64>().sqrt();
    let dist_first = sums.iter().map(|t| t.first_sq).sum::<f64>().sqrt();
    let mut row: Row = vec![
        ("weights/l2".into(), Cell::F64(w_l2)),
        (
            "weights/per_param_l2".into(),
            Cell::F64s(vec![per_w.len()], per_w),
        ),
        ("weights/dist_prev".into(), Cell::F64(dist_prev)),
        ("weights/dist_first".into(), Cell::F64(dist_first)),
        (
            "checkpoints/path".into(),
            Cell::Str(c.path.display().to_string()),
        ),
        ("checkpoints/step".into(), Cell::I64(c.step)),
        ("checkpoints/sha256".into(), Cell::Str(c.sha256.clone())),
    ];
    // The weights' distribution, per tensor (see `crate::measure::weights`).
    let p = w.len();
    let per_dist_prev: Vec<f64> = sums.iter().map(|t| t.moved_sq.sqrt()).collect();
    let per_move: Vec<f64> = sums.iter().map(|t| t.moved_mean_abs).collect();
    row.extend([
        ("checkpoints/lr".into(), Cell::F64(checkpoint_lr(c))),
        (
            "weights/w1_prev".into(),
            Cell::F64s(vec![p], sums.iter().map(|t| t.w1_prev).collect()),
        ),
        (
            "weights/w1_first".into(),
            Cell::F64s(vec![p], sums.iter().map(|t| t.w1_first).collect()),
        ),
        (
            "weights/per_param_mean_abs_move".into(),
            Cell::F64s(vec![p], per_move),
        ),
        (
            "weights/per_param_dist_prev".into(),
            Cell::F64s(vec![p], per_dist_prev),
        ),
        (
            "weights/quantiles".into(),
            Cell::F64s(vec![p, weights::QUANTILE_LEVELS], dist.quantiles.clone()),
        ),
        (
            "weights/hist/counts".into(),
            Cell::I64s(vec![p, weights::HIST_BINS], dist.hist_counts.clone()),
        ),
        (
            "weights/hist/edges".into(),
            Cell::F64s(vec![p, weights::HIST_BINS + 1], dist.hist_edges.clone()),
        ),
    ]);
    (row, w_l2, dist_prev)
}

/// A data shard's row (`--data-shard`): the pass's raw f64 sums under `/partial` in place of
/// the columns that come from the data, with this shard's `samples`, `elements` and
/// `nonfinite_batches`, and the weight columns as in a full row. With `w` (`--weight-decay`, on
/// shard 0 only) the weights too, which |g + L w| needs at the merge.
pub fn partial(s: &PassSums, names: &[String], c: &Checkpoint, w: Option<&[&[f32]]>) -> Row {
    let mut row: Row = vec![
        ("partial/loss_sum".into(), Cell::F64(s.loss)),
        (
            "partial/correct_sum".into(),
            Cell::F64(if s.has_correct { s.correct } else { f64::NAN }),
        ),
        ("samples".into(), Cell::I64(s.samples as i64)),
        ("elements".into(), Cell::I64(s.elements as i64)),
        (
            "nonfinite_batches".into(),
            Cell::I64(s.nonfinite.len() as i64),
        ),
    ];
    let shape = |p: &String| c.tensors[p].shape.clone();
    for (p, g) in names.iter().zip(&s.acc) {
        row.push((
            format!("partial/grad_sum/{p}"),
            Cell::F64s(shape(p), g.clone()),
        ));
    }
    if let Some(n) = &s.noise {
        row.push(("partial/noise/batches".into(), Cell::I64(n.batches as i64)));
        let sq: Vec<f64> = n.sq.iter().flat_map(|d| [d.hi, d.lo]).collect();
        row.push((
            "partial/noise/sq_sum".into(),
            Cell::F64s(vec![n.sq.len(), 2], sq),
        ));
        let sizes: Vec<i64> = n.by_size.iter().map(|(e, _)| *e as i64).collect();
        row.push((
            "partial/noise/batch_elements".into(),
            Cell::I64s(vec![sizes.len()], sizes),
        ));
        for (i, p) in names.iter().enumerate() {
            let mut dims = vec![n.by_size.len()];
            dims.extend(shape(p));
            let v: Vec<f64> = n
                .by_size
                .iter()
                .flat_map(|(_, g)| g[i].iter().copied())
                .collect();
            row.push((
                format!("partial/noise/grad_sum_by_size/{p}"),
                Cell::F64s(dims, v),
            ));
        }
    }
    if let Some(w) = w {
        // The checkpoint's f32 weights, exactly.
        for (p, v) in names.iter().zip(w) {
            row.push((
                format!("partial/weights/{p}"),
                Cell::F32s(vec![v.len()], v.to_vec()),
            ));
        }
    }
    row
}

/// `--noise`'s columns: the minibatch part from the gradient pass's sums, the per-sample part
/// from its own pass (NaN where a part did not run). Returns B_noise = tr(Sigma) / |g|^2.
pub fn noise(row: &mut Row, r: &GradResult, sample: Option<&SampleNoise>, g_l2: f64) -> f64 {
    let p = r.grads.len();
    let nan = vec![f64::NAN; p];
    let (sq, var) = match (&r.batch_noise, r.nonfinite_batches.is_empty()) {
        (Some(b), true) => b.finish(&r.grads),
        _ => (nan.clone(), nan.clone()),
    };
    let (tr, per_tr, used) = match sample {
        Some(s) => (s.trace(), s.per_param.clone(), s.samples as i64),
        None => (f64::NAN, nan.clone(), 0),
    };
    let b_noise = tr / (g_l2 * g_l2);
    row.extend([
        ("noise/batch_sq_mean".into(), Cell::F64(sq.iter().sum())),
        ("noise/batch_var".into(), Cell::F64(var.iter().sum())),
        ("noise/per_param_batch_var".into(), Cell::F64s(vec![p], var)),
        ("noise/sample_var_trace".into(), Cell::F64(tr)),
        (
            "noise/per_param_sample_var".into(),
            Cell::F64s(vec![p], per_tr),
        ),
        ("noise/b_noise".into(), Cell::F64(b_noise)),
        ("noise/samples".into(), Cell::I64(used)),
    ]);
    b_noise
}

/// `--hessian`'s columns from the curvature over the parameters `block` (NaN where it did not
/// run). Per-parameter columns follow `names` (/params/name); parameters outside the block get
/// NaN. Returns the top eigenvalue.
pub fn hessian(row: &mut Row, names: &[String], block: &[String], cv: Option<&Curvature>) -> f64 {
    let p = names.len();
    let mut per_tr = vec![f64::NAN; p];
    let mut per_se = vec![f64::NAN; p];
    let mut per_mass = vec![f64::NAN; p];
    if let Some(cv) = cv {
        for (j, q) in block.iter().enumerate() {
            let i = names.iter().position(|n| n == q).unwrap();
            per_tr[i] = cv.trace.per_block[j];
            per_se[i] = cv.trace.per_block_se[j];
            per_mass[i] = cv.top_mass[j];
        }
    }
    let f = |x: Option<f64>| Cell::F64(x.unwrap_or(f64::NAN));
    let lz = cv.map(|c| &c.lanczos);
    let top = lz.map(|l| l.top).unwrap_or(f64::NAN);
    row.extend([
        ("hessian/top".into(), f(lz.map(|l| l.top))),
        ("hessian/top_residual".into(), f(lz.map(|l| l.top_residual))),
        ("hessian/bottom".into(), f(lz.map(|l| l.bottom))),
        (
            "hessian/bottom_residual".into(),
            f(lz.map(|l| l.bottom_residual)),
        ),
        (
            "hessian/iterations".into(),
            Cell::I64(lz.map(|l| l.iterations as i64).unwrap_or(0)),
        ),
        (
            "hessian/converged".into(),
            Cell::I64(lz.map(|l| l.converged as i64).unwrap_or(0)),
        ),
        ("hessian/sharpness".into(), f(cv.map(|c| c.sharpness))),
        ("hessian/trace".into(), f(cv.map(|c| c.trace.trace))),
        ("hessian/trace_se".into(), f(cv.map(|c| c.trace.trace_se))),
        (
            "hessian/per_param_trace".into(),
            Cell::F64s(vec![p], per_tr),
        ),
        (
            "hessian/per_param_trace_se".into(),
            Cell::F64s(vec![p], per_se),
        ),
        (
            "hessian/per_param_top_mass".into(),
            Cell::F64s(vec![p], per_mass),
        ),
        (
            "hessian/samples".into(),
            Cell::I64(cv.map(|c| c.samples as i64).unwrap_or(0)),
        ),
        (
            "hessian/products".into(),
            Cell::I64(cv.map(|c| c.products as i64).unwrap_or(0)),
        ),
    ]);
    top
}

/// `--weight-decay lambda`'s columns: the gradient of L(w) + (lambda/2)|w|^2, which is
/// g + lambda w, in total and per parameter. Returns its norm.
pub fn weight_decay(row: &mut Row, grads: &[Vec<f64>], w: &[&[f32]], lambda: f64) -> f64 {
    let threads = crate::runtime::default_threads();
    let per = reduce::per_index(
        grads.len(),
        threads,
        |i| grads[i].len(),
        |i| reduce::sq_plus(&grads[i], at(w, i), lambda).sqrt(),
    );
    let total = per.iter().map(|x| x * x).sum::<f64>().sqrt();
    row.push(("grad_reg/l2".into(), Cell::F64(total)));
    row.push((
        "grad_reg/per_param_l2".into(),
        Cell::F64s(vec![per.len()], per),
    ));
    total
}

/// `--save-grad`: the full gradient of every parameter, in its shape.
pub fn full_gradient(row: &mut Row, names: &[String], grads: &[Vec<f64>], c: &Checkpoint) {
    for (p, g) in names.iter().zip(grads) {
        let shape = c.tensors[p].shape.clone();
        row.push((format!("grad/full/{p}"), Cell::F64s(shape, g.clone())));
    }
}

/// Sets /seconds: the whole row's time, the gradient pass and any noise and curvature passes.
pub fn set_seconds(row: &mut Row, seconds: f64) {
    for (name, cell) in row.iter_mut() {
        if name == "seconds" {
            *cell = Cell::F64(seconds);
        }
    }
}

/// Tensor `i` of `v`, empty past its end.
fn at<'a>(v: &[&'a [f32]], i: usize) -> &'a [f32] {
    v.get(i).copied().unwrap_or(&[])
}

/// One weight tensor's sums for a row: against the previous and the first checkpoint, and its
/// distribution's W1 distances to theirs.
struct PerTensor {
    sq: f64,
    moved_sq: f64,
    moved_mean_abs: f64,
    first_sq: f64,
    w1_prev: f64,
    w1_first: f64,
}

/// The named parameters of a checkpoint: its own f32 tensors (empty where it has none).
pub fn weights_of<'a>(names: &[String], c: &'a Checkpoint) -> Vec<&'a [f32]> {
    names
        .iter()
        .map(|p| c.tensors.get(p).and_then(|t| t.as_f32()).unwrap_or(&[]))
        .collect()
}

/// The learning rate a checkpoint was written at (`probe train` records it in the safetensors
/// metadata as `lr`); NaN when unknown.
fn checkpoint_lr(c: &Checkpoint) -> f64 {
    c.metadata
        .get("lr")
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::HostTensor;

    fn checkpoint(name: &str, tensors: &[(&str, Vec<f32>)]) -> Checkpoint {
        let mut c = Checkpoint::unread(name.into(), 0, Default::default());
        for (p, v) in tensors {
            c.tensors
                .insert(p.to_string(), HostTensor::f32(vec![v.len()], v.clone()));
        }
        c
    }

    /// At the first checkpoint, the distances to itself (taken without sweeping) are the values
    /// the sweeps give against an equal copy (bit for bit, any NaN counted as one): 0 for finite weights, NaN for a tensor with a NaN
    /// or an infinity, NaN W1 for an empty tensor.
    #[test]
    fn first_checkpoint_against_itself_is_the_sweep() {
        let v = |k: usize| {
            (0..3000)
                .map(|i| ((i * 37 + k) % 101) as f32 - 50.0)
                .collect()
        };
        let mut nan: Vec<f32> = v(1);
        nan[2000] = f32::NAN;
        let mut inf: Vec<f32> = v(2);
        inf[7] = f32::NEG_INFINITY;
        let t = [("a", v(0)), ("nan", nan), ("inf", inf), ("empty", vec![])];
        let names: Vec<String> = t.iter().map(|(p, _)| p.to_string()).collect();
        // The same weights twice, in memory of their own.
        let all = [checkpoint("c0", &t), checkpoint("c1", &t)];
        let mut hist = History::new(&names, &all[0]);
        let first = hist.at(&names, &all, 0);
        let (row0, _, d0) = weight_columns(&all[0], &hist, &first);
        hist.keep(0, first);
        let second = hist.at(&names, &all, 1);
        let (row1, _, d1) = weight_columns(&all[1], &hist, &second);
        assert!(d0.is_nan() && d1.is_nan());
        let cols = [
            "weights/dist_prev",
            "weights/dist_first",
            "weights/w1_prev",
            "weights/w1_first",
            "weights/per_param_mean_abs_move",
            "weights/per_param_dist_prev",
        ];
        let bits = |row: &Row, name: &str| -> Vec<u64> {
            let one = |x: &f64| {
                if x.is_nan() {
                    f64::NAN.to_bits()
                } else {
                    x.to_bits()
                }
            };
            let cell = &row.iter().find(|(n, _)| n == name).expect(name).1;
            match cell {
                Cell::F64(x) => vec![x],
                Cell::F64s(_, x) => x.iter().collect(),
                _ => panic!("{name}"),
            }
            .into_iter()
            .map(one)
            .collect()
        };
        for name in cols {
            assert_eq!(bits(&row0, name), bits(&row1, name), "{name}");
        }
        let nan = f64::NAN.to_bits();
        assert_eq!(bits(&row0, "weights/w1_prev"), [0, nan, nan, nan]);
        assert_eq!(bits(&row0, "weights/per_param_dist_prev"), [0, nan, nan, 0]);
    }
}
