//! `--data imagefolder:DIR` against torchvision: an ImageNet-layout tree of real images
//! (Fashion-MNIST written by PIL as JPEG and PNG in every mode `convert("RGB")` handles, and the
//! scikit-learn / scikit-image sample photographs), read by probe and by `ImageFolder` with
//! `Resize(256)`, `CenterCrop(224)`, `ToTensor()`, `Normalize(...)`
//! (`models/imagefolder_reference.py`). Held to: the same files in the same order with the same
//! labels, every 8-bit pixel after resize and crop equal, every normalized float equal, a CNN's
//! loss through `probe eval` equal to PyTorch's to 1e-5 with the same accuracy, and its
//! full-data gradient through `probe grad` equal to PyTorch's to 1e-5 of each tensor's largest.
mod common;

use common::*;
use probe::data::imagefolder::{self, Transform};
use probe::data::{batches, Array, Hint};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The test tree, built once per test process.
fn tree() -> &'static Path {
    static TREE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &TREE
        .get_or_init(|| {
            let photos = root().join("data/cache/photos");
            assert!(
                photos.join("china.jpg").exists(),
                "{} is missing: run ./setup.sh (data/fetch.sh unpacks the sample photos)",
                photos.display()
            );
            let t = tempfile::tempdir().unwrap();
            let dir = t.path().join("imagenet");
            py(&[
                model("imagefolder_reference.py").as_os_str(),
                "tree".as_ref(),
                dir.as_os_str(),
                "--photos".as_ref(),
                photos.as_os_str(),
            ]);
            (t, dir)
        })
        .1
}

/// What probe makes of `spec` (over `dir`), written where `compare` reads it: the 8-bit crops
/// (HWC), the normalized samples ([3, H, W] each, read through the data set's batches) and the
/// files with their labels.
fn dump(dir: &Path, options: &str, t: &Transform, out: &Path) {
    let spec = format!("imagefolder:{}{options}", dir.display());
    let mut data = probe::data::open(&spec, &Hint::default()).unwrap();
    let n = data.spec().len;
    let mut f32s: Vec<u8> = Vec::new();
    let mut labels = Vec::new();
    // Batches of 7, then the whole set again in one batch: a second pass restarts the workers.
    for (s, c) in batches(n, 7) {
        let b = data.read(s, c).unwrap();
        let (Array::F32(x), Array::I64(y)) = (&b.x, &b.y) else {
            panic!("x float, y integer")
        };
        f32s.extend(x.iter().flat_map(|v| v.to_le_bytes()));
        labels.extend(y.iter().copied());
    }
    let again = data.read(0, n).unwrap();
    let Array::F32(x) = &again.x else { panic!() };
    let again: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(again == f32s, "a second pass gave other values");
    let (_, samples) = imagefolder::list(dir).unwrap();
    let mut u8s = Vec::new();
    for (p, _) in &samples {
        u8s.extend(imagefolder::load(p, t).unwrap().data);
    }
    let files: Vec<String> = samples
        .iter()
        .map(|(p, _)| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    std::fs::write(out.with_extension("u8"), u8s).unwrap();
    std::fs::write(out.with_extension("f32"), f32s).unwrap();
    let meta = serde_json::json!({"files": files, "labels": labels});
    std::fs::write(out.with_extension("json"), meta.to_string()).unwrap();
}

fn compare(dir: &Path, dump: &Path, py_opts: &[&str]) -> serde_json::Value {
    let mut args: Vec<std::ffi::OsString> = vec![
        model("imagefolder_reference.py").into(),
        "compare".into(),
        dir.into(),
        dump.into(),
    ];
    args.extend(py_opts.iter().map(|s| s.into()));
    let out = py(&args);
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

fn assert_identical(r: &serde_json::Value, what: &str) {
    let bad: Vec<&serde_json::Value> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["u8_max"] != 0 || row["f32_max"] != 0.0)
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} samples differ from torchvision:\n{}",
        bad.len(),
        r["n"],
        serde_json::to_string_pretty(&bad).unwrap()
    );
}

#[test]
fn pixels_and_tensors_equal_torchvisions() {
    let dir = tree();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("default");
    dump(dir, "", &Transform::default(), &out);
    let r = compare(dir, &out, &[]);
    assert!(r["n"].as_u64().unwrap() >= 50, "{}", r["n"]);
    assert_identical(&r, "resize=256,crop=224");
}

#[test]
fn other_sizes_and_normalization_equal_torchvisions() {
    let dir = tree();
    let tmp = tempfile::tempdir().unwrap();
    // A non-square crop with odd margins (CenterCrop's round-half-to-even offsets), an exact
    // resize, and a crop larger than the resized image (CenterCrop's zero padding).
    // An exact resize that shrinks the height more than twice as much as the width (Pillow 13
    // runs the vertical pass first), and the same as Pillow 12 does it.
    for (i, (resize, crop, mean, std, pillow)) in [
        ("299", "161x201", "0.5/0.4/0.3", "0.2/0.25/0.3", "13"),
        ("100x150", "none", "0.5", "0.5", "13"),
        ("100x150", "none", "0.5", "0.5", "12"),
        ("64", "97x81", "0", "1", "13"),
    ]
    .into_iter()
    .enumerate()
    {
        let opts = format!(":resize={resize},crop={crop},mean={mean},std={std},pillow={pillow}");
        let o = imagefolder::parse("t", &format!("{}{opts}", dir.display())).unwrap();
        let out = tmp.path().join(format!("opts{i}"));
        dump(dir, &opts, &o.transform, &out);
        let r = compare(
            dir,
            &out,
            &[
                "--resize", resize, "--crop", crop, "--mean", mean, "--std", std, "--pillow",
                pillow,
            ],
        );
        assert_identical(&r, &opts);
    }
}

#[test]
fn eval_loss_and_grad_equal_pytorchs() {
    let dir = tree();
    let tmp = tempfile::tempdir().unwrap();
    let onnx = tmp.path().join("cnn.onnx");
    let refj = tmp.path().join("ref.json");
    py(&[
        model("imagefolder_reference.py").as_os_str(),
        "eval".as_ref(),
        dir.as_os_str(),
        onnx.as_os_str(),
        refj.as_os_str(),
    ]);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&refj).unwrap()).unwrap();
    let out = tmp.path().join("eval.h5");
    let data = format!("imagefolder:{}", dir.display());
    probe(&[
        "eval".as_ref(),
        "--model".as_ref(),
        onnx.as_os_str(),
        "--data".as_ref(),
        data.as_ref(),
        "--batch".as_ref(),
        "16".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
    .ok();
    let d = h5_dump(&out);
    let n = r["n"].as_i64().unwrap();
    assert_eq!(i64s(&d["datasets"]["samples"]), vec![n]);
    let loss = f64s(&d["datasets"]["loss"])[0];
    let acc = f64s(&d["datasets"]["accuracy"])[0];
    eprintln!(
        "probe loss {loss} accuracy {acc}; PyTorch loss {} accuracy {}",
        r["loss"], r["accuracy"]
    );
    assert_rel(loss, r["loss"].as_f64().unwrap(), 1e-5, "loss");
    assert_eq!(acc, r["accuracy"].as_f64().unwrap(), "accuracy");
    assert!(
        d["attrs"]["data"]
            .as_str()
            .unwrap()
            .ends_with(":resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"),
        "{}",
        d["attrs"]["data"]
    );
    // probe grad on the same folder: every parameter's full-data gradient against PyTorch's.
    let g = tmp.path().join("grad.h5");
    probe(&[
        "grad".as_ref(),
        "--model".as_ref(),
        onnx.as_os_str(),
        "--data".as_ref(),
        data.as_ref(),
        "--batch".as_ref(),
        "16".as_ref(),
        "--save-grad".as_ref(),
        "--out".as_ref(),
        g.as_os_str(),
    ])
    .ok();
    let worst = py(&[
        "-c".as_ref(),
        "import sys, h5py, numpy as np\nref = np.load(sys.argv[2])\nworst = 0.0\nwith h5py.File(sys.argv[1]) as f:\n    for k in ref.files:\n        got = f['grad/full/' + k][0]\n        worst = max(worst, float(np.abs(got - ref[k]).max() / np.abs(ref[k]).max()))\nprint(worst)".as_ref(),
        g.as_os_str(),
        std::ffi::OsString::from(format!("{}.grad.npz", refj.display())).as_os_str(),
    ]);
    let worst: f64 = worst.trim().parse().unwrap();
    eprintln!("probe grad vs PyTorch: max |diff| / max |grad| over tensors {worst:.2e}");
    assert!(worst < 1e-5, "gradient differs from PyTorch's by {worst:e}");
}

#[test]
fn a_truncated_jpeg_stops_the_pass_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bad");
    for c in ["a", "b"] {
        std::fs::create_dir_all(dir.join(c)).unwrap();
    }
    let photo = std::fs::read(root().join("data/cache/photos/china.jpg")).unwrap();
    std::fs::write(dir.join("a/good.jpg"), &photo).unwrap();
    let cut = dir.join("b/cut.jpg");
    std::fs::write(&cut, &photo[..photo.len() / 3]).unwrap();
    // PIL refuses it too (so ImageFolder would stop there).
    let pil = py(&[
        "-c",
        "import sys\nfrom PIL import Image\ntry:\n    Image.open(sys.argv[1]).convert('RGB'); print('read')\nexcept OSError as e:\n    print('refused', e)",
        cut.to_str().unwrap(),
    ]);
    assert!(pil.starts_with("refused"), "{pil}");
    let onnx = tiny_cnn(tmp.path());
    let data = format!("imagefolder:{}", dir.display());
    let o = probe(&[
        "eval".as_ref(),
        "--model".as_ref(),
        onnx.as_os_str(),
        "--data".as_ref(),
        data.as_ref(),
        "--out".as_ref(),
        tmp.path().join("r.h5").as_os_str(),
    ]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains(&cut.display().to_string()) && o.stderr.contains("JPEG"),
        "{}",
        o.stderr
    );
    assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {}", o.stderr);
}

#[test]
fn layout_errors_name_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let e = |spec: String| {
        let r = probe::data::open(&spec, &Hint::default());
        let e = r.err().expect("an error");
        assert_eq!(
            probe::error::fault_of(&e),
            Some(probe::error::Fault::Input),
            "{e:#}"
        );
        format!("{e:#}")
    };
    let missing = tmp.path().join("nope");
    assert!(e(format!("imagefolder:{}", missing.display())).contains("nope"));
    std::fs::create_dir_all(tmp.path().join("d/empty")).unwrap();
    std::fs::write(tmp.path().join("d/empty/readme.txt"), "x").unwrap();
    let m = e(format!("imagefolder:{}", tmp.path().join("d").display()));
    assert!(m.contains("no image files") && m.contains("empty"), "{m}");
    let m = e(format!("imagefolder:{}:crop=none", tmp.path().display()));
    assert!(m.contains("same shape"), "{m}");
}

/// A small seeded CNN for 3x224x224 inputs (no reference numbers needed).
fn tiny_cnn(dir: &Path) -> PathBuf {
    let onnx = dir.join("cnn.onnx");
    py(&[
        "-c".as_ref(),
        "import sys, torch\nsys.path.insert(0, 'models')\nfrom imagefolder_reference import build_cnn\nfrom export import export_onnx\nexport_onnx(build_cnn(), torch.randn(2, 3, 224, 224), sys.argv[1])".as_ref(),
        onnx.as_os_str(),
    ]);
    onnx
}

#[test]
fn unreadable_samples_are_input_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = root().join("data/cache/photos");
    let png = std::fs::read(photos.join("chelsea.png")).unwrap();
    let jpg = std::fs::read(photos.join("rocket.jpg")).unwrap();
    let cases: [(&str, Vec<u8>); 4] = [
        ("cut.png", png[..png.len() / 2].to_vec()),
        ("empty.jpg", vec![]),
        ("header-only.jpg", jpg[..200].to_vec()),
        ("text.png", b"not an image at all".to_vec()),
    ];
    let mut files = Vec::new();
    for (i, (name, bytes)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("set{i}"));
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::write(dir.join("a/good.jpg"), &jpg).unwrap();
        let bad = dir.join("a").join(name);
        std::fs::write(&bad, bytes).unwrap();
        let mut data =
            probe::data::open(&format!("imagefolder:{}", dir.display()), &Hint::default()).unwrap();
        let e = data.read(0, 2).err().expect("an error");
        assert_eq!(
            probe::error::fault_of(&e),
            Some(probe::error::Fault::Input),
            "{e:#}"
        );
        let m = format!("{e:#}");
        assert!(m.contains(&bad.display().to_string()), "{name}: {m}");
        files.push(bad);
    }
    // PIL refuses every one of them too.
    let mut args: Vec<std::ffi::OsString> = vec![
        "-c".into(),
        "import sys\nfrom PIL import Image\nfor p in sys.argv[1:]:\n    try:\n        Image.open(p).convert('RGB'); print('read', p)\n    except Exception as e:\n        print('refused', p)".into(),
    ];
    args.extend(files.iter().map(|f| f.into()));
    let pil = py(&args);
    assert!(!pil.contains("read "), "{pil}");
}

/// The acceptance: torchvision's resnet18 (random init, 10 classes, eval mode) on a few
/// hundred real images (200 Fashion-MNIST re-encodings and the 28 photographs twice) through
/// the default transform: `probe eval`'s loss equal to PyTorch's to 1e-5 with the same
/// accuracy, and `probe grad`'s gradient as close to PyTorch float64's as PyTorch float32's is:
/// the worst tensor's relative L2 error within 2x of float32's worst (the zoo's rule, README).
#[test]
fn resnet18_on_a_few_hundred_images_equals_pytorch() {
    let photos = root().join("data/cache/photos");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("imagenet");
    let s = |v: &str| std::ffi::OsString::from(v);
    let counts = py(&[
        model("imagefolder_reference.py").into_os_string(),
        s("tree"),
        dir.clone().into_os_string(),
        s("--photos"),
        photos.into_os_string(),
        s("--fmnist"),
        s("100"),
        s("--copies"),
        s("2"),
    ]);
    eprintln!("tree: {counts}");
    let onnx = tmp.path().join("resnet18.onnx");
    let refj = tmp.path().join("ref.json");
    py(&[
        model("imagefolder_reference.py").into_os_string(),
        s("eval"),
        dir.clone().into_os_string(),
        onnx.clone().into_os_string(),
        refj.clone().into_os_string(),
        s("--arch"),
        s("resnet18"),
        s("--f64"),
    ]);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&refj).unwrap()).unwrap();
    let n = r["n"].as_i64().unwrap();
    assert!(n >= 200, "{n} images");
    let data = format!("imagefolder:{}", dir.display());
    let out = tmp.path().join("eval.h5");
    let g = tmp.path().join("grad.h5");
    for (cmd, file) in [("eval", &out), ("grad", &g)] {
        let mut a = vec![
            s(cmd),
            s("--model"),
            onnx.clone().into_os_string(),
            s("--data"),
            s(&data),
            s("--batch"),
            s("32"),
            s("--out"),
            file.clone().into_os_string(),
        ];
        if cmd == "grad" {
            a.push(s("--save-grad"));
        }
        probe(&a).ok();
    }
    let d = h5_dump(&out);
    assert_eq!(i64s(&d["datasets"]["samples"]), vec![n]);
    let loss = f64s(&d["datasets"]["loss"])[0];
    let acc = f64s(&d["datasets"]["accuracy"])[0];
    eprintln!("probe loss {loss} accuracy {acc}; PyTorch {r}");
    assert_rel(
        loss,
        r["loss"].as_f64().unwrap(),
        1e-5,
        "loss against PyTorch float32",
    );
    assert_rel(
        loss,
        r["loss64"].as_f64().unwrap(),
        1e-5,
        "loss against PyTorch float64",
    );
    assert_eq!(acc, r["accuracy"].as_f64().unwrap(), "accuracy");
    let report = py(&[
        s("-c"),
        s("import sys, h5py, numpy as np\nr32 = np.load(sys.argv[2] + '.grad.npz')\nr64 = np.load(sys.argv[2] + '.grad64.npz')\nwhole = np.sqrt(sum(float((r64[k] ** 2).sum()) for k in r64.files))\nworst = [0.0, 0.0]\nwith h5py.File(sys.argv[1]) as f:\n    for k in r64.files:\n        got = f['grad/full/' + k][0]\n        d = max(np.linalg.norm(r64[k]), 1e-4 * whole)\n        e, t = np.linalg.norm(got - r64[k]) / d, np.linalg.norm(r32[k] - r64[k]) / d\n        print(f'{k} probe {e:.2e} torch32 {t:.2e}')\n        worst = [max(worst[0], e), max(worst[1], t)]\nprint(worst[0], worst[1])"),
        g.into_os_string(),
        refj.into_os_string(),
    ]);
    eprintln!("{report}");
    let last: Vec<f64> = report
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let (ours, torch32) = (last[0], last[1]);
    eprintln!("worst tensor: probe {ours:.2e}, PyTorch float32 {torch32:.2e} (from float64)");
    assert!(
        ours <= 2.0 * torch32 || ours <= 1e-5,
        "probe's worst tensor {ours:e} is beyond 2x PyTorch float32's {torch32:e}"
    );
}
