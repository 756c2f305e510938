//! Data sets as deterministic, ordered streams of batches.
//!
//! Every data set is `N` samples, each an input `x` (a tensor of fixed per-sample shape, float or
//! integer) and a target `y` (a class id, shape `[]`, or token ids `[T]`, or real values for
//! `--loss mse`). A batch is the samples `start..start+count` in file order: no shuffling and no
//! augmentation, so a full pass visits every sample exactly once in a fixed order.
//!
//! Names understood by [`open`]:
//! - `fashion-mnist` / `fashion-mnist:train` / `fashion-mnist:test`: Debian's
//!   `dataset-fashion-mnist` (IDX, gzipped), images normalized as `(px/255 - 0.2860) / 0.3530`.
//! - `shakespeare`: 42 plays and poems as one character stream, windows of `T` (see
//!   [`shakespeare`]).
//! - any path ending in `.h5` / `.hdf5`: a file with datasets `x` [N, ...] and `y` [N] or [N, T],
//!   read by slices so memory does not grow with N.

pub mod fashion_mnist;
pub mod hdf5_file;
pub mod shakespeare;

use anyhow::Result;
use ndarray::ArrayD;

/// Whether a tensor holds real numbers or integers (class ids, token ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Float,
    Int,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Float => "float",
            Kind::Int => "integer",
        })
    }
}

/// A batch's values: floats as f32, integers as i64 (what the graphs take).
#[derive(Debug, Clone)]
pub enum Array {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl Array {
    pub fn shape(&self) -> &[usize] {
        match self {
            Array::F32(a) => a.shape(),
            Array::I64(a) => a.shape(),
        }
    }
    /// As a host tensor (for feeding a graph outside the batch loop).
    pub fn to_host(&self) -> crate::tensor::HostTensor {
        use crate::tensor::{DType, HostTensor, Values};
        match self {
            Array::F32(a) => HostTensor {
                shape: a.shape().to_vec(),
                dtype: DType::F32,
                values: Values::F32(a.iter().copied().collect()),
            },
            Array::I64(a) => HostTensor {
                shape: a.shape().to_vec(),
                dtype: DType::I64,
                values: Values::I64(a.iter().copied().collect()),
            },
        }
    }
    pub fn kind(&self) -> Kind {
        match self {
            Array::F32(_) => Kind::Float,
            Array::I64(_) => Kind::Int,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Batch {
    /// Index of the batch's first sample in the data set.
    pub start: usize,
    pub x: Array,
    pub y: Array,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.x.shape()[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a data set looks like, before any batch is read.
#[derive(Debug, Clone)]
pub struct Spec {
    /// How the data set is named in the results (`fashion-mnist:train`, a file path).
    pub identity: String,
    pub len: usize,
    /// Per-sample shapes (without the leading N).
    pub x_shape: Vec<usize>,
    pub x_kind: Kind,
    pub y_shape: Vec<usize>,
    pub y_kind: Kind,
}

pub trait Dataset: Send {
    fn spec(&self) -> &Spec;
    /// Samples `start..start + count` (count > 0, within the data set) in file order.
    fn read(&mut self, start: usize, count: usize) -> Result<Batch>;
}

/// What the model expects, so a data set with a free parameter (Shakespeare's window length) can
/// fit it: the model's per-sample input shape where it is static.
#[derive(Debug, Clone, Default)]
pub struct Hint {
    pub x_shape: Option<Vec<usize>>,
}

/// Opens a data set by name or path (see the module docs).
pub fn open(spec: &str, hint: &Hint) -> Result<Box<dyn Dataset>> {
    let lower = spec.to_ascii_lowercase();
    if lower.ends_with(".h5") || lower.ends_with(".hdf5") || std::path::Path::new(spec).is_file() {
        return Ok(Box::new(hdf5_file::Hdf5Data::open(std::path::Path::new(
            spec,
        ))?));
    }
    let (name, split) = match spec.split_once(':') {
        Some((n, s)) => (n, Some(s)),
        None => (spec, None),
    };
    match name {
        "fashion-mnist" => {
            let split = match split.unwrap_or("train") {
                "train" => fashion_mnist::Split::Train,
                "test" => fashion_mnist::Split::Test,
                other => {
                    return Err(crate::error::input(format!(
                        "--data {spec}: unknown split '{other}' (fashion-mnist has 'train' and 'test')"
                    )))
                }
            };
            Ok(Box::new(fashion_mnist::FashionMnist::open(split)?))
        }
        "shakespeare" => {
            let t = match split {
                Some(s) => s.strip_prefix("T=").unwrap_or(s).parse::<usize>().map_err(|_| {
                    crate::error::input(format!("--data {spec}: expected shakespeare or shakespeare:T (window length)"))
                })?,
                None => match hint.x_shape.as_deref() {
                    Some([t]) => *t,
                    _ => shakespeare::DEFAULT_WINDOW,
                },
            };
            Ok(Box::new(shakespeare::Shakespeare::open(t)?))
        }
        _ => Err(crate::error::input(format!(
            "--data {spec}: no such file, and not a data set probe knows (fashion-mnist[:train|:test], shakespeare[:T], or an .h5 file with x and y)"
        ))),
    }
}

/// Bytes this process may still allocate, as far as the system says: available memory plus
/// free swap (`/proc/meminfo`), and the soft limits on the data segment and the address space.
/// `None` when none of these can be read.
pub fn memory_limit() -> Option<u64> {
    let mut limit: Option<u64> = None;
    let mut take = |v: u64| limit = Some(limit.map_or(v, |l| l.min(v)));
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb.saturating_mul(1024))
        };
        if let Some(avail) = field("MemAvailable:") {
            take(avail.saturating_add(field("SwapFree:").unwrap_or(0)));
        }
    }
    for resource in [libc::RLIMIT_DATA, libc::RLIMIT_AS] {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given and nothing else.
        if unsafe { libc::getrlimit(resource, &mut r) } == 0 && r.rlim_cur != libc::RLIM_INFINITY {
            take(r.rlim_cur);
        }
    }
    limit
}

/// Bytes of `n` samples of `shape` at `elem` bytes an element, if that fits in a `u64`.
pub fn samples_bytes(n: usize, shape: &[usize], elem: u64) -> Option<u64> {
    sample_bytes(shape, elem)?.checked_mul(n as u64)
}

/// Bytes of one sample of `shape` at `elem` bytes an element, if that fits in a `u64`.
pub fn sample_bytes(shape: &[usize], elem: u64) -> Option<u64> {
    shape.iter().try_fold(elem, |a, &d| a.checked_mul(d as u64))
}

/// A data set restricted to its first `limit` samples (`--limit`).
pub struct Limited {
    inner: Box<dyn Dataset>,
    spec: Spec,
}

impl Limited {
    pub fn new(inner: Box<dyn Dataset>, limit: usize) -> Limited {
        let mut spec = inner.spec().clone();
        if limit < spec.len {
            spec.identity = format!("{}[:{}]", spec.identity, limit);
            spec.len = limit;
        }
        Limited { inner, spec }
    }
}

impl Dataset for Limited {
    fn spec(&self) -> &Spec {
        &self.spec
    }
    fn read(&mut self, start: usize, count: usize) -> Result<Batch> {
        self.inner.read(start, count)
    }
}

/// The batches of a full pass: `(start, count)` for every batch, the last one possibly smaller.
pub fn batches(len: usize, batch: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(batch.max(1))
        .map(move |s| (s, batch.min(len - s)))
}
