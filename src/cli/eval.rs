//! `probe eval`: its flags, their plan, and the table of one row per checkpoint.
use super::flags::{command_line, wrote, Common};
use clap::Args;
use probe::measure::eval::{EvalPlan, EvalRow};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: Common,
}

impl EvalArgs {
    /// The checked plan.
    pub fn plan(self, quiet: bool) -> EvalPlan {
        let c = self.common;
        EvalPlan {
            model: c.model,
            checkpoints: c.ckpt,
            ckpt_names: probe::model::CheckpointOptions {
                strip_prefix: c.strip_prefix,
            },
            data: c.data,
            limit: c.limit.map(|l| l as usize),
            batch: c.batch as usize,
            loss: c.loss.into(),
            threads: c.threads.count(),
            out: c.out,
            force: c.force,
            quiet,
            command_line: command_line(),
        }
    }
}

/// Evaluates every checkpoint, printing a row as each completes.
pub fn run(args: EvalArgs, quiet: bool) -> anyhow::Result<()> {
    let plan = args.plan(quiet);
    println!(
        "{:>8}  {:>12}  {:>9}  {:>8}  {:>7}  checkpoint",
        "step", "loss", "accuracy", "samples", "seconds"
    );
    let print = |r: &EvalRow| {
        println!(
            "{:>8}  {:>12.6}  {:>9.4}  {:>8}  {:>7.1}  {}",
            r.step, r.result.loss, r.result.accuracy, r.result.samples, r.result.seconds, r.path
        )
    };
    probe::measure::eval::run(&plan, print)?;
    wrote(quiet, &plan.out);
    Ok(())
}
