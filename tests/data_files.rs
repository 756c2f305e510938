//! Data as users store it, written by numpy/h5py (`tests/fixtures/data_files.py`) from real
//! data (the Shakespeare texts, Fashion-MNIST): `tokens:` streams (`.bin` uint16 and uint32,
//! `.npy` int32) against the same windows cut by numpy, and `probe grad` on them against PyTorch;
//! HDF5 groups, renamed keys and uint8 images with `--mean/--std` against the same data
//! normalized by numpy as torchvision does; `--samples A:B` against a file of those samples only;
//! and the errors for files that do not fit.
mod common;

use common::*;
use probe::data::{Array, Dataset, Hint, Normalize};
use std::path::Path;

const T: usize = 32; // models/gpt.onnx's fixed sequence length
const STRIDE: usize = 12;
const TOKENS: usize = 96 * T + 1; // 96 windows side by side

fn fixture(args: &[&str]) {
    let script = root().join("tests/fixtures/data_files.py");
    let mut all = vec![script.to_str().unwrap()];
    all.extend(args);
    py(&all);
}

fn tokens_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fixture(&[
        "tokens",
        "--tokens",
        &TOKENS.to_string(),
        "--T",
        &T.to_string(),
        "--stride",
        &STRIDE.to_string(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    dir
}

fn open(spec: &str, hint: &Hint) -> Box<dyn Dataset> {
    let _h = hdf5_guard();
    probe::data::open(spec, hint).unwrap_or_else(|e| panic!("{spec}: {e:#}"))
}

fn err_of(spec: &str, hint: &Hint) -> String {
    let _h = hdf5_guard();
    match probe::data::open(spec, hint) {
        Ok(_) => panic!("{spec}: expected an error"),
        Err(e) => {
            assert_eq!(
                probe::error::fault_of(&e),
                Some(probe::error::Fault::Input),
                "{e:#}"
            );
            format!("{e:#}")
        }
    }
}

/// Every batch of `a` equals the same batch of `b`, bit for bit (batches of 7, to cross the
/// windows' joins at odd places).
fn same_batches(a: &mut dyn Dataset, b: &mut dyn Dataset, what: &str) {
    let _h = hdf5_guard();
    assert_eq!(a.spec().len, b.spec().len, "{what}: sample counts");
    for (s, c) in probe::data::batches(a.spec().len, 7) {
        let (x, y) = (a.read(s, c).unwrap(), b.read(s, c).unwrap());
        assert_eq!(x.start, y.start, "{what}");
        for (u, v, name) in [(&x.x, &y.x, "x"), (&x.y, &y.y, "y")] {
            match (u, v) {
                (Array::I64(u), Array::I64(v)) => assert_eq!(u, v, "{what}: {name} at {s}"),
                (Array::F32(u), Array::F32(v)) => {
                    assert_eq!(u.shape(), v.shape(), "{what}: {name} at {s}");
                    let diff = u
                        .iter()
                        .zip(v.iter())
                        .filter(|(p, q)| p.to_bits() != q.to_bits());
                    assert_eq!(diff.count(), 0, "{what}: {name} at {s} differs");
                }
                _ => panic!("{what}: {name} kinds differ"),
            }
        }
    }
}

/// The first value of `key` in a results file, and its `data` attribute.
fn loss_and_data(h5: &Path) -> (f64, serde_json::Value) {
    let d = h5_dump(h5);
    (f64s(&d["datasets"]["loss"])[0], d["attrs"].clone())
}

fn probe_ok(args: &[&str]) -> Output {
    let mut all = vec!["--quiet"];
    all.extend(args);
    probe(&all).ok()
}

#[test]
fn token_spec_options_parse_from_the_right() {
    use probe::data::npy::IntType;
    use probe::data::tokens::parse;
    let p = parse("s", "a:b.bin:64:stride=16").unwrap();
    assert_eq!(p.path, Path::new("a:b.bin"));
    assert_eq!((p.window, p.stride, p.dtype), (Some(64), Some(16), None));
    let p = parse("s", "d.bin:dtype=uint32:T=8").unwrap();
    assert_eq!((p.window, p.dtype), (Some(8), Some(IntType::U32)));
    assert_eq!(parse("s", "d.npy").unwrap().window, None);
    for bad in [
        "d.bin:T=0",
        "d.bin:8:9",
        "d.bin:dtype=int8",
        "d.bin:foo=1",
        ":8",
        "d.bin:stride=x",
    ] {
        assert!(parse("s", bad).is_err(), "{bad}");
    }
}

#[test]
fn token_streams_are_the_windows_numpy_cuts() {
    let dir = tokens_dir();
    let d = dir.path().display();
    let model_t = Hint {
        x_shape: Some(vec![T]),
        ..Hint::default()
    };
    let mut w = open(&format!("{d}/w.h5"), &Hint::default());
    let mut ws = open(&format!("{d}/ws.h5"), &Hint::default());
    assert_eq!(w.spec().len, 96);
    // T from the spec, from the model, uint16 and uint32 raw files, a .npy of int32.
    for spec in [
        format!("tokens:{d}/s.bin:{T}"),
        format!("tokens:{d}/s.bin"),
        format!("tokens:{d}/s32.bin:dtype=uint32"),
        format!("tokens:{d}/s.npy:T={T}"),
    ] {
        let mut t = open(&spec, &model_t);
        same_batches(t.as_mut(), w.as_mut(), &spec);
    }
    let spec = format!("tokens:{d}/s.npy:{T}:stride={STRIDE}");
    let mut t = open(&spec, &Hint::default());
    assert_eq!(
        t.spec().identity,
        format!("tokens:{d}/s.npy:T={T}:stride={STRIDE}")
    );
    same_batches(t.as_mut(), ws.as_mut(), &spec);
    // Far-apart windows are read one by one.
    let spec = format!("tokens:{d}/s.bin:8:stride=50");
    let mut t = open(&spec, &Hint::default());
    let s: Vec<i64> = match &open(
        &format!("tokens:{d}/s.bin:{}", TOKENS - 1),
        &Hint::default(),
    )
    .read(0, 1)
    .unwrap()
    .x
    {
        Array::I64(a) => a.iter().copied().collect(),
        _ => unreachable!(),
    };
    assert_eq!(t.spec().len, (TOKENS - 9) / 50 + 1);
    let b = t.read(3, 2).unwrap();
    let Array::I64(y) = &b.y else { unreachable!() };
    assert_eq!(y.iter().copied().collect::<Vec<_>>()[..8], s[151..159]);
    // --samples over tokens.
    let mut r =
        probe::data::open_restricted(&format!("tokens:{d}/s.bin"), &model_t, Some((5, 40)), None)
            .unwrap();
    assert_eq!(r.spec().len, 35);
    assert_eq!(
        r.spec().identity,
        format!("tokens:{d}/s.bin:T={T}:dtype=uint16[5:40]")
    );
    let (a, b) = (r.read(0, 35).unwrap(), w.read(5, 35).unwrap());
    let (Array::I64(a), Array::I64(b)) = (&a.x, &b.x) else {
        unreachable!()
    };
    assert_eq!(a, b);
}

#[test]
fn token_file_grad_matches_pytorch() {
    let dir = tokens_dir();
    let p = dir.path();
    let h5 = p.join("g.h5");
    let st = p.join("ref.safetensors");
    let data = format!("tokens:{}:{T}", p.join("s.bin").display());
    let gpt = model("gpt.onnx");
    probe_ok(&[
        "grad",
        "--model",
        gpt.to_str().unwrap(),
        "--data",
        &data,
        "--batch",
        "64",
        "--save-grad",
        "--out",
        h5.to_str().unwrap(),
    ]);
    // PyTorch (float64) on the windows numpy cut from the same stream.
    reference(&[
        "grad",
        "--model",
        "gpt",
        "--data",
        p.join("w.h5").to_str().unwrap(),
        "--batch",
        "64",
        "--f64",
        "--out",
        st.to_str().unwrap(),
    ]);
    let script = r#"
import sys, json, h5py, numpy as np
from safetensors.numpy import load_file
ref = load_file(sys.argv[1]); f = h5py.File(sys.argv[2], "r")
worst, wname = 0.0, ""
for name in [n.decode() if isinstance(n, bytes) else n for n in f["params/name"][:]]:
    g = f["grad/full/" + name][0]; r = ref[name]
    e = float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30))
    if e > worst: worst, wname = e, name
print(json.dumps([worst, wname, float(f["loss"][0]), float(ref["loss"]), int(f["samples"][0]), f.attrs["data"]]))
"#;
    let out = py(&["-c", script, st.to_str().unwrap(), h5.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let (worst, loss, rloss) = (
        v[0].as_f64().unwrap(),
        v[2].as_f64().unwrap(),
        v[3].as_f64().unwrap(),
    );
    eprintln!(
        "tokens grad vs PyTorch f64: worst per-tensor relative L2 {worst:.2e} ({}); loss {loss} vs {rloss} (rel {:.1e})",
        v[1],
        (loss - rloss).abs() / rloss
    );
    assert_eq!(v[4].as_i64(), Some(96));
    assert!(v[5].as_str().unwrap().starts_with("tokens:"), "{}", v[5]);
    assert!(worst <= 1e-4, "gradient of {} differs by {worst:.2e}", v[1]);
    assert!(
        (loss - rloss).abs() <= 1e-5 * rloss,
        "loss {loss} vs {rloss}"
    );
}

fn images_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    fixture(&[
        "images", "--n", "300", "--a", "50", "--b", "170", "--out", out,
    ]);
    dir
}

#[test]
fn hdf5_groups_keys_and_uint8_images_with_mean_std() {
    let dir = images_dir();
    let d = dir.path().display();
    let fm = Hint {
        normalize: Some(Normalize {
            mean: vec![0.2860],
            std: vec![0.3530],
        }),
        ..Hint::default()
    };
    let spec = format!("{d}/u8.h5:train:x=images,y=labels");
    let mut u8 = open(&spec, &fm);
    assert_eq!(u8.spec().x_kind, probe::data::Kind::Float);
    assert_eq!(
        u8.spec().identity,
        format!("{d}/u8.h5:train:x=images,y=labels:mean=0.286,std=0.353")
    );
    let mut f32 = open(&format!("{d}/f32.h5"), &Hint::default());
    same_batches(u8.as_mut(), f32.as_mut(), &spec);
    // Three channels, each its own mean and std (channel = axis 1).
    let imagenet = Hint {
        normalize: Some(Normalize {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }),
        ..Hint::default()
    };
    let mut rgb = open(&format!("{d}/rgb.h5:x=images,y=labels"), &imagenet);
    let mut rgb_ref = open(&format!("{d}/rgb.h5:y=labels:x=ref"), &Hint::default());
    same_batches(rgb.as_mut(), rgb_ref.as_mut(), "rgb");

    // Through the command line: the same loss as the float file, the options in the results.
    let mlp = model("mlp.onnx");
    let eval = |data: &str, extra: &[&str], out: &str| {
        let out = dir.path().join(out);
        let mut args = vec!["eval", "--model", mlp.to_str().unwrap(), "--data", data];
        args.extend(extra);
        args.extend(["--batch", "64", "--out", out.to_str().unwrap()]);
        probe_ok(&args);
        loss_and_data(&out)
    };
    let (l_u8, attrs) = eval(&spec, &["--mean", "0.2860", "--std", "0.3530"], "u8.out.h5");
    let (l_f32, _) = eval(&format!("{d}/f32.h5"), &[], "f32.out.h5");
    assert_eq!(l_u8, l_f32);
    assert_eq!(attrs["data"].as_str().unwrap(), u8.spec().identity);
}

#[test]
fn samples_equal_a_file_of_those_samples() {
    let dir = images_dir();
    let p = dir.path();
    let mlp = model("mlp.onnx");
    let grad = |data: &Path, extra: &[&str], out: &str| {
        let out = p.join(out);
        let mut args = vec![
            "grad",
            "--model",
            mlp.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ];
        args.extend(extra);
        args.extend([
            "--batch",
            "64",
            "--save-grad",
            "--out",
            out.to_str().unwrap(),
        ]);
        probe_ok(&args);
        h5_dump(&out)
    };
    let part = grad(&p.join("f32.h5"), &["--samples", "50:170"], "part.h5");
    let whole = grad(&p.join("f32_ab.h5"), &[], "ab.h5");
    for (k, v) in whole["datasets"].as_object().unwrap() {
        if k.starts_with("grad") || k == "loss" || k == "accuracy" || k == "samples" {
            assert_eq!(part["datasets"][k], *v, "{k}");
        }
    }
    let attrs = &part["attrs"];
    assert_eq!(attrs["data_range"], "50:170");
    assert_eq!(attrs["data_samples"], 120);
    assert!(
        attrs["data"].as_str().unwrap().ends_with("f32.h5[50:170]"),
        "{}",
        attrs["data"]
    );

    // probe train takes it too, and records it in its log and checkpoints.
    let run = p.join("run");
    probe_ok(&[
        "train",
        "--model",
        mlp.to_str().unwrap(),
        "--data",
        p.join("f32.h5").to_str().unwrap(),
        "--samples",
        "50:170",
        "--steps",
        "1",
        "--batch",
        "64",
        "--opt",
        "sgd",
        "--lr",
        "0.1",
        "--out",
        run.to_str().unwrap(),
    ]);
    let log = h5_dump(&run.join("train.h5"));
    assert_eq!(log["attrs"]["data_range"], "50:170");
    assert_eq!(log["attrs"]["data_samples"], 120);

    // A range past the data set is bad input (exit 3); an empty one a bad flag (exit 2).
    let f32 = p.join("f32.h5");
    let run = |range: &str| {
        probe(&[
            "eval",
            "--model",
            mlp.to_str().unwrap(),
            "--data",
            f32.to_str().unwrap(),
            "--samples",
            range,
            "--out",
            p.join("bad.h5").to_str().unwrap(),
        ])
    };
    let o = run("250:301");
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("has 300 samples; a range A:B needs A < B <= 300"),
        "{}",
        o.stderr
    );
    assert_eq!(run("9:9").code, 2);
    assert_eq!(run("x:9").code, 2);
}

#[test]
fn files_that_do_not_fit_say_why() {
    let dir = images_dir();
    let p = dir.path();
    let d = p.display();
    let none = Hint::default();
    // A missing key, or group, lists what is there.
    let e = err_of(&format!("{d}/u8.h5:train:x=imgs,y=labels"), &none);
    assert!(
        e.contains("no dataset 'imgs' in group 'train' (it holds 'images', 'labels')"),
        "{e}"
    );
    let e = err_of(&format!("{d}/u8.h5"), &none);
    assert!(
        e.contains("no dataset 'x' at the root (it holds 'readme', 'train')"),
        "{e}"
    );
    let e = err_of(&format!("{d}/u8.h5:test"), &none);
    assert!(
        e.contains("no group 'test' (it holds 'readme', 'train' at the root)"),
        "{e}"
    );
    let e = err_of(&format!("{d}/u8.h5:train:z=images"), &none);
    assert!(e.contains("unknown option 'z'"), "{e}");
    // --mean/--std that do not fit the data.
    let two = Hint {
        normalize: Some(Normalize {
            mean: vec![0.5, 0.5],
            std: vec![0.2, 0.2],
        }),
        ..Hint::default()
    };
    let e = err_of(&format!("{d}/u8.h5:train:x=images,y=labels"), &two);
    assert!(
        e.contains("--mean has 2 values but x has 1 channels"),
        "{e}"
    );
    assert!(err_of("fashion-mnist", &two)
        .contains("--mean/--std normalize images stored in an HDF5 file"));

    // Token files.
    let write = |name: &str, bytes: &[u8]| {
        let f = p.join(name);
        std::fs::write(&f, bytes).unwrap();
        f.display().to_string()
    };
    let odd = write("odd.bin", &[1, 0, 2, 0, 3]);
    let e = err_of(&format!("tokens:{odd}:1"), &none);
    assert!(
        e.contains("odd.bin: 5 bytes is not a whole number of uint16 tokens"),
        "{e}"
    );
    let short = write("short.bin", &[1, 0, 2, 0, 3, 0]);
    let e = err_of(&format!("tokens:{short}:3"), &none);
    assert!(
        e.contains("short.bin: 3 tokens, too few for one window of T = 3"),
        "{e}"
    );
    assert_eq!(open(&format!("tokens:{short}:2"), &none).spec().len, 1);
    let e = err_of(&format!("tokens:{short}"), &none);
    assert!(
        e.contains("short.bin: the model's input has no fixed sequence length"),
        "{e}"
    );
    let e = err_of(&format!("tokens:{short}:2:T=2"), &none);
    assert!(e.contains("'T' is given twice"), "{e}");
    let e = err_of(&format!("tokens:{d}/nothere.bin:2"), &none);
    assert!(e.contains("nothere.bin: no such file"), "{e}");
    // .npy files numpy writes: the wrong type or shape, cut short, a negative id.
    let script = r#"
import sys, numpy as np
d = sys.argv[1]
np.save(d + "/f.npy", np.arange(10, dtype=np.float32))
np.save(d + "/m.npy", np.arange(10, dtype=np.int64).reshape(2, 5))
np.save(d + "/neg.npy", np.array([3, 4, -1, 5], dtype=np.int32))
np.save(d + "/u8.npy", np.arange(10, dtype=np.uint8))
open(d + "/cut.npy", "wb").write(open(d + "/u8.npy", "rb").read()[:-1])
"#;
    py(&["-c", script, &d.to_string()]);
    let e = err_of(&format!("tokens:{d}/f.npy:2"), &none);
    assert!(
        e.contains("f.npy: dtype '<f4' is not an integer type"),
        "{e}"
    );
    let e = err_of(&format!("tokens:{d}/m.npy:2"), &none);
    assert!(
        e.contains("m.npy: has shape [2, 5]; a token file holds one flat stream"),
        "{e}"
    );
    let e = err_of(&format!("tokens:{d}/cut.npy:2"), &none);
    assert!(
        e.contains("cut.npy: its header says 10 uint8 tokens") && e.contains("cut short"),
        "{e}"
    );
    let e = err_of(&format!("tokens:{d}/u8.npy:2:dtype=uint32"), &none);
    assert!(e.contains("dtype= is for raw token files"), "{e}");
    let mut u8 = open(&format!("tokens:{d}/u8.npy:2:stride=3"), &none);
    let Array::I64(y) = u8.read(2, 1).unwrap().y else {
        unreachable!()
    };
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![7, 8]);
    let mut neg = open(&format!("tokens:{d}/neg.npy:1"), &none);
    let e = format!("{:#}", neg.read(0, 3).unwrap_err());
    assert!(e.contains("neg.npy: token 2 has id -1"), "{e}");
}
