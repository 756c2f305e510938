//! Fashion-MNIST from Debian's `dataset-fashion-mnist` package: IDX files, gzipped.
//!
//! IDX: a big-endian header (magic 2051 for images, then N, rows, cols; magic 2049 for labels,
//! then N) followed by one byte per pixel or label. The gzip stream cannot be read by slices, so the
//! bytes (47 MB for the training split) are held once; batches are decoded from them on demand.
use super::batch::{Array, Batch, Dataset, Kind, Spec};
use anyhow::{Context, Result};
use ndarray::{ArrayD, IxDyn};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Training-set pixel mean and standard deviation (of px/255), the usual normalization.
pub const MEAN: f32 = 0.2860;
pub const STD: f32 = 0.3530;

#[derive(Debug, Clone, Copy)]
pub enum Split {
    Train,
    Test,
}

pub struct FashionMnist {
    spec: Spec,
    images: Vec<u8>,
    labels: Vec<u8>,
}

fn read_gz(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| {
        crate::error::input(format!(
            "{}: {e} (Fashion-MNIST comes from Debian's dataset-fashion-mnist: run ./setup.sh)",
            path.display()
        ))
    })?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .map_err(|e| {
            crate::error::input(format!("{}: not a readable gzip file: {e}", path.display()))
        })?;
    Ok(out)
}

fn be32(b: &[u8], i: usize) -> usize {
    u32::from_be_bytes(b[4 * i..4 * i + 4].try_into().unwrap()) as usize
}

/// Parses an IDX file's header; returns the dimensions and the payload.
pub fn parse_idx(path: &Path, bytes: Vec<u8>, magic: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let ndim = magic & 0xff;
    let bad =
        |what: &str| crate::error::input(format!("{}: not an IDX file ({what})", path.display()));
    if bytes.len() < 4 + 4 * ndim || be32(&bytes, 0) != magic {
        return Err(bad(&format!("expected magic {magic}")));
    }
    let dims: Vec<usize> = (0..ndim).map(|i| be32(&bytes, 1 + i)).collect();
    let n: usize = dims.iter().product();
    let header = 4 + 4 * ndim;
    if bytes.len() != header + n {
        return Err(bad(&format!(
            "{} bytes of data for dims {:?}",
            bytes.len() - header,
            dims
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

impl FashionMnist {
    pub fn open(split: Split) -> Result<FashionMnist> {
        Self::open_in(Path::new(DIR), split)
    }

    pub fn open_in(dir: &Path, split: Split) -> Result<FashionMnist> {
        let (prefix, name) = match split {
            Split::Train => ("train", "fashion-mnist:train"),
            Split::Test => ("t10k", "fashion-mnist:test"),
        };
        let ipath: PathBuf = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
        let lpath: PathBuf = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
        let (idims, images) = parse_idx(&ipath, read_gz(&ipath)?, 2051)?;
        let (ldims, labels) = parse_idx(&lpath, read_gz(&lpath)?, 2049)?;
        if idims[0] != ldims[0] {
            return Err(crate::error::input(format!(
                "{}: {} images but {} has {} labels",
                ipath.display(),
                idims[0],
                lpath.display(),
                ldims[0]
            )));
        }
        let spec = Spec {
            identity: name.to_string(),
            len: idims[0],
            x_shape: vec![1, idims[1], idims[2]],
            x_kind: Kind::Float,
            y_shape: vec![],
            y_kind: Kind::Int,
        };
        Ok(FashionMnist {
            spec,
            images,
            labels,
        })
    }
}

impl Dataset for FashionMnist {
    fn spec(&self) -> &Spec {
        &self.spec
    }
    fn read(&mut self, start: usize, count: usize) -> Result<Batch> {
        let per: usize = self.spec.x_shape.iter().product();
        let px = &self.images[start * per..(start + count) * per];
        let x: Vec<f32> = px
            .iter()
            .map(|&p| (p as f32 / 255.0 - MEAN) / STD)
            .collect();
        let y: Vec<i64> = self.labels[start..start + count]
            .iter()
            .map(|&l| l as i64)
            .collect();
        let mut xs = vec![count];
        xs.extend(&self.spec.x_shape);
        Ok(Batch {
            start,
            x: Array::F32(ArrayD::from_shape_vec(IxDyn(&xs), x).context("x shape")?),
            y: Array::I64(ArrayD::from_shape_vec(IxDyn(&[count]), y).context("y shape")?),
        })
    }
}
