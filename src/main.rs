//! The `probe` binary: parses flags, runs the library, prints results and one-line errors.
mod cli;

use clap::Parser;
use cli::{Cli, Command};
use probe::measure::eval::{EvalPlan, EvalRow};
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
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole chain: "probe: error: <file>: <problem>: <cause>".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("probe: error: {msg}");
            ExitCode::from(
                probe::error::fault_of(&e)
                    .map(|f| f.exit_code())
                    .unwrap_or(1) as u8,
            )
        }
    }
}
