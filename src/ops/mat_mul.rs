//! MatMul (opset 13; also 1, 9): numpy `matmul`, batched over the leading axes with broadcasting;
//! a 1-D A is promoted to [1, K] and a 1-D B to [K, 1], the added axis removed from Y.
//! https://onnx.ai/onnx/operators/onnx__MatMul.html
//!
//! With A, B promoted to 2+-D (Unsqueeze) and dY given the promoted axes back:
//! dA = unbroadcast(dY B^T), dB = unbroadcast(A^T dY), where ^T swaps the last two axes and
//! unbroadcast sums the batch axes A (or B) lacks or has as 1; the final Reshape to A's (B's)
//! shape also drops the promoted axis. When B is one matrix and A a batch (a Linear layer), dB
//! is one [K, M*batch] x [M*batch, N] product instead.
//!
//! With probe's CPU kernels (f32), the products run as `probe.cpu:MatMul` (MKL's GEMM by
//! libtorch, the transposes read in place), and a Linear layer's `Add(MatMul(A, B), bias)` as
//! one `probe.cpu:MatMulAdd` (libtorch's addmm, what PyTorch's Linear runs): see [`fuse_bias`].
use super::rule::{Ctx, Kernels, Kind, Rule, Shapes, Stage};
use super::torch::{input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use crate::ops::rule::kernels::MAT_MUL_ADD;
use crate::tensor::DType;
use anyhow::{anyhow, Result};
use onnx_protobuf::{GraphProto, NodeProto};
use std::collections::HashSet;

pub static RULE: Rule = Rule::new("MatMul", Kind::Structured)
    .vjp(vjp)
    .torch(torch)
    .probe_cpu_forward(probe_cpu_forward)
    .rewrite(Stage::Graph, |g, s, _| fuse_bias(g, s));

/// libtorch's matmul has numpy's semantics, 1-D promotion included.
fn torch(_: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    one(input(&v, 0)?.f_matmul(input(&v, 1)?)?)
}

/// Each `Y = Add(MatMul(A, B), bias)` (either order) with A [..., K] f32, B [K, N] and bias [N]
/// known statically, where nothing else reads the MatMul's output, as one
/// `probe.cpu:MatMulAdd(A, B, bias) -> Y` in the Add's place (the MatMul removed). Why: ONNX
/// Runtime adds the bias in a second pass over Y (1.4 ms of a GPT batch for a [250, 32, 256]
/// Y), libtorch's addmm starts the GEMM from the broadcast bias. The gradient rules ran on
/// the unfused graph and read neither the MatMul's output nor anything this removes (checked:
/// a reader anywhere keeps the pair as it is).
pub fn fuse_bias(graph: &mut GraphProto, shapes: &Shapes) {
    let uses = crate::model::graph::Uses::of(graph);
    let dims = |v: &str| shapes.static_dims(v);
    let mut fused: Vec<(usize, usize, NodeProto)> = Vec::new();
    for (k, n) in graph.node.iter().enumerate() {
        if n.op_type != "Add" || !n.domain.is_empty() || n.input.len() != 2 {
            continue;
        }
        for (mi, bi) in [(0, 1), (1, 0)] {
            let (m, bias) = (&n.input[mi], &n.input[bi]);
            let Some(&p) = uses.producer.get(m.as_str()) else {
                continue;
            };
            let mm = &graph.node[p];
            if mm.op_type != "MatMul" || !mm.domain.is_empty() || mm.input.len() != 2 {
                continue;
            }
            let (a, b) = (&mm.input[0], &mm.input[1]);
            let f32s = [a, b, bias]
                .iter()
                .all(|v| shapes.dtype(v) == Some(DType::F32));
            let (Some(ar), Some(bd), Some(cd)) = (shapes.rank(a), dims(b), dims(bias)) else {
                continue;
            };
            let k_a = shapes.get(a).and_then(|i| i.dims.last().copied().flatten());
            let fits = f32s
                && ar >= 2
                && bd.len() == 2
                && k_a == Some(bd[0])
                && cd == [bd[1]]
                && uses.sole_reader(m, k);
            if fits {
                let mut f = n.clone();
                f.op_type = MAT_MUL_ADD.into();
                f.domain = crate::ops::rule::PROBE_CPU_DOMAIN.into();
                f.input = vec![a.clone(), b.clone(), bias.clone()];
                f.attribute.clear();
                fused.push((k, p, f));
                break;
            }
        }
    }
    let mut drop = HashSet::new();
    for (k, p, f) in fused {
        graph.node[k] = f;
        drop.insert(p);
    }
    crate::model::graph::remove_nodes(&mut graph.node, |k| drop.contains(&k));
}

/// Whether `probe.cpu:MatMul` takes operands of these dims (rank 2+, each): equal batch axes,
/// or one of them a matrix (no broadcasting of 1s).
fn probe_cpu_takes(ad: &[Option<usize>], bd: &[Option<usize>]) -> bool {
    let (ra, rb) = (ad.len(), bd.len());
    ra >= 2 && rb >= 2 && (ra == 2 || rb == 2 || ad[..ra - 2] == bd[..rb - 2])
}

/// `op(A) op(B)` (op: the last two axes swapped where `ta` / `tb`), operands with their dims:
/// with `fast` (probe's CPU kernels, f32) and operands [`probe_cpu_takes`], one
/// `probe.cpu:MatMul` with transA / transB (MKL reads the transposed operand in place); else
/// Transposes and a MatMul.
fn product(
    c: &mut Ctx,
    fast: bool,
    (a, ad): (&str, &[Option<usize>]),
    ta: bool,
    (b, bd): (&str, &[Option<usize>]),
    tb: bool,
) -> String {
    if fast && probe_cpu_takes(ad, bd) {
        let attrs = vec![attr_int("transA", ta as i64), attr_int("transB", tb as i64)];
        return c.probe_cpu_op("MatMul", &[a, b], attrs, 1).pop().unwrap();
    }
    let a = if ta {
        swap_last2(c, a, ad.len())
    } else {
        a.to_string()
    };
    let b = if tb {
        swap_last2(c, b, bd.len())
    } else {
        b.to_string()
    };
    c.op("MatMul", &[&a, &b], vec![])
}

/// The forward MatMul as `probe.cpu:MatMul` (MKL's GEMM, see `runtime/cpu_ops`): f32
/// operands [`probe_cpu_takes`]; `None` leaves it.
pub fn probe_cpu_forward(n: &NodeProto, shapes: &Shapes) -> Option<NodeProto> {
    let (a, b) = (n.input.first()?, n.input.get(1)?);
    if n.op_type != "MatMul" || !n.domain.is_empty() {
        return None;
    }
    let f32s = shapes.dtype(a)? == DType::F32 && shapes.dtype(b)? == DType::F32;
    if !f32s || !probe_cpu_takes(&shapes.get(a)?.dims, &shapes.get(b)?.dims) {
        return None;
    }
    let m = crate::ops::rule::as_probe_cpu(n, vec![attr_int("transA", 0), attr_int("transB", 0)]);
    Some(m)
}

/// Transposes the last two axes of a value of rank `r` (>= 2).
fn swap_last2(c: &mut Ctx, v: &str, r: usize) -> String {
    let mut perm: Vec<i64> = (0..r as i64).collect();
    perm.swap(r - 2, r - 1);
    c.transpose(v, &perm)
}

/// Sums `g` (dims `gd`: batch dims of Y, then the matrix dims of the operand) back to the
/// operand `x` whose promoted dims are `xd`, then reshapes to `x`'s own shape.
fn sum_to(
    c: &mut Ctx,
    g: &str,
    gd: &[Option<usize>],
    xd: &[Option<usize>],
    x: &str,
    promoted: bool,
) -> String {
    let lead = gd.len() - xd.len();
    let mut axes: Vec<i64> = (0..lead as i64).collect();
    for (i, d) in xd[..xd.len() - 2].iter().enumerate() {
        if *d == Some(1) && gd[lead + i] != Some(1) {
            axes.push((lead + i) as i64);
        }
    }
    let g = if axes.is_empty() {
        g.to_string()
    } else {
        c.reduce_sum(g, &axes, true)
    };
    if lead == 0 && !promoted && axes.is_empty() {
        return g;
    }
    c.reshape_as(&g, x)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let (a, b, y) = c.binary();
    let (mut ad, mut bd, yd) = (c.dims(&a)?, c.dims(&b)?, c.dims(&y)?);
    let (pa, pb) = (ad.len() == 1, bd.len() == 1);
    if ad.is_empty() || bd.is_empty() {
        return Err(anyhow!("MatMul of a scalar"));
    }
    // Promote 1-D operands and give dY the axes MatMul removed: [.., M, N] throughout.
    let mut y2 = yd.clone();
    let (mut a2, mut b2) = (a.clone(), b.clone());
    if pa {
        let ax = c.ints(&[0]);
        a2 = c.op("Unsqueeze", &[&a, &ax], vec![]);
        ad.insert(0, Some(1));
        let r = y2.len();
        y2.insert(r - if pb { 0 } else { 1 }, Some(1));
    }
    if pb {
        let ax = c.ints(&[1]);
        b2 = c.op("Unsqueeze", &[&b, &ax], vec![]);
        bd.push(Some(1));
        y2.push(Some(1));
    }
    let r = y2.len();
    let g2 = if pa || pb {
        let mut axes = vec![];
        if pa {
            axes.push(r as i64 - 2);
        }
        if pb {
            axes.push(r as i64 - 1);
        }
        let ax = c.ints(&axes);
        c.op("Unsqueeze", &[&g, &ax], vec![])
    } else {
        g.clone()
    };
    let batch = &y2[..r - 2];
    let fast =
        c.kernels == Kernels::ProbeCpu && c.dtype(&a)? == DType::F32 && c.dtype(&b)? == DType::F32;
    if c.needs(0) {
        let ga = product(c, fast, (&g2, &y2), false, (&b2, &bd), true);
        let mut gd = batch.to_vec();
        gd.extend_from_slice(&ad[ad.len() - 2..]);
        let ga = sum_to(c, &ga, &gd, &ad, &a, pa);
        c.set(0, ga);
    }
    if c.needs(1) && bd.len() == 2 && ad.len() > 2 && bd.iter().all(|d| d.is_some()) {
        // A batch against one matrix (a Linear layer): fold the batch into the rows, so the
        // product is [K, N] at once instead of a [batch.., K, N] tensor summed afterwards.
        let (k, n) = (bd[0].unwrap() as i64, bd[1].unwrap() as i64);
        let sa = c.ints(&[-1, k]);
        let sg = c.ints(&[-1, n]);
        let a2r = c.op("Reshape", &[&a2, &sa], vec![]);
        let g2r = c.op("Reshape", &[&g2, &sg], vec![]);
        let (d2a, d2g) = (vec![None, Some(k as usize)], vec![None, Some(n as usize)]);
        let gb = product(c, fast, (&a2r, &d2a), true, (&g2r, &d2g), false);
        let gb = if pb { c.reshape_as(&gb, &b) } else { gb };
        c.set(1, gb);
    } else if c.needs(1) {
        let gb = product(c, fast, (&a2, &ad), true, (&g2, &y2), false);
        let mut gd = batch.to_vec();
        gd.extend_from_slice(&bd[bd.len() - 2..]);
        let gb = sum_to(c, &gb, &gd, &bd, &b, pb);
        c.set(1, gb);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// `Add(MatMul(A, B), bias)` as the fast path fuses it (probe.cpu:MatMulAdd), with the
    /// bias on either side, against the standard form and finite differences (f32).
    #[test]
    fn probe_cpu_matmul_add() {
        use crate::ops::rule::Kernels;
        use crate::ops::testing::check_graph_with;
        use onnx_protobuf::{GraphProto, NodeProto};
        for bias_first in [false, true] {
            let mut g = GraphProto::new();
            let mut m = NodeProto::new();
            m.op_type = "MatMul".into();
            m.name = "mm".into();
            m.input = vec!["a".into(), "b".into()];
            m.output = vec!["m".into()];
            let mut add = NodeProto::new();
            add.op_type = "Add".into();
            add.name = "add".into();
            add.input = if bias_first {
                vec!["c".into(), "m".into()]
            } else {
                vec!["m".into(), "c".into()]
            };
            add.output = vec!["y".into()];
            g.node = vec![m, add];
            let inputs: [(&str, &[usize]); 3] = [("a", &[2, 3, 4]), ("b", &[4, 5]), ("c", &[5])];
            check_graph_with("MatMul+Add", g, &inputs, &["y"], 5, Kernels::ProbeCpu);
        }
    }
    use crate::ops::testing::{check, Case};
    crate::ops::testing::gradient_and_torch_tests!(
        matmul_batched_broadcasting = [
            Case::new("MatMul").input(&[3, 4]).input(&[4, 5]),
            Case::new("MatMul").input(&[2, 3, 4, 5]).input(&[5, 6]),
            Case::new("MatMul").input(&[3, 4]).input(&[2, 4, 5]),
            Case::new("MatMul").input(&[2, 1, 3, 4]).input(&[5, 4, 2]),
            Case::new("MatMul").input(&[1, 3, 4]).input(&[2, 4, 2]),
        ],
        matmul_vectors = [
            Case::new("MatMul").input(&[4]).input(&[4, 3]),
            Case::new("MatMul").input(&[2, 3, 4]).input(&[4]),
            Case::new("MatMul").input(&[4]).input(&[2, 4, 3]),
            Case::new("MatMul").input(&[4]).input(&[4]),
        ],
    );
    /// The rewrite itself: the MatMul feeding a bias Add is gone and one probe.cpu:MatMulAdd
    /// writes the Add's output; a MatMul with a second reader is left alone.
    #[test]
    fn fuse_bias_fuses_only_a_sole_reader() {
        use crate::model::graph::value_info;
        use crate::ops::rule::Shapes;
        use crate::ops::testing::node;
        use crate::tensor::{DType, HostTensor};
        use onnx_protobuf::GraphProto;
        for shared in [false, true] {
            let mut g = GraphProto::new();
            g.node = vec![
                node("MatMul", &["a", "b"], "m"),
                node("Add", &["m", "c"], "y"),
            ];
            g.output.push(value_info("y", DType::F32, &[], "N"));
            if shared {
                g.node.push(node("Neg", &["m"], "z"));
                g.output.push(value_info("z", DType::F32, &[], "N"));
            }
            let dims: [(&str, Vec<usize>); 3] =
                [("a", vec![2, 3, 4]), ("b", vec![4, 5]), ("c", vec![5])];
            for (name, d) in &dims {
                let d: Vec<Option<i64>> = d.iter().map(|&v| Some(v as i64)).collect();
                g.input.push(value_info(name, DType::F32, &d, "N"));
            }
            let m = crate::ops::testing::model_of(g.clone(), 20);
            let feed = dims
                .iter()
                .map(|(n, d)| {
                    let len = d.iter().product();
                    (n.to_string(), HostTensor::f32(d.clone(), vec![0.5; len]))
                })
                .collect();
            let shapes = Shapes::observe(&m, &[feed]).unwrap();
            super::fuse_bias(&mut g, &shapes);
            let ops: Vec<(&str, &str)> = (g.node.iter())
                .map(|n| (n.op_type.as_str(), n.output[0].as_str()))
                .collect();
            if shared {
                assert_eq!(ops[..2], [("MatMul", "m"), ("Add", "y")], "{ops:?}");
            } else {
                assert_eq!(ops, [("MatMulAdd", "y")], "{ops:?}");
                assert_eq!(g.node[0].input, ["a", "b", "c"]);
            }
        }
    }
    #[test]
    fn probe_cpu_kernel() {
        // Matrices, a batch against one matrix (the Linear fold), a matrix against a batch,
        // equal batches (attention), and promoted vectors.
        for (a, b) in [
            (&[3, 4][..], &[4, 5][..]),
            (&[2, 3, 4, 5], &[5, 6]),
            (&[3, 4], &[2, 4, 5]),
            (&[2, 3, 4, 5], &[2, 3, 5, 2]),
            (&[4], &[4, 3]),
            (&[2, 3, 4], &[4]),
            (&[4], &[2, 4, 3]),
        ] {
            check(Case::new("MatMul").input(a).input(b).f32().probe_cpu());
        }
    }
}
