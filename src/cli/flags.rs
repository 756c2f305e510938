//! What the subcommands share: the flags of a pass over checkpoints (`eval`, `grad`), the loss,
//! BatchNorm and device choices, the value parsers of numeric flags, and the helpers every
//! subcommand's run step uses.
use clap::{Args, ValueEnum};
use probe::measure::setup::Pass;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct Common {
    /// The ONNX model (a `model.onnx.data` external-data file beside it is read too).
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Checkpoints (safetensors keyed by ONNX initializer names), or folders of them; taken in
    /// step order (metadata `step`, else the number in the file name) whatever order they are
    /// given in. Optimizer-state files are skipped with a note; the same file twice is refused.
    /// Without --ckpt the model's own initializers are used.
    #[arg(long, value_name = "C.safetensors", num_args = 1..)]
    pub ckpt: Vec<PathBuf>,
    /// Remove this prefix from the checkpoints' tensor names that start with it (`module.`, as
    /// DistributedDataParallel saves names; `_orig_mod.`, as torch.compile does).
    #[arg(long, value_name = "PREFIX")]
    pub strip_prefix: Option<String>,
    /// The step of each checkpoint from its path: the first capture group of REGEX (else the
    /// whole match), instead of the metadata's `step` or the name (which probe reads as
    /// `step-N`, `stepN`, `iter_N`, `epochE_iterI`, `checkpoint-N/`, ...). E.g. `--step-from
    /// 'ep(\d+)'` for `ep12.safetensors`.
    #[arg(long, value_name = "REGEX", value_parser = regex_pattern)]
    pub step_from: Option<String>,
    /// Data: `fashion-mnist` (train split), `fashion-mnist:test`, `shakespeare[:T]`, an HDF5
    /// file with datasets `x` [N, ...] and `y` [N] or [N, T] (`FILE.h5`, or
    /// `FILE.h5:GROUP:x=KEY,y=KEY` for other names), a token stream
    /// `tokens:FILE[:T][:stride=S][:dtype=uint16|uint32]` (`.bin` as nanoGPT writes it, or
    /// `.npy`), or `imagefolder:DIR` (ImageNet layout, JPEG/PNG, torchvision's Resize(256)
    /// CenterCrop(224) ToTensor Normalize; options after a colon). Examples: `--data
    /// runs/val.h5:val:x=images,y=labels --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225`;
    /// `--data tokens:owt/val.bin:1024:stride=512`;
    /// `--data imagefolder:/data/imagenet/val:resize=288,crop=256`.
    #[arg(long, value_name = "D")]
    pub data: String,
    #[command(flatten)]
    pub prep: DataPrep,
    /// Samples per batch: larger is faster until memory runs out. It does not change the loss,
    /// accuracy or gradient (beyond float32 rounding inside a batch), but it is part of what
    /// `--bn train` computes (batch statistics) and of `--noise`'s minibatch variance (of
    /// batches of this size), and of how `--data-shard` splits.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    pub batch: u64,
    /// Use only the first N samples.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    pub limit: Option<u64>,
    /// Only the checkpoints of shard i of n (in step order, every n-th starting at the i-th;
    /// 0-based), e.g. `--shard 3/8`: one task of a job array. The task reads only its own
    /// checkpoints (and the one before each, and the first, which the distances need).
    #[arg(long, value_name = "i/n", value_parser = parse_shard, allow_hyphen_values = true)]
    pub shard: Option<(usize, usize)>,
    /// Only shard i of n (0-based) of the data set (after --samples and --limit): n contiguous
    /// runs of whole --batch batches, their lengths differing by at most one batch. The rows then
    /// hold raw f64 sums, not means (the file is marked `partial`); `probe merge` adds the n
    /// files into the rows one process writes. E.g. `--data-shard 2/4`.
    #[arg(long, value_name = "i/n", value_parser = parse_shard, allow_hyphen_values = true)]
    pub data_shard: Option<(usize, usize)>,
    /// Loss: cross-entropy from logits on class ids, or mean squared error on real targets.
    #[arg(long, value_enum, default_value_t = Loss::Ce)]
    pub loss: Loss,
    #[command(flatten)]
    pub threads: Threads,
    /// Checkpoints measured together in one pass over the data: each batch is read and decoded
    /// once and every checkpoint of the group computed on it (results identical to one pass
    /// each; worth it where reading the data costs, as with an image folder). Default: as many
    /// as fit in 2 GiB or a quarter of free memory (grad: their f64 gradient sums; eval: their
    /// weights), at most 8. Rows are written when their group's pass ends.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub ckpts_per_pass: Option<u64>,
    /// Follow a training run: measure the checkpoints already in DIR, then each new one as it is
    /// written (only whole files: size and time unchanged for --settle seconds, header and data
    /// complete), appending rows to --out, until --until-step, the trainer's `DIR/DONE` marker
    /// (`probe train` writes it when it ends) or --idle-timeout. Instead of --ckpt.
    #[arg(long, value_name = "DIR", conflicts_with = "ckpt")]
    pub follow: Option<PathBuf>,
    /// With --follow: stop once a checkpoint at this step or later is measured (its step as
    /// the rows take it: --step-from, else the metadata's `step`, else the name).
    #[arg(long, value_name = "N", requires = "follow")]
    pub until_step: Option<i64>,
    /// With --follow: stop after this many seconds without a new checkpoint.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600.0, value_parser = non_negative)]
    pub idle_timeout: f64,
    /// With --follow: how long a file's size and time must stay unchanged before it is read.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = non_negative)]
    pub settle: f64,
    /// Results file (HDF5); appended to if it holds earlier rows of the same run.
    #[arg(short, long, value_name = "R.h5")]
    pub out: PathBuf,
    /// Save the running pass's partial sums beside --out (`R.h5.pass`) every SECONDS (`never`:
    /// not at all), so that a job killed inside a long pass (a time limit) goes on from the last
    /// save when rerun with the same command, with the same result to the bit. Saves are spaced
    /// to at least 20 times the last save's duration (at most ~5% of the pass), except with 0,
    /// which saves after every batch whatever it costs (for tests: each save is synced to disk).
    #[arg(long, value_name = "SECONDS", default_value = "300", value_parser = probe::measure::resume::parse_every)]
    pub save_every: probe::measure::resume::Every,
    /// Replace --out if it holds results of another run.
    #[arg(long)]
    pub force: bool,
}

impl Common {
    /// `--follow`'s options (None without it).
    pub fn follow_options(
        &self,
        quiet: bool,
    ) -> anyhow::Result<Option<probe::measure::follow::FollowOptions>> {
        let secs = |s: f64| std::time::Duration::from_secs_f64(s.min(1e9));
        if self.follow.is_some() && self.shard.is_some_and(|s| s.1 > 1) {
            return Err(Conflict(
                "--follow takes every checkpoint as it comes; split a follower's work with --data-shard, not --shard",
            )
            .into());
        }
        Ok(self
            .follow
            .as_ref()
            .map(|d| probe::measure::follow::FollowOptions {
                dir: d.clone(),
                until_step: self.until_step,
                idle_timeout: secs(self.idle_timeout),
                settle: secs(self.settle),
                poll: std::time::Duration::from_millis(500).min(secs(self.settle).max(secs(0.05))),
                note_every: probe::progress::every(),
                step_from: self.step_from.clone(),
                quiet,
            }))
    }

    /// What the pass is asked, whatever it measures.
    pub fn pass(self, quiet: bool) -> Pass {
        Pass {
            model: self.model,
            checkpoints: self.ckpt,
            ckpt_names: probe::model::CheckpointOptions {
                strip_prefix: self.strip_prefix,
                step_from: self.step_from,
            },
            data: self.data,
            samples: self.prep.samples,
            shard: self.shard.unwrap_or((0, 1)),
            data_shard: self.data_shard,
            normalize: self.prep.normalize(),
            limit: self.limit.map(|l| l as usize),
            batch: self.batch as usize,
            ckpts_per_pass: self.ckpts_per_pass.map(|k| k as usize),
            loss: self.loss.into(),
            threads: self.threads.count(),
            out: self.out,
            save_every: self.save_every.0,
            force: self.force,
            quiet,
            command_line: command_line(),
            conventions: Default::default(),
        }
    }
}

/// Which samples of `--data` and how its inputs are prepared: the same flags in every
/// subcommand that reads data.
#[derive(Args, Debug)]
pub struct DataPrep {
    /// Use only samples A..B of the data set (0-based, B excluded, A < B <= N), e.g.
    /// `--samples 0:50000` and `--samples 50000:100000` on two jobs; the range is recorded in the
    /// results (`data` ends in `[A:B]`, attribute `data_range`). --limit then counts from A.
    #[arg(long, value_name = "A:B", value_parser = parse_range, allow_hyphen_values = true)]
    pub samples: Option<(usize, usize)>,
    /// Per-channel means (one value, or one per channel of x [N, C, ...], comma-separated) of
    /// uint8 images in an HDF5 file: x = (px/255 - mean) / std, as torchvision's ToTensor and
    /// Normalize (float data: (x - mean) / std). E.g. `--mean 0.485,0.456,0.406 --std
    /// 0.229,0.224,0.225`.
    #[arg(long, value_name = "M,..", value_delimiter = ',', requires = "std", value_parser = finite_f32, allow_hyphen_values = true)]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviations, each > 0 (see --mean).
    #[arg(long, value_name = "S,..", value_delimiter = ',', requires = "mean", value_parser = positive_f32, allow_hyphen_values = true)]
    pub std: Option<Vec<f32>>,
}

impl DataPrep {
    pub fn normalize(&self) -> Option<probe::data::Normalize> {
        Some(probe::data::Normalize {
            mean: self.mean.clone()?,
            std: self.std.clone()?,
        })
    }
}

/// `i/n` with 0 <= i < n: a shard (`--shard`, `--data-shard`).
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("expected i/n, e.g. 0/4")?;
    let i: usize = i
        .parse()
        .map_err(|_| format!("'{i}' is not a shard index"))?;
    let n: usize = n
        .parse()
        .map_err(|_| format!("'{n}' is not a shard count"))?;
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 <= i < n"));
    }
    Ok((i, n))
}

/// `A:B` with A < B (B <= N is checked against the data set).
fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or("expected A:B, e.g. 0:1000 (samples A..B, B excluded)")?;
    let num = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("'{v}' is not a sample index (a whole number >= 0)"))
    };
    let (a, b) = (num(a)?, num(b)?);
    if a >= b {
        return Err(format!("{a}:{b} is empty: need A < B"));
    }
    Ok((a, b))
}

fn finite_f32(s: &str) -> Result<f32, String> {
    finite(s, |_| true, "needs a finite number").map(|v| v as f32)
}

fn positive_f32(s: &str) -> Result<f32, String> {
    positive(s).map(|v| v as f32)
}

/// PyTorch conventions the ONNX graph does not carry; by default each node's is read from the
/// exporter's record (see the README's "Gradients at kinks").
#[derive(Args, Debug)]
pub struct ConventionArgs {
    /// Every Clip as this PyTorch function: hardtanh (ReLU6, Hardtanh: no gradient at the
    /// bounds) or clamp (gradient at the bounds). Default: each node as the exporter recorded
    /// it; with no record, hardtanh when it has both bounds, clamp otherwise.
    #[arg(long, value_enum, value_name = "F")]
    pub clip_grad: Option<ClipGrad>,
    /// An embedding's padding row, which gets no gradient, as in nn.Embedding(padding_idx=IDX):
    /// NAME=IDX for the table initializer NAME, NAME=none for its every row's gradient, or none
    /// for every table. Repeatable. Default: as the exporter recorded it.
    #[arg(long, value_name = "NAME=IDX", value_parser = probe::ops::conventions::parse_padding)]
    pub padding_idx: Vec<(Option<String>, Option<i64>)>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipGrad {
    Hardtanh,
    Clamp,
}

impl ConventionArgs {
    pub fn conventions(self) -> probe::ops::conventions::Conventions {
        use probe::ops::clip::ClipAs;
        probe::ops::conventions::Conventions {
            clip: self.clip_grad.map(|c| match c {
                ClipGrad::Hardtanh => ClipAs::Hardtanh,
                ClipGrad::Clamp => ClipAs::Clamp,
            }),
            padding: self.padding_idx,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Loss {
    /// Cross-entropy from logits (class ids as targets).
    Ce,
    /// Mean squared error (real-valued targets).
    Mse,
}

impl From<Loss> for probe::autodiff::LossKind {
    fn from(l: Loss) -> Self {
        match l {
            Loss::Ce => probe::autodiff::LossKind::CrossEntropy,
            Loss::Mse => probe::autodiff::LossKind::Mse,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bn {
    Eval,
    Train,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

impl From<DeviceArg> for tch::Device {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => tch::Device::Cpu,
            DeviceArg::Cuda => tch::Device::Cuda(0),
        }
    }
}

/// Flags that contradict each other, found while turning them into a plan: `main` reports it
/// the way clap reports a bad flag (usage line, exit 2).
#[derive(Debug)]
pub struct Conflict(pub &'static str);

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Conflict {}

/// The command line as run, for the results file (arguments with spaces quoted).
pub fn command_line() -> String {
    std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--threads`, the same flag in every subcommand that computes.
#[derive(Args, Debug)]
pub struct Threads {
    /// Compute threads, 1 to 1024 (default: every core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_THREADS), allow_hyphen_values = true)]
    pub threads: Option<u64>,
}

impl Threads {
    /// `--threads`, or every core.
    pub fn count(&self) -> usize {
        self.threads
            .map(|t| t as usize)
            .unwrap_or_else(probe::runtime::default_threads)
    }
}

/// The note a subcommand ends with: where its results went.
pub fn wrote(quiet: bool, path: &Path) {
    if !quiet {
        eprintln!("wrote {}", path.display());
    }
}

// Value parsers of the numeric flags: a value out of range is a bad flag (exit 2), refused by
// clap before any work with one line, "invalid value 'nan' for '--weight-decay <L>': needs a
// finite number >= 0". Numeric flags take values that start with '-' (allow_hyphen_values), so
// `--lr -0.1` is refused for its range, not as an unknown argument.

/// The most compute threads a flag may ask for (ONNX Runtime and libtorch start that many).
pub const MAX_THREADS: u64 = 1024;

/// A finite number for which `ok` holds, else `needs`.
fn finite(s: &str, ok: fn(f64) -> bool, needs: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && ok(v) => Ok(v),
        _ => Err(needs.into()),
    }
}

/// A regular expression that compiles.
pub fn regex_pattern(s: &str) -> Result<String, String> {
    regex::Regex::new(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string().lines().last().unwrap_or_default().to_string())
}

/// A finite number >= 0.
pub fn non_negative(s: &str) -> Result<f64, String> {
    finite(s, |v| v >= 0.0, "needs a finite number >= 0")
}

/// A finite number > 0.
pub fn positive(s: &str) -> Result<f64, String> {
    finite(s, |v| v > 0.0, "needs a finite number > 0")
}

/// A whole number in LO..=HI.
pub fn whole_in<const LO: usize, const HI: usize>(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if (LO..=HI).contains(&v) => Ok(v),
        _ => Err(format!("needs a whole number from {LO} to {HI}")),
    }
}
