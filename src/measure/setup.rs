//! What every measurement starts from: what a pass over checkpoints is asked, the model, the
//! data fitted to it and the checkpoints, read and checked before the first batch; and which
//! checkpoints a results file still needs.
use crate::autodiff::LossKind;
use crate::data::{Dataset, Spec};
use crate::model::{Checkpoint, CheckpointOptions, Model};
use crate::store::RunInfo;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What a pass over checkpoints (`probe eval`, `probe grad`) is asked, whatever it measures.
#[derive(Clone)]
pub struct Pass {
    pub model: PathBuf,
    /// Empty: the model's own initializers.
    pub checkpoints: Vec<PathBuf>,
    /// How the checkpoints' tensor names map to the model's (`--strip-prefix`).
    pub ckpt_names: CheckpointOptions,
    pub data: String,
    /// `--samples A:B`: samples A..B, applied before `limit`.
    pub samples: Option<(usize, usize)>,
    /// `--shard i/n`: every n-th checkpoint (in step order) from the i-th; (0, 1) for all.
    pub shard: (usize, usize),
    /// `--data-shard i/n`: shard i of n of the (`--samples`/`--limit`-restricted) data set,
    /// whose rows then hold the raw f64 sums `probe merge` combines ([`DataShard`]).
    pub data_shard: Option<(usize, usize)>,
    /// `--mean/--std`.
    pub normalize: Option<crate::data::Normalize>,
    pub limit: Option<usize>,
    pub batch: usize,
    /// `--ckpts-per-pass`: checkpoints measured together in one pass over the data (None: as
    /// many as fit the memory budget of the measurement).
    pub ckpts_per_pass: Option<usize>,
    pub loss: LossKind,
    pub threads: usize,
    pub out: PathBuf,
    /// `--save-every`: how often a pass's partial sums are saved beside `out` to resume inside
    /// it ([`super::resume`]); None: never.
    pub save_every: Option<std::time::Duration>,
    pub force: bool,
    pub quiet: bool,
    pub command_line: String,
    /// PyTorch conventions set on the command line (`--clip-grad`, `--padding-idx`), written
    /// into the model before anything reads it.
    pub conventions: crate::ops::conventions::Conventions,
}

/// What every measurement starts from, all checked before the first batch runs: the model, the
/// data (fitted to the model's input), and every checkpoint read and matched against the model
/// (the model's own initializers when none is given).
pub struct Setup {
    pub model: Model,
    pub data: Box<dyn Dataset>,
    pub spec: Spec,
    pub fit: super::check::Fit,
    pub checkpoints: Vec<Checkpoint>,
    /// With `--data-shard`: which part of the data `data` and `spec` are.
    pub data_shard: Option<DataShard>,
}

/// One data shard (`--data-shard i/n`): samples `start..end` of the data set `full`, whole
/// batches of the pass over `full`, so that its batches are exactly that pass's batches there.
#[derive(Debug, Clone)]
pub struct DataShard {
    pub index: usize,
    pub count: usize,
    pub start: usize,
    pub end: usize,
    pub full: Spec,
}

/// Samples `start..end` of shard `i` of `n` over `len` samples in batches of `batch`: the
/// ceil(len/batch) batches split into n contiguous runs whose lengths differ by at most one
/// (shard i takes batches floor(i K/n)..floor((i+1) K/n)). Splitting between batches keeps each
/// batch whole, so each batch's f32 sums, its minibatch noise term and its BatchNorm statistics
/// (`--bn train`) are the ones a single pass computes; `None` when a shard would be empty.
pub fn data_shard_range(len: usize, batch: usize, i: usize, n: usize) -> Option<(usize, usize)> {
    let k = len.div_ceil(batch.max(1));
    let (b0, b1) = (i * k / n, (i + 1) * k / n);
    (b0 < b1).then(|| (b0 * batch, (b1 * batch).min(len)))
}

pub fn setup(pass: &Pass) -> Result<Setup> {
    crate::data::preflight(&pass.data);
    let mut model = Model::load(&pass.model)?;
    if let Some(g) = model.proto.graph.as_mut() {
        crate::ops::conventions::apply(g, &pass.conventions)?;
    }
    let hint = crate::data::Hint {
        x_shape: model.data_input()?.sample_shape(),
        normalize: pass.normalize.clone(),
    };
    let mut data = crate::data::open_restricted(&pass.data, &hint, pass.samples, pass.limit)?;
    let mut data_shard = None;
    if let Some((i, n)) = pass.data_shard {
        let full = data.spec().clone();
        let (start, end) = data_shard_range(full.len, pass.batch, i, n).ok_or_else(|| {
            crate::error::input(format!(
                "--data-shard {i}/{n}: {} has {} samples, {} batches of --batch {}: fewer batches than shards (shards split between batches)",
                full.identity,
                full.len,
                full.len.div_ceil(pass.batch.max(1)),
                pass.batch
            ))
        })?;
        data = Box::new(crate::data::Samples::new(data, start, end)?);
        data_shard = Some(DataShard {
            index: i,
            count: n,
            start,
            end,
            full,
        });
    }
    let spec = data.spec().clone();
    let fit = super::check::data_fits_model(&model, &spec, pass.loss)?;
    // The --ckpt paths as a set: expanded, optimizer state skipped, read, deduped, in step order.
    let (checkpoints, notes) = if pass.checkpoints.is_empty() {
        (vec![Checkpoint::from_model(&model)?], vec![])
    } else {
        let set = crate::model::checkpoint_set::load_shard(
            &pass.checkpoints,
            &model,
            &pass.ckpt_names,
            pass.shard,
        )?;
        (set.checkpoints, set.notes)
    };
    if !pass.quiet {
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
        data_shard,
    })
}

/// Whether checkpoint `k` of the set is this pass's (its `--shard`).
pub fn mine(pass: &Pass, k: usize) -> bool {
    k % pass.shard.1 == pass.shard.0
}

/// Whether checkpoint `c` still has to be measured into the pass's `out` (its path and hash are
/// not among the rows `done` there); says `skip:` on stderr when not.
pub fn pending(
    c: &Checkpoint,
    done: &std::collections::HashSet<(String, String)>,
    pass: &Pass,
) -> bool {
    let path = c.path.display().to_string();
    if done.contains(&(path.clone(), c.sha256.clone())) {
        if !pass.quiet {
            eprintln!("skip: {path} is already complete in {}", pass.out.display());
        }
        return false;
    }
    true
}

/// The saved-sums side of a pass over the group `ckpts` into `pass.out` for the run `info`:
/// keyed by the run and the group's checkpoints (path and hash), so that only the same pass
/// resumes from it.
pub fn resume(
    pass: &Pass,
    info: &RunInfo,
    ckpts: &[&Checkpoint],
) -> crate::measure::resume::Resume {
    let mut key = info.key();
    for c in ckpts {
        key.push_str(&format!(" {}:{}", c.path.display(), c.sha256));
    }
    crate::measure::resume::Resume::new(&pass.out, &key, pass.save_every, pass.quiet)
}

/// A checkpoint's progress-bar label: its file name.
pub fn label(c: &Checkpoint) -> String {
    c.path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The progress label of a group of checkpoints sharing one pass (`--ckpts-per-pass`): the
/// first one's, and how many more.
pub fn group_label(first: &Checkpoint, count: usize) -> String {
    match count {
        0 | 1 => label(first),
        n => format!("{} and {} more", label(first), n - 1),
    }
}

impl Setup {
    /// The results file's identity for `command` making `pass` over this setup, with the
    /// command's own `extra` attributes.
    pub fn run_info(
        &self,
        command: &str,
        pass: &Pass,
        mut extra: BTreeMap<String, String>,
    ) -> RunInfo {
        if pass.shard.1 > 1 {
            // Which checkpoints this file's rows are: `probe merge` checks that all n are given.
            extra.insert(
                "ckpt_shard".into(),
                format!("{}/{}", pass.shard.0, pass.shard.1),
            );
        }
        if let Some((a, b)) = pass.samples {
            // Also in `data` ("...[A:B]"); here as its own attribute for scripts joining shards.
            extra.insert("data_range".into(), format!("{a}:{b}"));
        }
        // A data shard's file names the whole data set (what `probe merge` checks the shards
        // against) and which part of it its rows sum over.
        let spec = match &self.data_shard {
            Some(d) => {
                extra.insert("partial".into(), "true".into());
                extra.insert("data_shard".into(), format!("{}/{}", d.index, d.count));
                extra.insert("data_shard_range".into(), format!("{}:{}", d.start, d.end));
                &d.full
            }
            None => &self.spec,
        };
        RunInfo::new(
            command,
            &pass.command_line,
            &self.model,
            spec,
            pass.batch,
            pass.loss.name(),
            extra,
        )
    }
}

/// How many checkpoints share a pass by default (`--ckpts-per-pass`), each holding `bytes` of
/// its own for the whole pass: as many as fit in 2 GiB or a quarter of the memory still free,
/// at most 8, at least 1.
pub fn group_size(bytes: u64) -> usize {
    let budget = crate::data::memory_limit()
        .map(|m| m / 4)
        .unwrap_or(u64::MAX)
        .min(2 << 30);
    ((budget / bytes.max(1)) as usize).clamp(1, 8)
}
