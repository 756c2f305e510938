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
    g.new_dataset_builder().with_data(&order).create("order")?;
    write_series(&g.create_group("series")?, &a.series)?;
    if let Some(d) = &a.distribution {
        write_distribution(&g.create_group("distribution")?, d)?;
    }
    if let Some(e) = &a.edge_of_stability {
        let eg = g.create_group("edge_of_stability")?;
        write_str_attr(&eg, "lr_source", e.lr_source)?;
        eg.new_dataset_builder().with_data(e.lr).create("lr")?;
        eg.new_dataset_builder()
            .with_data(e.ratio)
            .create("ratio")?;
    }
    f.flush()
}

fn write_series(s: &hdf5::Group, series: &[Series]) -> hdf5::Result<()> {
    let names = strings(series.iter().map(|x| x.name.as_str()));
    s.new_dataset_builder().with_data(&names).create("name")?;
    let col = |name: &str, f: &dyn Fn(&Series) -> f64| -> hdf5::Result<()> {
        let v: Vec<f64> = series.iter().map(f).collect();
        s.new_dataset_builder().with_data(&v).create(name)?;
        Ok(())
    };
    let icol = |name: &str, f: &dyn Fn(&Series) -> i64| -> hdf5::Result<()> {
        let v: Vec<i64> = series.iter().map(f).collect();
        s.new_dataset_builder().with_data(&v).create(name)?;
        Ok(())
    };
    icol("half_n", &|x| x.half_n as i64)?;
    icol("half_step_first", &|x| x.half_step_first)?;
    icol("half_step_last", &|x| x.half_step_last)?;
    col("first", &|x| x.first)?;
    col("last", &|x| x.last)?;
    col("half_start", &|x| x.half_start)?;
    col("half_mean", &|x| x.half_mean)?;
    col("slope", &|x| x.slope)?;
    col("slope_se", &|x| x.slope_se)?;
    col("slope_lo", &|x| x.slope_lo)?;
    col("slope_hi", &|x| x.slope_hi)?;
    col("intercept", &|x| x.intercept)?;
    col("rel_change", &|x| x.rel_change)?;
    col("fit_change", &|x| x.fit_change)?;
    col("fit_change_lo", &|x| x.fit_change_lo)?;
    col("fit_change_hi", &|x| x.fit_change_hi)?;
    col("mean_abs_change", &|x| x.mean_abs_change)?;
    col("mean_abs_change_rel", &|x| x.mean_abs_change_rel)?;
    col("kpss_stat", &|x| x.kpss_stat)?;
    col("kpss_p", &|x| x.kpss_p)?;
    icol("kpss_lags", &|x| x.kpss_lags as i64)?;
    icol("kpss_reject_5pct", &|x| x.kpss_reject_5pct)
}

fn write_distribution(dg: &hdf5::Group, d: &Distribution) -> hdf5::Result<()> {
    write_i64_attr(dg, "by_entries", d.by_entries as i64)?;
    write_str_attr(dg, "notes", &d.notes)?;
    if let Some(m) = &d.motion {
        dg.new_dataset_builder()
            .with_data(m.w1_prev)
            .create("w1_prev")?;
        dg.new_dataset_builder()
            .with_data(m.mean_abs_move)
            .create("mean_abs_move")?;
        dg.new_dataset_builder()
            .with_data(m.ratio)
            .create("ratio")?;
        if let Some(r) = m.ratio_per_param {
            dg.new_dataset_builder()
                .with_data(r)
                .create("ratio_per_param")?;
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
    wg.new_dataset_builder()
        .with_data(&strings(w.iter().map(|w| w.name)))
        .create("name")?;
    let bounds: Vec<i64> = w.iter().flat_map(|w| w.bounds).map(|x| x as i64).collect();
    let bounds = Array2::from_shape_vec((w.len(), 4), bounds).unwrap();
    wg.new_dataset_builder()
        .with_data(&bounds)
        .create("bounds")?;
    let column = |name: &str, f: &dyn Fn(&Window) -> f64| -> hdf5::Result<()> {
        let v: Vec<f64> = w.iter().map(f).collect();
        wg.new_dataset_builder().with_data(&v).create(name)?;
        Ok(())
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
    wg.new_dataset_builder()
        .with_data(&per)
        .create("w1_per_param")?;
    Ok(())
}
