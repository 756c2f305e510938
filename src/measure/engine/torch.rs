//! The libtorch engines: autograd on the model interpreted node by node
//! ([`crate::runtime::torch`]), one backward pass for a batch's gradient ([`TorchEngine`]) and a
//! double backward for its Hessian-vector product ([`TorchHvp`]).
use super::{BatchEngine, BatchGrad, HvpEngine};
use crate::autodiff::LossKind;
use crate::data::Batch;
use crate::model::{Checkpoint, Model};
use crate::runtime::torch::{to_tensor, Interpreter, Mode, State};
use anyhow::Result;

/// libtorch autograd on the interpreted model: the loss head of [`crate::autodiff::loss`]
/// (cross-entropy as log_softmax and the target's entry, or squared error), summed in f32 as
/// the ONNX graph sums it, then one backward pass.
pub struct TorchEngine<'m> {
    model: &'m Model,
    interp: Interpreter,
    mode: Mode,
    loss: LossKind,
    params: Vec<String>,
    state: State,
}

impl<'m> TorchEngine<'m> {
    pub fn new(
        model: &'m Model,
        device: tch::Device,
        bn_train: bool,
        loss: LossKind,
    ) -> Result<TorchEngine<'m>> {
        let interp = Interpreter::new(model, device)?;
        let params = interp.trainable().to_vec();
        if params.is_empty() {
            return Err(crate::error::input(format!(
                "{}: the model has no trainable (float parameter) initializers: nothing to differentiate",
                model.path.display()
            )));
        }
        Ok(TorchEngine {
            model,
            interp,
            mode: if bn_train {
                Mode::BatchStats
            } else {
                Mode::Eval
            },
            loss,
            params,
            state: State::default(),
        })
    }
}

impl TorchEngine<'_> {
    /// The batch's summed loss (and correct count), with the autograd graph kept.
    fn summed_loss(&mut self, b: &Batch) -> Result<(tch::Tensor, Option<f64>)> {
        use tch::Kind;
        let device = self.interp.device();
        let x = to_tensor(&b.x, device)?;
        let y = to_tensor(&b.y, device)?;
        let z = self.interp.forward(&self.state, &x, self.mode)?;
        Ok(match self.loss {
            LossKind::CrossEntropy => {
                let c = *z.size().last().unwrap_or(&1);
                let z = z.f_reshape([-1, c])?;
                let t = y.f_reshape([-1])?;
                let picked =
                    z.f_log_softmax(1, None::<Kind>)?
                        .f_gather(1, &t.f_unsqueeze(1)?, false)?;
                let loss = picked.f_sum(Kind::Float)?.f_neg()?;
                let correct = z.f_argmax(1, false)?.f_eq_tensor(&t)?.f_sum(Kind::Int64)?;
                (loss, Some(i64::try_from(&correct)? as f64))
            }
            LossKind::Mse => {
                let d = z.f_reshape([-1])?.f_sub(&y.f_reshape([-1])?)?;
                (d.f_square()?.f_sum(Kind::Float)?, None)
            }
        })
    }
}

impl BatchEngine for TorchEngine<'_> {
    fn params(&self) -> &[String] {
        &self.params
    }
    fn load(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.state = State::from_checkpoint(self.model, ckpt, self.interp.device())?;
        Ok(())
    }
    fn batch(&mut self, _ckpt: &Checkpoint, b: &Batch) -> Result<BatchGrad> {
        use tch::Tensor;
        let (loss, correct) = self.summed_loss(b)?;
        let inputs: Vec<&Tensor> = self.params.iter().map(|p| &self.state[p]).collect();
        let grads = Tensor::f_run_backward(&[&loss], &inputs, false, false)?;
        let grads = grads
            .iter()
            .zip(&inputs)
            .map(|(g, p)| {
                // A parameter the loss does not reach has an undefined gradient: exactly zero.
                if !g.defined() {
                    return Ok(vec![0f32; p.numel()]);
                }
                let flat = g.f_reshape([-1])?;
                Ok(Vec::<f32>::try_from(&flat)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BatchGrad {
            loss: f32::try_from(&loss)? as f64,
            correct,
            grads: super::Grads::Owned(grads),
        })
    }
}

/// libtorch's double backward: G = dl/dw with the graph of G kept (`create_graph`), then
/// d<G, v>/dw = H v. The independent reference for the ONNX Hessian-vector-product graph, and
/// `--engine torch`'s way to `--hessian`.
pub struct TorchHvp<'m> {
    pub engine: TorchEngine<'m>,
    pub params: Vec<String>,
    /// The direction, a tensor per parameter on the engine's device (set once per pass).
    pub dirs: Vec<tch::Tensor>,
}

impl HvpEngine for TorchHvp<'_> {
    fn hvp_params(&self) -> &[String] {
        &self.params
    }
    fn hvp_load(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.engine.load(ckpt)
    }
    fn set_direction(&mut self, v: Vec<Vec<f32>>) -> Result<()> {
        let device = self.engine.interp.device();
        self.dirs = self
            .params
            .iter()
            .zip(&v)
            .map(|(p, v)| {
                Ok(tch::Tensor::f_from_slice(v)?
                    .f_reshape(self.engine.state[p].size().as_slice())?
                    .f_to_device(device)?)
            })
            .collect::<Result<_>>()?;
        Ok(())
    }
    fn hvp(&mut self, b: &Batch) -> Result<Vec<Vec<f32>>> {
        use tch::{Kind, Tensor};
        let (loss, _) = self.engine.summed_loss(b)?;
        let inputs: Vec<&Tensor> = self.params.iter().map(|p| &self.engine.state[p]).collect();
        let grads = Tensor::f_run_backward(&[&loss], &inputs, true, true)?;
        let mut dot: Option<Tensor> = None;
        for (g, vt) in grads.iter().zip(&self.dirs) {
            if !g.defined() {
                continue;
            }
            let term = g.f_mul(vt)?.f_sum(Kind::Float)?;
            dot = Some(match dot {
                None => term,
                Some(d) => d.f_add(&term)?,
            });
        }
        let Some(dot) = dot else {
            return Ok(inputs.iter().map(|p| vec![0f32; p.numel()]).collect());
        };
        let hv = Tensor::f_run_backward(&[&dot], &inputs, false, false)?;
        hv.iter()
            .zip(&inputs)
            .map(|(h, p)| {
                if !h.defined() {
                    return Ok(vec![0f32; p.numel()]);
                }
                Ok(Vec::<f32>::try_from(
                    &h.f_reshape([-1])?.f_to_device(tch::Device::Cpu)?,
                )?)
            })
            .collect()
    }
}
