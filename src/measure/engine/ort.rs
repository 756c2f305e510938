//! The ONNX Runtime engines: probe's gradient graph ([`OrtEngine`]) and Hessian-vector-product
//! graph ([`OrtHvp`]) in ONNX Runtime sessions, fed the batch and the checkpoint's state as
//! inputs (the state is fed, not baked into the graph, so one session serves every checkpoint).
use super::{BatchEngine, BatchGrad, Grads, HvpEngine};
use crate::autodiff::hvp::HvpGraph;
use crate::autodiff::lift::Inputs;
use crate::autodiff::model_grad::GradGraph;
use crate::data::{Array, Batch};
use crate::model::Checkpoint;
use anyhow::{anyhow, Result};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use std::borrow::Cow;

/// The state of `ckpt` in the graph's input order, as ONNX Runtime inputs that read the
/// checkpoint's own tensors (float32, and int64 buffers) in place: a copy would be a model's
/// size again, for every checkpoint a pass holds.
pub fn state_values<'a>(
    graph_state: &[String],
    ckpt: &'a Checkpoint,
) -> Result<Vec<SessionInputValue<'a>>> {
    each_state(
        graph_state,
        ckpt,
        |shape, v| {
            Ok(TensorRef::from_array_view(ndarray::ArrayViewD::from_shape(shape, v)?)?.into())
        },
        |shape, v| {
            Ok(TensorRef::from_array_view(ndarray::ArrayViewD::from_shape(shape, v)?)?.into())
        },
    )
}

/// `f32` or `i64` of each state tensor's shape and values, in the graph's input order.
fn each_state<'a, T>(
    graph_state: &[String],
    ckpt: &'a Checkpoint,
    f32: impl Fn(ndarray::IxDyn, &'a [f32]) -> Result<T>,
    i64: impl Fn(ndarray::IxDyn, &'a [i64]) -> Result<T>,
) -> Result<Vec<T>> {
    graph_state
        .iter()
        .map(|n| {
            let t = ckpt
                .tensors
                .get(n)
                .ok_or_else(|| anyhow!("{}: no tensor '{n}'", ckpt.path.display()))?;
            let shape = ndarray::IxDyn(&t.shape);
            match (t.as_f32(), t.as_i64()) {
                (Some(v), _) => f32(shape, v),
                (None, Some(v)) => i64(shape, v),
                (None, None) => unreachable!("a tensor's values are f32 or i64"),
            }
            .map_err(|e| anyhow!("{}: tensor '{n}': {e}", ckpt.path.display()))
        })
        .collect()
}

/// The inputs of one ONNX Runtime run of a graph probe built: the batch's data and targets under
/// the graph's input names, then every state tensor (the checkpoint, fed, not baked in).
pub fn feed<'a>(
    names: &'a Inputs,
    b: &'a Batch,
    state: Vec<SessionInputValue<'a>>,
) -> Result<Vec<(Cow<'a, str>, SessionInputValue<'a>)>> {
    feed_as(names, &names.state, b, state)
}

/// [`feed`] of a graph that reads only the state inputs `state_names` (see [`Hoist`]).
fn feed_as<'a>(
    names: &'a Inputs,
    state_names: &'a [String],
    b: &'a Batch,
    state: Vec<SessionInputValue<'a>>,
) -> Result<Vec<(Cow<'a, str>, SessionInputValue<'a>)>> {
    let mut inputs: Vec<(Cow<str>, SessionInputValue)> = Vec::with_capacity(2 + state.len());
    inputs.push((names.data.as_str().into(), input_value(&b.x)?));
    inputs.push((names.target.as_str().into(), input_value(&b.y)?));
    inputs.extend(named(state_names, state));
    Ok(inputs)
}

/// Values under their input names.
fn named<'a, V>(
    names: &'a [String],
    values: impl IntoIterator<Item = V>,
) -> impl Iterator<Item = (Cow<'a, str>, V)> {
    names.iter().map(|n| Cow::from(n.as_str())).zip(values)
}

/// The state of `ckpt` as owned arrays, for an engine that keeps it across calls.
fn state_arrays(graph_state: &[String], ckpt: &Checkpoint) -> Result<Vec<Array>> {
    each_state(
        graph_state,
        ckpt,
        |shape, v| {
            Ok(Array::F32(ndarray::ArrayD::from_shape_vec(
                shape,
                v.to_vec(),
            )?))
        },
        |shape, v| {
            Ok(Array::I64(ndarray::ArrayD::from_shape_vec(
                shape,
                v.to_vec(),
            )?))
        },
    )
}

pub fn input_value<'a>(a: &'a Array) -> Result<SessionInputValue<'a>> {
    Ok(match a {
        Array::F32(x) => TensorRef::from_array_view(x.view())?.into(),
        Array::I64(x) => TensorRef::from_array_view(x.view())?.into(),
    })
}

/// The ONNX gradient graph ([`crate::autodiff::model_grad::grad_graph`]) in an ONNX Runtime session.
pub struct OrtEngine {
    session: Session,
    graph: GradGraph,
    params: Vec<String>,
    /// The state inputs the session reads (all of them, or those the hoisting left).
    batch_state: Vec<String>,
    hoist: Option<Hoist>,
}

/// The weights graph of [`super::hoist::split`] in its own session, and its outputs for the
/// checkpoint it last ran on.
pub struct Hoist {
    pub session: Session,
    pub state: Vec<String>,
    pub hoisted: Vec<String>,
    /// The checkpoint (path, sha256) the values are of, and the values.
    cache: Option<(std::path::PathBuf, String, Vec<ort::value::DynValue>)>,
}

impl Hoist {
    pub fn new(session: Session, state: Vec<String>, hoisted: Vec<String>) -> Hoist {
        Hoist {
            session,
            state,
            hoisted,
            cache: None,
        }
    }

    /// The hoisted values at `ckpt` under their names, computed when the checkpoint changes.
    fn values(&mut self, ckpt: &Checkpoint) -> Result<(&[String], &[ort::value::DynValue])> {
        let fresh =
            matches!(&self.cache, Some((p, sha, _)) if *p == ckpt.path && *sha == ckpt.sha256);
        if !fresh {
            self.cache = None;
            let inputs: Vec<_> = named(&self.state, state_values(&self.state, ckpt)?).collect();
            let mut out = self
                .session
                .run(inputs)
                .map_err(|e| anyhow!("ONNX Runtime (the weights' part): {e}"))?;
            let vals = self
                .hoisted
                .iter()
                .map(|h| {
                    out.remove(h.as_str())
                        .ok_or_else(|| anyhow!("ONNX Runtime gave no output '{h}'"))
                })
                .collect::<Result<Vec<_>>>()?;
            self.cache = Some((ckpt.path.clone(), ckpt.sha256.clone(), vals));
        }
        let vals = &self.cache.as_ref().expect("just set").2;
        Ok((&self.hoisted, vals))
    }
}

impl OrtEngine {
    /// `session` runs `graph`'s nodes, or with `hoist` those the weights graph left, reading
    /// `batch_state` of the state.
    pub fn new(
        session: Session,
        graph: GradGraph,
        batch_state: Vec<String>,
        hoist: Option<Hoist>,
    ) -> OrtEngine {
        let params = graph.grads.iter().map(|(p, _)| p.clone()).collect();
        OrtEngine {
            session,
            graph,
            params,
            batch_state,
            hoist,
        }
    }
}

impl BatchEngine for OrtEngine {
    fn params(&self) -> &[String] {
        &self.params
    }
    fn load(&mut self, ckpt: &Checkpoint) -> Result<()> {
        // The state is read in place at each batch; here it is only checked.
        state_values(&self.graph.inputs.state, ckpt).map(|_| ())
    }
    fn batch(&mut self, ckpt: &Checkpoint, b: &Batch) -> Result<BatchGrad> {
        let graph = &self.graph;
        let state = state_values(&self.batch_state, ckpt)?;
        let mut inputs = feed_as(&graph.inputs, &self.batch_state, b, state)?;
        if let Some(h) = self.hoist.as_mut() {
            let (names, values) = h.values(ckpt)?;
            inputs.extend(named(names, values.iter().map(SessionInputValue::from)));
        }
        let mut out = self
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
        let loss = scalar(&graph.loss_sum)?;
        let correct = match &graph.correct_sum {
            Some(c) => Some(scalar(c)?),
            None => None,
        };
        let grads = graph
            .grads
            .iter()
            .map(|(_, g)| {
                out.remove(g.as_str())
                    .ok_or_else(|| anyhow!("ONNX Runtime gave no output '{g}'"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BatchGrad {
            loss,
            correct,
            grads: Grads::Ort(grads),
        })
    }
}

/// The Hessian-vector-product graph in an ONNX Runtime session.
pub struct OrtHvp {
    session: Session,
    graph: HvpGraph,
    params: Vec<String>,
    shapes: Vec<Vec<usize>>,
    state: Vec<Array>,
    dirs: Vec<ndarray::ArrayD<f32>>,
}

impl OrtHvp {
    pub fn new(session: Session, graph: HvpGraph, shapes: Vec<Vec<usize>>) -> OrtHvp {
        let params = graph.dirs.iter().map(|(p, _)| p.clone()).collect();
        OrtHvp {
            session,
            graph,
            params,
            shapes,
            state: vec![],
            dirs: vec![],
        }
    }
}

impl HvpEngine for OrtHvp {
    fn hvp_params(&self) -> &[String] {
        &self.params
    }
    fn hvp_load(&mut self, ckpt: &Checkpoint) -> Result<()> {
        self.state = state_arrays(&self.graph.grad.inputs.state, ckpt)?;
        Ok(())
    }
    fn set_direction(&mut self, v: Vec<Vec<f32>>) -> Result<()> {
        self.dirs = v
            .into_iter()
            .zip(&self.shapes)
            .map(|(v, s)| {
                ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(s), v)
                    .map_err(|e| anyhow!("direction shape: {e}"))
            })
            .collect::<Result<_>>()?;
        Ok(())
    }
    fn hvp(&mut self, b: &Batch) -> Result<Vec<Vec<f32>>> {
        let g = &self.graph;
        let state = self.state.iter().map(input_value).collect::<Result<_>>()?;
        let mut inputs = feed(&g.grad.inputs, b, state)?;
        for ((_, name), a) in g.dirs.iter().zip(&self.dirs) {
            inputs.push((
                name.as_str().into(),
                TensorRef::from_array_view(a.view())?.into(),
            ));
        }
        let out = self
            .session
            .run(inputs)
            .map_err(|e| anyhow!("ONNX Runtime: {e}"))?;
        g.products
            .iter()
            .map(|(_, name)| Ok(out[name.as_str()].try_extract_tensor::<f32>()?.1.to_vec()))
            .collect()
    }
}
