//! Faults caused for real (issue 14): kills inside writes (strace's syscall fault injection),
//! a full disk (a tiny tmpfs), two writers racing on one file, SIGTERM mid-run. The short matrix
//! of `benches/fault_matrix.py` (the whole one is a bench: see the README's reliability section).
mod common;

use common::root;

#[test]
fn fault_matrix_short_recovers_every_case() {
    let out = std::process::Command::new(root().join(".venv/bin/python"))
        .arg(root().join("benches/fault_matrix.py"))
        .arg("--short")
        .env("PROBE_BIN", env!("CARGO_BIN_EXE_probe"))
        .output()
        .expect("running benches/fault_matrix.py (./setup.sh installs .venv and strace)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fault matrix failed:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    let (k, n) = last
        .split_once(" of ")
        .map(|(k, rest)| (k.trim(), rest.split_whitespace().next().unwrap_or("")))
        .expect("a last line 'K of N recovered exactly'");
    assert_eq!(k, n, "{stdout}");
    assert!(n.parse::<usize>().unwrap() >= 10, "{stdout}");
    println!("{stdout}");
}

/// The writer lock is the store's own, not HDF5's: a second writer is refused (exit 3) with the
/// holder's pid even when HDF5's locking is off, as many cluster file systems have it.
#[test]
fn second_writer_refused_even_without_hdf5_locking() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.h5");
    // Hold the lock from this process, as a running probe would.
    let _lock = probe::store::lock::WriterLock::acquire(&out).unwrap();
    for force in [false, true] {
        let mut args: Vec<String> = [
            "eval",
            "--model",
            "models/mlp.onnx",
            "--data",
            "fashion-mnist",
            "--limit",
            "100",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(out.display().to_string());
        if force {
            args.push("--force".into());
        }
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_probe"));
        cmd.current_dir(root())
            .args(&args)
            .env("HDF5_USE_FILE_LOCKING", "FALSE");
        let r = common::run(cmd);
        assert_eq!(r.code, 3, "{r:?}");
        assert!(
            r.stderr.contains(&format!("pid {}", std::process::id()))
                && r.stderr.contains(&out.display().to_string()),
            "{r:?}"
        );
        assert!(
            !out.exists(),
            "the refused writer created {}",
            out.display()
        );
    }
}
