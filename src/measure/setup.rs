//! What every measurement starts from: the model, the data fitted to it and the checkpoints,
//! read and checked before the first batch; which checkpoints a results file still needs; and
//! the run's identity as the results file records it.
use crate::autodiff::LossKind;
use crate::data::{Dataset, Spec};
use crate::model::{Checkpoint, CheckpointOptions, Model};
use crate::store::RunInfo;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What every measurement starts from, all checked before the first batch runs: the model, the
/// data (fitted to the model's input), and every checkpoint read and matched against the model
/// (the model's own initializers when none is given).
pub struct Setup {
    pub model: Model,
    pub data: Box<dyn Dataset>,
    pub spec: Spec,
    pub fit: super::check::Fit,
    pub checkpoints: Vec<Checkpoint>,
}

pub fn setup(
    model: &Path,
    checkpoints: &[PathBuf],
    data: &str,
    limit: Option<usize>,
    loss: LossKind,
    names: &CheckpointOptions,
    quiet: bool,
) -> Result<Setup> {
    let model = Model::load(model)?;
    let hint = crate::data::Hint {
        x_shape: model.data_input()?.sample_shape(),
    };
    let mut data = crate::data::open(data, &hint)?;
    if let Some(l) = limit {
        data = Box::new(crate::data::Limited::new(data, l));
    }
    let spec = data.spec().clone();
    let fit = super::check::data_fits_model(&model, &spec, loss)?;
    // The --ckpt paths as a set: expanded, optimizer state skipped, read, deduped, in step order.
    let (checkpoints, notes) = if checkpoints.is_empty() {
        (vec![Checkpoint::from_model(&model)?], vec![])
    } else {
        let set = crate::model::checkpoint_set::load_with(checkpoints, &model, names)?;
        (set.checkpoints, set.notes)
    };
    if !quiet {
        for n in &notes {
            eprintln!("note: {n}");
        }
        for c in &checkpoints {
            for n in &c.notes {
                eprintln!("note: {}: {n}", c.path.display());
            }
        }
    }
    Ok(Setup {
        model,
        data,
        spec,
        fit,
        checkpoints,
    })
}

/// Whether checkpoint `c` still has to be measured into `out` (its path and hash are not among
/// the rows `done` there); says `skip:` on stderr when not.
pub fn pending(
    c: &Checkpoint,
    done: &std::collections::HashSet<(String, String)>,
    out: &Path,
    quiet: bool,
) -> bool {
    let path = c.path.display().to_string();
    if done.contains(&(path.clone(), c.sha256.clone())) {
        if !quiet {
            eprintln!("skip: {path} is already complete in {}", out.display());
        }
        return false;
    }
    true
}

/// A checkpoint's progress-bar label: its file name.
pub fn label(c: &Checkpoint) -> String {
    c.path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

impl Setup {
    /// The results file's identity for this run (see `docs/schema.md`): the command, the model
    /// (path as given, and hash), the data, the batch size, the loss, and `extra` attributes.
    pub fn run_info(
        &self,
        command: &str,
        command_line: &str,
        model_path: &Path,
        batch: usize,
        loss: LossKind,
        extra: BTreeMap<String, String>,
    ) -> RunInfo {
        RunInfo {
            command: command.into(),
            command_line: command_line.to_string(),
            model_path: model_path.display().to_string(),
            model_sha256: self.model.sha256.clone(),
            data: self.spec.identity.clone(),
            data_samples: self.spec.len as i64,
            batch_size: batch as i64,
            loss: loss.name().into(),
            extra,
        }
    }
}
