//! The one check every libtorch forward is tested with (`check_torch`): the one-op graph of a
//! [`Case`] (the same cases the gradient rule is checked on), run by ONNX Runtime and by the op's
//! `torch` forward on the same random inputs, in f32. Every output the node names is compared:
//! element type, shape, and values (floats to 1e-5 of the output's largest magnitude, integers
//! and booleans exactly). `check_torch_graph` does the same for a graph of several nodes
//! (sequence ops), walking its nodes in order with the ops' forwards.
use super::testing::{model_of, one_op_graph, random_inputs, set_outputs, Case, FloatInput, Rng};
use super::torch::{from_proto, Value};
use super::TorchCtx;
use crate::tensor::DType;
use onnx_protobuf::{GraphProto, ModelProto};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Relative tolerance for float outputs (of the output's largest magnitude).
const TOL: f64 = 1e-5;

type Feed = Vec<(String, Vec<usize>, Vec<f32>)>;

/// An output as ONNX Runtime or libtorch produced it, for comparison.
#[derive(Debug)]
struct Out {
    /// The ONNX element type.
    dtype: DType,
    shape: Vec<usize>,
    values: Vec<f64>,
}

fn ort_outputs(proto: &ModelProto, feed: &Feed, names: &[String]) -> Vec<Out> {
    // Tensors are built before the session: load probe's ONNX Runtime first, or ort dlopens a
    // default library name when this is the process's first use of it.
    crate::runtime::environment().unwrap();
    let values: Vec<(String, ort::value::DynValue)> = feed
        .iter()
        .map(|(n, shape, v)| {
            let shp: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let t = ort::value::Tensor::from_array((shp, v.clone())).unwrap();
            (n.clone(), t.into_dyn())
        })
        .collect();
    super::testing::ort_run(proto, 1, values, names, |name, v| {
        macro_rules! get {
            ($t:ty, $dt:expr, $conv:expr) => {
                if let Ok(a) = v.try_extract_array::<$t>() {
                    return Out {
                        dtype: $dt,
                        shape: a.shape().to_vec(),
                        values: a.iter().map($conv).collect(),
                    };
                }
            };
        }
        get!(f32, DType::F32, |&x| x as f64);
        get!(f64, DType::F64, |&x| x);
        get!(i64, DType::I64, |&x| x as f64);
        get!(i32, DType::I32, |&x| x as f64);
        get!(bool, DType::Bool, |&x| x as u8 as f64);
        get!(u8, DType::U8, |&x| x as f64);
        panic!("output {name}: element type {:?} not handled", v.dtype())
    })
}

fn torch_out(t: &Tensor) -> Out {
    let dtype = match t.kind() {
        Kind::Float => DType::F32,
        Kind::Double => DType::F64,
        Kind::Int64 => DType::I64,
        Kind::Int => DType::I32,
        Kind::Bool => DType::Bool,
        Kind::Uint8 => DType::U8,
        k => panic!("libtorch output of kind {k:?} not handled"),
    };
    let flat = t.reshape([-1]).to_kind(Kind::Double);
    Out {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        values: Vec::<f64>::try_from(&flat).unwrap(),
    }
}

/// Runs `graph`'s nodes in order with their torch forwards; returns the named values.
fn torch_run(graph: &GraphProto, feed: &Feed, names: &[String]) -> Vec<Value> {
    let mut values: HashMap<String, Value> = HashMap::new();
    for t in &graph.initializer {
        values.insert(
            t.name.clone(),
            Value::Tensor(from_proto(t, Device::Cpu).unwrap()),
        );
    }
    for (n, shape, v) in feed {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        values.insert(
            n.clone(),
            Value::Tensor(Tensor::from_slice(v).reshape(dims.as_slice())),
        );
    }
    for node in &graph.node {
        let rule = super::rule(&node.op_type)
            .unwrap_or_else(|| panic!("{} is not registered", node.op_type));
        let fwd = rule
            .torch
            .unwrap_or_else(|| panic!("{} has no torch forward", node.op_type));
        let inputs: Vec<Value> = node
            .input
            .iter()
            .map(|i| {
                if i.is_empty() {
                    Value::None
                } else {
                    values
                        .get(i)
                        .unwrap_or_else(|| panic!("no value '{i}'"))
                        .shallow_clone()
                }
            })
            .collect();
        let ctx = TorchCtx::new(node, None, Device::Cpu);
        let outs = fwd(&ctx, inputs)
            .unwrap_or_else(|e| panic!("torch forward of {}: {e:#}", node.op_type));
        for (name, v) in node.output.iter().zip(outs) {
            if !name.is_empty() {
                values.insert(name.clone(), v);
            }
        }
    }
    names
        .iter()
        .map(|n| {
            values
                .remove(n)
                .unwrap_or_else(|| panic!("the torch forward gave no output '{n}'"))
        })
        .collect()
}

fn compare(label: &str, name: &str, ours: &Out, reference: &Out) {
    assert_eq!(
        ours.dtype, reference.dtype,
        "{label} output {name}: element type {} from libtorch, {} from ONNX Runtime",
        ours.dtype, reference.dtype
    );
    assert_eq!(
        ours.shape, reference.shape,
        "{label} output {name}: shape {:?} from libtorch, {:?} from ONNX Runtime",
        ours.shape, reference.shape
    );
    let exact = !reference.dtype.is_float();
    let scale = reference
        .values
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    let mut worst = (0.0f64, 0usize);
    for (j, (a, b)) in ours.values.iter().zip(&reference.values).enumerate() {
        let same = a == b || (a.is_nan() && b.is_nan());
        if exact || !b.is_finite() {
            assert!(
                same,
                "{label} output {name}: element {j} is {a} from libtorch, {b} from ONNX Runtime"
            );
            continue;
        }
        let err = (a - b).abs() / scale.max(f64::MIN_POSITIVE);
        // NaN against a number counts as the worst.
        if !same && (err > worst.0 || err.is_nan()) {
            worst = (err, j);
        }
    }
    assert!(
        worst.0 <= TOL,
        "{label} output {name}: element {} is {} from libtorch, {} from ONNX Runtime (error {:.2e} of the largest magnitude {scale:.3e} > {TOL:.0e})",
        worst.1,
        ours.values[worst.1],
        reference.values[worst.1],
        worst.0
    );
}

/// Runs `graph` by ONNX Runtime and by the torch forwards; compares the `outputs`.
fn verify(label: &str, mut graph: GraphProto, feed: Feed, outputs: &[String], opset: i64) {
    set_outputs(&mut graph, outputs);
    let reference = ort_outputs(&model_of(graph.clone(), opset), &feed, outputs);
    let ours = torch_run(&graph, &feed, outputs);
    for ((name, o), r) in outputs.iter().zip(&ours).zip(&reference) {
        let t = o
            .tensor()
            .unwrap_or_else(|| panic!("{label} output {name} is not a tensor"));
        compare(label, name, &torch_out(t), r);
    }
}

/// The case's one-op graph by ONNX Runtime and by the op's torch forward, inputs in f32.
pub fn check_torch(case: Case) {
    check_torch_except(case, &[])
}

/// [`check_torch`] leaving out the outputs `skip`, where the forward differs from ONNX by
/// design (say why at the call).
pub fn check_torch_except(case: Case, skip: &[usize]) {
    let mut rng = Rng(case.seed);
    let (g, floats) = one_op_graph(&case, DType::F32, &mut rng);
    let outputs: Vec<String> = (0..case.outputs)
        .filter(|k| !skip.contains(k))
        .map(|k| format!("out{k}"))
        .collect();
    verify(&case.op, g, f32_feed(floats), &outputs, case.opset);
}

/// [`check_torch`] for a graph of several nodes (as [`super::testing::check_graph_with`] takes it):
/// each of `inputs` is an f32 graph input with random values in [-1, 1]; opset 20.
pub fn check_torch_graph(
    label: &str,
    graph: GraphProto,
    inputs: &[(&str, &[usize])],
    outputs: &[&str],
    seed: u64,
) {
    let mut rng = Rng(seed);
    let mut g = graph;
    let floats = random_inputs(&mut g, inputs, DType::F32, &mut rng);
    let outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
    verify(label, g, f32_feed(floats), &outputs, 20);
}

/// The float inputs' values in f32, as both sides of the comparison take them.
fn f32_feed(floats: Vec<FloatInput>) -> Feed {
    (floats.into_iter())
        .map(|f| {
            (
                f.name,
                f.shape,
                f.values.iter().map(|&x| x as f32).collect(),
            )
        })
        .collect()
}

/// PyTorch's own backward for a case: from the case's float inputs (libtorch tensors of the
/// case's element type, the differentiated ones requiring grad) and the loss's `R_k`, the
/// gradients of `L = sum_k <R_k, Y_k>` for the differentiated inputs, in order.
pub type Backward<'a> = &'a dyn Fn(&[Tensor], &[Tensor]) -> Vec<Tensor>;

/// The rule's gradient (standard ops, run by ONNX Runtime, f64 unless the case is f32) against
/// PyTorch's backward on the same inputs: where a derivative has kinks or ties (inputs exactly
/// at a bound, equal operands), finite differences cannot say which one-sided value PyTorch
/// takes, this can. Within 1e-10 (f64) or 1e-5 (f32) of the gradient's largest magnitude.
pub fn check_torch_backward(case: Case, reference: Backward) {
    let (floats, lg, ours) = super::testing::rule_gradients(&case);
    let kind = if case.f64 { Kind::Double } else { Kind::Float };
    let inputs: Vec<Tensor> = (floats.iter())
        .map(|f| {
            let dims: Vec<i64> = f.shape.iter().map(|&d| d as i64).collect();
            let t = Tensor::from_slice(&f.values).reshape(dims).to_kind(kind);
            t.set_requires_grad(f.wrt)
        })
        .collect();
    let r: Vec<Tensor> = (lg.r.iter())
        .map(|(shape, v)| {
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            Tensor::from_slice(v).reshape(dims).to_kind(kind)
        })
        .collect();
    let theirs = reference(&inputs, &r);
    let wrt: Vec<&FloatInput> = floats.iter().filter(|f| f.wrt).collect();
    assert_eq!(
        theirs.len(),
        wrt.len(),
        "{}: one gradient per input",
        case.op
    );
    let tol = if case.f64 { 1e-10 } else { 1e-5 };
    for ((f, a), b) in wrt.iter().zip(&ours).zip(&theirs) {
        let b = Vec::<f64>::try_from(&b.reshape([-1]).to_kind(Kind::Double)).unwrap();
        assert_eq!(
            a.len(),
            b.len(),
            "{} input {}: gradient sizes",
            case.op,
            f.name
        );
        let scale = b.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
        for (j, ((x, y), v)) in a.iter().zip(&b).zip(&f.values).enumerate() {
            assert!(
                (x - y).abs() <= tol * scale,
                "{} input {}: at element {j} (value {v}) the rule gives {x}, PyTorch's backward {y}",
                case.op,
                f.name
            );
        }
    }
}

/// The rule's gradient against libtorch autograd through the op's own torch forward (what
/// `--engine torch` and `probe train` differentiate), compared as [`check_torch_backward`]
/// does: the two differentiations of one op agree, for forwards composed of tensor ops
/// (LSTM's, GRU's) whose backward is not one PyTorch kernel.
pub fn check_torch_autograd(case: Case) {
    let dt = if case.f64 { DType::F64 } else { DType::F32 };
    let (g, _) = one_op_graph(&case, dt, &mut Rng(case.seed));
    let node = g.node[0].clone();
    let fwd = (super::rule(&case.op).and_then(|r| r.torch))
        .unwrap_or_else(|| panic!("{} has no torch forward", case.op));
    let kept: Vec<usize> = (0..case.outputs)
        .filter(|k| !case.skip_outputs.contains(k))
        .collect();
    let forward = |floats: &[Tensor]| {
        let mut fl = floats.iter();
        let inputs: Vec<Value> = (node.input.iter())
            .map(
                |name| match g.initializer.iter().find(|t| &t.name == name) {
                    _ if name.is_empty() => Value::None,
                    Some(t) => Value::Tensor(from_proto(t, Device::Cpu).unwrap()),
                    None => Value::Tensor(fl.next().unwrap().shallow_clone()),
                },
            )
            .collect();
        let outs = fwd(&TorchCtx::new(&node, None, Device::Cpu), inputs)
            .unwrap_or_else(|e| panic!("torch forward of {}: {e:#}", node.op_type));
        (kept.iter())
            .map(|&k| outs[k].tensor().unwrap().shallow_clone())
            .collect()
    };
    check_torch_backward(case.clone(), &autograd(forward));
}

/// A [`Backward`] by libtorch autograd through `forward` (PyTorch's ops, whose backward is
/// the one PyTorch takes).
pub fn autograd(
    forward: impl Fn(&[Tensor]) -> Vec<Tensor>,
) -> impl Fn(&[Tensor], &[Tensor]) -> Vec<Tensor> {
    move |inputs, r| {
        let ys = forward(inputs);
        let loss = (ys.iter().zip(r))
            .map(|(y, r)| (y * r).sum(y.kind()))
            .reduce(|a, b| a + b)
            .unwrap();
        let wrt: Vec<&Tensor> = inputs.iter().filter(|t| t.requires_grad()).collect();
        Tensor::run_backward(&[loss], &wrt, false, false)
    }
}
