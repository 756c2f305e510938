//! `probe analyze` and `probe plot` as a user runs them: on a real training run measured by
//! `probe grad`, on a synthetic schema-2 file whose window distances have a closed form, and on
//! bad input (not HDF5, not a grad file, one checkpoint). Plus the Python example that redraws a
//! panel with h5py and matplotlib.
mod common;

use common::*;
use hdf5::types::VarLenUnicode;
use ndarray::{Array1, Array2, Array3};
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn venv() -> Option<PathBuf> {
    let p = root().join(".venv/bin/python");
    if p.exists() {
        Some(p)
    } else {
        println!(
            "note: {} is missing (run ./setup.sh): skipping the Python parts",
            p.display()
        );
        None
    }
}

/// Reads `/analysis/series/<col>` for the series `name`.
fn series_value(f: &hdf5::File, name: &str, col: &str) -> f64 {
    let names: Vec<String> = f
        .dataset("analysis/series/name")
        .unwrap()
        .read_raw::<VarLenUnicode>()
        .unwrap()
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let i = names
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("{name} not in {names:?}"));
    f.dataset(&format!("analysis/series/{col}"))
        .unwrap()
        .read_raw::<f64>()
        .unwrap()[i]
}

fn str_attr(loc: &hdf5::Location, name: &str, v: &str) {
    let v: VarLenUnicode = v.parse().unwrap();
    loc.new_attr::<VarLenUnicode>()
        .create(name)
        .unwrap()
        .write_scalar(&v)
        .unwrap();
}

fn i64_attr(loc: &hdf5::Location, name: &str, v: i64) {
    loc.new_attr::<i64>()
        .create(name)
        .unwrap()
        .write_scalar(&v)
        .unwrap();
}

/// A small `probe grad` file written by hand: `k` rows, steps 0, 10, ..., loss 2 - 0.001 step,
/// |g| = 1 / (1 + step), |w| = 10 + step/100, dist_prev 0.1.
fn write_grad_file(path: &Path, k: usize, schema: i64) -> hdf5::File {
    let f = hdf5::File::create(path).unwrap();
    str_attr(&f, "command", "grad");
    str_attr(&f, "data", "synthetic");
    str_attr(&f, "weight_decay", "");
    i64_attr(&f, "schema_version", schema);
    i64_attr(&f, "rows", k as i64);
    i64_attr(&f, "complete", 1);
    let step: Vec<i64> = (0..k as i64).map(|i| 10 * i).collect();
    f.create_group("checkpoints").unwrap();
    f.new_dataset_builder()
        .with_data(&step)
        .create("checkpoints/step")
        .unwrap();
    let col = |name: &str, g: &dyn Fn(f64) -> f64| {
        let v: Vec<f64> = step.iter().map(|&s| g(s as f64)).collect();
        if let Some((grp, _)) = name.rsplit_once('/') {
            if f.group(grp).is_err() {
                f.create_group(grp).unwrap();
            }
        }
        f.new_dataset_builder().with_data(&v).create(name).unwrap();
    };
    col("loss", &|s| 2.0 - 0.001 * s);
    col("accuracy", &|s| 0.5 + 0.001 * s);
    col("grad/l2", &|s| 1.0 / (1.0 + s));
    col("weights/l2", &|s| 10.0 + s / 100.0);
    col("weights/dist_prev", &|s| if s == 0.0 { 0.0 } else { 0.1 });
    f
}

#[test]
fn bad_input_is_one_line_naming_the_file_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.h5");
    std::fs::write(&text, "not hdf5\n").unwrap();
    one_line_error(
        &probe(&["analyze", s(&text)]),
        3,
        &["notes.h5", "not an HDF5 file"],
    );
    one_line_error(
        &probe(&["plot", s(&text), "-o", s(&dir.path().join("a.png"))]),
        3,
        &["notes.h5"],
    );

    let missing = dir.path().join("nothing.h5");
    one_line_error(
        &probe(&["analyze", s(&missing)]),
        3,
        &["nothing.h5", "no such file"],
    );

    let eval = dir.path().join("eval.h5");
    {
        let _g = hdf5_guard();
        let f = write_grad_file(&eval, 3, 1);
        f.attr("command")
            .unwrap()
            .write_scalar(&"eval".parse::<VarLenUnicode>().unwrap())
            .unwrap();
    }
    one_line_error(
        &probe(&["analyze", s(&eval)]),
        3,
        &["eval.h5", "probe eval", "not `probe grad`"],
    );

    let one = dir.path().join("one.h5");
    {
        let _g = hdf5_guard();
        write_grad_file(&one, 1, 1);
    }
    one_line_error(
        &probe(&["analyze", s(&one)]),
        3,
        &["one.h5", "1 complete checkpoint", "at least 2"],
    );
    // One checkpoint still makes a figure (points, no lines to speak of).
    let png = dir.path().join("one.png");
    probe(&["plot", s(&one), "-o", s(&png), "-q"]).ok();
    assert!(png.exists());
    // An unknown format is a bad flag (exit 2, clap's error naming it); PDF is drawn.
    let o = probe(&["plot", s(&one), "-o", s(&dir.path().join("a.eps"))]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    let first = o.stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("a.eps") && first.contains(".png, .svg or .pdf"),
        "{first}"
    );
    probe(&["plot", s(&one), "-o", s(&dir.path().join("a.pdf")), "-q"]).ok();
}

#[test]
fn schema_1_file_analyzes_what_exists_and_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.h5");
    {
        let _g = hdf5_guard();
        write_grad_file(&path, 12, 1);
    }
    let o = probe(&["analyze", s(&path)]).ok();
    for needle in [
        "/grad_reg/l2 (probe grad --weight-decay L)",
        "/noise/batch_var (probe grad --noise)",
        "/hessian/top (probe grad --hessian)",
    ] {
        assert!(
            o.stderr.contains(needle),
            "stderr should name {needle}: {}",
            o.stderr
        );
    }
    assert!(
        o.stdout
            .contains("Weight distribution: skipped: schema_version 1 predates"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("Loss stabilized? no: still decreasing"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("|g| -> 0?"), "{}", o.stdout);
    let _g = hdf5_guard();
    let f = hdf5::File::open(&path).unwrap();
    // The loss is an exact line: slope -0.001 with a zero-width interval; the half is rows 6..12.
    assert!((series_value(&f, "loss", "slope") + 0.001).abs() < 1e-12);
    assert!((series_value(&f, "loss", "slope_hi") + 0.001).abs() < 1e-9);
    assert_eq!(series_value(&f, "loss", "half_start"), 2.0 - 0.06);
    assert_eq!(series_value(&f, "loss", "first"), 2.0);
    assert!(f.link_exists("analysis/series/kpss_stat"));
    assert!(!f.link_exists("analysis/distribution"));
    let missing = probe::store::read_str_attr(&f.group("analysis").unwrap(), "missing").unwrap();
    assert!(missing.contains("/noise/batch_var"), "{missing}");
}

/// Uniform quantile functions U[0, s] at 257 levels.
fn uniform_q(s: f64) -> Vec<f64> {
    (0..=256).map(|j| s * j as f64 / 256.0).collect()
}

#[test]
fn synthetic_schema_2_file_gives_the_closed_form_distances() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r2.h5");
    let k = 8;
    // Tensor 0 (100 entries) is U[0, 1 + r] at row r, tensor 1 (300 entries) is U[0, 2] always.
    {
        let _g = hdf5_guard();
        let f = write_grad_file(&path, k, 2);
        let names: Vec<VarLenUnicode> = ["a.weight", "b.weight"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        f.create_group("params").unwrap();
        f.new_dataset_builder()
            .with_data(&names)
            .create("params/name")
            .unwrap();
        let mut q = Array3::<f64>::zeros((k, 2, 257));
        let mut counts = Array3::<i64>::zeros((k, 2, 64));
        for r in 0..k {
            for (j, v) in uniform_q(1.0 + r as f64).iter().enumerate() {
                q[[r, 0, j]] = *v;
            }
            for (j, v) in uniform_q(2.0).iter().enumerate() {
                q[[r, 1, j]] = *v;
            }
            counts[[r, 0, 0]] = 100;
            counts[[r, 1, 0]] = 300;
        }
        f.new_dataset_builder()
            .with_data(&q)
            .create("weights/quantiles")
            .unwrap();
        f.create_group("weights/hist").unwrap();
        f.new_dataset_builder()
            .with_data(&counts)
            .create("weights/hist/counts")
            .unwrap();
        // Consecutive rows: tensor 0's W1 is 0.5 (the mean moves by 1/2), half its mean |dw|;
        // tensor 1 moves (mean |dw| 0.2) without changing its distribution.
        let mut w1 = Array2::<f64>::zeros((k, 2));
        let mut mv = Array2::<f64>::zeros((k, 2));
        for r in 1..k {
            w1[[r, 0]] = 0.5;
            mv[[r, 0]] = 1.0;
            mv[[r, 1]] = 0.2;
        }
        f.new_dataset_builder()
            .with_data(&w1)
            .create("weights/w1_prev")
            .unwrap();
        f.new_dataset_builder()
            .with_data(&mv)
            .create("weights/per_param_mean_abs_move")
            .unwrap();
        let lr = Array1::from_elem(k, 0.1);
        f.new_dataset_builder()
            .with_data(&lr)
            .create("checkpoints/lr")
            .unwrap();
        let top: Vec<f64> = (0..k).map(|r| 20.0 * r as f64 / (k - 1) as f64).collect();
        f.create_group("hessian").unwrap();
        f.new_dataset_builder()
            .with_data(&top)
            .create("hessian/top")
            .unwrap();
    }
    // --lr overrides /checkpoints/lr; the second run (without it) replaces all of /analysis.
    let o = probe(&["analyze", s(&path), "--lr", "0.05"]).ok();
    assert!(o.stdout.contains("lr from --lr 0.05"), "{}", o.stdout);
    {
        let _g = hdf5_guard();
        let f = hdf5::File::open(&path).unwrap();
        let eos = f
            .dataset("analysis/edge_of_stability/ratio")
            .unwrap()
            .read_raw::<f64>()
            .unwrap();
        assert!((eos[7] - 0.5).abs() < 1e-12, "{eos:?}");
    }
    let o = probe(&["analyze", s(&path)]).ok();
    assert!(
        o.stdout.contains("Edge of stability: lambda_max * lr / 2")
            && o.stdout.contains("lr from /checkpoints/lr"),
        "{}",
        o.stdout
    );
    let _g = hdf5_guard();
    let f = hdf5::File::open(&path).unwrap();
    let read = |n: &str| f.dataset(n).unwrap().read_raw::<f64>().unwrap();
    // Entry-weighted: W1 (100 * 0.5 + 300 * 0) / 400 = 0.125, move (100 + 60) / 400 = 0.4.
    let ratio = read("analysis/distribution/ratio");
    assert!(ratio[0].is_nan());
    for r in &ratio[1..] {
        assert!((r - 0.125 / 0.4).abs() < 1e-12, "{ratio:?}");
    }
    let rpp = f
        .dataset("analysis/distribution/ratio_per_param")
        .unwrap()
        .read_2d::<f64>()
        .unwrap();
    assert_eq!((rpp[[3, 0]], rpp[[3, 1]]), (0.5, 0.0));
    // Windows of U[0, s] with s ordered: W1 = (mean s_B - mean s_A) / 2 for tensor 0, 0 for
    // tensor 1. Halves: s_A = 1..4, s_B = 5..8: W1 = 2, weighted 2 * 100/400 = 0.5.
    let w1 = read("analysis/distribution/windows/w1");
    let per = f
        .dataset("analysis/distribution/windows/w1_per_param")
        .unwrap()
        .read_2d::<f64>()
        .unwrap();
    assert!((per[[0, 0]] - 2.0).abs() < 1e-9, "{per:?}");
    assert!(per[[0, 1]].abs() < 1e-12);
    assert!((w1[0] - 0.5).abs() < 1e-9);
    // Quarters of 8 rows are pairs: s = (1,2) vs (3,4): W1 = 1 per quarter step.
    for q in 1..4 {
        assert!((per[[q, 0]] - 1.0).abs() < 1e-9, "{per:?}");
    }
    let names: Vec<String> = f
        .dataset("analysis/distribution/windows/name")
        .unwrap()
        .read_raw::<VarLenUnicode>()
        .unwrap()
        .iter()
        .map(|v| v.as_str().to_string())
        .collect();
    assert_eq!(names[0], "first half vs second half");
    assert_eq!(names[3], "quarter 3 vs quarter 4");
    // The quantile model reproduces the stored W1 to the previous row exactly here.
    let calib: f64 = f
        .group("analysis/distribution")
        .unwrap()
        .attr("quantile_w1_error")
        .unwrap()
        .read_scalar()
        .unwrap();
    assert!(calib.abs() < 1e-9, "{calib}");
    // Edge of stability: top * lr / 2 = r / (k - 1).
    let eos = read("analysis/edge_of_stability/ratio");
    assert!((eos[7] - 1.0).abs() < 1e-12);
    drop(f);
    drop(_g);
    let png = dir.path().join("r2.png");
    let o = probe(&["plot", s(&path), "-o", s(&png)]).ok();
    assert!(
        o.stderr.contains(
            "no /noise/batch_var (probe grad --noise): the gradient-noise panel left out"
        ),
        "{}",
        o.stderr
    );
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
}

/// `probe train` then `probe grad` on 1000 Fashion-MNIST images; then analyze and plot, before
/// and after adding the schema-2 columns (computed from the checkpoints with numpy), and the
/// Python example. Numbers checked against numpy's polyfit and a numpy KPSS.
#[test]
fn real_run_analyze_plot_and_python_example() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    probe(&[
        "train",
        "--model",
        s(&model("mlp.onnx")),
        "--data",
        "fashion-mnist",
        "--limit",
        "1000",
        "--steps",
        "150",
        "--ckpt-every",
        "10",
        "--batch",
        "50",
        "--opt",
        "sgd",
        "--lr",
        "0.05",
        "--momentum",
        "0.9",
        "--weight-decay",
        "5e-4",
        "--threads",
        "1",
        "--out",
        s(&run),
        "-q",
    ])
    .ok();
    let mut ckpts: Vec<PathBuf> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".safetensors") && !n.ends_with(".optim.safetensors")
        })
        .collect();
    ckpts.sort();
    assert_eq!(ckpts.len(), 16);
    let grad = dir.path().join("grad.h5");
    let mut args: Vec<String> = [
        "grad",
        "--model",
        s(&model("mlp.onnx")),
        "--data",
        "fashion-mnist",
        "--limit",
        "1000",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.push("--ckpt".into());
    args.extend(ckpts.iter().map(|p| s(p).to_string()));
    args.extend(
        [
            "--weight-decay",
            "5e-4",
            "--noise",
            "--noise-samples",
            "100",
            "--hessian",
            "--hessian-samples",
            "100",
            "--hessian-iters",
            "8",
            "--hutchinson",
            "2",
            "--threads",
            "1",
            "-q",
            "--out",
            s(&grad),
        ]
        .map(String::from),
    );
    probe(&args).ok();

    let o = probe(&["analyze", s(&grad)]).ok();
    println!("{}", o.stdout);
    assert!(
        o.stdout
            .contains("16 checkpoints, steps 0..150; last half: 8 checkpoints from 80"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("|g + wd w| -> 0?"), "{}", o.stdout);
    assert!(
        o.stdout
            .contains("Weight distribution settled while the weights moved?"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("Edge of stability"), "{}", o.stdout);
    let png = dir.path().join("grad.png");
    let svg = dir.path().join("grad.svg");
    let p = probe(&["plot", s(&grad), "-o", s(&png)]).ok();
    assert!(
        !p.stderr.contains("left out"),
        "every panel should be there: {}",
        p.stderr
    );
    probe(&["plot", s(&grad), "-o", s(&svg), "-q"]).ok();
    assert!(std::fs::read(&png).unwrap().len() > 20_000);
    assert!(std::fs::read_to_string(&svg)
        .unwrap()
        .contains("Full-dataset gradient norm"));
    if let Ok(keep) = std::env::var("PROBE_KEEP_FIGURES") {
        for f in [&png, &svg] {
            std::fs::copy(f, Path::new(&keep).join(f.file_name().unwrap())).unwrap();
        }
    }

    let Some(python) = venv() else { return };
    // The analysis against numpy: OLS slope and its standard error (polyfit), KPSS computed
    // independently from its definition, and W1 between consecutive rows in [0, mean|dw|].
    const CHECK: &str = r#"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    k = int(f.attrs["rows"]); step = f["checkpoints/step"][:k].astype(float)
    o = np.argsort(step, kind="stable"); h = k // 2
    names = list(f["analysis/series/name"].asstr()[:]); s = f["analysis/series"]
    for name in ["loss", "grad/l2", "weights/l2"]:
        i = names.index(name)
        x, y = step[o][h:], f[name][:k][o][h:]
        (b, a), cov = np.polyfit(x, y, 1, cov="unscaled")
        ssr = ((y - a - b * x) ** 2).sum(); se = np.sqrt(ssr / (len(x) - 2) * cov[0, 0])
        assert abs(s["slope"][i] - b) <= 1e-9 * abs(b) + 1e-15, (name, s["slope"][i], b)
        assert abs(s["slope_se"][i] - se) <= 1e-6 * se + 1e-15, (name, s["slope_se"][i], se)
        e = y - y.mean(); n = len(e); l = int(np.floor(4 * (n / 100) ** 0.25))
        lrv = (e ** 2).sum() + 2 * sum((1 - j / (l + 1)) * (e[j:] * e[:-j]).sum() for j in range(1, l + 1))
        eta = (np.cumsum(e) ** 2).sum() / n ** 2 / (lrv / n)
        assert abs(s["kpss_stat"][i] - eta) <= 1e-9 * eta, (name, s["kpss_stat"][i], eta)
        assert s["kpss_lags"][i] == l
    r = f["analysis/distribution/ratio"][:]
    assert np.isnan(r[0]) and np.all((r[1:] >= 0) & (r[1:] <= 1 + 1e-12)), r
    w = f["analysis/distribution/windows/w1"][:]
    assert len(w) == 4 and np.all(w > 0), w
    assert abs(f["analysis/distribution"].attrs["quantile_w1_error"]) < 0.3
print("ok")
"#;
    let out = py(&["-c", CHECK, s(&grad)]);
    assert!(out.trim().ends_with("ok"), "{out}");

    // examples/plot_panel.py redraws |g| vs step (with the analysis' trend line).
    let panel = dir.path().join("panel.png");
    let o = {
        let mut cmd = std::process::Command::new(python);
        cmd.current_dir(root()).args([
            s(&root().join("examples/plot_panel.py")),
            s(&grad),
            s(&panel),
        ]);
        common::run(cmd)
    };
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    assert!(std::fs::read(&panel).unwrap().starts_with(b"\x89PNG"));
    if let Ok(keep) = std::env::var("PROBE_KEEP_FIGURES") {
        std::fs::copy(&panel, Path::new(&keep).join("panel.png")).unwrap();
    }
}

/// Issue 5's acceptance as a user runs it: train 60 steps with a checkpoint every 10 on
/// Fashion-MNIST, `probe grad --weight-decay 5e-4` over the checkpoints, `probe analyze`, and
/// `probe plot -o fig.png`: all succeed, the verdict is printed, the PNG is a PNG with the panels.
#[test]
fn acceptance_train_grad_analyze_plot() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    probe(&[
        "train",
        "--model",
        s(&model("mlp.onnx")),
        "--data",
        "fashion-mnist",
        "--limit",
        "2000",
        "--steps",
        "60",
        "--ckpt-every",
        "10",
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
        "--out",
        s(&run),
        "-q",
    ])
    .ok();
    let mut args: Vec<String> = [
        "grad",
        "--model",
        s(&model("mlp.onnx")),
        "--data",
        "fashion-mnist",
        "--limit",
        "2000",
        "--weight-decay",
        "5e-4",
        "--out",
    ]
    .map(String::from)
    .to_vec();
    args.push(s(&dir.path().join("grad.h5")).to_string());
    args.push("--ckpt".into());
    for k in (0..=60).step_by(10) {
        args.push(s(&run.join(format!("step-{k:08}.safetensors"))).to_string());
    }
    probe(&args).ok();
    let grad = dir.path().join("grad.h5");
    let o = probe(&["analyze", s(&grad)]).ok();
    assert!(
        o.stdout.contains("7 checkpoints, steps 0..60"),
        "{}",
        o.stdout
    );
    for q in [
        "|g| -> 0?",
        "Loss stabilized?",
        "Weight distribution settled while the weights moved?",
    ] {
        assert!(
            o.stdout.contains(q),
            "no '{q}' in the verdict:\n{}",
            o.stdout
        );
    }
    let fig = dir.path().join("fig.png");
    let p = probe(&["plot", s(&grad), "-o", s(&fig)]).ok();
    // Without --noise and --hessian those panels are left out, and stderr says which.
    assert!(
        p.stderr.contains("/noise/") && p.stderr.contains("/hessian/"),
        "{}",
        p.stderr
    );
    let bytes = std::fs::read(&fig).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "{} bytes",
        bytes.len()
    );
}
