//! What an op's libtorch forward sees and returns (the `torch` half of a [`super::Rule`]).
//!
//! A forward gets the node ([`TorchCtx`], attributes through [`Attrs`]) and its inputs as
//! [`Value`]s in the node's input order (`Value::None` for an absent optional input), and returns
//! its outputs in the node's output order, ONNX semantics exactly. It may return fewer values
//! than the node names only where the missing ones are optional outputs nobody asked for
//! ([`TorchCtx::wants`]). Shape-like integer inputs (shapes, axes, pads, split sizes) are read
//! to the host with [`ints`]. A forward that updates one of its inputs in place in training
//! (BatchNormalization's running statistics) says so with [`TorchCtx::write_back`]; whoever
//! runs it decides whether to apply the update (the interpreter does, in `Mode::Train`, under
//! no_grad).
use super::attrs::Attrs;
use crate::tensor::{DType, Values};
use anyhow::{anyhow, bail, Result};
use onnx_protobuf::{NodeProto, TensorProto};
use std::cell::RefCell;
use tch::{Device, Kind, Tensor};

/// An ONNX value at run time.
#[derive(Debug)]
pub enum Value {
    Tensor(Tensor),
    /// A sequence of tensors (SplitToSequence's output).
    Seq(Vec<Tensor>),
    /// An absent optional input (an empty name in the node's inputs).
    None,
}

impl Value {
    /// Another handle on the same tensor(s) (no copy).
    pub fn shallow_clone(&self) -> Value {
        match self {
            Value::Tensor(t) => Value::Tensor(t.shallow_clone()),
            Value::Seq(s) => Value::Seq(s.iter().map(|t| t.shallow_clone()).collect()),
            Value::None => Value::None,
        }
    }
    pub fn tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }
    pub fn into_tensor(self) -> Option<Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

pub type TorchFwd = fn(&TorchCtx, Vec<Value>) -> Result<Vec<Value>>;

pub struct TorchCtx<'a> {
    pub node: &'a NodeProto,
    /// BatchNormalization with batch statistics: `Some(..)` as the caller decides (the
    /// interpreter's mode), `None` as the node's own `training_mode` attribute says.
    pub training: Option<bool>,
    /// Where tensors the forward creates (constants, index ranges) live.
    pub device: Device,
    write_backs: RefCell<Vec<(usize, Tensor)>>,
}

impl<'a> TorchCtx<'a> {
    pub fn new(node: &'a NodeProto, training: Option<bool>, device: Device) -> TorchCtx<'a> {
        TorchCtx {
            node,
            training,
            device,
            write_backs: RefCell::new(Vec::new()),
        }
    }
    /// Whether the node names output `i` (optional outputs are computed only when asked for).
    pub fn wants(&self, i: usize) -> bool {
        self.node.output.get(i).is_some_and(|o| !o.is_empty())
    }
    /// Asks for input `i` (a buffer) to be overwritten by `value` after the node has run.
    pub fn write_back(&self, input: usize, value: Tensor) {
        self.write_backs.borrow_mut().push((input, value));
    }
    /// The updates the forward asked for: (input slot, new value).
    pub fn take_write_backs(&self) -> Vec<(usize, Tensor)> {
        std::mem::take(&mut self.write_backs.borrow_mut())
    }
}

impl Attrs for TorchCtx<'_> {
    fn node(&self) -> &NodeProto {
        self.node
    }
}

/// Input `i` as a tensor (an error if it is absent or a sequence).
pub fn input(v: &[Value], i: usize) -> Result<&Tensor> {
    match v.get(i) {
        Some(Value::Tensor(t)) => Ok(t),
        Some(Value::Seq(_)) => bail!("input {i} is a sequence, a tensor was expected"),
        _ => bail!("input {i} is missing"),
    }
}

/// Optional input `i`: `None` when absent.
pub fn opt_input(v: &[Value], i: usize) -> Option<&Tensor> {
    v.get(i).and_then(|x| x.tensor())
}

/// The values of an integer (or boolean) tensor, flattened, on the host.
pub fn ints(t: &Tensor) -> Result<Vec<i64>> {
    let flat = t.f_reshape([-1])?.f_to_kind(Kind::Int64)?;
    Ok(Vec::<i64>::try_from(&flat)?)
}

/// The values of a float tensor, flattened, on the host, as f64.
pub fn floats(t: &Tensor) -> Result<Vec<f64>> {
    let flat = t.f_reshape([-1])?.f_to_kind(Kind::Double)?;
    Ok(Vec::<f64>::try_from(&flat)?)
}

/// One output.
pub fn one(t: Tensor) -> Result<Vec<Value>> {
    Ok(vec![Value::Tensor(t)])
}

/// A 0-d tensor of `like`'s kind and device.
pub fn scalar(v: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_full([0i64; 0], v, (like.kind(), like.device()))?)
}

/// An axis attribute, negative counting from the back, checked against `rank`.
pub fn axis(a: i64, rank: i64) -> Result<i64> {
    let n = if a < 0 { a + rank } else { a };
    if n < 0 || n >= rank.max(1) {
        bail!("axis {a} is out of range for rank {rank}");
    }
    Ok(n)
}

/// The libtorch element kind of an ONNX `TensorProto.DataType` code.
pub fn kind_of(code: i32) -> Result<Kind> {
    let dt =
        DType::from_onnx(code).ok_or_else(|| anyhow!("ONNX data type {code} is not supported"))?;
    Ok(kind_of_dtype(dt))
}

pub fn kind_of_dtype(dt: DType) -> Kind {
    match dt {
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

pub fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// An ONNX tensor (initializer, Constant attribute) as a libtorch tensor of its own type.
pub fn from_proto(t: &TensorProto, device: Device) -> Result<Tensor> {
    let dt = DType::from_onnx(t.data_type).ok_or_else(|| {
        anyhow!(
            "tensor '{}' has ONNX data type {}, which is not supported",
            t.name,
            t.data_type
        )
    })?;
    let base = if dt == DType::F64 {
        // Decoded exactly: the host tensor type would narrow doubles to f32.
        let v: Vec<f64> = if !t.raw_data.is_empty() {
            t.raw_data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        } else {
            t.double_data.clone()
        };
        Tensor::f_from_slice(&v)?
    } else {
        let h = crate::model::decode_tensor(t)?;
        match &h.values {
            Values::F32(v) => Tensor::f_from_slice(v)?,
            Values::I64(v) => Tensor::f_from_slice(v)?,
        }
    };
    Ok(base
        .f_reshape(t.dims.as_slice())?
        .f_to_kind(kind_of_dtype(dt))?
        .f_to_device(device)?)
}

/// The shortest decimal that an f32 attribute rounds from, as f64: `momentum` 0.9 is stored
/// as 0.899999976 in the float attribute and meant as 0.9 by the exporter (PyTorch holds it
/// in double).
pub fn f32_as_written(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn decimal_attributes() {
        assert_eq!(f32_as_written(0.9), 0.9);
        assert_eq!(f32_as_written(1e-5), 1e-5);
    }
}
