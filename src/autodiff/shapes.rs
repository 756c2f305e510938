//! Shapes and element types of every tensor in a graph, read off ONNX Runtime itself.
//!
//! Gradient rules need to know, e.g., which axes a broadcasting `Add` expanded, so that the
//! gradient can be summed back over them. Exporters write only part of this into `value_info`,
//! so instead of a shape inference of our own we ask the runtime: the forward graph is run on a
//! tiny batch with every intermediate tensor as an output, at two batch sizes. A dimension that
//! is the same in both runs is static; one that changes follows the batch (`None`).
pub use crate::ops::rule::{Info, Shapes, SEQUENCE_OPS};
use crate::tensor::{DType, HostTensor};
use anyhow::{anyhow, Result};
use onnx_protobuf::ModelProto;
use std::borrow::Borrow;
use std::collections::HashMap;

/// One run's inputs by name; a tensor fed in every run (a model's weights) is borrowed, not
/// copied per run.
pub type Feed<'a> = Vec<(String, std::borrow::Cow<'a, HostTensor>)>;

/// int64 tensors up to this many elements have their values recorded.
const SMALL: usize = 64;

/// Ops whose one output has their first input's element type and shape: not read back (their
/// shape is taken from the input's), so ONNX Runtime computes and frees them as in any run.
/// Every output read back is a buffer of its own: GPT-2's logits-sized LogSoftmax and
/// Reshapes took half of its probing runs.
const SAME_AS_INPUT: &[&str] = &[
    "Abs",
    "Cos",
    "Elu",
    "Erf",
    "Exp",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "Neg",
    "Reciprocal",
    "Relu",
    "Selu",
    "Sigmoid",
    "Sin",
    "Softmax",
    "Softplus",
    "Softsign",
    "Sqrt",
    "Tanh",
];

/// How a value that is not read back gets its shape from its node's inputs.
enum Derived {
    /// [`SAME_AS_INPUT`].
    SameAsInput,
    /// Reshape: the data's type, the shape input's values (0 copies the input's dimension
    /// unless `allowzero`, -1 takes the rest).
    Reshape { allowzero: bool },
}

/// Which node outputs are derived rather than read back (by output name).
fn derived(g: &onnx_protobuf::GraphProto) -> HashMap<String, Derived> {
    use crate::ops::attrs::Attrs;
    use std::collections::HashSet;
    let inputs: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    let held: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let made: HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| &n.output)
        .map(|o| o.as_str())
        .collect();
    // A value whose shape a run observes: a node's output or a fed input (an initializer is
    // neither, even where an old model also lists it as an input).
    let seen = |v: &str| made.contains(v) || inputs.contains(v) && !held.contains(v);
    let mut d = HashMap::new();
    for n in g
        .node
        .iter()
        .filter(|n| n.domain.is_empty() && n.output.len() == 1)
    {
        if !n.input.first().is_some_and(|x| seen(x)) {
            continue;
        }
        let how = match n.op_type.as_str() {
            op if SAME_AS_INPUT.contains(&op) => Derived::SameAsInput,
            // A fed shape is not recorded; one the graph computes or holds is.
            "Reshape" if n.input.len() == 2 && !inputs.contains(n.input[1].as_str()) => {
                Derived::Reshape {
                    allowzero: n.attr_i("allowzero", 0) != 0,
                }
            }
            _ => continue,
        };
        d.insert(n.output[0].clone(), how);
    }
    d
}

/// int64 initializers up to [`SMALL`] elements (Reshape's shapes held in the graph).
fn small_int_initializers(g: &onnx_protobuf::GraphProto) -> HashMap<String, Vec<i64>> {
    g.initializer
        .iter()
        .filter(|t| t.data_type == DType::I64.onnx())
        .filter(|t| t.dims.iter().product::<i64>() as usize <= SMALL)
        .filter_map(|t| {
            let h = crate::model::decode_tensor(t).ok()?;
            Some((t.name.clone(), h.as_i64()?.to_vec()))
        })
        .collect()
}

/// Reshape's output dims from the data's dims and the shape's values.
fn reshaped(x: &[Option<usize>], shape: &[i64], allowzero: bool) -> Option<Vec<Option<usize>>> {
    let numel: usize = x.iter().map(|d| d.unwrap_or(0)).product();
    let mut dims: Vec<Option<usize>> = Vec::with_capacity(shape.len());
    let mut rest = None;
    for (i, &v) in shape.iter().enumerate() {
        dims.push(match v {
            0 if !allowzero => Some((*x.get(i)?)?),
            -1 if rest.is_none() => {
                rest = Some(i);
                None
            }
            v if v >= 0 => Some(v as usize),
            _ => return None,
        });
    }
    if let Some(r) = rest {
        let known: usize = dims.iter().flatten().product();
        dims[r] = Some(if known == 0 { 0 } else { numel / known });
    }
    Some(dims)
}

impl Shapes {
    /// Runs `proto` (a forward graph whose inputs are all fed) once per feed and merges the shapes.
    pub fn observe<T: Borrow<HostTensor>>(
        proto: &ModelProto,
        feeds: &[Vec<(String, T)>],
    ) -> Result<Shapes> {
        Shapes::observe_with(proto, feeds, 1)
    }

    /// [`Shapes::observe`] on `threads` threads: a language model's forward on two small
    /// batches is most of a run's start-up (GPT-2 at 256 tokens: ~9 s on one thread).
    pub fn observe_with<T: Borrow<HostTensor>>(
        proto: &ModelProto,
        feeds: &[Vec<(String, T)>],
        threads: usize,
    ) -> Result<Shapes> {
        Shapes::observe_as(proto, feeds, threads, true)
    }

    /// With `derive`, the values of [`derived`] take their shapes from their inputs; without,
    /// every value is read back (the reference the test holds the derivation to).
    fn observe_as<T: Borrow<HostTensor>>(
        proto: &ModelProto,
        feeds: &[Vec<(String, T)>],
        threads: usize,
        derive: bool,
    ) -> Result<Shapes> {
        let mut p = proto.clone();
        let g = p.graph.as_mut().unwrap();
        let derive = if derive { derived(g) } else { HashMap::new() };
        let init_ints = small_int_initializers(g);
        let mut names: Vec<String> = Vec::new();
        let existing: std::collections::HashSet<String> =
            g.output.iter().map(|o| o.name.clone()).collect();
        for n in &g.node {
            if SEQUENCE_OPS.contains(&n.op_type.as_str()) {
                continue;
            }
            for o in &n.output {
                if !o.is_empty() && !existing.contains(o) && !derive.contains_key(o) {
                    names.push(o.clone());
                }
            }
        }
        for name in &names {
            let mut v = onnx_protobuf::ValueInfoProto::new();
            v.name = name.clone();
            g.output.push(v);
        }
        let bytes = protobuf::Message::write_to_bytes(&p)?;
        let mut session = crate::runtime::session(&bytes, threads.max(1), "shape-probing")?;
        let mut runs: Vec<HashMap<String, Info>> = Vec::new();
        let mut ints = HashMap::new();
        for feed in feeds {
            ints.clear();
            let mut inputs: Vec<(std::borrow::Cow<str>, ort::session::SessionInputValue)> =
                Vec::new();
            // float32 and int64 tensors are read in place (a language model's weights are
            // hundreds of MB, and every copy's pages stayed with the process); the others are
            // converted.
            let converted: Vec<Option<ort::value::DynValue>> = feed
                .iter()
                .map(|(_, t)| match viewable(t.borrow()) {
                    true => Ok(None),
                    false => to_value(t.borrow()).map(Some),
                })
                .collect::<Result<_>>()?;
            for ((n, t), c) in feed.iter().zip(&converted) {
                let v = match c {
                    Some(c) => c.into(),
                    None => view_value(t.borrow())?,
                };
                inputs.push((n.as_str().into(), v));
            }
            let out = session
                .run(inputs)
                .map_err(|e| anyhow!("probing shapes: ONNX Runtime failed: {e}"))?;
            let mut m = HashMap::new();
            for (name, value) in out.iter() {
                let (shape, ty) = match value.dtype() {
                    ort::value::ValueType::Tensor { ty, shape, .. } => (shape.clone(), *ty),
                    _ => continue,
                };
                let Some(dtype) = dtype_of(ty) else { continue };
                if dtype == DType::I64 && shape.iter().product::<i64>() as usize <= SMALL {
                    if let Ok((_, v)) = value.try_extract_tensor::<i64>() {
                        ints.insert(name.to_string(), v.to_vec());
                    }
                }
                m.insert(
                    name.to_string(),
                    Info {
                        dtype,
                        dims: shape.iter().map(|&d| Some(d as usize)).collect(),
                    },
                );
            }
            for (n, t) in feed {
                let t: &HostTensor = t.borrow();
                m.insert(
                    n.clone(),
                    Info {
                        dtype: t.dtype,
                        dims: t.shape.iter().map(|&d| Some(d)).collect(),
                    },
                );
            }
            // The values not read back, in graph order (a node's inputs come first).
            for n in &proto.graph.as_ref().unwrap().node {
                let Some(how) = n.output.first().and_then(|o| derive.get(o)) else {
                    continue;
                };
                let (o, x) = (&n.output[0], &n.input[0]);
                let Some(xi) = m.get(x).cloned() else {
                    continue;
                };
                let info = match how {
                    Derived::SameAsInput => {
                        if let Some(v) = ints.get(x).cloned() {
                            ints.insert(o.clone(), v);
                        }
                        xi
                    }
                    Derived::Reshape { allowzero } => {
                        let sh = &n.input[1];
                        let dims = (ints.get(sh).or_else(|| init_ints.get(sh)))
                            .and_then(|v| reshaped(&xi.dims, v, *allowzero))
                            .ok_or_else(|| {
                                anyhow!(
                                    "probing shapes: Reshape node '{}': its shape '{sh}' was not observed",
                                    n.name
                                )
                            })?;
                        if let Some(v) = ints.get(x).cloned() {
                            ints.insert(o.clone(), v);
                        }
                        Info {
                            dtype: xi.dtype,
                            dims,
                        }
                    }
                };
                m.insert(o.clone(), info);
            }
            runs.push(m);
        }
        let mut merged = runs.pop().unwrap_or_default();
        for other in runs {
            for (name, info) in merged.iter_mut() {
                if let Some(o) = other.get(name) {
                    for (d, od) in info.dims.iter_mut().zip(&o.dims) {
                        if *d != *od {
                            *d = None;
                        }
                    }
                }
            }
        }
        Ok(Shapes { map: merged, ints })
    }
}

fn dtype_of(t: ort::value::TensorElementType) -> Option<DType> {
    use ort::value::TensorElementType as T;
    Some(match t {
        T::Float32 => DType::F32,
        T::Float64 => DType::F64,
        T::Int64 => DType::I64,
        T::Int32 => DType::I32,
        T::Bool => DType::Bool,
        T::Uint8 => DType::U8,
        T::Int8 => DType::I8,
        T::Int16 => DType::I16,
        T::Float16 => DType::F16,
        T::Bfloat16 => DType::BF16,
        _ => return None,
    })
}

/// Whether [`view_value`] takes `t`: its stored values are its element type's (float32, int64).
fn viewable(t: &HostTensor) -> bool {
    use crate::tensor::Values;
    matches!(
        (&t.values, t.dtype),
        (Values::F32(_), DType::F32) | (Values::I64(_), DType::I64)
    )
}

/// `t` as an ONNX Runtime input that reads its values in place; `t` must be [`viewable`].
fn view_value(t: &HostTensor) -> Result<ort::session::SessionInputValue<'_>> {
    use crate::tensor::Values;
    fn view<'a, T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        shape: &[usize],
        v: &'a [T],
    ) -> Result<ort::session::SessionInputValue<'a>> {
        let a = ndarray::ArrayViewD::from_shape(ndarray::IxDyn(shape), v)?;
        Ok(ort::value::TensorRef::from_array_view(a)
            .map_err(|e| anyhow!("{e}"))?
            .into())
    }
    match &t.values {
        Values::F32(v) => view(&t.shape, v),
        Values::I64(v) => view(&t.shape, v),
    }
}

/// An owned ORT value for a host tensor, in the tensor's recorded element type.
pub fn to_value(t: &crate::tensor::HostTensor) -> Result<ort::value::DynValue> {
    use crate::tensor::Values;
    // ort resolves its API on first use; probe's library must be the one loaded (else ort
    // dlopens a default name, which is not on the loader path).
    crate::runtime::environment()?;
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(match (&t.values, t.dtype) {
        (Values::F32(v), DType::F64) => ort::value::Tensor::from_array((
            shape,
            v.iter().map(|&x| x as f64).collect::<Vec<f64>>(),
        ))?
        .into_dyn(),
        (Values::F32(v), _) => ort::value::Tensor::from_array((shape, v.clone()))?.into_dyn(),
        (Values::I64(v), DType::Bool) => ort::value::Tensor::from_array((
            shape,
            v.iter().map(|&x| x != 0).collect::<Vec<bool>>(),
        ))?
        .into_dyn(),
        (Values::I64(v), _) => ort::value::Tensor::from_array((shape, v.clone()))?.into_dyn(),
    })
}

#[cfg(test)]
mod tests {
    use super::Shapes;
    use crate::model::graph::{tensor_i64, value_info};
    use crate::ops::testing::{model_of, node};
    use crate::tensor::{DType, HostTensor};
    use onnx_protobuf::GraphProto;

    /// Shapes taken from inputs (unary ops, Reshape with 0 and -1, shapes computed
    /// in the graph or held as initializers, an int64 Identity's values) equal those read back,
    /// at two batch sizes, dims following the batch included.
    #[test]
    fn derived_shapes_are_the_observed_ones() {
        let mut g = GraphProto::new();
        g.node = vec![
            node("Relu", &["x"], "r"),
            node("Reshape", &["r", "flat"], "f"),
            node("Softmax", &["f"], "s"),
            node("Shape", &["x"], "xs"),
            node("Identity", &["xs"], "xs2"),
            node("Reshape", &["s", "xs2"], "back"),
            node("Reshape", &["x", "zeros"], "z"),
            node("Reshape", &["x", "swap"], "e"),
            node("Tanh", &["e"], "y"),
            node("Identity", &["held"], "h"),
            node("Relu", &["held"], "hr"),
            node("Add", &["h", "hr"], "hs"),
        ];
        g.initializer.push(tensor_i64("flat", &[2], &[0, -1]));
        g.initializer.push(tensor_i64("zeros", &[3], &[0, 4, 3]));
        g.initializer.push(tensor_i64("swap", &[3], &[-1, 3, 0]));
        // An initializer (not fed) read by ops whose shape would be taken from their input:
        // read back.
        g.initializer
            .push(crate::model::graph::tensor_f32("held", &[2], &[1.0, -1.0]));
        g.input
            .push(value_info("x", DType::F32, &[None, Some(3), Some(4)], "N"));
        for o in ["back", "y", "z", "hs"] {
            g.output.push(value_info(o, DType::F32, &[], "N"));
        }
        let m = model_of(g, 17);
        let feeds: Vec<Vec<(String, HostTensor)>> = [2usize, 3]
            .into_iter()
            .map(|n| {
                vec![(
                    "x".into(),
                    HostTensor::f32(vec![n, 3, 4], vec![0.5; n * 12]),
                )]
            })
            .collect();
        let derived = Shapes::observe_as(&m, &feeds, 1, true).unwrap();
        let read = Shapes::observe_as(&m, &feeds, 1, false).unwrap();
        let sorted = |s: &Shapes| {
            let mut v: Vec<_> = (s.map.iter())
                .map(|(k, i)| (k.clone(), i.dtype, i.dims.clone()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        assert_eq!(sorted(&derived), sorted(&read));
        assert_eq!(derived.ints, read.ints);
        assert_eq!(derived.map["f"].dims, [None, Some(12)]);
        assert_eq!(derived.map["z"].dims, [None, Some(4), Some(3)]);
        assert_eq!(derived.map["e"].dims, [None, Some(3), Some(4)]);
        assert_eq!(derived.ints["xs2"], [3, 3, 4]);
        assert_eq!(derived.map["h"].dims, [Some(2)]);
        assert_eq!(derived.map["hr"].dims, [Some(2)]);
    }
}
