//! Gradients at kinks and ties, against PyTorch's own backward: a one-op [`Case`] whose inputs
//! sit exactly where the op has no derivative (X = 0 at a Relu, on a Clip's bounds, tied maxima
//! in a pooling window, NaN), where finite differences say nothing and the convention is the
//! whole question. The loss is `sum(R * Y)` over output 0 (R fixed, random); three gradients
//! must equal the reference's: probe's gradient graph run by ONNX Runtime (standard ops; with
//! [`Case::probe_cpu`] probe's kernels too, in f32), the op's libtorch forward under libtorch
//! autograd (`--engine torch`), and `reference`, PyTorch's own function (or its backward
//! kernel), which says what PyTorch's backward takes there. [`check_graph_kinks`] does the
//! same for a graph of several nodes that probe's CPU kernels rewrite as a whole (folds,
//! fusions), against PyTorch autograd through the same graph.
use super::testing::{
    host, model_of, node, one_op_graph, run, run_threads, set_outputs, with_loss, Case, FeedF64,
    Rng,
};
use super::torch::{from_proto, Value};
use super::TorchCtx;
use crate::autodiff::grad::{apply_forward_outputs, differentiate_with, Kernels};
use crate::autodiff::shapes::Shapes;
use crate::model::graph::{attr_int, value_info};
use crate::tensor::{DType, HostTensor, Values};
use onnx_protobuf::{GraphProto, NodeProto, TensorProto};
use tch::{Device, Kind, Tensor};

/// PyTorch's gradient of `sum(R * Y)`: given the differentiated float inputs (leaf tensors
/// with `requires_grad`, in input order) and R, their gradients.
pub type Reference<'a> = &'a dyn Fn(&[Tensor], &Tensor) -> Vec<Tensor>;

/// A [`Reference`] by autograd through PyTorch's forward `f`.
pub fn autograd(f: impl Fn(&[Tensor]) -> Tensor) -> impl Fn(&[Tensor], &Tensor) -> Vec<Tensor> {
    move |xs, r| {
        let y = f(xs);
        y.f_mul(r).unwrap().sum(y.kind()).backward();
        xs.iter().map(|x| x.grad()).collect()
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.reshape([-1]).to_kind(Kind::Double)).unwrap()
}

/// The case's gradients by probe, by the op's libtorch forward and by `reference`, compared
/// element by element: equal up to `1e-12` (f64) or `1e-6` (f32) of the largest magnitude, NaN
/// matching NaN.
pub fn check_kinks(case: Case, reference: Reference) {
    let dt = if case.f64 { DType::F64 } else { DType::F32 };
    let kind = if case.f64 { Kind::Double } else { Kind::Float };
    let mut rng = Rng(case.seed);
    let (mut g, floats) = one_op_graph(&case, dt, &mut rng);
    let label = format!("{} at its kinks", case.op);
    set_outputs(&mut g, &["out0".to_string()]);
    let host = |shape: &[usize], v: &[f64]| HostTensor {
        shape: shape.to_vec(),
        dtype: dt,
        // For the observed shapes only (as the gradient check does): f32 values will do.
        values: Values::F32(v.iter().map(|&x| x as f32).collect()),
    };
    let feed: Vec<_> = (floats.iter())
        .map(|f| (f.name.clone(), host(&f.shape, &f.values)))
        .collect();
    let shapes0 = Shapes::observe(&model_of(g.clone(), case.opset), &[feed.clone()]).unwrap();
    let ydims = shapes0.static_dims("out0").unwrap();
    let r: Vec<f64> = (0..ydims.iter().product())
        .map(|_| rng.uniform(-1.0, 1.0))
        .map(|v| if case.f64 { v } else { v as f32 as f64 })
        .collect();

    // The loss sum(R * Y) in the graph.
    let mut rt = TensorProto::new();
    rt.name = "r".into();
    rt.data_type = dt.onnx();
    rt.dims = ydims.iter().map(|&d| d as i64).collect();
    rt.raw_data = match dt {
        DType::F64 => r.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => r.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
    };
    g.initializer.push(rt);
    let node = |op: &str, ins: &[&str], out: &str| {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.input = ins.iter().map(|s| s.to_string()).collect();
        n.output = vec![out.into()];
        n
    };
    g.node.push(node("Mul", &["out0", "r"], "m"));
    let mut s = node("ReduceSum", &["m"], "loss");
    s.attribute = vec![attr_int("keepdims", 0)];
    g.node.push(s);
    set_outputs(&mut g, &["loss".to_string()]);
    let shapes = Shapes::observe(&model_of(g.clone(), case.opset), &[feed]).unwrap();
    let wrt: Vec<String> = (floats.iter().filter(|f| f.wrt))
        .map(|f| f.name.clone())
        .collect();
    let f64_feed: Vec<_> = (floats.iter())
        .map(|f| (f.name.clone(), dt, f.shape.clone(), f.values.clone()))
        .collect();
    let probe =
        |kernels: Kernels| gradients(&label, &g, &shapes, &wrt, &f64_feed, case.opset, kernels).0;

    // The inputs as libtorch tensors, for the op's forward and the reference.
    let mut inputs = Vec::new();
    let mut leaves = Vec::new();
    let mut fl = floats.iter();
    for name in &g.node[0].input {
        if name.is_empty() {
            inputs.push(Value::None);
        } else if let Some(t) = g.initializer.iter().find(|t| &t.name == name) {
            inputs.push(Value::Tensor(from_proto(t, Device::Cpu).unwrap()));
        } else {
            let f = fl.next().unwrap();
            let dims: Vec<i64> = f.shape.iter().map(|&d| d as i64).collect();
            let t = Tensor::from_slice(&f.values).to_kind(kind);
            let t = t.reshape(dims.as_slice()).set_requires_grad(f.wrt);
            if f.wrt {
                leaves.push(t.shallow_clone());
            }
            inputs.push(Value::Tensor(t));
        }
    }
    let rdims: Vec<i64> = ydims.iter().map(|&d| d as i64).collect();
    let rt = Tensor::from_slice(&r)
        .to_kind(kind)
        .reshape(rdims.as_slice());
    let want: Vec<Vec<f64>> = reference(&leaves, &rt).iter().map(values).collect();
    for l in &leaves {
        let _ = l.grad().f_zero_();
    }
    let fwd = super::rule(&case.op).and_then(|r| r.torch).unwrap();
    let y = fwd(&TorchCtx::new(&g.node[0], None, Device::Cpu), inputs).unwrap();
    let y = y.into_iter().next().unwrap().into_tensor().unwrap();
    y.f_mul(&rt).unwrap().sum(kind).backward();
    let torch: Vec<Vec<f64>> = leaves.iter().map(|l| values(&l.grad())).collect();

    let tol = if case.f64 { 1e-12 } else { 1e-6 };
    let compare = |what: &str, got: &[Vec<f64>]| same(&label, what, &wrt, got, &want, tol);
    compare("probe's gradient graph", &probe(Kernels::Standard));
    if case.probe_cpu {
        assert!(!case.f64, "{label}: probe.cpu kernels are f32 only");
        compare("probe's CPU kernels", &probe(Kernels::ProbeCpu));
    }
    compare("the libtorch forward under autograd", &torch);
}

/// The gradients of `g`'s output `loss` with respect to `wrt`, with `kernels`' ops and
/// passes (as `probe grad` builds them), run by ONNX Runtime on 2 threads; and the gradient
/// graph's ops (`domain:op`, or `op` for standard ONNX).
fn gradients(
    label: &str,
    g: &GraphProto,
    shapes: &Shapes,
    wrt: &[String],
    feed: &FeedF64,
    opset: i64,
    kernels: Kernels,
) -> (Vec<Vec<f64>>, Vec<String>) {
    let (mut gg, mut shapes) = (g.clone(), shapes.clone());
    crate::autodiff::passes::before_differentiation(&mut gg, &mut shapes, wrt, kernels);
    let diff = differentiate_with(&gg, &shapes, "loss", wrt, kernels)
        .unwrap_or_else(|e| panic!("{label}: {e:#}"));
    apply_forward_outputs(&mut gg, &diff.forward_outputs);
    gg.node.extend(diff.nodes.clone());
    let names: Vec<String> = diff.grads.iter().map(|(_, n)| n.clone()).collect();
    set_outputs(&mut gg, &names);
    crate::autodiff::passes::after_differentiation(&mut gg, &mut shapes, wrt, kernels);
    let ops = (gg.node.iter())
        .map(|n| match n.domain.as_str() {
            "" => n.op_type.clone(),
            d => format!("{d}:{}", n.op_type),
        })
        .collect();
    (run_threads(&model_of(gg, opset), feed, &names, 2), ops)
}

/// `got` against `want`, input by input, element by element: equal up to `tol` of the largest
/// finite magnitude of `want`'s (at least 1), NaN matching NaN.
fn same(label: &str, what: &str, wrt: &[String], got: &[Vec<f64>], want: &[Vec<f64>], tol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{label}: {what}, one gradient per input"
    );
    for (wi, (a, b)) in got.iter().zip(want).enumerate() {
        assert_eq!(a.len(), b.len(), "{label}: {what}, input {}", wrt[wi]);
        let scale = (b.iter())
            .filter(|v| v.is_finite())
            .fold(1.0f64, |m, v| m.max(v.abs()));
        for (j, (x, y)) in a.iter().zip(b).enumerate() {
            let same = (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol * scale;
            assert!(
                same,
                "{label}: {what} gives {x} for input {} element {j}, PyTorch's backward {y}",
                wrt[wi]
            );
        }
    }
}

/// [`check_kinks`] for a graph of several nodes, where a pass of probe's CPU kernels rewrites
/// the pattern the kink sits in (a BatchNormalization folded into its Conv, a Relu fused into
/// the node before it), so the one-op cases do not see what the rewritten graph does there.
/// `inputs` (name, shape, values) are f32 graph inputs, all differentiated; constants are the
/// graph's own (Constant nodes). `forward` is PyTorch's forward of the same graph, from the
/// inputs (f64 leaf tensors, in order) to `outputs` (in order). The loss is
/// `sum_k <R_k, Y_k>`, R random; probe's gradients, with standard ops and with probe's CPU
/// kernels, must equal PyTorch autograd's in f64 to 1e-5 of each input's largest magnitude (or
/// of 1; the graph runs in f32): a kink taken the other way gives a whole R there, far above.
/// The probe.cpu graph must contain each of `expect` (`domain:op`), so that the check fails when
/// the rewrite it is about stops firing.
pub fn check_graph_kinks(
    label: &str,
    mut g: GraphProto,
    inputs: &[(&str, &[usize], &[f64])],
    outputs: &[&str],
    forward: &dyn Fn(&[Tensor]) -> Vec<Tensor>,
    expect: &[&str],
) {
    let opset = 20;
    let mut rng = Rng(7);
    let mut feed: FeedF64 = Vec::new();
    for (name, shape, v) in inputs {
        assert_eq!(v.len(), shape.iter().product::<usize>(), "{label}: {name}");
        let dims: Vec<Option<i64>> = shape.iter().map(|&d| Some(d as i64)).collect();
        g.input.push(value_info(name, DType::F32, &dims, "N"));
        let v32: Vec<f64> = v.iter().map(|&x| x as f32 as f64).collect();
        feed.push((name.to_string(), DType::F32, shape.to_vec(), v32));
    }
    let outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
    set_outputs(&mut g, &outputs);
    let lg = with_loss(g, &feed, &outputs, &mut rng, opset);
    assert_eq!(
        lg.float_outputs, outputs,
        "{label}: every output is a float in the loss"
    );
    let wrt: Vec<String> = feed.iter().map(|f| f.0.clone()).collect();

    let leaves: Vec<Tensor> = (feed.iter())
        .map(|(_, _, shape, v)| {
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let t = Tensor::from_slice(v).reshape(dims.as_slice());
            t.set_requires_grad(true)
        })
        .collect();
    let ys = forward(&leaves);
    assert_eq!(
        ys.len(),
        outputs.len(),
        "{label}: one PyTorch output per output"
    );
    let loss = (ys.iter().zip(&lg.r))
        .map(|(y, (shape, r))| {
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            assert_eq!(y.size(), dims, "{label}: PyTorch's output shape");
            (y * Tensor::from_slice(r).reshape(dims.as_slice())).sum(Kind::Double)
        })
        .reduce(|a, b| a + b)
        .unwrap();
    let refs: Vec<&Tensor> = leaves.iter().collect();
    let want: Vec<Vec<f64>> = Tensor::run_backward(&[loss], &refs, false, false)
        .iter()
        .map(values)
        .collect();
    for kernels in [Kernels::Standard, Kernels::ProbeCpu] {
        let (got, ops) = gradients(label, &lg.g, &lg.shapes, &wrt, &feed, opset, kernels);
        if kernels == Kernels::ProbeCpu {
            for op in expect {
                assert!(ops.iter().any(|o| o == op), "{label}: no {op} in {ops:?}");
            }
        }
        let what = format!("probe's gradient graph ({kernels:?})");
        same(label, &what, &wrt, &got, &want, 1e-5);
    }
}

/// The gradient graph's dL/d(in0) for `L = sum(out0 * w)`, `w` given (shaped like out0), the
/// case's one node first edited by `edit` (metadata, say), run by ONNX Runtime in f64 (f32
/// for a case marked [`Case::f32`]). For
/// checks against a known gradient where finite differences do not apply (ties, kinks) or
/// against another implementation's backward (libtorch's).
pub fn gradient_for(case: &Case, w: &[f64], edit: impl FnOnce(&mut NodeProto)) -> Vec<f64> {
    let mut rng = Rng(case.seed);
    let dt = if case.f64 { DType::F64 } else { DType::F32 };
    let (mut g, floats) = one_op_graph(case, dt, &mut rng);
    edit(&mut g.node[0]);
    let feed: FeedF64 = (floats.iter())
        .map(|f| (f.name.clone(), dt, f.shape.clone(), f.values.clone()))
        .collect();
    let host_feed: Vec<(String, HostTensor)> = (feed.iter())
        .map(|(n, dt, s, v)| (n.clone(), host(*dt, s, v)))
        .collect();
    let out_shape = Shapes::observe(
        &model_of(with_outputs(&g, &["out0"]), case.opset),
        &[host_feed.clone()],
    )
    .expect("forward graph runs")
    .static_dims("out0")
    .expect("out0 has a static shape");
    let mut t = TensorProto::new();
    t.name = "w".into();
    t.data_type = dt.onnx();
    t.dims = out_shape.iter().map(|&d| d as i64).collect();
    assert_eq!(
        w.len(),
        out_shape.iter().product::<usize>(),
        "w is shaped like out0"
    );
    t.raw_data = match dt {
        DType::F64 => w.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => w.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
    };
    g.initializer.push(t);
    g.node.push(node("Mul", &["out0", "w"], "m"));
    let mut sum = node("ReduceSum", &["m"], "loss");
    sum.attribute
        .push(crate::model::graph::attr_int("keepdims", 0));
    g.node.push(sum);
    let g = with_outputs(&g, &["loss"]);
    let shapes = Shapes::observe(&model_of(g.clone(), case.opset), &[host_feed]).unwrap();
    let wrt = [floats[0].name.clone()];
    let diff = differentiate_with(&g, &shapes, "loss", &wrt, Kernels::Standard).unwrap();
    let mut g = g;
    apply_forward_outputs(&mut g, &diff.forward_outputs);
    g.node.extend(diff.nodes);
    let gname = diff.grads[0].1.clone();
    set_outputs(&mut g, std::slice::from_ref(&gname));
    run(&model_of(g, case.opset), &feed, &[gname]).remove(0)
}

fn with_outputs(g: &GraphProto, names: &[&str]) -> GraphProto {
    let mut g = g.clone();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    set_outputs(&mut g, &names);
    g
}
