//! A model file may only make probe read inside its own folder (issue 14, item 4).
//!
//! Each bad case edits the external-data entries (`location`, `offset`, `length`) of one
//! initializer of the shipped `mlp.onnx`, or what its `location` names, and runs `probe eval`. Each
//! must end with exit 3, one line on stderr naming the model file, the tensor and the location, and
//! no results file that claims completion. The runs have a time limit (a FIFO blocks an `open`) and
//! a data-segment limit (`/dev/zero` read whole grows until the kernel kills the process), so a
//! loader that does either fails the test instead of the machine.
mod common;

use common::*;
use ndarray::ArrayD;
use onnx_protobuf::{Message, ModelProto};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tensor whose entries the cases edit: at offset 401408, 512 bytes, `[128]` float32.
const TENSOR: &str = "fc1.bias";

fn mlp() -> ModelProto {
    ModelProto::parse_from_bytes(&std::fs::read(model("mlp.onnx")).unwrap()).unwrap()
}

/// Sets `key` of `tensor`'s external-data entries to `value` (`None` removes it).
fn set_entry(proto: &mut ModelProto, tensor: &str, key: &str, value: Option<&str>) {
    let t = proto
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.name == tensor)
        .unwrap_or_else(|| panic!("no initializer {tensor}"));
    t.external_data.retain(|e| e.key != key);
    if let Some(v) = value {
        let mut e = onnx_protobuf::StringStringEntryProto::new();
        e.key = key.into();
        e.value = v.into();
        t.external_data.push(e);
    }
}

fn save(proto: &ModelProto, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, proto.write_to_bytes().unwrap()).unwrap();
}

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
    /// The model folder `m/` with `mlp.onnx` as edited by `edit` and, unless `data` is false, a
    /// copy of the real `mlp.onnx.data` beside it.
    fn model(&self, data: bool, edit: impl FnOnce(&mut ModelProto)) -> PathBuf {
        let mut p = mlp();
        edit(&mut p);
        let m = self.path("m/mlp.onnx");
        save(&p, &m);
        if data {
            std::fs::copy(model("mlp.onnx.data"), self.path("m/mlp.onnx.data")).unwrap();
        }
        m
    }
    /// A copy of the real data file outside the model's folder: `outside/mlp.onnx.data`.
    fn outside(&self) -> PathBuf {
        let o = self.path("outside/mlp.onnx.data");
        std::fs::create_dir_all(o.parent().unwrap()).unwrap();
        std::fs::copy(model("mlp.onnx.data"), &o).unwrap();
        o
    }
    fn data(&self) -> PathBuf {
        let p = self.path("good.h5");
        if !p.exists() {
            let x = ArrayD::from_shape_vec(vec![10, 1, 28, 28], noise(10 * 784, 3)).unwrap();
            let y = ArrayD::from_shape_vec(vec![10], (0..10i64).collect()).unwrap();
            write_data(&p, &x, &y);
        }
        p
    }
    fn out(&self) -> PathBuf {
        self.path("out.h5")
    }
    fn eval(&self, model: &Path) -> Output {
        self.eval_with(model, &[], 8)
    }
    /// `probe eval --model MODEL --data good.h5 --out out.h5 EXTRA` under a data-segment limit
    /// of `gib` GiB.
    fn eval_with(&self, model: &Path, extra: &[&std::ffi::OsStr], gib: u64) -> Output {
        let (data, out) = (self.data(), self.out());
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "eval".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        args.extend(extra);
        run_limited(self.dir.path(), &args, gib)
    }
    /// `probe eval` on `model` must fail as an input error naming the model, tensor and location.
    fn refused(&self, model: &Path, tensor: &str, location: &str, says: &[&str]) -> String {
        let name = model.file_name().unwrap().to_str().unwrap();
        let mut names = vec![name, tensor, location];
        names.extend(says);
        self.check_refused(self.eval(model), &names)
    }
    /// The failure contract: exit 3, one line naming everything in `names`, no complete results.
    fn check_refused(&self, o: Output, names: &[&str]) -> String {
        assert_eq!(
            o.code, 3,
            "expected exit 3 (input error), got {}\nstdout:\n{}\nstderr:\n{}",
            o.code, o.stdout, o.stderr
        );
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr should be one line:\n{}", o.stderr);
        let line = lines[0];
        assert!(line.starts_with("probe: error: "), "{line}");
        for s in names {
            assert!(line.contains(s), "the error should name '{s}': {line}");
        }
        let out = self.out();
        assert!(
            !out.exists() || h5_i64_attr(&out, "complete") == Some(0),
            "{} looks like complete results after a failed run",
            out.display()
        );
        eprintln!("{line}");
        line.to_string()
    }
}

/// Runs the probe binary with a 90 s time limit and a data-segment limit of `gib` GiB
/// (RLIMIT_DATA counts the heap and anonymous mappings, not the mapped libraries), from `cwd`.
fn run_limited(cwd: &Path, args: &[&std::ffi::OsStr], gib: u64) -> Output {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--data={}", gib << 30))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_probe"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = {
        let _no_hdf5_file_open_here = hdf5_guard();
        cmd.spawn().expect("prlimit (util-linux) runs probe")
    };
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "probe {args:?} still running after 90 s (blocked on a read?)\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// --- where the data may come from ---------------------------------------------------------------

#[test]
fn absolute_location_is_refused() {
    let c = Case::new();
    let o = c.outside();
    let loc = o.to_str().unwrap().to_string();
    let m = c.model(true, |p| set_entry(p, TENSOR, "location", Some(&loc)));
    c.refused(&m, TENSOR, &loc, &["relative"]);
}

#[test]
fn parent_dir_location_is_refused() {
    let c = Case::new();
    c.outside();
    let loc = "../outside/mlp.onnx.data";
    let m = c.model(true, |p| set_entry(p, TENSOR, "location", Some(loc)));
    c.refused(&m, TENSOR, loc, &["outside the model's folder"]);
}

#[test]
fn symlink_out_of_the_folder_is_refused() {
    let c = Case::new();
    let o = c.outside();
    // The model as shipped, but its data file is a link to a file outside the folder.
    let m = c.model(false, |_| {});
    std::os::unix::fs::symlink(&o, c.path("m/mlp.onnx.data")).unwrap();
    // The first initializer stored outside is the first one named.
    c.refused(
        &m,
        "fc1.weight",
        "mlp.onnx.data",
        &["outside the model's folder"],
    );
}

#[test]
fn symlinked_folder_out_of_the_model_folder_is_refused() {
    let c = Case::new();
    c.outside();
    let m = c.model(false, |p| {
        for t in ["fc1.weight", "fc1.bias", "fc2.weight", "fc3.weight"] {
            set_entry(p, t, "location", Some("sub/mlp.onnx.data"));
        }
    });
    std::os::unix::fs::symlink(c.path("outside"), c.path("m/sub")).unwrap();
    c.refused(
        &m,
        "fc1.weight",
        "sub/mlp.onnx.data",
        &["outside the model's folder"],
    );
}

#[test]
fn dev_zero_location_is_refused() {
    let c = Case::new();
    let m = c.model(true, |p| {
        set_entry(p, TENSOR, "location", Some("/dev/zero"))
    });
    // Before: read whole until the allocation failed (8 GiB here, the machine's memory without
    // the limit), then "out of memory".
    c.refused(&m, TENSOR, "/dev/zero", &["relative"]);
}

#[test]
fn link_to_dev_zero_is_refused() {
    let c = Case::new();
    let m = c.model(true, |p| {
        set_entry(p, TENSOR, "location", Some("zeros.bin"))
    });
    std::os::unix::fs::symlink("/dev/zero", c.path("m/zeros.bin")).unwrap();
    c.refused(&m, TENSOR, "zeros.bin", &["outside the model's folder"]);
}

#[test]
fn fifo_location_is_refused() {
    let c = Case::new();
    let m = c.model(false, |_| {});
    let fifo = c.path("m/mlp.onnx.data");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success(), "mkfifo {}", fifo.display());
    c.refused(&m, "fc1.weight", "mlp.onnx.data", &["not a regular file"]);
}

// --- offsets and lengths -----------------------------------------------------------------------

#[test]
fn non_numeric_offset_is_refused() {
    let c = Case::new();
    let m = c.model(true, |p| set_entry(p, TENSOR, "offset", Some("4O1408")));
    c.refused(&m, TENSOR, "mlp.onnx.data", &["offset", "4O1408"]);
}

#[test]
fn negative_offset_is_refused() {
    let c = Case::new();
    let m = c.model(true, |p| set_entry(p, TENSOR, "offset", Some("-512")));
    c.refused(&m, TENSOR, "mlp.onnx.data", &["offset", "-512"]);
}

#[test]
fn offset_plus_length_overflowing_is_refused() {
    let c = Case::new();
    let m = c.model(true, |p| {
        set_entry(p, TENSOR, "offset", Some("18446744073709551615"));
        set_entry(p, TENSOR, "length", Some("512"));
    });
    c.refused(&m, TENSOR, "mlp.onnx.data", &["18446744073709551615"]);
}

#[test]
fn huge_offset_is_refused() {
    // Within u64 but past the end of the file.
    let c = Case::new();
    let m = c.model(true, |p| {
        set_entry(p, TENSOR, "offset", Some("9223372036854775807"))
    });
    c.refused(&m, TENSOR, "mlp.onnx.data", &["the file has"]);
}

#[test]
fn length_not_matching_the_shape_is_refused() {
    let c = Case::new();
    let m = c.model(true, |p| set_entry(p, TENSOR, "length", Some("508")));
    c.refused(&m, TENSOR, "mlp.onnx.data", &["508", "512"]);
}

#[test]
fn non_numeric_length_is_refused() {
    let c = Case::new();
    let m = c.model(true, |p| set_entry(p, TENSOR, "length", Some("0x200")));
    c.refused(&m, TENSOR, "mlp.onnx.data", &["length", "0x200"]);
}

#[test]
fn negative_dims_are_refused() {
    let c = Case::new();
    let m = c.model(true, |p| {
        let t = p
            .graph
            .as_mut()
            .unwrap()
            .initializer
            .iter_mut()
            .find(|t| t.name == TENSOR)
            .unwrap();
        t.dims = vec![-128];
    });
    c.refused(&m, TENSOR, "mlp.onnx.data", &["-128"]);
}

#[test]
fn dims_whose_product_overflows_are_refused() {
    let c = Case::new();
    let m = c.model(true, |p| {
        let t = p
            .graph
            .as_mut()
            .unwrap()
            .initializer
            .iter_mut()
            .find(|t| t.name == TENSOR)
            .unwrap();
        // 2^32 * 2^32 wraps to 0 in 64 bits.
        t.dims = vec![1 << 32, 1 << 32];
    });
    c.refused(&m, TENSOR, "mlp.onnx.data", &["too large"]);
}

#[test]
fn truncated_data_file_is_refused() {
    // Model and data named apart, so the line must name both.
    let c = Case::new();
    let m = c.path("m/net.onnx");
    let mut p = mlp();
    for t in ["fc1.weight", "fc1.bias", "fc2.weight", "fc3.weight"] {
        set_entry(&mut p, t, "location", Some("weights.bin"));
    }
    save(&p, &m);
    let full = std::fs::read(model("mlp.onnx.data")).unwrap();
    // Ends inside fc2.weight (bytes 401920..434688).
    std::fs::write(c.path("m/weights.bin"), &full[..420_000]).unwrap();
    c.refused(&m, "fc2.weight", "weights.bin", &["truncated"]);
}

// --- what must still load ----------------------------------------------------------------------

#[test]
fn data_in_a_subfolder_and_links_inside_the_folder_load() {
    let c = Case::new();
    let m = c.model(false, |p| {
        for t in ["fc1.weight", "fc1.bias", "fc2.weight", "fc3.weight"] {
            set_entry(p, t, "location", Some("weights/../weights/mlp.onnx.data"));
        }
    });
    std::fs::create_dir_all(c.path("m/weights")).unwrap();
    std::fs::copy(model("mlp.onnx.data"), c.path("m/real.data")).unwrap();
    // A link that stays inside the folder is fine.
    std::os::unix::fs::symlink("../real.data", c.path("m/weights/mlp.onnx.data")).unwrap();
    let o = c.eval(&m).ok();
    assert!(o.stdout.contains("loss") || o.stderr.is_empty(), "{o:?}");
    let got = probe::model::Model::load(&m).unwrap().own_state().unwrap();
    let want = probe::model::Model::load(&model("mlp.onnx"))
        .unwrap()
        .own_state()
        .unwrap();
    assert_eq!(got.len(), want.len());
    for (k, v) in &want {
        assert_eq!(got[k].as_f32(), v.as_f32(), "{k}");
    }
}

#[test]
fn shipped_models_load_with_the_same_hash() {
    use sha2::{Digest, Sha256};
    for name in ["mlp", "resnet", "gpt"] {
        let path = model(&format!("{name}.onnx"));
        let m = probe::model::Model::load(&path).unwrap();
        // The hash covers the graph file then its data file, as before external data was read
        // by range (results files name models by it).
        let mut h = Sha256::new();
        h.update(std::fs::read(&path).unwrap());
        h.update(std::fs::read(model(&format!("{name}.onnx.data"))).unwrap());
        assert_eq!(m.sha256, format!("{:x}", h.finalize()), "{name}");
        let state = m.own_state().unwrap();
        assert!(!state.is_empty());
        for p in m.state() {
            assert_eq!(state[&p.name].shape, p.shape, "{name} {}", p.name);
        }
    }
}

#[test]
fn fresh_pytorch_export_loads() {
    // Exported as /work/shared/export.md says (dynamo=True, optimize=False): external data.
    let c = Case::new();
    let m = c.path("fresh/net.onnx");
    std::fs::create_dir_all(m.parent().unwrap()).unwrap();
    let script = r#"
import sys, torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
net.eval()
torch.onnx.export(net, (torch.randn(2, 1, 28, 28),), sys.argv[1], dynamo=True, optimize=False,
                  input_names=["x"], output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("N")},),
                  external_data=True)
"#;
    py(&["-c", script, m.to_str().unwrap()]);
    let loaded = probe::model::Model::load(&m).unwrap();
    assert_eq!(loaded.trainable().count(), 4);
    c.eval(&m).ok();
}

// --- checkpoints -------------------------------------------------------------------------------

#[test]
fn checkpoint_that_is_a_fifo_is_refused() {
    let c = Case::new();
    let fifo = c.path("step-1.safetensors");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    // Before: blocked in open() until the time limit.
    let o = c.eval_with(
        &model("mlp.onnx"),
        &["--ckpt".as_ref(), fifo.as_os_str()],
        8,
    );
    c.check_refused(o, &["step-1.safetensors", "not a regular file"]);
}

#[test]
fn checkpoint_that_is_dev_zero_is_refused() {
    let c = Case::new();
    // Before: read whole until the allocation failed ("out of memory" under the limit).
    let o = c.eval_with(
        &model("mlp.onnx"),
        &["--ckpt".as_ref(), "/dev/zero".as_ref()],
        8,
    );
    c.check_refused(o, &["/dev/zero", "not a regular file"]);
}

/// A safetensors file with the model's own state, then one more tensor of `extra` bytes (an
/// integer buffer the graph does not use) whose data is a hole: the file is sparse.
fn sparse_checkpoint(path: &Path, extra: u64) {
    use std::io::Write;
    let m = probe::model::Model::load(&model("mlp.onnx")).unwrap();
    let state = m.own_state().unwrap();
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in &state {
        let start = data.len();
        data.extend(t.as_f32().unwrap().iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let start = data.len() as u64;
    header.insert(
        "junk.num_batches_tracked".into(),
        serde_json::json!({"dtype": "U8", "shape": [extra], "data_offsets": [start, start + extra]}),
    );
    let text = serde_json::Value::Object(header).to_string();
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.write_all(&data).unwrap();
    f.set_len(8 + text.len() as u64 + start + extra).unwrap();
}

#[test]
fn checkpoint_far_larger_than_the_model_needs_is_read_by_range() {
    // 6 GiB, nearly all of it a tensor the graph does not use, under a 2 GiB data limit.
    // Before: the whole file was read into memory ("out of memory" under the limit).
    let c = Case::new();
    let ck = c.path("step-7.safetensors");
    sparse_checkpoint(&ck, 6 << 30);
    let o = c.eval_with(&model("mlp.onnx"), &["--ckpt".as_ref(), ck.as_os_str()], 2);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // The same loss as the model's own state gives.
    let own = c.eval_with(&model("mlp.onnx"), &[], 2);
    let loss = |s: &str| {
        s.lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    assert_eq!(
        loss(&o.stdout),
        loss(&own.stdout),
        "{}\n{}",
        o.stdout,
        own.stdout
    );
}

#[test]
fn model_that_is_dev_zero_is_refused() {
    // Before: read whole until the allocation failed ("out of memory" under the limit).
    let c = Case::new();
    let o = c.eval(Path::new("/dev/zero"));
    c.check_refused(o, &["/dev/zero", "not a regular file"]);
}
