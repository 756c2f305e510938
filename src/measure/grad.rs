//! `probe grad`: the exact gradient of the full-dataset mean loss at each checkpoint.
//!
//! One deterministic pass over every sample, in order: each batch gives the gradient of the
//! batch's *summed* loss (f32, within the batch); those are accumulated across batches in f64
//! and divided by the number of target elements, giving the gradient of the mean loss
//! `L(w) = (1/M) sum_i l_i(w)` over the whole data set.
//!
//! Two engines compute a batch ([`BatchEngine`]): probe's ONNX gradient graph run by ONNX
//! Runtime ([`OrtEngine`], the default), or libtorch autograd on the model interpreted node by
//! node ([`TorchEngine`], `--engine torch`, CPU or `--device cuda`). Everything else, the pass,
//! the f64 sums, non-finite batches, the metrics and the store, is one code path; the store's
//! `engine` and `device` attributes record which computed the rows.
//!
//! Per checkpoint the store gets (see `docs/schema.md`): loss, accuracy, |g|_2, |g|_1, |g|_inf,
//! per-parameter |g|_2, |w|_2 and per-parameter |w|_2, distances to the previous and the first
//! checkpoint, and with `--weight-decay L` the norm of the gradient of the regularized objective
//! `L(w) + (L/2)|w|^2`, i.e. |g + L w|: what SGD with weight decay drives to zero.
use super::check::targets_in_range;
use super::eval::{feed, state_arrays};
use super::hessian::{HvpEngine, OrtHvp};
use super::weights::Distribution;
use crate::autodiff::grad::Kernels;
use crate::autodiff::model_grad::{grad_graph, GradGraph, GradOptions};
use crate::data::{batches, Batch, Dataset};
use crate::model::{Checkpoint, Model};
use crate::progress::Progress;
use crate::store::{Cell, RunInfo, Store};
use crate::train::interp::{Interpreter, Mode, State};
use anyhow::{anyhow, Context, Result};
use ort::session::Session;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNonFinite {
    /// Stop with an error naming the checkpoint and batch (exit 4).
    Stop,
    /// Record the checkpoint's row with NaN and go on; exit 4 at the end.
    Continue,
}

pub struct GradPlan {
    pub model: PathBuf,
    pub checkpoints: Vec<PathBuf>,
    pub data: String,
    pub limit: Option<usize>,
    pub batch: usize,
    pub loss: crate::autodiff::LossKind,
    pub weight_decay: Option<f64>,
    pub save_grad: bool,
    pub bn_train: bool,
    pub engine: Engine,
    /// With [`Engine::OnnxRuntime`]: standard ONNX ops only, or probe's CPU kernels where faster.
    pub kernels: Kernels,
    pub shard: (usize, usize),
    pub on_nonfinite: OnNonFinite,
    /// `--noise`: minibatch and per-sample gradient noise ([`super::noise`]).
    pub noise: Option<super::noise::NoiseOptions>,
    /// `--hessian`: curvature from Hessian-vector products ([`super::hessian`]).
    pub hessian: Option<super::hessian::HessianOptions>,
    pub threads: usize,
    pub out: PathBuf,
    pub force: bool,
    pub quiet: bool,
    pub command_line: String,
}

/// What one checkpoint's pass gives.
#[derive(Debug, Clone)]
pub struct GradResult {
    pub loss: f64,
    pub accuracy: f64,
    pub samples: usize,
    pub elements: usize,
    /// Gradient of the mean loss per parameter (the engine's order), f64.
    pub grads: Vec<Vec<f64>>,
    /// Batches whose loss or gradient was not finite (their values are left out).
    pub nonfinite_batches: Vec<usize>,
    /// With `noise`: the minibatch sums the noise identities need.
    pub batch_noise: Option<super::noise::BatchSums>,
    pub seconds: f64,
}

/// Which engine computes each batch's loss and gradient (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// probe's ONNX gradient graph, run by ONNX Runtime on CPU.
    OnnxRuntime,
    /// libtorch autograd on the model interpreted node by node ([`crate::train::interp`]).
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
    pub grads: Vec<Vec<f32>>,
}

/// What computes one batch at one checkpoint; everything around it (the pass over the data,
/// f64 accumulation, non-finite handling, metrics, the store) is shared by the engines.
pub trait BatchEngine {
    /// The parameters whose gradients [`BatchEngine::batch`] returns, in order.
    fn params(&self) -> &[String];
    /// Takes `ckpt`'s state for the batches that follow.
    fn load(&mut self, ckpt: &Checkpoint) -> Result<()>;
    fn batch(&mut self, b: &Batch) -> Result<BatchGrad>;
}

/// The ONNX gradient graph ([`grad_graph`]) in an ONNX Runtime session.
pub struct OrtEngine {
    session: Session,
    graph: GradGraph,
    params: Vec<String>,
    state: Vec<ndarray::ArrayD<f32>>,
}

impl OrtEngine {
    pub fn new(session: Session, graph: GradGraph) -> OrtEngine {
        let params = graph.grads.iter().map(|(p, _)| p.clone()).collect();
        OrtEngine {
            session,
            graph,
            params,
            state: vec![],
        }
    }
}

impl BatchEngine for OrtEngine {
    fn params(&self) -> &[String] {
        &self.params
    }
    fn load(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.state = state_arrays(&self.graph.state, ckpt)?;
        Ok(())
    }
    fn batch(&mut self, b: &Batch) -> Result<BatchGrad> {
        let graph = &self.graph;
        let inputs = feed(&graph.input, &graph.target, b, &graph.state, &self.state)?;
        let out = self
            .session
            .run(inputs)
            .map_err(|e| anyhow!("ONNX Runtime: {e}"))?;
        let scalar = |name: &str| -> Result<f64> {
            Ok(out[name]
                .try_extract_array::<f32>()?
                .iter()
                .next()
                .copied()
                .unwrap_or(f32::NAN) as f64)
        };
        let mut grads = Vec::with_capacity(graph.grads.len());
        for (_, gname) in &graph.grads {
            let (_, v) = out[gname.as_str()].try_extract_tensor::<f32>()?;
            grads.push(v.to_vec());
        }
        Ok(BatchGrad {
            loss: scalar(&graph.loss_sum)?,
            correct: match &graph.correct_sum {
                Some(c) => Some(scalar(c)?),
                None => None,
            },
            grads,
        })
    }
}

/// libtorch autograd on the interpreted model: the loss head of [`crate::autodiff::loss`]
/// (cross-entropy as log_softmax and the target's entry, or squared error), summed in f32 as
/// the ONNX graph sums it, then one backward pass.
pub struct TorchEngine<'m> {
    model: &'m Model,
    interp: Interpreter,
    mode: Mode,
    loss: crate::autodiff::LossKind,
    params: Vec<String>,
    state: State,
}

impl<'m> TorchEngine<'m> {
    pub fn new(
        model: &'m Model,
        device: tch::Device,
        bn_train: bool,
        loss: crate::autodiff::LossKind,
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
        use crate::autodiff::LossKind;
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

/// libtorch's double backward: G = dl/dw with the graph of G kept (`create_graph`), then
/// d<G, v>/dw = H v. The independent reference for the ONNX Hessian-vector-product graph, and
/// `--engine torch`'s way to `--hessian`.
pub struct TorchHvp<'m> {
    pub engine: TorchEngine<'m>,
    pub params: Vec<String>,
    /// The direction, a tensor per parameter on the engine's device (set once per pass).
    pub dirs: Vec<tch::Tensor>,
}

impl super::hessian::HvpEngine for TorchHvp<'_> {
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

/// A batch array as a libtorch tensor on `device`.
pub fn to_tensor(a: &crate::data::Array, device: tch::Device) -> Result<tch::Tensor> {
    use crate::data::Array;
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let t = match a {
        Array::F32(x) => match x.as_slice() {
            Some(s) => tch::Tensor::f_from_slice(s)?,
            None => tch::Tensor::f_from_slice(&x.iter().copied().collect::<Vec<_>>())?,
        },
        Array::I64(x) => match x.as_slice() {
            Some(s) => tch::Tensor::f_from_slice(s)?,
            None => tch::Tensor::f_from_slice(&x.iter().copied().collect::<Vec<_>>())?,
        },
    };
    Ok(t.f_reshape(shape.as_slice())?.f_to_device(device)?)
}

impl BatchEngine for TorchEngine<'_> {
    fn params(&self) -> &[String] {
        &self.params
    }
    fn load(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.state = State::from_checkpoint(self.model, ckpt, self.interp.device())?;
        Ok(())
    }
    fn batch(&mut self, b: &Batch) -> Result<BatchGrad> {
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
            grads,
        })
    }
}

/// One pass over the data at one checkpoint: each batch's summed loss and gradient from
/// `engine`, accumulated in f64, divided by the number of target elements.
#[allow(clippy::too_many_arguments)]
pub fn full_gradient(
    engine: &mut dyn BatchEngine,
    ckpt: &Checkpoint,
    data: &mut dyn Dataset,
    batch: usize,
    classes: Option<usize>,
    on_nonfinite: OnNonFinite,
    noise: bool,
    progress: &mut Progress,
) -> Result<GradResult> {
    let t0 = std::time::Instant::now();
    engine.load(ckpt)?;
    let spec = data.spec().clone();
    let mut acc: Vec<Vec<f64>> = engine
        .params()
        .iter()
        .map(|p| vec![0.0; ckpt.tensors.get(p).map(|t| t.numel()).unwrap_or(0)])
        .collect();
    let mut sums = noise.then(|| super::noise::BatchSums::new(&acc));
    let (mut loss_sum, mut correct_sum, mut elements) = (0f64, 0f64, 0usize);
    let mut has_correct = false;
    let mut nonfinite = Vec::new();
    for (bi, (start, count)) in batches(spec.len, batch).enumerate() {
        let b = data.read(start, count)?;
        targets_in_range(&b, classes, &spec.identity)?;
        let per_sample: usize = b.y.shape()[1..].iter().product();
        let r = engine.batch(&b).with_context(|| {
            format!(
                "{}: samples {}..{}",
                ckpt.path.display(),
                start,
                start + count
            )
        })?;
        let finite = r.loss.is_finite() && r.grads.iter().all(|g| g.iter().all(|x| x.is_finite()));
        if !finite {
            let msg = format!(
                "{}: non-finite loss or gradient in batch {bi} (samples {}..{}) of {}",
                ckpt.path.display(),
                start,
                start + count,
                spec.identity
            );
            if on_nonfinite == OnNonFinite::Stop {
                return Err(crate::error::non_finite(format!(
                    "{msg} (--on-nonfinite continue records NaN and goes on)"
                )));
            }
            eprintln!("warning: {msg}");
            nonfinite.push(bi);
            progress.inc(count as u64);
            continue;
        }
        for (a, v) in acc.iter_mut().zip(&r.grads) {
            for (s, &x) in a.iter_mut().zip(v.iter()) {
                *s += x as f64;
            }
        }
        if let Some(n) = sums.as_mut() {
            n.add(&r.grads, (count * per_sample.max(1)) as f64);
        }
        loss_sum += r.loss;
        elements += count * per_sample.max(1);
        if let Some(c) = r.correct {
            correct_sum += c;
            has_correct = true;
        }
        progress.inc(count as u64);
    }
    let m = elements.max(1) as f64;
    let nan = !nonfinite.is_empty();
    for a in acc.iter_mut() {
        for s in a.iter_mut() {
            *s = if nan { f64::NAN } else { *s / m };
        }
    }
    Ok(GradResult {
        loss: if nan { f64::NAN } else { loss_sum / m },
        accuracy: if has_correct && !nan {
            correct_sum / m
        } else {
            f64::NAN
        },
        samples: spec.len,
        elements,
        grads: acc,
        nonfinite_batches: nonfinite,
        batch_noise: sums,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn l2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The named parameters of a checkpoint, as f64.
fn weights(names: &[String], c: &Checkpoint) -> Vec<Vec<f64>> {
    names
        .iter()
        .map(|p| {
            c.tensors
                .get(p)
                .and_then(|t| t.as_f32())
                .map(|v| v.iter().map(|&x| x as f64).collect())
                .unwrap_or_default()
        })
        .collect()
}

fn distance(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}

/// A printed row.
pub struct GradRow {
    pub path: String,
    pub step: i64,
    pub loss: f64,
    pub accuracy: f64,
    pub grad_l2: f64,
    pub grad_reg_l2: Option<f64>,
    pub weights_l2: f64,
    pub dist_prev: f64,
    /// With --noise: tr(Sigma)/|g|^2.
    pub b_noise: Option<f64>,
    /// With --hessian: the top eigenvalue.
    pub hessian_top: Option<f64>,
    pub seconds: f64,
}

/// Runs `probe grad` over the plan's checkpoints (this shard's share), one HDF5 row each.
pub fn run(plan: &GradPlan, mut on_row: impl FnMut(&GradRow)) -> Result<Vec<GradRow>> {
    let super::Setup {
        model,
        mut data,
        spec,
        fit,
        checkpoints: all,
    } = super::setup(
        &plan.model,
        &plan.checkpoints,
        &plan.data,
        plan.limit,
        plan.loss,
        plan.quiet,
    )?;
    let (shard, shards) = plan.shard;
    check_options(plan, &model)?;
    let mut hvp_engine: Option<Box<dyn HvpEngine + '_>> = None;
    let mut engine: Box<dyn BatchEngine + '_> = match plan.engine {
        Engine::OnnxRuntime => {
            // Shapes are observed on the first samples of the data, at two batch sizes.
            let probe_sizes: Vec<usize> = if spec.len >= 3 {
                vec![2, 3]
            } else {
                vec![spec.len]
            };
            let mut samples = Vec::new();
            for n in probe_sizes {
                let b = data.read(0, n)?;
                samples.push((b.x.to_host(), b.y.to_host()));
            }
            let opts = GradOptions {
                loss: plan.loss,
                bn_train: plan.bn_train,
                wrt: None,
                kernels: plan.kernels,
            };
            let graph = grad_graph(&model, &opts, &samples)?;
            let bytes = protobuf::Message::write_to_bytes(&graph.proto)?;
            let session = crate::runtime::session(&bytes, plan.threads, "gradient")?;
            if let Some(h) = &plan.hessian {
                // The second sweep needs a rule for every op of the first: standard ops only.
                let hopts = GradOptions {
                    wrt: h.params.clone(),
                    kernels: Kernels::Standard,
                    ..opts.clone()
                };
                let hg = crate::autodiff::hvp::hvp_graph(&model, &hopts, &samples)?;
                let shapes = param_shapes(&model, &hg.dirs)?;
                let bytes = protobuf::Message::write_to_bytes(&hg.grad.proto)?;
                let hs = crate::runtime::session(&bytes, plan.threads, "Hessian-vector product")?;
                hvp_engine = Some(Box::new(OrtHvp::new(hs, hg, shapes)));
            }
            // The probe.cpu kernels split their work over ONNX Runtime's threads and call
            // libtorch single-threaded on each (see runtime::cpu_ops).
            tch::set_num_threads(1);
            Box::new(OrtEngine::new(session, graph))
        }
        Engine::Torch(device) => {
            if device.is_cuda() && std::env::var_os("NVIDIA_TF32_OVERRIDE").is_none() {
                // Exact f32 arithmetic: libtorch lets cuDNN use TF32 (10-bit mantissas) for
                // convolutions by default. Read by cuBLAS and cuDNN when they start, which is
                // after this (the first CUDA call is below).
                std::env::set_var("NVIDIA_TF32_OVERRIDE", "0");
            }
            if device.is_cuda() && !tch::Cuda::is_available() {
                return Err(anyhow!(
                    "--device cuda: libtorch sees no GPU (a CUDA build of libtorch, a driver, and a \
                     probe built with PROBE_TORCH_CUDA=1 are needed)"
                ));
            }
            tch::set_num_threads(plan.threads as i32);
            let engine = TorchEngine::new(&model, device, plan.bn_train, plan.loss)?;
            if let Some(h) = &plan.hessian {
                let params = match &h.params {
                    Some(p) => p.clone(),
                    None => engine.params.clone(),
                };
                hvp_engine = Some(Box::new(TorchHvp {
                    engine: TorchEngine::new(&model, device, plan.bn_train, plan.loss)?,
                    params,
                    dirs: vec![],
                }));
            }
            Box::new(engine)
        }
    };
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(
        "bn".to_string(),
        if plan.bn_train { "train" } else { "eval" }.to_string(),
    );
    extra.insert("engine".to_string(), plan.engine.name().to_string());
    extra.insert(
        "ops".to_string(),
        match (plan.engine, plan.kernels) {
            (Engine::OnnxRuntime, Kernels::ProbeCpu) => "probe.cpu",
            (Engine::OnnxRuntime, Kernels::Standard) => "standard",
            (Engine::Torch(_), _) => "",
        }
        .to_string(),
    );
    extra.insert("device".to_string(), plan.engine.device_name().to_string());
    extra.insert(
        "weight_decay".to_string(),
        plan.weight_decay.map(|l| l.to_string()).unwrap_or_default(),
    );
    // What --noise and --hessian measured; the rows of one file must agree on it.
    extra.insert(
        "noise".to_string(),
        plan.noise
            .as_ref()
            .map(|n| match n.samples {
                None => "samples=all".to_string(),
                Some(k) => format!("samples={k}"),
            })
            .unwrap_or_default(),
    );
    extra.insert(
        "hessian".to_string(),
        plan.hessian
            .as_ref()
            .map(|h| {
                format!(
                    "samples={} iters={} tol={} probes={} seed={} params={}",
                    h.samples.map(|k| k.to_string()).unwrap_or("all".into()),
                    h.iters,
                    h.tol,
                    h.probes,
                    h.seed,
                    h.params
                        .as_ref()
                        .map(|p| p.join(","))
                        .unwrap_or("all".into())
                )
            })
            .unwrap_or_default(),
    );
    let info = RunInfo {
        command: "grad".into(),
        command_line: plan.command_line.clone(),
        model_path: plan.model.display().to_string(),
        model_sha256: model.sha256.clone(),
        data: spec.identity.clone(),
        data_samples: spec.len as i64,
        batch_size: plan.batch as i64,
        loss: plan.loss.name().into(),
        extra,
    };
    let mut store = Store::open(&plan.out, &info, plan.force)?;
    let names: Vec<String> = engine.params().to_vec();
    store.put_strings("params/name", &names)?;
    let done = store.done();
    let first_w = weights(&names, &all[0]);
    let first_dist = Distribution::of(&first_w);
    // The last row's weights and their distribution: the next row's "previous checkpoint"
    // (sorting every tensor is the costly part; a row not in this shard is read afresh).
    let mut last: Option<(usize, Vec<Vec<f64>>, Distribution)> = None;
    let mut rows = Vec::new();
    let mut nonfinite_rows = 0;
    let result = (|| -> Result<()> {
        for (k, c) in all.iter().enumerate() {
            if k % shards != shard {
                continue;
            }
            if !super::pending(c, &done, &plan.out, plan.quiet) {
                continue;
            }
            let (path, label) = (c.path.display().to_string(), super::label(c));
            let mut progress = Progress::new(&label, spec.len as u64, plan.quiet);
            let row_start = std::time::Instant::now();
            let r = full_gradient(
                engine.as_mut(),
                c,
                data.as_mut(),
                plan.batch,
                fit.classes,
                plan.on_nonfinite,
                plan.noise.is_some(),
                &mut progress,
            )?;
            progress.finish();
            let finite = r.nonfinite_batches.is_empty();
            if !r.nonfinite_batches.is_empty() {
                nonfinite_rows += 1;
            }
            let w = weights(&names, c);
            let dist = if k == 0 {
                first_dist.clone()
            } else {
                Distribution::of(&w)
            };
            let (prev_w, prev_dist) = match last.take() {
                Some((j, pw, pd)) if j + 1 == k => (pw, pd),
                _ if k > 0 => {
                    let pw = weights(&names, &all[k - 1]);
                    let pd = Distribution::of(&pw);
                    (pw, pd)
                }
                _ => (w.clone(), dist.clone()),
            };
            let flat_g: Vec<f64> = r.grads.iter().flatten().copied().collect();
            let per_g: Vec<f64> = r.grads.iter().map(|g| l2(g)).collect();
            let per_w: Vec<f64> = w.iter().map(|x| l2(x)).collect();
            let g_l2 = l2(&flat_g);
            let w_l2 = per_w.iter().map(|x| x * x).sum::<f64>().sqrt();
            let dist_prev = distance(&w, &prev_w);
            let mut row: crate::store::Row = vec![
                ("loss".into(), Cell::F64(r.loss)),
                ("accuracy".into(), Cell::F64(r.accuracy)),
                ("samples".into(), Cell::I64(r.samples as i64)),
                ("elements".into(), Cell::I64(r.elements as i64)),
                ("grad/l2".into(), Cell::F64(g_l2)),
                (
                    "grad/l1".into(),
                    Cell::F64(flat_g.iter().map(|x| x.abs()).sum()),
                ),
                (
                    "grad/linf".into(),
                    Cell::F64(flat_g.iter().fold(0.0f64, |m, x| {
                        if x.is_nan() {
                            f64::NAN
                        } else {
                            m.max(x.abs())
                        }
                    })),
                ),
                (
                    "grad/per_param_l2".into(),
                    Cell::F64s(vec![per_g.len()], per_g.clone()),
                ),
                ("weights/l2".into(), Cell::F64(w_l2)),
                (
                    "weights/per_param_l2".into(),
                    Cell::F64s(vec![per_w.len()], per_w),
                ),
                ("weights/dist_prev".into(), Cell::F64(dist_prev)),
                (
                    "weights/dist_first".into(),
                    Cell::F64(distance(&w, &first_w)),
                ),
                (
                    "nonfinite_batches".into(),
                    Cell::I64(r.nonfinite_batches.len() as i64),
                ),
                ("seconds".into(), Cell::F64(r.seconds)),
                ("checkpoints/path".into(), Cell::Str(path.clone())),
                ("checkpoints/step".into(), Cell::I64(c.step)),
                ("checkpoints/sha256".into(), Cell::Str(c.sha256.clone())),
            ];
            // The weights' distribution, per tensor (see `super::weights`).
            let p = names.len();
            let per_dist_prev: Vec<f64> = w
                .iter()
                .zip(&prev_w)
                .map(|(a, b)| {
                    a.iter()
                        .zip(b)
                        .map(|(x, y)| (x - y) * (x - y))
                        .sum::<f64>()
                        .sqrt()
                })
                .collect();
            let per_move: Vec<f64> = w
                .iter()
                .zip(&prev_w)
                .map(|(a, b)| super::weights::mean_abs_move(a, b))
                .collect();
            row.extend([
                ("checkpoints/lr".into(), Cell::F64(checkpoint_lr(c))),
                (
                    "weights/w1_prev".into(),
                    Cell::F64s(vec![p], dist.w1(&prev_dist)),
                ),
                (
                    "weights/w1_first".into(),
                    Cell::F64s(vec![p], dist.w1(&first_dist)),
                ),
                (
                    "weights/per_param_mean_abs_move".into(),
                    Cell::F64s(vec![p], per_move),
                ),
                (
                    "weights/per_param_dist_prev".into(),
                    Cell::F64s(vec![p], per_dist_prev),
                ),
                (
                    "weights/quantiles".into(),
                    Cell::F64s(
                        vec![p, super::weights::QUANTILE_LEVELS],
                        dist.quantiles.clone(),
                    ),
                ),
                (
                    "weights/hist/counts".into(),
                    Cell::I64s(vec![p, super::weights::HIST_BINS], dist.hist_counts.clone()),
                ),
                (
                    "weights/hist/edges".into(),
                    Cell::F64s(
                        vec![p, super::weights::HIST_BINS + 1],
                        dist.hist_edges.clone(),
                    ),
                ),
            ]);
            let (mut b_noise, mut hessian_top) = (None, None);
            if let Some(nopts) = &plan.noise {
                let nan = vec![f64::NAN; p];
                let (sq, var) = match (&r.batch_noise, finite) {
                    (Some(b), true) => b.finish(&r.grads),
                    _ => (nan.clone(), nan.clone()),
                };
                let want = nopts.samples.unwrap_or(spec.len).min(spec.len);
                let sample = if finite && want > 0 {
                    Some(
                        super::noise::per_sample(
                            engine.as_mut(),
                            data.as_mut(),
                            want,
                            &r.grads,
                            &label,
                            plan.quiet,
                        )
                        .with_context(|| format!("{}: --noise", c.path.display()))?,
                    )
                } else {
                    None
                };
                let (tr, per_tr, used) = match &sample {
                    Some(s) => (s.trace(), s.per_param.clone(), s.samples as i64),
                    None => (f64::NAN, nan.clone(), 0),
                };
                b_noise = Some(tr / (g_l2 * g_l2));
                row.extend([
                    ("noise/batch_sq_mean".into(), Cell::F64(sq.iter().sum())),
                    ("noise/batch_var".into(), Cell::F64(var.iter().sum())),
                    ("noise/per_param_batch_var".into(), Cell::F64s(vec![p], var)),
                    ("noise/sample_var_trace".into(), Cell::F64(tr)),
                    (
                        "noise/per_param_sample_var".into(),
                        Cell::F64s(vec![p], per_tr),
                    ),
                    ("noise/b_noise".into(), Cell::F64(b_noise.unwrap())),
                    ("noise/samples".into(), Cell::I64(used)),
                ]);
            }
            if let (Some(hopts), Some(he)) = (&plan.hessian, hvp_engine.as_mut()) {
                let hp: Vec<String> = he.hvp_params().to_vec();
                let sizes: Vec<usize> = hp.iter().map(|q| c.tensors[q].numel()).collect();
                let gblock: Vec<f64> = hp
                    .iter()
                    .flat_map(|q| {
                        let i = names.iter().position(|n| n == q).unwrap();
                        r.grads[i].iter().copied()
                    })
                    .collect();
                let cv = if finite {
                    Some(
                        super::hessian::curvature(
                            he.as_mut(),
                            c,
                            data.as_mut(),
                            plan.batch,
                            hopts,
                            &sizes,
                            &gblock,
                            &label,
                            plan.quiet,
                        )
                        .with_context(|| format!("{}: --hessian", c.path.display()))?,
                    )
                } else {
                    None
                };
                // Per-parameter columns follow /params/name; parameters outside the block get NaN.
                let mut per_tr = vec![f64::NAN; p];
                let mut per_se = vec![f64::NAN; p];
                let mut per_mass = vec![f64::NAN; p];
                if let Some(cv) = &cv {
                    for (j, q) in hp.iter().enumerate() {
                        let i = names.iter().position(|n| n == q).unwrap();
                        per_tr[i] = cv.trace.per_block[j];
                        per_se[i] = cv.trace.per_block_se[j];
                        per_mass[i] = cv.top_mass[j];
                    }
                    if !cv.lanczos.converged {
                        eprintln!(
                            "warning: {label}: the top Hessian eigenvalue did not converge in {} Lanczos iterations: {} with relative residual {:.2e} (tolerance {:.1e}; raise --hessian-iters)",
                            cv.lanczos.iterations, cv.lanczos.top, cv.lanczos.top_residual, hopts.tol
                        );
                    }
                }
                let f = |x: Option<f64>| Cell::F64(x.unwrap_or(f64::NAN));
                let lz = cv.as_ref().map(|c| &c.lanczos);
                hessian_top = Some(lz.map(|l| l.top).unwrap_or(f64::NAN));
                row.extend([
                    ("hessian/top".into(), f(lz.map(|l| l.top))),
                    ("hessian/top_residual".into(), f(lz.map(|l| l.top_residual))),
                    ("hessian/bottom".into(), f(lz.map(|l| l.bottom))),
                    (
                        "hessian/bottom_residual".into(),
                        f(lz.map(|l| l.bottom_residual)),
                    ),
                    (
                        "hessian/iterations".into(),
                        Cell::I64(lz.map(|l| l.iterations as i64).unwrap_or(0)),
                    ),
                    (
                        "hessian/converged".into(),
                        Cell::I64(lz.map(|l| l.converged as i64).unwrap_or(0)),
                    ),
                    (
                        "hessian/sharpness".into(),
                        f(cv.as_ref().map(|c| c.sharpness)),
                    ),
                    (
                        "hessian/trace".into(),
                        f(cv.as_ref().map(|c| c.trace.trace)),
                    ),
                    (
                        "hessian/trace_se".into(),
                        f(cv.as_ref().map(|c| c.trace.trace_se)),
                    ),
                    (
                        "hessian/per_param_trace".into(),
                        Cell::F64s(vec![p], per_tr),
                    ),
                    (
                        "hessian/per_param_trace_se".into(),
                        Cell::F64s(vec![p], per_se),
                    ),
                    (
                        "hessian/per_param_top_mass".into(),
                        Cell::F64s(vec![p], per_mass),
                    ),
                    (
                        "hessian/samples".into(),
                        Cell::I64(cv.as_ref().map(|c| c.samples as i64).unwrap_or(0)),
                    ),
                    (
                        "hessian/products".into(),
                        Cell::I64(cv.as_ref().map(|c| c.products as i64).unwrap_or(0)),
                    ),
                ]);
            }
            let mut reg = None;
            if let Some(lambda) = plan.weight_decay {
                // Gradient of L(w) + (lambda/2)|w|^2 is g + lambda w.
                let per: Vec<f64> = r
                    .grads
                    .iter()
                    .zip(&w)
                    .map(|(g, x)| {
                        g.iter()
                            .zip(x)
                            .map(|(a, b)| (a + lambda * b).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                    .collect();
                let total = per.iter().map(|x| x * x).sum::<f64>().sqrt();
                reg = Some(total);
                row.push(("grad_reg/l2".into(), Cell::F64(total)));
                row.push((
                    "grad_reg/per_param_l2".into(),
                    Cell::F64s(vec![per.len()], per),
                ));
            }
            if plan.save_grad {
                for (p, g) in names.iter().zip(&r.grads) {
                    let shape = c.tensors[p].shape.clone();
                    row.push((format!("grad/full/{p}"), Cell::F64s(shape, g.clone())));
                }
            }
            // /seconds is the whole row: the gradient pass and any noise and curvature passes.
            let seconds = row_start.elapsed().as_secs_f64();
            for (name, cell) in row.iter_mut() {
                if name == "seconds" {
                    *cell = Cell::F64(seconds);
                }
            }
            store.append(&row)?;
            last = Some((k, w, dist));
            let out = GradRow {
                path,
                step: c.step,
                loss: r.loss,
                accuracy: r.accuracy,
                grad_l2: g_l2,
                grad_reg_l2: reg,
                weights_l2: w_l2,
                dist_prev,
                b_noise,
                hessian_top,
                seconds,
            };
            on_row(&out);
            rows.push(out);
        }
        Ok(())
    })();
    store.finish(result.is_ok() && nonfinite_rows == 0)?;
    result?;
    if nonfinite_rows > 0 {
        return Err(crate::error::non_finite(format!(
            "{nonfinite_rows} checkpoint(s) had non-finite losses or gradients; their rows in {} hold NaN",
            plan.out.display()
        )));
    }
    Ok(rows)
}

/// The learning rate a checkpoint was written at (`probe train` records it in the safetensors
/// metadata as `lr`); NaN when unknown.
fn checkpoint_lr(c: &Checkpoint) -> f64 {
    c.metadata
        .get("lr")
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

fn param_shapes(model: &Model, dirs: &[(String, String)]) -> Result<Vec<Vec<usize>>> {
    dirs.iter()
        .map(|(p, _)| {
            model
                .param(p)
                .map(|i| i.shape.clone())
                .ok_or_else(|| anyhow!("no parameter '{p}'"))
        })
        .collect()
}

/// Options checked against the model and data before any work: every problem at once.
fn check_options(plan: &GradPlan, model: &Model) -> Result<()> {
    let mut problems = Vec::new();
    if let Some(n) = &plan.noise {
        if plan.bn_train && n.samples != Some(0) {
            problems.push(
                "--noise with --bn train: per-sample gradients are not defined under batch statistics \
                 (add --noise-samples 0 for the minibatch part only)"
                    .to_string(),
            );
        }
    }
    if let Some(h) = &plan.hessian {
        let trainable: Vec<String> = model.trainable().map(|p| p.name.clone()).collect();
        if let Some(ps) = &h.params {
            for q in ps {
                if !trainable.contains(q) {
                    problems.push(format!(
                        "--hessian-params: '{q}' is not a trainable parameter of {}",
                        model.path.display()
                    ));
                }
            }
        }
        if h.iters == 0 {
            problems.push("--hessian-iters must be at least 1".into());
        }
        if h.samples == Some(0) {
            problems.push("--hessian-samples must be at least 1".into());
        }
        let dim: usize = match &h.params {
            Some(ps) => ps
                .iter()
                .filter_map(|q| model.param(q))
                .map(|i| i.shape.iter().product::<usize>())
                .sum(),
            None => model
                .trainable()
                .map(|i| i.shape.iter().product::<usize>())
                .sum(),
        };
        let bytes = (h.iters + 2) as f64 * dim as f64 * 8.0;
        if bytes > 8.0 * (1u64 << 30) as f64 {
            problems.push(format!(
                "--hessian-iters {} keeps {} Lanczos vectors of {dim} parameters in f64 ({:.1} GiB); lower it or restrict --hessian-params",
                h.iters,
                h.iters + 2,
                bytes / (1u64 << 30) as f64
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::error::input(problems.join("; ")))
    }
}
