//! `probe`: exact full-dataset losses and gradients of ONNX models at training checkpoints.
//!
//! The modules follow the data's way through the program (the README's "Repository layout" has
//! the files, and where ReLU, a batch and a results row live):
//!
//! ```text
//! data        datasets as deterministic, ordered streams of batches (Fashion-MNIST, Shakespeare,
//!             any HDF5 file with `x` and `y`); the checks of targets against the model
//!   -> model  the ONNX file (external data confined to its folder), its parameters, and
//!             checkpoints (safetensors keyed by ONNX initializer names) matched against it
//!   -> ops    one file per ONNX op: attributes, libtorch forward, gradient rule, tests; the
//!             table of rules, and `ops::rule` (what rules are written with, the kernel names)
//!   -> runtime          ONNX Runtime sessions; probe's CPU kernels (`runtime::cpu_ops`, domain
//!             `probe.cpu`, one file per kernel family); the libtorch interpreter (`runtime::torch`)
//!   -> autodiff         ONNX -> ONNX: the loss head, the reverse sweep through the rule table,
//!             parameters lifted to graph inputs, the fast path's rewrites (`autodiff::passes`)
//!   -> measure          the passes over the data and their f64 sums (eval, grad, noise,
//!             hessian), the batch engines (`measure::engine`), the results rows
//!   -> store            the HDF5 schema the results are written in, committed atomically
//!   -> analyze / plot   reading a results file back: trends, stationarity and the weight
//!             distribution's motion across checkpoints (`/analysis`), and figures
//! ```
//!
//! `train` (probe train: PyTorch's optimizers over the libtorch interpreter) sits beside
//! `measure`. Imports point one way: `scripts/check_layout.py` (run by `tests/layout.rs`) finds
//! no cycle between modules or files. The `probe` binary (`src/main.rs`, which dispatches to
//! `src/cli/`) is a thin, checked layer over this library.

pub mod analyze;
pub mod autodiff;
pub mod data;
pub mod error;
pub mod interrupt;
pub mod log;
pub mod measure;
pub mod model;
pub mod ops;
pub mod plot;
pub mod progress;
pub mod runtime;
pub mod store;
pub mod tensor;
pub mod train;
