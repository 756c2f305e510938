//! Ops whose outputs carry no gradient: comparisons and logic (boolean outputs), shape queries,
//! index outputs, shape-built tensors and constants. Declared here, one static each, so that "no
//! gradient" is stated rather than implied; none has a rule body. The sweep only visits a node
//! whose output is a float and depends on a float that needs a gradient, which none of these
//! has, except Range with float start/delta: that one would silently get no gradient (models
//! build index ranges from integers or constants).
//! - Equal, Greater, Less, Not, And: https://onnx.ai/onnx/operators/onnx__Equal.html etc.
//! - IsNaN (opset 20), IsInf (opset 20; detect_negative, detect_positive, default 1): the
//!   exporter's scaled_dot_product_attention masks a fully masked row's NaN softmax with them.
//! - Shape (opset 19), Size (opset 19), NonZero (opset 13), ArgMax (opset 13).
//! - Range (opset 11), ConstantOfShape (opset 20), Constant (opset 19).
use super::attrs::Attrs;
use super::rule::{Kind, Rule};
use super::torch::{
    axis, floats, from_proto, input, ints, is_float, one, TorchCtx, TorchFwd, Value,
};
use anyhow::{anyhow, bail, Result};
use tch::Tensor;

const fn nd(op: &'static str, torch: TorchFwd) -> Rule {
    Rule::new(op, Kind::NonDifferentiable).torch(torch)
}

pub static AND: Rule = nd("And", |_, v| {
    one(input(&v, 0)?.f_logical_and(input(&v, 1)?)?)
});
pub static ARG_MAX: Rule = nd("ArgMax", arg_max);
pub static CONSTANT: Rule = nd("Constant", constant);
pub static CONSTANT_OF_SHAPE: Rule = nd("ConstantOfShape", constant_of_shape);
pub static EQUAL: Rule = nd("Equal", |_, v| {
    one(input(&v, 0)?.f_eq_tensor(input(&v, 1)?)?)
});
pub static GREATER: Rule = nd("Greater", |_, v| {
    one(input(&v, 0)?.f_gt_tensor(input(&v, 1)?)?)
});
pub static GREATER_OR_EQUAL: Rule = nd("GreaterOrEqual", |_, v| {
    one(input(&v, 0)?.f_ge_tensor(input(&v, 1)?)?)
});
pub static IS_INF: Rule = nd("IsInf", is_inf);
pub static IS_NAN: Rule = nd("IsNaN", |_, v| one(input(&v, 0)?.f_isnan()?));
pub static LESS_OR_EQUAL: Rule = nd("LessOrEqual", |_, v| {
    one(input(&v, 0)?.f_le_tensor(input(&v, 1)?)?)
});
pub static OR: Rule = nd("Or", |_, v| one(input(&v, 0)?.f_logical_or(input(&v, 1)?)?));
pub static XOR: Rule = nd("Xor", |_, v| {
    one(input(&v, 0)?.f_logical_xor(input(&v, 1)?)?)
});
pub static LESS: Rule = nd(
    "Less",
    |_, v| one(input(&v, 0)?.f_lt_tensor(input(&v, 1)?)?),
);
pub static NON_ZERO: Rule = nd("NonZero", non_zero);
pub static NOT: Rule = nd("Not", |_, v| one(input(&v, 0)?.f_logical_not()?));
pub static RANGE: Rule = nd("Range", range);
pub static SHAPE: Rule = nd("Shape", shape);
pub static SIZE: Rule = nd("Size", size);

/// The first maximum (or the last, with `select_last_index`), as libtorch and ONNX Runtime take it.
fn arg_max(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let a = axis(c.attr_i("axis", 0), x.dim() as i64)?;
    let keep = c.attr_i("keepdims", 1) != 0;
    if c.attr_i("select_last_index", 0) == 0 {
        return one(x.f_argmax(a, keep)?);
    }
    let d = x.size()[a as usize];
    let i = x.f_flip([a])?.f_argmax(a, keep)?;
    one(i.f_neg()?.f_add_scalar(d - 1)?)
}

/// Which infinities count: both by default.
fn is_inf(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let pos = c.attr_i("detect_positive", 1) != 0;
    let neg = c.attr_i("detect_negative", 1) != 0;
    one(match (pos, neg) {
        (true, true) => x.f_isinf()?,
        (true, false) => x.f_isposinf()?,
        (false, true) => x.f_isneginf()?,
        (false, false) => Tensor::f_zeros(x.size(), (tch::Kind::Bool, x.device()))?,
    })
}

fn constant(c: &TorchCtx, _: Vec<Value>) -> Result<Vec<Value>> {
    let a = c
        .node
        .attribute
        .first()
        .ok_or_else(|| anyhow!("Constant without a value"))?;
    let t = match a.name.as_str() {
        "value" => from_proto(
            a.t.as_ref()
                .ok_or_else(|| anyhow!("Constant value is not a tensor"))?,
            c.device,
        )?,
        "value_float" => Tensor::f_from_slice(&[a.f])?.f_reshape([0i64; 0])?,
        "value_floats" => Tensor::f_from_slice(&a.floats)?,
        "value_int" => Tensor::f_from_slice(&[a.i])?.f_reshape([0i64; 0])?,
        "value_ints" => Tensor::f_from_slice(&a.ints)?,
        other => bail!("Constant with '{other}' is not supported"),
    };
    one(t.f_to_device(c.device)?)
}

/// The `value` attribute's type and value (float 0 by default) at every position of the shape.
fn constant_of_shape(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let shape = ints(input(&v, 0)?)?;
    let value = match c.attr("value").and_then(|a| a.t.as_ref()) {
        Some(t) => from_proto(t, tch::Device::Cpu)?,
        None => Tensor::f_from_slice(&[0f32])?,
    };
    let opts = (value.kind(), c.device);
    let t = if is_float(value.kind()) {
        Tensor::f_full(shape.as_slice(), floats(&value)?[0], opts)?
    } else {
        Tensor::f_full(shape.as_slice(), ints(&value)?[0], opts)?
    };
    one(t)
}

/// `[rank, count]`: the coordinates of the non-zero elements, one column each.
fn non_zero(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_nonzero()?.f_transpose(0, 1)?)
}

/// `max(ceil((limit - start) / delta), 0)` elements `start + i * delta`, of start's type.
fn range(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let (start, limit, delta) = (input(&v, 0)?, input(&v, 1)?, input(&v, 2)?);
    let kind = start.kind();
    let opts = (kind, c.device);
    if is_float(kind) {
        let (s, l, d) = (floats(start)?[0], floats(limit)?[0], floats(delta)?[0]);
        let n = ((l - s) / d).ceil().max(0.0) as i64;
        if n == 0 {
            return one(Tensor::f_zeros([0], opts)?);
        }
        return one(Tensor::f_arange(n, (tch::Kind::Double, c.device))?
            .f_mul_scalar(d)?
            .f_add_scalar(s)?
            .f_to_kind(kind)?);
    }
    let (s, l, d) = (ints(start)?[0], ints(limit)?[0], ints(delta)?[0]);
    if d == 0 {
        bail!("Range with delta 0");
    }
    let span = l - s;
    let n = if (span > 0) == (d > 0) && span != 0 {
        (span + d - d.signum()) / d
    } else {
        0
    };
    one(Tensor::f_arange(n.max(0), opts)?
        .f_mul_scalar(d)?
        .f_add_scalar(s)?)
}

/// The input's dimensions `start..end` (opset 15; negative counting from the back, clamped).
fn shape(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let dims = match v.first() {
        Some(Value::Tensor(t)) => t.size(),
        _ => bail!("Shape of something that is not a tensor"),
    };
    let r = dims.len() as i64;
    let at = |k: i64| (if k < 0 { k + r } else { k }).clamp(0, r) as usize;
    let (s, e) = (at(c.attr_i("start", 0)), at(c.attr_i("end", r)));
    let picked = if s < e { &dims[s..e] } else { &dims[..0] };
    one(Tensor::f_from_slice(picked)?.f_to_device(c.device)?)
}

fn size(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let n = input(&v, 0)?.numel() as i64;
    one(Tensor::f_from_slice(&[n])?
        .f_reshape([0i64; 0])?
        .f_to_device(c.device)?)
}

#[cfg(test)]
mod tests {
    use crate::ops::{rule, Kind};
    #[test]
    fn declared_non_differentiable() {
        for op in [
            "And",
            "ArgMax",
            "Constant",
            "ConstantOfShape",
            "Equal",
            "Greater",
            "IsInf",
            "IsNaN",
            "Less",
            "NonZero",
            "Not",
            "Range",
            "Shape",
            "Size",
        ] {
            let r = rule(op).unwrap_or_else(|| panic!("{op} is not registered"));
            assert_eq!(r.kind, Kind::NonDifferentiable, "{op}");
            assert!(r.vjp.is_none(), "{op}");
        }
    }

    #[test]
    fn torch_forward() {
        use crate::model::graph::{attr_int, attr_ints, attr_tensor, tensor_f32, tensor_i64};
        use crate::ops::testing::Case;
        use crate::ops::torch_testing::check_torch;
        let tf = [true, false, true, true, false, false];
        let ft = [false, false, true, false, true, false];
        let v = [0.5, -1.0, 0.5, 2.0, 0.0, -1.0];
        let ties = [1.0, 3.0, 3.0, 0.0, 2.0, 2.0, 2.0, 1.0];
        let (inf, nan) = (f64::INFINITY, f64::NAN);
        // The largest finite f32 too.
        let special = [1.0, inf, -inf, nan, -0.0, f32::MAX as f64];
        let value = |t| attr_tensor("value", t);
        let range = |start, limit, delta| {
            Case::new("Range")
                .ints(&[], &[start])
                .ints(&[], &[limit])
                .ints(&[], &[delta])
        };
        let cases = [
            Case::new("And").bools(&[2, 3], &tf).bools(&[2, 3], &ft),
            Case::new("And").bools(&[2, 3], &tf).bools(&[3], &ft[..3]),
            Case::new("Not").bools(&[2, 3], &tf),
            Case::new("Equal")
                .values(&[2, 3], &v)
                .values(&[3], &[0.5, 0.0, -1.0]),
            Case::new("Equal")
                .ints(&[2, 2], &[1, 2, 3, 4])
                .ints(&[2], &[1, 4]),
            Case::new("Greater").input(&[2, 3, 4]).input(&[3, 1]),
            Case::new("Less").input(&[4]).input(&[2, 3, 4]),
            Case::new("IsNaN").values(&[6], &special),
            Case::new("IsInf").values(&[6], &special),
            Case::new("IsInf")
                .values(&[6], &special)
                .attr(attr_int("detect_negative", 0)),
            Case::new("IsInf")
                .values(&[6], &special)
                .attr(attr_int("detect_positive", 0)),
            Case::new("IsInf")
                .values(&[6], &special)
                .attr(attr_int("detect_positive", 0))
                .attr(attr_int("detect_negative", 0)),
            Case::new("Less").ints(&[3], &[1, 5, 2]).ints(&[], &[2]),
            // Ties included: v holds 0.5 twice and -1.0 twice.
            Case::new("LessOrEqual")
                .values(&[2, 3], &v)
                .values(&[3], &[0.5, 0.0, -1.0]),
            Case::new("GreaterOrEqual")
                .ints(&[3], &[1, 5, 2])
                .ints(&[], &[2]),
            Case::new("Or").bools(&[2, 3], &tf).bools(&[3], &ft[..3]),
            Case::new("Xor").bools(&[2, 3], &tf).bools(&[2, 3], &ft),
            Case::new("ArgMax").input(&[3, 4]),
            Case::new("ArgMax")
                .input(&[2, 3, 4])
                .attr(attr_int("axis", -1))
                .attr(attr_int("keepdims", 0)),
            // Ties: the first maximum, or the last with select_last_index.
            Case::new("ArgMax")
                .values(&[2, 4], &ties)
                .attr(attr_int("axis", 1)),
            Case::new("ArgMax")
                .values(&[2, 4], &ties)
                .attr(attr_int("axis", 1))
                .attr(attr_int("select_last_index", 1)),
            Case::new("Constant").attr(value(tensor_f32("", &[2, 2], &[1.0, -2.5, 3.0, 0.25]))),
            Case::new("Constant").attr(value(tensor_i64("", &[], &[7]))),
            Case::new("Constant").attr(attr_ints("value_ints", &[3, -1, 4])),
            Case::new("ConstantOfShape").ints(&[2], &[2, 3]),
            Case::new("ConstantOfShape")
                .ints(&[3], &[1, 2, 2])
                .attr(value(tensor_i64("", &[1], &[5]))),
            Case::new("ConstantOfShape")
                .ints(&[1], &[4])
                .attr(value(tensor_f32("", &[1], &[-1.5]))),
            Case::new("NonZero").values(&[2, 3], &v),
            Case::new("NonZero").ints(&[4], &[0, 3, 0, -1]),
            range(2, 11, 3),
            range(5, -4, -2),
            range(5, 1, 2),
            Case::new("Range")
                .values(&[], &[0.5])
                .values(&[], &[2.25])
                .values(&[], &[0.25]),
            Case::new("Shape").input(&[2, 3, 4]),
            Case::new("Shape")
                .input(&[2, 3, 4])
                .attr(attr_int("start", 1)),
            Case::new("Shape")
                .input(&[2, 3, 4, 5])
                .attr(attr_int("start", -3))
                .attr(attr_int("end", -1)),
            Case::new("Shape").input(&[2, 3]).attr(attr_int("end", 10)),
            Case::new("Size").input(&[2, 3, 4]),
        ];
        cases.into_iter().for_each(check_torch);
    }
}
