//! `probe grad`: the exact gradient of the full-dataset mean loss at each checkpoint.
//!
//! One deterministic pass over every sample, in order: each batch gives the gradient of the
//! batch's *summed* loss (f32, within the batch); those are accumulated across batches in f64
//! and divided by the number of target elements, giving the gradient of the mean loss
//! `L(w) = (1/M) sum_i l_i(w)` over the whole data set.
//!
//! Two engines compute a batch ([`crate::measure::engine`]): probe's ONNX gradient graph run by
//! ONNX Runtime (the default), or libtorch autograd on the model interpreted node by node
//! (`--engine torch`, CPU or `--device cuda`). Everything else is one code path: the passes over
//! the data and their f64 sums ([`pass`]), the row of metrics ([`row`]), and the store; the
//! store's `engine` and `device` attributes record which engine computed the rows.
//!
//! Per checkpoint the store gets (see `docs/schema.md`): loss, accuracy, |g|_2, |g|_1, |g|_inf,
//! per-parameter |g|_2, |w|_2 and per-parameter |w|_2, distances to the previous and the first
//! checkpoint, and with `--weight-decay L` the norm of the gradient of the regularized objective
//! `L(w) + (L/2)|w|^2`, i.e. |g + L w|: what SGD with weight decay drives to zero.
use super::engine::open::{open, EngineOptions};
use super::hessian::HessianOptions;
use super::noise::NoiseOptions;
use super::setup::{group_label, group_size, label, pending, setup, Pass, Setup};
use crate::autodiff::grad::Kernels;
use crate::model::optimizer_meta::OptimizerMeta;
use crate::model::Model;
use crate::progress::Progress;
use crate::store::{self, Store};
use anyhow::Result;
use row::History;
use std::collections::BTreeMap;

pub mod pass;
pub mod row;

pub use super::engine::Engine;
pub use pass::{full_gradient, full_gradients, GradResult, OnNonFinite, PassSums};
pub use row::GradRow;

#[derive(Clone)]
pub struct GradPlan {
    pub pass: Pass,
    pub weight_decay: Option<f64>,
    pub save_grad: bool,
    pub bn_train: bool,
    pub engine: Engine,
    /// With [`Engine::OnnxRuntime`]: standard ONNX ops only, or probe's CPU kernels where faster.
    pub kernels: Kernels,
    pub on_nonfinite: OnNonFinite,
    /// `--noise`: minibatch and per-sample gradient noise ([`super::noise`]).
    pub noise: Option<NoiseOptions>,
    /// `--hessian`: curvature from Hessian-vector products ([`super::hessian`]).
    pub hessian: Option<HessianOptions>,
    /// `--shape-cache`: where observed shapes are kept between runs (None: off).
    pub shape_cache: Option<std::path::PathBuf>,
}

/// Runs `probe grad` over the plan's checkpoints (this shard's share), one HDF5 row each.
pub fn run(plan: &GradPlan, mut on_row: impl FnMut(&GradRow)) -> Result<Vec<GradRow>> {
    let ready = setup(&plan.pass)?;
    check_options(plan, &ready.model)?;
    let (weight_decay, optimizer) = run_optimizer(plan, &ready.checkpoints);
    let mut attrs = attributes(plan, weight_decay, optimizer.as_ref());
    // Which subgradient each Clip and embedding took (the exporter's records, or the flags).
    attrs.extend(crate::ops::conventions::attributes(ready.model.graph())?);
    let info = ready.run_info("grad", &plan.pass, attrs);
    let run_key = info.clone();
    let Setup {
        mut model,
        mut data,
        spec,
        fit,
        checkpoints: all,
        data_shard,
    } = ready;
    let opts = EngineOptions {
        engine: plan.engine,
        kernels: plan.kernels,
        loss: plan.pass.loss,
        bn_train: plan.bn_train,
        hessian: plan.hessian.as_ref(),
        threads: plan.pass.threads,
        // Shapes are observed at the first checkpoint's state, so the model's own parameter
        // values are not needed past here (every checkpoint supplies its parameters).
        state: &all[0].tensors,
        shape_cache: plan
            .shape_cache
            .clone()
            .filter(|_| !all[0].sha256.is_empty())
            .map(|dir| crate::autodiff::shape_cache::ShapeCache {
                dir,
                state_id: all[0].sha256.clone(),
            }),
    };
    model.release_parameters();
    let (mut engine, mut hvp_engine) = open(&model, data.as_mut(), &opts)?;
    let mut store = Store::open(&plan.pass.out, &info, plan.pass.force)?;
    let names: Vec<String> = engine.params().to_vec();
    store.put_strings("params/name", &names)?;
    let done = store.done();
    let mut history = History::new(&names, &all[0]);
    let mut rows = Vec::new();
    let mut nonfinite_rows = 0;
    let todo: Vec<usize> = (0..all.len())
        .filter(|&k| super::setup::mine(&plan.pass, k) && pending(&all[k], &done, &plan.pass))
        .collect();
    let numel: usize = names
        .iter()
        .map(|n| all[0].tensors.get(n).map(|t| t.numel()).unwrap_or(0))
        .sum();
    let group = plan
        .pass
        .ckpts_per_pass
        .unwrap_or_else(|| group_size(numel as u64 * 8 * if plan.noise.is_some() { 2 } else { 1 }))
        .max(1);
    let per_sample_noise = plan
        .noise
        .as_ref()
        .map(|o| o.samples.unwrap_or(spec.len).min(spec.len))
        .unwrap_or(0);
    crate::progress::plan(
        "grad",
        (todo.len() * (spec.len + per_sample_noise)) as u64,
        todo.len(),
    );
    crate::log::event(
        "start",
        serde_json::json!({"command": "grad", "out": plan.pass.out, "checkpoints": todo.len(),
            "samples": spec.len, "rows_before": store.rows()}),
    );
    let mut done_checkpoints = 0;
    let result = (|| -> Result<()> {
        for chunk in todo.chunks(group) {
            let group_label = group_label(&all[chunk[0]], chunk.len());
            crate::progress::at_checkpoint(done_checkpoints + 1, chunk.len());
            done_checkpoints += chunk.len();
            let mut progress =
                Progress::of_phase("grad", &group_label, spec.len as u64, plan.pass.quiet)
                    .weighted(chunk.len() as u64);
            let ckpts: Vec<&crate::model::Checkpoint> = chunk.iter().map(|&k| &all[k]).collect();
            let mut resume = super::setup::resume(&plan.pass, &run_key, &ckpts);
            let results = full_gradients(
                engine.as_mut(),
                &ckpts,
                data.as_mut(),
                plan.pass.batch,
                fit.classes,
                plan.on_nonfinite,
                plan.noise.is_some(),
                &mut progress,
                Some(&mut resume),
            )?;
            progress.finish();
            let first_index = done_checkpoints - chunk.len() + 1;
            for (j, (&k, sums)) in chunk.iter().zip(results).enumerate() {
                let c = &all[k];
                // The per-sample noise and Hessian passes that follow are this checkpoint's.
                crate::progress::at_checkpoint(first_index + j, 1);
                let label = label(c);
                let row_start = std::time::Instant::now();
                if !sums.nonfinite.is_empty() {
                    nonfinite_rows += 1;
                }
                if let Some(d) = &data_shard {
                    let weights = history.at(&names, &all, k);
                    let w = (weight_decay.is_some() && d.index == 0).then_some(&weights.w[..]);
                    let mut row = row::partial(&sums, &names, c, w);
                    let (w_row, w_l2, dist_prev) = row::weight_columns(c, &history, &weights);
                    row.extend(w_row);
                    let r = sums.mean();
                    let g_l2 = r.grads.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
                    // Printed: this shard's own means.
                    let mut out = row::printed(&r, c, g_l2, w_l2, dist_prev);
                    out.seconds = r.seconds + row_start.elapsed().as_secs_f64();
                    row.push(("seconds".into(), store::Cell::F64(out.seconds)));
                    store.append(&row)?;
                    history.keep(k, weights);
                    row::log(&out, store.rows());
                    on_row(&out);
                    rows.push(out);
                    continue;
                }
                let r = sums.mean();
                let weights = history.at(&names, &all, k);
                let (mut row, mut out) = row::gradient(&r, c, &history, &weights);
                if let Some(o) = &plan.noise {
                    let (e, d) = (engine.as_mut(), data.as_mut());
                    // The group's pass left the engine holding its last checkpoint.
                    if chunk.len() > 1 {
                        e.load(c)?;
                    }
                    let s = pass::sample_noise(e, d, o, &r, c, &label, plan.pass.quiet)?;
                    out.b_noise = Some(row::noise(&mut row, &r, s.as_ref(), out.grad_l2));
                }
                if let (Some(h), Some(he)) = (&plan.hessian, hvp_engine.as_mut()) {
                    let (e, d) = (he.as_mut(), data.as_mut());
                    let cv = pass::curvature(
                        e,
                        c,
                        d,
                        plan.pass.batch,
                        h,
                        &names,
                        &r,
                        &label,
                        plan.pass.quiet,
                    )?;
                    let block = he.hvp_params().to_vec();
                    out.hessian_top = Some(row::hessian(&mut row, &names, &block, cv.as_ref()));
                }
                if let Some(l) = weight_decay {
                    out.grad_reg_l2 = Some(row::weight_decay(&mut row, &r.grads, &weights.w, l));
                }
                if plan.save_grad {
                    row::full_gradient(&mut row, &names, &r.grads, c);
                }
                // The pass's share (its time over the group's checkpoints) and this row's own work.
                out.seconds = r.seconds + row_start.elapsed().as_secs_f64();
                row::set_seconds(&mut row, out.seconds);
                store.append(&row)?;
                history.keep(k, weights);
                row::log(&out, store.rows());
                on_row(&out);
                rows.push(out);
            }
            resume.done();
        }
        Ok(())
    })();
    let rows_in_file = store.rows();
    let complete = result.is_ok() && nonfinite_rows == 0;
    store.finish(complete)?;
    crate::log::event(
        "finish",
        serde_json::json!({"out": plan.pass.out, "rows_written": rows.len(), "rows": rows_in_file,
            "complete": complete, "nonfinite_rows": nonfinite_rows}),
    );
    result?;
    if nonfinite_rows > 0 {
        return Err(crate::error::non_finite(format!(
            "{nonfinite_rows} checkpoint(s) had non-finite losses or gradients; their rows in {} hold NaN",
            plan.pass.out.display()
        )));
    }
    Ok(rows)
}

/// The results file's attributes beyond the common ones: how the rows were computed. The rows of
/// one file must agree on them (--noise and --hessian included).
fn attributes(
    plan: &GradPlan,
    weight_decay: Option<f64>,
    optimizer: Option<&OptimizerMeta>,
) -> BTreeMap<String, String> {
    let mut extra = BTreeMap::new();
    if let Some(o) = optimizer {
        // What `probe analyze` needs to say what stationarity and the edge of stability mean.
        extra.insert("optimizer".to_string(), o.describe());
    }
    extra.insert(
        "bn".to_string(),
        if plan.bn_train { "train" } else { "eval" }.to_string(),
    );
    extra.insert("engine".to_string(), plan.engine.name().to_string());
    extra.insert(
        "ops".to_string(),
        match (plan.engine, plan.kernels) {
            (Engine::OnnxRuntime, Kernels::ProbeCpu) => crate::ops::rule::PROBE_CPU_DOMAIN,
            (Engine::OnnxRuntime, Kernels::Standard) => "standard",
            (Engine::Torch(_), _) => "",
        }
        .to_string(),
    );
    extra.insert("device".to_string(), plan.engine.device_name().to_string());
    if plan.pass.data_shard.is_some() {
        // A data shard's rows hold sums; whether the merged rows get /grad/full is its to say.
        extra.insert("save_grad".to_string(), plan.save_grad.to_string());
    }
    extra.insert(
        "weight_decay".to_string(),
        weight_decay.map(|l| l.to_string()).unwrap_or_default(),
    );
    extra.insert(
        "noise".to_string(),
        plan.noise
            .as_ref()
            .map(|n| match n.samples {
                None => "samples=all".to_string(),
                Some(k) => format!("samples={k}"),
            })
            .unwrap_or_default(),
    );
    extra.insert(
        "hessian".to_string(),
        plan.hessian
            .as_ref()
            .map(|h| {
                format!(
                    "samples={} iters={} tol={} probes={} seed={} params={}",
                    h.samples.map(|k| k.to_string()).unwrap_or("all".into()),
                    h.iters,
                    h.tol,
                    h.probes,
                    h.seed,
                    h.params
                        .as_ref()
                        .map(|p| p.join(","))
                        .unwrap_or("all".into())
                )
            })
            .unwrap_or_default(),
    );
    extra
}

/// The weight decay the rows use (`|g + wd w|`) and the optimizer the checkpoints record
/// ([`OptimizerMeta`]). Without `--weight-decay`, a coupled (L2) decay recorded in the
/// checkpoints' metadata is used, with a note; AdamW's decoupled decay is not (its stationarity
/// condition is not `g + wd w = 0`), with a note saying so. A flag that disagrees with the
/// metadata is used, with a warning; `--weight-decay 0` turns it off.
fn run_optimizer(
    plan: &GradPlan,
    ckpts: &[crate::model::Checkpoint],
) -> (Option<f64>, Option<OptimizerMeta>) {
    let found = ckpts
        .iter()
        .filter(|c| c.is_read())
        .find_map(|c| Some((c, OptimizerMeta::of(&c.metadata)?)));
    let flag = plan.weight_decay.filter(|&l| l > 0.0);
    let Some((c, o)) = found else {
        return (flag, None);
    };
    let text = c.metadata.get("optimizer").cloned().unwrap_or_default();
    let path = c.path.display();
    let say = |s: String| {
        if !plan.pass.quiet {
            eprintln!("{s}");
        }
    };
    let recorded = o.weight_decay.filter(|&m| m > 0.0);
    let adamw = "AdamW decays the weights outside its preconditioner, so its fixed points satisfy \
                 m/(sqrt(v)+eps) = -wd w (the optimizer's moments), not g + wd w = 0";
    match (plan.weight_decay, recorded) {
        (Some(l), m) => {
            if m.unwrap_or(0.0) != l {
                eprintln!(
                    "warning: --weight-decay {l}, but {path} records weight_decay={} ({text}); using {l}",
                    m.unwrap_or(0.0)
                );
            }
            if flag.is_some() && !o.coupled_decay() {
                eprintln!("warning: {path}: trained with {text}: {adamw}; |g + wd w| is computed as asked");
            }
            (flag, Some(o))
        }
        (None, Some(m)) if o.coupled_decay() => {
            say(format!(
                "note: weight decay {m} from {path}'s metadata ({text}): rows get |g + wd w| (--weight-decay 0 leaves it out)"
            ));
            (Some(m), Some(o))
        }
        (None, Some(m)) => {
            say(format!(
                "note: {path}: {text}: {adamw}; |g + wd w| is not computed (--weight-decay {m} computes it anyway)"
            ));
            (None, Some(o))
        }
        (None, None) => (None, Some(o)),
    }
}

/// Options checked against the model and data before any work: every problem at once.
fn check_options(plan: &GradPlan, model: &Model) -> Result<()> {
    let mut problems = Vec::new();
    if let Some(n) = &plan.noise {
        if plan.bn_train && n.samples != Some(0) {
            problems.push(
                "--noise with --bn train: per-sample gradients are not defined under batch statistics \
                 (add --noise-samples 0 for the minibatch part only)"
                    .to_string(),
            );
        }
    }
    if let Some(h) = &plan.hessian {
        let trainable: Vec<String> = model.trainable().map(|p| p.name.clone()).collect();
        if let Some(ps) = &h.params {
            for q in ps {
                if !trainable.contains(q) {
                    problems.push(format!(
                        "--hessian-params: '{q}' is not a trainable parameter of {}",
                        model.path.display()
                    ));
                }
            }
        }
        if h.iters == 0 {
            problems.push("--hessian-iters must be at least 1".into());
        }
        if h.samples == Some(0) {
            problems.push("--hessian-samples must be at least 1".into());
        }
        let dim: usize = match &h.params {
            Some(ps) => ps
                .iter()
                .filter_map(|q| model.param(q))
                .map(|i| i.shape.iter().product::<usize>())
                .sum(),
            None => model
                .trainable()
                .map(|i| i.shape.iter().product::<usize>())
                .sum(),
        };
        let bytes = (h.iters + 2) as f64 * dim as f64 * 8.0;
        if bytes > 8.0 * (1u64 << 30) as f64 {
            problems.push(format!(
                "--hessian-iters {} keeps {} Lanczos vectors of {dim} parameters in f64 ({:.1} GiB); lower it or restrict --hessian-params",
                h.iters,
                h.iters + 2,
                bytes / (1u64 << 30) as f64
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::error::input(problems.join("; ")))
    }
}
