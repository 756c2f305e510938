//! Erf (opset 13): `Y = erf(X)`. https://onnx.ai/onnx/operators/onnx__Erf.html
//!
//! d erf(x) = 2 / sqrt(pi) * exp(-x^2).
use super::rule::{Ctx, Kind, Rule};
use super::unary;
use anyhow::Result;
use tch::Tensor;

pub static RULE: Rule = Rule::new("Erf", Kind::Elementwise)
    .vjp(|c| unary::chain(c, d))
    .torch(|_, v| unary::torch(v, Tensor::f_erf));

/// d erf = 2/sqrt(pi) exp(-x^2).
fn d(c: &mut Ctx, x: &str, _: &str) -> Result<String> {
    let x2 = c.op("Mul", &[x, x], vec![]);
    let nx2 = c.op("Neg", &[&x2], vec![]);
    let e = c.op("Exp", &[&nx2], vec![]);
    let k = c.scalar(2.0 / std::f64::consts::PI.sqrt(), x)?;
    Ok(c.op("Mul", &[&k, &e], vec![]))
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::autodiff::grad::{apply_forward_outputs, differentiate};
    use crate::model::graph::{attr_int, value_info};
    use crate::ops::rule::Shapes;
    use crate::ops::testing::{check, Case};
    use crate::tensor::{DType, HostTensor};
    use onnx_protobuf::{AttributeProto, GraphProto, NodeProto};

    /// d op(x)/dx at each of `xs` from our rule, for a unary op ONNX Runtime runs only in f32:
    /// the gradient graph of `sum(op(x))`, run by ONNX Runtime. `check`'s f32 tolerance (2e-2)
    /// cannot tell close formulas apart (exact vs tanh Gelu differ by < 1e-3); this, compared
    /// with a libtorch f64 reference, can.
    pub(crate) fn rule_derivative_f32(
        op: &str,
        attrs: Vec<AttributeProto>,
        xs: &[f32],
    ) -> Vec<f64> {
        let n = xs.len();
        let mut g = GraphProto::new();
        g.input
            .push(value_info("x", DType::F32, &[Some(n as i64)], "N"));
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.name = "op".into();
        node.input = vec!["x".into()];
        node.output = vec!["y".into()];
        node.attribute = attrs;
        let mut sum = NodeProto::new();
        sum.op_type = "ReduceSum".into();
        sum.input = vec!["y".into()];
        sum.output = vec!["loss".into()];
        sum.attribute = vec![attr_int("keepdims", 0)];
        g.node = vec![node, sum];
        let mut lo = onnx_protobuf::ValueInfoProto::new();
        lo.name = "loss".into();
        g.output.push(lo);
        let model = |g: GraphProto| crate::ops::testing::model_of(g, 20);
        let feed = vec![("x".to_string(), HostTensor::f32(vec![n], xs.to_vec()))];
        let shapes = Shapes::observe(&model(g.clone()), &[feed]).unwrap();
        let diff = differentiate(&g, &shapes, "loss", &["x".to_string()]).unwrap();
        apply_forward_outputs(&mut g, &diff.forward_outputs);
        g.node.extend(diff.nodes);
        let gname = diff.grads[0].1.clone();
        let mut gv = onnx_protobuf::ValueInfoProto::new();
        gv.name = gname.clone();
        g.output.push(gv);
        let bytes = protobuf::Message::write_to_bytes(&model(g)).unwrap();
        let mut s = crate::runtime::session(&bytes, 1, "test").unwrap();
        let x = ort::value::Tensor::from_array((vec![n as i64], xs.to_vec())).unwrap();
        let out = s.run(ort::inputs!["x" => x]).unwrap();
        let a = out[gname.as_str()].try_extract_array::<f32>().unwrap();
        a.iter().map(|&v| v as f64).collect()
    }

    /// Evenly spaced points in [lo, hi], as f32.
    pub(crate) fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
            .collect()
    }

    /// libtorch autograd's derivative of `f` at `xs`, in f64.
    pub(crate) fn torch_derivative(
        xs: &[f32],
        f: impl Fn(&tch::Tensor) -> tch::Tensor,
    ) -> Vec<f64> {
        let x64: Vec<f64> = xs.iter().map(|&v| v as f64).collect();
        let x = tch::Tensor::from_slice(&x64).set_requires_grad(true);
        f(&x).sum(tch::Kind::Double).backward();
        Vec::<f64>::try_from(x.grad()).unwrap()
    }

    pub(crate) fn assert_close(label: &str, ours: &[f64], reference: &[f64], tol: f64) {
        for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
            assert!(
                (a - b).abs() <= tol,
                "{label}: element {i}: rule {a} vs libtorch {b} (tolerance {tol:e})"
            );
        }
    }

    fn erf_cases(check: fn(Case)) {
        check(Case::new("Erf").input_in(&[2, 3], -2.0, 2.0).f32());
    }
    #[test]
    fn torch_forward() {
        erf_cases(crate::ops::torch_testing::check_torch);
    }
    #[test]
    fn erf() {
        // ONNX Runtime has no f64 Erf kernel: f32 finite differences, then a tighter comparison
        // with libtorch.
        erf_cases(check);
        let xs = grid(-3.0, 3.0, 61);
        let ours = rule_derivative_f32("Erf", vec![], &xs);
        let reference = torch_derivative(&xs, |x| x.erf());
        assert_close("Erf", &ours, &reference, 1e-5);
    }
}
