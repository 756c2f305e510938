//! The model: an ONNX graph whose parameters are named initializers, as PyTorch exports it.
//!
//! Loading resolves ONNX *external data* (`model.onnx` + `model.onnx.data`, `location`/`offset`/
//! `length` entries), which every PyTorch 2.11 export uses, so that the in-memory graph is
//! self-contained. Each initializer gets a [`Role`]:
//! - `Parameter` and `Buffer` tensors make up the *state* a checkpoint supplies (`state_dict()`);
//! - `Constant` tensors are part of the architecture and never come from a checkpoint.
//!
//! PyTorch's exporter records the role in the initializer's `value_info` metadata
//! (`pkg.torch.export.graph_signature.InputSpec.kind` = `PARAMETER` | `BUFFER`). Graphs from other
//! exporters lack it; then every floating-point initializer is state, and those feeding a
//! BatchNormalization's running-mean/variance inputs are buffers.

pub mod checkpoint;
pub mod graph;

use crate::tensor::{DType, HostTensor};
use anyhow::Result;
use onnx_protobuf::{Message, ModelProto, TensorProto};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use checkpoint::Checkpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Trained by the optimizer (`nn.Parameter`).
    Parameter,
    /// State that is not trained by gradients (BatchNorm running statistics).
    Buffer,
    /// Part of the architecture (shape constants, masks): never in a checkpoint.
    Constant,
}

/// A dimension of a value's static type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// Symbolic (`N`) or unknown.
    Free(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Free(s) if s.is_empty() => f.write_str("?"),
            Dim::Free(s) => f.write_str(s),
        }
    }
}

pub fn fmt_dims(d: &[Dim]) -> String {
    format!(
        "[{}]",
        d.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A graph input or output: name, element type and (possibly symbolic) shape.
#[derive(Debug, Clone)]
pub struct ValueSpec {
    pub name: String,
    pub dtype: Option<DType>,
    /// `None` when the graph gives no shape at all.
    pub shape: Option<Vec<Dim>>,
}

impl ValueSpec {
    /// Per-sample shape (all but the first axis) if every such dimension is static.
    pub fn sample_shape(&self) -> Option<Vec<usize>> {
        let s = self.shape.as_ref()?;
        s.iter()
            .skip(1)
            .map(|d| {
                if let Dim::Fixed(n) = d {
                    Some(*n)
                } else {
                    None
                }
            })
            .collect()
    }
}

/// One initializer's description (its values stay in the graph until asked for).
#[derive(Debug, Clone)]
pub struct ParamInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub role: Role,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct Model {
    pub path: PathBuf,
    /// sha256 of the `.onnx` file (and of its external data file(s), in order of first use).
    pub sha256: String,
    /// The graph with external data resolved into `raw_data`.
    pub proto: ModelProto,
    /// Data inputs (graph inputs that are not initializers).
    pub inputs: Vec<ValueSpec>,
    pub outputs: Vec<ValueSpec>,
    /// Every initializer, in graph order.
    pub params: Vec<ParamInfo>,
    index: HashMap<String, usize>,
}

const ROLE_KEY: &str = "pkg.torch.export.graph_signature.InputSpec.kind";

fn value_spec(v: &onnx_protobuf::ValueInfoProto) -> ValueSpec {
    let mut dtype = None;
    let mut shape = None;
    if let Some(onnx_protobuf::type_proto::Value::TensorType(t)) = v.type_.value.as_ref() {
        dtype = DType::from_onnx(t.elem_type);
        if let Some(s) = t.shape.as_ref() {
            shape =
                Some(
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(
                                onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(n),
                            ) if *n >= 0 => Dim::Fixed(*n as usize),
                            Some(
                                onnx_protobuf::tensor_shape_proto::dimension::Value::DimParam(p),
                            ) => Dim::Free(p.clone()),
                            _ => Dim::Free(String::new()),
                        })
                        .collect(),
                );
        }
    }
    ValueSpec {
        name: v.name.clone(),
        dtype,
        shape,
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| crate::error::input(format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Replaces every externally stored initializer's data by its bytes, read from the file named in
/// its `location` entry (relative to the model's folder). Returns the external files used.
fn resolve_external(path: &Path, proto: &mut ModelProto) -> Result<Vec<PathBuf>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    let graph = proto.graph.as_mut().unwrap();
    for t in graph.initializer.iter_mut() {
        if t.data_location.value() != 1 {
            continue;
        }
        let entry = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.clone())
        };
        let location = entry("location").ok_or_else(|| {
            crate::error::input(format!(
                "{}: initializer '{}' is stored externally but names no location",
                path.display(),
                t.name
            ))
        })?;
        let offset: usize = entry("offset").map(|s| s.parse().unwrap_or(0)).unwrap_or(0);
        let file = dir.join(&location);
        if !cache.contains_key(&location) {
            let bytes = std::fs::read(&file).map_err(|e| {
                crate::error::input(format!(
                    "{}: external data file of {} (initializer '{}'): {e}",
                    file.display(),
                    path.display(),
                    t.name
                ))
            })?;
            files.push(file.clone());
            cache.insert(location.clone(), bytes);
        }
        let bytes = &cache[&location];
        let dtype = DType::from_onnx(t.data_type);
        let numel: usize = t.dims.iter().map(|&d| d as usize).product();
        let length: usize = match entry("length") {
            Some(s) => s.parse().unwrap_or(0),
            None => dtype
                .map(|d| d.size() * numel)
                .unwrap_or(bytes.len().saturating_sub(offset)),
        };
        if offset + length > bytes.len() {
            return Err(crate::error::input(format!(
                "{}: truncated external data: initializer '{}' needs bytes {}..{} but the file has {} bytes",
                file.display(),
                t.name,
                offset,
                offset + length,
                bytes.len()
            )));
        }
        t.raw_data = bytes[offset..offset + length].to_vec();
        t.external_data.clear();
        t.data_location = protobuf::EnumOrUnknown::from_i32(0);
    }
    Ok(files)
}

/// Decodes an initializer (raw_data or the typed fields) into a host tensor.
pub fn decode_tensor(t: &TensorProto) -> Result<HostTensor> {
    let dtype = DType::from_onnx(t.data_type).ok_or_else(|| {
        anyhow::anyhow!(
            "tensor '{}' has unsupported ONNX data type {}",
            t.name,
            t.data_type
        )
    })?;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    if !t.raw_data.is_empty() || shape.iter().product::<usize>() == 0 {
        return HostTensor::from_le_bytes(dtype, shape, &t.raw_data)
            .map_err(|e| anyhow::anyhow!("tensor '{}': {e}", t.name));
    }
    use crate::tensor::Values;
    let values = match dtype {
        DType::F32 => Values::F32(t.float_data.clone()),
        DType::F64 => Values::F32(t.double_data.iter().map(|&v| v as f32).collect()),
        DType::I64 => Values::I64(t.int64_data.clone()),
        DType::I32 | DType::I16 | DType::I8 | DType::U8 | DType::Bool => {
            Values::I64(t.int32_data.iter().map(|&v| v as i64).collect())
        }
        DType::F16 | DType::BF16 => {
            anyhow::bail!("tensor '{}': 16-bit float data outside raw_data", t.name)
        }
    };
    let ht = HostTensor {
        shape,
        dtype,
        values,
    };
    let have = match &ht.values {
        Values::F32(v) => v.len(),
        Values::I64(v) => v.len(),
    };
    if have != ht.numel() {
        anyhow::bail!(
            "tensor '{}': {} values for shape {:?}",
            t.name,
            have,
            ht.shape
        );
    }
    Ok(ht)
}

impl Model {
    pub fn load(path: &Path) -> Result<Model> {
        let bytes = std::fs::read(path)
            .map_err(|e| crate::error::input(format!("{}: {e}", path.display())))?;
        let not_onnx = |why: String| {
            crate::error::input(format!("{}: not an ONNX model ({why})", path.display()))
        };
        let mut proto =
            ModelProto::parse_from_bytes(&bytes).map_err(|e| not_onnx(e.to_string()))?;
        match proto.graph.as_ref() {
            Some(g) if !g.node.is_empty() && !g.output.is_empty() => {}
            _ => return Err(not_onnx("no graph with nodes and outputs".into())),
        }
        if proto.ir_version == 0 || proto.opset_import.is_empty() {
            return Err(not_onnx("no IR version or opset".into()));
        }
        let external = resolve_external(path, &mut proto)?;
        let mut h = Sha256::new();
        h.update(&bytes);
        for f in &external {
            h.update(std::fs::read(f)?);
        }
        let sha256 = format!("{:x}", h.finalize());
        Model::from_proto(path, proto, sha256)
    }

    fn from_proto(path: &Path, proto: ModelProto, sha256: String) -> Result<Model> {
        let g = proto.graph.as_ref().unwrap();
        let init_names: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = g
            .input
            .iter()
            .filter(|i| !init_names.contains(i.name.as_str()))
            .map(value_spec)
            .collect();
        let outputs = g.output.iter().map(value_spec).collect();
        let mut meta_role: HashMap<&str, Role> = HashMap::new();
        for v in &g.value_info {
            if let Some(m) = v.metadata_props.iter().find(|m| m.key == ROLE_KEY) {
                let r = match m.value.as_str() {
                    "PARAMETER" => Role::Parameter,
                    "BUFFER" => Role::Buffer,
                    _ => Role::Constant,
                };
                meta_role.insert(v.name.as_str(), r);
            }
        }
        let bn_stats: std::collections::HashSet<&str> = g
            .node
            .iter()
            .filter(|n| n.op_type == "BatchNormalization")
            .flat_map(|n| n.input.iter().skip(3).take(2).map(|s| s.as_str()))
            .collect();
        let mut params = Vec::new();
        for t in &g.initializer {
            let dtype = DType::from_onnx(t.data_type).ok_or_else(|| {
                crate::error::input(format!(
                    "{}: initializer '{}' has ONNX data type {}, which probe does not handle",
                    path.display(),
                    t.name,
                    t.data_type
                ))
            })?;
            let role = if !meta_role.is_empty() {
                meta_role
                    .get(t.name.as_str())
                    .copied()
                    .unwrap_or(Role::Constant)
            } else if !dtype.is_float() {
                Role::Constant
            } else if bn_stats.contains(t.name.as_str()) {
                Role::Buffer
            } else {
                Role::Parameter
            };
            params.push(ParamInfo {
                name: t.name.clone(),
                dtype,
                shape: t.dims.iter().map(|&d| d as usize).collect(),
                role,
            });
        }
        let index = params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        Ok(Model {
            path: path.to_path_buf(),
            sha256,
            proto,
            inputs,
            outputs,
            params,
            index,
        })
    }

    pub fn graph(&self) -> &onnx_protobuf::GraphProto {
        self.proto.graph.as_ref().unwrap()
    }

    pub fn param(&self, name: &str) -> Option<&ParamInfo> {
        self.index.get(name).map(|&i| &self.params[i])
    }

    /// The state a checkpoint supplies: parameters and buffers, in graph order.
    pub fn state(&self) -> impl Iterator<Item = &ParamInfo> {
        self.params.iter().filter(|p| p.role != Role::Constant)
    }

    /// Float parameters: what gradients are taken with respect to.
    pub fn trainable(&self) -> impl Iterator<Item = &ParamInfo> {
        self.params
            .iter()
            .filter(|p| p.role == Role::Parameter && p.dtype.is_float())
    }

    /// An initializer's values as stored in the model.
    pub fn initializer(&self, name: &str) -> Result<HostTensor> {
        let t = self
            .graph()
            .initializer
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| anyhow::anyhow!("no initializer '{name}' in {}", self.path.display()))?;
        decode_tensor(t).map_err(|e| crate::error::input(format!("{}: {e}", self.path.display())))
    }

    /// The model's own state as a checkpoint (what `--ckpt` defaults to).
    pub fn own_state(&self) -> Result<BTreeMap<String, HostTensor>> {
        self.state()
            .map(|p| Ok((p.name.clone(), self.initializer(&p.name)?)))
            .collect()
    }

    /// The one data input (probe feeds one tensor per sample).
    pub fn data_input(&self) -> Result<&ValueSpec> {
        match self.inputs.as_slice() {
            [one] => Ok(one),
            [] => Err(crate::error::input(format!(
                "{}: the graph has no data input",
                self.path.display()
            ))),
            many => Err(crate::error::input(format!(
                "{}: the graph has {} data inputs ({}); probe feeds one",
                self.path.display(),
                many.len(),
                many.iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    pub fn opset(&self) -> i64 {
        self.proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(0)
    }

    pub fn summary(&self) -> String {
        let n: usize = self.trainable().map(|p| p.numel()).sum();
        format!(
            "{}: {} nodes, {} parameters in {} tensors, opset {}",
            self.path.display(),
            self.graph().node.len(),
            n,
            self.trainable().count(),
            self.opset()
        )
    }
}
