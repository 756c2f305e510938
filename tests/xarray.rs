//! The results file as labelled data (schema version 3): xarray opens the files of `probe grad`,
//! `probe eval` and `probe train` (h5netcdf) with every axis named, the rows on the `step`
//! coordinate and parameters selectable by name, through appends and a rewritten `/analysis`;
//! and `--format csv|json` prints what pandas reads back as the file's own numbers
//! (tests/fixtures/xarray_checks.py does the reading).
mod common;

use common::*;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

const CHECKS: &str = "tests/fixtures/xarray_checks.py";

/// A 100-sample data file for the MLP and checkpoints `step-<s>.safetensors` for each of
/// `steps` (the MLP's initial weights scaled).
fn setup(dir: &Path, steps: &[u32]) -> (PathBuf, Vec<PathBuf>) {
    let n = 100;
    let data = dir.join("d.h5");
    write_data(
        &data,
        &ndarray::ArrayD::from_shape_vec(vec![n, 1, 28, 28], noise(n * 784, 3)).unwrap(),
        &ndarray::ArrayD::from_shape_vec(vec![n], (0..n as i64).map(|i| i % 10).collect()).unwrap(),
    );
    let ckpts = steps
        .iter()
        .map(|&s| {
            let p = dir.join(format!("step-{s}.safetensors"));
            let scale = 1.0 + s as f32 / 1000.0;
            write_ckpt(&p, &own_state(&model("mlp.onnx"), |v| v * scale), &[]);
            p
        })
        .collect();
    (data, ckpts)
}

fn run(cmd: &str, data: &Path, ckpts: &[PathBuf], out: &Path, extra: &[&str]) -> Output {
    let mut a: Vec<OsString> = vec![
        cmd.into(),
        "--model".into(),
        model("mlp.onnx").into(),
        "--data".into(),
        data.into(),
        "--batch".into(),
        "32".into(),
        "-o".into(),
        out.into(),
    ];
    a.extend(extra.iter().map(OsString::from));
    a.push("--ckpt".into());
    a.extend(ckpts.iter().map(|c| c.clone().into_os_string()));
    probe(&a).ok()
}

fn labelled(path: &Path, kind: &str) -> String {
    py(&[
        OsString::from(CHECKS),
        "labelled".into(),
        path.into(),
        kind.into(),
    ])
}

/// Checks what `probe <what> --format <format>` printed (`stdout`) against the file.
fn printed(format: &str, what: &str, stdout: &str, path: &Path, dir: &Path) -> String {
    let text = dir.join(format!("{what}.{format}"));
    std::fs::write(&text, stdout).unwrap();
    py(&[
        OsString::from(CHECKS),
        "printed".into(),
        format.into(),
        what.into(),
        text.into(),
        path.into(),
    ])
}

#[test]
fn grad_file_opens_in_xarray_through_appends_and_analysis() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, ck) = setup(d, &[100, 200, 300, 400, 500]);
    let out = d.join("g.h5");
    let flags = ["--save-grad", "--weight-decay", "1e-3"];
    // Two rows, then three more appended to the same file (the scales grow with the rows).
    run("grad", &data, &ck[..2], &out, &flags);
    labelled(&out, "grad");
    let o = run("grad", &data, &ck, &out, &flags);
    assert_eq!(o.stdout.lines().count(), 1 + 3, "{}", o.stdout);
    eprint!("{}", labelled(&out, "grad"));
    // /analysis attaches to /step and /param; rewriting it must leave them no dangling entry.
    for _ in 0..2 {
        probe(&[OsString::from("analyze"), out.clone().into()]).ok();
    }
    eprint!("{}", labelled(&out, "grad"));
    eprint!(
        "{}",
        py(&[OsString::from("examples/read_xarray.py"), out.into()])
    );
}

#[test]
fn eval_and_train_files_open_in_xarray() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, ck) = setup(d, &[0, 10, 20]);
    let out = d.join("e.h5");
    run("eval", &data, &ck, &out, &[]);
    eprint!("{}", labelled(&out, "eval"));

    let run_dir = d.join("run");
    let a: Vec<OsString> = vec![
        "train".into(),
        "--model".into(),
        model("mlp.onnx").into(),
        "--data".into(),
        data.clone().into(),
        "--batch".into(),
        "25".into(),
        "--steps".into(),
        "6".into(),
        "--ckpt-every".into(),
        "3".into(),
        "--threads".into(),
        "1".into(),
        "-o".into(),
        run_dir.clone().into(),
    ];
    probe(&a).ok();
    eprint!("{}", labelled(&run_dir.join("train.h5"), "train"));
}

#[test]
fn format_csv_and_json_read_back_as_the_files_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, ck) = setup(d, &[0, 10, 20, 30]);
    for format in ["csv", "json"] {
        let out = d.join(format!("e-{format}.h5"));
        let o = run("eval", &data, &ck, &out, &["--format", format]);
        eprint!("{}", printed(format, "eval", &o.stdout, &out, d));

        let out = d.join(format!("g-{format}.h5"));
        let o = run(
            "grad",
            &data,
            &ck,
            &out,
            &["--format", format, "--weight-decay", "1e-3"],
        );
        eprint!("{}", printed(format, "grad", &o.stdout, &out, d));

        let o = probe(&[
            OsString::from("analyze"),
            out.clone().into(),
            "--format".into(),
            format.into(),
        ])
        .ok();
        eprint!("{}", printed(format, "analyze", &o.stdout, &out, d));
    }
    // The header alone where nothing is left to do (every checkpoint already in the file).
    let out = d.join("e-csv.h5");
    let o = run("eval", &data, &ck, &out, &["--format", "csv"]);
    assert_eq!(
        o.stdout, "step,loss,accuracy,samples,seconds,checkpoint\n",
        "{}",
        o.stdout
    );
}

#[test]
fn every_subcommand_with_an_output_takes_o_and_shows_an_example() {
    for cmd in [
        "eval", "grad", "train", "merge", "autodiff", "analyze", "plot",
    ] {
        let o = probe(&[cmd, "--help"]).ok();
        // An "Example(s):" section that runs this subcommand.
        let lines: Vec<&str> = o.stdout.lines().collect();
        let at = lines
            .iter()
            .position(|l| *l == "Example:" || *l == "Examples:");
        assert!(
            at.is_some_and(|i| lines[i..]
                .iter()
                .any(|l| l.contains(&format!("probe {cmd} ")))),
            "probe {cmd} --help has no example:\n{}",
            o.stdout
        );
        if cmd != "analyze" {
            assert!(
                o.stdout.contains("-o, --out"),
                "probe {cmd} --help has no -o:\n{}",
                o.stdout
            );
        }
    }
}
