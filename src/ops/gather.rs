//! Gather (opset 13+): `Y = take(X, indices, axis)`, indices of any rank, negative ones counting
//! from the back. https://onnx.ai/onnx/operators/onnx__Gather.html
//!
//! With `axis` moved to the front (X' = Transpose(X, p) with p = [axis, others]), Y rows are rows
//! of X': Y'[j..., :] = X'[idx[j...], :], so dX' = ScatterND(zeros, idx[..., None], dY',
//! reduction = add) (a repeated index receives the sum of its rows), and dX = Transpose(dX', p^-1).
//! Negative indices are first normalized (idx < 0 ? idx + dim : idx), as ScatterND requires.
//! The indices are integers and get no gradient. With probe's CPU kernels (f32, axis 0, an
//! embedding table's case) one `probe.cpu:GatherGrad` node adds the rows in place.
//!
//! An embedding with a padding index (`nn.Embedding(padding_idx=p)`, exported as a plain
//! Gather) gets PyTorch's convention where [`padding_idx`] finds one: `embedding_backward`
//! skips the positions whose index is p, so row p of dX gets nothing from this node:
//! dY' = Where(idx == p, 0, dY) before the scatter (idx wrapped first, so -V + p counts too).
use super::attrs::{Attrs, Source};
use super::rule::{Ctx, Kernels, Kind, Rule};
use super::torch::{axis, input, one, TorchCtx, Value};
use crate::model::export_info::FxNode;
use crate::model::graph::{attr_int, attr_string};
use crate::ops::rule::kernels::GATHER_GRAD;
use crate::ops::slice::i64_scalar;
use crate::ops::transpose::inverse;
use crate::tensor::DType;
use anyhow::{bail, Result};
use onnx_protobuf::NodeProto;

pub static RULE: Rule = Rule::new("Gather", Kind::Linear).vjp(vjp).torch(torch);

/// Node metadata probe writes for an embedding's padding row (`--padding-idx`): a row index,
/// or `none` for the mathematical gradient of every row; read before the exporter's record.
pub const PADDING_IDX_KEY: &str = "probe.padding_idx";

/// The row of the table (input 0) that gets no gradient from node `n`, as PyTorch's
/// `embedding(weight, ids, padding_idx)` gives it none, and where that was read: probe's key
/// ([`PADDING_IDX_KEY`]), else the exporter's record of `aten.embedding` (its third argument;
/// -1 or absent: none), else none (the Gather's mathematical gradient).
pub fn padding_idx(n: &NodeProto) -> Result<(Option<i64>, Source)> {
    let bad = |what: &str| anyhow::anyhow!("Gather node '{}': padding index {what}", n.name);
    let found = if let Some(v) = n.meta(PADDING_IDX_KEY) {
        let p = (v != "none")
            .then(|| {
                v.parse::<i64>()
                    .map_err(|_| bad(&format!("'{v}' is not a row")))
            })
            .transpose()?;
        (p, Source::Given)
    } else {
        match FxNode::of(n).filter(|f| f.op() == "embedding") {
            Some(f) => {
                if f.args.get(3).is_some_and(|a| a == "True") {
                    bail!(
                        "Gather node '{}' is an embedding with scale_grad_by_freq=True, whose \
                         gradient depends on the batch; probe does not support it",
                        n.name
                    );
                }
                let p = match f.args.get(2) {
                    Some(a) => a
                        .parse::<i64>()
                        .map_err(|_| bad(&format!("'{a}' recorded")))?,
                    None => -1,
                };
                ((p != -1).then_some(p), Source::Exporter)
            }
            None => (None, Source::Default),
        }
    };
    if found.0.is_some() && n.attr_i("axis", 0) != 0 {
        bail!("Gather node '{}': a padding index needs axis 0", n.name);
    }
    Ok(found)
}

/// `index_select` along the axis on the flattened indices (negative ones wrapped), reshaped to
/// `X.shape[:axis] + indices.shape + X.shape[axis+1:]`; with a padding row, libtorch's
/// `embedding` on X as [V, -1], whose backward leaves the padding row out as PyTorch's does.
fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let (x, idx) = (input(&v, 0)?, input(&v, 1)?);
    let xs = x.size();
    let a = axis(c.attr_i("axis", 0), xs.len() as i64)?;
    let idx = wrap_negative(idx, xs[a as usize])?;
    if let (Some(p), _) = padding_idx(c.node)? {
        let p = if p < 0 { p + xs[0] } else { p };
        let table = x.f_reshape([xs[0], -1])?;
        let rows = tch::Tensor::f_embedding(&table, &idx, p, false, false)?;
        let mut shape = idx.size();
        shape.extend(&xs[1..]);
        return one(rows.f_reshape(shape.as_slice())?);
    }
    let picked = x.f_index_select(a, &idx.f_reshape([-1])?)?;
    let mut shape = xs[..a as usize].to_vec();
    shape.extend(idx.size());
    shape.extend(&xs[a as usize + 1..]);
    one(picked.f_reshape(shape.as_slice())?)
}

/// Indices as int64 with the negative ones counted from the back of a dimension of size `d`.
pub fn wrap_negative(idx: &tch::Tensor, d: i64) -> Result<tch::Tensor> {
    let idx = idx.f_to_kind(tch::Kind::Int64)?;
    let neg = idx.f_lt(0)?;
    Ok(idx.f_add_scalar(d)?.f_where_self(&neg, &idx)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let (x, idx) = (c.input(0).to_string(), c.input(1).to_string());
    let r = c.rank(&x)? as i64;
    // The indices may be an initializer, whose shape is not observed: rank Y = r - 1 + q.
    let q = c.rank(c.output(0))? as i64 - r + 1;
    let axis = c.attr_i("axis", 0);
    let a = if axis < 0 { axis + r } else { axis };

    let idx = c.op("Cast", &[&idx], vec![attr_int("to", 7)]);
    let dim = match c.dims(&x)?[a as usize] {
        Some(d) => i64_scalar(c, d as i64),
        None => {
            let s = c.op("Shape", &[&x], vec![]);
            let k = i64_scalar(c, a);
            c.op("Gather", &[&s, &k], vec![])
        }
    };
    let zero = i64_scalar(c, 0);
    let neg = c.op("Less", &[&idx, &zero], vec![]);
    let wrapped = c.op("Add", &[&idx, &dim], vec![]);
    let idx = c.op("Where", &[&neg, &wrapped, &idx], vec![]);
    let g = match padding_idx(c.node)?.0 {
        Some(p) => {
            // dY rows at the padding index dropped: Where(idx == p, 0, dY), idx unsqueezed
            // over the row's axes.
            let p = match c.dims(&x)?[0] {
                Some(v) if p < 0 => p + v as i64,
                _ => p,
            };
            let pv = i64_scalar(c, p);
            let at = c.op("Equal", &[&idx, &pv], vec![]);
            let rows: Vec<i64> = (q..q + r - 1).collect();
            let at = if rows.is_empty() {
                at
            } else {
                let ax = c.ints(&rows);
                c.op("Unsqueeze", &[&at, &ax], vec![])
            };
            let y = c.output(0).to_string();
            let z = c.scalar(0.0, &y)?;
            c.op("Where", &[&at, &z, &g], vec![])
        }
        None => g,
    };
    if a == 0 && c.kernels == Kernels::ProbeCpu && c.dtype(&x)? == DType::F32 {
        // Rows added in place (runtime/cpu_ops), where the standard form writes a zero
        // table and runs ScatterElements over [indices, row] copies of the indices.
        let shape = c.shape_of(&x);
        let gx = c
            .probe_cpu_op(GATHER_GRAD, &[&g, &idx, &shape], vec![], 1)
            .pop()
            .unwrap();
        c.set(0, gx);
        return Ok(());
    }
    let last = c.ints(&[-1]);
    let idx = c.op("Unsqueeze", &[&idx, &last], vec![]);

    let zeros = c.zeros_like(&x)?;
    let gx = if a == 0 {
        scatter_add(c, &zeros, &idx, &g)
    } else {
        // X dims: pre = [0, a), post = (a, r); Y dims: pre, indices' q dims, post.
        let p: Vec<i64> = std::iter::once(a)
            .chain((0..r).filter(|&k| k != a))
            .collect();
        let py: Vec<i64> = (a..a + q).chain(0..a).chain(a + q..r - 1 + q).collect();
        let zt = c.transpose(&zeros, &p);
        let gt = c.transpose(&g, &py);
        let s = scatter_add(c, &zt, &idx, &gt);
        c.transpose(&s, &inverse(&p))
    };
    c.set(0, gx);
    Ok(())
}

/// `data` with the rows of `upd` added at the row `idx` names (idx: [I..., 1], upd: [I..., R...],
/// data: [D0, R...]). Why ScatterElements on a [D0, prod R] view and not ScatterND: ONNX Runtime
/// 1.31's ScatterND with `reduction = add` gave run-to-run different sums with 2 threads once
/// its buffers were reused across runs (a gradient 19% off on an embedding table, measured); the
/// ScatterElements form was exact in the same test.
fn scatter_add(c: &mut Ctx, data: &str, idx: &str, upd: &str) -> String {
    let rows = c.ints(&[0, -1]);
    let d = c.op("Reshape", &[data, &rows], vec![]);
    let ds = c.op("Shape", &[&d], vec![]);
    let one = c.ints(&[1]);
    let two = c.ints(&[2]);
    let r = c.op("Slice", &[&ds, &one, &two], vec![]);
    let minus = c.ints(&[-1]);
    let ushape = c.op("Concat", &[&minus, &r], vec![attr_int("axis", 0)]);
    let u = c.op("Reshape", &[upd, &ushape], vec![]);
    let col = c.ints(&[-1, 1]);
    let i = c.op("Reshape", &[idx, &col], vec![]);
    let us = c.op("Shape", &[&u], vec![]);
    let i = c.op("Expand", &[&i, &us], vec![]);
    let s = c.op(
        "ScatterElements",
        &[&d, &i, &u],
        vec![attr_int("axis", 0), attr_string("reduction", "add")],
    );
    let shape = c.op("Shape", &[data], vec![]);
    c.op("Reshape", &[&s, &shape], vec![])
}

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_int;
    use crate::ops::testing::{check, Case};
    crate::ops::testing::gradient_and_torch_tests!(
        gather_embedding = gather_embedding_cases(),
        gather_inner_axis = [
            Case::new("Gather")
                .input(&[3, 5])
                .ints(&[2, 3], &[0, 4, 4, -1, 2, 2])
                .attr(attr_int("axis", 1)),
            Case::new("Gather")
                .input(&[2, 4, 3])
                .ints(&[3], &[3, -4, 3])
                .attr(attr_int("axis", -2)),
            Case::new("Gather")
                .input(&[2, 3, 4])
                .ints(&[2, 2], &[0, -1, 3, 3])
                .attr(attr_int("axis", 2)),
            Case::new("Gather")
                .input(&[2, 3, 4])
                .ints(&[], &[1])
                .attr(attr_int("axis", 1)),
        ],
    );
    fn gather_embedding_cases() -> [Case; 2] {
        [
            // [V, D] table, [2, 3] token ids with repeats and negative ids (-1 is row 4, as is 4).
            Case::new("Gather")
                .input(&[5, 4])
                .ints(&[2, 3], &[1, 4, 1, -1, 0, -5]),
            Case::new("Gather").input(&[5, 4]).ints(&[], &[-2]),
        ]
    }
    #[test]
    fn probe_cpu_kernel() {
        for c in gather_embedding_cases() {
            check(c.f32().probe_cpu());
        }
    }

    /// `nn.Embedding(padding_idx=1)` as exported: the padding row gets no gradient, as in
    /// libtorch's embedding backward; ids 1 and -4 (row 1 of 5) both skipped. probe's key
    /// overrides the record: `none` gives the Gather's own gradient, a row that one.
    #[test]
    fn padding_row_as_pytorch() {
        use crate::ops::gather::PADDING_IDX_KEY;
        use crate::ops::kink_testing::{autograd, check_kinks};
        use crate::ops::torch_testing::check_torch;
        let record = "%embedding : [num_users=1] = call_function[target=torch.ops.aten.embedding.default](args = (%p_e_weight, %x, 1), kwargs = {})";
        let ids = [1i64, 4, 1, -4, 0, 3];
        let embedding = |p: i64| {
            let t = tch::Tensor::from_slice(&ids).reshape([2, 3]);
            let t = t.where_self(&t.ge(0), &(&t + 5));
            autograd(move |x| tch::Tensor::embedding(&x[0], &t, p, false, false))
        };
        let case = || Case::new("Gather").input(&[5, 4]).ints(&[2, 3], &ids);
        let recorded = case().metadata("pkg.torch.onnx.fx_node", record);
        check_kinks(recorded.clone(), &embedding(1));
        check_kinks(recorded.clone().f32().probe_cpu(), &embedding(1));
        check_torch(recorded.clone());
        let none = recorded.clone().metadata(PADDING_IDX_KEY, "none");
        check_kinks(none, &embedding(-1));
        let other = recorded.metadata(PADDING_IDX_KEY, "3");
        check_kinks(other.clone(), &embedding(3));
        check_torch(other);
        // A 3-D table (rows of [2, 2]) and a scalar index.
        let t3 = Case::new("Gather").input(&[5, 2, 2]).ints(&[], &[2]);
        let t3 = t3.metadata(PADDING_IDX_KEY, "2");
        let zero = |x: &[tch::Tensor], _: &tch::Tensor| vec![x[0].zeros_like()];
        check_kinks(t3.clone(), &zero);
        check_torch(t3);
    }
}
