//! The HDF5 results store. Schema version 3 (documented in full in `docs/schema.md`, which also
//! lists the `--noise`, `--hessian` and weight-distribution columns of `probe grad`):
//!
//! One row per checkpoint along the first axis of every dataset, appended as each checkpoint
//! completes:
//!
//! | path | shape, type | meaning |
//! |---|---|---|
//! | `/loss` | [K] f64 | mean loss over every target element of the data set |
//! | `/accuracy` | [K] f64 | fraction of target elements whose argmax is the target (NaN for mse) |
//! | `/samples` | [K] i64 | samples visited (always the data set's N: each exactly once) |
//! | `/elements` | [K] i64 | target elements the mean is over (N, or N*T for token targets) |
//! | `/checkpoints/path` | [K] str | checkpoint file (the model file when its own weights were used) |
//! | `/checkpoints/step` | [K] i64 | training step: safetensors metadata `step`, else file name `step-<n>`, else -1 |
//! | `/checkpoints/sha256` | [K] str | hash of the checkpoint file |
//! | `/seconds` | [K] f64 | wall time spent on the row |
//!
//! `probe grad` adds (g = gradient of the mean loss over the whole data set, w = the trainable
//! parameters, P of them, named in `/params/name` [P]):
//!
//! | path | shape, type | meaning |
//! |---|---|---|
//! | `/grad/l2`, `/grad/l1`, `/grad/linf` | [K] f64 | norms of g over all parameters |
//! | `/grad/per_param_l2` | [K, P] f64 | |g| per parameter tensor |
//! | `/weights/l2`, `/weights/per_param_l2` | [K], [K, P] f64 | |w| |
//! | `/weights/dist_prev`, `/weights/dist_first` | [K] f64 | |w_k - w_{k-1}|, |w_k - w_0| in the order given |
//! | `/grad_reg/l2`, `/grad_reg/per_param_l2` | [K], [K, P] f64 | with `--weight-decay L`: |g + L w| |
//! | `/grad/full/<name>` | [K, ...shape] f64 | with `--save-grad`: g itself |
//! | `/nonfinite_batches` | [K] i64 | batches with NaN/Inf (their row holds NaN) |
//!
//! and the attributes `bn` (eval or train), `engine` (onnxruntime or torch), `device` (cpu or
//! cuda), `weight_decay`.
//!
//! File attributes: `schema_version`, `probe_version`, `command` (what was run: eval, grad),
//! `command_line`, `model_path`, `model_sha256`, `data`, `data_samples`, `batch_size`, `loss`,
//! `rows` (rows complete) and `complete` (1 once every requested checkpoint is in, else 0).
//!
//! Writing is crash-safe ([`atomic`]): the file at `--out` is only ever replaced whole by a
//! closed, synced file, so a kill or a full disk at any moment leaves either the rows before the
//! change or the rows after it, never a half-written row or an unreadable file. One process at a
//! time writes a results file ([`lock`]): `<out>.lock` is held while it runs, and `<out>.next`
//! (the copy the next change is written into) exists only while it runs.
//!
//! Every axis is a named dimension ([`dims`], new in version 3): `/step` [K] (a copy of
//! `/checkpoints/step`, or the train log's own `/step`) is the rows' dimension scale and
//! coordinate, `/param` [P] (a copy of `/params/name`) the parameters', so that xarray
//! (`engine="h5netcdf"`) reads the file as labelled data with no glue.
//!
//! `probe analyze` adds the group `/analysis` to a `probe grad` file ([`analysis`]).
pub mod analysis;
pub mod atomic;
pub mod dims;
pub mod lock;
pub mod read;

use crate::data::Spec;
use crate::model::Model;
use anyhow::Result;
use hdf5::types::VarLenUnicode;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

pub const SCHEMA_VERSION: i64 = 3;

/// What a results file is about; two runs may share a file only if these agree.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub command: String,
    pub command_line: String,
    pub model_path: String,
    pub model_sha256: String,
    pub data: String,
    pub data_samples: i64,
    pub batch_size: i64,
    pub loss: String,
    /// Further string attributes (engine, bn mode, ...), also required to agree.
    pub extra: BTreeMap<String, String>,
}

impl RunInfo {
    /// The identity of a run of `command` (eval, grad, train), as `docs/schema.md` lists it: the
    /// model (its path as given, and hash), the data `spec` names, the batch size, the loss by
    /// name, and the command's own `extra` attributes.
    pub fn new(
        command: &str,
        command_line: &str,
        model: &Model,
        spec: &Spec,
        batch: usize,
        loss: &str,
        extra: BTreeMap<String, String>,
    ) -> RunInfo {
        RunInfo {
            command: command.into(),
            command_line: command_line.into(),
            model_path: model.path.display().to_string(),
            model_sha256: model.sha256.clone(),
            data: spec.identity.clone(),
            data_samples: spec.len as i64,
            batch_size: batch as i64,
            loss: loss.into(),
            extra,
        }
    }

    /// Everything about the run that the numbers depend on, as text (the command line aside:
    /// `--threads` or `--quiet` on a rerun change nothing).
    pub fn key(&self) -> String {
        format!(
            "{} {} {} {} {} {} {}",
            self.command,
            self.model_sha256,
            self.data,
            self.data_samples,
            self.batch_size,
            self.loss,
            self.extra
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

/// One cell of a row.
#[derive(Debug, Clone)]
pub enum Cell {
    F64(f64),
    I64(i64),
    Str(String),
    /// A tensor per row (per-parameter norms, full gradients): shape and values.
    F64s(Vec<usize>, Vec<f64>),
    F32s(Vec<usize>, Vec<f32>),
    I64s(Vec<usize>, Vec<i64>),
}

pub type Row = Vec<(String, Cell)>;

pub struct Store {
    pub path: PathBuf,
    file: atomic::Shadowed,
    rows: usize,
    created: bool,
    // Declared last: dropped after the file, so the lock outlives every write.
    _lock: lock::WriterLock,
}

fn write_str_attr(loc: &hdf5::Location, name: &str, value: &str) -> hdf5::Result<()> {
    let v: VarLenUnicode = value.parse().unwrap_or_default();
    if loc.attr_names()?.iter().any(|n| n == name) {
        loc.attr(name)?.write_scalar(&v)
    } else {
        loc.new_attr::<VarLenUnicode>()
            .create(name)?
            .write_scalar(&v)
    }
}

fn write_i64_attr(loc: &hdf5::Location, name: &str, value: i64) -> hdf5::Result<()> {
    if loc.attr_names()?.iter().any(|n| n == name) {
        loc.attr(name)?.write_scalar(&value)
    } else {
        loc.new_attr::<i64>().create(name)?.write_scalar(&value)
    }
}

pub fn read_str_attr(loc: &hdf5::Location, name: &str) -> Option<String> {
    loc.attr(name)
        .ok()?
        .read_scalar::<VarLenUnicode>()
        .ok()
        .map(|s| s.as_str().to_string())
}

pub fn read_i64_attr(loc: &hdf5::Location, name: &str) -> Option<i64> {
    loc.attr(name).ok()?.read_scalar::<i64>().ok()
}

/// Every dataset below `group`, by full path.
pub(crate) fn datasets(
    group: &hdf5::Group,
    prefix: &str,
    out: &mut Vec<(String, hdf5::Dataset)>,
) -> hdf5::Result<()> {
    for name in group.member_names()? {
        let path = format!("{prefix}/{name}");
        if let Ok(ds) = group.dataset(&name) {
            out.push((path, ds));
        } else if let Ok(g) = group.group(&name) {
            datasets(&g, &path, out)?;
        }
    }
    Ok(())
}

/// The complete rows a file holds (its `rows` attribute).
fn rows_of(file: &hdf5::File) -> usize {
    read_i64_attr(file, "rows").unwrap_or(0).max(0) as usize
}

/// Cuts every per-row dataset (chunked, growing) to `rows`; `/params/name` and such are fixed.
fn trim(file: &hdf5::File, rows: usize) -> Result<()> {
    let mut all = Vec::new();
    datasets(file, "", &mut all)?;
    for (name, ds) in all {
        let mut shape = ds.shape();
        if ds.chunk().is_some() && !shape.is_empty() && shape[0] > rows {
            shape[0] = rows;
            ds.resize(shape)
                .map_err(|e| anyhow::anyhow!("trimming {name}: {e}"))?;
        }
    }
    Ok(())
}

/// Why an existing `--out` cannot take this run's rows; `None` when it can.
fn mismatch(file: &hdf5::File, info: &RunInfo) -> Option<String> {
    let mut diffs = Vec::new();
    let mut want: Vec<(&str, String)> = vec![
        ("command", info.command.clone()),
        ("model_sha256", info.model_sha256.clone()),
        ("data", info.data.clone()),
        ("loss", info.loss.clone()),
    ];
    for (k, v) in &info.extra {
        want.push((k.as_str(), v.clone()));
    }
    for (k, v) in want {
        let have = read_str_attr(file, k).unwrap_or_default();
        if have != v {
            diffs.push(format!("{k} is '{have}', this run '{v}'"));
        }
    }
    for (k, v) in [
        ("data_samples", info.data_samples),
        ("batch_size", info.batch_size),
    ] {
        let have = read_i64_attr(file, k).unwrap_or(-1);
        // The batch size changes results only through batch statistics (--bn train)
        // and through the minibatch partition --noise measures.
        let matters = k != "batch_size"
            || info.extra.get("bn").is_some_and(|b| b == "train")
            || info.extra.get("noise").is_some_and(|n| !n.is_empty());
        if have != v && matters {
            diffs.push(format!("{k} is {have}, this run {v}"));
        }
    }
    if read_i64_attr(file, "schema_version") != Some(SCHEMA_VERSION) {
        diffs.push(format!(
            "schema_version is {:?}, this probe writes {SCHEMA_VERSION}",
            read_i64_attr(file, "schema_version")
        ));
    }
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

fn header(file: &hdf5::File, info: &RunInfo) -> Result<()> {
    write_i64_attr(file, "schema_version", SCHEMA_VERSION)?;
    write_str_attr(file, "probe_version", env!("CARGO_PKG_VERSION"))?;
    write_str_attr(file, "command", &info.command)?;
    write_str_attr(file, "command_line", &info.command_line)?;
    write_str_attr(file, "model_path", &info.model_path)?;
    write_str_attr(file, "model_sha256", &info.model_sha256)?;
    write_str_attr(file, "data", &info.data)?;
    write_i64_attr(file, "data_samples", info.data_samples)?;
    write_i64_attr(file, "batch_size", info.batch_size)?;
    write_str_attr(file, "loss", &info.loss)?;
    for (k, v) in &info.extra {
        write_str_attr(file, k, v)?;
    }
    write_i64_attr(file, "rows", 0)?;
    write_i64_attr(file, "complete", 0)?;
    Ok(())
}

fn dataset_for(file: &hdf5::File, name: &str, cell: &Cell) -> hdf5::Result<hdf5::Dataset> {
    if let Ok(ds) = file.dataset(name) {
        return Ok(ds);
    }
    if let Some((group, _)) = name.rsplit_once('/') {
        let mut g = String::new();
        for part in group.split('/') {
            g = if g.is_empty() {
                part.to_string()
            } else {
                format!("{g}/{part}")
            };
            if file.group(&g).is_err() {
                file.create_group(&g)?;
            }
        }
    }
    let (inner, tail): (Vec<usize>, usize) = match cell {
        Cell::F64s(s, _) | Cell::F32s(s, _) | Cell::I64s(s, _) => {
            (s.clone(), s.iter().product::<usize>().max(1))
        }
        _ => (vec![], 1),
    };
    // Chunks of about 64 KiB: many rows of scalars, one row of a large tensor.
    let rows_per_chunk = (8192 / tail).clamp(1, 1024);
    let mut chunk = vec![rows_per_chunk];
    chunk.extend(inner.iter().map(|&d| d.max(1)));
    let mut shape: Vec<hdf5::Extent> = vec![hdf5::Extent::resizable(0)];
    shape.extend(inner.iter().map(|&d| hdf5::Extent::fixed(d)));
    let b = match cell {
        Cell::F64(_) | Cell::F64s(..) => file.new_dataset::<f64>(),
        Cell::F32s(..) => file.new_dataset::<f32>(),
        Cell::I64(_) | Cell::I64s(..) => file.new_dataset::<i64>(),
        Cell::Str(_) => file.new_dataset::<VarLenUnicode>(),
    };
    let ds = b.chunk(chunk).shape(shape).create(name)?;
    dims::label_row(file, name, &ds)?;
    Ok(ds)
}

/// `row`'s cells with the rows' coordinate `step` first (the dimension scale the others are
/// attached to): the row's own `step` (the train log's), else its `checkpoints/step`, else `k`.
fn step_first<'r>(
    row: &'r Row,
    derived: &'r mut Option<Cell>,
    k: usize,
) -> impl Iterator<Item = (&'r str, &'r Cell)> {
    let cell = |name: &str| row.iter().find(|(n, _)| n == name).map(|(_, c)| c);
    let step: &Cell = match cell("step") {
        Some(c) => c,
        None => derived.insert(
            cell("checkpoints/step")
                .cloned()
                .unwrap_or(Cell::I64(k as i64)),
        ),
    };
    std::iter::once(("step", step)).chain(
        row.iter()
            .filter(|(n, _)| n != "step")
            .map(|(n, c)| (n.as_str(), c)),
    )
}

/// Writes `row` as row `k` (every dataset grown to k + 1).
fn write_row(file: &hdf5::File, k: usize, row: &Row) -> Result<()> {
    let mut derived = None;
    for (name, cell) in step_first(row, &mut derived, k) {
        let w = || -> hdf5::Result<()> {
            let ds = dataset_for(file, name, cell)?;
            let mut shape = ds.shape();
            shape[0] = k + 1;
            ds.resize(shape.clone())?;
            let inner: Vec<usize> = shape[1..].to_vec();
            let mut full = vec![1usize];
            full.extend(&inner);
            let sel = k..k + 1;
            // A tensor row is the slab [k, :, ..]: the selection needs every axis.
            let slab = || {
                let mut parts = vec![hdf5::SliceOrIndex::from(k..k + 1)];
                parts.extend(inner.iter().map(|_| hdf5::SliceOrIndex::from(..)));
                hdf5::Hyperslab::from(parts)
            };
            let tensor = |n: usize| -> hdf5::Result<ndarray::IxDyn> {
                let want: usize = inner.iter().product();
                if n != want {
                    return Err(format!("{n} values for a row of shape {inner:?}").into());
                }
                Ok(ndarray::IxDyn(&full))
            };
            match cell {
                Cell::F64(v) => ds.write_slice(&ndarray::arr1(&[*v]), sel),
                Cell::I64(v) => ds.write_slice(&ndarray::arr1(&[*v]), sel),
                Cell::Str(s) => ds.write_slice(
                    &ndarray::arr1(&[s.parse::<VarLenUnicode>().unwrap_or_default()]),
                    sel,
                ),
                Cell::F64s(_, v) => ds.write_slice(
                    &ndarray::ArrayView::from_shape(tensor(v.len())?, v)
                        .map_err(|e| e.to_string())?,
                    slab(),
                ),
                Cell::F32s(_, v) => ds.write_slice(
                    &ndarray::ArrayView::from_shape(tensor(v.len())?, v)
                        .map_err(|e| e.to_string())?,
                    slab(),
                ),
                Cell::I64s(_, v) => ds.write_slice(
                    &ndarray::ArrayView::from_shape(tensor(v.len())?, v)
                        .map_err(|e| e.to_string())?,
                    slab(),
                ),
            }
        };
        w().map_err(|e| anyhow::anyhow!("writing {name} row {k}: {e}"))?;
    }
    Ok(())
}

impl Store {
    /// Opens `path` for appending rows of `info`'s run, creating it if needed. An existing file
    /// written for another model, data set, batch size or loss is refused unless `force`, which
    /// replaces it (atomically, and never while another process writes it).
    pub fn open(path: &Path, info: &RunInfo, force: bool) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(crate::error::input(format!(
                    "{}: the output folder {} does not exist",
                    path.display(),
                    dir.display()
                )));
            }
        }
        if path.is_dir() {
            return Err(crate::error::input(format!(
                "{}: is a folder; --out names the results file",
                path.display()
            )));
        }
        let lock = lock::WriterLock::acquire(path)?;
        if path.exists() && !force {
            let file = hdf5::File::open(path).map_err(|e| {
                crate::error::input(format!(
                    "{}: exists and is not a probe results file (HDF5 cannot read it: {e}); probe does not replace it: move it away or choose another --out",
                    path.display()
                ))
            })?;
            if read_str_attr(&file, "command").is_none() {
                return Err(crate::error::input(format!(
                    "{}: exists and is an HDF5 file but not probe results (no `command` attribute); probe does not replace it: move it away or choose another --out",
                    path.display()
                )));
            }
            if let Some(diffs) = mismatch(&file, info) {
                return Err(crate::error::input(format!(
                    "{}: holds results of another run ({diffs}); use --force to replace it or choose another --out",
                    path.display()
                )));
            }
            let rows = rows_of(&file);
            drop(file);
            let mut shadowed = atomic::Shadowed::existing(path);
            let command_line = info.command_line.clone();
            shadowed.commit("opening", &|f: &hdf5::File| {
                // Files written before commits were atomic may hold a row past `rows`.
                trim(f, rows_of(f))?;
                write_i64_attr(f, "complete", 0)?;
                write_str_attr(f, "command_line", &command_line)?;
                Ok(())
            })?;
            crate::interrupt::note_rows(path, rows);
            return Ok(Store {
                path: path.to_path_buf(),
                file: shadowed,
                rows,
                created: false,
                _lock: lock,
            });
        }
        let shadowed = atomic::Shadowed::create(path, &|f: &hdf5::File| header(f, info))?;
        crate::interrupt::note_rows(path, 0);
        Ok(Store {
            path: path.to_path_buf(),
            file: shadowed,
            rows: 0,
            created: true,
            _lock: lock,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Drops the rows from `rows` on (a resumed training run goes back to its last checkpoint
    /// and redoes the steps after it), committed like [`Store::append`].
    pub fn truncate(&mut self, rows: usize) -> Result<()> {
        if rows >= self.rows {
            return Ok(());
        }
        self.file
            .commit(&format!("cutting to {rows} rows"), &|f: &hdf5::File| {
                write_i64_attr(f, "rows", rows as i64)?;
                trim(f, rows)
            })?;
        self.rows = rows;
        crate::interrupt::note_rows(&self.path, rows);
        Ok(())
    }

    /// Checkpoints already complete in the file, as (path, sha256).
    pub fn done(&self) -> HashSet<(String, String)> {
        let rows = self.rows;
        self.file
            .read(|f| {
                let read = |name: &str| -> Vec<String> {
                    f.dataset(name)
                        .and_then(|d| d.read_raw::<VarLenUnicode>())
                        .map(|v| v.into_iter().map(|s| s.as_str().to_string()).collect())
                        .unwrap_or_default()
                };
                let paths = read("checkpoints/path");
                let shas = read("checkpoints/sha256");
                Ok(paths.into_iter().zip(shas).take(rows).collect())
            })
            .unwrap_or_default()
    }

    /// Writes one complete row and commits it.
    pub fn append(&mut self, row: &Row) -> Result<()> {
        self.append_all(std::slice::from_ref(row))
    }

    /// Writes complete rows and commits them together (one commit: all of them or none).
    pub fn append_all(&mut self, rows: &[Row]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let k = self.rows;
        let what = match rows.len() {
            1 => format!("writing row {k}"),
            n => format!("writing rows {k}..{}", k + n),
        };
        self.file.commit(&what, &|f: &hdf5::File| {
            // Both copies hold `k` rows; a copy that disagrees is not ours to extend.
            let have = rows_of(f);
            if have != k {
                anyhow::bail!("the file holds {have} rows where this run wrote {k}");
            }
            for (i, row) in rows.iter().enumerate() {
                write_row(f, k + i, row)?;
            }
            write_i64_attr(f, "rows", (k + rows.len()) as i64)?;
            Ok(())
        })?;
        self.rows = k + rows.len();
        crate::interrupt::note_rows(&self.path, self.rows);
        Ok(())
    }

    /// Writes a dataset once (not per row), e.g. `/params/name`.
    pub fn put_strings(&mut self, name: &str, values: &[String]) -> Result<()> {
        if self.file.read(|f| Ok(f.dataset(name).is_ok()))? {
            return Ok(());
        }
        self.file
            .commit(&format!("writing {name}"), &|f: &hdf5::File| {
                if let Some((group, _)) = name.rsplit_once('/') {
                    if f.group(group).is_err() {
                        f.create_group(group)?;
                    }
                }
                let v: Vec<VarLenUnicode> = values
                    .iter()
                    .map(|s| s.parse().unwrap_or_default())
                    .collect();
                let ds = f.new_dataset_builder().with_data(&v).create(name)?;
                dims::label_fixed(f, name, &ds, &v)?;
                Ok(())
            })
    }

    /// Ends the run. `complete` marks that every requested checkpoint is in the file. A file this
    /// run created that holds no row is removed, so a failure leaves nothing that looks like results.
    pub fn finish(mut self, complete: bool) -> Result<()> {
        if complete {
            self.file.commit("marking it complete", &|f: &hdf5::File| {
                Ok(write_i64_attr(f, "complete", 1)?)
            })?;
        }
        self.file.close();
        crate::interrupt::clear();
        if self.created && self.rows == 0 && !complete {
            let _ = std::fs::remove_file(&self.path);
        }
        Ok(())
    }
}
