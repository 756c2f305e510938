//! `probe train`: trains an ONNX model with libtorch and writes the checkpoints `probe eval` and
//! `probe grad` read.
//!
//! The model's graph is run by the interpreter ([`crate::runtime::torch`]) in training mode (BatchNorm
//! with batch statistics, running statistics updated as PyTorch does); the loss is the mean over
//! the batch's target elements (cross-entropy from logits, like `F.cross_entropy`, or `--loss
//! mse`); libtorch autograd gives the gradients and [`super::optim`] takes PyTorch's step. Step `s`
//! (1-based) sees the samples [`super::sampler`] assigns it and uses the learning rate the
//! schedule gives after `s - 1` scheduler steps.
//!
//! Files (see [`super::files`]): `DIR/step-<8 digits>.safetensors` at step 0 (the initial weights),
//! every `--ckpt-every N` steps, at the end of every epoch with `--ckpt-every-epoch`, and always
//! at the last step; the optimizer state of each as `DIR/optim/step-<8 digits>.safetensors`; the
//! training log `DIR/train.h5`.
//!
//! Checkpoint metadata (all strings): `format` (`probe-train-1`), `step`, `epoch` (epochs of data
//! seen, fractional within an epoch), `lr` (the learning rate of the step that produced it; at step
//! 0, the first step's), `optimizer` (e.g. `sgd lr=0.05 momentum=0.9 weight_decay=0.0005`),
//! `schedule`, `total_steps`, `seed`, `shuffle`, `augment`, `loss`, `batch`, `data`,
//! `data_samples`, `model`, `model_sha256`, `probe_version`.
//!
//! The training log (`train.h5`) is a results file of the store ([`crate::store`], `command` =
//! `train`) with one row per step: `/step` i64, `/epoch` f64 (epochs seen after the step), `/loss`
//! f64 (the minibatch's mean loss, before the step), `/lr` f64, `/samples` i64 (the batch's
//! size), `/seconds` f64 (wall time of the step). Rows are committed at each checkpoint (and at
//! least every 10 s, and when the run stops), before the checkpoint's files; resuming cuts the log
//! back to the checkpoint's step and redoes the rest.
//!
//! `--device cuda` trains with libtorch's defaults, which are PyTorch's: cuDNN convolutions may use
//! TF32, so a GPU run differs from a CPU run by much more than float32 rounding (ResNet, 5 SGD
//! steps on an H200: 3.6e-2 relative on the worst BatchNorm bias, PyTorch's own GPU-vs-CPU 4.4e-2;
//! probe against PyTorch on the same GPU 1.4e-2, and 2.9e-3 with `NVIDIA_TF32_OVERRIDE=0` for
//! both). On the CPU, probe equals PyTorch to 3.2e-7 on the same run.
//!
//! `--resume` continues from the newest checkpoint and its optimizer state: the batches,
//! augmentation and libtorch's generator (seeded per step) depend only on (seed, epoch, step), so
//! the continued run computes what an uninterrupted one would, bit for bit on the same machine
//! and thread count. The run's settings must match the checkpoint's (only --steps/--epochs,
//! checkpoint frequency, threads and device may change); with the cosine schedule a different
//! total length changes the schedule from there on, which is allowed with a note.
use super::files::{self, LOG_NAME};
use super::optim::{OptConfig, Optimizer, Schedule};
use super::sampler::{InMemory, Sampler};
use crate::autodiff::LossKind;
use crate::data::check;
use crate::model::{Checkpoint, Model};
use crate::progress::Progress;
use crate::runtime::torch::{Interpreter, Mode, State};
use crate::store::{Cell, RunInfo, Store};
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

/// The format tag of probe's training checkpoints.
pub const FORMAT: &str = "probe-train-1";

/// How long the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    Steps(u64),
    Epochs(u64),
}

#[derive(Debug, Clone)]
pub struct TrainPlan {
    pub model: PathBuf,
    pub data: String,
    /// `--samples A:B`, applied before `limit`.
    pub samples: Option<(usize, usize)>,
    /// `--mean/--std`.
    pub normalize: Option<crate::data::Normalize>,
    pub limit: Option<usize>,
    pub out: PathBuf,
    pub length: Length,
    pub batch: usize,
    pub opt: OptConfig,
    pub schedule: Schedule,
    pub seed: u64,
    pub shuffle: bool,
    pub augment: bool,
    pub ckpt_every: Option<u64>,
    pub ckpt_every_epoch: bool,
    pub loss: LossKind,
    pub threads: usize,
    pub device: Device,
    pub resume: bool,
    pub force: bool,
    pub quiet: bool,
    pub command_line: String,
}

/// What a checkpoint line reports.
#[derive(Debug, Clone)]
pub struct CkptRow {
    pub step: u64,
    pub epoch: f64,
    /// Mean minibatch loss over the steps since the previous checkpoint (NaN at step 0).
    pub loss: f64,
    pub lr: f64,
    /// Wall time since the previous checkpoint.
    pub seconds: f64,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub first_step: u64,
    pub last_step: u64,
    /// Wall time of the steps run (without loading and the step-0 checkpoint).
    pub seconds: f64,
    pub last_checkpoint: Option<PathBuf>,
}

impl TrainSummary {
    pub fn steps(&self) -> u64 {
        self.last_step - self.first_step.min(self.last_step)
    }
}

/// The settings that make two pieces of a run the same run (checked on `--resume`).
fn identity(plan: &TrainPlan, model: &Model, data: &crate::data::Spec) -> BTreeMap<String, String> {
    [
        ("format", FORMAT.to_string()),
        ("model_sha256", model.sha256.clone()),
        ("data", data.identity.clone()),
        ("data_samples", data.len.to_string()),
        ("batch", plan.batch.to_string()),
        ("optimizer", plan.opt.describe()),
        ("schedule", plan.schedule.describe()),
        ("seed", plan.seed.to_string()),
        ("shuffle", plan.shuffle.to_string()),
        ("augment", plan.augment.to_string()),
        ("loss", plan.loss.name().to_string()),
    ]
    .into_iter()
    .chain(
        plan.samples
            .map(|(a, b)| ("data_range", format!("{a}:{b}"))),
    )
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The mean loss over the batch's target elements.
pub fn loss_of(out: &Tensor, y: &Tensor, kind: LossKind) -> Result<Tensor> {
    Ok(match kind {
        LossKind::CrossEntropy => {
            let c = *out
                .size()
                .last()
                .ok_or_else(|| anyhow!("the model's output is a scalar"))?;
            out.f_reshape([-1, c])?.f_cross_entropy_loss::<Tensor>(
                &y.f_reshape([-1])?,
                None,
                tch::Reduction::Mean,
                -100,
                0.0,
            )?
        }
        LossKind::Mse => out
            .f_reshape(y.size())?
            .f_mse_loss(y, tch::Reduction::Mean)?,
    })
}

/// libtorch's generator seed for step `step` (dropout in training mode draws from it).
fn torch_seed(seed: u64, step: u64) -> i64 {
    (crate::data::rng::Rng::keyed(seed, 0x544f_5243_4853_4545, step, 0).next_u64() >> 1) as i64
}

/// The state tensors a checkpoint holds (every parameter and buffer of the model).
fn checkpoint_tensors<'a>(model: &Model, state: &'a State) -> Result<Vec<(&'a str, &'a Tensor)>> {
    let mut out = Vec::new();
    for p in model.state() {
        let (name, t) = state
            .tensors
            .get_key_value(&p.name)
            .ok_or_else(|| anyhow!("the interpreter's state has no tensor '{}'", p.name))?;
        out.push((name.as_str(), t));
    }
    Ok(out)
}

struct Writer<'a> {
    plan: &'a TrainPlan,
    model: &'a Model,
    identity: BTreeMap<String, String>,
    total: u64,
    log: Store,
    /// Rows not yet committed to the log.
    pending: Vec<crate::store::Row>,
    last_commit: Instant,
}

impl Writer<'_> {
    fn commit_log(&mut self) -> Result<()> {
        // One commit for all of them: each commit costs two fsyncs.
        self.log.append_all(&self.pending)?;
        self.pending.clear();
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Log rows, then the optimizer state, then the weights (each written whole, then renamed).
    fn checkpoint(
        &mut self,
        step: u64,
        epoch: f64,
        lr: f64,
        state: &State,
        opt: &Optimizer,
    ) -> Result<PathBuf> {
        self.commit_log()?;
        let dir = &self.plan.out;
        let mut meta = self.identity.clone();
        meta.insert("step".into(), step.to_string());
        meta.insert("epoch".into(), epoch.to_string());
        meta.insert("lr".into(), lr.to_string());
        meta.insert("total_steps".into(), self.total.to_string());
        meta.insert("model".into(), self.plan.model.display().to_string());
        meta.insert("probe_version".into(), env!("CARGO_PKG_VERSION").into());
        opt.save(&files::optim_path(dir, step), &meta)?;
        let path = files::weights_path(dir, step);
        let bytes = files::safetensors_bytes(checkpoint_tensors(self.model, state)?, &meta)?;
        files::write_atomic(&path, &bytes)?;
        Ok(path)
    }
}

/// Makes the run folder ready: a fresh run needs it free of another run's files (`--force`
/// removes them); `--resume` continues from the newest checkpoint in it, returned as (step, path).
fn claim_folder(plan: &TrainPlan, note: &dyn Fn(String)) -> Result<Option<(u64, PathBuf)>> {
    let dir = &plan.out;
    std::fs::create_dir_all(dir)
        .map_err(|e| crate::error::output(format!("{}: {e}", dir.display())))?;
    files::remove_stale_temporaries(dir);
    let existing = files::list_checkpoints(dir)?;
    let others = files::run_files(dir)?;
    if !plan.resume && !others.is_empty() {
        if !plan.force {
            return Err(crate::error::input(format!(
                "{}: holds another run's files ({}{}); use --resume to continue it, --force to replace it, or another --out",
                dir.display(),
                others
                    .iter()
                    .take(3)
                    .map(|p| p.file_name().unwrap_or_default().to_string_lossy().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if others.len() > 3 {
                    format!(" and {} more", others.len() - 3)
                } else {
                    String::new()
                }
            )));
        }
        note(format!(
            "--force: removing {} file(s) of the previous run in {}",
            others.len(),
            dir.display()
        ));
        for p in &others {
            std::fs::remove_file(p)
                .map_err(|e| crate::error::output(format!("{}: {e}", p.display())))?;
        }
    }
    let resume_from = if plan.resume {
        existing.last().cloned()
    } else {
        None
    };
    if plan.resume && resume_from.is_none() {
        note(format!(
            "--resume: no checkpoint in {} yet; starting from step 0",
            dir.display()
        ));
    }
    // The folder is this run's now: one that goes on (--resume with more steps) is not done.
    let _ = std::fs::remove_file(dir.join(crate::measure::follow::DONE_MARKER));
    Ok(resume_from)
}

/// The state and optimizer state of checkpoint `at` (step, path), which must come from a run with
/// the same settings (`identity`).
fn restore(
    plan: &TrainPlan,
    model: &Model,
    identity: &BTreeMap<String, String>,
    total: u64,
    at: (u64, &Path),
    trainable: &BTreeMap<String, Vec<usize>>,
    note: &dyn Fn(String),
) -> Result<(State, Optimizer)> {
    let (step, path) = at;
    let ckpt = Checkpoint::load(path, model)?;
    let mut diffs = Vec::new();
    for (k, v) in identity {
        let have = ckpt.metadata.get(k).cloned().unwrap_or_default();
        if have != *v {
            diffs.push(format!("{k} '{have}' there, '{v}' here"));
        }
    }
    if !diffs.is_empty() {
        return Err(crate::error::input(format!(
            "--resume: {} was written by a run with other settings ({}); resume with the same flags, or start a new run in another --out",
            path.display(),
            diffs.join("; ")
        )));
    }
    if plan.schedule == Schedule::Cosine
        && ckpt.metadata.get("total_steps") != Some(&total.to_string())
    {
        note(format!(
            "note: the cosine schedule now spans {total} steps (the checkpoint's run planned {}); the learning rate differs from there on",
            ckpt.metadata.get("total_steps").cloned().unwrap_or_default()
        ));
    }
    let Some(opath) = files::find_optim(&plan.out, step) else {
        return Err(crate::error::input(format!(
            "--resume: {} has no optimizer state ({} is missing)",
            path.display(),
            files::optim_path(&plan.out, step).display()
        )));
    };
    let opt = Optimizer::load(&opath, plan.opt.clone(), trainable, plan.device)?;
    let state = State::from_checkpoint(model, &ckpt, plan.device)?;
    note(format!("resuming from {} (step {step})", path.display()));
    Ok((state, opt))
}

/// Runs a training plan; `on_ckpt` sees each checkpoint as it is written.
pub fn run(plan: &TrainPlan, mut on_ckpt: impl FnMut(&CkptRow)) -> Result<TrainSummary> {
    let note = |s: String| {
        if !plan.quiet {
            eprintln!("{s}");
        }
    };
    if plan.device.is_cuda() && !tch::Cuda::is_available() {
        return Err(crate::error::input(
            "--device cuda: libtorch sees no GPU (a CUDA build of libtorch, a driver, and a probe \
             built with PROBE_TORCH_CUDA=1 are needed)",
        ));
    }
    crate::data::preflight(&plan.data);
    let model = Model::load(&plan.model)?;
    // A data file is named by its full path, so a resumed run started from another folder
    // matches its checkpoints.
    let data_name = match std::fs::canonicalize(&plan.data) {
        Ok(p) if p.is_file() => p.display().to_string(),
        _ => plan.data.clone(),
    };
    if model.trainable().next().is_none() {
        return Err(crate::error::input(format!(
            "{}: the model has no trainable parameters (no floating-point initializer is a parameter), so there is nothing to train",
            plan.model.display()
        )));
    }
    let input = model.data_input()?;
    let hint = crate::data::Hint {
        x_shape: input.sample_shape(),
        normalize: plan.normalize.clone(),
    };
    let mut data = crate::data::open_restricted(&data_name, &hint, plan.samples, plan.limit)?;
    let spec = data.spec().clone();
    let fit = check::data_fits_model(&model, &spec, plan.loss.targets())?;
    let mem = InMemory::load(data.as_mut(), plan.device, |b| {
        check::targets_in_range(b, fit.classes, &spec.identity)
    })?;
    drop(data);
    if plan.augment {
        mem.check_augment()?;
    }
    let mut sampler = Sampler::new(spec.len, plan.batch, plan.shuffle, plan.augment, plan.seed);
    let per_epoch = sampler.steps_per_epoch();
    let total = match plan.length {
        Length::Steps(s) => s,
        Length::Epochs(e) => e * per_epoch,
    };
    let identity = identity(plan, &model, &spec);
    tch::set_num_threads(plan.threads as i32);

    let dir = &plan.out;
    let resume_from = claim_folder(plan, &note)?;

    let interp = Interpreter::new(&model, plan.device)?;
    let trainable: BTreeMap<String, Vec<usize>> = model
        .trainable()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let (start, state, mut opt) = match &resume_from {
        None => {
            let ckpt = Checkpoint::from_model(&model)?;
            let state = State::from_checkpoint(&model, &ckpt, plan.device)?;
            (0u64, state, Optimizer::new(plan.opt.clone()))
        }
        Some((step, path)) => {
            let (state, opt) = restore(
                plan,
                &model,
                &identity,
                total,
                (*step, path),
                &trainable,
                &note,
            )?;
            (*step, state, opt)
        }
    };
    let params: Vec<(String, Tensor)> = trainable
        .keys()
        .map(|n| {
            state
                .tensors
                .get(n)
                .map(|t| (n.clone(), t.shallow_clone()))
                .ok_or_else(|| anyhow!("the interpreter's state has no parameter '{n}'"))
        })
        .collect::<Result<_>>()?;
    let named: Vec<(&str, &Tensor)> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();

    let extra = [
        ("optimizer", plan.opt.describe()),
        ("schedule", plan.schedule.describe()),
        ("seed", plan.seed.to_string()),
        ("shuffle", plan.shuffle.to_string()),
        ("augment", plan.augment.to_string()),
    ]
    .into_iter()
    .chain(
        plan.samples
            .map(|(a, b)| ("data_range", format!("{a}:{b}"))),
    )
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let info = RunInfo::new(
        "train",
        &plan.command_line,
        &model,
        &spec,
        plan.batch,
        plan.loss.name(),
        extra,
    );
    let mut log = Store::open(&dir.join(LOG_NAME), &info, false)?;
    log.truncate(start as usize)?;
    let mut w = Writer {
        plan,
        model: &model,
        identity,
        total,
        log,
        pending: Vec::new(),
        last_commit: Instant::now(),
    };

    let lr_at = |step: u64| plan.schedule.lr(plan.opt.lr, step - 1, total);
    let mut last_checkpoint = resume_from.as_ref().map(|(_, p)| p.clone());
    if resume_from.is_none() {
        let p = w.checkpoint(0, 0.0, lr_at(1), &state, &opt)?;
        on_ckpt(&CkptRow {
            step: 0,
            epoch: 0.0,
            loss: f64::NAN,
            lr: lr_at(1),
            seconds: 0.0,
            path: p.clone(),
        });
        last_checkpoint = Some(p);
    }
    if start >= total {
        note(format!(
            "{}: already at step {start} of {total}; nothing to do",
            dir.display()
        ));
        w.log.finish(true)?;
        return Ok(TrainSummary {
            first_step: start,
            last_step: start,
            seconds: 0.0,
            last_checkpoint,
        });
    }

    let samples: u64 = (start + 1..=total)
        .map(|s| {
            let b = ((s - 1) % per_epoch) as usize;
            (spec.len - b * plan.batch).min(plan.batch) as u64
        })
        .sum();
    // An export in eval mode (model.eval(), the default for inference) drops Dropout nodes:
    // training that graph trains without dropout, silently. Say so when there is none.
    // Said here, once everything is checked: a refused run prints its one error line only.
    let has_dropout = model.graph().node.iter().any(|n| n.op_type == "Dropout");
    if !has_dropout {
        note(format!(
            "note: {} has no Dropout node: probe trains it without dropout. If the PyTorch model \
             has dropout, export it in training mode (model.train() before torch.onnx.export) to train with it",
            plan.model.display()
        ));
    }
    crate::progress::plan("train", samples, 0);
    let mut progress = Progress::of_phase("train", "train", samples, plan.quiet);
    let t_run = Instant::now();
    let mut t_ckpt = Instant::now();
    let (mut loss_sum, mut loss_n) = (0f64, 0u64);
    let result = (|| -> Result<()> {
        for step in start + 1..=total {
            let t0 = Instant::now();
            let (x, y) = mem.batch(&mut sampler, step)?;
            let count = x.size()[0] as usize;
            let lr = lr_at(step);
            tch::manual_seed(torch_seed(plan.seed, step));
            for (_, p) in &params {
                let mut p = p.shallow_clone();
                p.zero_grad();
            }
            let out = interp.forward(&state, &x, Mode::Train)?;
            let loss = loss_of(&out, &y, plan.loss)?;
            let l = loss.f_double_value(&[])?;
            let epoch = sampler.epochs_done(step);
            if !l.is_finite() {
                w.commit_log()?;
                return Err(crate::error::non_finite(format!(
                    "non-finite loss ({l}) at step {step} (epoch {}, samples of {}); stopped; the last good checkpoint is {}",
                    sampler.epoch_of(step) + 1,
                    spec.identity,
                    last_checkpoint
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "none".into())
                )));
            }
            loss.f_backward()?;
            opt.step(&named, lr)?;
            loss_sum += l;
            loss_n += 1;
            w.pending.push(vec![
                ("step".into(), Cell::I64(step as i64)),
                ("epoch".into(), Cell::F64(epoch)),
                ("loss".into(), Cell::F64(l)),
                ("lr".into(), Cell::F64(lr)),
                ("samples".into(), Cell::I64(count as i64)),
                ("seconds".into(), Cell::F64(t0.elapsed().as_secs_f64())),
            ]);
            progress.inc(count as u64);
            let due = step == total
                || plan.ckpt_every.is_some_and(|n| step % n == 0)
                || (plan.ckpt_every_epoch && step % per_epoch == 0);
            if due {
                let p = w.checkpoint(step, epoch, lr, &state, &opt)?;
                on_ckpt(&CkptRow {
                    step,
                    epoch,
                    loss: loss_sum / loss_n.max(1) as f64,
                    lr,
                    seconds: t_ckpt.elapsed().as_secs_f64(),
                    path: p.clone(),
                });
                last_checkpoint = Some(p);
                t_ckpt = Instant::now();
                (loss_sum, loss_n) = (0.0, 0);
            } else if w.last_commit.elapsed().as_secs() >= 10 {
                w.commit_log()?;
            }
        }
        Ok(())
    })();
    progress.finish();
    let seconds = t_run.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            w.log.finish(true)?;
            // For followers (`probe grad --follow`): every checkpoint of the run is written.
            files::write_atomic(
                &dir.join(crate::measure::follow::DONE_MARKER),
                format!("probe train finished at step {total}\n").as_bytes(),
            )?;
            Ok(TrainSummary {
                first_step: start,
                last_step: total,
                seconds,
                last_checkpoint,
            })
        }
        Err(e) => {
            let _ = w.commit_log();
            let _ = w.log.finish(false);
            Err(e)
        }
    }
}
