//! Training by libtorch: the same ONNX graph, interpreted node by node with tch tensors
//! ([`interp`]), trained with libtorch autograd and PyTorch's optimizers ([`optim`]), writing the
//! checkpoints `probe grad` reads ([`run`]).

pub mod files;
pub mod interp;
pub mod optim;
pub mod run;
pub mod sampler;
