//! `probe eval`: its flags, their plan, and the table of one row per checkpoint.
use super::flags::{wrote, Common};
use clap::Args;
use probe::measure::eval::EvalRow;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: Common,
}

/// Evaluates every checkpoint, printing a row as each completes.
pub fn run(args: EvalArgs, quiet: bool) -> anyhow::Result<()> {
    let plan = args.common.pass(quiet);
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
