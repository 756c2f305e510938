//! A generic data file: HDF5 with a dataset `x` (model input, [N, ...], float or integer) and a
//! dataset `y` (targets: [N] class ids, [N, T] token ids, or real values for `--loss mse`).
//! Batches are read as hyperslabs of the first axis, so memory does not grow with N.
use super::{Array, Batch, Dataset, Kind, Spec};
use anyhow::Result;
use hdf5::types::TypeDescriptor;
use ndarray::IxDyn;
use std::path::{Path, PathBuf};

pub struct Hdf5Data {
    spec: Spec,
    path: PathBuf,
    x: hdf5::Dataset,
    y: hdf5::Dataset,
}

fn kind_of(path: &Path, name: &str, ds: &hdf5::Dataset) -> Result<Kind> {
    let d = ds.dtype().and_then(|t| t.to_descriptor()).map_err(|e| {
        crate::error::input(format!(
            "{}: dataset '{name}': unreadable type: {e}",
            path.display()
        ))
    })?;
    match d {
        TypeDescriptor::Float(_) => Ok(Kind::Float),
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) | TypeDescriptor::Boolean => {
            Ok(Kind::Int)
        }
        other => Err(crate::error::input(format!(
            "{}: dataset '{name}' has type {other:?}; expected a float or integer array",
            path.display()
        ))),
    }
}

impl Hdf5Data {
    pub fn open(path: &Path) -> Result<Hdf5Data> {
        if !path.exists() {
            return Err(crate::error::input(format!(
                "{}: no such file",
                path.display()
            )));
        }
        let file = hdf5::File::open(path).map_err(|e| {
            crate::error::input(format!("{}: not a readable HDF5 file: {e}", path.display()))
        })?;
        let get = |name: &str| {
            file.dataset(name).map_err(|_| {
                crate::error::input(format!(
                    "{}: no dataset '{name}' (a data file holds 'x' [N, ...] inputs and 'y' [N] or [N, T] targets)",
                    path.display()
                ))
            })
        };
        let x = get("x")?;
        let y = get("y")?;
        let (xs, ys) = (x.shape(), y.shape());
        if xs.is_empty() || ys.is_empty() || xs[0] != ys[0] {
            return Err(crate::error::input(format!(
                "{}: 'x' has shape {:?} and 'y' {:?}; both need the same first dimension N",
                path.display(),
                xs,
                ys
            )));
        }
        let spec = Spec {
            identity: path.display().to_string(),
            len: xs[0],
            x_shape: xs[1..].to_vec(),
            x_kind: kind_of(path, "x", &x)?,
            y_shape: ys[1..].to_vec(),
            y_kind: kind_of(path, "y", &y)?,
        };
        Ok(Hdf5Data {
            spec,
            path: path.to_path_buf(),
            x,
            y,
        })
    }
}

fn read_rows(
    path: &Path,
    name: &str,
    ds: &hdf5::Dataset,
    kind: Kind,
    start: usize,
    count: usize,
) -> Result<Array> {
    // The rows start..start+count of every axis after the first, as one hyperslab.
    let mut parts = vec![hdf5::SliceOrIndex::from(start..start + count)];
    parts.extend((1..ds.ndim()).map(|_| hdf5::SliceOrIndex::from(..)));
    let sel = hdf5::Hyperslab::from(parts);
    let err = |e: hdf5::Error| {
        crate::error::input(format!(
            "{}: reading '{name}' rows {}..{}: {e}",
            path.display(),
            start,
            start + count
        ))
    };
    Ok(match kind {
        Kind::Float => Array::F32(ds.read_slice::<f32, _, IxDyn>(sel).map_err(err)?),
        Kind::Int => Array::I64(ds.read_slice::<i64, _, IxDyn>(sel).map_err(err)?),
    })
}

impl Dataset for Hdf5Data {
    fn spec(&self) -> &Spec {
        &self.spec
    }
    fn read(&mut self, start: usize, count: usize) -> Result<Batch> {
        let x = read_rows(&self.path, "x", &self.x, self.spec.x_kind, start, count)?;
        let y = read_rows(&self.path, "y", &self.y, self.spec.y_kind, start, count)?;
        Ok(Batch { start, x, y })
    }
}
