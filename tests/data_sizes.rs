//! Sizes a data file declares are checked before anything is allocated or read (issue 14,
//! items 4 and 5): a file that declares far more samples than it stores, one whose data live in
//! other files, one that is not a regular file, and a real data set too large to hold in memory
//! for `probe train` all end with exit 3 and one line naming the file, never an abort on a huge
//! allocation or a pass over 10^8 samples of fill values.
//!
//! The runs have a time limit and a data-segment limit (RLIMIT_DATA), so a regression fails the
//! test instead of the machine.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    /// Runs probe ARGS under a `gib` GiB data-segment limit and a 90 s time limit.
    fn probe(&self, args: &[&std::ffi::OsStr], gib: u64) -> Output {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--data={}", gib << 30))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_probe"))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = {
            let _no_hdf5_file_open_here = hdf5_guard();
            cmd.spawn().expect("prlimit (util-linux) runs probe")
        };
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(90) {
                child.kill().unwrap();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "probe {args:?} still running after 90 s\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
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
    fn eval(&self, model: &Path, data: &Path) -> Output {
        let out = self.path("out.h5");
        self.probe(
            &[
                "eval".as_ref(),
                "--model".as_ref(),
                model.as_os_str(),
                "--data".as_ref(),
                data.as_os_str(),
                "--out".as_ref(),
                out.as_os_str(),
            ],
            8,
        )
    }
    fn train(&self, model: &Path, data: &Path, gib: u64) -> Output {
        let run = self.path("run");
        self.probe(
            &[
                "train".as_ref(),
                "--model".as_ref(),
                model.as_os_str(),
                "--data".as_ref(),
                data.as_os_str(),
                "--out".as_ref(),
                run.as_os_str(),
                "--steps".as_ref(),
                "1".as_ref(),
            ],
            gib,
        )
    }
}

/// Exit 3, one line naming `data` and each of `says`; no results marked complete.
fn refused(case: &Case, o: Output, data: &Path, says: &[&str]) -> String {
    assert_eq!(
        o.code, 3,
        "expected exit 3 (input error), got {}\nstdout:\n{}\nstderr:\n{}",
        o.code, o.stdout, o.stderr
    );
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr should be one line:\n{}", o.stderr);
    let line = lines[0];
    assert!(line.starts_with("probe: error: "), "{line}");
    let name = data.file_name().unwrap().to_str().unwrap();
    for s in [name].iter().chain(says) {
        assert!(line.contains(s), "the error should name '{s}': {line}");
    }
    let out = case.path("out.h5");
    assert!(
        !out.exists() || h5_i64_attr(&out, "complete") == Some(0),
        "{} looks like complete results after a failed run",
        out.display()
    );
    assert!(
        !case.path("run/step-00000001.safetensors").exists(),
        "a training step was taken"
    );
    eprintln!("{line}");
    line.to_string()
}

/// Images [1e8, 1, 28, 28] in chunks, of which only the first ten samples were ever written:
/// the file is a few hundred KB.
fn declares_1e8(path: &Path) {
    let script = r#"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], 'w') as f:
    x = f.create_dataset('x', shape=(100_000_000, 1, 28, 28), dtype='f4', chunks=(64, 1, 28, 28))
    y = f.create_dataset('y', shape=(100_000_000,), dtype='i8', chunks=(4096,))
    x[:10] = np.random.default_rng(0).random((10, 1, 28, 28), dtype=np.float32)
    y[:10] = np.arange(10)
"#;
    py(&["-c", script, path.to_str().unwrap()]);
}

#[test]
fn train_on_a_file_declaring_1e8_samples_exits_3() {
    // Before: "memory allocation of 313600000000 bytes failed", abort (exit 134).
    let c = Case::new();
    let d = c.path("declares.h5");
    declares_1e8(&d);
    let o = c.train(&model("mlp.onnx"), &d, 8);
    refused(&c, o, &d, &["'x'", "never written"]);
}

#[test]
fn eval_on_a_file_declaring_1e8_samples_exits_3() {
    // Before: a pass over 10^8 samples, all but ten of them HDF5's fill value (0).
    let c = Case::new();
    let d = c.path("declares.h5");
    declares_1e8(&d);
    let o = c.eval(&model("mlp.onnx"), &d);
    refused(&c, o, &d, &["'x'", "never written"]);
}

#[test]
fn train_on_data_larger_than_memory_exits_3() {
    // A real, fully written data set (compressed chunks of zeros, a 1 MB file): 2^26 samples of
    // x [4] float32 and y int64 take 1.6 GB in memory, twice that while copied into tensors;
    // under a 2 GiB limit that cannot fit. Before: the allocation failed and probe aborted.
    let c = Case::new();
    let m = tiny_model(c.dir.path(), "tiny", &[], true);
    let d = c.path("large.h5");
    let script = r#"
import sys, zlib, h5py, numpy as np
n, rows = 1 << 26, 1 << 20
with h5py.File(sys.argv[1], 'w') as f:
    x = f.create_dataset('x', shape=(n, 4), dtype='f4', chunks=(rows, 4), compression='gzip')
    y = f.create_dataset('y', shape=(n,), dtype='i8', chunks=(rows,), compression='gzip')
    cx = zlib.compress(np.zeros((rows, 4), np.float32).tobytes())
    cy = zlib.compress(np.zeros(rows, np.int64).tobytes())
    for k in range(n // rows):
        x.id.write_direct_chunk((k * rows, 0), cx)
        y.id.write_direct_chunk((k * rows,), cy)
"#;
    py(&["-c", script, d.to_str().unwrap()]);
    let o = c.train(&m, &d, 2);
    refused(&c, o, &d, &["in memory", "--limit"]);
}

#[test]
fn data_kept_in_an_external_file_is_refused() {
    // HDF5's external storage points a dataset's raw data at another file, anywhere.
    // Before: that file's bytes were read as samples (exit 0).
    let c = Case::new();
    let foreign = c.path("foreign.bin");
    std::fs::write(&foreign, vec![0x3fu8; 10 * 784 * 4]).unwrap();
    let d = c.path("external.h5");
    let script = r#"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], 'w') as f:
    f.create_dataset('x', shape=(10, 1, 28, 28), dtype='f4', external=[(sys.argv[2], 0, 10 * 784 * 4)])
    f['y'] = np.arange(10)
"#;
    py(&["-c", script, d.to_str().unwrap(), foreign.to_str().unwrap()]);
    let o = c.eval(&model("mlp.onnx"), &d);
    refused(&c, o, &d, &["'x'", "external files"]);
}

#[test]
fn data_file_that_is_a_fifo_is_refused() {
    // Before: HDF5 blocked opening it.
    let c = Case::new();
    let d = c.path("data.h5");
    assert!(Command::new("mkfifo").arg(&d).status().unwrap().success());
    let o = c.eval(&model("mlp.onnx"), &d);
    refused(&c, o, &d, &["not a regular file"]);
}

#[test]
fn truncated_data_file_is_refused() {
    let c = Case::new();
    let d = c.path("cut.h5");
    let x = ndarray::ArrayD::from_shape_vec(vec![10, 1, 28, 28], noise(7840, 1)).unwrap();
    let y = ndarray::ArrayD::from_shape_vec(vec![10], (0..10i64).collect()).unwrap();
    write_data(&d, &x, &y);
    let len = std::fs::metadata(&d).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&d)
        .unwrap()
        .set_len(len - 8000)
        .unwrap();
    let o = c.eval(&model("mlp.onnx"), &d);
    refused(&c, o, &d, &[]);
}

#[test]
fn well_formed_files_still_load() {
    // Contiguous (the hdf5 crate), chunked and compressed (h5py), and chunked with a partial
    // last chunk: all stored to the end.
    let c = Case::new();
    let plain = c.path("plain.h5");
    let x = ndarray::ArrayD::from_shape_vec(vec![10, 1, 28, 28], noise(7840, 1)).unwrap();
    let y = ndarray::ArrayD::from_shape_vec(vec![10], (0..10i64).collect()).unwrap();
    write_data(&plain, &x, &y);
    let chunked = c.path("chunked.h5");
    let script = r#"
import sys, h5py, numpy as np
r = np.random.default_rng(0)
with h5py.File(sys.argv[1], 'w') as f:
    f.create_dataset('x', data=r.random((10, 1, 28, 28), dtype=np.float32), chunks=(4, 1, 28, 28), compression='gzip')
    f.create_dataset('y', data=np.arange(10), chunks=(3,), maxshape=(None,))
"#;
    py(&["-c", script, chunked.to_str().unwrap()]);
    for d in [&plain, &chunked] {
        let _ = std::fs::remove_file(c.path("out.h5"));
        let o = c.eval(&model("mlp.onnx"), d);
        assert_eq!(o.code, 0, "{}: {}", d.display(), o.stderr);
        let _g = hdf5_guard();
        let mut data = probe::data::hdf5_file::Hdf5Data::open(d).unwrap();
        use probe::data::Dataset;
        assert_eq!(data.spec().len, 10);
        assert_eq!(data.read(6, 4).unwrap().len(), 4);
        assert!(data.read(8, 4).is_err(), "rows past the end are an error");
    }
}
