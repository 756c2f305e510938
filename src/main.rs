//! The `probe` binary: parses flags, runs the library, prints results and one-line errors.
mod cli;

use clap::Parser;
use cli::{Cli, Command};
use probe::measure::eval::{EvalPlan, EvalRow};
use probe::measure::grad::{Engine as GradEngine, GradPlan, GradRow, OnNonFinite};
use std::process::ExitCode;

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Eval(a) => {
            let c = a.common;
            let plan = EvalPlan {
                model: c.model,
                checkpoints: c.ckpt,
                data: c.data,
                limit: c.limit.map(|l| l as usize),
                batch: c.batch as usize,
                loss: c.loss.into(),
                threads: c
                    .threads
                    .map(|t| t as usize)
                    .unwrap_or_else(probe::runtime::default_threads),
                out: c.out,
                force: c.force,
                quiet: cli.quiet,
                command_line: cli::command_line(),
            };
            println!(
                "{:>8}  {:>12}  {:>9}  {:>8}  {:>7}  checkpoint",
                "step", "loss", "accuracy", "samples", "seconds"
            );
            let print = |r: &EvalRow| {
                println!(
                    "{:>8}  {:>12.6}  {:>9.4}  {:>8}  {:>7.1}  {}",
                    r.step,
                    r.result.loss,
                    r.result.accuracy,
                    r.result.samples,
                    r.result.seconds,
                    r.path
                )
            };
            probe::measure::eval::run(&plan, print)?;
            if !cli.quiet {
                eprintln!("wrote {}", plan.out.display());
            }
            Ok(())
        }
        Command::Grad(a) => {
            let engine = match (a.engine, a.device) {
                (cli::EngineArg::Onnxruntime, cli::DeviceArg::Cpu) => GradEngine::OnnxRuntime,
                (cli::EngineArg::Onnxruntime, cli::DeviceArg::Cuda) => {
                    use clap::CommandFactory;
                    Cli::command()
                        .error(
                            clap::error::ErrorKind::ArgumentConflict,
                            "--device cuda needs --engine torch (ONNX Runtime runs on the CPU here)",
                        )
                        .exit()
                }
                (cli::EngineArg::Torch, cli::DeviceArg::Cpu) => GradEngine::Torch(tch::Device::Cpu),
                (cli::EngineArg::Torch, cli::DeviceArg::Cuda) => {
                    GradEngine::Torch(tch::Device::Cuda(0))
                }
            };
            let c = a.common;
            let plan = GradPlan {
                model: c.model,
                checkpoints: c.ckpt,
                data: c.data,
                limit: c.limit.map(|l| l as usize),
                batch: c.batch as usize,
                loss: c.loss.into(),
                weight_decay: a.weight_decay,
                save_grad: a.save_grad,
                bn_train: a.bn == cli::Bn::Train,
                engine,
                kernels: if a.standard_ops {
                    probe::autodiff::grad::Kernels::Standard
                } else {
                    probe::autodiff::grad::Kernels::ProbeCpu
                },
                shard: a.shard.unwrap_or((0, 1)),
                on_nonfinite: if a.on_nonfinite == cli::NonFinite::Stop {
                    OnNonFinite::Stop
                } else {
                    OnNonFinite::Continue
                },
                noise: a.noise.then(|| probe::measure::noise::NoiseOptions {
                    samples: a.noise_samples.map(|n| n as usize),
                }),
                hessian: a.hessian.then(|| probe::measure::hessian::HessianOptions {
                    samples: a.hessian_samples.map(|n| n as usize),
                    iters: a.hessian_iters,
                    tol: a.hessian_tol,
                    probes: a.hutchinson,
                    params: a.hessian_params.clone(),
                    seed: a.hessian_seed,
                }),
                threads: c
                    .threads
                    .map(|t| t as usize)
                    .unwrap_or_else(probe::runtime::default_threads),
                out: c.out,
                force: c.force,
                quiet: cli.quiet,
                command_line: cli::command_line(),
            };
            let wd = plan.weight_decay.is_some();
            let (noise, hess) = (plan.noise.is_some(), plan.hessian.is_some());
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
            let print = |r: &GradRow| {
                let opt = |v: Option<f64>, w: usize| {
                    v.map(|v| format!("{v:>w$.4e}  ")).unwrap_or_default()
                };
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
            probe::measure::grad::run(&plan, print)?;
            if !cli.quiet {
                eprintln!("wrote {}", plan.out.display());
            }
            Ok(())
        }
        Command::Train(a) => {
            let plan = a.plan(cli.quiet)?;
            println!(
                "{:>8}  {:>8}  {:>10}  {:>10}  {:>7}  checkpoint",
                "step", "epoch", "loss", "lr", "seconds"
            );
            let print = |r: &probe::train::run::CkptRow| {
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
            if !cli.quiet && s.steps() > 0 {
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
        Command::Analyze(a) => {
            let plan = probe::analyze::AnalyzePlan {
                path: a.results,
                lr: a.lr,
                command_line: cli::command_line(),
            };
            let r = probe::analyze::run(&plan)?;
            if !cli.quiet {
                for m in &r.missing {
                    eprintln!("note: {} has no {m}", plan.path.display());
                }
                if !r.complete {
                    eprintln!(
                        "note: {} is not complete (probe grad still running, or stopped): analysed its {} complete rows",
                        plan.path.display(),
                        r.rows
                    );
                }
            }
            for line in r.table() {
                println!("{line}");
            }
            println!();
            for line in r.verdict() {
                println!("{line}");
            }
            if !cli.quiet {
                eprintln!("wrote /analysis into {}", plan.path.display());
            }
            Ok(())
        }
        Command::Plot(a) => {
            let plan = probe::plot::PlotPlan {
                path: a.results,
                out: a.out,
                lr: a.lr,
            };
            let notes = probe::plot::run(&plan)?;
            if !cli.quiet {
                for n in notes {
                    eprintln!("note: {n}");
                }
                eprintln!("wrote {}", plan.out.display());
            }
            Ok(())
        }
        Command::Autodiff(a) => {
            let model = probe::model::Model::load(&a.model)?;
            let loss: probe::autodiff::LossKind = a.loss.into();
            let samples = probe::autodiff::model_grad::synthetic_feeds(&model, loss)?;
            let opts = probe::autodiff::model_grad::GradOptions {
                loss,
                bn_train: a.bn == cli::Bn::Train,
                wrt: None,
                // Its output must pass onnx.checker and run anywhere: standard ops only.
                kernels: probe::autodiff::grad::Kernels::Standard,
            };
            let (proto, what, n) = if a.hvp {
                let h = probe::autodiff::hvp::hvp_graph(&model, &opts, &samples)?;
                let n = h.products.len();
                (h.grad.proto, "Hessian-vector products", n)
            } else {
                let g = probe::autodiff::model_grad::grad_graph(&model, &opts, &samples)?;
                let n = g.grads.len();
                (g.proto, "gradients", n)
            };
            let bytes = protobuf::Message::write_to_bytes(&proto)?;
            std::fs::write(&a.out, bytes)
                .map_err(|e| probe::error::output(format!("{}: {e}", a.out.display())))?;
            eprintln!(
                "wrote {}: {} nodes ({} forward), {what} of {n} parameters",
                a.out.display(),
                proto.graph.node.len(),
                model.graph().node.len(),
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    // A closed stdout (`probe ... | head -2`) ends probe the way it ends other Unix tools: by
    // SIGPIPE's default action, quietly. Rust starts programs with SIGPIPE ignored, which turns
    // the write into an EPIPE error and println! into a panic (exit 101). The signal is raised
    // by a write to stdout, which probe makes between results rows, never inside one.
    // SAFETY: setting a signal's disposition to SIG_DFL before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Before any thread starts: SIGINT/SIGTERM end probe with one line (see probe::interrupt).
    probe::interrupt::install();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            // One line, the whole chain: "probe: error: <file>: <problem>: <cause>".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("probe: error: {msg}");
            probe::error::fault_of(&e)
                .map(|f| f.exit_code())
                .unwrap_or(1) as u8
        }
    };
    quick_exit(code)
}

/// Ends the process without running the C++ static destructors of libtorch and ONNX Runtime
/// (~80 ms of a run that takes a few seconds; strace shows the time between the last thread's
/// exit and exit_group). Everything probe writes is complete by now: every results file is
/// closed at each commit (crate::store::atomic), and stdout and stderr are flushed here. HDF5's
/// own clean-up (H5close) is not run: after a write that failed (a full disk) it crashes on the
/// half-closed file's leftovers (seen: SIGSEGV in H5D_close), and there is nothing left to flush.
fn quick_exit(code: u8) -> ExitCode {
    use std::io::Write;
    extern "C" {
        fn _exit(code: i32) -> !;
    }
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process, nothing after it runs.
    unsafe { _exit(code as i32) }
}
