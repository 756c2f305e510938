//! The libtorch engine against the ONNX Runtime one, on the committed models and real batches:
//! - the gradient of one batch's summed cross-entropy by libtorch autograd on the interpreted
//!   graph equals the ONNX gradient graph's (run by ONNX Runtime), per tensor, and so do the
//!   loss and the correct count; with BatchNorm in eval mode and with batch statistics;
//! - the interpreter's eval-mode loss equals `probe eval`'s evaluation on the same samples;
//! - `Mode::Train` updates the BatchNorm running statistics as PyTorch does, `BatchStats` not;
//! - `probe grad --engine torch --save-grad` writes the default engine's file.
//!
//! Both engines compute in f32 with different kernels (and summation orders), so "equal" is to
//! a relative L2 error per tensor whose bound each test states with what it measured.
use probe::autodiff::model_grad::{grad_graph, GradOptions};
use probe::autodiff::LossKind;
use probe::data::{Array, Batch, Dataset};
use probe::model::{Checkpoint, Model};
use probe::train::interp::{Interpreter, Mode, State};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

mod common;

fn model_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

fn open_data(model: &Model, name: &str) -> Box<dyn Dataset> {
    let hint = probe::data::Hint {
        x_shape: model.data_input().unwrap().sample_shape(),
        ..Default::default()
    };
    probe::data::open(name, &hint).unwrap()
}

fn to_tch(a: &Array) -> Tensor {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    match a {
        Array::F32(x) => Tensor::from_slice(x.as_slice().unwrap()).reshape(shape.as_slice()),
        Array::I64(x) => Tensor::from_slice(x.as_slice().unwrap()).reshape(shape.as_slice()),
    }
}

/// What one engine says about one batch: summed loss, correct count, gradients by parameter.
struct Side {
    loss: f64,
    correct: f64,
    logits: Vec<f32>,
    grads: Vec<(String, Vec<f32>)>,
}

/// The ONNX gradient graph (BatchNorm as `bn_train` says), run by ONNX Runtime, with the
/// model's output added to the graph's outputs.
fn onnx_side(model: &Model, data: &mut dyn Dataset, b: &Batch, bn_train: bool) -> Side {
    let samples: Vec<_> = [2, 3]
        .iter()
        .map(|&n| {
            let s = data.read(0, n).unwrap();
            (s.x.to_host(), s.y.to_host())
        })
        .collect();
    let opts = GradOptions {
        loss: LossKind::CrossEntropy,
        bn_train,
        wrt: None,
        kernels: probe::autodiff::grad::Kernels::Standard,
        threads: 1,
        shape_cache: None,
    };
    let mut g = grad_graph(model, &opts, &samples).unwrap();
    let out = model.outputs[0].name.clone();
    let mut vi = onnx_protobuf::ValueInfoProto::new();
    vi.name = out.clone();
    g.proto.graph.as_mut().unwrap().output.push(vi);
    let bytes = protobuf::Message::write_to_bytes(&g.proto).unwrap();
    let mut session = probe::runtime::session(&bytes, 2, "gradient").unwrap();
    let ckpt = Checkpoint::from_model(model).unwrap();
    let state = probe::measure::eval::state_values(&g.inputs.state, &ckpt).unwrap();
    let inputs = probe::measure::eval::feed(&g.inputs, &b, state).unwrap();
    let res = session.run(inputs).unwrap();
    let scalar = |name: &str| {
        res[name]
            .try_extract_array::<f32>()
            .unwrap()
            .iter()
            .next()
            .copied()
            .unwrap() as f64
    };
    Side {
        loss: scalar(&g.loss_sum),
        correct: scalar(g.correct_sum.as_ref().unwrap()),
        logits: res[out.as_str()]
            .try_extract_array::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect(),
        grads: g
            .grads
            .iter()
            .map(|(p, gname)| {
                let (_, v) = res[gname.as_str()].try_extract_tensor::<f32>().unwrap();
                (p.clone(), v.to_vec())
            })
            .collect(),
    }
}

/// Summed cross-entropy of logits [.., C] against class ids, as `F.cross_entropy(...,
/// reduction="sum")` computes it: log_softmax, then the target's entry.
fn cross_entropy_sum(logits: &Tensor, y: &Tensor) -> (Tensor, f64) {
    let c = *logits.size().last().unwrap();
    let z = logits.reshape([-1, c]);
    let t = y.reshape([-1, 1]);
    let loss = -z
        .log_softmax(1, z.kind())
        .gather(1, &t, false)
        .sum(z.kind());
    let correct = z
        .argmax(1, false)
        .eq_tensor(&y.reshape([-1]))
        .to_kind(Kind::Double)
        .sum(Kind::Double);
    (loss, f64::try_from(correct).unwrap())
}

/// libtorch autograd on the interpreted graph; in f64 with `double` (state and input
/// converted, the constants promoted by libtorch) as a reference for both f32 engines.
fn torch_side(model: &Model, b: &Batch, mode: Mode, double: bool) -> Side {
    let interp = Interpreter::new(model, Device::Cpu).unwrap();
    let ckpt = Checkpoint::from_model(model).unwrap();
    let mut state = State::from_checkpoint(model, &ckpt, Device::Cpu).unwrap();
    let mut x = to_tch(&b.x);
    if double {
        for t in state.values_mut() {
            let g = t.requires_grad();
            *t = t.detach().to_kind(Kind::Double).set_requires_grad(g);
        }
        if x.kind() == Kind::Float {
            x = x.to_kind(Kind::Double);
        }
    }
    let logits = interp.forward(&state, &x, mode).unwrap();
    let (loss, correct) = cross_entropy_sum(&logits, &to_tch(&b.y));
    let params: Vec<&Tensor> = interp.trainable().iter().map(|p| &state[p]).collect();
    let grads = Tensor::run_backward(&[&loss], &params, false, false);
    let host =
        |t: &Tensor| Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).reshape([-1])).unwrap();
    Side {
        loss: f64::try_from(&loss).unwrap(),
        correct,
        logits: host(&logits),
        grads: interp
            .trainable()
            .iter()
            .zip(grads)
            .map(|(p, g)| (p.clone(), host(&g)))
            .collect(),
    }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-300)).sqrt()
}

/// Compares the two sides; prints what it measured; returns the worst per-tensor gradient error.
fn compare(tag: &str, ours: &Side, reference: &Side, tol: f64) -> f64 {
    let loss_err = (ours.loss - reference.loss).abs() / reference.loss.abs();
    let logit_err = rel_l2(&ours.logits, &reference.logits);
    assert_eq!(
        ours.correct, reference.correct,
        "{tag}: correct counts differ"
    );
    let mut worst = (0.0, String::new());
    assert_eq!(ours.grads.len(), reference.grads.len());
    for ((p, g), (q, r)) in ours.grads.iter().zip(&reference.grads) {
        assert_eq!(p, q);
        let e = rel_l2(g, r);
        if e > worst.0 {
            worst = (e, p.clone());
        }
    }
    eprintln!(
        "{tag}: loss {:.6} vs {:.6} (rel {loss_err:.2e}), logits rel L2 {logit_err:.2e}, worst gradient rel L2 {:.2e} ({}), {} tensors",
        ours.loss,
        reference.loss,
        worst.0,
        worst.1,
        ours.grads.len()
    );
    assert!(
        loss_err <= tol,
        "{tag}: loss error {loss_err:.2e} > {tol:.0e}"
    );
    assert!(
        logit_err <= tol,
        "{tag}: logits error {logit_err:.2e} > {tol:.0e}"
    );
    assert!(
        worst.0 <= tol,
        "{tag}: gradient of {} differs by {:.2e} (relative L2) > {tol:.0e}",
        worst.1,
        worst.0
    );
    worst.0
}

fn batch_of(model: &Model, data: &str, n: usize) -> (Box<dyn Dataset>, Batch) {
    let mut d = open_data(model, data);
    let b = d.read(0, n).unwrap();
    (d, b)
}

/// Compares libtorch (f32) with the ONNX gradient graph on one batch; with `f64_bound`, also
/// both against libtorch in f64, each within that bound (where the two f32 engines may differ
/// by more than `tol`, this says neither is the wrong one).
fn check(name: &str, data: &str, n: usize, bn_train: bool, tol: f64, f64_bound: Option<f64>) {
    let model = Model::load(&model_path(name)).unwrap();
    let (mut d, b) = batch_of(&model, data, n);
    let reference = onnx_side(&model, d.as_mut(), &b, bn_train);
    let mode = if bn_train {
        Mode::BatchStats
    } else {
        Mode::Eval
    };
    let ours = torch_side(&model, &b, mode, false);
    let bn = if bn_train { "train" } else { "eval" };
    let tag = format!("{name} ({n} samples, bn {bn})");
    compare(&tag, &ours, &reference, tol);
    if let Some(bound) = f64_bound {
        let exact = torch_side(&model, &b, mode, true);
        compare(
            &format!("{name} bn {bn}: libtorch f32 vs f64"),
            &ours,
            &exact,
            bound,
        );
        compare(
            &format!("{name} bn {bn}: ONNX Runtime f32 vs libtorch f64"),
            &reference,
            &exact,
            bound,
        );
    }
}

#[test]
fn mlp_gradient_as_onnx_graph() {
    check("mlp.onnx", "fashion-mnist", 32, false, 1e-5, None);
}

#[test]
fn resnet_gradient_as_onnx_graph() {
    check("resnet.onnx", "fashion-mnist", 32, false, 1e-5, None);
}

/// With batch statistics the two f32 engines differ by more than in eval mode: BatchNorm's
/// backward, `dY - mean(dY) - xhat mean(dY xhat)`, cancels most of dY and leaves the f32
/// rounding of each engine's sums relatively larger. Measured: see the printed errors.
#[test]
fn resnet_batch_statistics_as_onnx_graph() {
    check("resnet.onnx", "fashion-mnist", 32, true, 1e-4, Some(1e-4));
}

#[test]
fn gpt_gradient_as_onnx_graph() {
    check("gpt.onnx", "shakespeare", 16, false, 1e-5, None);
}

/// The interpreter's eval-mode mean loss over 64 samples equals `probe eval`'s evaluation.
#[test]
fn eval_loss_as_probe_eval() {
    for (name, data, n) in [
        ("mlp.onnx", "fashion-mnist", 64),
        ("resnet.onnx", "fashion-mnist", 64),
        ("gpt.onnx", "shakespeare", 32),
    ] {
        let model = Model::load(&model_path(name)).unwrap();
        let data_set = open_data(&model, data);
        let mut limited = probe::data::Limited::new(data_set, n);
        let fit =
            probe::measure::check::data_fits_model(&model, limited.spec(), LossKind::CrossEntropy)
                .unwrap();
        let g =
            probe::autodiff::eval_graph(&model, LossKind::CrossEntropy, fit.target_rank).unwrap();
        let bytes = protobuf::Message::write_to_bytes(&g.proto).unwrap();
        let mut session = probe::runtime::session(&bytes, 2, "evaluation").unwrap();
        let ckpt = Checkpoint::from_model(&model).unwrap();
        let mut progress = probe::progress::Progress::new("", n as u64, true);
        let r = probe::measure::eval::evaluate(
            &mut session,
            &g,
            &ckpt,
            &mut limited,
            16,
            &fit,
            &mut progress,
        )
        .unwrap();
        let b = limited.read(0, n).unwrap();
        let interp = Interpreter::new(&model, Device::Cpu).unwrap();
        let state = State::from_checkpoint(&model, &ckpt, Device::Cpu).unwrap();
        let logits = tch::no_grad(|| interp.forward(&state, &to_tch(&b.x), Mode::Eval)).unwrap();
        let (loss, correct) = cross_entropy_sum(&logits, &to_tch(&b.y));
        let elements = r.elements as f64;
        let ours = f64::try_from(loss).unwrap() / elements;
        let err = (ours - r.loss).abs() / r.loss;
        eprintln!(
            "{name}: interpreter loss {ours:.7} vs probe eval {:.7} (rel {err:.2e}), accuracy {} vs {}",
            r.loss,
            correct / elements,
            r.accuracy
        );
        assert!(err <= 1e-6, "{name}: eval loss differs by {err:.2e}");
        assert_eq!(correct / elements, r.accuracy, "{name}: accuracy differs");
    }
}

/// `Mode::Train` updates the running statistics as PyTorch's BatchNorm does (momentum 0.1,
/// unbiased batch variance); `BatchStats` and `Eval` leave them alone.
#[test]
fn running_statistics_update_in_train_mode_only() {
    let model = Model::load(&model_path("resnet.onnx")).unwrap();
    let (_, b) = batch_of(&model, "fashion-mnist", 16);
    let interp = Interpreter::new(&model, Device::Cpu).unwrap();
    let ckpt = Checkpoint::from_model(&model).unwrap();
    let x = to_tch(&b.x);
    let buffers: Vec<String> = model
        .state()
        .filter(|p| p.role == probe::model::Role::Buffer)
        .map(|p| p.name.clone())
        .collect();
    assert!(!buffers.is_empty());
    let snapshot = |s: &State| -> Vec<Vec<f32>> {
        buffers
            .iter()
            .map(|n| Vec::<f32>::try_from(s[n].reshape([-1])).unwrap())
            .collect()
    };
    for mode in [Mode::Eval, Mode::BatchStats] {
        let state = State::from_checkpoint(&model, &ckpt, Device::Cpu).unwrap();
        let before = snapshot(&state);
        let _ = interp.forward(&state, &x, mode).unwrap();
        assert_eq!(before, snapshot(&state), "{mode:?} changed the buffers");
    }
    let state = State::from_checkpoint(&model, &ckpt, Device::Cpu).unwrap();
    let before = snapshot(&state);
    let _ = interp.forward(&state, &x, Mode::Train).unwrap();
    let after = snapshot(&state);
    let first_bn = model
        .graph()
        .node
        .iter()
        .find(|n| n.op_type == "BatchNormalization")
        .unwrap();
    let k = buffers
        .iter()
        .position(|n| *n == first_bn.input[3])
        .unwrap();
    let kv = buffers
        .iter()
        .position(|n| *n == first_bn.input[4])
        .unwrap();
    let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(changed, buffers.len(), "every running statistic moves");
    // The first BatchNorm's input, from the same interpreter on the model cut there (its
    // output replaced by that value).
    let dir = tempfile::tempdir().unwrap();
    let mut cut = model.proto.clone();
    let g = cut.graph.as_mut().unwrap();
    g.output.clear();
    let mut vi = onnx_protobuf::ValueInfoProto::new();
    vi.name = first_bn.input[0].clone();
    g.output.push(vi);
    let cut_path = dir.path().join("cut.onnx");
    std::fs::write(&cut_path, protobuf::Message::write_to_bytes(&cut).unwrap()).unwrap();
    let cut = Model::load(&cut_path).unwrap();
    let fresh = State::from_checkpoint(&model, &ckpt, Device::Cpu).unwrap();
    let h = tch::no_grad(|| {
        Interpreter::new(&cut, Device::Cpu)
            .unwrap()
            .forward(&fresh, &x, Mode::Eval)
    })
    .unwrap();
    let mean = h.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float);
    let var = h.var_dim([0i64, 2, 3].as_slice(), true, false);
    let m0 = Tensor::from_slice(&before[k]);
    let v0 = Tensor::from_slice(&before[kv]);
    let want_m = &m0 * 0.9 + mean * 0.1;
    let want_v = &v0 * 0.9 + var * 0.1;
    let err = |got: &[f32], want: &Tensor| {
        let got = Tensor::from_slice(got);
        f64::try_from((&got - want).abs().max()).unwrap() / f64::try_from(want.abs().max()).unwrap()
    };
    let (em, ev) = (err(&after[k], &want_m), err(&after[kv], &want_v));
    eprintln!("first BatchNorm running mean error {em:.2e}, running var error {ev:.2e}");
    assert!(em < 1e-5 && ev < 1e-5);
}

/// `probe grad --engine torch --save-grad` on 200 Fashion-MNIST images with the ResNet writes
/// the default engine's file: same rows, gradients equal per tensor.
#[test]
fn probe_grad_engine_torch_as_default_engine() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_path("resnet.onnx");
    let run = |engine: &str| {
        let out = dir.path().join(format!("{engine}.h5"));
        common::probe(&[
            "--quiet",
            "grad",
            "--model",
            model.to_str().unwrap(),
            "--data",
            "fashion-mnist",
            "--limit",
            "200",
            "--batch",
            "64",
            "--threads",
            "2",
            "--save-grad",
            "--engine",
            engine,
            "--out",
            out.to_str().unwrap(),
        ])
        .ok();
        out
    };
    let a = run("onnxruntime");
    let b = run("torch");
    let script = r#"
import sys, json, h5py, numpy as np
a = h5py.File(sys.argv[1], "r"); b = h5py.File(sys.argv[2], "r")
assert a.attrs["engine"] == "onnxruntime" and b.attrs["engine"] == "torch", (a.attrs["engine"], b.attrs["engine"])
worst, wname = 0.0, ""
for name in a["grad/full"].keys():
    g, r = b["grad/full/" + name][0], a["grad/full/" + name][0]
    e = float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30))
    if e > worst: worst, wname = e, name
print(json.dumps([worst, wname, float(b["loss"][0]), float(a["loss"][0]),
                  float(b["accuracy"][0]), float(a["accuracy"][0]),
                  float(b["grad/l2"][0]), float(a["grad/l2"][0])]))
"#;
    let out = {
        let _g = common::hdf5_guard();
        std::process::Command::new(common::root().join(".venv/bin/python"))
            .arg("-c")
            .arg(script)
            .arg(&a)
            .arg(&b)
            .output()
            .unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let f = |i: usize| v[i].as_f64().unwrap();
    eprintln!(
        "probe grad resnet 200 samples: torch vs onnxruntime: worst gradient rel L2 {:.2e} ({}), loss {:.7} vs {:.7}, accuracy {} vs {}, |g| {:.6e} vs {:.6e}",
        f(0),
        v[1],
        f(2),
        f(3),
        f(4),
        f(5),
        f(6),
        f(7)
    );
    assert!(f(0) <= 1e-5, "gradients differ by {:.2e}", f(0));
    assert!((f(2) - f(3)).abs() / f(3) <= 1e-6);
    assert_eq!(f(4), f(5));
}

/// `--device cuda` is for the torch engine only: a flag error (exit 2) with the default engine.
#[test]
fn cuda_needs_engine_torch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.h5");
    let o = common::probe(&[
        "grad",
        "--model",
        model_path("mlp.onnx").to_str().unwrap(),
        "--data",
        "fashion-mnist",
        "--device",
        "cuda",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--engine torch"), "{}", o.stderr);
    assert!(!out.exists());
}

/// A model `x [N, 4] -> Gemm(fc.weight [3, 4]) -> ops... -> logits [N, 3]`, node `i` of `ops`
/// named `n{i}`.
fn tiny_model(dir: &std::path::Path, ops: &[&str]) -> PathBuf {
    use probe::model::graph::{tensor_f32, value_info};
    use probe::tensor::DType;
    let mut g = onnx_protobuf::GraphProto::new();
    g.input
        .push(value_info("x", DType::F32, &[None, Some(4)], "N"));
    let w: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 6.0).collect();
    g.initializer.push(tensor_f32("fc.weight", &[3, 4], &w));
    let node = |op: &str, name: String, inputs: Vec<String>, out: String| {
        let mut n = onnx_protobuf::NodeProto::new();
        n.op_type = op.into();
        n.name = name;
        n.input = inputs;
        n.output = vec![out];
        n
    };
    let mut gemm = node(
        "Gemm",
        "fc".into(),
        vec!["x".into(), "fc.weight".into()],
        "h".into(),
    );
    gemm.attribute
        .push(probe::model::graph::attr_int("transB", 1));
    g.node.push(gemm);
    let mut prev = "h".to_string();
    for (i, op) in ops.iter().enumerate() {
        let out = format!("h{i}");
        g.node
            .push(node(op, format!("n{i}"), vec![prev], out.clone()));
        prev = out;
    }
    g.node
        .push(node("Identity", "out".into(), vec![prev], "logits".into()));
    g.output
        .push(value_info("logits", DType::F32, &[None, Some(3)], "N"));
    let mut m = onnx_protobuf::ModelProto::new();
    m.ir_version = 10;
    let mut o = onnx_protobuf::OperatorSetIdProto::new();
    o.version = 20;
    m.opset_import.push(o);
    m.graph = protobuf::MessageField::some(g);
    let path = dir.join(format!("{}.onnx", ops.join("-").to_lowercase()));
    std::fs::write(&path, protobuf::Message::write_to_bytes(&m).unwrap()).unwrap();
    path
}

/// Ops without a libtorch forward are all listed in one error, with the nodes that use them.
#[test]
fn interpreter_lists_every_op_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(&tiny_model(dir.path(), &["Tan", "Relu", "Asin", "Tan"])).unwrap();
    let err = match Interpreter::new(&model, Device::Cpu) {
        Ok(_) => panic!("the interpreter took Tan and Asin"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("Tan at 'n0', 'n3'") && err.contains("Asin at 'n2'") && !err.contains("Relu"),
        "{err}"
    );
}

/// `probe grad --engine torch` shares the default engine's handling of bad input: ops it cannot
/// run refused before any work (exit 3), a NaN batch stopped with its place named (exit 4) or
/// recorded as NaN.
#[test]
fn engine_torch_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let n = 10;
    let mut x = common::noise(n * 4, 7);
    x[5 * 4 + 1] = f32::NAN;
    let x = ndarray::ArrayD::from_shape_vec(vec![n, 4], x).unwrap();
    let y =
        ndarray::ArrayD::from_shape_vec(vec![n], (0..n as i64).map(|i| i % 3).collect()).unwrap();
    let data = dir.path().join("nan.h5");
    common::write_data(&data, &x, &y);
    let grad = |model: &std::path::Path, out: &std::path::Path, policy: &str| {
        common::probe(&[
            "grad",
            "--engine",
            "torch",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--batch",
            "4",
            "--on-nonfinite",
            policy,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let tan = tiny_model(dir.path(), &["Tan", "Asin"]);
    let out = dir.path().join("tan.h5");
    let o = grad(&tan, &out, "stop");
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("Tan at 'n0'") && o.stderr.contains("Asin at 'n1'"),
        "{}",
        o.stderr
    );
    assert!(!out.exists());

    let tanh = tiny_model(dir.path(), &["Tanh"]);
    let out = dir.path().join("stop.h5");
    let o = grad(&tanh, &out, "stop");
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(o.stderr.contains("batch 1 (samples 4..8)"), "{}", o.stderr);
    let out = dir.path().join("cont.h5");
    let o = grad(&tanh, &out, "continue");
    assert_eq!(o.code, 4, "{}", o.stderr);
    let d = common::h5_dump(&out);
    assert_eq!(common::i64s(&d["datasets"]["nonfinite_batches"]), vec![1]);
    assert_eq!(d["attrs"]["engine"], "torch");
}
