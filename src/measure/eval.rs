//! `probe eval`: the exact full-dataset mean loss and accuracy at a checkpoint, by ONNX Runtime.
//!
//! Each batch's graph run returns the per-element loss and correctness in f32; they are summed in
//! f64 here, so the mean over N (or N*T) elements carries no accumulated f32 rounding.
use super::check::{targets_in_range, Fit};
use super::setup::{self, Pass, Setup};
use crate::autodiff::EvalGraph;
use crate::data::{batches, Dataset};
use crate::model::Checkpoint;
use crate::progress::Progress;
use anyhow::{anyhow, Result};
use ort::session::Session;

/// The ONNX Runtime feeding helpers, where they were first written.
pub use super::engine::ort::{feed, input_value, state_values};

#[derive(Debug, Clone, Copy)]
pub struct EvalResult {
    pub loss: f64,
    /// NaN where accuracy does not apply (mse).
    pub accuracy: f64,
    pub samples: usize,
    pub elements: usize,
    pub seconds: f64,
}

/// One checkpoint's sums over a pass, before the division: what a data shard stores and
/// `probe merge` adds up (`correct` is NaN where accuracy does not apply).
#[derive(Debug, Clone, Copy)]
pub struct EvalSums {
    pub loss: f64,
    pub correct: f64,
    pub samples: usize,
    pub elements: usize,
    pub seconds: f64,
}

impl crate::measure::resume::Saved for EvalSums {
    fn save(&self, w: &mut crate::measure::resume::Writer) {
        w.f64(self.loss);
        w.f64(self.correct);
        w.u64(self.samples as u64);
        w.u64(self.elements as u64);
        w.f64(self.seconds);
    }
    fn restore(r: &mut crate::measure::resume::Reader) -> Result<EvalSums> {
        Ok(EvalSums {
            loss: r.f64()?,
            correct: r.f64()?,
            samples: r.usize()?,
            elements: r.usize()?,
            seconds: r.f64()?,
        })
    }
}

impl EvalSums {
    /// Adds the next data shard's sums.
    pub fn add(&mut self, next: &EvalSums) {
        self.loss += next.loss;
        self.correct += next.correct;
        self.samples += next.samples;
        self.elements += next.elements;
        self.seconds += next.seconds;
    }

    pub fn mean(&self) -> EvalResult {
        EvalResult {
            loss: self.loss / self.elements as f64,
            accuracy: self.correct / self.elements as f64,
            samples: self.samples,
            elements: self.elements,
            seconds: self.seconds,
        }
    }
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
    let r = evaluate_many(session, graph, &[ckpt], data, batch, fit, progress, None)?;
    Ok(r[0].mean())
}

/// One pass over the data for several checkpoints: each batch is read (and decoded) once and
/// run with every checkpoint's weights in turn. Each checkpoint sees the same batches in the
/// same order as a pass of its own, so its result is identical to [`evaluate`]; `seconds` is
/// the pass's time divided among the checkpoints. With `resume`, the pass starts where a saved
/// state of the same pass stood and saves its own as it goes ([`crate::measure::resume`]).
/// Returns the sums ([`EvalSums::mean`]).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_many(
    session: &mut Session,
    graph: &EvalGraph,
    ckpts: &[&Checkpoint],
    data: &mut dyn Dataset,
    batch: usize,
    fit: &Fit,
    progress: &mut Progress,
    mut resume: Option<&mut crate::measure::resume::Resume>,
) -> Result<Vec<EvalSums>> {
    let t0 = std::time::Instant::now();
    for c in ckpts {
        // Checked before the first batch; read in place at each.
        state_values(&graph.inputs.state, c)?;
    }
    let spec = data.spec().clone();
    let fresh = EvalSums {
        loss: 0.0,
        correct: 0.0,
        samples: spec.len,
        elements: 0,
        seconds: 0.0,
    };
    let mut sums = vec![fresh; ckpts.len()];
    let (first, before) = match resume.as_deref() {
        Some(r) => r.start(
            &mut sums,
            |s| s.iter().all(|x| x.samples == spec.len),
            progress,
            spec.len,
        ),
        None => (0, 0.0),
    };
    for (bi, (start, count)) in batches(spec.len, batch).enumerate().skip(first) {
        let b = data.read(start, count)?;
        targets_in_range(&b, fit.classes, &spec.identity)?;
        for (ckpt, sum) in ckpts.iter().zip(sums.iter_mut()) {
            let inputs = feed(&graph.inputs, &b, state_values(&graph.inputs.state, ckpt)?)?;
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
            sum.loss += s;
            sum.elements += l.len();
            if let Some(c) = &graph.correct {
                sum.correct += out[c.as_str()]
                    .try_extract_array::<f32>()?
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
        }
        progress.inc(count as u64);
        if let Some(r) = resume.as_deref_mut() {
            let at = crate::measure::resume::Progress {
                next_batch: bi + 1,
                samples_done: start + count,
                seconds: before + t0.elapsed().as_secs_f64(),
            };
            r.tick(at, &sums);
        }
    }
    let seconds = (before + t0.elapsed().as_secs_f64()) / ckpts.len().max(1) as f64;
    for s in sums.iter_mut() {
        s.seconds = seconds;
        if graph.correct.is_none() {
            s.correct = f64::NAN;
        }
    }
    Ok(sums)
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
pub fn run(plan: &Pass, mut on_row: impl FnMut(&EvalRow)) -> Result<Vec<EvalRow>> {
    use crate::store::{Cell, Store};
    let setup = setup::setup(plan)?;
    let info = setup.run_info("eval", plan, Default::default());
    let run_key = info.clone();
    let Setup {
        model,
        mut data,
        spec,
        fit,
        checkpoints: ckpts,
        data_shard,
    } = setup;
    let graph = crate::autodiff::eval_graph(&model, plan.loss, fit.target_rank)?;
    let bytes = protobuf::Message::write_to_bytes(&graph.proto)?;
    let mut session = crate::runtime::session(&bytes, plan.threads, "evaluation")?;
    let mut store = Store::open(&plan.out, &info, plan.force)?;
    let done = store.done();
    let mut rows = Vec::new();
    let result = (|| -> Result<()> {
        let todo: Vec<&Checkpoint> = ckpts
            .iter()
            .enumerate()
            .filter(|&(k, c)| setup::mine(plan, k) && setup::pending(c, &done, plan))
            .map(|(_, c)| c)
            .collect();
        let numel: u64 = graph
            .inputs
            .state
            .iter()
            .filter_map(|n| ckpts.first()?.tensors.get(n))
            .map(|t| t.numel() as u64)
            .sum();
        let group = plan
            .ckpts_per_pass
            .unwrap_or_else(|| setup::group_size(numel * 4))
            .max(1);
        crate::progress::plan("eval", (todo.len() * spec.len) as u64, todo.len());
        crate::log::event(
            "start",
            serde_json::json!({"command": "eval", "out": plan.out, "checkpoints": todo.len(),
                "samples": spec.len, "rows_before": store.rows()}),
        );
        let mut started = 0;
        for chunk in todo.chunks(group) {
            let label = setup::group_label(chunk[0], chunk.len());
            crate::progress::at_checkpoint(started + 1, chunk.len());
            started += chunk.len();
            let mut progress = Progress::of_phase("eval", &label, spec.len as u64, plan.quiet)
                .weighted(chunk.len() as u64);
            let mut resume = setup::resume(plan, &run_key, chunk);
            let results = evaluate_many(
                &mut session,
                &graph,
                chunk,
                data.as_mut(),
                plan.batch,
                &fit,
                &mut progress,
                Some(&mut resume),
            )?;
            progress.finish();
            for (c, sums) in chunk.iter().zip(results) {
                let path = c.path.display().to_string();
                let r = sums.mean();
                // A data shard stores its sums (`probe merge` divides), a full pass its means.
                let (loss, accuracy) = match data_shard {
                    Some(_) => (
                        ("partial/loss_sum", sums.loss),
                        ("partial/correct_sum", sums.correct),
                    ),
                    None => (("loss", r.loss), ("accuracy", r.accuracy)),
                };
                store.append(&vec![
                    (loss.0.into(), Cell::F64(loss.1)),
                    (accuracy.0.into(), Cell::F64(accuracy.1)),
                    ("samples".into(), Cell::I64(r.samples as i64)),
                    ("elements".into(), Cell::I64(r.elements as i64)),
                    ("seconds".into(), Cell::F64(r.seconds)),
                    ("checkpoints/path".into(), Cell::Str(path.clone())),
                    ("checkpoints/step".into(), Cell::I64(c.step)),
                    ("checkpoints/sha256".into(), Cell::Str(c.sha256.clone())),
                ])?;
                crate::log::event(
                    "row",
                    serde_json::json!({"checkpoint": path, "step": c.step, "loss": r.loss,
                        "accuracy": r.accuracy, "samples": r.samples, "seconds": r.seconds,
                        "rows": store.rows()}),
                );
                let row = EvalRow {
                    path,
                    step: c.step,
                    result: r,
                };
                on_row(&row);
                rows.push(row);
            }
            resume.done();
        }
        Ok(())
    })();
    let rows_in_file = store.rows();
    store.finish(result.is_ok())?;
    crate::log::event(
        "finish",
        serde_json::json!({"out": plan.out, "rows_written": rows.len(), "rows": rows_in_file,
            "complete": result.is_ok()}),
    );
    result.map(|_| rows)
}
