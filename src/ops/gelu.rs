//! Gelu (opset 20): `Y = X * Phi(X)`, attribute `approximate` = "none" (default) | "tanh".
//! https://onnx.ai/onnx/operators/onnx__Gelu.html
//!
//! Exact: dY/dX = Phi(x) + x phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2)),
//! phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
//! Tanh: Y = 0.5 x (1 + t), t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3), so
//! dY/dX = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
//! With probe's CPU kernels (f32) one `probe.cpu:GeluGrad` node (libtorch's gelu_backward).
use super::attrs::Attrs;
use super::rule::{constants, Ctx, Kernels, Kind, Rule, Shapes, Stage};
use super::torch::{input, one, TorchCtx, Value};
use crate::model::graph::attr_string;
use crate::model::graph::{remove_nodes, Uses};
use crate::ops::rule::kernels::GELU_GRAD;
use crate::tensor::DType;
use anyhow::{bail, Result};
use onnx_protobuf::GraphProto;
use std::collections::HashSet;
use std::f64::consts::{FRAC_1_SQRT_2, PI};

pub static RULE: Rule = Rule::new("Gelu", Kind::Elementwise)
    .vjp(vjp)
    .torch(torch)
    .rewrite(Stage::Forward, |g, s, _| {
        fuse_tanh_form(g, s);
    });

/// On `probe grad`'s fast path, before differentiation: GELU's tanh approximation written out
/// op by op, as Hugging Face's `NewGELUActivation` (GPT-2's MLP) exports,
///
/// `Mul(Mul(X, 0.5), Add(Tanh(Mul(Add(X, Mul(Pow(X, 3), 0.044715)), sqrt(2/pi))), 1))`
///
/// (each product and sum in either operand order), becomes one `Gelu(X, approximate =
/// "tanh")`, the same function: eight passes over the MLP's widest activation forward and
/// ~14 backward become one each (libtorch's gelu_backward, `probe.cpu:GeluGrad`). The
/// constants must match to f32 precision and every intermediate value have its one reader in
/// the pattern. Returns how many were fused.
pub fn fuse_tanh_form(graph: &mut GraphProto, shapes: &Shapes) -> usize {
    let uses = Uses::of(graph);
    let consts = constants(graph, &HashSet::new(), shapes);
    let scalar = |v: &str| -> Option<f64> {
        let h = crate::model::decode_tensor(consts.get(v)?).ok()?;
        if h.numel() != 1 {
            return None;
        }
        h.as_f32()
            .map(|x| x[0] as f64)
            .or_else(|| h.as_i64().map(|x| x[0] as f64))
    };
    let near =
        |v: &str, want: f64| scalar(v).is_some_and(|x| (x - want).abs() <= 1e-6 * want.abs());
    // The producer of `v` if it is `op` (standard domain) and `v` is read by `reader` alone.
    let made_by = |v: &str, op: &str, reader: usize| -> Option<usize> {
        let p = uses.sole_producer(v, reader)?;
        let n = &graph.node[p];
        (n.op_type == op && n.domain.is_empty()).then_some(p)
    };
    // Of a binary node, (the operand that is not the constant `c`, the other) in either order.
    let with_const = |k: usize, c: f64| -> Option<String> {
        let n = &graph.node[k];
        if n.input.len() != 2 {
            return None;
        }
        [(0, 1), (1, 0)]
            .into_iter()
            .find(|&(_, j)| near(&n.input[j], c))
            .map(|(i, _)| n.input[i].clone())
    };
    let sqrt_2_pi = (2.0 / std::f64::consts::PI).sqrt();
    let mut fused: Vec<(usize, Vec<usize>, String)> = vec![];
    for (k, y) in graph.node.iter().enumerate() {
        if y.op_type != "Mul" || !y.domain.is_empty() || y.input.len() != 2 {
            continue;
        }
        let found = [(0, 1), (1, 0)].into_iter().find_map(|(ai, ui)| {
            let half = made_by(&y.input[ai], "Mul", k)?;
            let x = with_const(half, 0.5)?;
            let plus1 = made_by(&y.input[ui], "Add", k)?;
            let th = made_by(&with_const(plus1, 1.0)?, "Tanh", plus1)?;
            let scaled = made_by(&graph.node[th].input[0], "Mul", th)?;
            let inner = made_by(&with_const(scaled, sqrt_2_pi)?, "Add", scaled)?;
            let n = &graph.node[inner];
            let cubic = [(0, 1), (1, 0)].into_iter().find_map(|(xi, ci)| {
                (n.input[xi] == x).then_some(())?;
                let c = made_by(&n.input[ci], "Mul", inner)?;
                let p = made_by(&with_const(c, 0.044715)?, "Pow", c)?;
                let pn = &graph.node[p];
                (pn.input.len() == 2 && pn.input[0] == x && near(&pn.input[1], 3.0))
                    .then_some((c, p))
            })?;
            let f32_x = shapes.dtype(&x) == Some(DType::F32);
            f32_x.then(|| (vec![half, plus1, th, scaled, inner, cubic.0, cubic.1], x))
        });
        if let Some((nodes, x)) = found {
            fused.push((k, nodes, x));
        }
    }
    let count = fused.len();
    let mut drop = HashSet::new();
    for (k, nodes, x) in fused {
        let y = &mut graph.node[k];
        y.op_type = "Gelu".into();
        y.input = vec![x];
        y.attribute = vec![attr_string("approximate", "tanh")];
        drop.extend(nodes);
    }
    remove_nodes(&mut graph.node, |i| drop.contains(&i));
    count
}

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let approximate = c.attr_s("approximate").unwrap_or_else(|| "none".into());
    if approximate != "none" && approximate != "tanh" {
        bail!("Gelu: unknown approximate = \"{approximate}\"");
    }
    one(input(&v, 0)?.f_gelu(&approximate)?)
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let x = c.input(0).to_string();
    let approximate = c.attr_s("approximate").unwrap_or_else(|| "none".into());
    if approximate != "none" && approximate != "tanh" {
        bail!("Gelu: unknown approximate = \"{approximate}\"");
    }
    if c.kernels == Kernels::ProbeCpu && c.dtype(&x)? == DType::F32 {
        // One pass (libtorch's gelu_backward) instead of eleven; runtime/cpu_ops.
        let attrs = vec![attr_string("approximate", &approximate)];
        let gx = c
            .probe_cpu_op(GELU_GRAD, &[&g, &x], attrs, 1)
            .pop()
            .unwrap();
        c.set(0, gx);
        return Ok(());
    }
    let d = if approximate == "tanh" {
        tanh(c, &x)?
    } else {
        exact(c, &x)?
    };
    let gx = c.op("Mul", &[&g, &d], vec![]);
    c.set(0, gx);
    Ok(())
}

/// Phi(x) + x phi(x).
fn exact(c: &mut Ctx, x: &str) -> Result<String> {
    let r2 = c.scalar(FRAC_1_SQRT_2, x)?;
    let xs = c.op("Mul", &[x, &r2], vec![]);
    let erf = c.op("Erf", &[&xs], vec![]);
    let one = c.scalar(1.0, x)?;
    let half = c.scalar(0.5, x)?;
    let s = c.op("Add", &[&one, &erf], vec![]);
    let cdf = c.op("Mul", &[&half, &s], vec![]);
    let x2 = c.op("Mul", &[x, x], vec![]);
    let mhalf = c.scalar(-0.5, x)?;
    let e = c.op("Mul", &[&mhalf, &x2], vec![]);
    let e = c.op("Exp", &[&e], vec![]);
    let k = c.scalar(1.0 / (2.0 * PI).sqrt(), x)?;
    let pdf = c.op("Mul", &[&k, &e], vec![]);
    let xpdf = c.op("Mul", &[x, &pdf], vec![]);
    Ok(c.op("Add", &[&cdf, &xpdf], vec![]))
}

/// 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3a x^2), a = 0.044715.
fn tanh(c: &mut Ctx, x: &str) -> Result<String> {
    const A: f64 = 0.044715;
    let k = (2.0 / PI).sqrt();
    let x2 = c.op("Mul", &[x, x], vec![]);
    let x3 = c.op("Mul", &[&x2, x], vec![]);
    let a = c.scalar(A, x)?;
    let ax3 = c.op("Mul", &[&a, &x3], vec![]);
    let inner = c.op("Add", &[x, &ax3], vec![]);
    let kk = c.scalar(k, x)?;
    let u = c.op("Mul", &[&kk, &inner], vec![]);
    let t = c.op("Tanh", &[&u], vec![]);
    let one = c.scalar(1.0, x)?;
    let half = c.scalar(0.5, x)?;
    let opt = c.op("Add", &[&one, &t], vec![]);
    let first = c.op("Mul", &[&half, &opt], vec![]);
    let t2 = c.op("Mul", &[&t, &t], vec![]);
    let sech2 = c.op("Sub", &[&one, &t2], vec![]);
    let a3 = c.scalar(3.0 * A, x)?;
    let a3x2 = c.op("Mul", &[&a3, &x2], vec![]);
    let du = c.op("Add", &[&one, &a3x2], vec![]);
    let du = c.op("Mul", &[&kk, &du], vec![]);
    let hx = c.op("Mul", &[&half, x], vec![]);
    let second = c.op("Mul", &[&hx, &sech2], vec![]);
    let second = c.op("Mul", &[&second, &du], vec![]);
    Ok(c.op("Add", &[&first, &second], vec![]))
}

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_string;
    use crate::ops::erf::tests::{assert_close, grid, rule_derivative_f32, torch_derivative};
    use crate::ops::testing::{check, Case};
    fn exact_cases(check: fn(Case)) {
        check(Case::new("Gelu").input_in(&[2, 3, 4], -3.0, 3.0).f32());
    }
    fn tanh_cases(check: fn(Case)) {
        check(
            Case::new("Gelu")
                .input_in(&[3, 4], -3.0, 3.0)
                .attr(attr_string("approximate", "tanh")),
        );
    }
    #[test]
    fn probe_cpu_kernel() {
        check(
            Case::new("Gelu")
                .input_in(&[2, 3, 4], -3.0, 3.0)
                .f32()
                .probe_cpu(),
        );
        check(
            Case::new("Gelu")
                .input_in(&[3, 4], -3.0, 3.0)
                .attr(attr_string("approximate", "tanh"))
                .f32()
                .probe_cpu(),
        );
    }
    #[test]
    fn torch_forward() {
        exact_cases(crate::ops::torch_testing::check_torch);
        tanh_cases(crate::ops::torch_testing::check_torch);
        // On a grid, where the two forms differ by up to 8.7e-4.
        let xs = grid(-4.0, 4.0, 81);
        let xs: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
        crate::ops::torch_testing::check_torch(Case::new("Gelu").values(&[81], &xs));
        crate::ops::torch_testing::check_torch(
            Case::new("Gelu")
                .values(&[81], &xs)
                .attr(attr_string("approximate", "tanh")),
        );
    }
    #[test]
    fn gelu_exact() {
        // The exact form needs Erf, which ONNX Runtime runs only in f32: f32 finite differences,
        // then libtorch's derivative at a tolerance that separates the two forms (they differ by
        // up to 8.7e-4).
        exact_cases(check);
        let xs = grid(-4.0, 4.0, 81);
        let reference = torch_derivative(&xs, |x| x.gelu("none"));
        let ours = rule_derivative_f32("Gelu", vec![], &xs);
        assert_close("Gelu", &ours, &reference, 1e-5);
        let ours = rule_derivative_f32("Gelu", vec![attr_string("approximate", "none")], &xs);
        assert_close("Gelu none", &ours, &reference, 1e-5);
    }
    #[test]
    fn gelu_tanh() {
        tanh_cases(check);
        let xs = grid(-4.0, 4.0, 81);
        let reference = torch_derivative(&xs, |x| x.gelu("tanh"));
        let ours = rule_derivative_f32("Gelu", vec![attr_string("approximate", "tanh")], &xs);
        assert_close("Gelu tanh", &ours, &reference, 1e-5);
    }
}

/// [`fuse_tanh_form`]: NewGELUActivation's export differentiated with probe's kernels is held
/// to the op-by-op gradient (standard ops) and to finite differences, and becomes one Gelu; a
/// constant off by more than f32 precision, or an intermediate value read elsewhere, is left.
#[cfg(test)]
mod fusion_tests {
    use crate::autodiff::grad::Kernels;
    use crate::model::graph::{tensor_f32, Builder};
    use crate::ops::testing::check_graph_with;
    use onnx_protobuf::GraphProto;

    /// The exported form with tanh's scale `k`; `tap`: the cubic term also a graph output.
    fn new_gelu(k: f32, tap: bool) -> (GraphProto, Vec<String>) {
        let mut g = GraphProto::new();
        for (name, v) in [
            ("half", 0.5f32),
            ("three", 3.0),
            ("c", 0.044715),
            ("k", k),
            ("one", 1.0),
        ] {
            g.initializer.push(tensor_f32(name, &[], &[v]));
        }
        let mut b = Builder::new("t");
        let a = b.op("Mul", &["x", "half"], vec![]);
        let p = b.op("Pow", &["x", "three"], vec![]);
        let c = b.op("Mul", &[&p, "c"], vec![]);
        let s = b.op("Add", &["x", &c], vec![]);
        let t = b.op("Mul", &[&s, "k"], vec![]);
        let th = b.op("Tanh", &[&t], vec![]);
        let u = b.op("Add", &[&th, "one"], vec![]);
        let y = b.op("Mul", &[&a, &u], vec![]);
        g.node = b.nodes;
        let mut outs = vec![y];
        if tap {
            outs.push(c);
        }
        (g, outs)
    }

    #[test]
    fn new_gelu_export_is_one_gelu_with_the_same_gradient() {
        let (g, outs) = new_gelu((2.0 / std::f64::consts::PI).sqrt() as f32, false);
        let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
        // f32 (the constants are f32 initializers, as exported); the check also runs the
        // standard-op gradient of the unfused graph and holds the two together.
        check_graph_with(
            "new gelu",
            g,
            &[("x", &[4, 37])],
            &outs,
            5,
            Kernels::ProbeCpu,
        );
    }

    #[test]
    fn fuses_only_the_exact_pattern() {
        use crate::autodiff::shapes::Shapes;
        use crate::ops::rule::Info;
        use crate::tensor::DType;
        let mut shapes = Shapes::default();
        shapes.map.insert(
            "x".into(),
            Info {
                dtype: DType::F32,
                dims: vec![Some(3)],
            },
        );
        let sqrt_2_pi = (2.0 / std::f64::consts::PI).sqrt() as f32;
        let (mut g, _) = new_gelu(sqrt_2_pi, false);
        assert_eq!(super::fuse_tanh_form(&mut g, &shapes), 1);
        assert_eq!(g.node.len(), 1);
        assert_eq!(
            (g.node[0].op_type.as_str(), &g.node[0].input[..]),
            ("Gelu", &["x".to_string()][..])
        );
        let (mut off, _) = new_gelu(0.79, false);
        assert_eq!(super::fuse_tanh_form(&mut off, &shapes), 0);
        let (mut tapped, outs) = new_gelu(sqrt_2_pi, true);
        tapped.output.push(crate::model::graph::value_info(
            &outs[1],
            DType::F32,
            &[],
            "N",
        ));
        assert_eq!(super::fuse_tanh_form(&mut tapped, &shapes), 0);
    }
}
