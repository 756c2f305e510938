//! A host tensor: the one in-memory form of parameters, checkpoints and batches, so that ONNX
//! initializers, safetensors entries and HDF5 slices meet in a single type.
use anyhow::{bail, Result};
use ndarray::{ArrayD, IxDyn};

/// Element types probe moves around. ONNX `TensorProto.DataType` numbering in [`DType::onnx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn from_onnx(code: i32) -> Option<DType> {
        Some(match code {
            1 => DType::F32,
            2 => DType::U8,
            3 => DType::I8,
            5 => DType::I16,
            6 => DType::I32,
            7 => DType::I64,
            9 => DType::Bool,
            10 => DType::F16,
            11 => DType::F64,
            16 => DType::BF16,
            _ => return None,
        })
    }
    pub fn onnx(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::F64 => 11,
            DType::BF16 => 16,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Values of a tensor. Floating-point parameters are held as f32 (what the graphs compute in);
/// integer tensors as i64 (ONNX's index type).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    /// The element type the tensor had where it came from (file, checkpoint); values are widened
    /// or narrowed to [`Values`] on load.
    pub dtype: DType,
    pub values: Values,
}

impl HostTensor {
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> HostTensor {
        HostTensor {
            shape,
            dtype: DType::F32,
            values: Values::F32(v),
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.values {
            Values::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.values {
            Values::I64(v) => Some(v),
            _ => None,
        }
    }
    /// Decodes little-endian raw bytes of `dtype` (ONNX raw_data, safetensors buffers).
    pub fn from_le_bytes(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Result<HostTensor> {
        let n: usize = shape.iter().product();
        if bytes.len() != n * dtype.size() {
            bail!(
                "{} bytes for a {} tensor of shape {:?} (expected {})",
                bytes.len(),
                dtype,
                shape,
                n * dtype.size()
            );
        }
        let values = match dtype {
            DType::F32 => Values::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::F64 => Values::F32(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
            ),
            DType::F16 => Values::F32(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            DType::BF16 => Values::F32(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            ),
            DType::I64 => Values::I64(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            DType::I32 => Values::I64(
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect(),
            ),
            DType::I16 => Values::I64(
                bytes
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
            ),
            DType::I8 => Values::I64(bytes.iter().map(|&b| b as i8 as i64).collect()),
            DType::U8 | DType::Bool => Values::I64(bytes.iter().map(|&b| b as i64).collect()),
        };
        Ok(HostTensor {
            shape,
            dtype,
            values,
        })
    }
    pub fn to_array_f32(&self) -> Option<ArrayD<f32>> {
        self.as_f32()
            .map(|v| ArrayD::from_shape_vec(IxDyn(&self.shape), v.to_vec()).unwrap())
    }
}
