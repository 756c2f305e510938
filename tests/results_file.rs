//! The results file across runs: resuming skips checkpoints already complete, a file left by a
//! killed run is trimmed to its complete rows on reopen (the `probe::store::Store` API directly),
//! and `examples/read_results.py` reads what probe writes, honouring `rows`.
mod common;

use common::*;
use probe::store::{Cell, RunInfo, Store};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A 100-sample data file for the MLP and checkpoints `names` (the MLP's initial weights scaled by
/// `scales`); `meta_step` puts a step into the first checkpoint's metadata.
fn setup(dir: &Path, names: &[&str], scales: &[f32]) -> (PathBuf, Vec<PathBuf>) {
    let n = 100;
    let data = dir.join("d.h5");
    write_data(
        &data,
        &ndarray::ArrayD::from_shape_vec(vec![n, 1, 28, 28], noise(n * 784, 9)).unwrap(),
        &ndarray::ArrayD::from_shape_vec(vec![n], (0..n as i64).map(|i| i % 10).collect()).unwrap(),
    );
    let mut ckpts = Vec::new();
    for (i, (name, s)) in names.iter().zip(scales).enumerate() {
        let p = dir.join(name);
        let meta: &[(&str, &str)] = if i == 0 { &[("step", "100")] } else { &[] };
        write_ckpt(&p, &own_state(&model("mlp.onnx"), |v| v * s), meta);
        ckpts.push(p);
    }
    (data, ckpts)
}

fn eval(dir: &Path, data: &Path, ckpts: &[PathBuf], out: &Path) -> Output {
    let mut a: Vec<OsString> = vec![
        "eval".into(),
        "--model".into(),
        model("mlp.onnx").into(),
        "--data".into(),
        data.into(),
        "--out".into(),
        out.into(),
        "--ckpt".into(),
    ];
    a.extend(ckpts.iter().map(|c| c.clone().into_os_string()));
    probe_in(dir, &a).ok()
}

#[test]
fn rerun_skips_complete_checkpoints_and_appends_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, ck) = setup(
        d,
        &[
            "first.safetensors",
            "step-200.safetensors",
            "step-300.safetensors",
        ],
        &[0.5, 0.9, 1.3],
    );
    let out = d.join("r.h5");

    let o = eval(d, &data, &ck[..2], &out);
    assert!(!o.stderr.contains("skip"), "{}", o.stderr);
    let first = h5_dump(&out);
    assert_eq!(first["attrs"]["rows"], 2);
    assert_eq!(first["attrs"]["complete"], 1);
    // Steps from the metadata, then from the file name.
    assert_eq!(i64s(&first["datasets"]["checkpoints/step"]), vec![100, 200]);
    let loss = f64s(&first["datasets"]["loss"]);
    assert!(
        (loss[0] - loss[1]).abs() > 1e-6,
        "two checkpoints, one loss: {loss:?}"
    );

    // Same run again: nothing to do; both skipped, the file keeps its two rows and values.
    let o = eval(d, &data, &ck[..2], &out);
    assert_eq!(
        o.stderr.matches("skip:").count(),
        2,
        "both checkpoints should be skipped:\n{}",
        o.stderr
    );
    assert!(
        !o.stdout.contains("safetensors"),
        "no rows expected:\n{}",
        o.stdout
    );
    let again = h5_dump(&out);
    assert_eq!(again["attrs"]["rows"], 2);
    assert_eq!(again["attrs"]["complete"], 1);
    assert_eq!(again["datasets"]["loss"], first["datasets"]["loss"]);
    assert_eq!(
        again["datasets"]["checkpoints/path"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A third checkpoint: only it is evaluated, appended as row 3.
    let o = eval(d, &data, &ck, &out);
    assert_eq!(o.stderr.matches("skip:").count(), 2, "{}", o.stderr);
    assert!(o.stdout.contains("step-300.safetensors"), "{}", o.stdout);
    let third = h5_dump(&out);
    assert_eq!(third["attrs"]["rows"], 3);
    assert_eq!(
        i64s(&third["datasets"]["checkpoints/step"]),
        vec![100, 200, 300]
    );
    assert_eq!(f64s(&third["datasets"]["loss"])[..2], loss[..]);

    // The example script prints the same three rows.
    let text = py(&[
        root().join("examples/read_results.py").into_os_string(),
        out.clone().into_os_string(),
    ]);
    for (c, l) in ck.iter().zip(f64s(&third["datasets"]["loss"])) {
        let name = c.display().to_string();
        let line = text
            .lines()
            .find(|line| line.ends_with(&name))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{text}"));
        assert!(line.contains(&format!("{l:.6}")), "{line} vs loss {l}");
    }
}

fn info(model_sha: &str) -> RunInfo {
    RunInfo {
        command: "eval".into(),
        command_line: "test".into(),
        model_path: "m.onnx".into(),
        model_sha256: model_sha.into(),
        data: "d.h5".into(),
        data_samples: 10,
        batch_size: 5,
        loss: "cross_entropy".into(),
        extra: Default::default(),
    }
}

fn row(k: usize) -> probe::store::Row {
    vec![
        ("loss".into(), Cell::F64(1.0 + k as f64)),
        ("accuracy".into(), Cell::F64(0.1 * k as f64)),
        ("samples".into(), Cell::I64(10)),
        (
            "checkpoints/path".into(),
            Cell::Str(format!("ckpt-{k}.safetensors")),
        ),
        ("checkpoints/step".into(), Cell::I64(10 * k as i64)),
        ("checkpoints/sha256".into(), Cell::Str(format!("sha-{k}"))),
        (
            "grad/per_param_l2".into(),
            Cell::F64s(vec![2], vec![k as f64, 1.0]),
        ),
    ]
}

fn lengths(path: &Path) -> Vec<(String, usize)> {
    let f = hdf5::File::open(path).unwrap();
    [
        "loss",
        "accuracy",
        "samples",
        "checkpoints/path",
        "checkpoints/step",
        "checkpoints/sha256",
        "grad/per_param_l2",
    ]
    .iter()
    .map(|n| (n.to_string(), f.dataset(n).unwrap().shape()[0]))
    .collect()
}

#[test]
fn reopening_trims_rows_a_killed_run_left_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.h5");
    // This test keeps HDF5 files open in-process; see common::hdf5_guard.
    let g = hdf5_guard();
    let mut s = Store::open(&p, &info("aaa"), false).unwrap();
    for k in 0..3 {
        s.append(&row(k)).unwrap();
    }
    assert_eq!(s.rows(), 3);
    s.finish(true).unwrap();

    // A run killed while writing row 3: every dataset has it, `rows` still says 2.
    {
        let f = hdf5::File::open_rw(&p).unwrap();
        f.attr("rows").unwrap().write_scalar(&2i64).unwrap();
        f.attr("complete").unwrap().write_scalar(&0i64).unwrap();
    }
    assert!(lengths(&p).iter().all(|(_, n)| *n == 3));
    drop(g);

    // A reader that honours `rows` sees two rows already.
    let text = py(&[
        root().join("examples/read_results.py").into_os_string(),
        p.clone().into_os_string(),
    ]);
    assert!(text.contains("ckpt-1.safetensors"), "{text}");
    assert!(
        !text.contains("ckpt-2.safetensors"),
        "row 3 is not complete:\n{text}"
    );
    assert_eq!(text.lines().count(), 1 + 1 + 2, "{text}");

    let _g = hdf5_guard();
    // Another run's info is refused, and the file is left as it was.
    let e = Store::open(&p, &info("bbb"), false).err().expect("refused");
    assert_eq!(probe::error::fault_of(&e), Some(probe::error::Fault::Input));
    assert!(format!("{e:#}").contains("model_sha256"), "{e:#}");
    assert!(lengths(&p).iter().all(|(_, n)| *n == 3));

    // The same run reopens it: trimmed to the two complete rows, which count as done.
    let mut s = Store::open(&p, &info("aaa"), false).unwrap();
    assert_eq!(s.rows(), 2);
    assert!(
        lengths(&p).iter().all(|(_, n)| *n == 2),
        "not trimmed: {:?}",
        lengths(&p)
    );
    let done = s.done();
    assert_eq!(done.len(), 2);
    assert!(done.contains(&("ckpt-1.safetensors".to_string(), "sha-1".to_string())));
    assert!(!done.contains(&("ckpt-2.safetensors".to_string(), "sha-2".to_string())));
    s.append(&row(7)).unwrap();
    s.finish(true).unwrap();
    let f = hdf5::File::open(&p).unwrap();
    assert_eq!(probe::store::read_i64_attr(&f, "rows"), Some(3));
    assert_eq!(probe::store::read_i64_attr(&f, "complete"), Some(1));
    let steps: Vec<i64> = f.dataset("checkpoints/step").unwrap().read_raw().unwrap();
    assert_eq!(steps, vec![0, 10, 70]);
    // A tensor per row lands in its own row of a [K, ...] dataset.
    let per: ndarray::Array2<f64> = f.dataset("grad/per_param_l2").unwrap().read_2d().unwrap();
    assert_eq!(per, ndarray::arr2(&[[0.0, 1.0], [1.0, 1.0], [7.0, 1.0]]));
}

#[test]
fn a_failed_run_leaves_no_file_it_created_without_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.h5");
    let _g = hdf5_guard();
    let s = Store::open(&p, &info("aaa"), false).unwrap();
    assert!(p.exists());
    s.finish(false).unwrap();
    assert!(!p.exists(), "an empty, failed run's file remains");

    // A file with rows stays, marked incomplete.
    let mut s = Store::open(&p, &info("aaa"), false).unwrap();
    s.append(&row(0)).unwrap();
    s.finish(false).unwrap();
    let f = hdf5::File::open(&p).unwrap();
    assert_eq!(probe::store::read_i64_attr(&f, "rows"), Some(1));
    assert_eq!(probe::store::read_i64_attr(&f, "complete"), Some(0));
    assert_eq!(
        probe::store::read_i64_attr(&f, "schema_version"),
        Some(probe::store::SCHEMA_VERSION)
    );
}

/// probes/slurm_eval.sh (slurm_grad.sh --command eval) run by hand as array tasks 0..3 of
/// `--ckpt-shards 2 --data-shards 2`, then probes/slurm_merge.sh: task i takes checkpoint shard
/// i / 2 (the folder's checkpoints in step order, its optimizer's state skipped) and data shard
/// i % 2, and the merge holds every checkpoint in step order. Refused (exit 2): an index outside
/// 0..C*D, a `--threads` of the user's. (tests/slurm.rs runs the scripts under a real SLURM.)
#[test]
fn slurm_eval_script_shards_checkpoints_in_step_order_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ck_dir = d.join("ckpts");
    std::fs::create_dir(&ck_dir).unwrap();
    let (data, _) = setup(d, &[], &[]);
    // Version order: step-1, step-2, step-10 (not the names' byte order).
    for (name, s) in [("step-10", 1.1f32), ("step-1", 0.7), ("step-2", 0.9)] {
        write_ckpt(
            &ck_dir.join(format!("{name}.safetensors")),
            &own_state(&model("mlp.onnx"), |v| v * s),
            &[],
        );
    }
    write_ckpt(
        &ck_dir.join("optimizer-10.safetensors"),
        &[("m".to_string(), CkptTensor::f32(vec![1], &[0.0]))],
        &[("format", "probe-optimizer-state-1")],
    );
    let out = d.join("out");
    let script = |name: &str, id: &str, args: &[&str], positional: bool, flags: &[&str]| {
        let mut cmd = std::process::Command::new("bash");
        cmd.current_dir(d)
            .arg(root().join("probes").join(name))
            .args(args);
        if positional {
            cmd.args([model("mlp.onnx"), ck_dir.clone(), data.clone()]);
        }
        cmd.arg(&out)
            .arg("--quiet")
            .args(flags)
            .env("PROBE", env!("CARGO_BIN_EXE_probe"))
            .env("SLURM_ARRAY_TASK_ID", id)
            .env("SLURM_CPUS_PER_TASK", "1");
        run(cmd)
    };
    let task =
        |id: &str, args: &[&str], flags: &[&str]| script("slurm_eval.sh", id, args, true, flags);
    let shards = ["--ckpt-shards", "2", "--data-shards", "2"];
    let mut rows = 0;
    for (i, steps) in [vec![1, 10], vec![1, 10], vec![2], vec![2]]
        .iter()
        .enumerate()
    {
        task(&i.to_string(), &shards, &["--batch", "25"]).ok();
        let name = format!("eval-c{}-d{}", i / 2, i % 2);
        let dump = h5_dump(&out.join(format!("{name}.h5")));
        assert_eq!(
            &i64s(&dump["datasets"]["checkpoints/step"]),
            steps,
            "{name}"
        );
        assert_eq!(
            dump["attrs"]["data_shard"],
            format!("{}/2", i % 2),
            "{name}"
        );
        rows += i64s(&dump["datasets"]["samples"]).iter().sum::<i64>();
        assert!(out.join(format!("{name}.done")).exists());
    }
    assert_eq!(rows, 3 * 100, "each checkpoint's samples, split in two");
    let mut merge = vec!["--command", "eval"];
    merge.extend(shards);
    script("slurm_merge.sh", "", &merge, false, &[]).ok();
    let dump = h5_dump(&out.join("eval.h5"));
    assert_eq!(i64s(&dump["datasets"]["checkpoints/step"]), vec![1, 2, 10]);
    assert_eq!(dump["attrs"]["complete"], 1);

    for (id, args, flags, needle) in [
        ("4", &shards[..], &[][..], "task 4 is not one of 0..3"),
        ("0", &[], &["--threads", "4"], "--cpus-per-task"),
    ] {
        let o = task(id, args, flags);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
        assert!(o.stderr.contains(needle), "{args:?}: {}", o.stderr);
    }
}
