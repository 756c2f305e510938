//! A data batch's arrays as libtorch tensors.
use crate::data::Array;
use anyhow::Result;

/// A batch array as a libtorch tensor of the same shape on `device` (a copy: libtorch owns its
/// memory; an array not in standard layout is copied in logical order).
pub fn to_tensor(a: &Array, device: tch::Device) -> Result<tch::Tensor> {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let t = match a {
        Array::F32(x) => match x.as_slice() {
            Some(s) => tch::Tensor::f_from_slice(s)?,
            None => tch::Tensor::f_from_slice(&x.iter().copied().collect::<Vec<_>>())?,
        },
        Array::I64(x) => match x.as_slice() {
            Some(s) => tch::Tensor::f_from_slice(s)?,
            None => tch::Tensor::f_from_slice(&x.iter().copied().collect::<Vec<_>>())?,
        },
    };
    Ok(t.f_reshape(shape.as_slice())?.f_to_device(device)?)
}
