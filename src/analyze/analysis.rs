//! The analysis of one results file, everything `probe analyze` finds in it: the series
//! statistics ([`super::series`]), the distributional view ([`super::distribution`]) and the edge
//! of stability, gathered by [`analyze`].
use super::distribution::{distribution, Distribution};
use super::results::Results;
use super::series::{edge_of_stability, series_stats, EdgeOfStability, SeriesStats, SERIES};
use std::path::PathBuf;

/// Everything `probe analyze` found in one results file.
pub struct Analysis {
    pub path: PathBuf,
    pub rows: usize,
    pub steps_known: bool,
    pub steps: (i64, i64),
    /// Start of the last half, as a position in step order.
    pub half: usize,
    pub order: Vec<usize>,
    pub series: Vec<SeriesStats>,
    /// Columns absent from the file, with how to get them.
    pub missing: Vec<String>,
    /// Whether `probe grad` finished the file (`complete` = 1); if not, its complete rows
    /// were analysed.
    pub complete: bool,
    pub distribution: Option<Distribution>,
    /// Why the distributional part is missing, when it is.
    pub distribution_skipped: Option<String>,
    pub eos: Option<EdgeOfStability>,
    pub eos_skipped: Option<String>,
    pub params: Vec<String>,
}

/// The analysis of an open results file (nothing written).
pub fn analyze(res: &Results, lr: Option<f64>) -> Analysis {
    let k = res.rows;
    let half = k / 2;
    let steps = res.sorted_steps();
    let mut series = Vec::new();
    let mut missing = Vec::new();
    for &(name, label, how) in SERIES {
        match res.series(name) {
            Some(v) => {
                if let Some(s) = series_stats(name, label, &steps, &res.sorted(&v), half) {
                    series.push(s);
                }
            }
            None if how.is_empty() && name != "accuracy" => missing.push(format!(
                "/{name} (written by every probe grad run: is the file damaged?)"
            )),
            None if name == "accuracy" => {}
            None => {
                let note = format!("/{name} ({how})");
                missing.push(note);
            }
        }
    }
    let (distribution, distribution_skipped) = distribution(res, half);
    let (eos, eos_skipped) = edge_of_stability(res, lr, half);
    Analysis {
        path: res.path.clone(),
        rows: k,
        steps_known: res.steps_known,
        steps: (steps[0] as i64, steps[k - 1] as i64),
        half,
        order: res.order.clone(),
        series,
        missing,
        complete: res.complete,
        distribution,
        distribution_skipped,
        eos,
        eos_skipped,
        params: res.params.clone(),
    }
}

impl Analysis {
    pub fn get(&self, name: &str) -> Option<&SeriesStats> {
        self.series.iter().find(|s| s.name == name)
    }
}
