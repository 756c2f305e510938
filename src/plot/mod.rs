//! `probe plot`: a figure of one or more results files against the training step, sized for a
//! paper. Files of `probe grad` give the full-dataset loss, gradient norm (with |g + wd w|) and
//! accuracy (the paper's Figure 1), then the weight norm, the weights' motion between
//! checkpoints against the Wasserstein distance of their distributions, gradient noise, and
//! sharpness with the 2/lr line; files of `probe eval` the loss and accuracy; `probe train`
//! logs the minibatch loss and learning rate per step. Several files are drawn over each
//! other, one colour and marker shape per file, named in a legend under the title.
//!
//! The way through: [`source`] reads each file into a `Run` of series; [`panels`] picks the
//! panels (`--panels`, or every one some file has data for) and styles the lines into a
//! [`figure::Figure`]; [`draw`] lays it out in points (with `pen`'s primitives and `legend`'s
//! placement) and draws it through plotters on the backend the output's extension picks: PNG
//! ([`raster`]: plotters' bitmap, supersampled, DejaVu Sans embedded in the binary, so no system
//! font lookup happens), or PDF and SVG from [`vector`]'s page of vector paths and text
//! (Helvetica measured with its AFM widths in the PDF, DejaVu Sans in the SVG), written by
//! [`pdf`] and [`svg`]. [`axis`] places the ticks.
//!
//! Panels and lines a file cannot give are left out and named in the returned notes.
pub mod axis;
pub mod draw;
pub mod figure;
mod legend;
pub mod panels;
pub mod pdf;
mod pen;
pub mod raster;
pub mod source;
pub mod svg;
pub mod vector;

use crate::error::{input, output};
use anyhow::Result;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// The figure's file format, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
    Pdf,
}

impl Format {
    pub fn of(path: &Path) -> Option<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("png") => Some(Format::Png),
            Some("svg") => Some(Format::Svg),
            Some("pdf") => Some(Format::Pdf),
            _ => None,
        }
    }
}

pub struct PlotPlan {
    /// Results files, drawn in this order (later ones on top).
    pub paths: Vec<PathBuf>,
    /// Legend names of the first files (`--label`); the others are named by their stems.
    pub labels: Vec<String>,
    pub out: PathBuf,
    pub format: Format,
    /// `--panels`, in order; `None`: every panel some file has data for.
    pub panels: Option<Vec<&'static str>>,
    /// Page width and (optional) height in inches.
    pub width: f64,
    pub height: Option<f64>,
    /// PNG pixels per inch.
    pub dpi: f64,
    /// Base font size in points (panel titles, axis labels; ticks and legends at 7/8).
    pub font: f64,
    /// Panels per row (`--columns`); `None`: chosen from the width.
    pub columns: Option<usize>,
    /// `--title`; `None`: made from the files.
    pub title: Option<String>,
    /// Learning rate for the 2/lr line, overriding `/checkpoints/lr`.
    pub lr: Option<f64>,
    /// Accept a lone data shard (`--allow-partial`).
    pub allow_partial: bool,
}

/// DejaVu Sans 2.37 (Bitstream Vera license, `assets/fonts/LICENSE`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid font file checked in beside this code; failing here is a bug.
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("assets/fonts/DejaVuSans.ttf is not a usable font"));
    });
}

/// Backend units per point in the PDF and SVG (coordinates are whole units: 0.1 pt).
const VECTOR_UNITS_PER_PT: f64 = 10.0;

/// Legend names: `--label`s first, then file stems; a train log (`DIR/train.h5`) is named by
/// its folder; stems two files share get their folder in front ("a/grad", "b/grad").
fn labels(paths: &[PathBuf], given: &[String], kinds: &[source::Kind]) -> Vec<String> {
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    let folder = |p: &Path| {
        p.parent()
            .and_then(|d| d.file_name())
            .map(|s| s.to_string_lossy().to_string())
    };
    let mut out: Vec<String> = paths
        .iter()
        .zip(kinds)
        .map(|(p, k)| match (k, folder(p)) {
            (source::Kind::Train, Some(d)) if stem(p) == "train" => format!("{d} (train log)"),
            _ => stem(p),
        })
        .collect();
    let stems = out.clone();
    for (i, o) in out.iter_mut().enumerate() {
        let shared = stems.iter().filter(|s| **s == stems[i]).count() > 1;
        if let (true, Some(d)) = (shared, folder(&paths[i])) {
            *o = format!("{d}/{o}");
        }
    }
    for (o, g) in out.iter_mut().zip(given) {
        o.clone_from(g);
    }
    out
}

/// Draws the figure; returns notes on what was left out.
pub fn run(plan: &PlotPlan) -> Result<Vec<String>> {
    if let Some(dir) = plan.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(input(format!(
                "{}: the output folder {} does not exist",
                plan.out.display(),
                dir.display()
            )));
        }
    }
    let mut runs = plan
        .paths
        .iter()
        .map(|p| source::open(p, plan.lr, plan.allow_partial))
        .collect::<Result<Vec<_>>>()?;
    let kinds: Vec<source::Kind> = runs.iter().map(|r| r.kind).collect();
    for (r, l) in runs
        .iter_mut()
        .zip(labels(&plan.paths, &plan.labels, &kinds))
    {
        r.label = l;
    }
    let (fig, notes) = panels::figure(&runs, plan.panels.as_deref(), plan.title.clone())?;
    register_font();
    let page = figure::PageSize {
        width: plan.width * 72.0,
        height: plan.height.map(|h| h * 72.0),
        font: plan.font,
        columns: plan.columns,
    };
    let height = draw::page_height(&fig, &page);
    let err = |e: String| output(format!("{}: drawing: {e}", plan.out.display()));
    match plan.format {
        Format::Png => {
            let u = plan.dpi / 72.0;
            let size = ((page.width * u).round() as u32, (height * u).round() as u32);
            let s = raster::SUPERSAMPLE as f64;
            raster::png(&plan.out, size, plan.dpi, FONT, |root| {
                draw::draw(root, &fig, &page, u * s)
            })
            .map_err(err)?;
        }
        Format::Svg | Format::Pdf => {
            let u = VECTOR_UNITS_PER_PT;
            let mut p = vector::Page::new(
                ((page.width * u).round() as u32, (height * u).round() as u32),
                u,
            );
            {
                let metrics = if plan.format == Format::Pdf {
                    vector::Metrics::Helvetica
                } else {
                    let font = ab_glyph::FontRef::try_from_slice(FONT)
                        .map_err(|e| err(format!("the embedded font: {e}")))?;
                    vector::Metrics::Font(Box::new(font))
                };
                let root = vector::VectorBackend::new(&mut p, metrics).into_drawing_area();
                draw::draw(&root, &fig, &page, u).map_err(err)?;
            }
            let title = if fig.title.is_empty() {
                runs.iter()
                    .map(|r| r.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                fig.title.clone()
            };
            let bytes = if plan.format == Format::Pdf {
                pdf::write(&p, &title)
            } else {
                svg::write(&p, &title).into_bytes()
            };
            std::fs::write(&plan.out, bytes)
                .map_err(|e| output(format!("{}: {e}", plan.out.display())))?;
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::source::Kind;
    use super::*;

    #[test]
    fn labels_are_stems_folders_for_train_logs_and_unique() {
        let p = |s: &str| PathBuf::from(s);
        let got = labels(
            &[
                p("runs/a/grad.h5"),
                p("runs/b/grad.h5"),
                p("runs/a/train.h5"),
                p("x/eval.h5"),
            ],
            &[],
            &[Kind::Grad, Kind::Grad, Kind::Train, Kind::Eval],
        );
        assert_eq!(got, ["a/grad", "b/grad", "a (train log)", "eval"]);
        let got = labels(
            &[p("a.h5"), p("b.h5")],
            &["SGD".into()],
            &[Kind::Grad, Kind::Grad],
        );
        assert_eq!(got, ["SGD", "b"]);
    }
}
