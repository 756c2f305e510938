//! Hessian-vector products by differentiating the gradient graph a second time
//! (reverse-over-reverse).
//!
//! The gradient graph ([`grad_graph`]) outputs G_p = d l / d w_p for the batch's summed loss l.
//! For a direction v (one tensor `v/<p>` per parameter, fed like the state) we append the scalar
//!
//! ```text
//! s(w) = sum_p <G_p(w), v_p>
//! ```
//!
//! and differentiate *that* with [`differentiate_as`]: d s / d w_q = sum_p (d^2 l / dw_q dw_p) v_p
//! = (H v)_q, exactly, because H is symmetric. The gradient graph holds only standard ONNX ops,
//! each with its own rule, so no op is special here; the second sweep's names carry the prefix
//! `hvp/` so they cannot collide with the first sweep's `grad/`.
//!
//! Outputs: the gradient graph's (`probe/loss_sum`, `probe/correct_sum`, `grad/<p>`) plus
//! `hvp/<p>` = (H v)_p for the summed loss of the batch. With `wrt` a subset of the parameters
//! (a block B), v lives on B and the products are H_BB v: the Hessian of that block alone.
use super::grad::{differentiate_as, Kernels};
use super::model_grad::{attach, grad_graph_at, identity, param_dims, GradGraph, GradOptions};
use super::shapes::{Feed, Shapes};
use crate::model::graph::{attr_int, value_info, Builder};
use crate::model::Model;
use crate::tensor::{DType, HostTensor};
use anyhow::{Context, Result};

pub struct HvpGraph {
    /// The gradient graph, with the direction inputs and the products added.
    pub grad: GradGraph,
    /// (parameter, direction input `v/<p>`), in `grad.grads` order.
    pub dirs: Vec<(String, String)>,
    /// (parameter, product output `hvp/<p>`), in the same order.
    pub products: Vec<(String, String)>,
}

pub const DOT: &str = "probe/grad_dot_v";

/// Builds the Hessian-vector-product graph; `samples` as for [`super::model_grad::grad_graph`].
pub fn hvp_graph(
    model: &Model,
    opts: &GradOptions,
    samples: &[(HostTensor, HostTensor)],
) -> Result<HvpGraph> {
    hvp_graph_at(model, opts, samples, &model.own_state()?)
}

/// [`hvp_graph`] with the shapes observed at `state` (as [`grad_graph_at`]).
pub fn hvp_graph_at(
    model: &Model,
    opts: &GradOptions,
    samples: &[(HostTensor, HostTensor)],
    state: &std::collections::BTreeMap<String, HostTensor>,
) -> Result<HvpGraph> {
    // Both sweeps in standard ops: the second needs a rule for every op of the first, and
    // probe's CPU kernels (probe.cpu) have none.
    let opts = GradOptions {
        kernels: Kernels::Standard,
        ..opts.clone()
    };
    let mut gg = grad_graph_at(model, &opts, samples, state)?;
    let g = gg.proto.graph.as_mut().unwrap();
    let mut b = Builder::new("probe/hvp_dot");
    let mut dirs = Vec::new();
    let mut parts = Vec::new();
    for (p, gout) in &gg.grads {
        let v = format!("v/{p}");
        g.input
            .push(value_info(&v, DType::F32, &param_dims(model, p), "N"));
        let m = b.op("Mul", &[gout, &v], vec![]);
        parts.push(b.op("ReduceSum", &[&m], vec![attr_int("keepdims", 0)]));
        dirs.push((p.clone(), v));
    }
    let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    let s = b.op("Sum", &refs, vec![]);
    b.nodes.push(identity(&s, DOT));
    g.node.extend(b.nodes);

    // Shapes of the gradient graph's values, observed as for the forward graph; the directions
    // get small deterministic values (their values do not matter, only that they are fed).
    let feeds: Vec<Feed> = samples
        .iter()
        .map(|(x, t)| {
            let mut f = gg.inputs.feed(x, t, state);
            for (p, v) in &dirs {
                let w = &state[p];
                let n = w.numel();
                f.push((
                    v.clone(),
                    std::borrow::Cow::Owned(HostTensor::f32(
                        w.shape.clone(),
                        (0..n).map(|i| ((i % 7) as f32 - 3.0) / 7.0).collect(),
                    )),
                ));
            }
            f
        })
        .collect();
    let shapes = match &opts.shape_cache {
        Some(c) => c.observe(&gg.proto, &feeds, &|n| state.contains_key(n), opts.threads)?,
        None => Shapes::observe_with(&gg.proto, &feeds, opts.threads)?,
    };
    let wrt: Vec<String> = gg.grads.iter().map(|(p, _)| p.clone()).collect();
    let g = gg.proto.graph.as_mut().unwrap();
    let diff = differentiate_as(g, &shapes, DOT, &wrt, Kernels::Standard, "hvp")
        .with_context(|| format!("{}: Hessian-vector products", model.path.display()))?;
    let products = attach(g, diff, model, "hvp");
    Ok(HvpGraph {
        grad: gg,
        dirs,
        products,
    })
}
