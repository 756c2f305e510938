//! `probe`: exact full-dataset losses and gradients of ONNX models at training checkpoints.
//!
//! The modules follow the data's way through the program:
//!
//! ```text
//! data        datasets as deterministic, ordered streams of batches (Fashion-MNIST, Shakespeare,
//!             any HDF5 file with `x` and `y`)
//!   -> model  the ONNX graph (external data resolved), its parameters, and checkpoints
//!             (safetensors keyed by ONNX initializer names) matched against it
//!   -> ops / autodiff   per-op rules and the ONNX -> ONNX transforms: the loss head appended to
//!             the forward graph, parameters lifted to graph inputs
//!   -> runtime          ONNX Runtime sessions over those graphs
//!   -> measure          the measurements (full-dataset loss and accuracy, ...), sums in f64
//!   -> store            the HDF5 schema the results are written in
//!   -> analyze / plot   reading a results file back: trends, stationarity and the weight
//!             distribution's motion across checkpoints (`/analysis`), and figures
//! ```
//!
//! The `probe` binary (`src/main.rs`, `src/cli.rs`) is a thin, checked layer over this library.

pub mod analyze;
pub mod autodiff;
pub mod data;
pub mod error;
pub mod interrupt;
pub mod measure;
pub mod model;
pub mod ops;
pub mod plot;
pub mod progress;
pub mod runtime;
pub mod store;
pub mod tensor;
pub mod train;
