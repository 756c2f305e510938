//! ReduceMax and ReduceMin (opset 18+: axes as an optional input; opset 13's `axes` attribute
//! also read; keepdims, noop_with_empty_axes). https://onnx.ai/onnx/operators/onnx__ReduceMax.html
//!
//! Away from ties dX is dY at the extreme element of each reduced group and 0 elsewhere. At ties
//! the gradient is PyTorch's for the function the exporter wrote the node from:
//! - `torch.amax`/`amin` and the all-elements `x.max()`/`x.min()` (derivatives.yaml: amax,
//!   `scale_grad_by_count(grad, result == self, dim)`; max, `evenly_distribute_backward`): the
//!   gradient is split evenly among the k tied elements, `dX = (Y == X) * (dY / k)`;
//! - `torch.max(x, dim)`/`torch.min(x, dim)` (`value_selecting_reduction_backward`): all of it
//!   goes to the returned index, the first extreme element along `dim`, so
//!   dX = ScatterElements(zeros, ArgMax(X, dim, keepdims 1, select_last_index 0), dY, dim).
//!
//! The two are told apart by the node's `namespace` metadata, where the dynamo exporter
//! records the aten op (`...: aten.max.dim`); a node without it gets the even split.
use super::attrs::Attrs;
use super::reduce_sum::{reduced_axes, torch_axes};
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use crate::model::graph::attr_int;
use anyhow::Result;

pub static MAX: Rule = Rule::new("ReduceMax", Kind::Structured)
    .vjp(|c| vjp(c, "ArgMax"))
    .torch(|c, v| torch(c, v, true));
pub static MIN: Rule = Rule::new("ReduceMin", Kind::Structured)
    .vjp(|c| vjp(c, "ArgMin"))
    .torch(|c, v| torch(c, v, false));

fn torch(c: &TorchCtx, v: Vec<Value>, max: bool) -> Result<Vec<Value>> {
    let x = input(&v, 0)?;
    let keep = c.attr_i("keepdims", 1) != 0;
    let Some(axes) = torch_axes(c, &v, x.dim() as i64)? else {
        return one(x.shallow_clone());
    };
    one(if max {
        x.f_amax(axes.as_slice(), keep)?
    } else {
        x.f_amin(axes.as_slice(), keep)?
    })
}

/// `v`, a reduction's result (or its gradient), with the reduced axes restored as extent 1
/// when the node dropped them, so that it broadcasts against X. Shared by the Reduce* rules.
pub fn keep_dims(c: &mut Ctx, v: &str, axes: &[i64]) -> String {
    if c.attr_i("keepdims", 1) == 0 && !axes.is_empty() {
        let ax = c.ints(axes);
        c.op("Unsqueeze", &[v, &ax], vec![])
    } else {
        v.to_string()
    }
}

/// Whether the exporter wrote this node from `torch.max(x, dim)`/`torch.min(x, dim)` (the
/// aten ops with an index output), by the node's `namespace` metadata.
fn from_value_and_index(c: &Ctx) -> bool {
    c.node.metadata_props.iter().any(|m| {
        m.key == "namespace"
            && (m.value.ends_with("aten.max.dim") || m.value.ends_with("aten.min.dim"))
    })
}

fn vjp(c: &mut Ctx, arg: &str) -> Result<()> {
    let Some(g) = c.go_to_x() else { return Ok(()) };
    let (x, y) = (c.input(0).to_string(), c.output(0).to_string());
    let axes = reduced_axes(c)?;
    if axes.is_empty() {
        // noop_with_empty_axes: Y = X.
        c.set(0, g);
        return Ok(());
    }
    let gk = keep_dims(c, &g, &axes);
    if from_value_and_index(c) && axes.len() == 1 {
        let a = axes[0];
        let idx = c.op(
            arg,
            &[&x],
            vec![
                attr_int("axis", a),
                attr_int("keepdims", 1),
                attr_int("select_last_index", 0),
            ],
        );
        let zeros = c.zeros_like(&x)?;
        let gx = c.op(
            "ScatterElements",
            &[&zeros, &idx, &gk],
            vec![attr_int("axis", a)],
        );
        c.set(0, gx);
        return Ok(());
    }
    let yk = keep_dims(c, &y, &axes);
    let hit = c.op("Equal", &[&x, &yk], vec![]);
    // Where and not CastLike, which opset-13 graphs lack.
    let (one, zero) = (c.scalar(1.0, &x)?, c.scalar(0.0, &x)?);
    let mask = c.op("Where", &[&hit, &one, &zero], vec![]);
    let count = c.reduce_sum(&mask, &axes, true);
    let share = c.op("Div", &[&gk, &count], vec![]);
    let gx = c.op("Mul", &[&mask, &share], vec![]);
    c.set(0, gx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::{attr_int, attr_ints};
    use crate::ops::kink_testing::gradient_for;
    use crate::ops::reduce_sum::reduce_cases;
    use crate::ops::testing::Case;
    use onnx_protobuf::StringStringEntryProto;

    crate::ops::testing::gradient_and_torch_tests!(
        reduce_max = reduce_cases("ReduceMax"),
        reduce_min = reduce_cases("ReduceMin"),
        reduce_max_noop_and_opset13 = [
            Case::new("ReduceMax")
                .input(&[2, 3])
                .attr(attr_int("noop_with_empty_axes", 1)),
            Case::new("ReduceMin")
                .input(&[2, 3, 4])
                .attr(attr_ints("axes", &[1]))
                .attr(attr_int("keepdims", 0))
                .opset(13),
        ],
    );

    /// Ties in every row of a [2, 3] input: (0.5, 0.5, -1) and (0.25, 0.75, 0.75) for the
    /// maximum, their negations for the minimum.
    const TIED: [f64; 6] = [0.5, 0.5, -1.0, 0.25, 0.75, 0.75];

    /// The gradient graph's dX for `L = sum_i w_i Y_i` with Y the reduction of `values` over
    /// axis 1, the node carrying `namespace` as the exporter writes it. At ties finite
    /// differences do not exist; the expected values are PyTorch's backward.
    fn tied(op: &str, values: &[f64], namespace: Option<&str>, w: [f64; 2]) -> Vec<f64> {
        let case = Case::new(op)
            .values(&[2, 3], values)
            .ints(&[1], &[1])
            .attr(attr_int("keepdims", 0));
        gradient_for(&case, &w, |n| {
            if let Some(ns) = namespace {
                let mut m = StringStringEntryProto::new();
                m.key = "namespace".into();
                m.value = ns.into();
                n.metadata_props.push(m);
            }
        })
    }

    #[test]
    fn ties_split_evenly_as_amax() {
        // amax/amin's backward: (Y == X) * dY / count.
        let even = [0.5, 0.5, 0.0, 0.0, 5.0, 5.0];
        assert_eq!(tied("ReduceMax", &TIED, None, [1.0, 10.0]), even);
        let neg = TIED.map(|v| -v);
        assert_eq!(tied("ReduceMin", &neg, None, [1.0, 10.0]), even);
        let ns = Some(": M/amax: aten.amax.default");
        assert_eq!(tied("ReduceMax", &TIED, ns, [1.0, 10.0]), even);
    }

    #[test]
    fn ties_go_to_the_first_index_as_max_dim() {
        // max.dim/min.dim's backward: all to the returned (first) index.
        let first = [1.0, 0.0, 0.0, 0.0, 10.0, 0.0];
        let ns = Some(": M/max_1: aten.max.dim");
        assert_eq!(tied("ReduceMax", &TIED, ns, [1.0, 10.0]), first);
        let neg = TIED.map(|v| -v);
        let ns = Some(": M/min_1: aten.min.dim");
        assert_eq!(tied("ReduceMin", &neg, ns, [1.0, 10.0]), first);
    }
}
