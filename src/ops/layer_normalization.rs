//! LayerNormalization (opset 17): normalizes over the axes `axis..rank` (default axis -1),
//! `Y = xhat * Scale + B` with `xhat = (X - mean) * invstd`, `invstd = 1/sqrt(var + epsilon)`
//! (biased variance); optional outputs Mean and InvStdDev (kept dims). `stash_type` only sets
//! the forward's internal precision; the gradient is computed in X's type.
//! https://onnx.ai/onnx/operators/onnx__LayerNormalization.html
//!
//! mean and invstd are recomputed from X (the optional outputs may be absent). With g = dY*Scale
//! and means taken over the normalized axes:
//! - dX = invstd * (g - mean(g) - xhat * mean(g * xhat))
//!   + dMean / n - dInvStd * invstd^2 * xhat / n (when the statistics outputs are used),
//! - dScale = unbroadcast(dY * xhat), dB = unbroadcast(dY).
//!
//! With probe's CPU kernels (f32, Scale and B of the normalized shape, statistics outputs
//! unused) one `probe.cpu:LayerNormalizationGrad` node computes the three in one pass per row,
//! and the forward runs as `probe.cpu:LayerNormalization`; a residual stream's gradient Sum
//! that adds to its dX is taken into it ([`sum_into_layer_norm_grad`], at [`Stage::SumInto`]).
use super::attrs::Attrs;
use super::rule::{Ctx, Kernels, Kind, Rule, Shapes, Stage, PROBE_CPU_DOMAIN};
use super::torch::{axis, f32_as_written, input, opt_input, TorchCtx, Value};
use crate::model::graph::{attr_float, attr_int};
use crate::ops::rule::kernels::LAYER_NORMALIZATION_GRAD;
use crate::tensor::DType;
use anyhow::Result;
use onnx_protobuf::{GraphProto, NodeProto};

pub static RULE: Rule = Rule::new("LayerNormalization", Kind::Structured)
    .vjp(vjp)
    .torch(torch)
    .probe_cpu_forward(probe_cpu_forward)
    .rewrite(Stage::SumInto, |g, s, _| sum_into_layer_norm_grad(g, s));

/// libtorch's `native_layer_norm` when Scale and B have the normalized shape (what PyTorch's
/// LayerNorm runs), else normalization followed by broadcasting products. When the Mean or
/// InvStdDev output is asked for, everything is composed of differentiable ops instead, so that
/// a loss reading the statistics gets their gradient (native_layer_norm's backward ignores it).
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let (scale, bias) = (input(&v, 1)?, opt_input(&v, 2));
    let xs = x.size();
    let r = xs.len() as i64;
    let a = axis(c.attr_i("axis", -1), r)?;
    let eps = f32_as_written(c.attr_f("epsilon", 1e-5));
    let norm = xs[a as usize..].to_vec();
    let stats = c.wants(1) || c.wants(2);
    let finish = |y: tch::Tensor, scaled: bool, biased: bool| -> Result<tch::Tensor> {
        let y = if scaled { y } else { y.f_mul(scale)? };
        Ok(match bias {
            Some(b) if !biased => y.f_add(b)?,
            _ => y,
        })
    };
    if !stats {
        let exact = |t: &tch::Tensor| t.size() == norm;
        let w = exact(scale);
        let b = w && bias.is_some_and(exact);
        let (y, _, _) = x.f_native_layer_norm(
            norm.as_slice(),
            w.then_some(scale),
            if b { bias } else { None },
            eps,
        )?;
        return Ok(vec![Value::Tensor(finish(y, w, b)?)]);
    }
    let axes: Vec<i64> = (a..r).collect();
    let mean = x.f_mean_dim(axes.as_slice(), true, None::<tch::Kind>)?;
    let d = x.f_sub(&mean)?;
    let var = d
        .f_square()?
        .f_mean_dim(axes.as_slice(), true, None::<tch::Kind>)?;
    let inv = var.f_add_scalar(eps)?.f_rsqrt()?;
    let y = finish(d.f_mul(&inv)?, false, false)?;
    Ok(vec![
        Value::Tensor(y),
        Value::Tensor(mean),
        Value::Tensor(inv),
    ])
}

/// The forward node as `probe.cpu:LayerNormalization` (one pass per row; ONNX Runtime's took
/// 0.7 ms on a [250, 32, 64] GPT activation, ~3x the memory traffic's time): f32, Scale and B
/// of the normalized shape, no statistics outputs; `None` leaves it.
pub fn probe_cpu_forward(n: &NodeProto, shapes: &Shapes) -> Option<NodeProto> {
    let x = n.input.first()?;
    if n.op_type != "LayerNormalization" || !n.domain.is_empty() {
        return None;
    }
    if n.output.iter().skip(1).any(|o| !o.is_empty()) || shapes.dtype(x)? != DType::F32 {
        return None;
    }
    let rank = shapes.rank(x)? as i64;
    let axis = n.attr_i("axis", -1);
    let axis = if axis < 0 { axis + rank } else { axis };
    let norm = shapes.get(x)?.dims[axis as usize..].to_vec();
    let fits = norm.iter().all(|d| d.is_some())
        && (1..n.input.len().min(3))
            .filter(|&i| !n.input[i].is_empty())
            .all(|i| shapes.get(&n.input[i]).is_some_and(|s| s.dims == norm));
    if !fits || n.attr_i("stash_type", 1) != 1 {
        return None;
    }
    let mut m = crate::ops::rule::as_probe_cpu(
        n,
        vec![
            attr_int("axis", axis),
            attr_float("epsilon", n.attr_f("epsilon", 1e-5)),
        ],
    );
    m.output.truncate(1);
    Some(m)
}

/// Whether `probe.cpu:LayerNormalizationGrad` takes this node: f32, and Scale (and B) with
/// exactly the normalized shape, known statically (the kernel sums their gradients per
/// element of that shape).
fn probe_cpu_fits(c: &Ctx, x: &str, axis: i64) -> Result<bool> {
    if c.dtype(x)? != DType::F32 {
        return Ok(false);
    }
    let norm = c.dims(x)?[axis as usize..].to_vec();
    if norm.iter().any(|d| d.is_none()) {
        return Ok(false);
    }
    for i in 1..3 {
        if c.has_input(i) && c.dims(c.input(i))? != norm {
            return Ok(false);
        }
    }
    Ok(true)
}

fn mean(c: &mut Ctx, v: &str, axes: &[i64]) -> String {
    let ax = c.ints(axes);
    c.op("ReduceMean", &[v, &ax], vec![attr_int("keepdims", 1)])
}

/// 1/n for the n elements over `axes` of `x`: a constant when those dims are static.
fn inv_count(c: &mut Ctx, x: &str, axes: &[i64]) -> Result<String> {
    let dims = c.dims(x)?;
    let n: Option<usize> = axes.iter().map(|&a| dims[a as usize]).product();
    if let Some(n) = n {
        return c.scalar(1.0 / n as f64, x);
    }
    let z = c.zeros_like(x)?;
    let one = c.scalar(1.0, x)?;
    let ones = c.op("Add", &[&z, &one], vec![]);
    let s = c.reduce_sum(&ones, axes, true);
    Ok(c.op("Reciprocal", &[&s], vec![]))
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let (gy, gm, gs) = (c.go(0), c.go(1), c.go(2));
    if gy.is_none() && gm.is_none() && gs.is_none() {
        return Ok(());
    }
    let (x, scale, y) = (
        c.input(0).to_string(),
        c.input(1).to_string(),
        c.output(0).to_string(),
    );
    // The statistics are of type `stash_type` (float by default), not necessarily X's type.
    let gm = match gm {
        Some(g) if c.dtype(c.output(1))? != c.dtype(&x)? => Some(c.cast_like(&g, &x)),
        g => g,
    };
    let gs = match gs {
        Some(g) if c.dtype(c.output(2))? != c.dtype(&x)? => Some(c.cast_like(&g, &x)),
        g => g,
    };
    let rank = c.rank(&x)? as i64;
    let axis = c.attr_i("axis", -1);
    let axis = if axis < 0 { axis + rank } else { axis };
    let axes: Vec<i64> = (axis..rank).collect();
    let eps = c.attr_f("epsilon", 1e-5) as f64;
    if let (Some(gy), None, None) = (&gy, &gm, &gs) {
        if c.kernels == Kernels::ProbeCpu && probe_cpu_fits(c, &x, axis)? {
            // One pass per row for dX, dScale and dB (runtime/cpu_ops), instead of ~20
            // standard ops over the whole tensor.
            let needs = [c.needs(0), c.needs(1), c.has_input(2) && c.needs(2)];
            let attrs = vec![attr_int("axis", axis), attr_float("epsilon", eps as f32)];
            let outs =
                c.probe_cpu_outputs(LAYER_NORMALIZATION_GRAD, &[gy, &x, &scale], attrs, &needs);
            for (i, o) in outs.into_iter().enumerate() {
                if let Some(o) = o {
                    c.set(i, o);
                }
            }
            return Ok(());
        }
    }

    let mu = mean(c, &x, &axes);
    let d = c.op("Sub", &[&x, &mu], vec![]);
    let d2 = c.op("Mul", &[&d, &d], vec![]);
    let var = mean(c, &d2, &axes);
    let e = c.scalar(eps, &x)?;
    let ve = c.op("Add", &[&var, &e], vec![]);
    let sd = c.op("Sqrt", &[&ve], vec![]);
    let invstd = c.op("Reciprocal", &[&sd], vec![]);
    let xhat = c.op("Mul", &[&d, &invstd], vec![]);

    let mut parts = Vec::new();
    if let Some(gy) = &gy {
        if c.needs(0) {
            let g = c.op("Mul", &[gy, &scale], vec![]);
            let mg = mean(c, &g, &axes);
            let gx = c.op("Mul", &[&g, &xhat], vec![]);
            let mgx = mean(c, &gx, &axes);
            let t = c.op("Mul", &[&xhat, &mgx], vec![]);
            let u = c.op("Sub", &[&g, &mg], vec![]);
            let u = c.op("Sub", &[&u, &t], vec![]);
            parts.push(c.op("Mul", &[&invstd, &u], vec![]));
        }
        if c.needs(1) {
            let t = c.op("Mul", &[gy, &xhat], vec![]);
            c.set_unbroadcast(1, &t, &y)?;
        }
        if c.has_input(2) && c.needs(2) {
            c.set_unbroadcast(2, gy, &y)?;
        }
    }
    if c.needs(0) && (gm.is_some() || gs.is_some()) {
        // d mean/dx_i = 1/n; d invstd/dx_i = -invstd^3 (x_i - mean) / n = -invstd^2 xhat_i / n.
        let inv_n = inv_count(c, &x, &axes)?;
        let mut acc = Vec::new();
        if let Some(gm) = &gm {
            acc.push(gm.clone());
        }
        if let Some(gs) = &gs {
            let i2 = c.op("Mul", &[&invstd, &invstd], vec![]);
            let t = c.op("Mul", &[gs, &i2], vec![]);
            let t = c.op("Mul", &[&t, &xhat], vec![]);
            acc.push(c.op("Neg", &[&t], vec![]));
        }
        let s = if acc.len() == 1 {
            acc.pop().unwrap()
        } else {
            c.op("Add", &[&acc[0], &acc[1]], vec![])
        };
        let shape = c.shape_of(&x);
        let s = c.op("Mul", &[&s, &inv_n], vec![]);
        parts.push(c.op("Expand", &[&s, &shape], vec![]));
    }
    if c.needs(0) && !parts.is_empty() {
        let gx = if parts.len() == 1 {
            parts.pop().unwrap()
        } else {
            c.op("Add", &[&parts[0], &parts[1]], vec![])
        };
        c.set(0, gx);
    }
    Ok(())
}

/// `Sum(dA, LayerNormalizationGrad(...)[0])`, the two gradients of a residual stream at a
/// pre-norm block's input, as the LayerNormalizationGrad with dA as its fourth input (added
/// as each row of dX is written: one pass over dX where the Sum took another). The node stays
/// in its place when dA is computed before it, else takes the Sum's place if nothing reads
/// its other outputs in between.
fn sum_into_layer_norm_grad(graph: &mut GraphProto, shapes: &Shapes) {
    let uses = crate::model::graph::Uses::of(graph);
    let mut removed = vec![false; graph.node.len()];
    for j in 0..graph.node.len() {
        let n = &graph.node[j];
        if n.op_type != "Sum" || !n.domain.is_empty() || n.input.len() != 2 {
            continue;
        }
        for k in 0..2 {
            let (g, other) = (&graph.node[j].input[k], &graph.node[j].input[1 - k]);
            let Some(&i) = uses.producer.get(g) else {
                continue;
            };
            let p = &graph.node[i];
            if p.op_type != LAYER_NORMALIZATION_GRAD
                || p.domain != PROBE_CPU_DOMAIN
                || p.input.len() != 3
            {
                continue;
            }
            // dX has X's shape; so has dA where it is known (a forward value's). A gradient
            // value's is not recorded, but the sweep sums only contributions to one value's
            // gradient, each of that value's shape (and the kernel checks).
            let x_dims = shapes.get(&p.input[1]).map(|i| (i.dtype, i.dims.clone()));
            let other_fits = shapes
                .get(other)
                .is_none_or(|o| Some((o.dtype, o.dims.clone())) == x_dims);
            let fits =
                p.output.first() == Some(g) && uses.sole_reader(g, j) && other_fits && !removed[i];
            if !fits {
                continue;
            }
            let in_place = uses.producer.get(other).is_none_or(|&q| q < i);
            let later = |o: &String| uses.readers(o).iter().all(|&r| r > j);
            let movable = p.output[1..].iter().all(|o| o.is_empty() || later(o));
            if !in_place && !movable {
                continue;
            }
            let mut f = p.clone();
            f.input.push(other.clone());
            f.output[0] = graph.node[j].output[0].clone();
            if in_place {
                graph.node[i] = f;
                removed[j] = true;
            } else {
                graph.node[j] = f;
                removed[i] = true;
            }
            break;
        }
    }
    crate::model::graph::remove_nodes(&mut graph.node, |k| removed[k]);
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_float, attr_int};
    use crate::ops::testing::{check, Case};
    crate::ops::testing::gradient_and_torch_tests!(
        layer_norm_last_axis = [
            Case::new("LayerNormalization")
                .input(&[2, 3, 5])
                .input(&[5])
                .input(&[5]),
            Case::new("LayerNormalization").input(&[4, 6]).input(&[6]),
        ],
        layer_norm_axis_eps_broadcast_scale = [
            Case::new("LayerNormalization")
                .input(&[2, 3, 4])
                .input(&[3, 4])
                .input(&[1, 4])
                .attr(attr_int("axis", 1))
                .attr(attr_float("epsilon", 0.1)),
            Case::new("LayerNormalization")
                .input(&[2, 3, 4])
                .input(&[3, 1])
                .input(&[4])
                .attr(attr_int("axis", -2)),
        ],
        layer_norm_statistics_outputs = [
            // Mean and InvStdDev are float (stash_type 1) whatever X's type.
            Case::new("LayerNormalization")
                .input(&[2, 3, 4])
                .input(&[4])
                .input(&[4])
                .outputs(3)
                .f32(),
            // Only the statistics, normalized over two axes (ONNX Runtime has no double statistics,
            // and a loss mixing f64 Y with float statistics does not type-check: f32 again).
            Case::new("LayerNormalization")
                .input(&[2, 3, 4])
                .input(&[3, 4])
                .attr(attr_int("axis", 1))
                .outputs(3)
                .f32()
                .skip_output(0),
        ],
    );
    #[test]
    fn probe_cpu_kernel() {
        // Scale and B of the normalized shape, normalized over one axis and over two.
        check(
            Case::new("LayerNormalization")
                .input(&[2, 3, 5])
                .input(&[5])
                .input(&[5])
                .f32()
                .probe_cpu(),
        );
        check(
            Case::new("LayerNormalization")
                .input(&[2, 3, 4])
                .input(&[3, 4])
                .attr(attr_int("axis", 1))
                .attr(attr_float("epsilon", 0.1))
                .f32()
                .probe_cpu(),
        );
    }
}
