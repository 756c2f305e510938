//! A results file read back row by row, each row as the [`Row`] that wrote it: what `probe merge`
//! combines. Only the first `rows` entries of each per-row dataset (chunked, growing along the
//! first axis) are rows; the fixed datasets (`/params/name`) and `/analysis` are not.
use super::{Cell, Row};
use crate::error::input;
use anyhow::Result;
use hdf5::types::{FloatSize, TypeDescriptor, VarLenUnicode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A file attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    I64(i64),
    F64(f64),
}

impl std::fmt::Display for Attr {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Attr::Str(s) => write!(f, "'{s}'"),
            Attr::I64(v) => write!(f, "{v}"),
            Attr::F64(v) => write!(f, "{v}"),
        }
    }
}

pub struct ResultsFile {
    pub path: PathBuf,
    pub attrs: BTreeMap<String, Attr>,
    pub rows: usize,
    per_row: Vec<(String, hdf5::Dataset)>,
    file: hdf5::File,
}

impl ResultsFile {
    /// Opens a probe results file; anything else is an input error naming it.
    pub fn open(path: &Path) -> Result<ResultsFile> {
        let name = path.display();
        let file = hdf5::File::open(path)
            .map_err(|e| input(format!("{name}: not an HDF5 file, or not readable ({e})")))?;
        let mut attrs = BTreeMap::new();
        for a in file.attr_names()? {
            let at = file.attr(&a)?;
            let v = match at.dtype()?.to_descriptor()? {
                TypeDescriptor::VarLenUnicode => at
                    .read_scalar::<VarLenUnicode>()
                    .map(|s| Attr::Str(s.as_str().to_string())),
                TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) => {
                    at.read_scalar::<i64>().map(Attr::I64)
                }
                TypeDescriptor::Float(_) => at.read_scalar::<f64>().map(Attr::F64),
                _ => continue,
            };
            attrs.insert(a.clone(), v?);
        }
        if !attrs.contains_key("command") {
            return Err(input(format!(
                "{name}: not a probe results file (no `command` attribute)"
            )));
        }
        let rows = match attrs.get("rows") {
            Some(Attr::I64(r)) => (*r).max(0) as usize,
            _ => 0,
        };
        let mut all = Vec::new();
        super::datasets(&file, "", &mut all)?;
        let per_row = all
            .into_iter()
            .map(|(n, ds)| (n.trim_start_matches('/').to_string(), ds))
            .filter(|(n, ds)| ds.chunk().is_some() && !n.starts_with("analysis/"))
            .collect();
        Ok(ResultsFile {
            path: path.to_path_buf(),
            attrs,
            rows,
            per_row,
            file,
        })
    }

    pub fn str_attr(&self, name: &str) -> Option<&str> {
        match self.attrs.get(name) {
            Some(Attr::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// A whole dataset of strings (`/params/name`); empty when there is none.
    pub fn strings(&self, name: &str) -> Vec<String> {
        self.file
            .dataset(name)
            .and_then(|d| d.read_raw::<VarLenUnicode>())
            .map(|v| v.into_iter().map(|s| s.as_str().to_string()).collect())
            .unwrap_or_default()
    }

    /// A whole dataset of integers (`/checkpoints/step`); empty when there is none.
    pub fn i64s(&self, name: &str) -> Vec<i64> {
        self.file
            .dataset(name)
            .and_then(|d| d.read_raw::<i64>())
            .unwrap_or_default()
    }

    /// The per-row datasets, by path without the leading `/`.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.per_row.iter().map(|(n, _)| n.as_str())
    }

    /// Row `k` (< `rows`), every per-row dataset's entry.
    pub fn row(&self, k: usize) -> Result<Row> {
        let mut row = Row::new();
        for (name, ds) in &self.per_row {
            let cell = read_cell(ds, k).map_err(|e| {
                input(format!(
                    "{}: cannot read /{name} row {k}: {e}",
                    self.path.display()
                ))
            })?;
            row.push((name.clone(), cell));
        }
        Ok(row)
    }
}

/// Entry `k` of a per-row dataset: a scalar for a [K] dataset, a tensor for [K, ...].
fn read_cell(ds: &hdf5::Dataset, k: usize) -> hdf5::Result<Cell> {
    let shape = ds.shape();
    let inner: Vec<usize> = shape[1..].to_vec();
    let mut parts = vec![hdf5::SliceOrIndex::from(k..k + 1)];
    parts.extend(inner.iter().map(|_| hdf5::SliceOrIndex::from(..)));
    let sel = hdf5::Hyperslab::from(parts);
    let scalar = inner.is_empty();
    Ok(match ds.dtype()?.to_descriptor()? {
        TypeDescriptor::Float(FloatSize::U4) => {
            let v = ds.read_slice::<f32, _, ndarray::IxDyn>(sel)?;
            Cell::F32s(inner, v.iter().copied().collect())
        }
        TypeDescriptor::Float(_) => {
            let v: Vec<f64> = ds
                .read_slice::<f64, _, ndarray::IxDyn>(sel)?
                .iter()
                .copied()
                .collect();
            if scalar {
                Cell::F64(v[0])
            } else {
                Cell::F64s(inner, v)
            }
        }
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) => {
            let v: Vec<i64> = ds
                .read_slice::<i64, _, ndarray::IxDyn>(sel)?
                .iter()
                .copied()
                .collect();
            if scalar {
                Cell::I64(v[0])
            } else {
                Cell::I64s(inner, v)
            }
        }
        TypeDescriptor::VarLenUnicode => {
            let v = ds.read_slice::<VarLenUnicode, _, ndarray::IxDyn>(sel)?;
            Cell::Str(
                v.iter()
                    .next()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            )
        }
        other => return Err(format!("unexpected type {other:?}").into()),
    })
}
