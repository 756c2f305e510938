//! `probe merge`: its flags, their plan, and the table of the merged rows.
use super::flags::{command_line, wrote};
use clap::Args;
use probe::measure::merge::{MergePlan, MergedRow};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Results files of one run of `probe grad` or `probe eval`: data shards (--data-shard), all
    /// n of them for each checkpoint, and/or files of whole rows (--shard), in any order.
    #[arg(value_name = "FILES", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// The merged results file (appended to if it holds earlier rows of the same run).
    #[arg(short, long, value_name = "R.h5")]
    pub out: PathBuf,
    /// Replace --out if it holds results of another run.
    #[arg(long)]
    pub force: bool,
}

/// Merges the files, printing a row as each is written.
pub fn run(args: MergeArgs, quiet: bool) -> anyhow::Result<()> {
    let plan = MergePlan {
        files: args.files,
        out: args.out,
        force: args.force,
        quiet,
        command_line: command_line(),
    };
    println!(
        "{:>8}  {:>10}  {:>8}  {:>11}  checkpoint (from)",
        "step", "loss", "accuracy", "|grad|"
    );
    let print = |r: &MergedRow| {
        let g = r
            .grad_l2
            .map(|g| format!("{g:>11.4e}"))
            .unwrap_or(format!("{:>11}", "-"));
        println!(
            "{:>8}  {:>10.6}  {:>8.4}  {g}  {} ({})",
            r.step, r.loss, r.accuracy, r.path, r.from
        )
    };
    probe::measure::merge::run(&plan, print)?;
    wrote(quiet, &plan.out);
    Ok(())
}
