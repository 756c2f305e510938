//! `probe grad`: the exact gradient of the full-dataset mean loss at each checkpoint.
//!
//! One deterministic pass over every sample, in order: each batch's gradient graph returns the
//! gradient of the batch's *summed* loss (f32, within the batch); those are accumulated across
//! batches in f64 and divided by the number of target elements, giving the gradient of the mean
//! loss `L(w) = (1/M) sum_i l_i(w)` over the whole data set.
//!
//! Per checkpoint the store gets (see `docs/schema.md`): loss, accuracy, |g|_2, |g|_1, |g|_inf,
//! per-parameter |g|_2, |w|_2 and per-parameter |w|_2, distances to the previous and the first
//! checkpoint, and with `--weight-decay L` the norm of the gradient of the regularized objective
//! `L(w) + (L/2)|w|^2`, i.e. |g + L w|: what SGD with weight decay drives to zero.
use super::check::{data_fits_model, targets_in_range};
use super::eval::{input_value, state_arrays};
use crate::autodiff::model_grad::{grad_graph, GradGraph, GradOptions};
use crate::data::{batches, Dataset};
use crate::model::{Checkpoint, Model};
use crate::progress::Progress;
use crate::store::{Cell, RunInfo, Store};
use anyhow::{anyhow, Result};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use std::borrow::Cow;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNonFinite {
    /// Stop with an error naming the checkpoint and batch (exit 4).
    Stop,
    /// Record the checkpoint's row with NaN and go on; exit 4 at the end.
    Continue,
}

pub struct GradPlan {
    pub model: PathBuf,
    pub checkpoints: Vec<PathBuf>,
    pub data: String,
    pub limit: Option<usize>,
    pub batch: usize,
    pub loss: crate::autodiff::LossKind,
    pub weight_decay: Option<f64>,
    pub save_grad: bool,
    pub bn_train: bool,
    pub shard: (usize, usize),
    pub on_nonfinite: OnNonFinite,
    pub threads: usize,
    pub out: PathBuf,
    pub force: bool,
    pub quiet: bool,
    pub command_line: String,
}

/// What one checkpoint's pass gives.
#[derive(Debug, Clone)]
pub struct GradResult {
    pub loss: f64,
    pub accuracy: f64,
    pub samples: usize,
    pub elements: usize,
    /// Gradient of the mean loss per parameter (graph order), f64.
    pub grads: Vec<Vec<f64>>,
    /// Batches whose loss or gradient was not finite (their values are left out).
    pub nonfinite_batches: Vec<usize>,
    pub seconds: f64,
}

/// One pass over the data at one checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn full_gradient(
    session: &mut Session,
    graph: &GradGraph,
    ckpt: &Checkpoint,
    data: &mut dyn Dataset,
    batch: usize,
    classes: Option<usize>,
    on_nonfinite: OnNonFinite,
    progress: &mut Progress,
) -> Result<GradResult> {
    let t0 = std::time::Instant::now();
    let state = state_arrays(&graph.state, ckpt)?;
    let spec = data.spec().clone();
    let mut acc: Vec<Vec<f64>> = graph
        .grads
        .iter()
        .map(|(p, _)| vec![0.0; ckpt.tensors.get(p).map(|t| t.numel()).unwrap_or(0)])
        .collect();
    let (mut loss_sum, mut correct_sum, mut elements) = (0f64, 0f64, 0usize);
    let mut nonfinite = Vec::new();
    for (bi, (start, count)) in batches(spec.len, batch).enumerate() {
        let b = data.read(start, count)?;
        targets_in_range(&b, classes, &spec.identity)?;
        let per_sample: usize = b.y.shape()[1..].iter().product();
        let mut inputs: Vec<(Cow<str>, SessionInputValue)> = Vec::with_capacity(2 + state.len());
        inputs.push((graph.input.as_str().into(), input_value(&b.x)?));
        inputs.push((graph.target.as_str().into(), input_value(&b.y)?));
        for (name, a) in graph.state.iter().zip(&state) {
            inputs.push((
                name.as_str().into(),
                TensorRef::from_array_view(a.view())?.into(),
            ));
        }
        let out = session.run(inputs).map_err(|e| {
            anyhow!(
                "{}: ONNX Runtime failed on samples {}..{}: {e}",
                ckpt.path.display(),
                start,
                start + count
            )
        })?;
        let l = out[graph.loss_sum.as_str()]
            .try_extract_array::<f32>()?
            .iter()
            .next()
            .copied()
            .unwrap_or(f32::NAN) as f64;
        let mut finite = l.is_finite();
        let mut gs = Vec::with_capacity(graph.grads.len());
        for (_, gname) in &graph.grads {
            let (_, v) = out[gname.as_str()].try_extract_tensor::<f32>()?;
            finite &= v.iter().all(|x| x.is_finite());
            gs.push(v);
        }
        if !finite {
            let msg = format!(
                "{}: non-finite loss or gradient in batch {bi} (samples {}..{}) of {}",
                ckpt.path.display(),
                start,
                start + count,
                spec.identity
            );
            if on_nonfinite == OnNonFinite::Stop {
                return Err(crate::error::non_finite(format!(
                    "{msg} (--on-nonfinite continue records NaN and goes on)"
                )));
            }
            eprintln!("warning: {msg}");
            nonfinite.push(bi);
            progress.inc(count as u64);
            continue;
        }
        for (a, v) in acc.iter_mut().zip(&gs) {
            for (s, &x) in a.iter_mut().zip(v.iter()) {
                *s += x as f64;
            }
        }
        loss_sum += l;
        elements += count * per_sample.max(1);
        if let Some(c) = &graph.correct_sum {
            correct_sum += out[c.as_str()]
                .try_extract_array::<f32>()?
                .iter()
                .next()
                .copied()
                .unwrap_or(0.0) as f64;
        }
        progress.inc(count as u64);
    }
    let m = elements.max(1) as f64;
    let nan = !nonfinite.is_empty();
    for a in acc.iter_mut() {
        for s in a.iter_mut() {
            *s = if nan { f64::NAN } else { *s / m };
        }
    }
    Ok(GradResult {
        loss: if nan { f64::NAN } else { loss_sum / m },
        accuracy: if graph.correct_sum.is_some() && !nan {
            correct_sum / m
        } else {
            f64::NAN
        },
        samples: spec.len,
        elements,
        grads: acc,
        nonfinite_batches: nonfinite,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn l2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Trainable parameters of a checkpoint in the gradient graph's order, as f64.
fn weights(graph: &GradGraph, c: &Checkpoint) -> Vec<Vec<f64>> {
    graph
        .grads
        .iter()
        .map(|(p, _)| {
            c.tensors
                .get(p)
                .and_then(|t| t.as_f32())
                .map(|v| v.iter().map(|&x| x as f64).collect())
                .unwrap_or_default()
        })
        .collect()
}

fn distance(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}

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
    pub seconds: f64,
}

/// Runs `probe grad` over the plan's checkpoints (this shard's share), one HDF5 row each.
pub fn run(plan: &GradPlan, mut on_row: impl FnMut(&GradRow)) -> Result<Vec<GradRow>> {
    let model = Model::load(&plan.model)?;
    let input = model.data_input()?;
    let hint = crate::data::Hint {
        x_shape: input.sample_shape(),
    };
    let mut data = crate::data::open(&plan.data, &hint)?;
    if let Some(l) = plan.limit {
        data = Box::new(crate::data::Limited::new(data, l));
    }
    let spec = data.spec().clone();
    let fit = data_fits_model(&model, &spec, plan.loss)?;
    // Checkpoints: every one is matched first (a bad one fails before any work).
    let all: Vec<Checkpoint> = if plan.checkpoints.is_empty() {
        vec![Checkpoint::from_model(&model)?]
    } else {
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for p in &plan.checkpoints {
            match Checkpoint::load(p, &model) {
                Ok(c) => ok.push(c),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !errors.is_empty() {
            return Err(crate::error::input(errors.join(" | ")));
        }
        ok
    };
    let (shard, shards) = plan.shard;
    // Shapes are observed on the first samples of the data, at two batch sizes.
    let probe_sizes: Vec<usize> = if spec.len >= 3 {
        vec![2, 3]
    } else {
        vec![spec.len]
    };
    let mut samples = Vec::new();
    for n in probe_sizes {
        let b = data.read(0, n)?;
        samples.push((b.x.to_host(), b.y.to_host()));
    }
    let opts = GradOptions {
        loss: plan.loss,
        bn_train: plan.bn_train,
        wrt: None,
    };
    let graph = grad_graph(&model, &opts, &samples)?;
    let bytes = protobuf::Message::write_to_bytes(&graph.proto)?;
    let mut session = crate::runtime::session(&bytes, plan.threads, "gradient")?;
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(
        "bn".to_string(),
        if plan.bn_train { "train" } else { "eval" }.to_string(),
    );
    extra.insert("engine".to_string(), "onnxruntime".to_string());
    extra.insert(
        "weight_decay".to_string(),
        plan.weight_decay.map(|l| l.to_string()).unwrap_or_default(),
    );
    let info = RunInfo {
        command: "grad".into(),
        command_line: plan.command_line.clone(),
        model_path: plan.model.display().to_string(),
        model_sha256: model.sha256.clone(),
        data: spec.identity.clone(),
        data_samples: spec.len as i64,
        batch_size: plan.batch as i64,
        loss: plan.loss.name().into(),
        extra,
    };
    let mut store = Store::open(&plan.out, &info, plan.force)?;
    let names: Vec<String> = graph.grads.iter().map(|(p, _)| p.clone()).collect();
    store.put_strings("params/name", &names)?;
    let done = store.done();
    let first_w = weights(&graph, &all[0]);
    let mut rows = Vec::new();
    let mut nonfinite_rows = 0;
    let result = (|| -> Result<()> {
        for (k, c) in all.iter().enumerate() {
            if k % shards != shard {
                continue;
            }
            let path = c.path.display().to_string();
            if done.contains(&(path.clone(), c.sha256.clone())) {
                if !plan.quiet {
                    eprintln!("skip: {path} is already complete in {}", plan.out.display());
                }
                continue;
            }
            let label = c
                .path
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let mut progress = Progress::new(&label, spec.len as u64, plan.quiet);
            let r = full_gradient(
                &mut session,
                &graph,
                c,
                data.as_mut(),
                plan.batch,
                fit.classes,
                plan.on_nonfinite,
                &mut progress,
            )?;
            progress.finish();
            if !r.nonfinite_batches.is_empty() {
                nonfinite_rows += 1;
            }
            let w = weights(&graph, c);
            let prev_w = if k > 0 {
                weights(&graph, &all[k - 1])
            } else {
                w.clone()
            };
            let flat_g: Vec<f64> = r.grads.iter().flatten().copied().collect();
            let per_g: Vec<f64> = r.grads.iter().map(|g| l2(g)).collect();
            let per_w: Vec<f64> = w.iter().map(|x| l2(x)).collect();
            let g_l2 = l2(&flat_g);
            let w_l2 = per_w.iter().map(|x| x * x).sum::<f64>().sqrt();
            let dist_prev = distance(&w, &prev_w);
            let mut row: crate::store::Row = vec![
                ("loss".into(), Cell::F64(r.loss)),
                ("accuracy".into(), Cell::F64(r.accuracy)),
                ("samples".into(), Cell::I64(r.samples as i64)),
                ("elements".into(), Cell::I64(r.elements as i64)),
                ("grad/l2".into(), Cell::F64(g_l2)),
                (
                    "grad/l1".into(),
                    Cell::F64(flat_g.iter().map(|x| x.abs()).sum()),
                ),
                (
                    "grad/linf".into(),
                    Cell::F64(flat_g.iter().fold(0.0f64, |m, x| {
                        if x.is_nan() {
                            f64::NAN
                        } else {
                            m.max(x.abs())
                        }
                    })),
                ),
                (
                    "grad/per_param_l2".into(),
                    Cell::F64s(vec![per_g.len()], per_g.clone()),
                ),
                ("weights/l2".into(), Cell::F64(w_l2)),
                (
                    "weights/per_param_l2".into(),
                    Cell::F64s(vec![per_w.len()], per_w),
                ),
                ("weights/dist_prev".into(), Cell::F64(dist_prev)),
                (
                    "weights/dist_first".into(),
                    Cell::F64(distance(&w, &first_w)),
                ),
                (
                    "nonfinite_batches".into(),
                    Cell::I64(r.nonfinite_batches.len() as i64),
                ),
                ("seconds".into(), Cell::F64(r.seconds)),
                ("checkpoints/path".into(), Cell::Str(path.clone())),
                ("checkpoints/step".into(), Cell::I64(c.step)),
                ("checkpoints/sha256".into(), Cell::Str(c.sha256.clone())),
            ];
            let mut reg = None;
            if let Some(lambda) = plan.weight_decay {
                // Gradient of L(w) + (lambda/2)|w|^2 is g + lambda w.
                let per: Vec<f64> = r
                    .grads
                    .iter()
                    .zip(&w)
                    .map(|(g, x)| {
                        g.iter()
                            .zip(x)
                            .map(|(a, b)| (a + lambda * b).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                    .collect();
                let total = per.iter().map(|x| x * x).sum::<f64>().sqrt();
                reg = Some(total);
                row.push(("grad_reg/l2".into(), Cell::F64(total)));
                row.push((
                    "grad_reg/per_param_l2".into(),
                    Cell::F64s(vec![per.len()], per),
                ));
            }
            if plan.save_grad {
                for ((p, _), g) in graph.grads.iter().zip(&r.grads) {
                    let shape = c.tensors[p].shape.clone();
                    row.push((format!("grad/full/{p}"), Cell::F64s(shape, g.clone())));
                }
            }
            store.append(&row)?;
            let out = GradRow {
                path,
                step: c.step,
                loss: r.loss,
                accuracy: r.accuracy,
                grad_l2: g_l2,
                grad_reg_l2: reg,
                weights_l2: w_l2,
                dist_prev,
                seconds: r.seconds,
            };
            on_row(&out);
            rows.push(out);
        }
        Ok(())
    })();
    store.finish(result.is_ok() && nonfinite_rows == 0)?;
    result?;
    if nonfinite_rows > 0 {
        return Err(crate::error::non_finite(format!(
            "{nonfinite_rows} checkpoint(s) had non-finite losses or gradients; their rows in {} hold NaN",
            plan.out.display()
        )));
    }
    Ok(rows)
}
