//! Slice (opset 13+): starts, ends, axes, steps as inputs; any step sign, negative and clamped
//! bounds. https://onnx.ai/onnx/operators/onnx__Slice.html
//!
//! Rather than re-deriving the clamping rules, the rule lets Slice itself say which elements it
//! picked (the "index trick"): P = Reshape(Range(0, numel X), shape X) holds each element's flat
//! position, idx = Slice(P, same starts/ends/axes/steps) the positions of Y's elements, and
//! dX = Reshape(ScatterElements(zeros[numel X], flat idx, flat dY, axis 0), shape X).
//! A slice picks every element at most once, so no reduction is needed.
use super::rule::{Ctx, Kind, Rule};
use super::torch::{axis, input, ints, one, opt_input, TorchCtx, Value};
use crate::model::graph::{attr_int, attr_string, attr_tensor, tensor_i64};
use anyhow::{bail, Result};
use onnx_protobuf::{NodeProto, TensorProto};

pub static RULE: Rule = Rule::new("Slice", Kind::Linear).vjp(vjp).torch(torch);

/// Per axis, ONNX's clamping: a negative start or end counts from the back; then for a positive
/// step start and end are clamped to [0, d], for a negative one start to [0, d-1] and end to
/// [-1, d-1]. libtorch slices take positive steps only: a negative step slices the flipped axis.
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let xs = x.size();
    let r = xs.len() as i64;
    let starts = ints(input(&v, 1)?)?;
    let ends = ints(input(&v, 2)?)?;
    let n = starts.len();
    let axes = match opt_input(&v, 3) {
        Some(t) => ints(t)?,
        None => (0..n as i64).collect(),
    };
    let steps = match opt_input(&v, 4) {
        Some(t) => ints(t)?,
        None => vec![1; n],
    };
    if ends.len() != n || axes.len() != n || steps.len() != n {
        bail!(
            "starts, ends, axes and steps have {n}, {}, {} and {} entries",
            ends.len(),
            axes.len(),
            steps.len()
        );
    }
    let mut y = x.shallow_clone();
    for k in 0..n {
        let a = axis(axes[k], r)?;
        let d = xs[a as usize];
        let step = steps[k];
        let from_back = |i: i64| if i < 0 { i.saturating_add(d) } else { i };
        let (s, e) = (from_back(starts[k]), from_back(ends[k]));
        if step > 0 {
            let s = s.clamp(0, d);
            let e = e.clamp(0, d).max(s);
            y = y.f_slice(a, s, e, step)?;
        } else if step < 0 {
            let s = s.clamp(0, (d - 1).max(0));
            let e = e.clamp(-1, d - 1);
            let m = -step;
            let count = if s > e { (s - e + m - 1) / m } else { 0 };
            y = if count == 0 {
                y.f_narrow(a, 0, 0)?
            } else {
                // Element s - i*m of X is element (d-1-s) + i*m of the flipped axis.
                let j = d - 1 - s;
                y.f_flip([a])?.f_slice(a, j, j + (count - 1) * m + 1, m)?
            };
        } else {
            bail!("step 0 on axis {a}");
        }
    }
    one(y)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let x = c.input(0).to_string();
    if let Some(pads) = unit_step_pads(c, &x)? {
        // dX = dY padded with zeros back to X's extent: one pass, where the index trick below
        // builds int64 positions and scatters into zeros (deit_small's q, k, v slices of the
        // qkv projection: 9% of a batch as ScatterElements).
        let p = c.ints(&pads);
        let gx = c.op("Pad", &[&g, &p], vec![]);
        c.set(0, gx);
        return Ok(());
    }
    let pos = flat_positions(c, &x);
    let mut ins: Vec<String> = vec![pos];
    ins.extend(c.node.input.iter().skip(1).cloned());
    let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
    let idx = c.op("Slice", &refs, vec![]);
    let gx = scatter_back(c, &x, &idx, &g, false)?;
    c.set(0, gx);
    Ok(())
}

/// Pad's `pads` (begins then ends, per axis of X) that put Y back at its place in X, when the
/// slice is known when the graph is built: constant starts, ends and axes, every step 1 (or
/// none given), and X's extent static on the sliced axes. ONNX's clamping for a positive step:
/// a negative start or end counts from the back, then both are clamped to [0, d]; an end
/// before the start is an empty slice (Y has 0 there, and the pads cover all of d).
fn unit_step_pads(c: &Ctx, x: &str) -> Result<Option<Vec<i64>>> {
    let (Some(starts), Some(ends)) = (c.const_ints(1), c.const_ints(2)) else {
        return Ok(None);
    };
    let n = starts.len();
    let axes = match c.has_input(3) {
        true => match c.const_ints(3) {
            Some(a) => a,
            None => return Ok(None),
        },
        false => (0..n as i64).collect(),
    };
    let steps_one = !c.has_input(4) || c.const_ints(4).is_some_and(|s| s.iter().all(|&v| v == 1));
    let dims = c.dims(x)?;
    let r = dims.len() as i64;
    if !steps_one || ends.len() != n || axes.len() != n {
        return Ok(None);
    }
    let mut pads = vec![0i64; 2 * dims.len()];
    let mut seen = vec![false; dims.len()];
    for ((&s, &e), &a) in starts.iter().zip(&ends).zip(&axes) {
        let a = if a < 0 { a + r } else { a };
        if !(0..r).contains(&a) || seen[a as usize] {
            return Ok(None);
        }
        seen[a as usize] = true;
        let Some(d) = dims[a as usize] else {
            return Ok(None);
        };
        let d = d as i64;
        let clamp = |v: i64| (if v < 0 { v + d } else { v }).clamp(0, d);
        let (s, e) = (clamp(s), clamp(e));
        pads[a as usize] = s;
        pads[dims.len() + a as usize] = d - e.max(s);
    }
    Ok(Some(pads))
}

/// A 0-d int64 constant.
pub fn i64_scalar(c: &mut Ctx, v: i64) -> String {
    let out = c.b.fresh("const");
    let mut n = NodeProto::new();
    n.op_type = "Constant".into();
    n.name = out.clone();
    n.output = vec![out.clone()];
    n.attribute = vec![attr_tensor("value", tensor_i64("", &[], &[v]))];
    c.b.nodes.push(n);
    out
}

/// The element count of the forward value `x`, as a 0-d and as a 1-element int64 tensor.
fn numel(c: &mut Ctx, x: &str) -> (String, String) {
    match c.shapes.static_dims(x) {
        Some(d) => {
            let n = d.iter().product::<usize>() as i64;
            (i64_scalar(c, n), c.ints(&[n]))
        }
        None => {
            let n = c.op("Size", &[x], vec![]);
            let one = c.ints(&[1]);
            let n1 = c.op("Reshape", &[&n, &one], vec![]);
            (n, n1)
        }
    }
}

/// An int64 tensor shaped like the forward value `x` whose elements are their own row-major
/// positions: Reshape(Range(0, numel x), shape x).
pub fn flat_positions(c: &mut Ctx, x: &str) -> String {
    let (n, _) = numel(c, x);
    let zero = i64_scalar(c, 0);
    let one = i64_scalar(c, 1);
    let r = c.op("Range", &[&zero, &n, &one], vec![]);
    c.reshape_as(&r, x)
}

/// Zeros of `like`'s element type with the runtime shape `shape` (a 1-D int64 tensor).
pub fn zeros_shaped(c: &mut Ctx, shape: &str, like: &str) -> Result<String> {
    let dt = c.dtype(like)?;
    let mut t = TensorProto::new();
    t.data_type = dt.onnx();
    t.dims = vec![1];
    t.raw_data = vec![0; dt.size()];
    Ok(c.op("ConstantOfShape", &[shape], vec![attr_tensor("value", t)]))
}

/// The gradient of the forward value `x` from `g`, whose elements were read from the flat
/// positions `idx` of x (see [`flat_positions`]): zeros, with each g element written (or, with
/// `add`, added, for positions read several times) at its position.
pub fn scatter_back(c: &mut Ctx, x: &str, idx: &str, g: &str, add: bool) -> Result<String> {
    let (_, n1) = numel(c, x);
    let zeros = zeros_shaped(c, &n1, x)?;
    let flat = c.ints(&[-1]);
    let idx = c.op("Reshape", &[idx, &flat], vec![]);
    let gf = c.op("Reshape", &[g, &flat], vec![]);
    let mut attrs = vec![attr_int("axis", 0)];
    if add {
        attrs.push(attr_string("reduction", "add"));
    }
    let s = c.op("ScatterElements", &[&zeros, &idx, &gf], attrs);
    Ok(c.reshape_as(&s, x))
}

op_tests!(
    slice_unit_steps = [
        Case::new("Slice")
            .input(&[4, 5])
            .ints(&[2], &[1, 0])
            .ints(&[2], &[3, 4]),
        Case::new("Slice")
            .input(&[3, 6])
            .ints(&[1], &[2])
            .ints(&[1], &[5])
            .ints(&[1], &[1]),
        // Unit steps as Pad: negative and clamped bounds, negative axes, explicit steps of 1.
        Case::new("Slice")
            .input(&[2, 5, 7])
            .ints(&[2], &[-4, i64::MIN])
            .ints(&[2], &[i64::MAX, -2])
            .ints(&[2], &[-1, 1])
            .ints(&[2], &[1, 1]),
        // An empty slice (end before start): dX is all zeros.
        Case::new("Slice")
            .input(&[3, 4])
            .ints(&[1], &[3])
            .ints(&[1], &[1])
            .ints(&[1], &[1]),
        // The Pad form in f32 (the form does not depend on the kernels).
        Case::new("Slice")
            .input(&[3, 6])
            .ints(&[1], &[2])
            .ints(&[1], &[5])
            .ints(&[1], &[1])
            .f32(),
    ],
    slice_steps_and_negative_bounds = [
        // every second column from the back: columns 5, 3, 1
        Case::new("Slice")
            .input(&[3, 6])
            .ints(&[1], &[-1])
            .ints(&[1], &[-100])
            .ints(&[1], &[-1])
            .ints(&[1], &[-2]),
        // clamped ends and a step of 3, two axes, axes given negatively
        Case::new("Slice")
            .input(&[2, 5, 7])
            .ints(&[2], &[1, -6])
            .ints(&[2], &[i64::MAX, 100])
            .ints(&[2], &[-1, 1])
            .ints(&[2], &[3, 2]),
        // reversal of a whole axis
        Case::new("Slice")
            .input(&[4, 3])
            .ints(&[1], &[i64::MAX])
            .ints(&[1], &[i64::MIN])
            .ints(&[1], &[0])
            .ints(&[1], &[-1]),
    ],
    slice_absent_axes_with_steps = [Case::new("Slice")
        .input(&[5, 4])
        .ints(&[2], &[0, 3])
        .ints(&[2], &[5, 0])
        .absent()
        .ints(&[2], &[2, -1])],
);
