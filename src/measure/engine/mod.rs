//! The engines that compute one batch at one checkpoint, in f32: the batch's summed loss and
//! its gradient ([`BatchEngine`], for `probe grad` and `--noise`), and its Hessian-vector
//! product ([`HvpEngine`], for `--hessian`). Each comes twice: probe's ONNX graphs run by ONNX
//! Runtime ([`ort`], the default), and libtorch autograd on the interpreted model ([`torch`],
//! `--engine torch`, CPU or `--device cuda`). [`open`] builds the pair a run asks for.
//! Everything around a batch (the pass over the data, the f64 sums, the store) is the engines'
//! caller's and the same for all of them.
use crate::data::Batch;
use crate::model::Checkpoint;
use anyhow::Result;

pub mod hoist;
pub mod open;
pub mod ort;
pub mod torch;

/// Which engine computes each batch's loss and gradient (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// probe's ONNX gradient graph, run by ONNX Runtime on CPU.
    OnnxRuntime,
    /// libtorch autograd on the model interpreted node by node ([`crate::runtime::torch`]).
    Torch(tch::Device),
}

impl Engine {
    /// As the store's `engine` attribute records it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::OnnxRuntime => "onnxruntime",
            Engine::Torch(_) => "torch",
        }
    }
    pub fn device_name(self) -> &'static str {
        match self {
            Engine::Torch(tch::Device::Cuda(_)) => "cuda",
            _ => "cpu",
        }
    }
}

/// One batch's share, as an engine computes it (in f32).
pub struct BatchGrad {
    /// The batch's summed loss.
    pub loss: f64,
    /// Its correct count (cross-entropy).
    pub correct: Option<f64>,
    /// The gradient of the summed loss per parameter, in [`BatchEngine::params`] order.
    pub grads: Grads,
}

/// A batch's gradients, where the engine left them: ONNX Runtime's output tensors are read in
/// place (a copy would be a model's size in fresh memory every batch), libtorch's are copied out.
pub enum Grads {
    Owned(Vec<Vec<f32>>),
    Ort(Vec<::ort::value::DynValue>),
}

impl Grads {
    /// One slice per parameter, in order.
    pub fn slices(&self) -> Result<Vec<&[f32]>> {
        match self {
            Grads::Owned(v) => Ok(v.iter().map(|g| &g[..]).collect()),
            Grads::Ort(v) => v
                .iter()
                .map(|x| Ok(x.try_extract_tensor::<f32>()?.1))
                .collect(),
        }
    }
}

/// What computes one batch's loss and gradient at one checkpoint; everything around it (the pass
/// over the data, f64 accumulation, non-finite handling, metrics, the store) is shared by the
/// engines.
pub trait BatchEngine {
    /// The parameters whose gradients [`BatchEngine::batch`] returns, in order.
    fn params(&self) -> &[String];
    /// Takes `ckpt`'s state for the batches that follow.
    fn load(&mut self, ckpt: &Checkpoint) -> Result<()>;
    /// The batch's loss and gradient at `ckpt`, the checkpoint last given to
    /// [`BatchEngine::load`].
    fn batch(&mut self, ckpt: &Checkpoint, b: &Batch) -> Result<BatchGrad>;
}

/// Computes one batch's Hessian-vector product.
pub trait HvpEngine {
    /// The parameters v and H v are over, in order.
    fn hvp_params(&self) -> &[String];
    fn hvp_load(&mut self, ckpt: &Checkpoint) -> Result<()>;
    /// Takes the direction v (per parameter, flattened) for the batches that follow: set once
    /// per pass over the data, not per batch.
    fn set_direction(&mut self, v: Vec<Vec<f32>>) -> Result<()>;
    /// H_b v for the batch's summed loss.
    fn hvp(&mut self, b: &Batch) -> Result<Vec<Vec<f32>>>;
}
