//! ONNX -> ONNX transforms that turn an exported forward graph into what probe runs:
//! - [`lift`]: the checkpoint's state (parameters and buffers) becomes graph *inputs*, so one
//!   session serves every checkpoint without rewriting the model;
//! - [`loss`]: a loss head on the model's output (per-element loss and correctness);
//! - [`grad`]: reverse-mode differentiation into standard ONNX ops, with the per-op rules of
//!   [`crate::ops`] and the shapes of [`shapes`];
//! - [`passes`]: `probe grad`'s fast path, the graph rewrites the ops' table entries declare
//!   (folds, `probe.cpu` kernels, fusions), as one ordered pipeline around the sweep.

pub mod grad;
pub mod hvp;
pub mod lift;
pub mod loss;
pub mod model_grad;
pub mod passes;
pub mod shape_cache;
pub mod shapes;

pub use lift::{eval_graph, EvalGraph};
pub use loss::LossKind;
