//! The command line: flags parsed by clap, checked, and turned into the library's plans.
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "probe",
    version,
    about = "Exact full-dataset losses and gradients of ONNX models at training checkpoints",
    long_about = "probe measures what an optimizer did: at each saved checkpoint of a training run it \
evaluates the model over EVERY training sample exactly once, in a fixed order, with no augmentation, \
and sums in f64. Models are ONNX files exported from PyTorch (parameters as named initializers); \
checkpoints are safetensors files keyed by the same names (what safetensors.torch.save_file(model.state_dict()) writes).\n\n\
Exit codes: 0 success, 1 failure, 2 bad flags, 3 bad input (file, model, checkpoint, data), \
4 non-finite loss or gradient, 5 could not write results.",
    after_help = "Examples:\n  \
probe train --model models/resnet.onnx --data fashion-mnist --epochs 5 --opt sgd --lr 0.05 \
--momentum 0.9 --weight-decay 5e-4 --ckpt-every-epoch --out runs/r\n  \
probe grad --model models/resnet.onnx --ckpt runs/r/step-*.safetensors --data fashion-mnist \
--weight-decay 5e-4 --out runs/r/grad.h5\n  \
probe eval --model m.onnx --ckpt ckpts/*.safetensors --data d.h5 --batch 500 --out run.h5\n  \
probe autodiff m.onnx -o m.grad.onnx\n  \
probe analyze runs/r/grad.h5\n  \
probe plot runs/r/grad.h5 -o fig.png\n\n\
scripts/demo.sh runs train, grad (with --noise --hessian), analyze and plot on the shipped ResNet."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// No progress bars or notes on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Full-dataset mean loss and accuracy at each checkpoint, written to HDF5.
    #[command(
        long_about = "For each checkpoint: the mean loss over every target element of the data set \
(cross-entropy from logits for class targets, or --loss mse), the accuracy (argmax == target), and the \
sample count, computed by ONNX Runtime on CPU. BatchNorm runs as exported (eval mode uses the \
checkpoint's running statistics). One row per checkpoint is appended to --out; rerunning with the same \
--out skips checkpoints already complete there."
    )]
    Eval(EvalArgs),
    /// The exact gradient of the full-dataset mean loss at each checkpoint, written to HDF5.
    #[command(
        long_about = "For each checkpoint: one deterministic pass over every sample (fixed order, no \
augmentation); the gradient of the batch's summed loss comes from probe's own gradient graph of the ONNX \
model, run by ONNX Runtime, and is accumulated over batches in f64, then divided by the number of target \
elements: the gradient of the mean loss over the whole data set. Stored per checkpoint: loss, accuracy, \
|g| (l2, l1, linf, per parameter), |w|, distance to the previous and first checkpoint, and with \
--weight-decay L the norm |g + L w| of the gradient of the objective SGD with weight decay minimizes \
(at its stationary points this, not |g|, is zero). --save-grad also stores the full gradient.\n\n\
Batch use: --shard i/n takes every n-th checkpoint starting at i; rerunning with the same --out skips \
checkpoints already complete there; a killed run leaves only complete rows.",
        after_help = "Examples:\n  probe grad --model models/resnet.onnx --ckpt runs/demo/step-*.safetensors \\\n      --data fashion-mnist --weight-decay 5e-4 --out runs/demo/grad.h5\n  \
probe grad --model models/resnet.onnx --ckpt runs/demo/step-*.safetensors \\\n      --data fashion-mnist --batch 128 --noise --noise-samples 1000 \\\n      --hessian --hessian-samples 512 --out runs/demo/curv.h5\n  \
probe grad --model models/mlp.onnx --data fashion-mnist --limit 64 --hessian \\\n      --hessian-params fc3.weight,fc3.bias --out block.h5     # one layer's Hessian block"
    )]
    Grad(GradArgs),
    /// Trains an ONNX model with libtorch and writes checkpoints probe eval/grad read.
    #[command(
        long_about = "Trains the model of an ONNX file (its initializers are the initial weights) with \
libtorch: the graph is interpreted node by node in training mode (BatchNorm with batch statistics), the \
loss is the batch's mean cross-entropy from logits (or --loss mse), and the step is PyTorch's \
torch.optim.SGD / Adam / AdamW. Writes DIR/step-<8-digit step>.safetensors (every parameter and buffer \
by ONNX name, float32; metadata: step, epoch, lr, optimizer, seed, ...) at step 0, every --ckpt-every N \
steps, at each epoch's end with --ckpt-every-epoch and at the last step; the optimizer state of each \
in its own folder, DIR/optim/step-<8-digit step>.safetensors (so DIR/step-*.safetensors names the weights \
only); and the training log DIR/train.h5 (per step: minibatch loss, lr).\n\n\
Batches: an epoch is ceil(N/B) steps (the last batch smaller), in a seeded permutation per epoch \
(--shuffle, default) or in file order (--no-shuffle). --resume continues from the newest checkpoint in \
DIR with its optimizer state, bit for bit as if never stopped (same flags, same seed). The learning \
rate of step s is the schedule's value after s-1 scheduler steps (PyTorch's scheduler stepped after \
each optimizer step): constant; step:EVERY,GAMMA (StepLR); cosine (CosineAnnealingLR over the run's \
total steps, eta_min 0).",
        after_help = "Example:\n  probe train --model models/resnet.onnx --data fashion-mnist --epochs 3 --batch 128 \\\n      --opt sgd --lr 0.05 --momentum 0.9 --weight-decay 5e-4 --ckpt-every-epoch --out runs/demo"
    )]
    Train(TrainArgs),
    /// Writes the gradient graph of a model (ONNX -> ONNX) for inspection.
    #[command(
        long_about = "Writes the ONNX graph probe differentiates a model into: inputs are the data, the \
targets ('probe/target') and every state tensor (so a checkpoint is fed as inputs); outputs are the batch's \
summed loss ('probe/loss_sum'), its correct count ('probe/correct_sum') and 'grad/<parameter>' for every \
trainable parameter. Standard ONNX ops only; the file passes onnx.checker."
    )]
    Autodiff(AutodiffArgs),
    /// Trends, stationarity and the weight distribution's motion in a `probe grad` results file.
    #[command(
        long_about = "Reads a results file of `probe grad` and, over the last half of its checkpoints \
(in step order), fits each series (loss, accuracy, |g|, |g + wd w|, |w|, gradient noise, sharpness; \
whichever the file holds) against step: OLS slope with a 95% Student-t interval, relative change, mean \
absolute change between checkpoints, and the KPSS level-stationarity test. From the weight-distribution \
columns (schema 2): W1 between consecutive checkpoints' per-tensor distributions against the mean \
distance the weights moved, and W1 between windows of checkpoints (halves, quarters). Compares the top \
Hessian eigenvalue with 2/lr when both are known. Writes everything into the same file under \
/analysis (replaced on rerun; see docs/schema.md) and prints a verdict: did |g| go to zero, did the \
loss settle, did the weight distribution settle while the weights kept moving.",
        after_help = "Example:\n  probe analyze runs/demo/grad.h5"
    )]
    Analyze(AnalyzeArgs),
    /// Figure of a `probe grad` results file: loss, |g|, accuracy, weights, noise, sharpness.
    #[command(
        long_about = "Draws one panel per quantity the results file holds, against step: full-dataset \
loss, gradient norm (with |g + wd w|), accuracy, weight norm, distance moved against the Wasserstein \
distance of the weight distributions, gradient noise, and sharpness with the 2/lr line. Panels whose \
columns are missing are left out with a note on stderr. PNG or SVG, by the file name's extension.",
        after_help = "Example:\n  probe plot runs/demo/grad.h5 -o runs/demo/grad.png"
    )]
    Plot(PlotArgs),
}

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// The results file of `probe grad` (the analysis is written into it, under /analysis).
    #[arg(value_name = "R.h5")]
    pub results: PathBuf,
    /// Learning rate for the edge-of-stability comparison (default: /checkpoints/lr).
    #[arg(long, value_parser = positive, allow_hyphen_values = true)]
    pub lr: Option<f64>,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// The results file of `probe grad`.
    #[arg(value_name = "R.h5")]
    pub results: PathBuf,
    /// The figure: .png or .svg.
    #[arg(short, long, value_name = "FIG.png|FIG.svg")]
    pub out: PathBuf,
    /// Learning rate for the 2/lr line (default: /checkpoints/lr).
    #[arg(long, value_parser = positive, allow_hyphen_values = true)]
    pub lr: Option<f64>,
}

#[derive(Args, Debug)]
pub struct AutodiffArgs {
    /// The forward ONNX model.
    #[arg(value_name = "M.onnx")]
    pub model: PathBuf,
    /// Where to write the gradient graph.
    #[arg(short, long, value_name = "M.grad.onnx")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Loss::Ce)]
    pub loss: Loss,
    /// BatchNormalization with batch statistics (training mode).
    #[arg(long, value_enum, default_value_t = Bn::Eval)]
    pub bn: Bn,
    /// Write the Hessian-vector-product graph instead: the gradient graph differentiated again,
    /// with an input `v/<p>` per parameter and outputs `hvp/<p>` = (H v)_p.
    #[arg(long)]
    pub hvp: bool,
}

#[derive(Args, Debug)]
pub struct GradArgs {
    #[command(flatten)]
    pub common: Common,
    /// Also report |g + L w|, the gradient norm of the loss plus (L/2)|w|^2 (SGD's weight decay L,
    /// a finite number >= 0).
    #[arg(long, value_name = "L", value_parser = non_negative, allow_hyphen_values = true)]
    pub weight_decay: Option<f64>,
    /// Store the full gradient of every parameter (`/grad/full/<name>`).
    #[arg(long)]
    pub save_grad: bool,
    /// BatchNormalization statistics: `eval` uses the checkpoint's running statistics (default);
    /// `train` uses each batch's statistics, so the batch size becomes part of the result.
    #[arg(long, value_enum, default_value_t = Bn::Eval)]
    pub bn: Bn,
    /// Take only the checkpoints of shard i of n (every n-th, starting at i; 0-based), e.g. 3/8.
    #[arg(long, value_name = "i/n", value_parser = parse_shard, allow_hyphen_values = true)]
    pub shard: Option<(usize, usize)>,
    /// On a non-finite loss or gradient: stop (exit 4), or record NaN for that checkpoint and go on.
    #[arg(long, value_enum, default_value_t = NonFinite::Stop)]
    pub on_nonfinite: NonFinite,
    /// What computes each batch's gradient: probe's ONNX gradient graph run by ONNX Runtime, or
    /// libtorch autograd on the model interpreted node by node (same quantities, same store).
    #[arg(long, value_enum, default_value_t = EngineArg::Onnxruntime)]
    pub engine: EngineArg,
    /// Where --engine torch computes: cpu, or cuda (where libtorch sees a GPU).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,

    /// Gradient noise: mean over the --batch minibatches of |g_b|^2 and |g_b - g|^2 (same pass),
    /// and the trace of the per-sample gradient covariance tr(Sigma) (a second pass, one sample
    /// at a time), with B_noise = tr(Sigma)/|g|^2. Exact, not sampled.
    #[arg(long, help_heading = "Noise and curvature")]
    pub noise: bool,
    /// Per-sample part of --noise over the first N samples only (0: skip it). Default: all.
    #[arg(
        long,
        value_name = "N",
        help_heading = "Noise and curvature",
        requires = "noise",
        allow_hyphen_values = true
    )]
    pub noise_samples: Option<u64>,
    /// Curvature from exact Hessian-vector products (the gradient graph differentiated again):
    /// top and bottom eigenvalue by Lanczos, directional sharpness g'Hg/|g|^2, Hutchinson trace
    /// with its standard error, per parameter block. Costs about
    /// (--hessian-iters + --hutchinson + 1) passes over --hessian-samples, each about 4-5x a
    /// gradient pass (measured on the shipped ResNet), per checkpoint.
    #[arg(long, help_heading = "Noise and curvature")]
    pub hessian: bool,
    /// Hessian of the mean loss over the first N samples, N >= 1 (default: all).
    #[arg(
        long,
        value_name = "N",
        help_heading = "Noise and curvature",
        requires = "hessian",
        value_parser = clap::value_parser!(u64).range(1..),
        allow_hyphen_values = true
    )]
    pub hessian_samples: Option<u64>,
    /// Lanczos iteration budget (one Hessian-vector product pass each), 1 to 10000.
    #[arg(
        long,
        value_name = "K",
        default_value_t = 30,
        help_heading = "Noise and curvature",
        value_parser = whole_in::<1, 10_000>,
        allow_hyphen_values = true
    )]
    pub hessian_iters: usize,
    /// Stop Lanczos when the top eigenpair's relative residual |Hu - lu|/|l| is below this (a
    /// finite number >= 0; 0 runs every iteration).
    #[arg(
        long,
        value_name = "TOL",
        default_value_t = 1e-4,
        help_heading = "Noise and curvature",
        value_parser = non_negative,
        allow_hyphen_values = true
    )]
    pub hessian_tol: f64,
    /// Rademacher probes for the Hutchinson trace estimate, 1 to 10000.
    #[arg(
        long,
        value_name = "M",
        default_value_t = 10,
        help_heading = "Noise and curvature",
        value_parser = whole_in::<1, 10_000>,
        allow_hyphen_values = true
    )]
    pub hutchinson: usize,
    /// Restrict the Hessian to these parameters (comma-separated initializer names): the block
    /// H_BB, e.g. one layer's curvature. Default: all trainable parameters.
    #[arg(
        long,
        value_name = "P,..",
        value_delimiter = ',',
        help_heading = "Noise and curvature",
        requires = "hessian"
    )]
    pub hessian_params: Option<Vec<String>>,
    /// Seed of the Lanczos start and the Hutchinson probes (the same at every checkpoint).
    #[arg(
        long,
        default_value_t = 0,
        help_heading = "Noise and curvature",
        allow_hyphen_values = true
    )]
    pub hessian_seed: u64,
    /// With the ONNX Runtime engine: build the gradient graph from standard ONNX ops only (as
    /// `probe autodiff` writes it), instead of probe's CPU kernels for convolution gradients
    /// (libtorch's, as PyTorch runs them; faster). Same results up to f32 rounding.
    #[arg(long)]
    pub standard_ops: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineArg {
    Onnxruntime,
    Torch,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bn {
    Eval,
    Train,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonFinite {
    Stop,
    Continue,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
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

// Value parsers of the numeric flags: a value out of range is a bad flag (exit 2), refused by
// clap before any work with one line, "invalid value 'nan' for '--weight-decay <L>': needs a
// finite number >= 0". Numeric flags take values that start with '-' (allow_hyphen_values), so
// `--lr -0.1` is refused for its range, not as an unknown argument.

/// The most compute threads a flag may ask for (ONNX Runtime and libtorch start that many).
const MAX_THREADS: u64 = 1024;

/// A finite number >= 0.
fn non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err("needs a finite number >= 0".into()),
    }
}

/// A finite number > 0.
fn positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err("needs a finite number > 0".into()),
    }
}

/// A whole number in LO..=HI.
fn whole_in<const LO: usize, const HI: usize>(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if (LO..=HI).contains(&v) => Ok(v),
        _ => Err(format!("needs a whole number from {LO} to {HI}")),
    }
}

/// A learning-rate schedule [`probe::train::optim::Schedule::parse`] accepts, kept as given.
fn schedule(s: &str) -> Result<String, String> {
    match probe::train::optim::Schedule::parse(s) {
        Ok(_) => Ok(s.to_string()),
        // Its message starts "--schedule <s>: ", which clap already says.
        Err(e) => {
            let e = e.to_string();
            Err(e
                .strip_prefix(&format!("--schedule {s}: "))
                .unwrap_or(&e)
                .to_string())
        }
    }
}

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
    /// Data: `fashion-mnist` (train split), `fashion-mnist:test`, `shakespeare[:T]`, or an HDF5
    /// file with datasets `x` [N, ...] and `y` [N] or [N, T].
    #[arg(long, value_name = "D")]
    pub data: String,
    /// Samples per batch (does not change the result; larger is faster until memory runs out).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    pub batch: u64,
    /// Use only the first N samples.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    pub limit: Option<u64>,
    /// Loss: cross-entropy from logits on class ids, or mean squared error on real targets.
    #[arg(long, value_enum, default_value_t = Loss::Ce)]
    pub loss: Loss,
    /// Compute threads, 1 to 1024 (default: every core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_THREADS), allow_hyphen_values = true)]
    pub threads: Option<u64>,
    /// Results file (HDF5); appended to if it holds earlier rows of the same run.
    #[arg(long, value_name = "R.h5")]
    pub out: PathBuf,
    /// Replace --out if it holds results of another run.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: Common,
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

pub fn command_line() -> String {
    std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opt {
    /// torch.optim.SGD (momentum, dampening 0, weight decay added to the gradient).
    Sgd,
    /// torch.optim.Adam (betas 0.9, 0.999; eps 1e-8; weight decay added to the gradient).
    Adam,
    /// torch.optim.AdamW (decoupled weight decay, default 1e-2).
    Adamw,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("length").required(true).args(["epochs", "steps"])))]
pub struct TrainArgs {
    /// The ONNX model; its initializers are the initial weights (step 0).
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Training data: `fashion-mnist`, `shakespeare[:T]`, or an HDF5 file with `x` and `y`
    /// (held in memory while training).
    #[arg(long, value_name = "D")]
    pub data: String,
    /// The run folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Train this many epochs (ceil(N / B) steps each).
    #[arg(long, value_name = "E", value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    pub epochs: Option<u64>,
    /// Train until this step (with --resume: the total, counting the steps already done).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    pub steps: Option<u64>,
    /// Samples per step.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    pub batch: u64,
    #[arg(long, value_enum, default_value_t = Opt::Sgd)]
    pub opt: Opt,
    /// Base learning rate, a finite number >= 0 (default 1e-3, as torch.optim).
    #[arg(long, value_parser = non_negative, allow_hyphen_values = true)]
    pub lr: Option<f64>,
    /// SGD momentum, a finite number >= 0 (default 0).
    #[arg(long, value_parser = non_negative, allow_hyphen_values = true)]
    pub momentum: Option<f64>,
    /// Weight decay, a finite number >= 0 (default 0 for sgd and adam, 1e-2 for adamw, as
    /// torch.optim).
    #[arg(long, value_parser = non_negative, allow_hyphen_values = true)]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule: constant, step:EVERY,GAMMA, or cosine.
    #[arg(long, default_value = "constant", value_name = "S", value_parser = schedule)]
    pub schedule: String,
    /// Seed of the shuffling, the augmentation and libtorch's generator.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub seed: u64,
    /// A new seeded permutation of the samples every epoch (the default).
    #[arg(long, overrides_with = "no_shuffle")]
    pub shuffle: bool,
    /// Batches in file order, every epoch.
    #[arg(long, overrides_with = "shuffle")]
    pub no_shuffle: bool,
    /// Random crop (4-pixel zero padding) and horizontal flip of image inputs [N, C, H, W].
    #[arg(long)]
    pub augment: bool,
    /// Write a checkpoint every N steps.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    pub ckpt_every: Option<u64>,
    /// Write a checkpoint at the end of every epoch.
    #[arg(long)]
    pub ckpt_every_epoch: bool,
    /// Use only the first N samples.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    pub limit: Option<u64>,
    #[arg(long, value_enum, default_value_t = Loss::Ce)]
    pub loss: Loss,
    /// Compute threads, 1 to 1024 (default: every core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_THREADS), allow_hyphen_values = true)]
    pub threads: Option<u64>,
    /// Where libtorch trains: cpu, or cuda (where libtorch sees a GPU).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Continue from the newest checkpoint in --out (with its optimizer state).
    #[arg(long)]
    pub resume: bool,
    /// Replace another run's files in --out.
    #[arg(long)]
    pub force: bool,
}

impl TrainArgs {
    /// The checked plan.
    pub fn plan(self, quiet: bool) -> anyhow::Result<probe::train::run::TrainPlan> {
        use probe::train::optim::{OptConfig, OptKind, Schedule};
        use probe::train::run::{Length, TrainPlan};
        if self.momentum.is_some() && self.opt != Opt::Sgd {
            use clap::CommandFactory;
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--momentum applies to --opt sgd only (adam and adamw keep their own moment \
                     estimates, betas 0.9, 0.999)",
                )
                .exit()
        }
        let kind = match self.opt {
            Opt::Sgd => OptKind::Sgd,
            Opt::Adam => OptKind::Adam,
            Opt::Adamw => OptKind::AdamW,
        };
        Ok(TrainPlan {
            model: self.model,
            data: self.data,
            limit: self.limit.map(|l| l as usize),
            out: self.out,
            length: match (self.steps, self.epochs) {
                (Some(s), _) => Length::Steps(s),
                (None, Some(e)) => Length::Epochs(e),
                (None, None) => unreachable!("clap requires --steps or --epochs"),
            },
            batch: self.batch as usize,
            opt: OptConfig::new(kind, self.lr, self.momentum, self.weight_decay)?,
            schedule: Schedule::parse(&self.schedule)?,
            seed: self.seed,
            shuffle: !self.no_shuffle || self.shuffle,
            augment: self.augment,
            ckpt_every: self.ckpt_every,
            ckpt_every_epoch: self.ckpt_every_epoch,
            loss: self.loss.into(),
            threads: self
                .threads
                .map(|t| t as usize)
                .unwrap_or_else(probe::runtime::default_threads),
            device: match self.device {
                DeviceArg::Cpu => tch::Device::Cpu,
                DeviceArg::Cuda => tch::Device::Cuda(0),
            },
            resume: self.resume,
            force: self.force,
            quiet,
            command_line: command_line(),
        })
    }
}
