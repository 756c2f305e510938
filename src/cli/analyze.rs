//! `probe analyze`: its flags, their plan, and the printed table, verdict and notes.
use super::flags::{command_line, positive};
use super::format::{print_header, print_row, Format, Val};
use clap::Args;
use probe::analyze::{AnalyzePlan, Stored};
use probe::store::analysis::{Field, Series};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// The results file of `probe grad` (the analysis is written into it, under /analysis;
    /// while another probe writes the file, e.g. `probe grad --follow`, it is only read and a
    /// note says so).
    #[arg(value_name = "R.h5")]
    pub results: PathBuf,
    /// Learning rate for the edge-of-stability comparison (default: /checkpoints/lr).
    #[arg(long, value_parser = positive, allow_hyphen_values = true)]
    pub lr: Option<f64>,
    /// Accept a data shard of `probe grad --data-shard` (sums over part of the data) on its
    /// own; without it such a file is refused: merge the shards first (`probe merge`).
    #[arg(long)]
    pub allow_partial: bool,
    /// What stdout gets: `table` (the series table and the verdict), or the series alone, one
    /// row each with the columns of /analysis/series (name, half_n, ..., kpss_reject_5pct):
    /// `csv` (with a header line) or `json` (one object per line); the verdict then goes to
    /// stderr (it is also the /analysis attribute `verdict`).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Analyses the file, prints the table and the verdict on stdout (csv/json: the series on
/// stdout, the verdict on stderr) and the notes on stderr.
pub fn run(args: AnalyzeArgs, quiet: bool) -> anyhow::Result<()> {
    let plan = AnalyzePlan {
        path: args.results,
        lr: args.lr,
        allow_partial: args.allow_partial,
        command_line: command_line(),
    };
    let (r, stored) = probe::analyze::run(&plan)?;
    let path = plan.path.display();
    if !quiet {
        for m in &r.missing {
            eprintln!("note: {path} has no {m}");
        }
        if !r.complete {
            eprintln!(
                "note: {path} is not complete (probe grad still running, or stopped): analysed its {} complete rows",
                r.rows
            );
        }
    }
    if args.format == Format::Table {
        for line in r.table() {
            println!("{line}");
        }
        println!();
        for line in r.verdict() {
            println!("{line}");
        }
    } else {
        let mut columns = vec!["name"];
        columns.extend(Series::FIELDS);
        print_header(args.format, &columns);
        for s in r.records() {
            let mut v = vec![Val::S(s.name.clone())];
            v.extend(s.values().iter().map(|f| match *f {
                Field::I64(i) => Val::I(i),
                Field::F64(x) => Val::F(x),
            }));
            print_row(args.format, &columns, &v);
        }
        if !quiet {
            for line in r.verdict() {
                eprintln!("{line}");
            }
        }
    }
    match stored {
        Stored::Written if !quiet => eprintln!("wrote /analysis into {path}"),
        Stored::Written => {}
        // Said even with --quiet: the file lacks what a run without a writer would store.
        Stored::Busy(holder) => eprintln!(
            "note: {path} is being written by another probe ({holder}): /analysis not written into it (the analysis above is of its {} complete rows); run probe analyze again once that probe has ended to store it",
            r.rows
        ),
    }
    Ok(())
}
