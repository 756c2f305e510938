//! `probe eval`: the exact full-dataset mean loss and accuracy at a checkpoint, by ONNX Runtime.
//!
//! Each batch's graph run returns the per-element loss and correctness in f32; they are summed in
//! f64 here, so the mean over N (or N*T) elements carries no accumulated f32 rounding.
use super::check::{targets_in_range, Fit};
use super::setup::{self, Setup};
use crate::autodiff::EvalGraph;
use crate::data::{batches, Dataset};
use crate::model::Checkpoint;
use crate::progress::Progress;
use anyhow::{anyhow, Result};
use ort::session::Session;

/// The ONNX Runtime feeding helpers, where they were first written.
pub use super::engine::ort::{feed, input_value, state_arrays};

#[derive(Debug, Clone, Copy)]
pub struct EvalResult {
    pub loss: f64,
    /// NaN where accuracy does not apply (mse).
    pub accuracy: f64,
    pub samples: usize,
    pub elements: usize,
    pub seconds: f64,
}

pub fn evaluate(
    session: &mut Session,
    graph: &EvalGraph,
    ckpt: &Checkpoint,
    data: &mut dyn Dataset,
    batch: usize,
    fit: &Fit,
    progress: &mut Progress,
) -> Result<EvalResult> {
    let t0 = std::time::Instant::now();
    let state = state_arrays(&graph.state, ckpt)?;
    let spec = data.spec().clone();
    let (mut loss_sum, mut correct_sum, mut elements) = (0f64, 0f64, 0usize);
    for (start, count) in batches(spec.len, batch) {
        let b = data.read(start, count)?;
        targets_in_range(&b, fit.classes, &spec.identity)?;
        let inputs = feed(&graph.input, &graph.target, &b, &graph.state, &state)?;
        let out = session.run(inputs).map_err(|e| {
            anyhow!(
                "{}: ONNX Runtime failed on samples {}..{}: {e}",
                ckpt.path.display(),
                start,
                start + count
            )
        })?;
        let l = out[graph.loss.as_str()].try_extract_array::<f32>()?;
        let s: f64 = l.iter().map(|&v| v as f64).sum();
        if !s.is_finite() {
            return Err(crate::error::non_finite(format!(
                "{}: non-finite loss ({s}) on samples {}..{} of {}",
                ckpt.path.display(),
                start,
                start + count,
                spec.identity
            )));
        }
        loss_sum += s;
        elements += l.len();
        if let Some(c) = &graph.correct {
            correct_sum += out[c.as_str()]
                .try_extract_array::<f32>()?
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
        progress.inc(count as u64);
    }
    Ok(EvalResult {
        loss: loss_sum / elements as f64,
        accuracy: if graph.correct.is_some() {
            correct_sum / elements as f64
        } else {
            f64::NAN
        },
        samples: spec.len,
        elements,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Everything `probe eval` needs, checked before any work starts.
pub struct EvalPlan {
    pub model: std::path::PathBuf,
    /// Empty: the model's own initializers.
    pub checkpoints: Vec<std::path::PathBuf>,
    /// How the checkpoints' tensor names map to the model's (`--strip-prefix`).
    pub ckpt_names: crate::model::CheckpointOptions,
    pub data: String,
    pub limit: Option<usize>,
    pub batch: usize,
    pub loss: crate::autodiff::LossKind,
    pub threads: usize,
    pub out: std::path::PathBuf,
    pub force: bool,
    pub quiet: bool,
    pub command_line: String,
}

/// One printed and stored row.
pub struct EvalRow {
    pub path: String,
    pub step: i64,
    pub result: EvalResult,
}

/// Runs `probe eval`: every checkpoint over the whole data set, one HDF5 row each; checkpoints
/// already complete in `out` (same file, same hash) are skipped. `on_row` sees each row as it
/// is committed.
pub fn run(plan: &EvalPlan, mut on_row: impl FnMut(&EvalRow)) -> Result<Vec<EvalRow>> {
    use crate::store::{Cell, Store};
    let setup = setup::setup(
        &plan.model,
        &plan.checkpoints,
        &plan.data,
        plan.limit,
        plan.loss,
        &plan.ckpt_names,
        plan.quiet,
    )?;
    let info = setup.run_info(
        "eval",
        &plan.command_line,
        &plan.model,
        plan.batch,
        plan.loss,
        Default::default(),
    );
    let Setup {
        model,
        mut data,
        spec,
        fit,
        checkpoints: ckpts,
    } = setup;
    let graph = crate::autodiff::eval_graph(&model, plan.loss, fit.target_rank)?;
    let bytes = protobuf::Message::write_to_bytes(&graph.proto)?;
    let mut session = crate::runtime::session(&bytes, plan.threads, "evaluation")?;
    let mut store = Store::open(&plan.out, &info, plan.force)?;
    let done = store.done();
    let mut rows = Vec::new();
    let result = (|| -> Result<()> {
        for c in &ckpts {
            if !setup::pending(c, &done, &plan.out, plan.quiet) {
                continue;
            }
            let (path, label) = (c.path.display().to_string(), setup::label(c));
            let mut progress = Progress::new(&label, spec.len as u64, plan.quiet);
            let r = evaluate(
                &mut session,
                &graph,
                c,
                data.as_mut(),
                plan.batch,
                &fit,
                &mut progress,
            )?;
            progress.finish();
            store.append(&vec![
                ("loss".into(), Cell::F64(r.loss)),
                ("accuracy".into(), Cell::F64(r.accuracy)),
                ("samples".into(), Cell::I64(r.samples as i64)),
                ("elements".into(), Cell::I64(r.elements as i64)),
                ("seconds".into(), Cell::F64(r.seconds)),
                ("checkpoints/path".into(), Cell::Str(path.clone())),
                ("checkpoints/step".into(), Cell::I64(c.step)),
                ("checkpoints/sha256".into(), Cell::Str(c.sha256.clone())),
            ])?;
            let row = EvalRow {
                path,
                step: c.step,
                result: r,
            };
            on_row(&row);
            rows.push(row);
        }
        Ok(())
    })();
    store.finish(result.is_ok())?;
    result.map(|_| rows)
}
