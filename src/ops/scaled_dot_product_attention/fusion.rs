//! The exporter's decomposed attention (the pattern in the parent module's header) found and
//! replaced by one `probe.cpu:ScaledDotProductAttention` node, before differentiation and only
//! on `probe grad`'s fast path (the op's table entry runs [`fuse`] at `Stage::Forward`).
use crate::model::graph::attr_int;
use crate::ops::attrs::Attrs;
use crate::ops::rule::kernels::SCALED_DOT_PRODUCT_ATTENTION as OP;
use crate::ops::rule::Shapes;
use crate::tensor::DType;
use onnx_protobuf::{GraphProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// What one attention fuses from: the final MatMul's index, the Q, K, V, factor and mask
/// values.
struct Found {
    at: usize,
    /// Q, K, V are read as [B, L, H, E] (their Transposes to heads skipped).
    blhe_in: bool,
    /// The Transpose of O back to [B, L, H, E] that the node writes instead (its index).
    out_transpose: Option<usize>,
    q: String,
    k: String,
    v: String,
    a: String,
    b: String,
    mask: String,
    /// Q, K, V read in place from the projection X [B, L, 3 H E] they were split from (X, H).
    packed: Option<(String, i64)>,
}

/// The float (and sequence) values that depend on any of `wrt`, as the reverse sweep's
/// requires-grad pass sees them: integer values (shapes) carry no dependence, and CastLike's
/// second input lends only its type.
pub fn dependents(graph: &GraphProto, shapes: &Shapes, wrt: &[String]) -> HashSet<String> {
    let mut dep: HashSet<String> = wrt.iter().cloned().collect();
    for n in &graph.node {
        let reads = n.input.iter().enumerate();
        if reads
            .filter(|&(i, _)| !(n.op_type == "CastLike" && i == 1))
            .any(|(_, v)| dep.contains(v))
        {
            // Sequences (SplitToSequence) carry their elements' dependence, as in the sweep.
            let seq = crate::ops::rule::SEQUENCE_OPS.contains(&n.op_type.as_str());
            let carries = |o: &&String| seq || shapes.dtype(o).is_some_and(|d| d.is_float());
            dep.extend(
                n.output
                    .iter()
                    .filter(|o| !o.is_empty())
                    .filter(carries)
                    .cloned(),
            );
        }
    }
    dep
}

/// Fuses every attention of the pattern above into one `probe.cpu` node (see the module doc);
/// `dep` are the values that depend on a differentiated value ([`dependents`]). Returns how
/// many were fused.
pub fn fuse(graph: &mut GraphProto, shapes: &Shapes, dep: &HashSet<String>) -> usize {
    let uses = crate::model::graph::Uses::of(graph);
    let node = |v: &str, op: &str| -> Option<&NodeProto> {
        let n = &graph.node[*uses.producer.get(v)?];
        (n.op_type == op && n.domain.is_empty()).then_some(n)
    };
    let dims = |v: &str| shapes.get(v).map(|i| i.dims.clone());
    let f32_of = |v: &str| shapes.dtype(v) == Some(DType::F32);
    // A constant scale factor: a scalar no differentiated value reaches.
    let factor = |v: &str| {
        f32_of(v) && !dep.contains(v) && dims(v).is_some_and(|d| d.iter().all(|&x| x == Some(1)))
    };
    // `x` or `Mul(x, factor)` / `Mul(factor, x)`: (x, factor or "").
    let scaled = |v: &str| -> (String, String) {
        if let Some(m) = node(v, "Mul").filter(|m| m.input.len() == 2) {
            for (xi, fi) in [(0, 1), (1, 0)] {
                if factor(&m.input[fi]) && dims(&m.input[xi]) == dims(v) {
                    return (m.input[xi].clone(), m.input[fi].clone());
                }
            }
        }
        (v.to_string(), String::new())
    };
    // K from K^T: Transpose swapping the last two axes of a 4-D K, or the exporter's
    // Reshape(Transpose(Reshape(K, [-1, S, E]), [0, 2, 1]), [B, H, E, S]).
    let untranspose = |kt: &str| -> Option<String> {
        let ktd = dims(kt)?;
        if ktd.len() != 4 {
            return None;
        }
        let swapped =
            |k: &str| dims(k).is_some_and(|d| d.len() == 4 && [d[0], d[1], d[3], d[2]] == ktd[..]);
        if let Some(t) = node(kt, "Transpose") {
            let perm = t.attr_ints("perm");
            return (perm.as_deref() == Some(&[0, 1, 3, 2][..]) && swapped(&t.input[0]))
                .then(|| t.input[0].clone());
        }
        let r2 = node(kt, "Reshape")?;
        let t = node(&r2.input[0], "Transpose")?;
        let r1 = node(&t.input[0], "Reshape")?;
        let flat = dims(&r1.output[0])?;
        let ok = t.attr_ints("perm").as_deref() == Some(&[0, 2, 1][..])
            && flat.len() == 3
            && swapped(&r1.input[0]);
        ok.then(|| r1.input[0].clone())
    };
    // [B, H, L, E] <-> [B, L, H, E], the heads' transposes around an attention.
    let heads_perm = |t: &NodeProto| t.attr_ints("perm").as_deref() == Some(&[0, 2, 1, 3][..]);
    let blhe = |x: &str| -> Option<String> {
        let t = node(x, "Transpose").filter(|t| heads_perm(t))?;
        f32_of(&t.input[0]).then(|| t.input[0].clone())
    };
    // Position i of a split of X along its last axis into three: (X, i), from
    // SequenceAt(SplitToSequence(X), i) (the exporter's form) or output i of Split(X).
    let consts = crate::ops::rule::constants(graph, &HashSet::new(), shapes);
    let position = |v: &str| -> Option<i64> {
        let x = crate::ops::rule::const_ints(&consts, v)?;
        (x.len() == 1).then(|| x[0])
    };
    let last_axis = |n: &NodeProto, x: &str| {
        let (a, r) = (n.attr_i("axis", 0), shapes.rank(x).unwrap_or(0) as i64);
        a == -1 || a == r - 1
    };
    let third = |part: &str| -> Option<(String, i64)> {
        let n = &graph.node[*uses.producer.get(part)?];
        if !n.domain.is_empty() {
            return None;
        }
        if n.op_type == "Split" && n.output.len() == 3 && last_axis(n, &n.input[0]) {
            let i = n.output.iter().position(|o| o == part)?;
            return Some((n.input[0].clone(), i as i64));
        }
        if n.op_type != "SequenceAt" {
            return None;
        }
        let seq = node(&n.input[0], "SplitToSequence")?;
        let i = position(&n.input[1])?;
        (last_axis(seq, &seq.input[0]) && (0..3).contains(&i)).then(|| (seq.input[0].clone(), i))
    };
    // Q, K, V [B, L, H, E], each a Reshape of its third of one X [B, L, 3 H E] in order: X.
    let packed = |q: &str, k: &str, v: &str| -> Option<(String, i64)> {
        let qd = dims(q)?;
        let mut x = None;
        for (i, t) in [q, k, v].into_iter().enumerate() {
            let r = node(t, "Reshape")?;
            let (xi, at) = third(&r.input[0])?;
            let pd = dims(&r.input[0])?;
            let fits = dims(t).as_ref() == Some(&qd)
                && at == i as i64
                && pd.len() == 3
                && pd[..2] == qd[..2]
                && x.as_ref().is_none_or(|x| *x == xi);
            if !fits {
                return None;
            }
            x = Some(xi);
        }
        let x = x?;
        let (xd, he) = (dims(&x)?, qd[2]? * qd[3]?);
        let fits = f32_of(&x) && xd.len() == 3 && xd[..2] == qd[..2] && xd[2] == Some(3 * he);
        fits.then(|| (x, qd[2].unwrap() as i64))
    };
    // `Where(IsNaN(S), 0, S)` of a Softmax S: the exporter's guard for rows a boolean mask
    // masks entirely (their softmax is 0/0). libtorch's flash attention gives such a row
    // O = 0, as the guard does, and the gradient PyTorch's own backward takes there (none
    // through that row; op by op the Softmax's gradient would be NaN o 0).
    let zero = |v: &str| {
        let t = consts
            .get(v)
            .and_then(|t| crate::model::decode_tensor(t).ok());
        t.is_some_and(|t| t.numel() == 1 && t.as_f32().is_some_and(|x| x[0] == 0.0))
    };
    let nan_guarded = |p: &str| -> Option<&NodeProto> {
        let w = node(p, "Where").filter(|w| w.input.len() == 3)?;
        let sm = node(&w.input[2], "Softmax")?;
        let guard = node(&w.input[0], "IsNaN").is_some_and(|n| n.input[0] == w.input[2]);
        (guard && zero(&w.input[1])).then_some(sm)
    };
    let mut found = Vec::new();
    let mut bypassed = HashSet::new();
    for (k, pv) in graph.node.iter().enumerate() {
        if pv.op_type != "MatMul" || !pv.domain.is_empty() || pv.input.len() != 2 {
            continue;
        }
        let (p, v) = (&pv.input[0], &pv.input[1]);
        let Some(sm) = node(p, "Softmax").or_else(|| nan_guarded(p)) else {
            continue;
        };
        let Some(pd) = dims(p) else { continue };
        let axis = sm.attr_i("axis", -1);
        if pd.len() != 4 || !(axis == -1 || axis == 3) {
            continue;
        }
        let (scores, mask) = match node(&sm.input[0], "Add").filter(|a| a.input.len() == 2) {
            Some(add) => {
                let mm = (0..2).find(|&i| node(&add.input[i], "MatMul").is_some());
                match mm {
                    Some(i) => (add.input[i].clone(), add.input[1 - i].clone()),
                    None => continue,
                }
            }
            None => (sm.input[0].clone(), String::new()),
        };
        let Some(qk) = node(&scores, "MatMul").filter(|m| m.input.len() == 2) else {
            continue;
        };
        let (q, a) = scaled(&qk.input[0]);
        let (kt, b) = scaled(&qk.input[1]);
        let Some(kk) = untranspose(&kt) else { continue };
        let (Some(qd), Some(kd), Some(vd)) = (dims(&q), dims(&kk), dims(v)) else {
            continue;
        };
        let shapes_fit = qd.len() == 4
            && kd == vd
            && kd.len() == 4
            && qd[..2] == kd[..2]
            && qd[3] == kd[3]
            && pd[..] == [qd[0], qd[1], qd[2], kd[2]];
        let types_fit = [&q, &kk, v].iter().all(|x| f32_of(x));
        let mask_fits = mask.is_empty()
            || (f32_of(&mask)
                && !dep.contains(&mask)
                && dims(&mask).is_some_and(|m| {
                    m.len() <= 4
                        && (m.iter().zip(&pd[4 - m.len()..])).all(|(&d, &f)| d == Some(1) || d == f)
                }));
        if shapes_fit && types_fit && mask_fits {
            // Heads read and written in place where the graph transposes them anyway.
            let (q, kk, v, blhe_in) = match (blhe(&q), blhe(&kk), blhe(v)) {
                (Some(qs), Some(ks), Some(vs)) => {
                    bypassed.extend([q, kk, v.clone()]);
                    (qs, ks, vs, true)
                }
                _ => (q, kk, v.clone(), false),
            };
            let packed = if blhe_in { packed(&q, &kk, &v) } else { None };
            let o = pv.output[0].as_str();
            let out_transpose = match uses.readers(o) {
                &[t] if uses.sole_reader(o, t) => {
                    let t_node = &graph.node[t];
                    (t_node.op_type == "Transpose"
                        && t_node.domain.is_empty()
                        && heads_perm(t_node))
                    .then_some(t)
                }
                _ => None,
            };
            found.push(Found {
                at: k,
                blhe_in,
                out_transpose,
                q,
                k: kk,
                v,
                a,
                b,
                mask,
                packed,
            });
        }
    }
    let fused = found.len();
    let mut drop = HashSet::new();
    // Packed heads: (Q, K or V as the graph has it, the projection it was split from).
    let mut views: Vec<(String, String)> = Vec::new();
    for f in found {
        let o = match f.out_transpose {
            Some(t) => {
                drop.insert(t);
                graph.node[t].output[0].clone()
            }
            None => graph.node[f.at].output[0].clone(),
        };
        let n = &mut graph.node[f.at];
        n.op_type = OP.into();
        n.domain = crate::ops::rule::PROBE_CPU_DOMAIN.into();
        n.input = match &f.packed {
            Some((x, _)) => {
                views.extend([f.q, f.k, f.v].map(|v| (v, x.clone())));
                vec![x.clone(), String::new(), String::new(), f.a, f.b, f.mask]
            }
            None => vec![f.q, f.k, f.v, f.a, f.b, f.mask],
        };
        while n.input.last().is_some_and(|i| i.is_empty()) {
            n.input.pop();
        }
        n.output = vec![o.clone(), format!("{o}/lse")];
        n.attribute = vec![
            attr_int("blhe_in", f.blhe_in as i64),
            attr_int("blhe_out", f.out_transpose.is_some() as i64),
        ];
        if let Some((_, h)) = f.packed {
            n.attribute.push(attr_int("packed_heads", h));
        }
    }
    if fused > 0 {
        crate::model::graph::remove_nodes(&mut graph.node, |k| drop.contains(&k));
        read_shapes_through_transposes(graph, &bypassed);
        read_shapes_through_reshapes(graph, shapes, &views);
        remove_dead(graph);
    }
    fused
}

/// The exporter also reads the heads' Transposes for their shape (the scale is
/// `1/sqrt(Shape(Q)[-1])`, the causal mask is sized by `Shape(Q)` and `Shape(K)`) and their
/// type (CastLike): rewired to the Transpose's input, `Shape(Transpose(X, perm))` as
/// `Gather(Shape(X), perm)` and `CastLike(v, Transpose(X))` as `CastLike(v, X)`, so that a
/// Transpose the fused node bypasses is not computed only to be measured.
fn read_shapes_through_transposes(graph: &mut GraphProto, bypassed: &HashSet<String>) {
    let source: HashMap<String, (String, Vec<i64>)> = (graph.node.iter())
        .filter(|n| n.op_type == "Transpose" && n.domain.is_empty())
        .filter(|n| bypassed.contains(&n.output[0]))
        .filter_map(|n| {
            Some((
                n.output[0].clone(),
                (n.input[0].clone(), n.attr_ints("perm")?),
            ))
        })
        .collect();
    let mut nodes = Vec::with_capacity(graph.node.len());
    for mut n in std::mem::take(&mut graph.node) {
        let src = n.input.first().and_then(|i| source.get(i));
        match (n.op_type.as_str(), src) {
            ("Shape", Some((x, perm))) if n.domain.is_empty() => {
                let r = perm.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = clamp(n.attr_i("start", 0));
                let end = clamp(n.attr_i("end", r));
                let out = n.output[0].clone();
                let idx = format!("{out}/perm");
                let mut c = NodeProto::new();
                c.op_type = "Constant".into();
                c.name = idx.clone();
                c.output = vec![idx.clone()];
                let sel = &perm[start..end.max(start)];
                c.attribute = vec![crate::model::graph::attr_tensor(
                    "value",
                    crate::model::graph::tensor_i64("", &[sel.len() as i64], sel),
                )];
                let mut sh = n.clone();
                sh.input = vec![x.clone()];
                sh.output = vec![format!("{out}/source")];
                sh.attribute.clear();
                let mut g = NodeProto::new();
                g.op_type = "Gather".into();
                g.name = format!("{out}/gather");
                g.input = vec![sh.output[0].clone(), idx];
                g.output = vec![out];
                nodes.extend([c, sh, g]);
                continue;
            }
            _ => {}
        }
        if n.op_type == "CastLike" && n.domain.is_empty() {
            if let Some((x, _)) = n.input.get(1).and_then(|i| source.get(i)) {
                n.input[1] = x.clone();
            }
        }
        nodes.push(n);
    }
    graph.node = nodes;
}

/// With Q, K and V read in place from their projection X, the split and the Reshapes to heads
/// are left for their other readers, the exporter's Shape and CastLike reads: rewired, so that
/// they go. `Shape(Reshape(P, s))` (whole shape) is `s` itself when `s` holds no -1 or 0 (as
/// observed: its values are the batch size and constants); `CastLike(v, Q)` is `CastLike(v, X)`.
fn read_shapes_through_reshapes(
    graph: &mut GraphProto,
    shapes: &Shapes,
    views: &[(String, String)],
) {
    let uses = crate::model::graph::Uses::of(graph);
    let mut to_shape = HashMap::new();
    for (v, _) in views {
        let Some(r) = uses.producer.get(v).map(|&k| &graph.node[k]) else {
            continue;
        };
        let whole = |s: &str| shapes.ints.get(s).is_some_and(|d| d.iter().all(|&d| d > 0));
        if r.op_type == "Reshape" && r.input.len() == 2 && whole(&r.input[1]) {
            to_shape.insert(v.clone(), r.input[1].clone());
        }
    }
    let of: HashMap<&str, &str> = views
        .iter()
        .map(|(v, x)| (v.as_str(), x.as_str()))
        .collect();
    for n in graph.node.iter_mut().filter(|n| n.domain.is_empty()) {
        let whole = n
            .attribute
            .iter()
            .all(|a| a.name != "start" && a.name != "end");
        match (n.op_type.as_str(), n.input.first()) {
            ("Shape", Some(v)) if whole => {
                if let Some(s) = to_shape.get(v) {
                    n.op_type = "Identity".into();
                    n.input = vec![s.clone()];
                    n.attribute.clear();
                }
            }
            ("CastLike", _) => {
                if let Some(x) = n.input.get(1).and_then(|v| of.get(v.as_str())) {
                    n.input[1] = x.to_string();
                }
            }
            _ => {}
        }
    }
}

/// Removes the nodes nothing reads (no graph output, no other node), repeatedly.
fn remove_dead(graph: &mut GraphProto) {
    loop {
        let mut live: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        for n in &graph.node {
            live.extend(n.input.iter().map(|s| s.as_str()));
        }
        let dead: Vec<bool> = (graph.node.iter())
            .map(|n| {
                n.output
                    .iter()
                    .all(|o| o.is_empty() || !live.contains(o.as_str()))
            })
            .collect();
        if !dead.iter().any(|&d| d) {
            return;
        }
        crate::model::graph::remove_nodes(&mut graph.node, |k| dead[k]);
    }
}
