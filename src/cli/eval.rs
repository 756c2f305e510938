//! `probe eval`: its flags, their plan, and the rows it prints, one per checkpoint (`--format`).
use super::flags::{wrote, Common};
use super::format::{print_header, print_row, Format, Val};
use clap::Args;
use probe::measure::eval::EvalRow;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: Common,
    /// What stdout gets: `table`, `csv` (with a header line) or `json` (one object per line);
    /// csv and json name the columns step, loss, accuracy, samples, seconds, checkpoint.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// The columns of `--format csv|json`.
const COLUMNS: [&str; 6] = [
    "step",
    "loss",
    "accuracy",
    "samples",
    "seconds",
    "checkpoint",
];

/// Evaluates every checkpoint, printing a row as each completes.
pub fn run(args: EvalArgs, quiet: bool) -> anyhow::Result<()> {
    let format = args.format;
    let follow = args.common.follow_options(quiet)?;
    let plan = args.common.pass(quiet);
    match format {
        Format::Table => println!(
            "{:>8}  {:>12}  {:>9}  {:>8}  {:>7}  checkpoint",
            "step", "loss", "accuracy", "samples", "seconds"
        ),
        _ => print_header(format, &COLUMNS),
    }
    let mut print = |r: &EvalRow| match format {
        Format::Table => println!(
            "{:>8}  {:>12.6}  {:>9.4}  {:>8}  {:>7.1}  {}",
            r.step, r.result.loss, r.result.accuracy, r.result.samples, r.result.seconds, r.path
        ),
        _ => print_row(
            format,
            &COLUMNS,
            &[
                Val::I(r.step),
                Val::F(r.result.loss),
                Val::F(r.result.accuracy),
                Val::from(r.result.samples),
                Val::F(r.result.seconds),
                Val::from(r.path.as_str()),
            ],
        ),
    };
    match follow {
        Some(f) => {
            // The follower holds its results file for its whole life, not only while a round
            // writes: `probe analyze` then knows not to write into it, and no second writer
            // slips in between rounds.
            let _held = probe::store::lock::WriterLock::acquire(&plan.out)?;
            probe::measure::follow::follow(&f, |paths| {
                let mut p = plan.clone();
                p.checkpoints = paths.to_vec();
                probe::measure::eval::run(&p, &mut print).map(|_| ())
            })?
        }
        None => {
            probe::measure::eval::run(&plan, &mut print)?;
        }
    }
    wrote(quiet, &plan.out);
    Ok(())
}
