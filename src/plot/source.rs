//! The files `probe plot` reads, each as a [`Run`]: its series against the training step.
//! - `probe grad` files (through [`Results`]): the full-dataset loss, accuracy, |g|,
//!   |g + wd w|, |w|, the weights' motion and W1, gradient noise, B_noise, curvature and 2/lr.
//! - `probe eval` files: the full-dataset loss and accuracy.
//! - `probe train` logs (`DIR/train.h5`, one row per step): the minibatch loss (each step, and
//!   its running mean) and the learning rate.
//!
//! Which file is which comes from its `command` attribute; anything else is refused as not a
//! results file of probe (exit 3). Columns a grad file lacks become [`Missing`] entries, which
//! the figure turns into notes for the panels it draws.
use crate::analyze::results::Results;
use crate::error::input;
use crate::store::{read_i64_attr, read_str_attr};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// A quantity a panel can show. Its place in [`super::panels::PANELS`] sets its line style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q {
    Loss,
    TrainLoss,
    Accuracy,
    Grad,
    GradReg,
    Weights,
    MoveRms,
    MoveMean,
    W1,
    BatchVar,
    SampleVar,
    GradSq,
    BNoise,
    Top,
    Sharpness,
    TwoOverLr,
    Lr,
}

/// One quantity of one run: its legend label and (step, value) points in step order.
pub struct Series {
    pub q: Q,
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Each step's raw value under a running mean (the training log's minibatch loss).
    pub raw: Option<Vec<(f64, f64)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Grad,
    Eval,
    Train,
}

/// A column a file lacks: the panel it feeds, and the note's text ("has no /noise/batch_var
/// (probe grad --noise)") and what goes missing ("the gradient-noise panel").
pub struct Missing {
    pub panel: &'static str,
    pub lacks: String,
    pub what: String,
}

pub struct Run {
    pub path: PathBuf,
    pub label: String,
    pub kind: Kind,
    pub steps_known: bool,
    /// The `loss` attribute: `cross_entropy`, `mse` (empty if absent).
    pub loss: String,
    pub model: String,
    pub data: String,
    pub rows: usize,
    pub series: Vec<Series>,
    pub missing: Vec<Missing>,
}

impl Run {
    pub fn get(&self, q: Q) -> Option<&Series> {
        self.series.iter().find(|s| s.q == q)
    }

    pub fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// Opens `path` as a results file of probe grad, eval or train (`lr` overrides the learning
/// rate of the 2/lr line; `allow_partial` accepts a data shard).
pub fn open(path: &Path, lr: Option<f64>, allow_partial: bool) -> Result<Run> {
    let name = path.display();
    if !path.is_file() {
        return Err(input(format!("{name}: no such file")));
    }
    let command = {
        let file = hdf5::File::open(path)
            .map_err(|e| input(format!("{name}: not an HDF5 file, or not readable ({e})")))?;
        read_str_attr(&file, "command")
    };
    match command.as_deref() {
        Some("grad") => {
            let res = Results::open(path, 1, allow_partial)?;
            Ok(grad(&res, lr))
        }
        Some("eval") => eval(path, allow_partial),
        Some("train") => train(path),
        Some(c) => Err(input(format!(
            "{name}: written by `probe {c}`; probe plot draws the files of probe grad, probe eval and probe train"
        ))),
        None => Err(input(format!(
            "{name}: not a results file of probe (no `command` attribute); probe plot draws the files of probe grad, probe eval and probe train"
        ))),
    }
}

/// The model's file name and the data set, from the file's attributes.
fn identity(file: &hdf5::File) -> (String, String, String) {
    let attr = |k: &str| read_str_attr(file, k).unwrap_or_default();
    let model = Path::new(&attr("model_path"))
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    (model, attr("data"), attr("loss"))
}

fn series(q: Q, label: &str, steps: &[f64], v: &[f64]) -> Series {
    Series {
        q,
        label: label.into(),
        points: steps.iter().copied().zip(v.iter().copied()).collect(),
        raw: None,
    }
}

/// A `probe grad` file: every quantity it holds, and what it lacks.
fn grad(res: &Results, lr: Option<f64>) -> Run {
    let (model, data, loss) = identity(res.file());
    let mut run = Run {
        path: res.path.clone(),
        label: String::new(),
        kind: Kind::Grad,
        steps_known: res.steps_known,
        loss,
        model,
        data,
        rows: res.rows,
        series: Vec::new(),
        missing: Vec::new(),
    };
    let steps = res.sorted_steps();
    let col = |c: &str| res.series(c).map(|v| res.sorted(&v));
    let add = |run: &mut Run, q: Q, c: &str, label: &str| -> bool {
        match col(c) {
            Some(v) => {
                run.series.push(series(q, label, &steps, &v));
                true
            }
            None => false,
        }
    };
    let missing = |run: &mut Run, panel: &'static str, c: &str, how: &str, what: &str| {
        run.missing.push(Missing {
            panel,
            lacks: format!("has no /{c} ({how})"),
            what: what.into(),
        })
    };
    if !add(&mut run, Q::Loss, "loss", "full dataset") {
        missing(&mut run, "loss", "loss", "damaged file?", "the loss panel");
    }
    match col("accuracy").filter(|v| v.iter().any(|x| x.is_finite())) {
        Some(v) => run
            .series
            .push(series(Q::Accuracy, "accuracy", &steps, &pct(&v))),
        None => missing(
            &mut run,
            "accuracy",
            "accuracy",
            "not defined for --loss mse",
            "the accuracy panel",
        ),
    }
    if !add(&mut run, Q::Grad, "grad/l2", "|g|") {
        missing(&mut run, "grad", "grad/l2", "damaged file?", "|g|");
    }
    let wd = if res.weight_decay.is_empty() {
        "wd".to_string()
    } else {
        res.weight_decay.clone()
    };
    if !add(
        &mut run,
        Q::GradReg,
        "grad_reg/l2",
        &format!("|g + {wd} w|"),
    ) {
        missing(
            &mut run,
            "grad",
            "grad_reg/l2",
            "probe grad --weight-decay L",
            "|g + wd w|",
        );
    }
    if !add(&mut run, Q::Weights, "weights/l2", "|w|") {
        missing(
            &mut run,
            "weights",
            "weights/l2",
            "damaged file?",
            "the weight-norm panel",
        );
    }
    // Motion between consecutive checkpoints, all per entry so they share an axis:
    // RMS |dw| = dist_prev / sqrt(N) >= mean |dw| >= W1 of the per-tensor distributions.
    // Row 0 has nothing before it: its zeros are not motion.
    let first = res.order.first().map(|&r| res.step[r] as f64);
    let moved = |q: Q, label: &str, v: &[f64]| {
        let mut s = series(q, label, &steps, v);
        s.points.retain(|p| Some(p.0) != first || p.1 != 0.0);
        s
    };
    let entries: Option<f64> = res.entries().map(|e| e.iter().sum());
    match (col("weights/dist_prev"), entries) {
        (Some(v), Some(n)) => {
            let rms: Vec<f64> = v.iter().map(|x| x / n.sqrt()).collect();
            run.series.push(moved(Q::MoveRms, "RMS |dw|", &rms));
        }
        (Some(v), None) => run.series.push(moved(Q::MoveRms, "|w_k - w_(k-1)|", &v)),
        (None, _) => missing(
            &mut run,
            "motion",
            "weights/dist_prev",
            "damaged file?",
            "the distance moved",
        ),
    }
    match crate::analyze::distribution::distribution(res, res.rows / 2).0 {
        Some(d) if !d.ratio.is_empty() => {
            run.series
                .push(moved(Q::MoveMean, "mean |dw|", &res.sorted(&d.move_prev)));
            run.series
                .push(moved(Q::W1, "W1 of distributions", &res.sorted(&d.w1_prev)));
        }
        _ => run.missing.push(Missing {
            panel: "motion",
            lacks: "has no /weights/w1_prev and /weights/per_param_mean_abs_move (schema 2)".into(),
            what: "the Wasserstein distance".into(),
        }),
    }
    let noise = add(
        &mut run,
        Q::BatchVar,
        "noise/batch_var",
        "minibatch variance",
    );
    let noise = add(
        &mut run,
        Q::SampleVar,
        "noise/sample_var_trace",
        "per-sample variance",
    ) || noise;
    if let (true, Some(v)) = (noise, col("grad/l2")) {
        let sq: Vec<f64> = v.iter().map(|x| x * x).collect();
        run.series.push(series(Q::GradSq, "|g|^2", &steps, &sq));
    }
    if !noise {
        missing(
            &mut run,
            "noise",
            "noise/batch_var",
            "probe grad --noise",
            "the gradient-noise panel",
        );
    }
    add(&mut run, Q::BNoise, "noise/b_noise", "B_noise");
    let top = add(&mut run, Q::Top, "hessian/top", "top eigenvalue");
    let sharp = add(
        &mut run,
        Q::Sharpness,
        "hessian/sharpness",
        "sharpness along g",
    );
    if top || sharp {
        match lr.map(|l| vec![l; res.rows]).or_else(|| res.lr()) {
            Some(l) => {
                let two: Vec<f64> = res.sorted(&l).iter().map(|x| 2.0 / x).collect();
                run.series
                    .push(series(Q::TwoOverLr, "2 / lr", &steps, &two));
            }
            None => run.missing.push(Missing {
                panel: "sharpness",
                lacks: "has no finite /checkpoints/lr (pass --lr)".into(),
                what: "the 2/lr line".into(),
            }),
        }
    } else {
        missing(
            &mut run,
            "sharpness",
            "hessian/top",
            "probe grad --hessian",
            "the sharpness panel",
        );
    }
    run
}

fn pct(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| 100.0 * x).collect()
}

/// A results file read by column: its first `rows` entries as f64.
struct Table {
    file: hdf5::File,
    rows: usize,
}

impl Table {
    /// Opens a file of `probe eval` or `probe train`, checking it holds a complete row.
    fn open(path: &Path, what: &str) -> Result<Table> {
        let name = path.display();
        let file = hdf5::File::open(path)
            .map_err(|e| input(format!("{name}: not an HDF5 file, or not readable ({e})")))?;
        let rows = read_i64_attr(&file, "rows").unwrap_or(0).max(0) as usize;
        if rows == 0 {
            return Err(input(format!(
                "{name}: holds no complete {what} yet: nothing to plot"
            )));
        }
        Ok(Table { file, rows })
    }

    fn col(&self, name: &str) -> Option<Vec<f64>> {
        crate::analyze::results::series(&self.file, name, self.rows)
    }

    /// Column `name`, or an input error naming it.
    fn need(&self, path: &Path, name: &str) -> Result<Vec<f64>> {
        self.col(name).ok_or_else(|| {
            input(format!(
                "{}: has no readable /{name} of {} rows (damaged file?)",
                path.display(),
                self.rows
            ))
        })
    }
}

/// A `probe eval` file: the full-dataset loss and accuracy per checkpoint.
fn eval(path: &Path, allow_partial: bool) -> Result<Run> {
    let t = Table::open(path, "checkpoint")?;
    if let (Some(shard), false) = (read_str_attr(&t.file, "data_shard"), allow_partial) {
        return Err(input(format!(
            "{}: is data shard {shard} of a run (its rows hold sums over part of the data, not the full loss): \
             merge the shards first (probe merge --out R.h5 FILES...), or pass --allow-partial to look at this one alone",
            path.display()
        )));
    }
    let step = t.need(path, "checkpoints/step")?;
    let steps_known = step.iter().any(|&s| s >= 0.0);
    let step: Vec<f64> = if steps_known {
        step
    } else {
        (0..t.rows).map(|r| r as f64).collect()
    };
    let mut order: Vec<usize> = (0..t.rows).collect();
    order.sort_by(|&a, &b| step[a].total_cmp(&step[b]));
    let sorted = |v: &[f64]| -> Vec<f64> { order.iter().map(|&r| v[r]).collect() };
    let steps = sorted(&step);
    let (model, data, loss) = identity(&t.file);
    let mut run = Run {
        path: path.to_path_buf(),
        label: String::new(),
        kind: Kind::Eval,
        steps_known,
        loss,
        model,
        data,
        rows: t.rows,
        series: Vec::new(),
        missing: Vec::new(),
    };
    let l = t.need(path, "loss")?;
    run.series
        .push(series(Q::Loss, "full dataset", &steps, &sorted(&l)));
    if let Some(a) = t
        .col("accuracy")
        .filter(|v| v.iter().any(|x| x.is_finite()))
    {
        run.series
            .push(series(Q::Accuracy, "accuracy", &steps, &pct(&sorted(&a))));
    }
    Ok(run)
}

/// A `probe train` log: the minibatch loss (a running mean over the steps, and each step's
/// value under it) and the learning rate, per step.
fn train(path: &Path) -> Result<Run> {
    let t = Table::open(path, "step")?;
    let steps = t.need(path, "step")?;
    let loss = t.need(path, "loss")?;
    let (model, data, loss_kind) = identity(&t.file);
    let mut run = Run {
        path: path.to_path_buf(),
        label: String::new(),
        kind: Kind::Train,
        steps_known: true,
        loss: loss_kind,
        model,
        data,
        rows: t.rows,
        series: Vec::new(),
        missing: Vec::new(),
    };
    // Steps are appended in order (a resumed run cuts the log back first).
    let w = running_window(loss.len());
    let mean = running_mean(&loss, w);
    let label = if w > 1 {
        format!("minibatch, mean of {w} steps")
    } else {
        "minibatch".to_string()
    };
    let mut s = series(Q::TrainLoss, &label, &steps, &mean);
    if w > 1 {
        s.raw = Some(thin(
            &steps
                .iter()
                .copied()
                .zip(loss.iter().copied())
                .collect::<Vec<_>>(),
            2000,
        ));
    }
    s.points = thin(&s.points, 2000);
    run.series.push(s);
    if let Some(lr) = t.col("lr") {
        let mut s = series(Q::Lr, "learning rate", &steps, &lr);
        s.points = thin(&s.points, 2000);
        run.series.push(s);
    }
    Ok(run)
}

/// The running mean's window for a log of `n` steps: about 1/50 of the run, odd, at least 1.
pub fn running_window(n: usize) -> usize {
    if n < 20 {
        1
    } else {
        (n / 50).max(5) | 1
    }
}

/// The centred mean of `v` over `w` (odd) neighbours, fewer at the ends; non-finite values
/// are left out of the means.
pub fn running_mean(v: &[f64], w: usize) -> Vec<f64> {
    let h = w / 2;
    (0..v.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(h), (i + h + 1).min(v.len()));
            let (s, n) = v[a..b]
                .iter()
                .filter(|x| x.is_finite())
                .fold((0.0, 0), |(s, n), x| (s + x, n + 1));
            if n == 0 {
                f64::NAN
            } else {
                s / n as f64
            }
        })
        .collect()
}

/// At most about `most` points of a long series: in each of `most / 2` consecutive buckets,
/// its smallest and largest value (in step order), so the drawn line keeps its envelope.
pub fn thin(p: &[(f64, f64)], most: usize) -> Vec<(f64, f64)> {
    if p.len() <= most {
        return p.to_vec();
    }
    let per = p.len().div_ceil(most / 2);
    let mut out = Vec::with_capacity(most + 2);
    for b in p.chunks(per) {
        let fin = b.iter().filter(|q| q.1.is_finite());
        let lo = fin.clone().min_by(|a, b| a.1.total_cmp(&b.1));
        let hi = fin.max_by(|a, b| a.1.total_cmp(&b.1));
        match (lo, hi) {
            (Some(&l), Some(&h)) if l.0 <= h.0 => out.extend([l, h]),
            (Some(&l), Some(&h)) => out.extend([h, l]),
            _ => out.push((b[0].0, f64::NAN)),
        }
    }
    out.dedup_by(|a, b| a == b);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_mean_is_centred_and_shortens_at_the_ends() {
        let m = running_mean(&[1.0, 2.0, 3.0, 4.0, 5.0], 3);
        assert_eq!(m, vec![1.5, 2.0, 3.0, 4.0, 4.5]);
        assert_eq!(running_window(10), 1);
        assert_eq!(running_window(200), 5);
        assert_eq!(running_window(10_000), 201);
    }

    #[test]
    fn thinning_keeps_the_envelope() {
        let p: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (i as f64, if i == 7777 { 100.0 } else { (i % 7) as f64 }))
            .collect();
        let t = thin(&p, 200);
        assert!(t.len() <= 202, "{}", t.len());
        assert!(t.contains(&(7777.0, 100.0)));
        assert!(t.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
