//! libtorch (tch) as a second runtime: the ONNX graph interpreted node by node with tch tensors
//! ([`interp`]), which `probe train` trains with libtorch autograd and `probe grad --engine
//! torch` differentiates, and a data batch moved into tch tensors ([`batch`]).

pub mod batch;
pub mod interp;

pub use batch::to_tensor;
pub use interp::{Interpreter, Mode, State};
