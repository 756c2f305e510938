//! The ONNX file: parsing, external data confined to the model's folder, initializer roles, and
//! the [`Model`] the rest of probe works from.

use super::export_info::{ExportInfo, Role};
use crate::tensor::{DType, HostTensor};
use anyhow::Result;
use onnx_protobuf::{Message, ModelProto, TensorProto};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

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
    /// False for a buffer the exporter marks `persistent=False`: in the graph, never in
    /// `state_dict()`, so a checkpoint may lack it (then the ONNX file's values are used).
    pub persistent: bool,
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
    /// What the exporter recorded about the module (roles, its state-dict names, scopes).
    pub export: ExportInfo,
    index: HashMap<String, usize>,
    /// Whether the float parameters' values were let go ([`Model::release_parameters`]).
    released: bool,
}

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
    let mut f = std::fs::File::open(path)
        .map_err(|e| crate::error::input(format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    hash_stream(&mut f, &mut h)
        .map_err(|e| crate::error::input(format!("{}: {e}", path.display())))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Feeds everything `r` yields into `h`, 1 MiB at a time (never the whole file in memory).
pub(super) fn hash_stream(r: &mut impl std::io::Read, h: &mut Sha256) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
}

/// A file read from `at` on by offset (pread), leaving the handle's own position alone.
pub(super) struct At {
    pub file: std::fs::File,
    pub at: u64,
}

impl std::io::Read for At {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Protobuf's limit on a serialized message, so on an ONNX graph file (larger graphs keep their
/// weights in external data).
const MAX_PROTO_BYTES: u64 = 2 << 30;

/// The checked shape of a tensor whose dimensions come from a file: every dimension
/// non-negative, the element count and `elem_size` times it within `usize`. Returns the shape,
/// the element count and the byte count.
pub fn checked_shape(dims: &[i64], elem_size: usize) -> Result<(Vec<usize>, usize, usize), String> {
    let mut shape = Vec::with_capacity(dims.len());
    let mut numel: usize = 1;
    for &d in dims {
        let d =
            usize::try_from(d).map_err(|_| format!("negative dimension in its shape {dims:?}"))?;
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| format!("shape {dims:?} is too large (its element count overflows)"))?;
        shape.push(d);
    }
    let bytes = numel.checked_mul(elem_size).ok_or_else(|| {
        format!("shape {dims:?} is too large ({numel} elements of {elem_size} bytes overflow)")
    })?;
    Ok((shape, numel, bytes))
}

/// `"123"` -> 123; anything else (a sign, spaces, hex, an empty string, more than u64) is refused.
fn strict_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// What kind of file system object a non-regular file is, for the error line.
pub(crate) fn file_kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// One external data file, opened after its location was checked.
struct DataFile {
    /// As resolved: canonical, inside the model's folder.
    path: PathBuf,
    file: std::fs::File,
    len: u64,
}

/// Opens the file an initializer's `location` names, if it may be read: `location` relative,
/// resolving (symbolic links followed) to a regular file inside the model's canonical folder.
/// The error is the reason, for a line that names the model, the tensor and the location.
fn open_location(dir: &Path, location: &str) -> std::result::Result<DataFile, String> {
    let rel = Path::new(location);
    if location.is_empty() {
        return Err("empty location".into());
    }
    if rel.is_absolute() || location.contains('\0') {
        return Err("not a relative path (a model's data must be in its own folder)".into());
    }
    let canon_dir = dir
        .canonicalize()
        .map_err(|e| format!("the model's folder {}: {e}", dir.display()))?;
    let joined = canon_dir.join(rel);
    let canon = joined.canonicalize().map_err(|e| {
        format!(
            "the external data file of the model ({}): {e}",
            joined.display()
        )
    })?;
    if !canon.starts_with(&canon_dir) || canon == canon_dir {
        return Err(format!(
            "resolves to {}, outside the model's folder {}",
            canon.display(),
            canon_dir.display()
        ));
    }
    // Checked before opening: opening a FIFO blocks until a writer comes.
    let meta = std::fs::metadata(&canon).map_err(|e| format!("{}: {e}", canon.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file ({})",
            canon.display(),
            file_kind(&meta)
        ));
    }
    let file = std::fs::File::open(&canon).map_err(|e| {
        format!(
            "the external data file of the model ({}): {e}",
            canon.display()
        )
    })?;
    // The same file as checked, not something swapped in between.
    let opened = file
        .metadata()
        .map_err(|e| format!("{}: {e}", canon.display()))?;
    use std::os::unix::fs::MetadataExt;
    if !opened.is_file() || opened.dev() != meta.dev() || opened.ino() != meta.ino() {
        return Err(format!("{} changed while it was opened", canon.display()));
    }
    Ok(DataFile {
        path: canon,
        len: opened.len(),
        file,
    })
}

/// Replaces every externally stored initializer's data by its bytes, read by range from the file
/// named in its `location` entry. The location must stay inside the model's folder, `offset` and
/// `length` must be plain non-negative integers, the range must lie inside the file and, for a
/// known element type, `length` must be the shape's byte size. Returns the external files used,
/// in order of first use (their contents are part of the model's hash).
fn resolve_external(
    path: &Path,
    proto: &mut ModelProto,
    opened: &std::sync::mpsc::Sender<(PathBuf, std::fs::File)>,
) -> Result<Vec<DataFile>> {
    use std::io::{Read, Seek, SeekFrom};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut files: Vec<DataFile> = Vec::new();
    let mut by_location: HashMap<String, usize> = HashMap::new();
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
        let fail = |why: String| {
            crate::error::input(format!(
                "{}: initializer '{}' (external data '{}'): {why}",
                path.display(),
                t.name,
                location
            ))
        };
        let k = match by_location.get(&location) {
            Some(&k) => k,
            None => {
                let f = open_location(dir, &location).map_err(&fail)?;
                // A second handle for the hashing thread (see `Model::load`).
                let again = f.file.try_clone().map_err(|e| fail(e.to_string()))?;
                let _ = opened.send((f.path.clone(), again));
                files.push(f);
                by_location.insert(location.clone(), files.len() - 1);
                files.len() - 1
            }
        };
        let number = |key: &str| -> Result<Option<u64>> {
            match entry(key) {
                None => Ok(None),
                Some(s) => strict_u64(&s).map(Some).ok_or_else(|| {
                    fail(format!(
                        "{key} '{s}' is not a non-negative integer below 2^64"
                    ))
                }),
            }
        };
        let offset = number("offset")?.unwrap_or(0);
        let length = number("length")?;
        let dtype = DType::from_onnx(t.data_type);
        let shape_bytes = match dtype {
            Some(d) => Some(checked_shape(&t.dims, d.size()).map_err(&fail)?.2 as u64),
            None => None,
        };
        let file_len = files[k].len;
        let length = match (length, shape_bytes) {
            (Some(l), Some(want)) if l != want => {
                return Err(fail(format!(
                    "length {l} does not match its shape {:?} of {} ({want} bytes)",
                    t.dims,
                    dtype.unwrap()
                )))
            }
            (Some(l), _) => l,
            (None, Some(want)) => want,
            (None, None) => file_len.saturating_sub(offset),
        };
        let end = offset.checked_add(length).ok_or_else(|| {
            fail(format!(
                "offset {offset} + length {length} overflows a 64-bit size"
            ))
        })?;
        if end > file_len {
            return Err(fail(format!(
                "truncated external data: needs bytes {offset}..{end} of {} but the file has {file_len} bytes",
                files[k].path.display()
            )));
        }
        // Fits in memory's address space: `end` is within a file that exists.
        let n = usize::try_from(length).map_err(|_| fail(format!("length {length} too large")))?;
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(n)
            .map_err(|e| fail(format!("{n} bytes: {e}")))?;
        let f = &mut files[k].file;
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.take(length).read_to_end(&mut bytes))
            .map_err(|e| fail(format!("reading bytes {offset}..{end}: {e}")))?;
        if bytes.len() as u64 != length {
            return Err(fail(format!(
                "truncated external data: needs bytes {offset}..{end} of {} but reading stopped at {}",
                files[k].path.display(),
                offset + bytes.len() as u64
            )));
        }
        t.raw_data = bytes;
        t.external_data.clear();
        t.data_location = protobuf::EnumOrUnknown::from_i32(0);
    }
    Ok(files)
}

/// Checks that an initializer's stored data fits its declared shape and element type, so that
/// nothing downstream trusts a size the file states but does not hold.
fn check_initializer(t: &TensorProto, dtype: DType) -> std::result::Result<Vec<usize>, String> {
    let (shape, numel, bytes) = checked_shape(&t.dims, dtype.size())?;
    if !t.raw_data.is_empty() {
        if t.raw_data.len() != bytes {
            return Err(format!(
                "{} bytes of data for shape {:?} of {dtype} ({bytes} bytes)",
                t.raw_data.len(),
                t.dims
            ));
        }
        return Ok(shape);
    }
    let have = match dtype {
        DType::F32 => t.float_data.len(),
        DType::F64 => t.double_data.len(),
        DType::I64 => t.int64_data.len(),
        _ => t.int32_data.len(),
    };
    if have != numel {
        return Err(format!(
            "{have} values for shape {:?} ({numel} elements)",
            t.dims
        ));
    }
    Ok(shape)
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
    let shape =
        check_initializer(t, dtype).map_err(|e| anyhow::anyhow!("tensor '{}': {e}", t.name))?;
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
    Ok(HostTensor {
        shape,
        dtype,
        values,
    })
}

impl Model {
    pub fn load(path: &Path) -> Result<Model> {
        use std::io::Read;
        let io = |e: std::io::Error| crate::error::input(format!("{}: {e}", path.display()));
        // A directory, a device or a socket is refused before it is opened; a FIFO is read (up
        // to the limit below), as a model streamed from another process.
        let meta = std::fs::metadata(path).map_err(io)?;
        {
            use std::os::unix::fs::FileTypeExt;
            if !meta.is_file() && !meta.file_type().is_fifo() {
                return Err(crate::error::input(format!(
                    "{}: not a regular file ({})",
                    path.display(),
                    file_kind(&meta)
                )));
            }
        }
        let file = std::fs::File::open(path).map_err(io)?;
        // At most protobuf's limit plus one byte, so a model named `/dev/zero` or a huge file
        // ends in an error, not in memory growing until the kernel kills probe.
        let mut bytes = Vec::new();
        file.take(MAX_PROTO_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_PROTO_BYTES {
            return Err(crate::error::input(format!(
                "{}: not an ONNX model (more than 2 GiB, protobuf's limit; large weights go in external data)",
                path.display()
            )));
        }
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
        // The SHA-256 of the graph file, then of each external data file in order of first use,
        // on a thread of its own (reading by offset through second handles) while this one
        // reads the initializers: ~0.2 s of one core for a 400 MB model.
        let (opened, to_hash) = std::sync::mpsc::channel::<(PathBuf, std::fs::File)>();
        let hasher = std::thread::spawn(move || -> std::result::Result<String, String> {
            let mut h = Sha256::new();
            h.update(&bytes);
            drop(bytes);
            for (p, file) in to_hash {
                hash_stream(&mut At { file, at: 0 }, &mut h)
                    .map_err(|e| format!("{}: {e}", p.display()))?;
            }
            Ok(format!("{:x}", h.finalize()))
        });
        let external = resolve_external(path, &mut proto, &opened);
        drop(opened);
        let hashed = hasher.join();
        drop(external?);
        let sha256 = hashed
            .map_err(|_| crate::error::input(format!("{}: hashing failed", path.display())))?
            .map_err(crate::error::input)?;
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
        let export = ExportInfo::of(g);
        let bn_stats: std::collections::HashSet<&str> = g
            .node
            .iter()
            .filter(|n| n.op_type == "BatchNormalization")
            .flat_map(|n| n.input.iter().skip(3).take(2).map(|s| s.as_str()))
            .collect();
        let mut params = Vec::new();
        // Names are how checkpoints, gradients and results refer to initializers: two with one
        // name would make the model mean two things (ONNX names every value once).
        let mut seen = std::collections::HashSet::new();
        if let Some(t) = g.initializer.iter().find(|t| !seen.insert(t.name.as_str())) {
            return Err(crate::error::input(format!(
                "{}: two initializers are named '{}' (ONNX names every value once)",
                path.display(),
                t.name
            )));
        }
        for t in &g.initializer {
            let dtype = DType::from_onnx(t.data_type).ok_or_else(|| {
                crate::error::input(format!(
                    "{}: initializer '{}' has ONNX data type {}, which probe does not handle",
                    path.display(),
                    t.name,
                    t.data_type
                ))
            })?;
            let shape = check_initializer(t, dtype).map_err(|why| {
                crate::error::input(format!(
                    "{}: initializer '{}': {why}",
                    path.display(),
                    t.name
                ))
            })?;
            let (role, persistent) = if !export.roles.is_empty() {
                export
                    .roles
                    .get(t.name.as_str())
                    .copied()
                    .unwrap_or((Role::Constant, true))
            } else if !dtype.is_float() {
                (Role::Constant, true)
            } else if bn_stats.contains(t.name.as_str()) {
                (Role::Buffer, true)
            } else {
                (Role::Parameter, true)
            };
            params.push(ParamInfo {
                name: t.name.clone(),
                dtype,
                shape,
                role,
                persistent,
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
            export,
            index,
            released: false,
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

    /// Lets go of the float parameters' values (their shapes and types stay), where every
    /// run reads them from a checkpoint: a language model's weights are hundreds of MB a run
    /// would otherwise hold twice. [`Model::initializer`] refuses them afterwards.
    pub fn release_parameters(&mut self) {
        let params: std::collections::HashSet<String> =
            self.trainable().map(|p| p.name.clone()).collect();
        if let Some(g) = self.proto.graph.as_mut() {
            for t in g
                .initializer
                .iter_mut()
                .filter(|t| params.contains(t.name.as_str()))
            {
                t.raw_data = Vec::new();
                t.float_data = Vec::new();
                t.double_data = Vec::new();
                t.int32_data = Vec::new();
            }
        }
        self.released = true;
    }

    /// An initializer's values as stored in the model.
    pub fn initializer(&self, name: &str) -> Result<HostTensor> {
        if self.released && self.trainable().any(|p| p.name == name) {
            anyhow::bail!(
                "{}: the values of parameter '{name}' were released (this run reads parameters \
                 from its checkpoints)",
                self.path.display()
            );
        }
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

    /// The one data input (probe feeds one tensor per sample), whose first axis is the batch.
    ///
    /// A fixed first axis (an export without `dynamic_shapes`) is refused whatever `--batch` is:
    /// probe runs the graph at other batch sizes than the one given (the gradient graph is built
    /// by running it at batch sizes 2 and 3; a data set's last batch is smaller).
    pub fn data_input(&self) -> Result<&ValueSpec> {
        match self.inputs.as_slice() {
            [one] => match one.shape.as_deref() {
                Some([Dim::Fixed(n), ..]) => Err(crate::error::input(format!(
                    "{}: the model's input '{}' has a fixed batch size of {n} (shape {}), but probe \
                     feeds batches of other sizes too (the last batch of a data set, and the \
                     gradient graph is built at batch sizes 2 and 3); export it with a dynamic batch \
                     axis: torch.onnx.export(..., dynamic_shapes=({{0: torch.export.Dim(\"N\")}},))",
                    self.path.display(),
                    one.name,
                    fmt_dims(one.shape.as_deref().unwrap_or_default()),
                ))),
                _ => Ok(one),
            },
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
