//! `probe train`: its flags, their plan (optimizer, schedule, length, checkpoints), and the
//! table of one row per checkpoint written.
use super::flags::{command_line, non_negative, Conflict, DataPrep, DeviceArg, Loss, Threads};
use clap::{Args, ValueEnum};
use probe::train::run::{CkptRow, TrainPlan};
use std::path::PathBuf;

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
    /// Training data: `fashion-mnist`, `shakespeare[:T]`, an HDF5 file with `x` and `y`
    /// (`FILE.h5[:GROUP][:x=KEY,y=KEY]`), or `tokens:FILE[:T][:stride=S]` (held in memory while
    /// training).
    #[arg(long, value_name = "D")]
    pub data: String,
    #[command(flatten)]
    pub prep: DataPrep,
    /// The run folder (created if missing).
    #[arg(short, long, value_name = "DIR")]
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
    #[command(flatten)]
    pub threads: Threads,
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

impl TrainArgs {
    /// The checked plan.
    pub fn plan(self, quiet: bool) -> anyhow::Result<TrainPlan> {
        use probe::train::optim::{OptConfig, OptKind, Schedule};
        use probe::train::run::Length;
        if self.momentum.is_some() && self.opt != Opt::Sgd {
            return Err(Conflict(
                "--momentum applies to --opt sgd only (adam and adamw keep their own moment \
                 estimates, betas 0.9, 0.999)",
            )
            .into());
        }
        let kind = match self.opt {
            Opt::Sgd => OptKind::Sgd,
            Opt::Adam => OptKind::Adam,
            Opt::Adamw => OptKind::AdamW,
        };
        Ok(TrainPlan {
            model: self.model,
            data: self.data,
            samples: self.prep.samples,
            normalize: self.prep.normalize(),
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
            threads: self.threads.count(),
            device: self.device.into(),
            resume: self.resume,
            force: self.force,
            quiet,
            command_line: command_line(),
        })
    }
}

/// Trains, printing a row per checkpoint written, and the run's speed at the end.
pub fn run(args: TrainArgs, quiet: bool) -> anyhow::Result<()> {
    let plan = args.plan(quiet)?;
    println!(
        "{:>8}  {:>8}  {:>10}  {:>10}  {:>7}  checkpoint",
        "step", "epoch", "loss", "lr", "seconds"
    );
    let print = |r: &CkptRow| {
        // Step 0 is written before any minibatch: it has no training loss.
        let loss = if r.loss.is_nan() && r.step == 0 {
            "-".to_string()
        } else {
            format!("{:.6}", r.loss)
        };
        println!(
            "{:>8}  {:>8.3}  {:>10}  {:>10.4e}  {:>7.1}  {}",
            r.step,
            r.epoch,
            loss,
            r.lr,
            r.seconds,
            r.path.display()
        )
    };
    let s = probe::train::run::run(&plan, print)?;
    if !quiet && s.steps() > 0 {
        eprintln!(
            "trained steps {}..{} in {:.1} s ({:.2} steps/s); wrote {}",
            s.first_step + 1,
            s.last_step,
            s.seconds,
            s.steps() as f64 / s.seconds.max(1e-9),
            plan.out.display()
        );
    }
    Ok(())
}
