//! The measurements probe makes at each checkpoint, over every sample of a data set exactly once,
//! in order, with sums accumulated in f64.
//!
//! A batch goes from the data reader ([`crate::data`]) through an engine ([`engine`]: ONNX
//! Runtime or libtorch, f32 within the batch) to a pass that sums it in f64 ([`grad::pass`],
//! [`eval`]); [`grad::row`] turns a checkpoint's sums into a results row ([`crate::store`]).

pub mod check;
pub mod engine;
pub mod eval;
pub mod follow;
pub mod grad;
pub mod hessian;
pub mod merge;
pub mod noise;
pub mod reduce;
pub mod resume;
pub mod setup;
pub mod weights;

pub use eval::{evaluate, EvalResult};
pub use setup::{label, pending, setup, Setup};
