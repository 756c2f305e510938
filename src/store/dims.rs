//! Dimension scales: every axis of every dataset named, so that the results file is a labelled
//! (netCDF-4) dataset. `xr.open_datatree(path, engine="h5netcdf")` then gives each group's
//! variables indexed by the checkpoint dimension `step` (its coordinate: the training steps),
//! the parameter dimension `param` (the parameter names), `quantile` (the levels j/256) and the
//! histogram's `bin` / `bin_edge`, with no glue; h5py reads the same datasets as before.
//!
//! HDF5 dimension scales (the high-level library's `H5DS`, in `libhdf5_hl`): a dataset made a
//! scale carries `CLASS = DIMENSION_SCALE` and its dimension's `NAME`; attaching it to axis i of
//! a dataset records the pair in both (`DIMENSION_LIST` on the dataset, `REFERENCE_LIST` on the
//! scale). netCDF-4 reads a dimension as the scale's name, visible in its group and the groups
//! below, so the scales are placed thus:
//!
//! | scale | dimension | what it holds |
//! |---|---|---|
//! | `/step` | `step`, [K] growing | a row's training step (`/checkpoints/step`; the train log's own `/step`) |
//! | `/param` | `param`, [P] str | the parameter names (`/params/name`) |
//! | `/weights/quantile` | `quantile`, [257] f64 | j/256 |
//! | `/weights/bin`, `/weights/bin_edge` | `bin` [64], `bin_edge` [65] | nothing: a netCDF "dimension but not a variable" |
//! | `/grad/<p>_<i>`, `/partial/<p>_<i>` | axis i of parameter p's shape | nothing (`/grad/full/<p>`, `/partial/grad_sum/<p>`) |
//! | `/partial/<p>_entries`, `/partial/batch_size`, `/partial/hi_lo` | | nothing (the data shards' sums) |
//! | `/analysis/series/name`, `/analysis/distribution/windows/name` | `name` | the series', the windows' names |
//! | `/analysis/distribution/windows/bound` | `bound` [4] | nothing |
//!
//! The library is Debian's `libhdf5_hl` (libhdf5-dev installs it beside `libhdf5`; the hdf5
//! crate binds the core library only, so the four functions are declared here).
//!
//! A dataset is labelled when it is created, in the same commit (so both copies of
//! [`super::atomic`] get it); every axis or none (netCDF readers refuse a half-labelled one).
//! A scale's `REFERENCE_LIST` names the datasets attached to it, so a dataset must be detached
//! before it is deleted ([`detach`]: `/analysis`, replaced on each `probe analyze`).
use hdf5::types::VarLenUnicode;
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_uint};

// HDF5 1.10's hid_t, herr_t and htri_t (H5Ipublic.h, H5public.h).
type Hid = i64;

#[link(name = "hdf5_hl")]
extern "C" {
    fn H5DSset_scale(dsid: Hid, dimname: *const c_char) -> c_int;
    fn H5DSattach_scale(did: Hid, dsid: Hid, idx: c_uint) -> c_int;
    fn H5DSdetach_scale(did: Hid, dsid: Hid, idx: c_uint) -> c_int;
    fn H5DSis_attached(did: Hid, dsid: Hid, idx: c_uint) -> c_int;
}

/// The name netCDF-4 gives a dimension that has no coordinate variable (netcdf-c's
/// `DIM_WITHOUT_VARIABLE` followed by the size in ten columns).
fn pure_dim_name(n: usize) -> String {
    format!("This is a netCDF dimension but not a netCDF variable.{n:10}")
}

fn check(r: c_int, what: &str) -> hdf5::Result<()> {
    if r < 0 {
        return Err(format!("{what} failed").into());
    }
    Ok(())
}

/// Makes `ds` the scale of dimension `dim`.
fn set_scale(ds: &hdf5::Dataset, dim: &str) -> hdf5::Result<()> {
    let c = CString::new(dim).map_err(|e| e.to_string())?;
    // SAFETY: a valid dataset id and a NUL-terminated name, under HDF5's lock.
    let r = hdf5::sync::sync(|| unsafe { H5DSset_scale(ds.id(), c.as_ptr()) });
    check(r, &format!("making {} a dimension scale", ds.name()))
}

fn attach(ds: &hdf5::Dataset, scale: &hdf5::Dataset, axis: usize) -> hdf5::Result<()> {
    // SAFETY: two valid dataset ids of one file, under HDF5's lock.
    let r = hdf5::sync::sync(|| unsafe { H5DSattach_scale(ds.id(), scale.id(), axis as c_uint) });
    check(
        r,
        &format!("attaching {} to axis {axis} of {}", scale.name(), ds.name()),
    )
}

/// What one axis of a dataset is.
#[derive(Debug, Clone, PartialEq)]
enum Dim {
    /// `/step`: the rows.
    Step,
    /// `/param`: the parameter tensors.
    Param,
    /// `/weights/quantile`: the levels j/(n-1).
    Quantile,
    /// A dimension with no values, `<group>/<name>`.
    Pure(String, String),
}

/// The groups holding one dataset per parameter tensor, `<group>/<parameter>`.
const BY_PARAM: [&str; 4] = [
    "grad/full/",
    "partial/grad_sum/",
    "partial/noise/grad_sum_by_size/",
    "partial/weights/",
];

/// Per-row datasets whose second axis is the parameter tensors besides the `per_param_*` ones.
const PARAM_AXIS: [&str; 6] = [
    "weights/w1_prev",
    "weights/w1_first",
    "weights/quantiles",
    "weights/hist/counts",
    "weights/hist/edges",
    "partial/noise/sq_sum",
];

/// The dimensions of per-row dataset `name` (a path without the leading `/`) of `shape`: the
/// table of docs/schema.md. Axis 0 is always the rows.
fn row_dims(name: &str, shape: &[usize]) -> Vec<Dim> {
    let top = name.split_once('/').map(|(t, _)| t).unwrap_or("");
    let base = name.rsplit('/').next().unwrap_or(name);
    let pure = |d: String| Dim::Pure(top.to_string(), d);
    let mut dims = vec![Dim::Step];
    if let Some(group) = BY_PARAM.iter().find(|g| name.starts_with(**g)) {
        let p = name[group.len()..].replace('/', ".");
        let mut axes = shape[1..].len();
        if *group == "partial/noise/grad_sum_by_size/" {
            dims.push(pure("batch_size".into()));
            axes -= 1;
        }
        if *group == "partial/weights/" {
            dims.push(pure(format!("{p}_entries")));
        } else {
            dims.extend((0..axes).map(|i| pure(format!("{p}_{i}"))));
        }
        return dims;
    }
    if shape.len() > 1 && (base.starts_with("per_param_") || PARAM_AXIS.contains(&name)) {
        dims.push(Dim::Param);
    }
    if shape.len() > 2 {
        match name {
            "weights/quantiles" => dims.push(Dim::Quantile),
            "weights/hist/counts" => dims.push(pure("bin".into())),
            "weights/hist/edges" => dims.push(pure("bin_edge".into())),
            "partial/noise/sq_sum" => dims.push(pure("hi_lo".into())),
            _ => {}
        }
    }
    if name == "partial/noise/batch_elements" && shape.len() == 2 {
        dims.push(pure("batch_size".into()));
    }
    // Anything else (a column added later): an axis of its own.
    for i in dims.len()..shape.len() {
        dims.push(pure(format!("{base}_{i}")));
    }
    dims
}

/// The scale of `dim` for an axis of length `n`, created if missing; `None` where it cannot be
/// (no `/step` or `/param` yet, or one of another length).
fn scale(file: &hdf5::File, dim: &Dim, n: usize) -> hdf5::Result<Option<hdf5::Dataset>> {
    let path = match dim {
        Dim::Step => "step".to_string(),
        Dim::Param => "param".to_string(),
        Dim::Quantile => "weights/quantile".to_string(),
        Dim::Pure(g, d) if g.is_empty() => d.clone(),
        Dim::Pure(g, d) => format!("{g}/{d}"),
    };
    if let Ok(ds) = file.dataset(&path) {
        // The rows' scale grows with them; the others are fixed.
        let ok = *dim == Dim::Step || ds.shape() == [n];
        return Ok(ok.then_some(ds));
    }
    let ds = match dim {
        Dim::Step | Dim::Param => return Ok(None),
        Dim::Quantile => {
            let levels: Vec<f64> = (0..n).map(|j| j as f64 / (n.max(2) - 1) as f64).collect();
            let ds = file
                .new_dataset_builder()
                .with_data(&levels)
                .create(path.as_str())?;
            set_scale(&ds, "quantile")?;
            ds
        }
        Dim::Pure(..) => {
            let ds = file.new_dataset::<f32>().shape([n]).create(path.as_str())?;
            set_scale(&ds, &pure_dim_name(n))?;
            ds
        }
    };
    Ok(Some(ds))
}

/// The most datasets attached to one scale. A scale lists them in its `REFERENCE_LIST`
/// attribute, 16 bytes each, and an attribute of the file format probe writes (HDF5's earliest)
/// holds at most 64 KiB: the 4086th attach fails (seen with h5py and libhdf5 1.10.8). A dataset
/// past this (--save-grad on a model of ~4000 parameter tensors, a third of that in a data
/// shard with --noise) is left without dimensions; xarray names its axes `phony_dim_N`.
const MAX_REFERENCES: usize = 4000;

fn references(scale: &hdf5::Dataset) -> usize {
    scale.attr("REFERENCE_LIST").map(|a| a.size()).unwrap_or(0)
}

/// Attaches `dims` to the axes of `ds`: all of them, or none where one is missing or full.
fn attach_all(file: &hdf5::File, ds: &hdf5::Dataset, dims: &[Dim]) -> hdf5::Result<()> {
    let shape = ds.shape();
    if dims.len() != shape.len() {
        return Ok(());
    }
    let mut scales = Vec::new();
    for (d, &n) in dims.iter().zip(&shape) {
        match scale(file, d, n)? {
            Some(s) if references(&s) < MAX_REFERENCES => scales.push(s),
            _ => return Ok(()),
        }
    }
    for (axis, s) in scales.iter().enumerate() {
        attach(ds, s, axis)?;
    }
    Ok(())
}

/// Labels the per-row dataset `name` just created: `/step` becomes the rows' scale; any other
/// gets its dimensions attached.
pub(crate) fn label_row(file: &hdf5::File, name: &str, ds: &hdf5::Dataset) -> hdf5::Result<()> {
    if name == "step" {
        return set_scale(ds, "step");
    }
    attach_all(file, ds, &row_dims(name, &ds.shape()))
}

/// Labels a dataset written once: `/params/name` gets the scale `/param`, its copy.
pub(crate) fn label_fixed(
    file: &hdf5::File,
    name: &str,
    ds: &hdf5::Dataset,
    values: &[VarLenUnicode],
) -> hdf5::Result<()> {
    if name != "params/name" {
        return Ok(());
    }
    if file.dataset("param").is_err() {
        let p = file
            .new_dataset_builder()
            .with_data(values)
            .create("param")?;
        set_scale(&p, "param")?;
    }
    attach_all(file, ds, &[Dim::Param])
}

/// Names the axes of a dataset of `/analysis`: each of `axes` is `step`, `param`, or the name
/// of a scale in the dataset's own group (`name`, the series or windows; `bound`, created).
pub(crate) fn label_analysis(
    file: &hdf5::File,
    group: &hdf5::Group,
    ds: &hdf5::Dataset,
    axes: &[&str],
) -> hdf5::Result<()> {
    let shape = ds.shape();
    let gname = group.name();
    let gpath = gname.trim_start_matches('/');
    let dims: Vec<Dim> = axes
        .iter()
        .map(|a| match *a {
            "step" => Dim::Step,
            "param" => Dim::Param,
            other => Dim::Pure(gpath.to_string(), other.to_string()),
        })
        .collect();
    if dims.len() != shape.len() {
        return Ok(());
    }
    attach_all(file, ds, &dims)
}

/// Makes `ds` (in `/analysis`) the scale of its group's dimension `dim` (its values are the
/// coordinate: the series' or windows' names).
pub(crate) fn coordinate(ds: &hdf5::Dataset, dim: &str) -> hdf5::Result<()> {
    set_scale(ds, dim)
}

/// Detaches `datasets` from the scales `/step` and `/param`, so that deleting them leaves the
/// scales no reference to a dataset that is gone.
pub(crate) fn detach<'d>(
    file: &hdf5::File,
    datasets: impl IntoIterator<Item = &'d hdf5::Dataset>,
) -> hdf5::Result<()> {
    let scales: Vec<hdf5::Dataset> = ["step", "param"]
        .iter()
        .filter_map(|s| file.dataset(s).ok())
        .collect();
    for ds in datasets {
        for axis in 0..ds.ndim() {
            for s in &scales {
                // SAFETY: valid dataset ids of one file, under HDF5's lock.
                let on = hdf5::sync::sync(|| unsafe {
                    H5DSis_attached(ds.id(), s.id(), axis as c_uint)
                });
                if on > 0 {
                    let r = hdf5::sync::sync(|| unsafe {
                        H5DSdetach_scale(ds.id(), s.id(), axis as c_uint)
                    });
                    check(r, &format!("detaching {} from {}", s.name(), ds.name()))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dims: &[Dim]) -> Vec<String> {
        dims.iter()
            .map(|d| match d {
                Dim::Step => "step".into(),
                Dim::Param => "param".into(),
                Dim::Quantile => "quantile".into(),
                Dim::Pure(g, n) => format!("{g}/{n}"),
            })
            .collect()
    }

    #[test]
    fn a_full_scale_leaves_the_dataset_unnamed_not_the_write_failed() {
        let dir = tempfile::tempdir().unwrap();
        let file = hdf5::File::create(dir.path().join("f.h5")).unwrap();
        let new = |name: &str| {
            let ds = file
                .new_dataset::<f64>()
                .chunk([16])
                .shape([hdf5::Extent::resizable(0)])
                .create(name)
                .unwrap();
            label_row(&file, name, &ds).map(|_| ds)
        };
        new("step").unwrap();
        let n = MAX_REFERENCES + 100;
        let all: Vec<hdf5::Dataset> = (0..n).map(|i| new(&format!("g/{i}")).unwrap()).collect();
        let step = file.dataset("step").unwrap();
        assert_eq!(references(&step), MAX_REFERENCES);
        let on = |ds: &hdf5::Dataset| ds.attr("DIMENSION_LIST").is_ok();
        assert!(on(&all[MAX_REFERENCES - 1]) && !on(&all[MAX_REFERENCES]));
    }

    #[test]
    fn every_axis_of_the_schema_is_named() {
        let cases: &[(&str, &[usize], &[&str])] = &[
            ("loss", &[3], &["step"]),
            ("checkpoints/path", &[3], &["step"]),
            ("grad/per_param_l2", &[3, 6], &["step", "param"]),
            ("weights/w1_prev", &[3, 6], &["step", "param"]),
            (
                "weights/quantiles",
                &[3, 6, 257],
                &["step", "param", "quantile"],
            ),
            (
                "weights/hist/counts",
                &[3, 6, 64],
                &["step", "param", "weights/bin"],
            ),
            (
                "weights/hist/edges",
                &[3, 6, 65],
                &["step", "param", "weights/bin_edge"],
            ),
            (
                "grad/full/fc1.weight",
                &[3, 64, 784],
                &["step", "grad/fc1.weight_0", "grad/fc1.weight_1"],
            ),
            (
                "partial/noise/grad_sum_by_size/fc1.bias",
                &[3, 2, 64],
                &["step", "partial/batch_size", "partial/fc1.bias_0"],
            ),
            (
                "partial/weights/fc1.bias",
                &[3, 64],
                &["step", "partial/fc1.bias_entries"],
            ),
            (
                "partial/noise/sq_sum",
                &[3, 6, 2],
                &["step", "param", "partial/hi_lo"],
            ),
            (
                "partial/noise/batch_elements",
                &[3, 2],
                &["step", "partial/batch_size"],
            ),
            ("new/thing", &[3, 5], &["step", "new/thing_1"]),
        ];
        for (name, shape, want) in cases {
            assert_eq!(names(&row_dims(name, shape)), *want, "{name}");
        }
    }
}
