//! ONNX -> ONNX transforms that turn an exported forward graph into what probe runs:
//! - [`lift`]: the checkpoint's state (parameters and buffers) becomes graph *inputs*, so one
//!   session serves every checkpoint without rewriting the model;
//! - [`loss`]: a loss head on the model's output (per-element loss and correctness, summed in f64
//!   by the caller).
//! The reverse-mode gradient builder lives here too (issue 3).

pub mod lift;
pub mod loss;

pub use lift::{eval_graph, EvalGraph};
pub use loss::LossKind;
