//! The `/analysis` group `probe analyze` writes into a `probe grad` results file: its layout,
//! and the one function that writes it (documented in full in `docs/schema.md`, "The analysis
//! written by `probe analyze`").
//!
//! | path | shape, type |
//! |---|---|
//! | `/analysis` attributes | `probe_version`, `command_line`, `rows`, `half_start`, `missing`, `verdict` |
//! | `/analysis/order` | [K] i64, file rows in step order |
//! | `/analysis/series/<column>` | [S] per series, the fields of [`Series`] in their order |
//! | `/analysis/distribution/{w1_prev, mean_abs_move, ratio}` | [K] f64 ([`Motion`]) |
//! | `/analysis/distribution/ratio_per_param` | [K, P] f64 |
//! | `/analysis/distribution/windows/{name, bounds, w1, rms, w1_rel, w1_per_param}` | [W], [W, 4], [W, P] ([`Window`]) |
//! | `/analysis/edge_of_stability/{lr, ratio}` | [K] f64, attribute `lr_source` |
//!
//! The group is replaced whole on every run, under the writer lock the caller holds
//! ([`super::lock`]) and by one atomic commit ([`super::atomic`]), so a kill leaves either the
//! previous analysis or the new one.
use super::atomic::Shadowed;
use super::dims::{coordinate, detach, label_analysis};
use super::{write_i64_attr, write_str_attr};
use crate::error::output;
use anyhow::Result;
use hdf5::types::VarLenUnicode;
use ndarray::Array2;
use std::path::Path;

/// Everything under `/analysis`.
pub struct Analysis<'a> {
    pub command_line: &'a str,
    /// Checkpoints analysed, and the position in step order where the last half starts.
    pub rows: usize,
    pub half_start: usize,
    /// Absent columns with the flag that writes each, `; `-separated.
    pub missing: String,
    /// The printed verdict, one paragraph per line.
    pub verdict: String,
    pub order: &'a [usize],
    pub series: Vec<Series>,
    pub distribution: Option<Distribution<'a>>,
    pub edge_of_stability: Option<EdgeOfStability<'a>>,
}

/// One entry of every `/analysis/series/<column>`: one series over the last half.
pub struct Series {
    pub name: String,
    pub half_n: usize,
    pub half_step_first: i64,
    pub half_step_last: i64,
    pub first: f64,
    pub last: f64,
    pub half_start: f64,
    pub half_mean: f64,
    pub slope: f64,
    pub slope_se: f64,
    pub slope_lo: f64,
    pub slope_hi: f64,
    pub intercept: f64,
    pub rel_change: f64,
    pub fit_change: f64,
    pub fit_change_lo: f64,
    pub fit_change_hi: f64,
    pub mean_abs_change: f64,
    pub mean_abs_change_rel: f64,
    pub kpss_stat: f64,
    pub kpss_p: f64,
    pub kpss_lags: usize,
    /// 1 rejected, 0 not, -1 not computed.
    pub kpss_reject_5pct: i64,
}

/// One value of a [`Series`] field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field {
    I64(i64),
    F64(f64),
}

impl Series {
    /// The fields after `name`, in the order of `/analysis/series/<field>` and of the columns
    /// `probe analyze --format csv|json` prints.
    pub const FIELDS: [&'static str; 22] = [
        "half_n",
        "half_step_first",
        "half_step_last",
        "first",
        "last",
        "half_start",
        "half_mean",
        "slope",
        "slope_se",
        "slope_lo",
        "slope_hi",
        "intercept",
        "rel_change",
        "fit_change",
        "fit_change_lo",
        "fit_change_hi",
        "mean_abs_change",
        "mean_abs_change_rel",
        "kpss_stat",
        "kpss_p",
        "kpss_lags",
        "kpss_reject_5pct",
    ];
    /// The fields stored as i64 (the others as f64).
    const INTEGER: [&'static str; 5] = [
        "half_n",
        "half_step_first",
        "half_step_last",
        "kpss_lags",
        "kpss_reject_5pct",
    ];

    /// The values of [`Series::FIELDS`].
    pub fn values(&self) -> [Field; 22] {
        use Field::{F64, I64};
        [
            I64(self.half_n as i64),
            I64(self.half_step_first),
            I64(self.half_step_last),
            F64(self.first),
            F64(self.last),
            F64(self.half_start),
            F64(self.half_mean),
            F64(self.slope),
            F64(self.slope_se),
            F64(self.slope_lo),
            F64(self.slope_hi),
            F64(self.intercept),
            F64(self.rel_change),
            F64(self.fit_change),
            F64(self.fit_change_lo),
            F64(self.fit_change_hi),
            F64(self.mean_abs_change),
            F64(self.mean_abs_change_rel),
            F64(self.kpss_stat),
            F64(self.kpss_p),
            I64(self.kpss_lags as i64),
            I64(self.kpss_reject_5pct),
        ]
    }
}

/// `/analysis/distribution`.
pub struct Distribution<'a> {
    pub by_entries: bool,
    pub notes: String,
    pub motion: Option<Motion<'a>>,
    /// `windows/` is written only when this is not empty.
    pub windows: Vec<Window<'a>>,
}

/// The per-row motion columns and the attributes over the last half.
pub struct Motion<'a> {
    pub w1_prev: &'a [f64],
    pub mean_abs_move: &'a [f64],
    pub ratio: &'a [f64],
    pub ratio_per_param: Option<&'a Array2<f64>>,
    pub half_ratio: f64,
    pub half_path_rel: f64,
    pub quantile_w1_error: f64,
}

/// One row of `/analysis/distribution/windows/`.
pub struct Window<'a> {
    pub name: &'a str,
    /// Positions in step order: A = [a0, a1), B = [b0, b1).
    pub bounds: [usize; 4],
    pub w1: f64,
    pub rms: f64,
    pub w1_per_param: &'a [f64],
}

/// `/analysis/edge_of_stability`.
pub struct EdgeOfStability<'a> {
    pub lr_source: &'a str,
    pub lr: &'a [f64],
    pub ratio: &'a [f64],
}

/// Replaces `/analysis` in the results file at `path` by `a`, in one atomic commit. The caller
/// holds the file's writer lock.
pub fn write(path: &Path, a: &Analysis) -> Result<()> {
    let mut file = Shadowed::existing(path);
    file.commit("writing /analysis", &|f: &hdf5::File| {
        write_group(f, a).map_err(|e| output(format!("{}: writing /analysis: {e}", path.display())))
    })?;
    file.close();
    Ok(())
}

fn strings<'s>(v: impl Iterator<Item = &'s str>) -> Vec<VarLenUnicode> {
    v.map(|s| s.parse().unwrap_or_default()).collect()
}

fn f64_attr(loc: &hdf5::Location, name: &str, value: f64) -> hdf5::Result<()> {
    loc.new_attr::<f64>().create(name)?.write_scalar(&value)
}

fn write_group(f: &hdf5::File, a: &Analysis) -> hdf5::Result<()> {
    if f.link_exists("analysis") {
        // Its datasets are attached to /step and /param: they must forget them first.
        let mut all = Vec::new();
        super::datasets(&f.group("analysis")?, "", &mut all)?;
        detach(f, all.iter().map(|(_, ds)| ds))?;
        f.unlink("analysis")?;
    }
    let g = f.create_group("analysis")?;
    write_str_attr(&g, "probe_version", env!("CARGO_PKG_VERSION"))?;
    write_str_attr(&g, "command_line", a.command_line)?;
    write_i64_attr(&g, "rows", a.rows as i64)?;
    write_i64_attr(&g, "half_start", a.half_start as i64)?;
    write_str_attr(&g, "missing", &a.missing)?;
    write_str_attr(&g, "verdict", &a.verdict)?;
    let order: Vec<i64> = a.order.iter().map(|&r| r as i64).collect();
    let ds = g.new_dataset_builder().with_data(&order).create("order")?;
    label_analysis(f, &g, &ds, &["step"])?;
    write_series(f, &g.create_group("series")?, &a.series)?;
    if let Some(d) = &a.distribution {
        write_distribution(f, &g.create_group("distribution")?, d)?;
    }
    if let Some(e) = &a.edge_of_stability {
        let eg = g.create_group("edge_of_stability")?;
        write_str_attr(&eg, "lr_source", e.lr_source)?;
        for (name, v) in [("lr", e.lr), ("ratio", e.ratio)] {
            let ds = eg.new_dataset_builder().with_data(v).create(name)?;
            label_analysis(f, &eg, &ds, &["step"])?;
        }
    }
    f.flush()
}

/// `/analysis/series`: one entry per series in each dataset, `name` the coordinate.
fn write_series(file: &hdf5::File, s: &hdf5::Group, series: &[Series]) -> hdf5::Result<()> {
    let names = strings(series.iter().map(|x| x.name.as_str()));
    coordinate(
        &s.new_dataset_builder().with_data(&names).create("name")?,
        "name",
    )?;
    let col = |name: &str, f: &dyn Fn(&Series) -> f64| -> hdf5::Result<()> {
        let v: Vec<f64> = series.iter().map(f).collect();
        let ds = s.new_dataset_builder().with_data(&v).create(name)?;
        label_analysis(file, s, &ds, &["name"])
    };
    let icol = |name: &str, f: &dyn Fn(&Series) -> i64| -> hdf5::Result<()> {
        let v: Vec<i64> = series.iter().map(f).collect();
        let ds = s.new_dataset_builder().with_data(&v).create(name)?;
        label_analysis(file, s, &ds, &["name"])
    };
    for (j, field) in Series::FIELDS.iter().enumerate() {
        let value = |x: &Series| x.values()[j];
        if Series::INTEGER.contains(field) {
            icol(field, &|x| match value(x) {
                Field::I64(v) => v,
                Field::F64(v) => v as i64,
            })?;
        } else {
            col(field, &|x| match value(x) {
                Field::I64(v) => v as f64,
                Field::F64(v) => v,
            })?;
        }
    }
    Ok(())
}

fn write_distribution(file: &hdf5::File, dg: &hdf5::Group, d: &Distribution) -> hdf5::Result<()> {
    write_i64_attr(dg, "by_entries", d.by_entries as i64)?;
    write_str_attr(dg, "notes", &d.notes)?;
    if let Some(m) = &d.motion {
        for (name, v) in [
            ("w1_prev", m.w1_prev),
            ("mean_abs_move", m.mean_abs_move),
            ("ratio", m.ratio),
        ] {
            let ds = dg.new_dataset_builder().with_data(v).create(name)?;
            label_analysis(file, dg, &ds, &["step"])?;
        }
        if let Some(r) = m.ratio_per_param {
            let ds = dg
                .new_dataset_builder()
                .with_data(r)
                .create("ratio_per_param")?;
            label_analysis(file, dg, &ds, &["step", "param"])?;
        }
        f64_attr(dg, "half_ratio", m.half_ratio)?;
        f64_attr(dg, "half_path_rel", m.half_path_rel)?;
        f64_attr(dg, "quantile_w1_error", m.quantile_w1_error)?;
    }
    let w = &d.windows;
    if w.is_empty() {
        return Ok(());
    }
    let wg = dg.create_group("windows")?;
    coordinate(
        &wg.new_dataset_builder()
            .with_data(&strings(w.iter().map(|w| w.name)))
            .create("name")?,
        "name",
    )?;
    let bounds: Vec<i64> = w.iter().flat_map(|w| w.bounds).map(|x| x as i64).collect();
    let bounds = Array2::from_shape_vec((w.len(), 4), bounds).unwrap();
    let ds = wg
        .new_dataset_builder()
        .with_data(&bounds)
        .create("bounds")?;
    label_analysis(file, &wg, &ds, &["name", "bound"])?;
    let column = |name: &str, f: &dyn Fn(&Window) -> f64| -> hdf5::Result<()> {
        let v: Vec<f64> = w.iter().map(f).collect();
        let ds = wg.new_dataset_builder().with_data(&v).create(name)?;
        label_analysis(file, &wg, &ds, &["name"])
    };
    column("w1", &|w| w.w1)?;
    column("rms", &|w| w.rms)?;
    column("w1_rel", &|w| w.w1 / w.rms)?;
    let p = w[0].w1_per_param.len();
    let per: Vec<f64> = w
        .iter()
        .flat_map(|w| w.w1_per_param.iter().copied())
        .collect();
    let per = Array2::from_shape_vec((w.len(), p), per).unwrap();
    let ds = wg
        .new_dataset_builder()
        .with_data(&per)
        .create("w1_per_param")?;
    label_analysis(file, &wg, &ds, &["name", "param"])
}
