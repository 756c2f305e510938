//! Shapes and element types of the graph's values, as a gradient rule reads them: a dimension
//! is static or follows the batch (`None`). `crate::autodiff::shapes` fills them in by running
//! the forward graph in ONNX Runtime.
use crate::tensor::DType;
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct Info {
    pub dtype: DType,
    /// Dimensions; `None` for one that follows the batch size.
    pub dims: Vec<Option<usize>>,
}

#[derive(Debug, Clone, Default)]
pub struct Shapes {
    pub map: HashMap<String, Info>,
    /// Values of small int64 tensors, as observed in the last run. Only those that depend on
    /// constants alone are used as build-time constants (see [`super::consts::constants`]).
    pub ints: HashMap<String, Vec<i64>>,
}

/// Ops whose outputs are sequences, not tensors: not read back (their parts are, via SequenceAt).
pub const SEQUENCE_OPS: &[&str] = &[
    "SplitToSequence",
    "SequenceConstruct",
    "SequenceInsert",
    "SequenceErase",
    "SequenceEmpty",
];

impl Shapes {
    pub fn get(&self, name: &str) -> Option<&Info> {
        self.map.get(name)
    }
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.map.get(name).map(|i| i.dtype)
    }
    pub fn rank(&self, name: &str) -> Option<usize> {
        self.map.get(name).map(|i| i.dims.len())
    }
    /// All dimensions, if none follows the batch.
    pub fn static_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.map.get(name)?.dims.iter().copied().collect()
    }
}
