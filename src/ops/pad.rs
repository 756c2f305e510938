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
use super::rule::{const_ints, constants, Ctx, Kind, Rule, Shapes, Stage};
use super::torch::{axis, floats, input, ints, one, opt_input, TorchCtx, Value};
use crate::model::graph::attr_string;
use crate::model::graph::{attr_int, remove_nodes, Uses};
use crate::ops::reshape::reshape_like;
use crate::ops::slice::{flat_positions, scatter_back};
use anyhow::{bail, Result};
use onnx_protobuf::{GraphProto, NodeProto};
use std::collections::HashSet;

pub static RULE: Rule = Rule::new("Pad", Kind::Linear)
    .vjp(vjp)
    .torch(torch)
    .rewrite(Stage::Graph, |g, s, _| {
        sums_of_pads_as_concat(g, s);
    });

/// On `probe grad`'s fast path, over the whole gradient graph: a `Sum` of zero-padded pieces
/// that tile one axis, `Sum(Pad(A, [0..a0..]), Pad(B, [..a1..]), ...)` with each piece padded
/// on that axis only, pieces end to end, each Pad read by that Sum alone, is `Concat(A, B, ..)`
/// in the pieces' order: one pass instead of a padded copy per piece and their sum. Slices
/// that split a tensor (deit's q, k, v taken from the qkv projection) get their gradients
/// back this way (`ops/slice.rs` pads them; on deit_small at 3x224x224 the Pads and the Sum
/// were ~7% of a batch). The values are the same but for the sign of a zero (-0.0 + 0.0 is
/// +0.0). Returns how many Sums it replaced.
///
/// The gradient values' shapes are not known here, only the pads: every Pad's output has the
/// Sum's extent T on the axis (they are summed, and none is a broadcast 1: each has a pad
/// there), so piece k spans [b_k, T - e_k) (b, e: its begin and end pads). Sorted by b, they
/// tile [0, T) when b_0 = 0, e_last = 0 and b_{k+1} = T - e_k, with the same T for every k.
pub fn sums_of_pads_as_concat(graph: &mut GraphProto, shapes: &Shapes) -> usize {
    let uses = Uses::of(graph);
    let consts = constants(graph, &HashSet::new(), shapes);
    // Piece of a Sum's input: (rank, axis, begin, end pad, the Pad's data, the Pad's index).
    let piece = |v: &str, k: usize| -> Option<(usize, usize, i64, i64, String, usize)> {
        let &p = uses.producer.get(v)?;
        let n = &graph.node[p];
        let mode = n.attribute.iter().find(|a| a.name == "mode");
        if n.op_type != "Pad"
            || !n.domain.is_empty()
            || !(n.input.len() == 2 || n.input.len() == 3 && n.input[2].is_empty())
            || mode.is_some_and(|m| m.s != b"constant")
            || !uses.sole_reader(v, k)
        {
            return None;
        }
        let pads = const_ints(&consts, &n.input[1])?;
        let r = pads.len() / 2;
        let mut axes = (0..r).filter(|&i| pads[i] != 0 || pads[r + i] != 0);
        let a = axes.next()?;
        if axes.next().is_some() || pads.iter().any(|&x| x < 0) {
            return None;
        }
        Some((r, a, pads[a], pads[r + a], n.input[0].clone(), p))
    };
    let mut concats: Vec<(usize, NodeProto)> = vec![];
    let mut dropped = HashSet::new();
    for (k, n) in graph.node.iter().enumerate() {
        if n.op_type != "Sum" || !n.domain.is_empty() || n.input.len() < 2 {
            continue;
        }
        let Some(mut pieces) = n
            .input
            .iter()
            .map(|v| piece(v, k))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        pieces.sort_by_key(|p| p.2);
        let (rank, axis) = (pieces[0].0, pieces[0].1);
        let last = pieces.len() - 1;
        let t = pieces[1].2 + pieces[0].3;
        let same = pieces.iter().all(|p| p.0 == rank && p.1 == axis);
        let ends = pieces[0].2 == 0 && pieces[last].3 == 0;
        let tiles = pieces
            .windows(2)
            .all(|w| w[1].2 > w[0].2 && w[1].2 == t - w[0].3);
        if !(same && ends && tiles && t - pieces[last].2 > 0) {
            continue;
        }
        let c = NodeProto {
            op_type: "Concat".into(),
            name: n.name.clone(),
            input: pieces.iter().map(|p| p.4.clone()).collect(),
            output: vec![n.output[0].clone()],
            attribute: vec![attr_int("axis", axis as i64)],
            ..Default::default()
        };
        concats.push((k, c));
        dropped.extend(pieces.iter().map(|p| p.5));
    }
    let replaced = concats.len();
    for (k, c) in concats {
        graph.node[k] = c;
    }
    remove_nodes(&mut graph.node, |i| dropped.contains(&i));
    replaced
}

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

/// [`sums_of_pads_as_concat`] on hand-built graphs: three pieces tiling axis 0 of a [4, 5]
/// gradient, summed out of order, become one Concat in order; a gap, an overlap, a second pad
/// axis or a Pad read elsewhere leave the Sum alone.
#[cfg(test)]
mod concat_tests {
    use super::sums_of_pads_as_concat;
    use crate::model::graph::tensor_i64;
    use crate::ops::rule::Shapes;
    use crate::ops::testing::node;
    use onnx_protobuf::GraphProto;

    /// Pads of three pieces (rows 1, 2, 1 of 4) as given, summed as p2 + p0 + p1, plus
    /// `extra` nodes.
    fn graph(pads: [[i64; 4]; 3], extra: &[onnx_protobuf::NodeProto]) -> GraphProto {
        let mut g = GraphProto::new();
        for (i, p) in pads.iter().enumerate() {
            g.initializer.push(tensor_i64(&format!("pads{i}"), &[4], p));
            g.node.push(node(
                "Pad",
                &[&format!("x{i}"), &format!("pads{i}")],
                &format!("p{i}"),
            ));
        }
        g.node.push(node("Sum", &["p2", "p0", "p1"], "dx"));
        g.node.extend(extra.iter().cloned());
        g
    }

    fn ops(g: &GraphProto) -> Vec<&str> {
        g.node.iter().map(|n| n.op_type.as_str()).collect()
    }

    #[test]
    fn tiling_pieces_become_one_concat_in_order() {
        let mut g = graph([[0, 0, 3, 0], [1, 0, 1, 0], [3, 0, 0, 0]], &[]);
        assert_eq!(sums_of_pads_as_concat(&mut g, &Shapes::default()), 1);
        assert_eq!(ops(&g), ["Concat"]);
        assert_eq!(g.node[0].input, ["x0", "x1", "x2"]);
        assert_eq!(g.node[0].output, ["dx"]);
        assert_eq!(g.node[0].attribute[0].i, 0);
    }

    #[test]
    fn anything_else_is_left_alone() {
        let cases = [
            // A gap (row 1 of piece 1 missing), an overlap, a piece padded on two axes.
            graph([[0, 0, 3, 0], [2, 0, 1, 0], [3, 0, 0, 0]], &[]),
            graph([[0, 0, 2, 0], [1, 0, 1, 0], [3, 0, 0, 0]], &[]),
            graph([[0, 0, 3, 0], [1, 0, 1, 1], [3, 0, 0, 0]], &[]),
            // A piece's Pad also read elsewhere.
            graph(
                [[0, 0, 3, 0], [1, 0, 1, 0], [3, 0, 0, 0]],
                &[node("Neg", &["p1"], "n")],
            ),
        ];
        for mut g in cases {
            let before = ops(&g).join(",");
            assert_eq!(sums_of_pads_as_concat(&mut g, &Shapes::default()), 0);
            assert_eq!(ops(&g).join(","), before);
        }
    }
}
