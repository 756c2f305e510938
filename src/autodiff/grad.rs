//! Reverse-mode differentiation of an ONNX graph into standard ONNX ops.
//!
//! Given a graph, the name of a scalar `loss` in it, and the values to differentiate with respect
//! to (`wrt`), [`differentiate`] appends nodes computing d loss / d w for each w:
//! 1. *requires-grad*: the float values reachable from `wrt` (integer and boolean values, shape
//!    arithmetic, never need gradients);
//! 2. *relevant*: of those, the ones the loss depends on; only these nodes get gradient nodes
//!    ("only the gradients something needs are built");
//! 3. every relevant node must have a rule (see [`crate::ops`]); all that lack one are listed in
//!    one error before anything is built;
//! 4. the nodes are visited in reverse topological order; each rule turns the gradients of its
//!    outputs into contributions to its inputs' gradients; a value used several times sums its
//!    contributions (`Sum`).
//! Sequence values (SplitToSequence -> SequenceAt) carry gradients by position.
use crate::model::graph::{attr_tensor, describe, Builder, Lacking};
pub use crate::ops::rule::{const_ints, constants, Kernels};
use crate::ops::rule::{Ctx, Shapes, SEQUENCE_OPS};
use anyhow::{anyhow, Result};
use onnx_protobuf::{GraphProto, NodeProto, TensorProto};
use std::collections::{BTreeMap, HashMap, HashSet};

pub struct Diff {
    /// Gradient nodes, to append after the forward nodes.
    pub nodes: Vec<NodeProto>,
    /// For each `wrt` value, the name of its gradient.
    pub grads: Vec<(String, String)>,
    /// Optional outputs some rules need the forward nodes to produce: (node index, output slot,
    /// name).
    pub forward_outputs: Vec<(usize, usize, String)>,
}

/// The reverse sweep in standard ONNX ops ([`differentiate_with`] [`Kernels::Standard`]).
pub fn differentiate(
    graph: &GraphProto,
    shapes: &Shapes,
    loss: &str,
    wrt: &[String],
) -> Result<Diff> {
    differentiate_with(graph, shapes, loss, wrt, Kernels::Standard)
}

/// The gradient nodes of `loss` with respect to `wrt`, the rules emitting `kernels`' ops.
pub fn differentiate_with(
    graph: &GraphProto,
    shapes: &Shapes,
    loss: &str,
    wrt: &[String],
    kernels: Kernels,
) -> Result<Diff> {
    differentiate_as(graph, shapes, loss, wrt, kernels, "grad")
}

/// [`differentiate_with`] with the new values named `{prefix}/...`: differentiating a graph that
/// already holds a gradient sweep (Hessian-vector products, [`super::hvp`]) needs a second
/// prefix so the two sweeps' names cannot collide.
pub fn differentiate_as(
    graph: &GraphProto,
    shapes: &Shapes,
    loss: &str,
    wrt: &[String],
    kernels: Kernels,
    prefix: &str,
) -> Result<Diff> {
    let wrt_set: HashSet<&str> = wrt.iter().map(|s| s.as_str()).collect();
    let consts = constants(graph, &wrt_set, shapes);
    let is_seq = |n: &NodeProto| SEQUENCE_OPS.contains(&n.op_type.as_str());
    let floaty = |v: &str| shapes.dtype(v).is_some_and(|d| d.is_float());

    // 1. requires-grad, forward. CastLike's second input lends only its type: a constant
    // cast like an activation (the attention scale of PyTorch's SDPA export) stays constant,
    // instead of getting a gradient summed over a whole activation tensor (4 x 0.8 ms of a GPT
    // batch) that nothing uses.
    let carries = |n: &NodeProto, i: usize| !(n.op_type == "CastLike" && i == 1);
    let mut requires: HashSet<String> = wrt.iter().cloned().collect();
    for n in &graph.node {
        let reads = n.input.iter().enumerate();
        if reads
            .filter(|&(i, _)| carries(n, i))
            .any(|(_, v)| requires.contains(v))
        {
            for o in &n.output {
                if !o.is_empty() && (floaty(o) || is_seq(n)) {
                    requires.insert(o.clone());
                }
            }
        }
    }
    if !requires.contains(loss) {
        return Err(crate::error::input(format!(
            "the loss does not depend on any of the {} parameters: nothing to differentiate",
            wrt.len()
        )));
    }
    // 2. relevant, backward.
    let mut relevant: HashSet<String> = HashSet::from([loss.to_string()]);
    let mut on_path = vec![false; graph.node.len()];
    for (k, n) in graph.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| relevant.contains(o)) {
            let ins: Vec<&String> = (n.input.iter().enumerate())
                .filter(|&(i, v)| carries(n, i) && requires.contains(v))
                .map(|(_, v)| v)
                .collect();
            if !ins.is_empty() {
                on_path[k] = true;
                for i in ins {
                    relevant.insert(i.clone());
                }
            }
        }
    }
    // 3. every node on the path has a rule.
    let mut missing = Lacking::default();
    for (k, n) in graph.node.iter().enumerate() {
        if !on_path[k] {
            continue;
        }
        let why = match crate::ops::rule(&n.op_type) {
            None => "no gradient rule".to_string(),
            Some(r) => match r.kind {
                crate::ops::Kind::NotImplemented(why) => format!("not implemented: {why}"),
                _ => continue,
            },
        };
        missing.add(format!("{} ({why})", n.op_type), n);
    }
    if let Some(list) = missing.list() {
        return Err(crate::error::input(format!(
            "cannot differentiate the graph: {list}"
        )));
    }

    // 4. reverse sweep.
    let mut b = Builder::new(prefix);
    let mut contrib: HashMap<String, Vec<String>> = HashMap::new();
    let mut seq_contrib: HashMap<String, BTreeMap<usize, Vec<String>>> = HashMap::new();
    let one = {
        let dt = shapes
            .dtype(loss)
            .ok_or_else(|| anyhow!("no type for the loss '{loss}'"))?;
        let mut t = TensorProto::new();
        t.data_type = dt.onnx();
        t.raw_data = if dt == crate::tensor::DType::F64 {
            1f64.to_le_bytes().to_vec()
        } else {
            1f32.to_le_bytes().to_vec()
        };
        let out = b.fresh("seed");
        let mut n = NodeProto::new();
        n.op_type = "Constant".into();
        n.name = out.clone();
        n.output = vec![out.clone()];
        n.attribute = vec![attr_tensor("value", t)];
        b.nodes.push(n);
        out
    };
    contrib.insert(loss.to_string(), vec![one]);
    let mut forward_outputs = Vec::new();
    let total = |b: &mut Builder, parts: Vec<String>| -> String {
        if parts.len() == 1 {
            parts.into_iter().next().unwrap()
        } else {
            let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
            b.op("Sum", &refs, vec![])
        }
    };
    for (k, n) in graph.node.iter().enumerate().rev() {
        if !on_path[k] {
            continue;
        }
        let rule = crate::ops::rule(&n.op_type).unwrap();
        let Some(vjp) = rule.vjp else { continue };
        let mut gout = Vec::new();
        for o in &n.output {
            let g = contrib.remove(o).map(|parts| total(&mut b, parts));
            gout.push(g);
        }
        let mut gout_seq = BTreeMap::new();
        if is_seq(n) {
            if let Some(m) = seq_contrib.remove(&n.output[0]) {
                for (pos, parts) in m {
                    gout_seq.insert(pos, total(&mut b, parts));
                }
            }
        }
        if gout.iter().all(|g| g.is_none()) && gout_seq.is_empty() {
            continue;
        }
        let need: Vec<bool> = (n.input.iter().enumerate())
            .map(|(k, i)| carries(n, k) && requires.contains(i) && relevant.contains(i))
            .collect();
        let mut ctx = Ctx {
            node: n,
            b: &mut b,
            shapes,
            consts: &consts,
            kernels,
            gout,
            gout_seq,
            need: need.clone(),
            gin: vec![None; n.input.len()],
            gin_seq: Vec::new(),
            extra_outputs: Vec::new(),
        };
        vjp(&mut ctx)
            .map_err(|e| anyhow!("gradient of {} node {}: {e:#}", n.op_type, describe(n)))?;
        let (gin, gin_seq, extra) = (ctx.gin, ctx.gin_seq, ctx.extra_outputs);
        for (i, g) in gin.into_iter().enumerate() {
            if let Some(g) = g {
                contrib.entry(n.input[i].clone()).or_default().push(g);
            }
        }
        for (pos, g) in gin_seq {
            seq_contrib
                .entry(n.input[0].clone())
                .or_default()
                .entry(pos)
                .or_default()
                .push(g);
        }
        for (slot, name) in extra {
            forward_outputs.push((k, slot, name));
        }
    }
    let mut grads = Vec::new();
    for w in wrt {
        let g = match contrib.remove(w) {
            Some(parts) => total(&mut b, parts),
            None => {
                // No path from w to the loss: its gradient is exactly zero.
                let dims = shapes
                    .static_dims(w)
                    .ok_or_else(|| anyhow!("no static shape for '{w}'"))?;
                let shape = b.ints(&dims.iter().map(|&d| d as i64).collect::<Vec<_>>());
                let mut t = TensorProto::new();
                t.data_type = shapes.dtype(w).unwrap().onnx();
                t.dims = vec![1];
                t.raw_data = vec![0; shapes.dtype(w).unwrap().size()];
                b.op("ConstantOfShape", &[&shape], vec![attr_tensor("value", t)])
            }
        };
        grads.push((w.clone(), g));
    }
    Ok(Diff {
        nodes: b.nodes,
        grads,
        forward_outputs,
    })
}

/// Adds the optional forward outputs rules asked for to the graph's nodes.
pub fn apply_forward_outputs(graph: &mut GraphProto, extra: &[(usize, usize, String)]) {
    for (k, slot, name) in extra {
        let n = &mut graph.node[*k];
        while n.output.len() <= *slot {
            n.output.push(String::new());
        }
        n.output[*slot] = name.clone();
    }
}
