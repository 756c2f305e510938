//! An ONNX interpreter on libtorch (tch): executes a model's graph node by node with tch
//! tensors, one place per op (the `torch` forward beside each op's gradient rule in
//! `crate::ops`). Parameters are tch variables named by their ONNX initializer names, so libtorch
//! autograd differentiates the interpreted graph: the project's independent reference for the
//! ONNX gradient graph, and the engine of `probe train` and `probe grad --engine torch`.
//!
//! - [`Interpreter::new`] checks that every node's op has a torch forward (listing all that do
//!   not, like the gradient builder), turns the initializers that are not state into tensors, and
//!   computes once every node whose inputs are all constants (Constant nodes, the exporter's
//!   shape arithmetic on constants); what is left runs per batch.
//! - [`Interpreter::forward`] walks the remaining nodes in graph order with a map of values,
//!   dropping each value after its last use, and returns the model's first output. In
//!   [`Mode::Train`], BatchNormalization uses batch statistics and updates the running
//!   statistics in the [`State`] in place, as PyTorch does (biased variance to normalize,
//!   unbiased variance in the running update, ONNX `momentum` m meaning
//!   `running = m * running + (1 - m) * batch`), outside autograd. [`Mode::BatchStats`] uses
//!   batch statistics and leaves the state alone (what `probe grad --bn train` measures).
//! - [`State`]: the model's state tensors by initializer name, parameters with `requires_grad`
//!   set; [`State::from_checkpoint`] / [`State::to_checkpoint`] convert from and to
//!   `crate::model::Checkpoint` host tensors.
use crate::model::graph::{describe, Lacking};
use crate::model::{Checkpoint, Model, Role};
use crate::ops::torch::{from_proto, kind_of_dtype};
use crate::ops::{TorchCtx, TorchFwd, Value};
use crate::tensor::{DType, HostTensor, Values};
use anyhow::{anyhow, Context, Result};
use onnx_protobuf::NodeProto;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BatchNormalization with the running statistics (PyTorch's `model.eval()`).
    Eval,
    /// Batch statistics, running statistics updated in the state (PyTorch's `model.train()`).
    Train,
    /// Batch statistics, the state untouched.
    BatchStats,
}

/// The model's state tensors (parameters and buffers) by initializer name.
#[derive(Debug, Default)]
pub struct State {
    pub tensors: BTreeMap<String, Tensor>,
}

impl Deref for State {
    type Target = BTreeMap<String, Tensor>;
    fn deref(&self) -> &Self::Target {
        &self.tensors
    }
}

impl DerefMut for State {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tensors
    }
}

impl State {
    /// The checkpoint's state on `device`, in the model's element types; the model's trainable
    /// parameters (float `Parameter` initializers) require grad.
    pub fn from_checkpoint(model: &Model, ckpt: &Checkpoint, device: Device) -> Result<State> {
        State::from_host(model, &ckpt.tensors, device)
            .with_context(|| ckpt.path.display().to_string())
    }

    /// [`State::from_checkpoint`] from host tensors by name (every state tensor of the model
    /// must be there).
    pub fn from_host(
        model: &Model,
        tensors: &BTreeMap<String, HostTensor>,
        device: Device,
    ) -> Result<State> {
        let mut state = State::default();
        for p in model.state() {
            let h = tensors
                .get(&p.name)
                .ok_or_else(|| anyhow!("no tensor '{}' for the model's state", p.name))?;
            let t = match &h.values {
                Values::F32(v) => Tensor::f_from_slice(v)?,
                Values::I64(v) => Tensor::f_from_slice(v)?,
            };
            let shape: Vec<i64> = h.shape.iter().map(|&d| d as i64).collect();
            let t = t
                .f_reshape(shape.as_slice())?
                .f_to_kind(kind_of_dtype(p.dtype))?
                .f_to_device(device)?;
            let trainable = p.role == Role::Parameter && p.dtype.is_float();
            state
                .tensors
                .insert(p.name.clone(), t.set_requires_grad(trainable));
        }
        Ok(state)
    }

    /// Every tensor on the host, floats as float32 (what checkpoints hold).
    pub fn to_host(&self) -> Result<BTreeMap<String, HostTensor>> {
        self.tensors
            .iter()
            .map(|(name, t)| {
                let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
                let flat = t.f_detach()?.f_reshape([-1])?;
                let h = if crate::ops::torch::is_float(t.kind()) {
                    HostTensor::f32(shape, Vec::<f32>::try_from(&flat.f_to_kind(Kind::Float)?)?)
                } else {
                    HostTensor {
                        shape,
                        dtype: DType::I64,
                        values: Values::I64(Vec::<i64>::try_from(&flat.f_to_kind(Kind::Int64)?)?),
                    }
                };
                Ok((name.clone(), h))
            })
            .collect()
    }

    /// The state as an in-memory checkpoint (path and step as given; no file, no hash).
    pub fn to_checkpoint(&self, path: PathBuf, step: i64) -> Result<Checkpoint> {
        Ok(Checkpoint {
            path,
            step,
            metadata: BTreeMap::new(),
            tensors: self.to_host()?,
            notes: vec![],
            sha256: String::new(),
        })
    }

    /// The tensors that require grad, by name.
    pub fn parameters(&self) -> Vec<(&str, &Tensor)> {
        self.tensors
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(n, t)| (n.as_str(), t))
            .collect()
    }
}

/// One node left to run per forward.
struct Step {
    node: NodeProto,
    fwd: TorchFwd,
    /// Values whose last reader this node is (dropped after it).
    last_use: Vec<String>,
}

pub struct Interpreter {
    device: Device,
    input: String,
    output: String,
    /// Non-state initializers, Constant nodes and nodes computed from constants alone.
    consts: HashMap<String, Value>,
    steps: Vec<Step>,
    /// Float parameters, in the model's order.
    trainable: Vec<String>,
}

impl Interpreter {
    pub fn new(model: &Model, device: Device) -> Result<Interpreter> {
        let graph = model.graph();
        // Every op must have a forward; all that lack one are listed at once.
        let mut missing = Lacking::default();
        let mut fwds = Vec::with_capacity(graph.node.len());
        for n in &graph.node {
            match crate::ops::rule(&n.op_type).and_then(|r| r.torch) {
                Some(f) => fwds.push(f),
                None => missing.add(n.op_type.clone(), n),
            }
        }
        if let Some(list) = missing.list() {
            return Err(crate::error::input(format!(
                "{}: no libtorch forward for: {list}",
                model.path.display(),
            )));
        }
        let input = model.data_input()?.name.clone();
        let output = model.outputs[0].name.clone();
        let _no_grad = tch::no_grad_guard();
        let mut consts: HashMap<String, Value> = HashMap::new();
        for t in &graph.initializer {
            if model.param(&t.name).map(|p| p.role) == Some(Role::Constant) {
                let v = from_proto(t, device)
                    .with_context(|| format!("{}: initializer", model.path.display()))?;
                consts.insert(t.name.clone(), Value::Tensor(v));
            }
        }
        // Fold what depends on constants alone. A node that asks for a write-back in training
        // (it has state) stays a step.
        let mut steps = Vec::new();
        for (n, fwd) in graph.node.iter().zip(fwds) {
            let inputs: Option<Vec<Value>> = n
                .input
                .iter()
                .map(|i| {
                    if i.is_empty() {
                        Some(Value::None)
                    } else {
                        consts.get(i).map(|v| v.shallow_clone())
                    }
                })
                .collect();
            if let Some(inputs) = inputs {
                let ctx = TorchCtx::new(n, Some(true), device);
                let outs = fwd(&ctx, inputs).with_context(|| {
                    format!(
                        "{}: node {} ({})",
                        model.path.display(),
                        describe(n),
                        n.op_type
                    )
                })?;
                if ctx.take_write_backs().is_empty() {
                    for (name, v) in n.output.iter().zip(outs) {
                        if !name.is_empty() {
                            consts.insert(name.clone(), v);
                        }
                    }
                    continue;
                }
            }
            steps.push(Step {
                node: n.clone(),
                fwd,
                last_use: vec![],
            });
        }
        // Each runtime value is dropped after its last reader (the output never).
        let mut seen: HashSet<&str> = HashSet::from([output.as_str()]);
        let mut last: Vec<Vec<String>> = vec![vec![]; steps.len()];
        for (k, s) in steps.iter().enumerate().rev() {
            for i in &s.node.input {
                if !i.is_empty() && !consts.contains_key(i) && seen.insert(i.as_str()) {
                    last[k].push(i.clone());
                }
            }
        }
        for (s, l) in steps.iter_mut().zip(last) {
            s.last_use = l;
        }
        Ok(Interpreter {
            device,
            input,
            output,
            consts,
            steps,
            trainable: model.trainable().map(|p| p.name.clone()).collect(),
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The model's trainable parameters (float `Parameter` initializers), in graph order.
    pub fn trainable(&self) -> &[String] {
        &self.trainable
    }

    /// The number of nodes run per forward (the rest were computed once).
    pub fn steps(&self) -> usize {
        self.steps.len()
    }

    /// The model's first output for the batch `x` (on the interpreter's device).
    pub fn forward(&self, state: &State, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let training = Some(mode != Mode::Eval);
        let mut vals: HashMap<&str, Value> = HashMap::new();
        vals.insert(self.input.as_str(), Value::Tensor(x.shallow_clone()));
        for s in &self.steps {
            let n = &s.node;
            let inputs = n
                .input
                .iter()
                .map(|i| {
                    if i.is_empty() {
                        return Ok(Value::None);
                    }
                    if let Some(v) = vals.get(i.as_str()).or_else(|| self.consts.get(i)) {
                        return Ok(v.shallow_clone());
                    }
                    state
                        .get(i)
                        .map(|t| Value::Tensor(t.shallow_clone()))
                        .ok_or_else(|| anyhow!("no value '{i}' (not computed, not in the state)"))
                })
                .collect::<Result<Vec<Value>>>()
                .with_context(|| format!("node {} ({})", describe(n), n.op_type))?;
            let ctx = TorchCtx::new(n, training, self.device);
            let outs = (s.fwd)(&ctx, inputs)
                .with_context(|| format!("node {} ({})", describe(n), n.op_type))?;
            for (name, v) in n.output.iter().zip(outs) {
                if !name.is_empty() {
                    vals.insert(name.as_str(), v);
                }
            }
            if mode == Mode::Train {
                for (slot, new) in ctx.take_write_backs() {
                    let name = n.input.get(slot).map(|s| s.as_str()).unwrap_or("");
                    if let Some(dst) = state.get(name) {
                        let _no_grad = tch::no_grad_guard();
                        dst.shallow_clone().f_copy_(&new).with_context(|| {
                            format!("updating '{name}' after node {}", describe(n))
                        })?;
                    }
                }
            }
            for v in &s.last_use {
                vals.remove(v.as_str());
            }
        }
        let out = vals
            .remove(self.output.as_str())
            .or_else(|| self.consts.get(&self.output).map(|v| v.shallow_clone()))
            .or_else(|| {
                state
                    .get(&self.output)
                    .map(|t| Value::Tensor(t.shallow_clone()))
            })
            .ok_or_else(|| anyhow!("the graph computed no output '{}'", self.output))?;
        out.into_tensor()
            .ok_or_else(|| anyhow!("the output '{}' is not a tensor", self.output))
    }
}
