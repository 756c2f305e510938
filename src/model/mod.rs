//! The model: an ONNX graph whose parameters are named initializers, as PyTorch exports it.
//!
//! Loading resolves ONNX *external data* (`model.onnx` + `model.onnx.data`, `location`/`offset`/
//! `length` entries), which every PyTorch 2.11 export uses, so that the in-memory graph is
//! self-contained. Each initializer gets a [`Role`]:
//! - `Parameter` and `Buffer` tensors make up the *state* a checkpoint supplies (`state_dict()`);
//! - `Constant` tensors are part of the architecture and never come from a checkpoint.
//!
//! PyTorch's exporter records the role in the initializer's `value_info` metadata
//! (`pkg.torch.export.graph_signature.InputSpec.kind` = `PARAMETER` | `BUFFER` |
//! `CONSTANT_TENSOR`, and `...InputSpec.persistent`; see [`export_info`]). Graphs from other
//! exporters lack it; then every floating-point initializer is state, and those feeding a
//! BatchNormalization's running-mean/variance inputs are buffers.

pub mod checkpoint;
pub mod checkpoint_set;
pub mod export_info;
pub mod graph;
pub mod hf_renames;
pub mod matching;
mod onnx;
pub mod optimizer_meta;

pub use checkpoint::Checkpoint;
pub use export_info::Role;
pub use matching::Options as CheckpointOptions;
pub(crate) use onnx::file_kind;
pub use onnx::{
    checked_shape, decode_tensor, fmt_dims, sha256_file, Dim, Model, ParamInfo, ValueSpec,
};
