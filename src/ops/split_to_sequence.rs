//! SplitToSequence (opset 11+): X split along `axis` into a sequence of tensors.
//! https://onnx.ai/onnx/operators/onnx__SplitToSequence.html
//!
//! The parts, per the spec:
//! - no `split` input: parts of size 1, squeezed along `axis` when `keepdims` = 0;
//! - a scalar `split` s: parts of size s, the last one smaller when s does not divide dim(axis);
//! - a 1-D `split`: parts of the listed sizes (`keepdims` is ignored whenever `split` is given).
//!
//! The parts tile X, so dX = Concat(dS[0], ..., dS[n-1], axis), where dS[k] is the gradient the
//! SequenceAt readers sent to position k (unsqueezed along `axis` if the parts were squeezed) and
//! zeros shaped like part k for a position nobody read. Parts have no observed shape, so those
//! zeros take theirs from the parts recomputed by Split(X, sizes, axis).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule, Shapes, Stage};
use super::torch::{axis, input, ints, opt_input, TorchCtx, Value};
use crate::model::graph::{attr_int, tensor_i64};
use crate::ops::slice::zeros_shaped;
use anyhow::{anyhow, bail, Result};
use onnx_protobuf::{GraphProto, NodeProto};
use std::collections::HashSet;

pub static RULE: Rule = Rule::new("SplitToSequence", Kind::Linear)
    .vjp(vjp)
    .torch(torch)
    .rewrite(Stage::Graph, |g, s, _| as_split(g, s));

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let xs = x.size();
    let a = axis(c.attr_i("axis", 0), xs.len() as i64)?;
    let d = xs[a as usize];
    let parts = match opt_input(&v, 1) {
        None => {
            let p = x.f_split_with_sizes(vec![1; d as usize].as_slice(), a)?;
            if c.attr_i("keepdims", 1) == 0 {
                p.iter()
                    .map(|t| t.f_squeeze_dim(a))
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                p
            }
        }
        Some(t) if t.dim() == 0 => {
            let s = ints(t)?[0];
            if s <= 0 {
                bail!("split size {s} must be positive");
            }
            let n = (d + s - 1) / s;
            let sizes: Vec<i64> = (0..n).map(|k| s.min(d - k * s)).collect();
            x.f_split_with_sizes(sizes.as_slice(), a)?
        }
        Some(t) => x.f_split_with_sizes(ints(t)?.as_slice(), a)?,
    };
    Ok(vec![Value::Seq(parts)])
}

fn vjp(c: &mut Ctx) -> Result<()> {
    if !c.needs(0) || c.go_seq().is_empty() {
        return Ok(());
    }
    let x = c.input(0).to_string();
    let rank = c.rank(&x)? as i64;
    let axis = c.attr_i("axis", 0);
    let axis = if axis < 0 { axis + rank } else { axis };
    let dim = c.dims(&x)?[axis as usize];
    let need_dim = |why: &str| {
        dim.ok_or_else(|| {
            anyhow!("{why}: the number of parts needs a static dimension {axis} of '{x}'")
        })
    };

    // (number of parts, their sizes as a 1-D int64 tensor, whether the parts were squeezed)
    let (n, sizes, squeezed) = if !c.has_input(1) {
        let d = need_dim("no split sizes")?;
        (d, c.ints(&vec![1; d]), c.attr_i("keepdims", 1) == 0)
    } else if let Some(v) = c.const_ints(1) {
        let split = c.consts.get(c.input(1)).unwrap();
        if split.dims.is_empty() {
            let s = v[0];
            if s <= 0 {
                bail!("split size {s} must be positive");
            }
            let d = need_dim("a scalar split size")? as i64;
            let n = (d + s - 1) / s;
            let sizes: Vec<i64> = (0..n).map(|k| s.min(d - k * s)).collect();
            (n as usize, c.ints(&sizes), false)
        } else {
            (v.len(), c.ints(&v), false)
        }
    } else {
        let split = c.input(1).to_string();
        match c.dims(&split)?.as_slice() {
            [Some(n)] => {
                let s = c.op("Cast", &[&split], vec![attr_int("to", 7)]);
                (*n, s, false)
            }
            _ => bail!(
                "split sizes '{split}' are neither a constant nor a 1-D tensor of static length"
            ),
        }
    };

    let go = c.go_seq().clone();
    if let Some((&p, _)) = go.range(n..).next() {
        bail!("a gradient for position {p} of a sequence of {n} parts");
    }
    let parts = if go.len() < n {
        c.op_n("Split", &[&x, &sizes], vec![attr_int("axis", axis)], n)
    } else {
        vec![]
    };
    let ax = c.ints(&[axis]);
    let mut grads = Vec::new();
    for k in 0..n {
        grads.push(match go.get(&k) {
            Some(g) if squeezed => c.op("Unsqueeze", &[g, &ax], vec![]),
            Some(g) => g.clone(),
            None => {
                let shape = c.op("Shape", &[&parts[k]], vec![]);
                zeros_shaped(c, &shape, &x)?
            }
        });
    }
    let refs: Vec<&str> = grads.iter().map(|s| s.as_str()).collect();
    let gx = c.op("Concat", &refs, vec![attr_int("axis", axis)]);
    c.set(0, gx);
    Ok(())
}

/// Each SplitToSequence with constant split sizes whose every reader is a SequenceAt at a
/// constant position, rewritten as one standard Split whose outputs are the SequenceAt outputs
/// (a repeated position becomes an Identity). Why: ONNX Runtime copies every part into the
/// sequence and out again (4.1 ms of a GPT batch of 250 for the qkv splits), Split copies once.
/// For the forward graph of `probe grad`'s fast path; no gradient node reads a sequence.
pub fn as_split(graph: &mut GraphProto, shapes: &Shapes) {
    let consts = crate::ops::rule::constants(graph, &HashSet::new(), shapes);
    // (whether a scalar, the values)
    let const_ints = |name: &str| -> Option<(bool, Vec<i64>)> {
        let v = crate::ops::rule::const_ints(&consts, name)?;
        Some((consts.get(name)?.dims.is_empty(), v))
    };
    let uses = crate::model::graph::Uses::of(graph);
    // (node index, the Split, the SequenceAt nodes it replaces and their part)
    let mut plans: Vec<(usize, NodeProto, Vec<(usize, usize)>, Vec<i64>)> = Vec::new();
    for (k, n) in graph.node.iter().enumerate() {
        if n.op_type != "SplitToSequence" || !n.domain.is_empty() || n.input.len() < 2 {
            continue;
        }
        let (x, seq) = (&n.input[0], &n.output[0]);
        let (Some(rank), Some((scalar, split))) = (shapes.rank(x), const_ints(&n.input[1])) else {
            continue;
        };
        let a = n.attr_i("axis", 0);
        let a = if a < 0 { a + rank as i64 } else { a };
        let sizes = if scalar {
            let Some(Some(d)) = shapes.get(x).map(|i| i.dims[a as usize]) else {
                continue;
            };
            let (d, s) = (d as i64, split[0]);
            if s <= 0 {
                continue;
            }
            (0..(d + s - 1) / s).map(|p| s.min(d - p * s)).collect()
        } else {
            split
        };
        let parts = sizes.len() as i64;
        let mut reads = Vec::new();
        let users = uses.readers(seq);
        let all_at = users.iter().all(|&u| {
            let r = &graph.node[u];
            let pos = (r.op_type == "SequenceAt" && r.input[0] == *seq)
                .then(|| const_ints(&r.input[1]))
                .flatten()
                .map(|(_, v)| v[0]);
            match pos {
                Some(p) if (-parts..parts).contains(&p) => {
                    reads.push((u, p.rem_euclid(parts) as usize));
                    true
                }
                _ => false,
            }
        });
        if !all_at || users.is_empty() || uses.outputs.contains(seq.as_str()) {
            continue;
        }
        let mut split = NodeProto::new();
        split.op_type = "Split".into();
        split.name = n.name.clone();
        split.input = vec![x.clone(), format!("{seq}/sizes")];
        split.attribute = vec![attr_int("axis", a)];
        split.output = (0..parts).map(|p| format!("{seq}/part{p}")).collect();
        for &(u, p) in &reads {
            if split.output[p].starts_with(&format!("{seq}/part")) {
                split.output[p] = graph.node[u].output[0].clone();
            }
        }
        plans.push((k, split, reads, sizes));
    }
    let mut drop = HashSet::new();
    for (k, split, reads, sizes) in plans {
        graph
            .initializer
            .push(tensor_i64(&split.input[1], &[sizes.len() as i64], &sizes));
        for (u, p) in reads {
            let out = graph.node[u].output[0].clone();
            if split.output[p] == out {
                drop.insert(u);
            } else {
                // A second reader of part p: an Identity of it, in the SequenceAt's place.
                let mut id = NodeProto::new();
                id.op_type = "Identity".into();
                id.name = graph.node[u].name.clone();
                id.input = vec![split.output[p].clone()];
                id.output = vec![out];
                graph.node[u] = id;
            }
        }
        graph.node[k] = split;
    }
    crate::model::graph::remove_nodes(&mut graph.node, |k| drop.contains(&k));
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_int, tensor_i64};
    use crate::ops::rule::Kernels;
    use crate::ops::testing::check_graph_with;
    use crate::ops::torch_testing::check_torch_graph;
    use onnx_protobuf::{AttributeProto, GraphProto, NodeProto};

    /// x -> SplitToSequence(x, split?) -> seq; seq -> SequenceAt(seq, p) -> y{i} for each p.
    fn graph(
        split: Option<(&[i64], &[i64])>,
        attrs: Vec<AttributeProto>,
        reads: &[i64],
    ) -> GraphProto {
        let mut g = GraphProto::new();
        let mut n = NodeProto::new();
        n.op_type = "SplitToSequence".into();
        n.name = "split".into();
        n.input = vec!["x".into()];
        if let Some((dims, v)) = split {
            g.initializer.push(tensor_i64("sizes", dims, v));
            n.input.push("sizes".into());
        }
        n.output = vec!["seq".into()];
        n.attribute = attrs;
        g.node.push(n);
        for (i, &p) in reads.iter().enumerate() {
            g.initializer.push(tensor_i64(&format!("p{i}"), &[], &[p]));
            let mut a = NodeProto::new();
            a.op_type = "SequenceAt".into();
            a.name = format!("at{i}");
            a.input = vec!["seq".into(), format!("p{i}")];
            a.output = vec![format!("y{i}")];
            g.node.push(a);
        }
        g
    }

    /// The gradient check of `g` read at `reads` positions (outputs y0, y1, ...), with
    /// `kernels`' ops.
    fn check_reads(x: &[usize], g: GraphProto, reads: usize, kernels: Kernels) {
        let outs: Vec<String> = (0..reads).map(|i| format!("y{i}")).collect();
        let outs: Vec<&str> = outs.iter().map(|s| s.as_str()).collect();
        check_graph_with("SplitToSequence", g, &[("x", x)], &outs, 3, kernels);
    }

    fn run(x: &[usize], g: GraphProto, reads: usize) {
        check_reads(x, g, reads, Kernels::Standard);
    }

    /// The fast path's rewrite as one Split (f32), against the standard form and finite
    /// differences.
    fn run_as_split(x: &[usize], g: GraphProto, reads: usize) {
        check_reads(x, g, reads, Kernels::ProbeCpu);
    }

    #[test]
    fn probe_cpu_as_split() {
        split_sizes_all_read_cases(run_as_split);
        // A scalar size with a smaller last part, a part read twice.
        run_as_split(
            &[2, 7],
            graph(Some((&[], &[3])), vec![attr_int("axis", 1)], &[0, 2, 2, 1]),
            4,
        );
    }

    fn run_torch(x: &[usize], g: GraphProto, reads: usize) {
        let outs: Vec<String> = (0..reads).map(|i| format!("y{i}")).collect();
        let outs: Vec<&str> = outs.iter().map(|s| s.as_str()).collect();
        check_torch_graph("SplitToSequence", g, &[("x", x)], &outs, 3);
    }

    type Run = fn(&[usize], GraphProto, usize);

    #[test]
    fn split_sizes_all_read() {
        split_sizes_all_read_cases(run);
    }
    fn split_sizes_all_read_cases(run: Run) {
        run(
            &[2, 5],
            graph(Some((&[2], &[2, 3])), vec![attr_int("axis", 1)], &[0, 1]),
            2,
        );
    }
    #[test]
    fn split_sizes_one_part_unread() {
        split_sizes_one_part_unread_cases(run);
    }
    fn split_sizes_one_part_unread_cases(run: Run) {
        run(
            &[2, 5],
            graph(Some((&[2], &[2, 3])), vec![attr_int("axis", 1)], &[1]),
            1,
        );
        run(&[6, 2], graph(Some((&[3], &[2, 3, 1])), vec![], &[2, 0]), 2);
    }
    #[test]
    fn scalar_split_uneven() {
        scalar_split_uneven_cases(run);
    }
    fn scalar_split_uneven_cases(run: Run) {
        // 5 = 2 + 2 + 1 along axis -1; part 1 unread, part 2 read twice.
        run(
            &[3, 5],
            graph(Some((&[], &[2])), vec![attr_int("axis", -1)], &[2, 0, 2]),
            3,
        );
        // the short last part unread: its zeros must take its size
        run(&[5, 2], graph(Some((&[], &[2])), vec![], &[1, 0]), 2);
    }
    #[test]
    fn no_split_unit_parts() {
        no_split_unit_parts_cases(run);
    }
    fn no_split_unit_parts_cases(run: Run) {
        // keepdims = 0: parts [4] squeezed out of [3, 4]; part 1 unread.
        run(
            &[3, 4],
            graph(None, vec![attr_int("keepdims", 0)], &[2, 0]),
            2,
        );
        run(
            &[2, 3],
            graph(None, vec![attr_int("axis", 1)], &[1, 2, 0]),
            3,
        );
    }
    #[test]
    #[should_panic(expected = "negative position")]
    fn negative_position_refused() {
        run(
            &[2, 5],
            graph(Some((&[2], &[2, 3])), vec![attr_int("axis", 1)], &[-1]),
            1,
        );
    }
    #[test]
    fn torch_forward() {
        split_sizes_all_read_cases(run_torch);
        split_sizes_one_part_unread_cases(run_torch);
        scalar_split_uneven_cases(run_torch);
        no_split_unit_parts_cases(run_torch);
        // A negative position counts from the back (refused by the gradient rule only).
        run_torch(
            &[2, 5],
            graph(Some((&[2], &[2, 3])), vec![attr_int("axis", 1)], &[-1, -2]),
            2,
        );
    }
}
