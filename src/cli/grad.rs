//! `probe grad`: its flags, their plan (engine, noise and curvature options), and the table of
//! one row per checkpoint.
use super::flags::{
    non_negative, whole_in, wrote, Bn, Common, Conflict, ConventionArgs, DeviceArg,
};
use super::format::{print_header, print_row, Format, Val};
use clap::{Args, ValueEnum};
use probe::measure::grad::{Engine, GradPlan, GradRow, OnNonFinite};
use probe::measure::hessian::HessianOptions;
use probe::measure::noise::NoiseOptions;

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
    /// With the ONNX Runtime engine: build the gradient graph from standard ONNX ops only (as
    /// `probe autodiff` writes it), instead of probe's CPU kernels for convolution gradients
    /// (libtorch's, as PyTorch runs them; faster). Same results up to f32 rounding.
    #[arg(long)]
    pub standard_ops: bool,
    /// Where the shapes observed on the model's first samples are kept, so that the next run of
    /// the same model, data and first checkpoint skips observing them (a forward pass on two
    /// small batches: ~2 s of a 100M-parameter decoder's start-up). Files are named by the
    /// SHA-256 of everything observed; a damaged one is observed again. `off`: observe every
    /// run. Default: $XDG_CACHE_HOME/probe/shapes, else ~/.cache/probe/shapes
    #[arg(long, value_name = "DIR|off")]
    pub shape_cache: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub conventions: ConventionArgs,
    /// What stdout gets: `table`, `csv` (with a header line) or `json` (one object per line);
    /// csv and json name the columns step, loss, accuracy, grad_l2, [grad_reg_l2], weights_l2,
    /// dist_prev, [b_noise], [hessian_top], seconds, checkpoint (the bracketed ones with
    /// --weight-decay, --noise, --hessian).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    // Last: flags declared after it would be listed under its heading.
    #[command(flatten)]
    pub noise_and_curvature: NoiseAndCurvature,
}

/// The flags of `--noise` and `--hessian`, under their own heading.
#[derive(Args, Debug)]
#[command(next_help_heading = "Noise and curvature")]
pub struct NoiseAndCurvature {
    /// Gradient noise: mean over the --batch minibatches of |g_b|^2 and |g_b - g|^2 (same pass),
    /// and the trace of the per-sample gradient covariance tr(Sigma) (a second pass, one sample
    /// at a time), with B_noise = tr(Sigma)/|g|^2. Exact, not sampled.
    #[arg(long)]
    pub noise: bool,
    /// Per-sample part of --noise over the first N samples only (0: skip it). Default: all.
    #[arg(long, value_name = "N", requires = "noise", allow_hyphen_values = true)]
    pub noise_samples: Option<u64>,
    /// Curvature from exact Hessian-vector products (the gradient graph differentiated again):
    /// top and bottom eigenvalue by Lanczos, directional sharpness g'Hg/|g|^2, Hutchinson trace
    /// with its standard error, per parameter block. Costs about
    /// (--hessian-iters + --hutchinson + 1) passes over --hessian-samples, each about 4-5x a
    /// gradient pass (measured on the shipped ResNet), per checkpoint.
    #[arg(long)]
    pub hessian: bool,
    /// Hessian of the mean loss over the first N samples, N >= 1 (default: all).
    #[arg(
        long,
        value_name = "N",
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
        value_parser = non_negative,
        allow_hyphen_values = true
    )]
    pub hessian_tol: f64,
    /// Rademacher probes for the Hutchinson trace estimate, 1 to 10000.
    #[arg(
        long,
        value_name = "M",
        default_value_t = 10,
        value_parser = whole_in::<1, 10_000>,
        allow_hyphen_values = true
    )]
    pub hutchinson: usize,
    /// Restrict the Hessian to these parameters (comma-separated initializer names): the block
    /// H_BB, e.g. one layer's curvature. Default: all trainable parameters.
    #[arg(long, value_name = "P,..", value_delimiter = ',', requires = "hessian")]
    pub hessian_params: Option<Vec<String>>,
    /// Seed of the Lanczos start and the Hutchinson probes (the same at every checkpoint).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub hessian_seed: u64,
}

impl NoiseAndCurvature {
    /// `--noise` and its options.
    fn noise(&self) -> Option<NoiseOptions> {
        self.noise.then(|| NoiseOptions {
            samples: self.noise_samples.map(|n| n as usize),
        })
    }

    /// `--hessian` and its options.
    fn hessian(&self) -> Option<HessianOptions> {
        self.hessian.then(|| HessianOptions {
            samples: self.hessian_samples.map(|n| n as usize),
            iters: self.hessian_iters,
            tol: self.hessian_tol,
            probes: self.hutchinson,
            params: self.hessian_params.clone(),
            seed: self.hessian_seed,
        })
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineArg {
    Onnxruntime,
    Torch,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonFinite {
    Stop,
    Continue,
}

impl GradArgs {
    /// The checked plan; `--device cuda` with the ONNX Runtime engine is a [`Conflict`].
    pub fn plan(self, quiet: bool) -> anyhow::Result<GradPlan> {
        let engine = match (self.engine, self.device) {
            (EngineArg::Onnxruntime, DeviceArg::Cpu) => Engine::OnnxRuntime,
            (EngineArg::Onnxruntime, DeviceArg::Cuda) => {
                return Err(Conflict(
                    "--device cuda needs --engine torch (ONNX Runtime runs on the CPU here)",
                )
                .into())
            }
            (EngineArg::Torch, device) => Engine::Torch(device.into()),
        };
        if self.common.data_shard.is_some() {
            let nc = &self.noise_and_curvature;
            if nc.hessian {
                return Err(Conflict(
                    "--hessian cannot be split with --data-shard: each Lanczos step needs a full pass over the data (run it without --data-shard, or on --samples/--hessian-samples)",
                )
                .into());
            }
            if nc.noise && nc.noise_samples != Some(0) {
                return Err(Conflict(
                    "--noise's per-sample part cannot be split with --data-shard: its pass needs the full gradient first (add --noise-samples 0: the minibatch noise merges exactly)",
                )
                .into());
            }
        }
        let mut pass = self.common.pass(quiet);
        pass.conventions = self.conventions.conventions();
        Ok(GradPlan {
            pass,
            weight_decay: self.weight_decay,
            save_grad: self.save_grad,
            bn_train: self.bn == Bn::Train,
            engine,
            kernels: if self.standard_ops {
                probe::autodiff::grad::Kernels::Standard
            } else {
                probe::autodiff::grad::Kernels::ProbeCpu
            },
            on_nonfinite: if self.on_nonfinite == NonFinite::Stop {
                OnNonFinite::Stop
            } else {
                OnNonFinite::Continue
            },
            noise: self.noise_and_curvature.noise(),
            hessian: self.noise_and_curvature.hessian(),
            shape_cache: match &self.shape_cache {
                Some(d) if d.as_os_str() == "off" => None,
                Some(d) => Some(d.clone()),
                None => probe::autodiff::shape_cache::default_dir(),
            },
        })
    }
}

/// Measures every checkpoint, printing a row as each completes; the optional columns
/// (|g + wd w|, B_noise, lambda_max) appear only when their flags ask for them.
pub fn run(args: GradArgs, quiet: bool) -> anyhow::Result<()> {
    let format = args.format;
    let args_follow = args.common.follow_options(quiet)?;
    let plan = args.plan(quiet)?;
    let (noise, hess) = (plan.noise.is_some(), plan.hessian.is_some());
    // |g + wd w| may come from the checkpoints' metadata: the header waits for the first row.
    let wd_flag = plan.weight_decay.is_some_and(|l| l > 0.0);
    let mut columns: Vec<&str> = Vec::new();
    let mut wd = wd_flag;
    let mut print = move |r: &GradRow| {
        if columns.is_empty() {
            wd = wd_flag || r.grad_reg_l2.is_some();
            columns = [
                ("step", true),
                ("loss", true),
                ("accuracy", true),
                ("grad_l2", true),
                ("grad_reg_l2", wd),
                ("weights_l2", true),
                ("dist_prev", true),
                ("b_noise", noise),
                ("hessian_top", hess),
                ("seconds", true),
                ("checkpoint", true),
            ]
            .iter()
            .filter(|c| c.1)
            .map(|c| c.0)
            .collect();
            if format != Format::Table {
                print_header(format, &columns);
            } else {
                println!(
                    "{:>8}  {:>10}  {:>8}  {:>11}  {}{:>10}  {:>10}  {}{}{:>7}  checkpoint",
                    "step",
                    "loss",
                    "accuracy",
                    "|grad|",
                    if wd { "|grad+wd*w|  " } else { "" },
                    "|w|",
                    "moved",
                    if noise { "   B_noise  " } else { "" },
                    if hess { "  lambda_max  " } else { "" },
                    "seconds"
                );
            }
        }
        if format != Format::Table {
            let mut v = vec![
                Val::I(r.step),
                Val::F(r.loss),
                Val::F(r.accuracy),
                Val::F(r.grad_l2),
            ];
            // An optional column the flags asked for holds NaN where the row has no value.
            let opt = |x: Option<f64>| Val::F(x.unwrap_or(f64::NAN));
            if wd {
                v.push(opt(r.grad_reg_l2));
            }
            v.extend([Val::F(r.weights_l2), Val::F(r.dist_prev)]);
            if noise {
                v.push(opt(r.b_noise));
            }
            if hess {
                v.push(opt(r.hessian_top));
            }
            v.extend([Val::F(r.seconds), Val::from(r.path.as_str())]);
            return print_row(format, &columns, &v);
        }
        let opt = |v: Option<f64>, w: usize| v.map(|v| format!("{v:>w$.4e}  ")).unwrap_or_default();
        println!(
            "{:>8}  {:>10.6}  {:>8.4}  {:>11.4e}  {}{:>10.4}  {:>10.4}  {}{}{:>7.1}  {}",
            r.step,
            r.loss,
            r.accuracy,
            r.grad_l2,
            opt(r.grad_reg_l2, 11),
            r.weights_l2,
            r.dist_prev,
            opt(r.b_noise, 10),
            opt(r.hessian_top, 12),
            r.seconds,
            r.path
        )
    };
    match args_follow {
        Some(f) => {
            // The follower holds its results file for its whole life, not only while a round
            // writes: `probe analyze` then knows not to write into it, and no second writer
            // slips in between rounds.
            let _held = probe::store::lock::WriterLock::acquire(&plan.pass.out)?;
            probe::measure::follow::follow(&f, |paths| {
                let mut p = plan.clone();
                p.pass.checkpoints = paths.to_vec();
                probe::measure::grad::run(&p, &mut print).map(|_| ())
            })?
        }
        None => {
            probe::measure::grad::run(&plan, &mut print)?;
        }
    }
    wrote(quiet, &plan.pass.out);
    Ok(())
}
