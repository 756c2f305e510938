//! Builds the engines a run asks for (`--engine`, `--ops`, `--bn`, `--hessian`), checking what
//! can be checked before the first batch: the device, and the graphs ONNX Runtime is given.
use super::ort::{Hoist, OrtEngine, OrtHvp};
use super::torch::{TorchEngine, TorchHvp};
use super::{BatchEngine, Engine, HvpEngine};
use crate::autodiff::grad::Kernels;
use crate::autodiff::model_grad::{grad_graph_at, GradOptions};
use crate::autodiff::LossKind;
use crate::data::Dataset;
use crate::measure::hessian::HessianOptions;
use crate::model::Model;
use crate::tensor::HostTensor;
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;

/// What the engines are asked to compute, and on what.
pub struct EngineOptions<'a> {
    pub engine: Engine,
    /// With [`Engine::OnnxRuntime`]: standard ONNX ops only, or probe's CPU kernels where faster.
    pub kernels: Kernels,
    pub loss: LossKind,
    pub bn_train: bool,
    /// `--hessian`: also a Hessian-vector-product engine.
    pub hessian: Option<&'a HessianOptions>,
    pub threads: usize,
    /// The state the graphs' shapes are observed at (the first checkpoint's).
    pub state: &'a BTreeMap<String, HostTensor>,
    /// Where observed shapes are kept between runs, with the state's identity.
    pub shape_cache: Option<crate::autodiff::shape_cache::ShapeCache>,
}

/// The gradient engine and, with `--hessian`, the Hessian-vector-product engine.
pub type Engines<'m> = (Box<dyn BatchEngine + 'm>, Option<Box<dyn HvpEngine + 'm>>);

/// Builds the engines for `model`; the ONNX graphs are shaped on the first samples of `data`.
pub fn open<'m>(
    model: &'m Model,
    data: &mut dyn Dataset,
    opts: &EngineOptions,
) -> Result<Engines<'m>> {
    match opts.engine {
        Engine::OnnxRuntime => onnx_runtime(model, data, opts),
        Engine::Torch(device) => torch(model, device, opts),
    }
}

fn onnx_runtime<'m>(
    model: &'m Model,
    data: &mut dyn Dataset,
    opts: &EngineOptions,
) -> Result<Engines<'m>> {
    let len = data.spec().len;
    // Shapes are observed on the first samples of the data, at two batch sizes.
    let probe_sizes: Vec<usize> = if len >= 3 { vec![2, 3] } else { vec![len] };
    let mut samples = Vec::new();
    for n in probe_sizes {
        let b = data.read(0, n)?;
        samples.push((b.x.to_host(), b.y.to_host()));
    }
    let gopts = GradOptions {
        loss: opts.loss,
        bn_train: opts.bn_train,
        wrt: None,
        kernels: opts.kernels,
        threads: opts.threads,
        shape_cache: opts.shape_cache.clone(),
    };
    let state = opts.state;
    let graph = grad_graph_at(model, &gopts, &samples, state)?;
    // What depends on the weights alone runs once per checkpoint (see `hoist`).
    let (session, batch_state, hoist) = match super::hoist::split(&graph.proto, &graph.inputs.state)
    {
        Some(sp) => {
            let bytes = protobuf::Message::write_to_bytes(&sp.weights)?;
            let ws = crate::runtime::session(&bytes, opts.threads, "weights")?;
            let types = ws
                .outputs()
                .iter()
                .map(|o| match o.dtype() {
                    ort::value::ValueType::Tensor { ty, .. } => {
                        Ok(ort::sys::ONNXTensorElementDataType::from(*ty) as i32)
                    }
                    t => Err(anyhow!("weights graph output '{}' is a {t:?}", o.name())),
                })
                .collect::<Result<Vec<i32>>>()?;
            let (wstate, hoisted) = (sp.weights_state.clone(), sp.hoisted.clone());
            let (batch, batch_state) = sp.batch_with_types(&types);
            let bytes = protobuf::Message::write_to_bytes(&batch)?;
            let bs = crate::runtime::session(&bytes, opts.threads, "gradient")?;
            (bs, batch_state, Some(Hoist::new(ws, wstate, hoisted)))
        }
        None => {
            let bytes = protobuf::Message::write_to_bytes(&graph.proto)?;
            let s = crate::runtime::session(&bytes, opts.threads, "gradient")?;
            (s, graph.inputs.state.clone(), None)
        }
    };
    let mut hvp: Option<Box<dyn HvpEngine + 'm>> = None;
    if let Some(h) = opts.hessian {
        // The second sweep needs a rule for every op of the first: standard ops only.
        let hopts = GradOptions {
            wrt: h.params.clone(),
            kernels: Kernels::Standard,
            ..gopts.clone()
        };
        let hg = crate::autodiff::hvp::hvp_graph_at(model, &hopts, &samples, state)?;
        let shapes = param_shapes(model, &hg.dirs)?;
        let bytes = protobuf::Message::write_to_bytes(&hg.grad.proto)?;
        let hs = crate::runtime::session(&bytes, opts.threads, "Hessian-vector product")?;
        hvp = Some(Box::new(OrtHvp::new(hs, hg, shapes)));
    }
    // The probe.cpu kernels split their work over ONNX Runtime's threads and call
    // libtorch single-threaded on each (see runtime::cpu_ops).
    tch::set_num_threads(1);
    Ok((
        Box::new(OrtEngine::new(session, graph, batch_state, hoist)),
        hvp,
    ))
}

fn torch<'m>(model: &'m Model, device: tch::Device, opts: &EngineOptions) -> Result<Engines<'m>> {
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
    tch::set_num_threads(opts.threads as i32);
    let engine = TorchEngine::new(model, device, opts.bn_train, opts.loss)?;
    let mut hvp: Option<Box<dyn HvpEngine + 'm>> = None;
    if let Some(h) = opts.hessian {
        let params = match &h.params {
            Some(p) => p.clone(),
            None => engine.params().to_vec(),
        };
        hvp = Some(Box::new(TorchHvp {
            engine: TorchEngine::new(model, device, opts.bn_train, opts.loss)?,
            params,
            dirs: vec![],
        }));
    }
    Ok((Box::new(engine), hvp))
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
