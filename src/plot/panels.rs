//! The panels `probe plot` can draw (`--panels`), and the figure of some runs: which lines
//! each panel holds, their styles, the legends, and notes on what the files lack.
//!
//! Styles: with one run, each quantity of a panel has its own colour; with several, each run
//! (file) has its colour and marker shape, and the quantities of a panel differ by dash. In
//! both, a panel's quantities are solid, dashed, dotted in the order below, and drawn in that
//! order.
use super::figure::{Dash, Figure, Line, Marker, Panel, Style};
use super::source::{Kind, Run, Q};
use crate::error::input;
use anyhow::Result;
use plotters::style::RGBColor;

/// A panel: its name on the command line, what it shows, and its quantities in style order.
pub struct Spec {
    pub name: &'static str,
    pub about: &'static str,
    pub qs: &'static [Q],
}

pub const PANELS: &[Spec] = &[
    Spec {
        name: "loss",
        about: "full-dataset loss of grad and eval files, minibatch loss of train logs",
        qs: &[Q::Loss, Q::TrainLoss],
    },
    Spec {
        name: "accuracy",
        about: "full-dataset accuracy of grad and eval files",
        qs: &[Q::Accuracy],
    },
    Spec {
        name: "grad",
        about: "full-dataset gradient norm |g| and |g + wd w| of grad files",
        qs: &[Q::Grad, Q::GradReg],
    },
    Spec {
        name: "weights",
        about: "weight norm |w| of grad files",
        qs: &[Q::Weights],
    },
    Spec {
        name: "motion",
        about: "the weights' motion between checkpoints and the W1 distance of their distributions, of grad files",
        qs: &[Q::MoveRms, Q::MoveMean, Q::W1],
    },
    Spec {
        name: "noise",
        about: "minibatch and per-sample gradient variance against |g|^2, of grad --noise files",
        qs: &[Q::BatchVar, Q::SampleVar, Q::GradSq],
    },
    Spec {
        name: "bnoise",
        about: "the gradient-noise scale B_noise, of grad --noise files",
        qs: &[Q::BNoise],
    },
    Spec {
        name: "sharpness",
        about: "top Hessian eigenvalue and directional sharpness against 2/lr, of grad --hessian files",
        qs: &[Q::Top, Q::Sharpness, Q::TwoOverLr],
    },
    Spec {
        name: "lr",
        about: "learning rate per step, of train logs",
        qs: &[Q::Lr],
    },
];

/// The panel names, comma-separated.
pub fn names() -> String {
    PANELS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

/// `--panels`: a comma-separated list of panel names, each once.
pub fn parse(s: &str) -> Result<Vec<&'static str>, String> {
    let mut out = Vec::new();
    for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let Some(p) = PANELS.iter().find(|p| p.name == w) else {
            return Err(format!("unknown panel '{w}'; the panels are: {}", names()));
        };
        if !out.contains(&p.name) {
            out.push(p.name);
        }
    }
    if out.is_empty() {
        return Err(format!("name at least one panel of: {}", names()));
    }
    Ok(out)
}

/// Okabe and Ito's colour-blind-safe palette (yellow left out: too light on white).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];
const MARKERS: [Marker; 5] = [
    Marker::Circle,
    Marker::Square,
    Marker::Triangle,
    Marker::Diamond,
    Marker::Down,
];
const DASHES: [Dash; 3] = [Dash::Solid, Dash::Dashed, Dash::Dotted];
/// Marker radii in points, by the same order: where two quantities coincide (|g| and
/// |g + wd w| at a small wd) the later, smaller marker sits inside the earlier one.
const MARKS: [f64; 3] = [1.8, 1.2, 1.0];
/// Legend swatches of quantities when colour means the run.
const NEUTRAL: RGBColor = RGBColor(70, 70, 70);
/// Markers are drawn on series of at most this many checkpoints.
const MARKED: usize = 60;

/// `c` mixed with white, `keep` of it left: each step's minibatch loss under its mean.
fn light(c: RGBColor, keep: f64) -> RGBColor {
    let m = |v: u8| (v as f64 * keep + 255.0 * (1.0 - keep)).round() as u8;
    RGBColor(m(c.0), m(c.1), m(c.2))
}

/// Whether `q` is a measured series at checkpoints (markers), not a per-step log or a
/// reference line.
fn at_checkpoints(q: Q) -> bool {
    !matches!(q, Q::TrainLoss | Q::Lr | Q::TwoOverLr)
}

/// A quantity's legend label where runs label it differently (|g + 5e-4 w|, |g + 1e-3 w|).
fn generic(q: Q) -> &'static str {
    match q {
        Q::GradReg => "|g + wd w|",
        Q::TrainLoss => "minibatch, running mean",
        Q::MoveRms => "RMS |dw| or |w_k - w_(k-1)|",
        _ => "",
    }
}

/// The panel's titles and y axis labels, from what it shows: each longest first, then
/// shorter ones for narrow panels.
fn titles(spec: &Spec, runs: &[&Run], present: &[Q]) -> (Vec<&'static str>, Vec<&'static str>) {
    match spec.name {
        "loss" => {
            let full = present.contains(&Q::Loss);
            let mini = present.contains(&Q::TrainLoss);
            let title = match (full, mini) {
                (true, true) => vec!["Loss: full dataset and minibatch", "Loss"],
                (false, true) => vec!["Minibatch loss (training log)", "Minibatch loss"],
                _ => vec!["Full-dataset loss", "Loss"],
            };
            let kinds: Vec<&str> = runs.iter().map(|r| r.loss.as_str()).collect();
            let y = if kinds.iter().all(|k| *k == "cross_entropy") {
                vec!["cross-entropy (nats)", "loss (nats)"]
            } else if kinds.iter().all(|k| *k == "mse") {
                vec!["mean squared error", "MSE"]
            } else {
                vec!["loss"]
            };
            (title, y)
        }
        "accuracy" => (
            vec!["Full-dataset accuracy", "Accuracy"],
            vec!["accuracy (%)"],
        ),
        "grad" => (
            vec!["Full-dataset gradient norm", "Gradient norm"],
            vec!["l2 norm"],
        ),
        "weights" => (vec!["Weight norm |w|"], vec!["l2 norm"]),
        "motion" => {
            let per_entry = runs
                .iter()
                .all(|r| r.get(Q::MoveRms).is_none_or(|s| s.label.starts_with("RMS")));
            (
                vec![
                    "Motion between consecutive checkpoints",
                    "Motion between checkpoints",
                    "Weights' motion",
                ],
                if per_entry {
                    vec!["per weight entry", "per entry"]
                } else {
                    vec!["l2 distance"]
                },
            )
        }
        "noise" => (
            vec!["Gradient noise"],
            vec!["squared l2 norm", "squared norm"],
        ),
        "bnoise" => (vec!["Noise scale B_noise", "B_noise"], vec!["samples"]),
        "sharpness" => (vec!["Sharpness"], vec!["eigenvalue"]),
        _ => (vec!["Learning rate"], vec!["learning rate", "lr"]),
    }
}

/// The figure of `runs` (labels set), with the panels `chosen` (in that order) or every
/// panel some run has data for; and notes on what the files lack for the panels drawn or
/// asked for. An asked-for panel no file has data for is an input error.
pub fn figure(
    runs: &[Run],
    chosen: Option<&[&'static str]>,
    title: Option<String>,
) -> Result<(Figure, Vec<String>)> {
    let multi = runs.len() > 1;
    let specs: Vec<&Spec> = match chosen {
        Some(names) => names
            .iter()
            .filter_map(|n| PANELS.iter().find(|p| p.name == *n))
            .collect(),
        None => PANELS.iter().collect(),
    };
    let mut panels = Vec::new();
    let mut drawn: Vec<&str> = Vec::new();
    let mut run_marked = vec![false; runs.len()];
    for spec in &specs {
        let present: Vec<Q> = spec
            .qs
            .iter()
            .copied()
            .filter(|&q| runs.iter().any(|r| r.get(q).is_some()))
            .collect();
        if present.is_empty() {
            if chosen.is_some() {
                return Err(input(format!(
                    "--panels {}: none of the files has data for it ({}: {})",
                    spec.name, spec.name, spec.about
                )));
            }
            continue;
        }
        let contributing: Vec<&Run> = runs
            .iter()
            .filter(|r| present.iter().any(|&q| r.get(q).is_some()))
            .collect();
        let (titles, y_labels) = titles(spec, &contributing, &present);
        let mut lines = Vec::new();
        let mut under = Vec::new();
        for (k, &q) in present.iter().enumerate() {
            for (ri, run) in runs.iter().enumerate() {
                let Some(s) = run.get(q) else { continue };
                let color = if multi {
                    PALETTE[ri % PALETTE.len()]
                } else {
                    PALETTE[k % PALETTE.len()]
                };
                let marked = at_checkpoints(q) && s.points.len() <= MARKED;
                run_marked[ri] |= marked;
                let marker = marked.then(|| {
                    if multi {
                        MARKERS[ri % MARKERS.len()]
                    } else {
                        Marker::Circle
                    }
                });
                let width = if q == Q::TwoOverLr { 0.9 } else { 1.2 };
                lines.push(Line {
                    points: s.points.clone(),
                    style: Style {
                        color,
                        dash: DASHES[k.min(DASHES.len() - 1)],
                        width,
                        marker,
                        mark: MARKS[k.min(MARKS.len() - 1)],
                    },
                });
                if let Some(raw) = &s.raw {
                    under.push(Line {
                        points: raw.clone(),
                        style: Style {
                            color: light(color, 0.3),
                            dash: Dash::Solid,
                            width: 0.5,
                            marker: None,
                            mark: 0.0,
                        },
                    });
                }
            }
        }
        under.extend(lines);
        let legend = if present.len() > 1 {
            present
                .iter()
                .enumerate()
                .map(|(k, &q)| {
                    let labels: Vec<&str> = runs
                        .iter()
                        .filter_map(|r| r.get(q))
                        .map(|s| s.label.as_str())
                        .collect();
                    let label = if labels.iter().all(|l| *l == labels[0]) {
                        labels[0]
                    } else {
                        generic(q)
                    };
                    let marked = at_checkpoints(q)
                        && runs
                            .iter()
                            .filter_map(|r| r.get(q))
                            .any(|s| s.points.len() <= MARKED);
                    let style = Style {
                        color: if multi {
                            NEUTRAL
                        } else {
                            PALETTE[k % PALETTE.len()]
                        },
                        dash: DASHES[k.min(DASHES.len() - 1)],
                        width: if q == Q::TwoOverLr { 0.9 } else { 1.2 },
                        marker: (marked && !multi).then_some(Marker::Circle),
                        mark: MARKS[k.min(MARKS.len() - 1)],
                    };
                    (label.to_string(), style)
                })
                .collect()
        } else {
            Vec::new()
        };
        drawn.push(spec.name);
        panels.push(Panel {
            titles: titles.into_iter().map(String::from).collect(),
            y_labels: y_labels.into_iter().map(String::from).collect(),
            // Accuracy in % reads on a linear axis, however far from 0 it starts.
            log_ok: spec.name != "accuracy",
            lines: under,
            legend,
        });
    }
    if panels.is_empty() {
        return Err(input(format!(
            "{}: nothing to plot",
            runs.iter().map(Run::name).collect::<Vec<_>>().join(", ")
        )));
    }

    let mut notes = Vec::new();
    for run in runs {
        for m in &run.missing {
            let asked = chosen.is_none_or(|c| c.contains(&m.panel));
            if !asked {
                continue;
            }
            let whole = m.what.ends_with("panel");
            let tail = if whole && drawn.contains(&m.panel) {
                format!("left out of {}", m.what)
            } else {
                format!("{} left out", m.what)
            };
            notes.push(format!("{} {}: {tail}", run.name(), m.lacks));
        }
    }

    let runs_legend = if multi {
        runs.iter()
            .enumerate()
            .map(|(ri, r)| {
                (
                    r.label.clone(),
                    Style {
                        color: PALETTE[ri % PALETTE.len()],
                        dash: Dash::Solid,
                        width: 1.2,
                        marker: run_marked[ri].then_some(MARKERS[ri % MARKERS.len()]),
                        mark: MARKS[0],
                    },
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    let known = runs.iter().filter(|r| r.steps_known).count();
    let x_label = if known == runs.len() {
        "training step"
    } else if known == 0 {
        "checkpoint (file row: no steps recorded)"
    } else {
        "training step (file row where none recorded)"
    };
    let fig = Figure {
        title: title.unwrap_or_else(|| default_title(runs)),
        runs: runs_legend,
        x_label: x_label.into(),
        panels,
    };
    Ok((fig, notes))
}

/// One run: "grad.h5: mlp.onnx on fashion-mnist:train[:2000], 11 checkpoints". Several: the
/// model and data they share, if they do.
fn default_title(runs: &[Run]) -> String {
    let on = |r: &Run| {
        let model = if r.model.is_empty() {
            "model"
        } else {
            &r.model
        };
        if r.data.is_empty() {
            model.to_string()
        } else {
            format!("{model} on {}", r.data)
        }
    };
    match runs {
        [r] => {
            let file = r
                .path
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let rows = match r.kind {
                Kind::Train => format!("{} steps", r.rows),
                _ if r.rows == 1 => "1 checkpoint".to_string(),
                _ => format!("{} checkpoints", r.rows),
            };
            format!("{file}:  {}, {rows}", on(r))
        }
        _ if runs.iter().all(|r| on(r) == on(&runs[0])) => on(&runs[0]),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_parse_and_unknown_ones_list_the_names() {
        assert_eq!(parse("loss, grad,loss").unwrap(), ["loss", "grad"]);
        let e = parse("loss,gradient").unwrap_err();
        assert!(e.contains("unknown panel 'gradient'"), "{e}");
        for p in PANELS {
            assert!(e.contains(p.name), "{e}");
        }
        assert!(parse(",").is_err());
    }
}
