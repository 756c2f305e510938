//! The command line: one file per subcommand, each holding its flags (clap), the step that
//! turns them into the library's checked plan, and the printing of its results table;
//! [`flags`] holds what they share. This file is the top: `probe`'s help text and the list of
//! subcommands.
pub mod analyze;
pub mod autodiff;
pub mod eval;
pub mod flags;
pub mod format;
pub mod grad;
pub mod merge;
pub mod plot;
pub mod train;

use analyze::AnalyzeArgs;
use autodiff::AutodiffArgs;
use clap::{Parser, Subcommand};
use eval::EvalArgs;
use grad::GradArgs;
use merge::MergeArgs;
use plot::PlotArgs;
use train::TrainArgs;

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
probe merge --out runs/r/grad.h5 part-*.h5     # data shards of --data-shard i/n\n  \
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
    /// Also write a machine-readable log: JSON lines (time, event: start, progress every 10 s
    /// with the whole run's fraction and ETA, one per results row, finish, exit), appended to
    /// FILE, or `-` for stderr. E.g. `--log-json runs/r/grad.log.jsonl`.
    #[arg(long, global = true, value_name = "FILE")]
    pub log_json: Option<std::path::PathBuf>,
    /// Seconds between progress lines (without a terminal: timestamped lines on stderr with the
    /// checkpoint, rate, and the whole run's fraction and ETA) and `--log-json` progress events.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 10.0, value_parser = flags::non_negative)]
    pub progress_every: f64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Full-dataset mean loss and accuracy at each checkpoint, written to HDF5.
    #[command(
        long_about = "For each checkpoint: the mean loss over every target element of the data set \
(cross-entropy from logits for class targets, or --loss mse), the accuracy (argmax == target), and the \
sample count, computed by ONNX Runtime on CPU. BatchNorm runs as exported (eval mode uses the \
checkpoint's running statistics). One row per checkpoint is appended to --out; rerunning with the same \
--out skips checkpoints already complete there.",
        after_help = "Examples:\n  probe eval --model models/resnet.onnx --ckpt runs/demo/step-*.safetensors \\\n      --data fashion-mnist:test -o runs/demo/test.h5\n  \
probe eval --model m.onnx --ckpt ckpts/ --data d.h5 --batch 500 -o run.h5 --format csv > run.csv"
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
Batch use: --shard i/n takes every n-th checkpoint starting at i; --data-shard i/n takes the i-th of n \
contiguous runs of whole batches of the data and stores raw f64 sums, which `probe merge` adds into the \
rows of one pass (--hessian cannot be split that way: each Lanczos step needs a full pass; nor can \
--noise's per-sample part: use --noise-samples 0 with --data-shard); rerunning with the same --out \
skips checkpoints already complete there; a killed run leaves only complete rows.",
        after_help = "Examples:\n  probe grad --model models/resnet.onnx --ckpt runs/demo/step-*.safetensors \\\n      --data fashion-mnist --weight-decay 5e-4 --out runs/demo/grad.h5\n  \
probe grad --model models/mlp.onnx --data fashion-mnist --limit 1000 -o g.h5 --format csv > g.csv\n  \
probe grad --model models/resnet.onnx --ckpt runs/demo/step-*.safetensors \\\n      --data fashion-mnist --batch 128 --noise --noise-samples 1000 \\\n      --hessian --hessian-samples 512 --out runs/demo/curv.h5\n  \
probe grad --model models/mlp.onnx --data fashion-mnist --limit 64 --hessian \\\n      --hessian-params fc3.weight,fc3.bias --out block.h5     # one layer's Hessian block\n  \
probe grad --model models/gpt.onnx --data tokens:val.bin:32:stride=16 --samples 0:5000 \\\n      --out shard0.h5     # a nanoGPT token file, overlapping windows, one shard\n  \
probe grad --model resnet.onnx --data val.h5:val:x=images,y=labels \\\n      --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --out val.h5     # uint8 images\n  \
for i in 0 1 2 3; do probe grad --model m.onnx --ckpt runs/r/step-*.safetensors --data d.h5 \\\n      --data-shard $i/4 --out part-$i.h5; done; probe merge --out grad.h5 part-*.h5"
    )]
    Grad(GradArgs),
    /// Combines the results files of one run split across jobs (data and checkpoint shards).
    #[command(
        long_about = "Merges results files of one run of `probe grad` or `probe eval` into the file one \
process writes. Data shards (--data-shard i/n, rows of raw f64 sums): for each checkpoint the n \
shards' sums are added in shard order in f64, divided by the total number of target elements and \
turned into the full row (loss, accuracy, |g|, |g + wd w|, --noise's minibatch moments, --save-grad's \
gradient), equal to a single pass to f64 rounding of the sums (to the bit while f32 batch sums add \
exactly in f64). Files of whole rows (--shard i/n) are copied. Rows come out in step order. Refused, \
naming the files: files of another model, data set, batch size, loss or flags; a data shard given \
twice; a checkpoint in two files; a checkpoint missing some of its data shards.\n\n\
Not splittable by data: --hessian (each Lanczos step is a full pass) and --noise's per-sample part.",
        after_help = "Examples:\n  for i in 0 1 2 3; do\n    probe grad --model m.onnx --ckpt runs/r/step-*.safetensors --data d.h5 \\\n        --data-shard $i/4 --out part-$i.h5\n  done\n  \
probe merge --out grad.h5 part-*.h5\n  \
probe merge --out grad.h5 grad-shard-*.h5     # files of probe grad --shard i/n"
    )]
    Merge(MergeArgs),
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
trainable parameter. Standard ONNX ops only; the file passes onnx.checker.",
        after_help = "Example:\n  probe autodiff models/mlp.onnx -o mlp.grad.onnx"
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
        after_help = "Examples:\n  probe analyze runs/demo/grad.h5\n  \
probe analyze runs/demo/grad.h5 --format json > series.jsonl     # one line per series"
    )]
    Analyze(AnalyzeArgs),
    /// Figure of results files (grad, eval, train log), several overlaid: PNG, SVG or PDF.
    #[command(
        long_about = "Draws a figure of one or more results files against the training step, one \
panel per quantity: from `probe grad` files the full-dataset loss, accuracy, gradient norm (with \
|g + wd w|), weight norm, distance moved against the Wasserstein distance of the weight distributions, \
gradient noise and B_noise, and sharpness with the 2/lr line; from `probe eval` files the loss and \
accuracy; from a `probe train` log (DIR/train.h5) the minibatch loss and learning rate per step. Several \
files are drawn over each other, one colour and marker shape per file, named in a legend (--label, or \
the file's stem). --panels picks panels and their order. Sized for print: --width in inches (6.75 \
for a page of two columns, 3.25 for one column) with text at --font-size points at that width. The \
format follows the extension of -o: .png (raster, --dpi), .svg or .pdf (vector; the PDF sets \
Helvetica). Panels and lines a file cannot give are left out with a note on stderr.",
        after_help = "Examples:\n  probe plot runs/demo/grad.h5 -o runs/demo/grad.png\n  \
probe plot sgd.h5 adam.h5 --panels loss,grad -o fig.pdf     # two runs, two panels\n  \
probe plot sgd.h5 runs/sgd/train.h5 --panels loss --width 3.25 -o loss.pdf\n  \
probe plot a.h5 b.h5 --label 'lr 0.1' --label 'lr 0.01' --title '' -o fig.svg"
    )]
    Plot(PlotArgs),
}
