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
    after_help = "Examples:\n  probe eval --model models/resnet.onnx --data fashion-mnist --out run.h5\n  \
probe eval --model m.onnx --ckpt ckpts/*.safetensors --data d.h5 --batch 500 --out run.h5"
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
}

#[derive(Args, Debug)]
pub struct Common {
    /// The ONNX model (a `model.onnx.data` external-data file beside it is read too).
    #[arg(long, value_name = "M.onnx")]
    pub model: PathBuf,
    /// Checkpoints (safetensors keyed by ONNX initializer names), in the order to evaluate.
    /// Without --ckpt the model's own initializers are used.
    #[arg(long, value_name = "C.safetensors", num_args = 1..)]
    pub ckpt: Vec<PathBuf>,
    /// Data: `fashion-mnist` (train split), `fashion-mnist:test`, `shakespeare[:T]`, or an HDF5
    /// file with datasets `x` [N, ...] and `y` [N] or [N, T].
    #[arg(long, value_name = "D")]
    pub data: String,
    /// Samples per batch (does not change the result; larger is faster until memory runs out).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Use only the first N samples.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Loss: cross-entropy from logits on class ids, or mean squared error on real targets.
    #[arg(long, value_enum, default_value_t = Loss::Ce)]
    pub loss: Loss,
    /// Compute threads (default: every core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
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
