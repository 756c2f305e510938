//! Shapes and element types of every tensor in a graph, read off ONNX Runtime itself.
//!
//! Gradient rules need to know, e.g., which axes a broadcasting `Add` expanded, so that the
//! gradient can be summed back over them. Exporters write only part of this into `value_info`,
//! so instead of a shape inference of our own we ask the runtime: the forward graph is run on a
//! tiny batch with every intermediate tensor as an output, at two batch sizes. A dimension that
//! is the same in both runs is static; one that changes follows the batch (`None`).
pub use crate::ops::rule::{Info, Shapes, SEQUENCE_OPS};
use crate::tensor::DType;
use anyhow::{anyhow, Result};
use onnx_protobuf::ModelProto;
use std::collections::HashMap;

/// A feed for one run: (input name, element type, dims, values as f64 converted to the type).
pub type Feed = Vec<(String, crate::tensor::HostTensor)>;

/// int64 tensors up to this many elements have their values recorded.
const SMALL: usize = 64;

impl Shapes {
    /// Runs `proto` (a forward graph whose inputs are all fed) once per feed and merges the shapes.
    pub fn observe(proto: &ModelProto, feeds: &[Feed]) -> Result<Shapes> {
        let mut p = proto.clone();
        let g = p.graph.as_mut().unwrap();
        let mut names: Vec<String> = Vec::new();
        let existing: std::collections::HashSet<String> =
            g.output.iter().map(|o| o.name.clone()).collect();
        for n in &g.node {
            if SEQUENCE_OPS.contains(&n.op_type.as_str()) {
                continue;
            }
            for o in &n.output {
                if !o.is_empty() && !existing.contains(o) {
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
        let mut session = crate::runtime::session(&bytes, 1, "shape-probing")?;
        let mut runs: Vec<HashMap<String, Info>> = Vec::new();
        let mut ints = HashMap::new();
        for feed in feeds {
            let mut inputs: Vec<(std::borrow::Cow<str>, ort::session::SessionInputValue)> =
                Vec::new();
            let arrays: Vec<(String, ort::value::DynValue)> = feed
                .iter()
                .map(|(n, t)| Ok((n.clone(), to_value(t)?)))
                .collect::<Result<_>>()?;
            for (n, v) in &arrays {
                inputs.push((n.as_str().into(), v.into()));
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
                m.insert(
                    n.clone(),
                    Info {
                        dtype: t.dtype,
                        dims: t.shape.iter().map(|&d| Some(d)).collect(),
                    },
                );
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
