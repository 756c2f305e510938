//! The measurements probe makes at each checkpoint, over every sample of a data set exactly once,
//! in order, with sums accumulated in f64.

pub mod check;
pub mod eval;
pub mod grad;

pub use eval::{evaluate, EvalResult};
