//! The shapes every data set shares: a batch of samples (`x`, `y`) as arrays, what a data set
//! looks like before it is read ([`Spec`]), the [`Dataset`] trait the readers implement, and the
//! fixed partition of a full pass into batches.

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

/// Samples `A..B` of a data set (`--samples A:B`), numbered from 0 again: the basis of shards
/// of one data set across jobs. The results name the range after the data set
/// (`fashion-mnist:train[1000:2000]`).
pub struct Samples {
    inner: Box<dyn Dataset>,
    spec: Spec,
    first: usize,
}

impl Samples {
    /// Fails (an input error) unless `a < b <= N`.
    pub fn new(inner: Box<dyn Dataset>, a: usize, b: usize) -> Result<Samples> {
        let mut spec = inner.spec().clone();
        if a >= b || b > spec.len {
            return Err(crate::error::input(format!(
                "--samples {a}:{b}: {} has {} samples; a range A:B needs A < B <= {}",
                spec.identity, spec.len, spec.len
            )));
        }
        spec.identity = format!("{}[{a}:{b}]", spec.identity);
        spec.len = b - a;
        Ok(Samples {
            inner,
            spec,
            first: a,
        })
    }
}

impl Dataset for Samples {
    fn spec(&self) -> &Spec {
        &self.spec
    }
    fn read(&mut self, start: usize, count: usize) -> Result<Batch> {
        let mut b = self.inner.read(self.first + start, count)?;
        b.start = start;
        Ok(b)
    }
}

/// The batches of a full pass: `(start, count)` for every batch, the last one possibly smaller.
pub fn batches(len: usize, batch: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(batch.max(1))
        .map(move |s| (s, batch.min(len - s)))
}
