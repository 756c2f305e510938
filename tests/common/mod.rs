//! Helpers shared by the integration tests: running the `probe` binary, the PyTorch reference
//! (`models/reference.py` in the project's `.venv`), reading results back with h5py, and writing
//! small data and checkpoint files from Rust.
#![allow(dead_code)]

use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Held while this process has an HDF5 file open, and while it starts a child process.
///
/// Why: libhdf5 opens files without close-on-exec and locks them. A child started by another
/// test thread while a file is open here inherits the descriptor, and with it the lock, for its
/// whole life; a `probe` child then fails to open that file ("unable to lock file").
static HDF5_IN_PROCESS: Mutex<()> = Mutex::new(());

pub fn hdf5_guard() -> MutexGuard<'static, ()> {
    HDF5_IN_PROCESS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn model(name: &str) -> PathBuf {
    root().join("models").join(name)
}

/// What a finished `probe` (or Python) process left.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(self) -> Output {
        assert_eq!(
            self.code, 0,
            "expected success, got exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

pub fn run(mut cmd: Command) -> Output {
    use std::process::Stdio;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = {
        let _no_hdf5_file_open_here = hdf5_guard();
        cmd.spawn()
            .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"))
    };
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the built `probe` binary with `args`, from `cwd`.
pub fn probe_in<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_probe"));
    cmd.current_dir(cwd).args(args);
    run(cmd)
}

pub fn probe<S: AsRef<OsStr>>(args: &[S]) -> Output {
    probe_in(&root(), args)
}

/// The project's Python (`.venv/bin/python`, made by setup.sh). Missing: the test fails and says
/// how to get it, rather than skipping silently.
pub fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: this test compares against PyTorch in the project's venv; run ./setup.sh",
        p.display()
    );
    p
}

/// Runs `.venv/bin/python ARGS` from the project root; fails the test on a non-zero exit.
pub fn py<S: AsRef<OsStr>>(args: &[S]) -> String {
    let mut cmd = Command::new(python());
    cmd.current_dir(root()).args(args);
    let out = run(cmd);
    assert_eq!(
        out.code,
        0,
        "python {:?} failed (exit {})\nstdout:\n{}\nstderr:\n{}",
        args.iter()
            .map(|a| a.as_ref().to_owned())
            .collect::<Vec<_>>(),
        out.code,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// `models/reference.py ARGS`.
pub fn reference<S: AsRef<OsStr>>(args: &[S]) -> String {
    let mut all: Vec<std::ffi::OsString> = vec![model("reference.py").into_os_string()];
    all.extend(args.iter().map(|a| a.as_ref().to_owned()));
    py(&all)
}

#[derive(Debug, Clone, Copy)]
pub struct Reference {
    pub loss: f64,
    pub accuracy: f64,
    pub n: i64,
    pub targets: i64,
}

/// PyTorch's full-dataset mean cross-entropy and accuracy (`reference.py eval`).
pub fn reference_eval(model: &str, ckpt: Option<&Path>, data: &Path, dir: &Path) -> Reference {
    let out = dir.join(format!(
        "ref-{}-{}.json",
        Path::new(model).file_stem().unwrap().to_string_lossy(),
        ckpt.map(|c| c.file_stem().unwrap().to_string_lossy().to_string())
            .unwrap_or_else(|| "init".into())
    ));
    let mut args: Vec<std::ffi::OsString> = vec![
        "eval".into(),
        "--model".into(),
        model.into(),
        "--data".into(),
        data.into(),
        "--out".into(),
        out.clone().into(),
    ];
    if let Some(c) = ckpt {
        args.push("--ckpt".into());
        args.push(c.into());
    }
    reference(&args);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    Reference {
        loss: v["loss"].as_f64().unwrap(),
        accuracy: v["accuracy"].as_f64().unwrap(),
        n: v["n"].as_i64().unwrap(),
        targets: v["targets"].as_i64().unwrap(),
    }
}

/// A results file as h5py sees it: `{"attrs": {...}, "datasets": {path: [values]}}`, strings
/// decoded, NaN as null.
pub fn h5_dump(path: &Path) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, math, sys
import h5py, numpy as np
def plain(v):
    if isinstance(v, bytes): return v.decode()
    if isinstance(v, np.generic): v = v.item()
    if isinstance(v, float) and math.isnan(v): return None
    return v
def deep(v):
    return [deep(x) for x in v] if isinstance(v, list) else plain(v)
out = {"attrs": {}, "datasets": {}}
with h5py.File(sys.argv[1], "r") as f:
    out["attrs"] = {k: plain(v) for k, v in f.attrs.items()}
    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out["datasets"][name] = deep(obj[()].tolist())
    f.visititems(visit)
print(json.dumps(out))
"#;
    let text = py(&[OsStr::new("-c"), OsStr::new(SCRIPT), path.as_os_str()]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("h5 dump of {}: {e}", path.display()))
}

/// Every dataset of `got` equals `want`'s to `rel` relative, element by element (NaN = NaN,
/// strings and integers exactly), `/seconds` aside. Returns the largest relative difference.
pub fn same_datasets(got: &Value, want: &Value, rel: f64) -> f64 {
    compare_datasets(got, want, rel, false)
}

/// As [`same_datasets`], but each float differs by at most `rel` times the largest magnitude in
/// its dataset: for sums taken in another order, where entries that nearly cancel differ by
/// more than `rel` of themselves. Returns the largest difference so scaled.
pub fn close_datasets(got: &Value, want: &Value, rel: f64) -> f64 {
    compare_datasets(got, want, rel, true)
}

fn compare_datasets(got: &Value, want: &Value, rel: f64, per_dataset: bool) -> f64 {
    let (g, w) = (
        got["datasets"].as_object().unwrap(),
        want["datasets"].as_object().unwrap(),
    );
    let names = |m: &serde_json::Map<String, Value>| -> Vec<String> {
        m.keys().filter(|k| *k != "seconds").cloned().collect()
    };
    assert_eq!(names(g), names(w), "the same datasets");
    let mut worst = 0f64;
    fn largest(v: &Value) -> f64 {
        match v {
            Value::Array(x) => x.iter().map(largest).fold(0.0, f64::max),
            _ => v.as_f64().map_or(0.0, f64::abs),
        }
    }
    fn walk(a: &Value, b: &Value, name: &str, rel: f64, scale: f64, worst: &mut f64) {
        match (a, b) {
            (Value::Array(x), Value::Array(y)) => {
                assert_eq!(x.len(), y.len(), "/{name}: shapes");
                for (p, q) in x.iter().zip(y) {
                    walk(p, q, name, rel, scale, worst);
                }
            }
            (Value::Number(_), Value::Number(_)) if a.is_f64() || b.is_f64() => {
                let (p, q) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                let s = if scale > 0.0 {
                    scale
                } else {
                    p.abs().max(q.abs())
                };
                let d = (p - q).abs() / s.max(f64::MIN_POSITIVE);
                *worst = worst.max(d);
                assert!(d <= rel, "/{name}: {p:e} vs {q:e} (relative {d:e})");
            }
            _ => assert_eq!(a, b, "/{name}"),
        }
    }
    for n in names(w) {
        let scale = if per_dataset { largest(&w[&n]) } else { 0.0 };
        walk(&g[&n], &w[&n], &n, rel, scale, &mut worst);
    }
    worst
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

pub fn i64s(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

pub fn assert_rel(got: f64, want: f64, rel: f64, what: &str) {
    let err = (got - want).abs() / want.abs().max(1e-300);
    assert!(
        err <= rel,
        "{what}: probe {got:.10} vs reference {want:.10}: relative error {err:.3e} > {rel:.0e}"
    );
}

pub fn assert_abs(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: probe {got} vs reference {want}: differ by more than {tol}"
    );
}

/// The first 2000 Fashion-MNIST training images as an HDF5 data file (reference.py make-data),
/// made once per test binary under cargo's per-target scratch folder.
pub fn fmnist_2000() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        // Written under a per-process name, then renamed: concurrent test binaries never see a
        // half-written file, and reruns do not pile up copies.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("fmnist-2000.h5");
        let part = dir.join(format!("fmnist-2000.h5.{}", std::process::id()));
        reference(&[
            OsStr::new("make-data"),
            OsStr::new("--dataset"),
            OsStr::new("fashion-mnist"),
            OsStr::new("--n"),
            OsStr::new("2000"),
            OsStr::new("--out"),
            part.as_os_str(),
        ]);
        std::fs::rename(&part, &path).unwrap();
        path
    })
}

/// Writes a data file with datasets `x` and `y` (any HDF5 element types, any shapes).
pub fn write_data<X: hdf5::H5Type, Y: hdf5::H5Type>(
    path: &Path,
    x: &ndarray::ArrayD<X>,
    y: &ndarray::ArrayD<Y>,
) {
    let _g = hdf5_guard();
    let f = hdf5::File::create(path).unwrap();
    f.new_dataset_builder().with_data(x).create("x").unwrap();
    f.new_dataset_builder().with_data(y).create("y").unwrap();
}

/// Deterministic pseudo-random values in [-1, 1) (a 64-bit LCG): test inputs that need no RNG crate.
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// One tensor of a checkpoint to write: safetensors dtype, shape, little-endian bytes.
pub struct CkptTensor {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl CkptTensor {
    pub fn f32(shape: Vec<usize>, v: &[f32]) -> CkptTensor {
        CkptTensor {
            dtype: safetensors::Dtype::F32,
            shape,
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
    pub fn i64(shape: Vec<usize>, v: &[i64]) -> CkptTensor {
        CkptTensor {
            dtype: safetensors::Dtype::I64,
            shape,
            bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// A model's own state (its initializers) as checkpoint tensors, each float value mapped by `f`.
pub fn own_state(model_path: &Path, f: impl Fn(f32) -> f32) -> Vec<(String, CkptTensor)> {
    let m = probe::model::Model::load(model_path).unwrap();
    m.own_state()
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let v: Vec<f32> = t
                .as_f32()
                .expect("float state")
                .iter()
                .map(|&x| f(x))
                .collect();
            (name, CkptTensor::f32(t.shape.clone(), &v))
        })
        .collect()
}

/// Writes a safetensors checkpoint, with optional metadata (e.g. `step`).
pub fn write_ckpt(path: &Path, tensors: &[(String, CkptTensor)], metadata: &[(&str, &str)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(
            metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    safetensors::tensor::serialize_to_file(views, &meta, path).unwrap();
}

/// Reads a probe results file's integer attribute with the hdf5 crate (no Python needed).
pub fn h5_i64_attr(path: &Path, name: &str) -> Option<i64> {
    let _g = hdf5_guard();
    let f = hdf5::File::open(path).ok()?;
    f.attr(name).ok()?.read_scalar::<i64>().ok()
}

/// A model `x [N, 4] -> logits [N, 3]`: a Gemm with weight `fc.weight` (or, without it, a Slice
/// with no parameter at all), then `ops`.
pub fn tiny_model(dir: &Path, name: &str, ops: &[&str], with_weight: bool) -> PathBuf {
    let path = dir.join(format!("{name}.onnx"));
    let script = r#"
import sys, onnx, numpy as np
from onnx import helper, TensorProto, numpy_helper
path, ops, with_w = sys.argv[1], [o for o in sys.argv[2].split(',') if o], sys.argv[3] == '1'
nodes, inits, prev = [], [], 'x'
if with_w:
    inits.append(numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), 'fc.weight'))
    nodes.append(helper.make_node('Gemm', ['x', 'fc.weight'], ['h0'], name='fc', transB=1)); prev = 'h0'
else:
    nodes.append(helper.make_node('Slice', ['x', 'st', 'en', 'ax'], ['h0'], name='take3')); prev = 'h0'
    for n, v in (('st', [0]), ('en', [3]), ('ax', [1])):
        inits.append(numpy_helper.from_array(np.array(v, np.int64), n))
for i, op in enumerate(ops):
    nodes.append(helper.make_node(op, [prev], [f'h{i+1}'], name=f'{op.lower()}_{i}')); prev = f'h{i+1}'
nodes.append(helper.make_node('Identity', [prev], ['logits'], name='out'))
g = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['N', 4])],
                      [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['N', 3])], inits)
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 20)], ir_version=10), path)
"#;
    py(&[
        "-c",
        script,
        path.to_str().unwrap(),
        &ops.join(","),
        if with_weight { "1" } else { "0" },
    ]);
    path
}

/// One line of `hf_reference.py compare`: probe's worst per-tensor error within 2x of PyTorch
/// float32's own (or 1e-5), and the same loss to 1e-6 relative.
pub fn assert_pytorchs(label: &str, line: &str) {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let (worst, f32_error) = (
        v["worst"].as_f64().unwrap(),
        v["f32_error"].as_f64().unwrap(),
    );
    let (loss, ref_loss) = (v["loss"].as_f64().unwrap(), v["ref_loss"].as_f64().unwrap());
    eprintln!(
        "{label}: worst per-tensor relative L2 error {worst:.2e} ({}); PyTorch float32's own {f32_error:.2e}; loss {loss} vs {ref_loss}",
        v["name"]
    );
    let bound = (2.0 * f32_error).max(1e-5);
    assert!(
        worst <= bound,
        "{label}: gradient of {} is off by {worst:.2e} relative L2 (bound {bound:.2e})",
        v["name"]
    );
    assert!(
        (loss - ref_loss).abs() <= 1e-6 * ref_loss,
        "{label}: loss {loss} vs {ref_loss}"
    );
}

/// The first `n` Fashion-MNIST training images as an HDF5 file in `dir` (`fm<n>.h5`).
pub fn fm(n: usize, dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join(format!("fm{n}.h5"));
    reference(&[
        "make-data",
        "--dataset",
        "fashion-mnist",
        "--n",
        &n.to_string(),
        "--out",
        p.to_str().unwrap(),
    ]);
    p
}

/// `probe grad` of the MLP on [`fmnist_2000`] at batch 100 with one thread into `out`, then
/// `more` (the checkpoints: `--ckpt DIR`, `--follow DIR`, ...).
pub fn mlp_grad_args(out: &Path, more: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["grad", "--model"].map(String::from).to_vec();
    a.push(model("mlp.onnx").to_str().unwrap().into());
    a.extend(["--data".into(), fmnist_2000().to_str().unwrap().into()]);
    a.extend(["--batch", "100", "--threads", "1", "--out"].map(String::from));
    a.push(out.to_str().unwrap().into());
    a.extend(more.iter().map(|s| s.to_string()));
    a
}

/// `o` exited `code` with exactly one line on stderr, probe's error line, mentioning every needle.
pub fn one_line_error(o: &Output, code: i32, needles: &[&str]) {
    error_line(o, code, needles, |_| true);
}

/// [`one_line_error`] where `note:` lines may come before the error (`probe train` notes what it
/// found in the graph before its checks run).
pub fn one_line_error_after_notes(o: &Output, code: i32, needles: &[&str]) {
    error_line(o, code, needles, |l| !l.starts_with("note:"));
}

fn error_line(o: &Output, code: i32, needles: &[&str], counts: impl Fn(&str) -> bool) {
    assert_eq!(
        o.code, code,
        "exit code; stdout: {}\nstderr: {}",
        o.stdout, o.stderr
    );
    let lines: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && counts(l))
        .collect();
    assert_eq!(lines.len(), 1, "one line of error, got: {}", o.stderr);
    assert!(lines[0].starts_with("probe: error: "), "{}", lines[0]);
    for n in needles {
        assert!(
            lines[0].contains(n),
            "error should mention {n:?}: {}",
            lines[0]
        );
    }
}
