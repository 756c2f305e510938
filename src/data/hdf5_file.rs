//! A generic data file: HDF5 with a dataset `x` (model input, [N, ...], float or integer) and a
//! dataset `y` (targets: [N] class ids, [N, T] token ids, or real values for `--loss mse`).
//! Batches are read as hyperslabs of the first axis, so memory does not grow with N.
//!
//! Sizes the file declares are checked before anything is read: every count in checked
//! arithmetic, the raw data held in the file itself (no external storage, no virtual dataset
//! drawing from other files), and every sample's data actually stored (a contiguous dataset's
//! whole extent allocated within the file, every chunk of a chunked one written), so a file
//! that declares 10^8 samples but holds ten is an error, not 10^8 samples of fill values.
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

/// The checks of the module doc for one dataset of `shape`; returns its size in bytes in the
/// file's element type.
fn check_storage(
    path: &Path,
    file_len: u64,
    name: &str,
    ds: &hdf5::Dataset,
    shape: &[usize],
) -> Result<u64> {
    let bad =
        |why: String| crate::error::input(format!("{}: dataset '{name}' {why}", path.display()));
    let elem = ds
        .dtype()
        .map_err(|e| bad(format!("has an unreadable type: {e}")))?
        .size() as u64;
    let numel = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or_else(|| bad(format!("has shape {shape:?}, too large to address")))?;
    let bytes = numel
        .checked_mul(elem)
        .ok_or_else(|| bad(format!("has shape {shape:?}, too large to address")))?;
    let dcpl = ds
        .dcpl()
        .map_err(|e| bad(format!("has unreadable storage properties: {e}")))?;
    if !dcpl.external().is_empty() {
        return Err(bad(
            "keeps its data in external files; probe reads only data held in the file itself"
                .into(),
        ));
    }
    let stored = ds.storage_size();
    match dcpl.layout() {
        hdf5::dataset::Layout::Contiguous => {
            if stored < bytes || ds.offset().is_none() && bytes > 0 {
                return Err(bad(format!(
                    "declares shape {shape:?} ({bytes} bytes) but only {stored} bytes are stored: \
                     the data were never written"
                )));
            }
            let end = ds.offset().unwrap_or(0).checked_add(bytes);
            if end.is_none_or(|e| e > file_len) {
                return Err(bad(format!(
                    "declares shape {shape:?} ({bytes} bytes from byte {}) but the file has {file_len} bytes: \
                     the file was cut short",
                    ds.offset().unwrap_or(0)
                )));
            }
        }
        hdf5::dataset::Layout::Chunked => {
            let chunk = ds.chunk().unwrap_or_default();
            let want = shape
                .iter()
                .zip(chunk.iter())
                .try_fold(1u64, |a, (&d, &c)| {
                    a.checked_mul((d as u64).div_ceil((c as u64).max(1)))
                })
                .ok_or_else(|| bad(format!("has shape {shape:?}, too large to address")))?;
            let have = ds.num_chunks().unwrap_or(0) as u64;
            if chunk.len() != shape.len() || have < want {
                return Err(bad(format!(
                    "declares shape {shape:?} in {want} chunks of {chunk:?} but only {have} are stored: \
                     the data were never written to the end"
                )));
            }
            if stored > file_len {
                return Err(bad(format!(
                    "has {stored} bytes stored in chunks but the file has {file_len} bytes: the file was cut short"
                )));
            }
        }
        hdf5::dataset::Layout::Compact => {}
        #[allow(unreachable_patterns)]
        _ => {
            return Err(bad(
                "is a virtual dataset drawing from other files; probe reads only data held in the file itself"
                    .into(),
            ))
        }
    }
    Ok(bytes)
}

impl Hdf5Data {
    pub fn open(path: &Path) -> Result<Hdf5Data> {
        let meta = std::fs::metadata(path).map_err(|e| {
            crate::error::input(if e.kind() == std::io::ErrorKind::NotFound {
                format!("{}: no such file", path.display())
            } else {
                format!("{}: {e}", path.display())
            })
        })?;
        // HDF5 would block opening a FIFO, and read a device without end.
        if !meta.is_file() {
            return Err(crate::error::input(format!(
                "{}: not a regular file ({})",
                path.display(),
                crate::model::file_kind(&meta)
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
        check_storage(path, meta.len(), "x", &x, &xs)?;
        check_storage(path, meta.len(), "y", &y, &ys)?;
        // A sample as read (f32 or i64) must be addressable too.
        for (name, shape) in [("x", &spec.x_shape), ("y", &spec.y_shape)] {
            if super::sample_bytes(shape, 8).is_none() {
                return Err(crate::error::input(format!(
                    "{}: dataset '{name}' has samples of shape {shape:?}, too large to address",
                    path.display()
                )));
            }
        }
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
    let end = start
        .checked_add(count)
        .filter(|&e| e <= ds.shape().first().copied().unwrap_or(0));
    if end.is_none() {
        return Err(crate::error::input(format!(
            "{}: reading '{name}' rows {start}..+{count}: beyond its {} rows",
            path.display(),
            ds.shape().first().copied().unwrap_or(0)
        )));
    }
    // Checked before HDF5 allocates the batch (as f32 or i64).
    let sample = ds.shape().get(1..).unwrap_or(&[]).to_vec();
    let need = super::samples_bytes(count, &sample, 8);
    let have = super::memory_limit();
    if need.is_none_or(|n| have.is_some_and(|h| n > h)) {
        return Err(crate::error::input(format!(
            "{}: reading '{name}' rows {}..{} of shape {sample:?} needs {} bytes, more than this process may use ({} bytes)",
            path.display(),
            start,
            start + count,
            need.map_or("over 2^64".to_string(), |n| n.to_string()),
            have.unwrap_or(0)
        )));
    }
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
