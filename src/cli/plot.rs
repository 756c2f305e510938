//! `probe plot`: its flags, their plan, and the notes on what the figure leaves out.
use super::flags::{positive, wrote};
use clap::Args;
use probe::plot::PlotPlan;
use std::path::PathBuf;

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
    /// Accept a data shard of `probe grad --data-shard` (sums over part of the data) on its
    /// own; without it such a file is refused: merge the shards first (`probe merge`).
    #[arg(long)]
    pub allow_partial: bool,
}

/// Draws the figure; notes on stderr name the panels left out.
pub fn run(args: PlotArgs, quiet: bool) -> anyhow::Result<()> {
    let plan = PlotPlan {
        path: args.results,
        out: args.out,
        lr: args.lr,
        allow_partial: args.allow_partial,
    };
    let notes = probe::plot::run(&plan)?;
    if !quiet {
        for n in notes {
            eprintln!("note: {n}");
        }
    }
    wrote(quiet, &plan.out);
    Ok(())
}
