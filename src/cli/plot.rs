//! `probe plot`: its flags, their plan, and the notes on what the figure leaves out.
use super::flags::{positive, wrote, Conflict};
use clap::Args;
use probe::plot::{panels, Format, PlotPlan};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Results files: of `probe grad`, `probe eval`, or a `probe train` log (DIR/train.h5).
    /// Several are drawn over each other, one colour and marker per file.
    #[arg(value_name = "R.h5", required = true, num_args = 1..)]
    pub results: Vec<PathBuf>,
    /// The figure; its extension picks the format: .png, .svg or .pdf (vector, Helvetica).
    #[arg(short, long, value_name = "FIG.png|FIG.svg|FIG.pdf", value_parser = figure_path)]
    pub out: PathBuf,
    /// A file's name in the legend, once per file in their order (default: the file's stem;
    /// for DIR/train.h5, DIR).
    #[arg(long = "label", value_name = "NAME")]
    pub labels: Vec<String>,
    /// The panels to draw, comma-separated, in this order (default: every one some file has
    /// data for).
    #[arg(long, value_name = "P,P,...", value_parser = panel_list, long_help = panels_help())]
    pub panels: Option<PanelList>,
    /// Width of the figure in inches: 6.75 spans a page of two columns, 3.25 one column.
    #[arg(long, value_name = "IN", default_value_t = 6.75, value_parser = inches, allow_hyphen_values = true)]
    pub width: f64,
    /// Height of the figure in inches (default: from the width and the panels).
    #[arg(long, value_name = "IN", value_parser = inches, allow_hyphen_values = true)]
    pub height: Option<f64>,
    /// Font size in points at the figure's printed width (tick labels and legends at 7/8).
    #[arg(long, value_name = "PT", default_value_t = 8.0, value_parser = font_size, allow_hyphen_values = true)]
    pub font_size: f64,
    /// Panels per row (default: up to 3, each at least 16 font sizes wide: one per row at
    /// 3.25 in and 8 pt).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=9))]
    pub columns: Option<u32>,
    /// Pixels per inch of a PNG (a 6.75 in figure at 200 is 1350 pixels wide).
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u32).range(30..=1200))]
    pub dpi: u32,
    /// The figure's title (default: the file, model and data for one file; the model and data
    /// several share); --title '' for none.
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
    /// Learning rate for the 2/lr line (default: /checkpoints/lr).
    #[arg(long, value_parser = positive, allow_hyphen_values = true)]
    pub lr: Option<f64>,
    /// Accept a data shard of `probe grad --data-shard` (sums over part of the data) on its
    /// own; without it such a file is refused: merge the shards first (`probe merge`).
    #[arg(long)]
    pub allow_partial: bool,
}

/// The `--panels` list, checked.
#[derive(Debug, Clone)]
pub struct PanelList(Vec<&'static str>);

fn panel_list(s: &str) -> Result<PanelList, String> {
    panels::parse(s).map(PanelList)
}

fn panels_help() -> String {
    let mut h = String::from(
        "The panels to draw, comma-separated, in this order (default: every one some file has \
         data for). The panels:",
    );
    for p in panels::PANELS {
        h.push_str(&format!("\n  {:<10} {}", p.name, p.about));
    }
    h
}

fn figure_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    match Format::of(&p) {
        Some(_) => Ok(p),
        None => Err("the figure's name must end in .png, .svg or .pdf (its format)".into()),
    }
}

fn inches(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.5..=50.0).contains(&v) => Ok(v),
        _ => Err("needs a size in inches from 0.5 to 50".into()),
    }
}

fn font_size(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (4.0..=30.0).contains(&v) => Ok(v),
        _ => Err("needs a size in points from 4 to 30".into()),
    }
}

/// Draws the figure; notes on stderr name the panels left out.
pub fn run(args: PlotArgs, quiet: bool) -> anyhow::Result<()> {
    if args.labels.len() > args.results.len() {
        return Err(Conflict("--label is given more times than there are results files").into());
    }
    let px = |inches: f64| inches * args.dpi as f64;
    let format = Format::of(&args.out).expect("checked by figure_path");
    if format == Format::Png
        && (px(args.width) > 20_000.0 || px(args.height.unwrap_or(0.0)) > 20_000.0)
    {
        return Err(Conflict("--width or --height times --dpi is over 20000 pixels").into());
    }
    let plan = PlotPlan {
        paths: args.results,
        labels: args.labels,
        out: args.out,
        format,
        panels: args.panels.map(|p| p.0),
        width: args.width,
        height: args.height,
        dpi: args.dpi as f64,
        font: args.font_size,
        columns: args.columns.map(|c| c as usize),
        title: args.title,
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
