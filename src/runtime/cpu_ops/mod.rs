//! The `probe.cpu` custom-operator domain: CPU kernels for gradient ops that standard ONNX ops
//! run too slowly on ONNX Runtime's CPU provider (convolutions, matrix products, softmax and
//! attention by libtorch, what PyTorch eager runs; elementwise and per-row gradients in plain
//! Rust), registered on every session [`super::session`] opens.
//!
//! The gradient rules emit these ops only when asked ([`crate::autodiff::grad::Kernels::ProbeCpu`],
//! the default of `probe grad` on CPU); the standard-op form stays what `probe autodiff` writes
//! and what `probe grad --standard-ops` runs, and the tests hold the two to each other (the
//! op tests in `ops/*.rs`, their `probe_cpu` cases). Each op's
//! maths is in its kernel file; the rules that emit them say when (`ops/*.rs`).
//!
//! Layout, one file per kernel family, each holding its ops' typed attributes and kernels,
//! registered under the op-type constants the rules write, which live in one place,
//! `crate::ops::rule::kernels` (domain `probe.cpu`, version 1):
//! - [`conv`]: `Conv`, `ConvGrad`, `ConvGradX`; [`interleave`]: `Interleave` (the strided dX's
//!   phase assembly); [`matmul`]: `MatMul`, `MatMulAdd`;
//! - [`relu`]: `ReluGrad`, `AddRelu`, `SumReluGrad`; [`clip`]: `ClipGrad`; [`batch_norm`]: `BatchNormalization`,
//!   `BatchNormalizationGrad`, `ReluBatchNormalizationGrad`;
//! - [`softmax`]: `Softmax`, `SoftmaxGrad`, `LogSoftmaxGrad`; [`layer_norm`]:
//!   `LayerNormalization`, `LayerNormalizationGrad`; [`gelu`]: `GeluGrad`; [`silu`]: `Silu`, `SiluGrad`; [`max_pool`]: `MaxPoolGrad`; [`fold`]: `FoldScale`, `FoldScaleGrad`; [`attention`]:
//!   `ScaledDotProductAttention`, `ScaledDotProductAttentionGrad`; [`gather`]: `GatherGrad`,
//!   `GatherElementsGrad`; [`transpose`]: `Transpose`; [`reduce`]: `ReduceSumLeading`;
//! - the machinery: [`op`] (the kernel trait and its one adapter to ONNX Runtime), [`exec`]
//!   (tensors as slices, parts, the safe split of outputs), [`ffi`] (every C function, behind
//!   checked wrappers), [`lanes`] (eight-lane sums), [`memory`] (glibc malloc tuning).
//!
//! Tests: each kernel file's own run its ops through an ONNX Runtime session at 1 and 3
//! threads against their definitions in f64, with what they share (a one-node model, the
//! run, the tolerances) in `testing` (test-only).
//!
//! Threads: libtorch runs single-threaded (its intra-op count is set to 1 where these graphs
//! run) and each kernel splits the batch into one part per ONNX Runtime intra-op thread, run
//! on ONNX Runtime's own pool (`KernelContext_ParallelFor`). Two pools, each with as many
//! spinning threads as cores, would oversubscribe the cores.
pub mod attention;
pub mod batch_norm;
pub mod clip;
pub mod conv;
pub mod exec;
pub mod ffi;
pub mod fold;
pub mod gather;
pub mod gelu;
pub mod interleave;
pub mod lanes;
pub mod layer_norm;
pub mod matmul;
pub mod max_pool;
pub mod memory;
pub mod op;
pub mod reduce;
pub mod relu;
pub mod silu;
pub mod softmax;
#[cfg(test)]
mod testing;
pub mod transpose;

use anyhow::Result;
use op::op;
use ort::operator::OperatorDomain;

pub use op::DOMAIN;

/// The `probe.cpu` domain with every op, for `SessionBuilder::with_operators`; `threads` is the
/// session's intra-op thread count (the kernels split their batch that many ways).
pub fn domain(threads: usize) -> Result<OperatorDomain> {
    memory::keep_freed_memory();
    let p = threads.max(1);
    Ok(OperatorDomain::new(DOMAIN)?
        .add(op(&conv::CONV_OP, p))?
        .add(op(&conv::CONV_GRAD_OP, p))?
        .add(op(&relu::RELU_GRAD_OP, p))?
        .add(op(&batch_norm::BATCH_NORMALIZATION_GRAD_OP, p))?
        .add(op(&batch_norm::BATCH_NORMALIZATION_OP, p))?
        .add(op(&relu::ADD_RELU_OP, p))?
        .add(op(&relu::SUM_RELU_GRAD_OP, p))?
        .add(op(&batch_norm::RELU_BATCH_NORMALIZATION_GRAD_OP, p))?
        .add(op(&conv::CONV_GRAD_X_OP, p))?
        .add(op(&gelu::GELU_GRAD_OP, p))?
        .add(op(&softmax::SOFTMAX_OP, p))?
        .add(op(&softmax::LOG_SOFTMAX_OP, p))?
        .add(op(&softmax::SOFTMAX_GRAD_OP, p))?
        .add(op(&transpose::TRANSPOSE_OP, p))?
        .add(op(&layer_norm::LAYER_NORMALIZATION_GRAD_OP, p))?
        .add(op(&gather::GATHER_GRAD_OP, p))?
        .add(op(&matmul::MAT_MUL_ADD_OP, p))?
        .add(op(&reduce::REDUCE_SUM_LEADING_OP, p))?
        .add(op(&softmax::LOG_SOFTMAX_GRAD_OP, p))?
        .add(op(&softmax::LOG_SOFTMAX_PICK_GRAD_OP, p))?
        .add(op(&gather::GATHER_ELEMENTS_GRAD_OP, p))?
        .add(op(&layer_norm::LAYER_NORMALIZATION_OP, p))?
        .add(op(&matmul::MAT_MUL_OP, p))?
        .add(op(&attention::SCALED_DOT_PRODUCT_ATTENTION_OP, p))?
        .add(op(&attention::SCALED_DOT_PRODUCT_ATTENTION_GRAD_OP, p))?
        .add(op(&interleave::INTERLEAVE_OP, p))?
        .add(op(&clip::CLIP_GRAD_OP, p))?
        .add(op(&silu::SILU_OP, p))?
        .add(op(&silu::SILU_GRAD_OP, p))?
        .add(op(&max_pool::MAX_POOL_GRAD_OP, p))?
        .add(op(&fold::FOLD_SCALE_OP, p))?
        .add(op(&fold::FOLD_SCALE_GRAD_OP, p))?)
}
