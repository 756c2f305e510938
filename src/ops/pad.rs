//! Pad (opset 11+: pads, constant_value and, from opset 18, axes as inputs): modes constant,
//! reflect, edge and wrap (opset 19); negative pads crop.
//! https://onnx.ai/onnx/operators/onnx__Pad.html
//!
//! - constant: Y is X shifted by the leading pads with a border of the constant, so
//!   dX = Pad(dY, -pads, same axes, constant 0) (cropping the border, and zero-filling where the
//!   forward pass cropped), and d constant_value = sum(dY) - sum(dX) (the border's share).
//! - reflect, edge, wrap: border elements copy elements of X, possibly several times, so the rule
//!   lets Pad itself say which (see [`super::slice`]): idx = Pad(positions of X, pads, mode) and
//!   dX = ScatterElements(zeros, flat idx, flat dY, reduction = add).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{axis, floats, input, ints, one, opt_input, TorchCtx, Value};
use crate::model::graph::attr_string;
use crate::ops::reshape::reshape_like;
use crate::ops::slice::{flat_positions, scatter_back};
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("Pad", Kind::Linear).vjp(vjp).torch(torch);

/// constant: libtorch's constant pad (negative pads crop). The value is read as a number: a
/// pad value that is itself trained gets no gradient here (exporters write constants).
/// reflect, edge, wrap: per padded axis, one `index_select` of the source positions, which
/// works for any axis and any pad size.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let xs = x.size();
    let r = xs.len() as i64;
    let pads = ints(input(&v, 1)?)?;
    let axes: Vec<i64> = match opt_input(&v, 3) {
        Some(t) => ints(t)?
            .iter()
            .map(|&a| axis(a, r))
            .collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    let n = axes.len();
    if pads.len() != 2 * n {
        bail!("{} pads for {n} axes", pads.len());
    }
    let mut be = vec![(0i64, 0i64); r as usize];
    for (k, &a) in axes.iter().enumerate() {
        be[a as usize] = (pads[k], pads[n + k]);
    }
    let mode = c.attr_s("mode").unwrap_or_else(|| "constant".into());
    match mode.as_str() {
        "constant" => {
            let value = match opt_input(&v, 2) {
                Some(t) if t.numel() > 0 => floats(t)?[0],
                _ => 0.0,
            };
            // libtorch lists pads from the last axis: (begin, end) per axis.
            let list: Vec<i64> = be.iter().rev().flat_map(|&(b, e)| [b, e]).collect();
            one(x.f_pad(list.as_slice(), "constant", value)?)
        }
        "reflect" | "edge" | "wrap" => {
            let mut y = x.shallow_clone();
            for (a, &(b, e)) in be.iter().enumerate() {
                if b == 0 && e == 0 {
                    continue;
                }
                let d = xs[a];
                if d == 0 {
                    bail!("cannot {mode}-pad axis {a} of extent 0");
                }
                let src: Vec<i64> = (-b..d + e).map(|p| source(p, d, &mode)).collect();
                let idx = tch::Tensor::f_from_slice(&src)?.f_to_device(x.device())?;
                y = y.f_index_select(a as i64, &idx)?;
            }
            one(y)
        }
        other => bail!("unknown Pad mode '{other}'"),
    }
}

/// The position of X that position `p` (-begin <= p < d + end) of a padded axis copies.
fn source(p: i64, d: i64, mode: &str) -> i64 {
    match mode {
        // Mirror without repeating the edge: period 2(d - 1).
        "reflect" if d == 1 => 0,
        "reflect" => {
            let period = 2 * (d - 1);
            let m = p.rem_euclid(period);
            if m >= d {
                period - m
            } else {
                m
            }
        }
        "edge" => p.clamp(0, d - 1),
        _ => p.rem_euclid(d),
    }
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let mode = c.attr_s("mode").unwrap_or_else(|| "constant".into());
    let pads = c.input(1).to_string();
    let axes = c.input(3).to_string();
    match mode.as_str() {
        "constant" => {
            let neg = c.op("Neg", &[&pads], vec![]);
            let gx = c.op("Pad", &[&g, &neg, "", &axes], vec![]);
            if c.needs(2) {
                let v = c.input(2).to_string();
                let all = c.op(
                    "ReduceSum",
                    &[&g],
                    vec![crate::model::graph::attr_int("keepdims", 0)],
                );
                let inner = c.op(
                    "ReduceSum",
                    &[&gx],
                    vec![crate::model::graph::attr_int("keepdims", 0)],
                );
                let gv = c.op("Sub", &[&all, &inner], vec![]);
                let gv = reshape_like(c, &gv, &v);
                c.set(2, gv);
            }
            c.set(0, gx);
        }
        "reflect" | "edge" | "wrap" => {
            if c.needs(0) {
                let pos = flat_positions(c, &x);
                let idx = c.op(
                    "Pad",
                    &[&pos, &pads, "", &axes],
                    vec![attr_string("mode", &mode)],
                );
                let gx = scatter_back(c, &x, &idx, &g, true)?;
                c.set(0, gx);
            }
        }
        other => bail!("unknown Pad mode '{other}'"),
    }
    Ok(())
}

op_tests!(
    pad_constant = [
        Case::new("Pad").input(&[2, 3]).ints(&[4], &[1, 0, 2, 3]),
        // negative pads crop; a differentiated constant value
        Case::new("Pad")
            .input(&[3, 4])
            .ints(&[4], &[-1, 2, 1, -2])
            .input(&[]),
        // axes given (opset 18+), negatively
        Case::new("Pad")
            .input(&[2, 3, 2])
            .ints(&[2], &[1, 2])
            .input(&[])
            .ints(&[1], &[-2]),
    ],
    pad_copying_modes = ["reflect", "edge", "wrap"].into_iter().flat_map(|mode| {
        [
            Case::new("Pad")
                .input(&[3, 4])
                .ints(&[4], &[1, 2, 2, 3])
                .attr(attr_string("mode", mode)),
            Case::new("Pad")
                .input(&[2, 3, 4])
                .ints(&[2], &[2, 1])
                .absent()
                .ints(&[1], &[2])
                .attr(attr_string("mode", mode)),
        ]
    }),
);
