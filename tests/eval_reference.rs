//! `probe eval` end to end against PyTorch: the binary runs on shipped models and real data, the
//! results file is read back with h5py, and the numbers are compared with `models/reference.py`
//! on the very same samples (loss to 1e-5 relative, accuracy to 1e-4).
mod common;

use common::*;
use std::ffi::OsString;

fn args(v: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    v.iter().map(|a| a.as_ref().to_owned()).collect()
}

/// The single row of a one-checkpoint results file: (loss, accuracy), after checking the row
/// bookkeeping that every such file shares.
fn one_row(d: &serde_json::Value, samples: i64, elements: i64) -> (f64, f64) {
    let a = &d["attrs"];
    assert_eq!(a["schema_version"], probe::store::SCHEMA_VERSION, "{a}");
    assert_eq!(a["command"], "eval");
    assert_eq!(a["rows"], 1);
    assert_eq!(a["complete"], 1);
    assert_eq!(a["data_samples"], samples);
    assert_eq!(a["model_sha256"].as_str().unwrap().len(), 64);
    let ds = &d["datasets"];
    for name in [
        "loss",
        "accuracy",
        "samples",
        "elements",
        "seconds",
        "checkpoints/path",
        "checkpoints/step",
        "checkpoints/sha256",
    ] {
        assert_eq!(
            ds[name].as_array().map(|v| v.len()),
            Some(1),
            "/{name} should hold one row: {ds}"
        );
    }
    assert_eq!(i64s(&ds["samples"]), vec![samples]);
    assert_eq!(i64s(&ds["elements"]), vec![elements]);
    (f64s(&ds["loss"])[0], f64s(&ds["accuracy"])[0])
}

#[test]
fn resnet_on_fashion_mnist_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("resnet.h5");
    let model = model("resnet.onnx");
    let o = probe(&args(&[
        &"eval",
        &"--model",
        &model,
        &"--data",
        &"fashion-mnist",
        &"--limit",
        &"2000",
        &"--out",
        &out,
    ]))
    .ok();
    let d = h5_dump(&out);
    let (loss, acc) = one_row(&d, 2000, 2000);
    let a = &d["attrs"];
    assert_eq!(a["data"], "fashion-mnist:train[:2000]");
    assert_eq!(a["loss"], "cross_entropy");
    assert_eq!(a["batch_size"], 250);
    assert_eq!(a["model_path"], model.display().to_string());
    assert!(a["command_line"].as_str().unwrap().contains("--limit 2000"));
    assert_eq!(i64s(&d["datasets"]["checkpoints/step"]), vec![-1]);
    assert_eq!(
        d["datasets"]["checkpoints/path"][0],
        model.display().to_string()
    );
    // The printed table carries the same row.
    let row = o
        .stdout
        .lines()
        .find(|l| l.contains("resnet.onnx"))
        .unwrap_or_else(|| panic!("no table row in stdout:\n{}", o.stdout));
    assert!(row.contains(&format!("{loss:.6}")), "{row} vs {loss}");
    assert!(row.contains("2000"), "{row}");

    let r = reference_eval("resnet", None, fmnist_2000(), dir.path());
    assert_eq!(r.n, 2000);
    assert_rel(loss, r.loss, 1e-5, "resnet loss");
    assert_abs(acc, r.accuracy, 1e-4, "resnet accuracy");

    // The same 2000 images through an HDF5 file (another reader, another batch size) give the
    // same numbers: probe's IDX decoding and normalization equal reference.py's.
    let out2 = dir.path().join("resnet-h5.h5");
    probe(&args(&[
        &"eval",
        &"--quiet",
        &"--model",
        &model,
        &"--data",
        &fmnist_2000(),
        &"--batch",
        &"128",
        &"--out",
        &out2,
    ]))
    .ok();
    let (loss2, acc2) = one_row(&h5_dump(&out2), 2000, 2000);
    assert_rel(loss2, loss, 1e-6, "same images via HDF5");
    assert_eq!(acc2, acc);
}

#[test]
fn unseen_cnn_with_checkpoint_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The graph carries the INITIAL weights; only the checkpoint has the trained ones.
    reference(&args(&[&"hidden-cnn", &"--export-init", &"--out", &d]));
    let (m, c, py_model) = (d.join("m.onnx"), d.join("c.safetensors"), d.join("m.py"));
    let data = fmnist_2000();

    let with = d.join("with.h5");
    let o = probe(&args(&[
        &"eval", &"--model", &m, &"--ckpt", &c, &"--data", &data, &"--out", &with,
    ]))
    .ok();
    // state_dict() has BatchNorm's num_batches_tracked: noted, not an error.
    assert!(
        o.stderr.contains("note:") && o.stderr.contains("num_batches_tracked"),
        "expected a note on ignored integer buffers, stderr:\n{}",
        o.stderr
    );
    let dump = h5_dump(&with);
    let (loss_c, acc_c) = one_row(&dump, 2000, 2000);
    assert_eq!(
        dump["datasets"]["checkpoints/path"][0],
        c.display().to_string()
    );

    let without = d.join("without.h5");
    probe(&args(&[
        &"eval", &"-q", &"--model", &m, &"--data", &data, &"--out", &without,
    ]))
    .ok();
    let (loss_0, acc_0) = one_row(&h5_dump(&without), 2000, 2000);

    let py = py_model.to_str().unwrap();
    let r_c = reference_eval(py, Some(&c), data, d);
    assert_rel(loss_c, r_c.loss, 1e-5, "hidden CNN loss at the checkpoint");
    assert_abs(
        acc_c,
        r_c.accuracy,
        1e-4,
        "hidden CNN accuracy at the checkpoint",
    );
    let r_0 = reference_eval(py, None, data, d);
    assert_rel(
        loss_0,
        r_0.loss,
        1e-5,
        "hidden CNN loss at its initial weights",
    );
    assert_abs(
        acc_0,
        r_0.accuracy,
        1e-4,
        "hidden CNN accuracy at its initial weights",
    );
    // A checkpoint that was silently ignored would give the initial weights' numbers.
    assert!(
        (loss_c - loss_0).abs() > 1e-3 * loss_0,
        "the checkpoint made no difference: {loss_c} vs {loss_0}"
    );
}

#[test]
fn gpt_on_shakespeare_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gpt.h5");
    probe(&args(&[
        &"eval",
        &"-q",
        &"--model",
        &model("gpt.onnx"),
        &"--data",
        &"shakespeare",
        &"--limit",
        &"300",
        &"--out",
        &out,
    ]))
    .ok();
    let d = h5_dump(&out);
    // 300 windows of T = 32 tokens: the mean is over 9600 target elements.
    let (loss, acc) = one_row(&d, 300, 9600);
    assert_eq!(d["attrs"]["data"], "shakespeare:T=32[:300]");

    let data = dir.path().join("shakespeare-300.h5");
    reference(&args(&[
        &"make-data",
        &"--dataset",
        &"shakespeare",
        &"--n",
        &"300",
        &"--out",
        &data,
    ]));
    let r = reference_eval("gpt", None, &data, dir.path());
    assert_eq!(r.targets, 9600);
    assert_rel(loss, r.loss, 1e-5, "gpt loss");
    assert_abs(acc, r.accuracy, 1e-4, "gpt accuracy");
}

/// Inputs of an MLP test file: N pseudo-random images (the model does not care that they are not
/// Fashion-MNIST) in float32.
fn mlp_inputs(n: usize) -> ndarray::ArrayD<f32> {
    ndarray::ArrayD::from_shape_vec(vec![n, 1, 28, 28], noise(n * 784, 1)).unwrap()
}

#[test]
fn mlp_on_a_data_file_written_here_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1000;
    let data = dir.path().join("mlp.h5");
    // Targets as int32, not int64: any integer type is read as class ids. A batch of 64 leaves a
    // last, smaller batch of 40.
    let y: Vec<i32> = (0..n as i32).map(|i| (i * 7 + i / 10) % 10).collect();
    write_data(
        &data,
        &mlp_inputs(n),
        &ndarray::ArrayD::from_shape_vec(vec![n], y).unwrap(),
    );
    let out = dir.path().join("mlp-ce.h5");
    probe(&args(&[
        &"eval",
        &"-q",
        &"--model",
        &model("mlp.onnx"),
        &"--data",
        &data,
        &"--batch",
        &"64",
        &"--out",
        &out,
    ]))
    .ok();
    let d = h5_dump(&out);
    let (loss, acc) = one_row(&d, n as i64, n as i64);
    assert_eq!(d["attrs"]["data"], data.display().to_string());
    assert_eq!(d["attrs"]["batch_size"], 64);
    let r = reference_eval("mlp", None, &data, dir.path());
    assert_rel(loss, r.loss, 1e-5, "mlp loss");
    assert_abs(acc, r.accuracy, 1e-4, "mlp accuracy");
}

#[test]
fn mlp_mse_on_real_targets_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let n = 500;
    let data = dir.path().join("mlp-real.h5");
    let y = ndarray::ArrayD::from_shape_vec(vec![n, 10], noise(n * 10, 2)).unwrap();
    write_data(&data, &mlp_inputs(n), &y);
    let out = dir.path().join("mlp-mse.h5");
    probe(&args(&[
        &"eval",
        &"-q",
        &"--model",
        &model("mlp.onnx"),
        &"--data",
        &data,
        &"--loss",
        &"mse",
        &"--batch",
        &"96",
        &"--out",
        &out,
    ]))
    .ok();
    let d = h5_dump(&out);
    // Mean over every target element: N * 10 of them; accuracy does not apply (NaN).
    let (loss, acc) = one_row(&d, n as i64, 10 * n as i64);
    assert!(acc.is_nan(), "accuracy should be NaN for mse, got {acc}");
    assert_eq!(d["attrs"]["loss"], "mse");
    let want: f64 = py(&[
        "-c",
        "import sys, h5py, torch\n\
         sys.path.insert(0, 'models'); import zoo\n\
         m = zoo.build('mlp')\n\
         f = h5py.File(sys.argv[1], 'r')\n\
         x, y = torch.from_numpy(f['x'][()]), torch.from_numpy(f['y'][()]).double()\n\
         with torch.no_grad(): z = m(x).double()\n\
         print(repr(float(((z - y) ** 2).sum() / y.numel())))",
        data.to_str().unwrap(),
    ])
    .trim()
    .parse()
    .unwrap();
    assert_rel(loss, want, 1e-5, "mlp mse");
}
