//! The HDF5 results store. Schema version 2 (documented in full in `docs/schema.md`, which also
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
//! A row is committed by writing all of its datasets, then raising `rows` and flushing. A killed
//! run can leave datasets one row longer than `rows`; reopening the file trims them, so readers
//! that honour `rows` (and any reader after a rerun) see complete rows only.
use anyhow::Result;
use hdf5::types::VarLenUnicode;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

pub const SCHEMA_VERSION: i64 = 2;

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
    file: hdf5::File,
    rows: usize,
    created: bool,
}

fn out_err(path: &Path, what: &str, e: impl std::fmt::Display) -> anyhow::Error {
    crate::error::output(format!("{}: {what}: {e}", path.display()))
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
fn datasets(
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

impl Store {
    /// Opens `path` for appending rows of `info`'s run, creating it if needed. An existing file
    /// written for another model, data set, batch size or loss is refused unless `force`, which
    /// replaces it.
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
        if path.exists() && !force {
            let file = hdf5::File::open_rw(path).map_err(|e| {
                crate::error::input(format!(
                    "{}: exists and is not a probe results file ({e}); use --force to replace it",
                    path.display()
                ))
            })?;
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
                let have = read_str_attr(&file, k).unwrap_or_default();
                if have != v {
                    diffs.push(format!("{k} is '{have}', this run '{v}'"));
                }
            }
            for (k, v) in [
                ("data_samples", info.data_samples),
                ("batch_size", info.batch_size),
            ] {
                let have = read_i64_attr(&file, k).unwrap_or(-1);
                // The batch size changes results only through batch statistics (--bn train).
                // and through the minibatch partition --noise measures.
                let matters = k != "batch_size"
                    || info.extra.get("bn").is_some_and(|b| b == "train")
                    || info.extra.get("noise").is_some_and(|n| !n.is_empty());
                if have != v && matters {
                    diffs.push(format!("{k} is {have}, this run {v}"));
                }
            }
            if read_i64_attr(&file, "schema_version") != Some(SCHEMA_VERSION) {
                diffs.push(format!(
                    "schema_version is {:?}, this probe writes {SCHEMA_VERSION}",
                    read_i64_attr(&file, "schema_version")
                ));
            }
            if !diffs.is_empty() {
                return Err(crate::error::input(format!(
                    "{}: holds results of another run ({}); use --force to replace it or choose another --out",
                    path.display(),
                    diffs.join("; ")
                )));
            }
            let rows = read_i64_attr(&file, "rows").unwrap_or(0).max(0) as usize;
            // Trim what a killed run may have left past the last complete row.
            let mut all = Vec::new();
            datasets(&file, "", &mut all).map_err(|e| out_err(path, "reading", e))?;
            for (name, ds) in all {
                let mut shape = ds.shape();
                // Only the per-row datasets (chunked, growing); `/params/name` and such are fixed.
                if ds.chunk().is_some() && !shape.is_empty() && shape[0] > rows {
                    shape[0] = rows;
                    ds.resize(shape)
                        .map_err(|e| out_err(path, &format!("trimming {name}"), e))?;
                }
            }
            write_i64_attr(&file, "complete", 0).map_err(|e| out_err(path, "writing", e))?;
            write_str_attr(&file, "command_line", &info.command_line)
                .map_err(|e| out_err(path, "writing", e))?;
            return Ok(Store {
                path: path.to_path_buf(),
                file,
                rows,
                created: false,
            });
        }
        let file = hdf5::File::create(path).map_err(|e| out_err(path, "cannot create", e))?;
        let w = || -> hdf5::Result<()> {
            write_i64_attr(&file, "schema_version", SCHEMA_VERSION)?;
            write_str_attr(&file, "probe_version", env!("CARGO_PKG_VERSION"))?;
            write_str_attr(&file, "command", &info.command)?;
            write_str_attr(&file, "command_line", &info.command_line)?;
            write_str_attr(&file, "model_path", &info.model_path)?;
            write_str_attr(&file, "model_sha256", &info.model_sha256)?;
            write_str_attr(&file, "data", &info.data)?;
            write_i64_attr(&file, "data_samples", info.data_samples)?;
            write_i64_attr(&file, "batch_size", info.batch_size)?;
            write_str_attr(&file, "loss", &info.loss)?;
            for (k, v) in &info.extra {
                write_str_attr(&file, k, v)?;
            }
            write_i64_attr(&file, "rows", 0)?;
            write_i64_attr(&file, "complete", 0)?;
            file.flush()
        };
        w().map_err(|e| out_err(path, "writing", e))?;
        Ok(Store {
            path: path.to_path_buf(),
            file,
            rows: 0,
            created: true,
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
        let mut all = Vec::new();
        datasets(&self.file, "", &mut all).map_err(|e| out_err(&self.path, "reading", e))?;
        // `rows` first: a reader never sees a count larger than the datasets.
        self.rows = rows;
        write_i64_attr(&self.file, "rows", rows as i64)
            .map_err(|e| out_err(&self.path, "writing rows", e))?;
        for (name, ds) in all {
            let mut shape = ds.shape();
            if ds.chunk().is_some() && !shape.is_empty() && shape[0] > rows {
                shape[0] = rows;
                ds.resize(shape)
                    .map_err(|e| out_err(&self.path, &format!("truncating {name}"), e))?;
            }
        }
        self.file
            .flush()
            .map_err(|e| out_err(&self.path, "flushing", e))
    }

    /// Checkpoints already complete in the file, as (path, sha256).
    pub fn done(&self) -> HashSet<(String, String)> {
        let read = |name: &str| -> Vec<String> {
            self.file
                .dataset(name)
                .and_then(|d| d.read_raw::<VarLenUnicode>())
                .map(|v| v.into_iter().map(|s| s.as_str().to_string()).collect())
                .unwrap_or_default()
        };
        let paths = read("checkpoints/path");
        let shas = read("checkpoints/sha256");
        paths.into_iter().zip(shas).take(self.rows).collect()
    }

    fn dataset_for(&self, name: &str, cell: &Cell) -> hdf5::Result<hdf5::Dataset> {
        if let Ok(ds) = self.file.dataset(name) {
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
                if self.file.group(&g).is_err() {
                    self.file.create_group(&g)?;
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
            Cell::F64(_) | Cell::F64s(..) => self.file.new_dataset::<f64>(),
            Cell::F32s(..) => self.file.new_dataset::<f32>(),
            Cell::I64(_) | Cell::I64s(..) => self.file.new_dataset::<i64>(),
            Cell::Str(_) => self.file.new_dataset::<VarLenUnicode>(),
        };
        b.chunk(chunk).shape(shape).create(name)
    }

    /// Writes one complete row and commits it (`rows` += 1, flush).
    pub fn append(&mut self, row: &Row) -> Result<()> {
        let k = self.rows;
        for (name, cell) in row {
            let w = || -> hdf5::Result<()> {
                let ds = self.dataset_for(name, cell)?;
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
                match cell {
                    Cell::F64(v) => ds.write_slice(&ndarray::arr1(&[*v]), sel),
                    Cell::I64(v) => ds.write_slice(&ndarray::arr1(&[*v]), sel),
                    Cell::Str(s) => ds.write_slice(
                        &ndarray::arr1(&[s.parse::<VarLenUnicode>().unwrap_or_default()]),
                        sel,
                    ),
                    Cell::F64s(_, v) => {
                        let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&full), v.clone())
                            .unwrap();
                        ds.write_slice(&a, slab())
                    }
                    Cell::F32s(_, v) => {
                        let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&full), v.clone())
                            .unwrap();
                        ds.write_slice(&a, slab())
                    }
                    Cell::I64s(_, v) => {
                        let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&full), v.clone())
                            .unwrap();
                        ds.write_slice(&a, slab())
                    }
                }
            };
            w().map_err(|e| out_err(&self.path, &format!("writing {name} row {k}"), e))?;
        }
        self.rows = k + 1;
        write_i64_attr(&self.file, "rows", self.rows as i64)
            .map_err(|e| out_err(&self.path, "writing rows", e))?;
        self.file
            .flush()
            .map_err(|e| out_err(&self.path, "flushing", e))?;
        Ok(())
    }

    /// Writes a dataset once (not per row), e.g. `/params/name`.
    pub fn put_strings(&self, name: &str, values: &[String]) -> Result<()> {
        if self.file.dataset(name).is_ok() {
            return Ok(());
        }
        let w = || -> hdf5::Result<()> {
            if let Some((group, _)) = name.rsplit_once('/') {
                if self.file.group(group).is_err() {
                    self.file.create_group(group)?;
                }
            }
            let v: Vec<VarLenUnicode> = values
                .iter()
                .map(|s| s.parse().unwrap_or_default())
                .collect();
            self.file.new_dataset_builder().with_data(&v).create(name)?;
            Ok(())
        };
        w().map_err(|e| out_err(&self.path, &format!("writing {name}"), e))
    }

    /// Ends the run. `complete` marks that every requested checkpoint is in the file. A file this
    /// run created that holds no row is removed, so a failure leaves nothing that looks like results.
    pub fn finish(self, complete: bool) -> Result<()> {
        if complete {
            write_i64_attr(&self.file, "complete", 1)
                .map_err(|e| out_err(&self.path, "writing", e))?;
            self.file
                .flush()
                .map_err(|e| out_err(&self.path, "flushing", e))?;
        }
        let (path, remove) = (
            self.path.clone(),
            self.created && self.rows == 0 && !complete,
        );
        drop(self.file);
        if remove {
            let _ = std::fs::remove_file(&path);
        }
        Ok(())
    }
}
