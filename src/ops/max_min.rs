//! Max and Min (opset 13): the elementwise maximum (minimum) of one or more inputs, with
//! multidirectional broadcasting. PyTorch's exporter writes `torch.maximum`, `torch.max(a, b)`
//! and `torch.clamp` with tensor bounds as these (a clamp as `Min(Max(x, lo), hi)`).
//! https://onnx.ai/onnx/operators/onnx__Max.html, https://onnx.ai/onnx/operators/onnx__Min.html
//!
//! Away from ties, dY goes to the input that is the result. Where inputs tie, as PyTorch does:
//! - `torch.maximum`/`minimum` (derivatives.yaml: `at::where(self == other, grad / 2, grad)
//!   .masked_fill_(self < other, 0)`) split dY evenly between the tied inputs; for n inputs
//!   each of the k that equal Y gets dY / k (as PyTorch's `amax` backward splits a reduction's
//!   ties), so n = 2 is PyTorch's rule.
//! - `torch.clamp(x, min=lo, max=hi)` with tensor bounds gives x the whole of dY where
//!   lo <= x <= hi and a bound only where it strictly wins (`clamp_backward`,
//!   `clamp_backward_min_max`). The exporter records the aten op a node came from
//!   (`pkg.torch.onnx.class_hierarchy` ends in `aten.clamp.Tensor`, `aten.clamp_min.Tensor`
//!   or `aten.clamp_max.Tensor`); for a two-input node from one of those, input 0 (x, or the
//!   Max inside) takes dY where it equals Y and the bound takes the rest. (With lo == hi > x,
//!   PyTorch gives no one a gradient; here lo gets it.)
//!
//! Each input's share is then summed back to its own shape.
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use anyhow::{bail, Result};
use onnx_protobuf::NodeProto;
use tch::Tensor;

pub static MAX: Rule = Rule::new("Max", Kind::Elementwise)
    .vjp(vjp)
    .torch(|c, v| torch(c, v, Tensor::f_maximum, Tensor::f_clamp_min_tensor));
pub static MIN: Rule = Rule::new("Min", Kind::Elementwise)
    .vjp(vjp)
    .torch(|c, v| torch(c, v, Tensor::f_minimum, Tensor::f_clamp_max_tensor));

const HIERARCHY_KEY: &str = "pkg.torch.onnx.class_hierarchy";

/// Whether the exporter wrote this two-input node for `torch.clamp` (or `clamp_min`,
/// `clamp_max`) with a tensor bound: the last entry of its class hierarchy
/// (`['__main__.Net', 'aten.clamp.Tensor']`).
pub fn from_clamp(n: &NodeProto) -> bool {
    let Some(m) = n.metadata_props.iter().find(|m| m.key == HIERARCHY_KEY) else {
        return false;
    };
    let last = m.value.rsplit('\'').nth(1).unwrap_or("");
    n.input.len() == 2 && last.starts_with("aten.clamp")
}

type Binary = fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError>;

/// PyTorch's own ops for what the node came from, so libtorch's backward is PyTorch's:
/// `clamp_min`/`clamp_max` for a clamp, else `maximum`/`minimum` folded over the inputs.
fn torch(c: &TorchCtx, v: Vec<Value>, fold: Binary, clamp: Binary) -> Result<Vec<Value>> {
    let mut acc = input(&v, 0)?.shallow_clone();
    if from_clamp(c.node) {
        return one(clamp(&acc, input(&v, 1)?)?);
    }
    for i in 1..v.len() {
        acc = fold(&acc, input(&v, i)?)?;
    }
    one(acc)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let y = c.output(0).to_string();
    let n = c.node.input.len();
    if n == 0 {
        bail!("{} without inputs", c.node.op_type);
    }
    let ins: Vec<String> = (0..n).map(|i| c.input(i).to_string()).collect();
    // One input: Y = X.
    if n == 1 {
        c.set(0, g);
        return Ok(());
    }
    let zero = c.scalar(0.0, &y)?;
    if from_clamp(c.node) {
        let wins = c.op("Equal", &[&ins[0], &y], vec![]);
        let g0 = c.op("Where", &[&wins, &g, &zero], vec![]);
        let g1 = c.op("Where", &[&wins, &zero, &g], vec![]);
        if c.needs(0) {
            c.set_unbroadcast(0, &g0, &y)?;
        }
        if c.needs(1) {
            c.set_unbroadcast(1, &g1, &y)?;
        }
        return Ok(());
    }
    // k = how many inputs equal Y, at each position of Y.
    let hits: Vec<String> = (ins.iter())
        .map(|x| c.op("Equal", &[x, &y], vec![]))
        .collect();
    let counts: Vec<String> = (hits.iter()).map(|h| c.cast_like(h, &y)).collect();
    let refs: Vec<&str> = counts.iter().map(|s| s.as_str()).collect();
    let k = c.op("Sum", &refs, vec![]);
    let share = c.op("Div", &[&g, &k], vec![]);
    for (i, hit) in hits.iter().enumerate() {
        if !c.needs(i) {
            continue;
        }
        let gi = c.op("Where", &[hit, &share, &zero], vec![]);
        c.set_unbroadcast(i, &gi, &y)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::ops::testing::prelude::*;
    use crate::ops::torch_testing::{autograd, check_torch_backward};

    crate::ops::testing::gradient_and_torch_tests!(
        max = [
            Case::new("Max").input(&[3, 4]).input(&[3, 4]),
            // Broadcasting both ways, and three inputs.
            Case::new("Max").input(&[3, 1]).input(&[1, 4]),
            Case::new("Max")
                .input(&[2, 3, 4])
                .input(&[4])
                .input(&[3, 1]),
            Case::new("Max").input(&[5]),
        ],
        min = [
            Case::new("Min").input(&[3, 4]).input(&[3, 4]),
            Case::new("Min")
                .input(&[2, 3, 4])
                .input(&[3, 1])
                .input(&[1, 4]),
        ],
        clamp_tensor_bounds = [
            clamp(Case::new("Max")).input(&[3, 4]).input(&[1, 4]),
            clamp(Case::new("Min")).input(&[3, 4]).input(&[3, 1]),
        ],
    );

    /// The node as the exporter writes it for `torch.clamp(x, min=t)` (its metadata).
    fn clamp(c: Case) -> Case {
        c.metadata(
            "pkg.torch.onnx.class_hierarchy",
            "['__main__.Net', 'aten.clamp.Tensor']",
        )
    }

    /// Ties at every other position (and all three equal at one), against PyTorch's
    /// `maximum`/`minimum` backward: dY / 2 to each side of a tie. Three inputs: dY / k.
    #[test]
    fn ties_as_pytorch() {
        let a = [0.0, 1.0, -1.0, 2.0, 0.5, 0.5];
        let b = [0.0, 0.0, -1.0, 3.0, 0.5, 0.25];
        for op in ["Max", "Min"] {
            let max = op == "Max";
            check_torch_backward(
                Case::new(op).values(&[6], &a).values(&[6], &b),
                &autograd(move |v| {
                    vec![if max {
                        v[0].maximum(&v[1])
                    } else {
                        v[0].minimum(&v[1])
                    }]
                }),
            );
        }
        // Broadcast ties: b's one value ties with two of a's; its gradient sums both halves.
        check_torch_backward(
            Case::new("Max")
                .values(&[2, 3], &[0.0, 1.0, 0.0, 0.0, -1.0, 2.0])
                .values(&[1], &[0.0]),
            &autograd(|v| vec![v[0].maximum(&v[1])]),
        );
        // Three inputs: PyTorch's max over a stacked axis (amax) splits evenly among ties.
        let c = [0.0, 1.0, -1.0, 1.0, 0.5, 0.1];
        check_torch_backward(
            Case::new("Max")
                .values(&[6], &a)
                .values(&[6], &b)
                .values(&[6], &c),
            &autograd(|v| vec![tch::Tensor::stack(v, 0).amax([0i64].as_slice(), false)]),
        );
    }

    /// A clamp's ties go to x, as PyTorch's `clamp_backward`: x == lo and x == hi.
    #[test]
    fn clamp_ties_as_pytorch() {
        let x = [0.0, 1.0, -1.0, 2.0, 0.5, 0.5];
        let t = [0.0, 0.0, -1.0, 3.0, 0.5, 0.25];
        check_torch_backward(
            clamp(Case::new("Max")).values(&[6], &x).values(&[6], &t),
            &autograd(|v| vec![v[0].clamp_min_tensor(&v[1])]),
        );
        check_torch_backward(
            clamp(Case::new("Min")).values(&[6], &x).values(&[6], &t),
            &autograd(|v| vec![v[0].clamp_max_tensor(&v[1])]),
        );
        // `torch.clamp(x, min=lo)` itself, x below, at and above the bound.
        check_torch_backward(
            clamp(Case::new("Max"))
                .values(&[4], &[0.0, 1.0, 2.0, 3.0])
                .values(&[1], &[1.0]),
            &autograd(|v| vec![v[0].clamp_tensor(Some(&v[1]), None::<&tch::Tensor>)]),
        );
    }
}
