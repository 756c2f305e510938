//! Bad input, one case per test: each must end with exit code 3, exactly one line on stderr that
//! names the offending file and the problem, and no results file that looks complete (none at
//! all, or one whose `complete` attribute is 0). No Python needed: the files are written here.
mod common;

use common::*;
use ndarray::ArrayD;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn out(&self) -> PathBuf {
        self.path("out.h5")
    }
    /// A valid 10-sample data file for the 28x28 classifiers.
    fn good_data(&self) -> PathBuf {
        let p = self.path("good.h5");
        if !p.exists() {
            write_data(&p, &images(10), &labels(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
        }
        p
    }
    /// Runs `probe eval ARGS --out out.h5` and checks the failure contract; returns the line.
    fn fails(&self, args: &[&dyn AsRef<std::ffi::OsStr>], names: &Path, says: &[&str]) -> String {
        let mut all: Vec<OsString> = vec!["eval".into()];
        all.extend(args.iter().map(|a| a.as_ref().to_owned()));
        all.extend(["--out".into(), self.out().into_os_string()]);
        let o = probe_in(self.dir.path(), &all);
        assert_eq!(
            o.code, 3,
            "expected exit 3 (input error) for {all:?}, got {}\nstderr:\n{}",
            o.code, o.stderr
        );
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "stderr should be exactly one line:\n{}",
            o.stderr
        );
        let line = lines[0];
        assert!(line.starts_with("probe: error: "), "{line}");
        let name = names.file_name().unwrap().to_str().unwrap();
        assert!(line.contains(name), "the error should name {name}: {line}");
        for s in says {
            assert!(line.contains(s), "the error should say '{s}': {line}");
        }
        let out = self.out();
        assert!(
            !out.exists() || h5_i64_attr(&out, "complete") == Some(0),
            "{} looks like complete results after a failed run",
            out.display()
        );
        line.to_string()
    }
}

fn images(n: usize) -> ArrayD<f32> {
    ArrayD::from_shape_vec(vec![n, 1, 28, 28], noise(n * 784, 3)).unwrap()
}

fn labels(v: &[i64]) -> ArrayD<i64> {
    ArrayD::from_shape_vec(vec![v.len()], v.to_vec()).unwrap()
}

fn resnet() -> PathBuf {
    model("resnet.onnx")
}

// --- the model ---------------------------------------------------------------------------------

#[test]
fn missing_model() {
    let c = Case::new();
    let m = c.path("nope.onnx");
    c.fails(
        &[&"--model", &m, &"--data", &c.good_data()],
        &m,
        &["No such file"],
    );
}

#[test]
fn model_that_is_not_onnx() {
    let c = Case::new();
    let m = c.path("garbage.onnx");
    let bytes: Vec<u8> = noise(4096, 4)
        .iter()
        .map(|v| (v * 127.0) as i8 as u8)
        .collect();
    std::fs::write(&m, bytes).unwrap();
    c.fails(
        &[&"--model", &m, &"--data", &c.good_data()],
        &m,
        &["not an ONNX model"],
    );
}

#[test]
fn truncated_external_data() {
    let c = Case::new();
    // The graph names its external data file `mlp.onnx.data`, relative to the graph's folder.
    let m = c.path("mlp.onnx");
    std::fs::copy(model("mlp.onnx"), &m).unwrap();
    let full = std::fs::read(model("mlp.onnx.data")).unwrap();
    std::fs::write(c.path("mlp.onnx.data"), &full[..full.len() / 2]).unwrap();
    c.fails(
        &[&"--model", &m, &"--data", &c.good_data()],
        &c.path("mlp.onnx.data"),
        &["truncated external data"],
    );
}

#[test]
fn missing_external_data() {
    let c = Case::new();
    let m = c.path("mlp.onnx");
    std::fs::copy(model("mlp.onnx"), &m).unwrap();
    c.fails(
        &[&"--model", &m, &"--data", &c.good_data()],
        &c.path("mlp.onnx.data"),
        &["external data file of", "No such file"],
    );
}

// --- checkpoints -------------------------------------------------------------------------------

#[test]
fn checkpoint_of_another_model() {
    let c = Case::new();
    let ck = c.path("mlp.safetensors");
    write_ckpt(&ck, &own_state(&model("mlp.onnx"), |v| v), &[]);
    let line = c.fails(
        &[
            &"--model",
            &resnet(),
            &"--ckpt",
            &ck,
            &"--data",
            &c.good_data(),
        ],
        &ck,
        &[
            "checkpoint does not fit",
            "resnet.onnx",
            "conv1.weight",
            "fc1.weight",
        ],
    );
    // Every problem at once: all 47 of resnet's state tensors missing, all 6 of mlp's extra.
    assert!(line.contains("missing 47"), "{line}");
    assert!(line.contains("6 tensors the model does not have"), "{line}");
}

#[test]
fn checkpoint_missing_names() {
    let c = Case::new();
    let ck = c.path("partial.safetensors");
    let mut t = own_state(&resnet(), |v| v);
    t.retain(|(n, _)| n != "fc.weight" && n != "layer1.0.bn1.running_mean");
    write_ckpt(&ck, &t, &[]);
    c.fails(
        &[
            &"--model",
            &resnet(),
            &"--ckpt",
            &ck,
            &"--data",
            &c.good_data(),
        ],
        &ck,
        &[
            "missing 2 of the model's tensors",
            "fc.weight",
            "layer1.0.bn1.running_mean",
        ],
    );
}

#[test]
fn checkpoint_with_an_extra_float_tensor() {
    let c = Case::new();
    let ck = c.path("extra.safetensors");
    let mut t = own_state(&resnet(), |v| v);
    t.push((
        "head2.weight".into(),
        CkptTensor::f32(vec![3], &[1.0, 2.0, 3.0]),
    ));
    // An integer buffer the graph does not use is fine (noted), so it must not be reported.
    t.push((
        "bn1.num_batches_tracked".into(),
        CkptTensor::i64(vec![], &[7]),
    ));
    write_ckpt(&ck, &t, &[]);
    let line = c.fails(
        &[
            &"--model",
            &resnet(),
            &"--ckpt",
            &ck,
            &"--data",
            &c.good_data(),
        ],
        &ck,
        &["1 tensors the model does not have: head2.weight"],
    );
    assert!(!line.contains("num_batches_tracked"), "{line}");
}

#[test]
fn checkpoint_with_wrong_shape_and_dtype() {
    let c = Case::new();
    let ck = c.path("wrong.safetensors");
    let mut t = own_state(&resnet(), |v| v);
    for (name, tensor) in t.iter_mut() {
        if name == "fc.weight" {
            // [10, 64] stored transposed.
            *tensor = CkptTensor::f32(vec![64, 10], &vec![0.0; 640]);
        } else if name == "fc.bias" {
            *tensor = CkptTensor::i64(vec![10], &[0; 10]);
        }
    }
    write_ckpt(&ck, &t, &[]);
    c.fails(
        &[
            &"--model",
            &resnet(),
            &"--ckpt",
            &ck,
            &"--data",
            &c.good_data(),
        ],
        &ck,
        &[
            "'fc.weight' has shape [64, 10] in the checkpoint, [10, 64] in the model",
            "'fc.bias' is int64 in the checkpoint, float32 in the model",
        ],
    );
}

#[test]
fn checkpoint_that_is_not_safetensors() {
    let c = Case::new();
    let ck = c.path("notes.safetensors");
    std::fs::write(&ck, "these are not weights\n").unwrap();
    c.fails(
        &[
            &"--model",
            &resnet(),
            &"--ckpt",
            &ck,
            &"--data",
            &c.good_data(),
        ],
        &ck,
        &["not a safetensors file"],
    );
}

// --- data --------------------------------------------------------------------------------------

#[test]
fn missing_data_file() {
    let c = Case::new();
    let d = c.path("nope.h5");
    c.fails(
        &[&"--model", &resnet(), &"--data", &d],
        &d,
        &["no such file"],
    );
}

#[test]
fn data_of_the_wrong_shape() {
    let c = Case::new();
    let d = c.path("cifar-like.h5");
    let x = ArrayD::from_shape_vec(vec![10, 3, 32, 32], noise(10 * 3 * 1024, 5)).unwrap();
    write_data(&d, &x, &labels(&[0; 10]));
    c.fails(
        &[&"--model", &resnet(), &"--data", &d],
        &d,
        &["data does not fit", "[3, 32, 32]", "[N, 1, 28, 28]"],
    );
}

#[test]
fn float_targets_for_cross_entropy() {
    let c = Case::new();
    let d = c.path("float-y.h5");
    write_data(&d, &images(10), &ArrayD::<f32>::zeros(vec![10]));
    c.fails(
        &[&"--model", &resnet(), &"--data", &d],
        &d,
        &["cross-entropy needs integer class ids"],
    );
}

#[test]
fn integer_inputs_for_a_float_model() {
    let c = Case::new();
    let d = c.path("int-x.h5");
    write_data(
        &d,
        &ArrayD::<i64>::zeros(vec![10, 1, 28, 28]),
        &labels(&[0; 10]),
    );
    c.fails(
        &[&"--model", &resnet(), &"--data", &d],
        &d,
        &["x is integer data", "float32"],
    );
}

#[test]
fn empty_data_set() {
    let c = Case::new();
    let d = c.path("empty.h5");
    write_data(&d, &images(0), &labels(&[]));
    c.fails(&[&"--model", &resnet(), &"--data", &d], &d, &["empty"]);
}

#[test]
fn targets_out_of_range() {
    let c = Case::new();
    let d = c.path("eleven-classes.h5");
    let mut y = vec![3i64; 300];
    y[257] = 10; // in the second batch of 250: the first batch has run by then
    write_data(&d, &images(300), &labels(&y));
    c.fails(
        &[&"--model", &resnet(), &"--data", &d],
        &d,
        &["sample 257 has target 10", "10 classes"],
    );
}

// --- the results file --------------------------------------------------------------------------

#[test]
fn output_in_a_missing_folder() {
    let c = Case::new();
    let out = c.path("no-such-folder/out.h5");
    let o = probe_in(
        c.dir.path(),
        &[
            OsString::from("eval"),
            "--model".into(),
            resnet().into(),
            "--data".into(),
            c.good_data().into(),
            "--out".into(),
            out.clone().into(),
        ],
    );
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("out.h5") && o.stderr.contains("does not exist"),
        "{}",
        o.stderr
    );
    assert!(!out.exists() && !c.path("no-such-folder").exists());
}

#[test]
fn output_holding_another_models_results_is_refused() {
    let c = Case::new();
    let out = c.out();
    probe_in(
        c.dir.path(),
        &[
            OsString::from("eval"),
            "-q".into(),
            "--model".into(),
            model("mlp.onnx").into(),
            "--data".into(),
            c.good_data().into(),
            "--out".into(),
            out.clone().into(),
        ],
    )
    .ok();
    let before = std::fs::read(&out).unwrap();
    assert_eq!(h5_i64_attr(&out, "complete"), Some(1));
    let o = probe_in(
        c.dir.path(),
        &[
            OsString::from("eval"),
            "--model".into(),
            resnet().into(),
            "--data".into(),
            c.good_data().into(),
            "--out".into(),
            out.clone().into(),
        ],
    );
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("out.h5")
            && o.stderr.contains("another run")
            && o.stderr.contains("--force"),
        "{}",
        o.stderr
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the file was modified"
    );

    // --force replaces it.
    let o = probe_in(
        c.dir.path(),
        &[
            OsString::from("eval"),
            "-q".into(),
            "--force".into(),
            "--model".into(),
            resnet().into(),
            "--data".into(),
            c.good_data().into(),
            "--out".into(),
            out.clone().into(),
        ],
    )
    .ok();
    assert!(o.stdout.contains("resnet.onnx"), "{}", o.stdout);
    let _g = hdf5_guard();
    let f = hdf5::File::open(&out).unwrap();
    let sha = probe::store::read_str_attr(&f, "model_sha256").unwrap();
    assert_eq!(sha, probe::model::Model::load(&resnet()).unwrap().sha256);
    assert_eq!(f.dataset("loss").unwrap().shape(), vec![1]);
}

#[test]
fn output_that_is_not_a_results_file_is_refused() {
    let c = Case::new();
    let out = c.out();
    std::fs::write(&out, "my notes\n").unwrap();
    let o = probe_in(
        c.dir.path(),
        &[
            OsString::from("eval"),
            "--model".into(),
            resnet().into(),
            "--data".into(),
            c.good_data().into(),
            "--out".into(),
            out.clone().into(),
        ],
    );
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("not a probe results file"),
        "{}",
        o.stderr
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "my notes\n");
}

// Bad flags: exit 2 through clap, before any work, with the flag named; never a NaN column,
// never an input error (exit 3) for a value the flag itself rules out.

/// Runs probe with `args` in a fresh folder holding a valid 10-sample data file; `MODEL`,
/// `DATA`, `OUT` (a results file) and `RUN` (a run folder) stand for those paths. Returns the
/// output and whether it left results behind.
fn flag_case(args: &[&str]) -> (Output, bool) {
    let c = Case::new();
    let data = c.good_data();
    let all: Vec<String> = args
        .iter()
        .map(|a| match *a {
            "MODEL" => model("mlp.onnx").display().to_string(),
            "DATA" => data.display().to_string(),
            "OUT" => c.out().display().to_string(),
            "RUN" => c.path("run").display().to_string(),
            s => s.to_string(),
        })
        .collect();
    let o = probe_in(c.dir.path(), &all);
    let left = c.out().exists() || c.path("run").exists();
    (o, left)
}

#[test]
fn out_of_range_and_non_finite_flags_exit_2_naming_the_flag() {
    const GRAD: &[&str] = &["grad", "--model", "MODEL", "--data", "DATA", "--out", "OUT"];
    const EVAL: &[&str] = &["eval", "--model", "MODEL", "--data", "DATA", "--out", "OUT"];
    const TRAIN: &[&str] = &[
        "train", "--model", "MODEL", "--data", "DATA", "--out", "RUN", "--steps", "1",
    ];
    // (the command, the bad flag and value, the flag the error must name)
    let cases: Vec<(&[&str], Vec<&str>, &str)> = vec![
        (EVAL, vec!["--batch", "0"], "--batch"),
        (EVAL, vec!["--limit", "0"], "--limit"),
        (EVAL, vec!["--threads", "0"], "--threads"),
        (EVAL, vec!["--batch", "-5"], "--batch"),
        (GRAD, vec!["--weight-decay", "nan"], "--weight-decay"),
        (GRAD, vec!["--weight-decay", "inf"], "--weight-decay"),
        (GRAD, vec!["--weight-decay", "-1e-4"], "--weight-decay"),
        (
            GRAD,
            vec!["--hessian", "--hessian-tol", "nan"],
            "--hessian-tol",
        ),
        (
            GRAD,
            vec!["--hessian", "--hessian-tol", "-1"],
            "--hessian-tol",
        ),
        (
            GRAD,
            vec!["--hessian", "--hessian-iters", "0"],
            "--hessian-iters",
        ),
        (
            GRAD,
            vec!["--hessian", "--hessian-samples", "0"],
            "--hessian-samples",
        ),
        (GRAD, vec!["--hessian", "--hutchinson", "0"], "--hutchinson"),
        (GRAD, vec!["--shard", "2/2"], "--shard"),
        (
            GRAD,
            vec!["--noise", "--noise-samples", "-1"],
            "--noise-samples",
        ),
        (TRAIN, vec!["--lr", "nan"], "--lr"),
        (TRAIN, vec!["--lr", "-0.1"], "--lr"),
        (TRAIN, vec!["--lr", "inf"], "--lr"),
        (TRAIN, vec!["--momentum", "nan"], "--momentum"),
        (TRAIN, vec!["--weight-decay", "-inf"], "--weight-decay"),
        (
            TRAIN,
            vec!["--opt", "adam", "--momentum", "0.9"],
            "--momentum",
        ),
        (TRAIN, vec!["--schedule", "linear"], "--schedule"),
        (TRAIN, vec!["--schedule", "step:0,0.1"], "--schedule"),
        (TRAIN, vec!["--schedule", "step:10,nan"], "--schedule"),
        (TRAIN, vec!["--batch", "0"], "--batch"),
        (TRAIN, vec!["--ckpt-every", "0"], "--ckpt-every"),
        (&["analyze", "OUT"], vec!["--lr", "nan"], "--lr"),
        (&["analyze", "OUT"], vec!["--lr", "0"], "--lr"),
        (
            &["plot", "OUT", "-o", "fig.png"],
            vec!["--lr", "-1"],
            "--lr",
        ),
    ];
    let mut wrong = Vec::new();
    for (cmd, flag, name) in cases {
        let args: Vec<&str> = cmd.iter().chain(flag.iter()).copied().collect();
        let (o, left_results) = flag_case(&args);
        // clap's first line: "error: invalid value 'nan' for '--weight-decay <L>': ...".
        let says_flag = o.stderr.lines().next().is_some_and(|l| l.contains(name));
        if o.code != 2 || !says_flag || o.stderr.contains("panicked") || left_results {
            wrong.push(format!(
                "probe {} ... {}: exit {}{}, stderr: {}",
                cmd[0],
                flag.join(" "),
                o.code,
                if left_results { ", left results" } else { "" },
                o.stderr.lines().next().unwrap_or_default()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} bad flag value(s) not refused with exit 2 naming the flag:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// `probe ... | head -2`: the reader goes away; probe must end without a panic or an error.
#[test]
fn a_closed_stdout_ends_probe_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let c = Case::new();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_probe"));
    cmd.current_dir(c.dir.path())
        .args(["eval", "--model"])
        .arg(model("mlp.onnx"))
        .arg("--data")
        .arg(c.good_data())
        .arg("--out")
        .arg(c.out())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = {
        let _g = hdf5_guard();
        cmd.spawn().unwrap()
    };
    // The read end closes before probe writes its first line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("error"),
        "stderr: {stderr}"
    );
    assert!(
        out.status.success() || out.status.signal() == Some(13),
        "probe should end quietly (exit 0 or SIGPIPE's default action), got {:?}; stderr: {stderr}",
        out.status
    );
}
