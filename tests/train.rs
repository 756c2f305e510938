//! `probe train` against PyTorch: the same steps from the same weights give the same weights
//! (`models/train_reference.py`, torch.optim), resumed runs equal uninterrupted ones bit for bit,
//! and bad input gets one clear line and no half-written checkpoint.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The hidden CNN exported with its initial weights (m.onnx, m.py) and 320 Fashion-MNIST
/// samples, made once per test binary.
fn hidden_cnn() -> &'static (PathBuf, PathBuf) {
    static DIR: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("train-cnn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        reference(&[
            "hidden-cnn",
            "--export-init",
            "--out",
            dir.to_str().unwrap(),
        ]);
        let data = dir.join("d.h5");
        reference(&[
            "make-data",
            "--dataset",
            "fashion-mnist",
            "--n",
            "320",
            "--out",
            data.to_str().unwrap(),
        ]);
        (dir, data)
    })
}

/// Float tensors by name: shape and values.
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

/// Tensors of a safetensors file as f64 vectors (integer tensors left out).
fn read_st(path: &Path) -> (Tensors, BTreeMap<String, String>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = BTreeMap::new();
    for (name, v) in st.tensors() {
        let vals: Vec<f64> = match v.dtype() {
            safetensors::Dtype::F32 => v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            _ => continue,
        };
        out.insert(name, (v.shape().to_vec(), vals));
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (
        out,
        meta.metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    )
}

/// max |a - b| / max |b| per tensor, for every tensor of `want` (which `got` must all have).
fn rel_errors(got: &Path, want: &Path) -> Vec<(String, f64)> {
    let (g, _) = read_st(got);
    let (w, _) = read_st(want);
    w.iter()
        .map(|(name, (shape, wv))| {
            let (gs, gv) = g
                .get(name)
                .unwrap_or_else(|| panic!("{} has no tensor {name}", got.display()));
            assert_eq!(gs, shape, "{name}: shape");
            let d = gv
                .iter()
                .zip(wv)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            let m = wv.iter().map(|b| b.abs()).fold(0.0, f64::max).max(1e-30);
            (name.clone(), d / m)
        })
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `probe train` with `flags` and `probe_only` (checkpoint frequency) into `out`, then the PyTorch reference from the run's own
/// step-0 weights, and returns the per-tensor relative errors of the final step and the losses.
fn against_torch(
    model_py: &str,
    model: &Path,
    data: &Path,
    out: &Path,
    steps: u64,
    flags: &[&str],
    probe_only: &[&str],
) -> Vec<(String, f64)> {
    let st = steps.to_string();
    let mut args = vec![
        "train",
        "--model",
        s(model),
        "--data",
        s(data),
        "--steps",
        &st,
        "--no-shuffle",
        // One thread on both sides: with two, libtorch's reductions can split work differently
        // from run to run, and Adam turns that last-bit noise in near-zero gradients into
        // full-size steps of either sign (seen: 1e-7 one run, 7e-4 the next, on the same data).
        "--threads",
        "1",
        "--out",
        s(out),
    ];
    args.extend_from_slice(flags);
    args.extend_from_slice(probe_only);
    let o = probe(&args).ok();
    let last = out.join(format!("step-{steps:08}.safetensors"));
    assert!(last.exists(), "{}\n{}", o.stdout, o.stderr);
    let want = out.join("torch.safetensors");
    let mut rargs = vec![
        models_path("train_reference.py"),
        "--model".into(),
        model_py.into(),
        "--init".into(),
        s(&out.join("step-00000000.safetensors")).into(),
        "--data".into(),
        s(data).into(),
        "--steps".into(),
        st.clone(),
        "--threads".into(),
        "1".into(),
        "--out".into(),
        s(&want).into(),
    ];
    rargs.extend(flags.iter().map(|f| f.to_string()));
    py(&rargs);
    // Per-step minibatch losses: the log against the reference's.
    let (_, meta) = read_st(&want);
    let losses: Vec<f64> = serde_json::from_str(&meta["losses"]).unwrap();
    let log = h5_dump(&out.join("train.h5"));
    let got = f64s(&log["datasets"]["loss"]);
    assert_eq!(got.len(), losses.len());
    for (k, (a, b)) in got.iter().zip(&losses).enumerate() {
        assert_rel(*a, *b, 1e-4, &format!("loss at step {}", k + 1));
    }
    rel_errors(&last, &want)
}

fn models_path(name: &str) -> String {
    model(name).to_str().unwrap().to_string()
}

fn report(what: &str, errs: &[(String, f64)]) -> f64 {
    let worst = errs.iter().map(|e| e.1).fold(0.0, f64::max);
    eprintln!(
        "{what}: worst relative error {worst:.2e} over {} tensors",
        errs.len()
    );
    for (n, e) in errs {
        eprintln!("  {n:>28}  {e:.2e}");
    }
    worst
}

/// The acceptance check of issue 4: five SGD steps of an unseen CNN (BatchNorm in training mode,
/// residual add, strided conv, max-pool, tanh) equal torch.optim.SGD's, BatchNorm running
/// statistics included, to 1e-4 relative.
#[test]
fn hidden_cnn_sgd_steps_equal_torch_optim() {
    let (dir, data) = hidden_cnn();
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("sgd");
    let errs = against_torch(
        s(&dir.join("m.py")),
        &dir.join("m.onnx"),
        data,
        &run,
        5,
        &[
            "--batch",
            "64",
            "--opt",
            "sgd",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--weight-decay",
            "5e-4",
        ],
        &["--ckpt-every", "5"],
    );
    assert!(errs.iter().any(|(n, _)| n.ends_with("running_mean")));
    assert!(errs.iter().any(|(n, _)| n.ends_with("running_var")));
    let worst = report("hidden CNN, SGD", &errs);
    assert!(worst <= 1e-4, "worst relative error {worst:.3e} > 1e-4");
    // The checkpoint's metadata names the step, the epoch, the lr, the optimizer and the seed.
    let (_, meta) = read_st(&run.join("step-00000005.safetensors"));
    assert_eq!(meta["step"], "5");
    assert_eq!(meta["epoch"], "1");
    assert_eq!(meta["lr"], "0.05");
    assert_eq!(
        meta["optimizer"],
        "sgd lr=0.05 momentum=0.9 weight_decay=0.0005"
    );
    assert_eq!(meta["seed"], "0");
}

/// Adam and AdamW (with the cosine schedule) to 1e-5 relative: five steps of the MLP (across an
/// epoch boundary with a smaller last batch), two steps of the hidden CNN.
///
/// Why only two for the CNN: a conv bias followed by a train-mode BatchNorm has a gradient that is
/// zero in exact arithmetic (the batch mean removes it), so each implementation's is float32
/// noise, and Adam turns noise into a full-size step (`g / sqrt(v)`) of either sign. After five
/// steps probe and PyTorch then differ by up to 3.5e-3 relative (conv_in.bias, down.bias, then
/// everything downstream), but PyTorch on 1 thread and PyTorch on 2 threads differ by 2e-2 on the
/// same run: no implementation can do better. The first steps agree to about 1e-7.
#[test]
fn adam_and_adamw_steps_equal_torch_optim() {
    let (dir, data) = hidden_cnn();
    let out = tempfile::tempdir().unwrap();
    let adam = ["--opt", "adam", "--lr", "1e-3"];
    let adamw = [
        "--opt",
        "adamw",
        "--lr",
        "2e-3",
        "--weight-decay",
        "0.05",
        "--schedule",
        "cosine",
    ];
    let mlp = model("mlp.onnx");
    for (name, model_py, onnx, steps, opt) in [
        ("mlp-adam", "mlp", &mlp, 8, &adam[..]),
        ("mlp-adamw", "mlp", &mlp, 8, &adamw[..]),
        (
            "cnn-adam",
            s(&dir.join("m.py")),
            &dir.join("m.onnx"),
            2,
            &adam[..],
        ),
        (
            "cnn-adamw",
            s(&dir.join("m.py")),
            &dir.join("m.onnx"),
            2,
            &adamw[..],
        ),
    ] {
        let mut flags = vec!["--batch", "48"];
        flags.extend_from_slice(opt);
        let errs = against_torch(
            model_py,
            onnx,
            data,
            &out.path().join(name),
            steps,
            &flags,
            &[],
        );
        let worst = report(name, &errs);
        assert!(
            worst <= 1e-5,
            "{name}: worst relative error {worst:.3e} > 1e-5"
        );
    }
}

/// Training 6 steps in one go equals 3 steps, stopping, and resuming to 6, bit for bit
/// (with shuffling and augmentation, whose draws the resumed run must re-derive).
#[test]
fn resumed_run_equals_uninterrupted_run_bit_for_bit() {
    let (dir, data) = hidden_cnn();
    let out = tempfile::tempdir().unwrap();
    let m = dir.join("m.onnx");
    let common = |steps: &str, out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            s(&m),
            "--data",
            s(data),
            "--batch",
            "48",
            "--opt",
            "sgd",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--weight-decay",
            "5e-4",
            "--augment",
            "--seed",
            "11",
            "--ckpt-every",
            "3",
            "--threads",
            "2",
            "--steps",
            steps,
            "--out",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let (a, b) = (out.path().join("a"), out.path().join("b"));
    probe(&common("6", &a)).ok();
    probe(&common("3", &b)).ok();
    assert!(!b.join("step-00000006.safetensors").exists());
    let mut resume = common("6", &b);
    resume.push("--resume".into());
    let o = probe(&resume).ok();
    assert!(o.stderr.contains("resuming from"), "{}", o.stderr);
    for f in [
        "step-00000006.safetensors",
        "optim/step-00000006.safetensors",
    ] {
        let (x, _) = read_st(&a.join(f));
        let (y, _) = read_st(&b.join(f));
        assert_eq!(
            x.keys().collect::<Vec<_>>(),
            y.keys().collect::<Vec<_>>(),
            "{f}"
        );
        for (k, v) in &x {
            let bits = |v: &Vec<f64>| v.iter().map(|x| (*x as f32).to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&v.1), bits(&y[k].1), "{f}: {k} differs");
        }
    }
    // The logs agree too: the resumed run's rows are the uninterrupted run's.
    let (la, lb) = (h5_dump(&a.join("train.h5")), h5_dump(&b.join("train.h5")));
    for k in ["step", "loss", "lr", "samples"] {
        assert_eq!(la["datasets"][k], lb["datasets"][k], "log {k}");
    }
    // Resuming a finished run does nothing; resuming with other settings is refused.
    let o = probe(&resume).ok();
    assert!(o.stderr.contains("nothing to do"), "{}", o.stderr);
    let mut other = common("9", &b);
    let i = other.iter().position(|a| a == "--seed").unwrap();
    other[i + 1] = "12".into();
    other.push("--resume".into());
    let o = probe(&other);
    one_line_error_after_notes(&o, 3, &["--resume", "seed", "'11' there, '12' here"]);
}

// --- bad input --------------------------------------------------------------------------------

/// `n` samples of noise with labels `i % 3`; sample `poison` holds a NaN.
fn tiny_data(dir: &Path, n: usize, poison: Option<usize>) -> PathBuf {
    let path = dir.join(format!("tiny-{n}-{poison:?}.h5"));
    let mut x = noise(n * 4, 7);
    if let Some(i) = poison {
        x[i * 4 + 1] = f32::NAN;
    }
    let x = ndarray::ArrayD::from_shape_vec(vec![n, 4], x).unwrap();
    let y =
        ndarray::ArrayD::from_shape_vec(vec![n], (0..n as i64).map(|i| i % 3).collect()).unwrap();
    write_data(&path, &x, &y);
    path
}

fn train_args<'a>(m: &'a Path, d: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--model",
        s(m),
        "--data",
        s(d),
        "--out",
        s(out),
        "--batch",
        "2",
        "--threads",
        "1",
    ];
    a.extend_from_slice(extra);
    a
}

fn no_temporaries(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        assert!(!n.starts_with(".probe-tmp-"), "left behind: {n}");
    }
}

#[test]
fn a_nonfinite_loss_stops_naming_the_step_and_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "lin", &[], true);
    // Batches of 2 in file order: sample 6 is in step 4.
    let d = tiny_data(dir.path(), 10, Some(6));
    let out = dir.path().join("run");
    let o = probe(&train_args(
        &m,
        &d,
        &out,
        &[
            "--steps",
            "5",
            "--no-shuffle",
            "--ckpt-every",
            "2",
            "--lr",
            "0.1",
        ],
    ));
    one_line_error_after_notes(
        &o,
        4,
        &["non-finite loss", "step 4", "step-00000002.safetensors"],
    );
    let names: Vec<String> = files(&out);
    assert!(
        names.contains(&"step-00000002.safetensors".to_string()),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("step-00000004") || n.starts_with("step-00000005")),
        "{names:?}"
    );
    no_temporaries(&out);
    // The log holds the three good steps.
    let log = h5_dump(&out.join("train.h5"));
    assert_eq!(i64s(&log["datasets"]["step"]), [1, 2, 3]);
    assert_eq!(log["attrs"]["complete"], 0);
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_folder_holding_another_run_is_refused_unless_resume_or_force() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "lin", &[], true);
    let d = tiny_data(dir.path(), 10, None);
    let out = dir.path().join("run");
    probe(&train_args(
        &m,
        &d,
        &out,
        &["--steps", "4", "--ckpt-every", "2"],
    ))
    .ok();
    // The optimizer state in its own folder: `run/step-*.safetensors` names the weights only.
    assert_eq!(
        files(&out),
        [
            "DONE",
            "optim",
            "step-00000000.safetensors",
            "step-00000002.safetensors",
            "step-00000004.safetensors",
            "train.h5"
        ]
    );
    assert_eq!(
        files(&out.join("optim")),
        [
            "step-00000000.safetensors",
            "step-00000002.safetensors",
            "step-00000004.safetensors",
        ]
    );
    let before = std::fs::read(out.join("step-00000004.safetensors")).unwrap();
    let o = probe(&train_args(&m, &d, &out, &["--steps", "3", "--lr", "0.5"]));
    one_line_error_after_notes(&o, 3, &["run", "another run", "--resume", "--force"]);
    assert_eq!(
        std::fs::read(out.join("step-00000004.safetensors")).unwrap(),
        before
    );
    // --force replaces the run: only the new run's files remain.
    probe(&train_args(
        &m,
        &d,
        &out,
        &["--steps", "3", "--lr", "0.5", "--force"],
    ))
    .ok();
    assert_eq!(
        files(&out),
        [
            "DONE",
            "optim",
            "step-00000000.safetensors",
            "step-00000003.safetensors",
            "train.h5"
        ]
    );
    assert_eq!(
        files(&out.join("optim")),
        ["step-00000000.safetensors", "step-00000003.safetensors"]
    );
    let (_, meta) = read_st(&out.join("step-00000003.safetensors"));
    assert_eq!(meta["lr"], "0.5");
}

#[test]
fn a_model_without_trainable_parameters_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "noparams", &["Relu"], false);
    let d = tiny_data(dir.path(), 10, None);
    let out = dir.path().join("run");
    let o = probe(&train_args(&m, &d, &out, &["--steps", "2"]));
    one_line_error_after_notes(&o, 3, &["noparams.onnx", "no trainable parameters"]);
    assert!(!out.exists() || files(&out).is_empty());
}

#[test]
fn flags_that_do_not_apply_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "lin", &[], true);
    let d = tiny_data(dir.path(), 10, None);
    let out = dir.path().join("run");
    // Bad flags on their own: clap refuses them before any work (exit 2), naming the flag.
    for (flags, needles) in [
        (
            vec!["--opt", "adam", "--momentum", "0.9"],
            vec!["--momentum", "sgd only"],
        ),
        (
            vec!["--opt", "adamw", "--momentum", "0.5"],
            vec!["--momentum", "adamw"],
        ),
        (
            vec!["--schedule", "step:0,0.1"],
            vec!["--schedule", "EVERY"],
        ),
        (
            vec!["--schedule", "linear"],
            vec!["--schedule", "unknown schedule"],
        ),
        (vec!["--lr=-1"], vec!["--lr", ">= 0"]),
    ] {
        let mut f = vec!["--steps", "2"];
        f.extend(flags.iter());
        let o = probe(&train_args(&m, &d, &out, &f));
        assert_eq!(o.code, 2, "{flags:?}: {}", o.stderr);
        let first = o.stderr.lines().next().unwrap_or_default();
        for n in &needles {
            assert!(first.contains(n), "{flags:?}: should say {n:?}: {first}");
        }
        assert!(!out.exists(), "{flags:?}");
    }
    // A flag that does not fit the data: an input error (exit 3).
    let o = probe(&train_args(&m, &d, &out, &["--steps", "2", "--augment"]));
    one_line_error_after_notes(&o, 3, &["--augment", "[N, C, H, W]", "[N, 4]"]);
    assert!(!out.join("step-00000000.safetensors").exists());
    // Neither --steps nor --epochs: a usage error (clap, exit 2).
    let o = probe(&train_args(&m, &d, &out, &[]));
    assert_eq!(o.code, 2, "{}", o.stderr);
}

/// --epochs and --ckpt-every-epoch: 10 samples in batches of 4 are 3 steps an epoch.
#[test]
fn epochs_and_epoch_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "lin", &[], true);
    let d = tiny_data(dir.path(), 10, None);
    let out = dir.path().join("run");
    let mut a = train_args(
        &m,
        &d,
        &out,
        &[
            "--epochs",
            "2",
            "--ckpt-every-epoch",
            "--schedule",
            "step:2,0.5",
            "--lr",
            "0.1",
        ],
    );
    let i = a.iter().position(|x| *x == "--batch").unwrap();
    a[i + 1] = "4";
    let o = probe(&a).ok();
    assert!(
        o.stdout.contains("step-00000003.safetensors"),
        "{}",
        o.stdout
    );
    let names = files(&out);
    assert!(names.contains(&"step-00000003.safetensors".to_string()));
    assert!(names.contains(&"step-00000006.safetensors".to_string()));
    let log = h5_dump(&out.join("train.h5"));
    assert_eq!(i64s(&log["datasets"]["samples"]), [4, 4, 2, 4, 4, 2]);
    assert_eq!(
        f64s(&log["datasets"]["lr"]),
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    );
    let (_, meta) = read_st(&out.join("step-00000006.safetensors"));
    assert_eq!(
        (meta["epoch"].as_str(), meta["lr"].as_str()),
        ("2", "0.025")
    );
    // A checkpoint probe eval reads as one of this model's.
    let r = dir.path().join("eval.h5");
    probe(&[
        "eval",
        "--model",
        s(&m),
        "--ckpt",
        s(&out.join("step-00000006.safetensors")),
        "--data",
        s(&d),
        "--out",
        s(&r),
    ])
    .ok();
}

/// A run folder from before `optim/` (optimizer state as `step-<n>.optim.safetensors` beside the
/// weights): `--resume` still continues it bit for bit, and `probe grad` over its
/// `step-*.safetensors` skips the optimizer files with one note.
#[test]
fn a_run_in_the_old_layout_resumes_and_its_optimizer_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "lin", &[], true);
    let d = tiny_data(dir.path(), 10, None);
    let (whole, old) = (dir.path().join("whole"), dir.path().join("old"));
    let flags = ["--lr", "0.1", "--momentum", "0.9", "--ckpt-every", "2"];
    let with = |steps: &'static str| {
        let mut f = flags.to_vec();
        f.extend(["--steps", steps]);
        f
    };
    probe(&train_args(&m, &d, &whole, &with("4"))).ok();
    probe(&train_args(&m, &d, &old, &with("2"))).ok();
    // Into the old layout.
    for step in ["00000000", "00000002"] {
        std::fs::rename(
            old.join(format!("optim/step-{step}.safetensors")),
            old.join(format!("step-{step}.optim.safetensors")),
        )
        .unwrap();
    }
    std::fs::remove_dir(old.join("optim")).unwrap();
    let mut resume = train_args(&m, &d, &old, &with("4"));
    resume.push("--resume");
    let o = probe(&resume).ok();
    assert!(o.stderr.contains("resuming from"), "{}", o.stderr);
    // Bit for bit (the metadata's JSON order varies from file to file).
    let (x, _) = read_st(&old.join("step-00000004.safetensors"));
    let (y, _) = read_st(&whole.join("step-00000004.safetensors"));
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
    for (k, v) in &x {
        let bits = |v: &Vec<f64>| v.iter().map(|x| (*x as f32).to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&v.1),
            bits(&y[k].1),
            "the resumed old-layout run differs: {k}"
        );
    }
    let mut args: Vec<String> = ["grad", "--model", s(&m), "--data", s(&d), "--out"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    args.push(s(&dir.path().join("g.h5")).to_string());
    args.push("--ckpt".into());
    args.extend(
        files(&old)
            .iter()
            .filter(|n| n.starts_with("step-") && n.ends_with(".safetensors"))
            .map(|n| s(&old.join(n)).to_string()),
    );
    let o = probe(&args).ok();
    let notes: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("note")).collect();
    assert_eq!(notes.len(), 1, "{}", o.stderr);
    assert!(notes[0].contains("2 optimizer-state files"), "{}", notes[0]);
    let steps: Vec<&str> = o
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(steps, ["0", "2", "4"], "{}", o.stdout);
}
