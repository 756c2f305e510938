//! Training by libtorch: the same ONNX graph, interpreted node by node with tch tensors
//! ([`crate::runtime::torch`]), trained with libtorch autograd and PyTorch's optimizers
//! ([`optim`]) on the batches [`sampler`] draws, writing the checkpoints `probe grad` reads
//! ([`run`], file names in [`files`]).

pub mod files;
pub mod optim;
pub mod run;
pub mod sampler;

/// The libtorch interpreter under its former path (it serves `probe grad --engine torch` too).
pub use crate::runtime::torch::interp;
