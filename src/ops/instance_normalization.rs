//! InstanceNormalization (opset 6): X of shape [N, C, D...], `Y = xhat * scale[c] + B[c]` with
//! `xhat = (X - mean) / sqrt(var + epsilon)`, mean and (biased) variance over D... for each
//! (n, c). https://onnx.ai/onnx/operators/onnx__InstanceNormalization.html
//! nn.InstanceNorm2d exports to it, and nn.GroupNorm at opset 20 too (X reshaped to
//! [N, groups, -1], unit scale, then the affine Mul and Add).
//!
//! With g = dY * scale and means over the normalized axes (the classic normalization
//! backward, what PyTorch's `native_group_norm_backward`/`batch_norm` backward compute):
//! - dX = invstd * (g - mean(g) - xhat * mean(g * xhat)),
//! - dScale = sum over N and D... of dY * xhat, dB = sum over N and D... of dY.
//! The statistics are recomputed from X. [`normalization_vjp`] serves GroupNormalization too.
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{f32_as_written, input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("InstanceNormalization", Kind::Structured)
    .vjp(|c| normalization_vjp(c, None))
    .torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let (x, scale, bias) = (input(&v, 0)?, input(&v, 1)?, input(&v, 2)?);
    let eps = f32_as_written(c.attr_f("epsilon", 1e-5));
    one(x.f_instance_norm(
        Some(scale),
        Some(bias),
        None::<&tch::Tensor>,
        None,
        true,
        0.0,
        eps,
        false,
    )?)
}

fn mean(c: &mut Ctx, v: &str, axes: &[i64]) -> String {
    let ax = c.ints(axes);
    c.op("ReduceMean", &[v, &ax], vec![attr_int("keepdims", 1)])
}

/// The gradients of a normalization over groups of channels: X [N, C, D...], scale and B of
/// shape [C]; `groups` None normalizes each channel alone (InstanceNormalization), `Some(G)`
/// each of G groups of C/G channels together (GroupNormalization).
pub fn normalization_vjp(c: &mut Ctx, groups: Option<i64>) -> Result<()> {
    let Some(gy) = c.go(0) else { return Ok(()) };
    let (x, scale) = (c.input(0).to_string(), c.input(1).to_string());
    let r = c.rank(&x)? as i64;
    if r < 3 {
        bail!(
            "{} node '{}': input '{x}' has rank {r}, at least 3 ([N, C, D...]) expected",
            c.node.op_type,
            c.node.name
        );
    }
    let channels = c.dims(&x)?[1];
    if let (Some(ch), Some(s)) = (channels, c.dims(&scale)?.first().copied().flatten()) {
        if s != ch {
            bail!(
                "{} node '{}': scale '{scale}' has {s} elements, one per channel ({ch}) expected \
                 (opset 18's per-group scale is not supported)",
                c.node.op_type,
                c.node.name
            );
        }
    }
    let eps = c.attr_f("epsilon", 1e-5) as f64;
    // The normalized view: [N, G, C/G * D...] normalized over axis 2, or X over D....
    let (xv, axes) = match groups {
        Some(g) => {
            let shape = c.ints(&[0, g, -1]);
            (c.op("Reshape", &[&x, &shape], vec![]), vec![2])
        }
        None => (x.clone(), (2..r).collect::<Vec<i64>>()),
    };
    let mu = mean(c, &xv, &axes);
    let d = c.op("Sub", &[&xv, &mu], vec![]);
    let d2 = c.op("Mul", &[&d, &d], vec![]);
    let var = mean(c, &d2, &axes);
    let e = c.scalar(eps, &x)?;
    let ve = c.op("Add", &[&var, &e], vec![]);
    let sd = c.op("Sqrt", &[&ve], vec![]);
    let invstd = c.op("Reciprocal", &[&sd], vec![]);
    let xhat_v = c.op("Mul", &[&d, &invstd], vec![]);
    let xhat = match groups {
        Some(_) => c.reshape_as(&xhat_v, &x),
        None => xhat_v.clone(),
    };
    // Per-channel sums: over N and D....
    let outer: Vec<i64> = std::iter::once(0).chain(2..r).collect();
    if c.needs(2) {
        let db = c.reduce_sum(&gy, &outer, false);
        c.set(2, db);
    }
    if c.needs(1) {
        let p = c.op("Mul", &[&gy, &xhat], vec![]);
        let ds = c.reduce_sum(&p, &outer, false);
        c.set(1, ds);
    }
    if c.needs(0) {
        let trailing: Vec<i64> = (1..r - 1).collect();
        let ax = c.ints(&trailing);
        let s = c.op("Unsqueeze", &[&scale, &ax], vec![]);
        let g = c.op("Mul", &[&gy, &s], vec![]);
        let gv = match groups {
            Some(_) => c.reshape_as(&g, &xv),
            None => g,
        };
        let mg = mean(c, &gv, &axes);
        let gx = c.op("Mul", &[&gv, &xhat_v], vec![]);
        let mgx = mean(c, &gx, &axes);
        let t = c.op("Mul", &[&xhat_v, &mgx], vec![]);
        let a = c.op("Sub", &[&gv, &mg], vec![]);
        let a = c.op("Sub", &[&a, &t], vec![]);
        let dxv = c.op("Mul", &[&a, &invstd], vec![]);
        let dx = match groups {
            Some(_) => c.reshape_as(&dxv, &x),
            None => dxv,
        };
        c.set(0, dx);
    }
    Ok(())
}

op_tests!(
    instance_normalization = [
        // ONNX Runtime has no f64 InstanceNormalization kernel.
        Case::new("InstanceNormalization")
            .input(&[2, 3, 4, 5])
            .input(&[3])
            .input(&[3])
            .f32(),
        Case::new("InstanceNormalization")
            .input(&[3, 2, 6])
            .input(&[2])
            .input(&[2])
            .attr(attr_float("epsilon", 1e-3))
            .f32(),
    ],
);
