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

/// Every `N`-byte element of `bytes` (whole elements only: the caller checks the length),
/// converted by `f`.
fn decode<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().unwrap()))
        .collect()
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
            DType::F32 => Values::F32(decode(bytes, f32::from_le_bytes)),
            DType::F64 => Values::F32(decode(bytes, |b| f64::from_le_bytes(b) as f32)),
            DType::F16 => Values::F32(decode(bytes, |b| half::f16::from_le_bytes(b).to_f32())),
            DType::BF16 => Values::F32(decode(bytes, |b| half::bf16::from_le_bytes(b).to_f32())),
            DType::I64 => Values::I64(decode(bytes, i64::from_le_bytes)),
            DType::I32 => Values::I64(decode(bytes, |b| i32::from_le_bytes(b) as i64)),
            DType::I16 => Values::I64(decode(bytes, |b| i16::from_le_bytes(b) as i64)),
            DType::I8 => Values::I64(decode(bytes, |[b]| b as i8 as i64)),
            DType::U8 | DType::Bool => Values::I64(decode(bytes, |[b]| b as i64)),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two elements of `dtype`, little-endian, decoded.
    fn decoded(dtype: DType, bytes: Vec<u8>) -> HostTensor {
        HostTensor::from_le_bytes(dtype, vec![2], &bytes).unwrap()
    }

    #[test]
    fn every_dtype_decodes_from_little_endian_bytes() {
        let cat = |a: &[u8], b: &[u8]| [a, b].concat();
        let float = |d, bytes| decoded(d, bytes).as_f32().unwrap().to_vec();
        let int = |d, bytes| decoded(d, bytes).as_i64().unwrap().to_vec();
        let f32s = cat(&1.5f32.to_le_bytes(), &(-2.25f32).to_le_bytes());
        assert_eq!(float(DType::F32, f32s), [1.5, -2.25]);
        let f64s = cat(&1.5f64.to_le_bytes(), &(-2.25f64).to_le_bytes());
        assert_eq!(float(DType::F64, f64s), [1.5, -2.25]);
        let f16s = cat(
            &half::f16::from_f32(1.5).to_le_bytes(),
            &half::f16::from_f32(-2.25).to_le_bytes(),
        );
        assert_eq!(float(DType::F16, f16s), [1.5, -2.25]);
        let bf16s = cat(
            &half::bf16::from_f32(1.5).to_le_bytes(),
            &half::bf16::from_f32(-2.25).to_le_bytes(),
        );
        assert_eq!(float(DType::BF16, bf16s), [1.5, -2.25]);
        let i64s = cat(&(1i64 << 40).to_le_bytes(), &(-3i64).to_le_bytes());
        assert_eq!(int(DType::I64, i64s), [1 << 40, -3]);
        let i32s = cat(&70000i32.to_le_bytes(), &(-3i32).to_le_bytes());
        assert_eq!(int(DType::I32, i32s), [70000, -3]);
        let i16s = cat(&300i16.to_le_bytes(), &(-3i16).to_le_bytes());
        assert_eq!(int(DType::I16, i16s), [300, -3]);
        assert_eq!(int(DType::I8, vec![5, 0xfd]), [5, -3]);
        assert_eq!(int(DType::U8, vec![5, 0xfd]), [5, 253]);
        assert_eq!(int(DType::Bool, vec![0, 1]), [0, 1]);
        assert!(HostTensor::from_le_bytes(DType::F32, vec![2], &[0; 7]).is_err());
    }
}
