//! `probe grad --follow DIR` beside a trainer: the rows it writes equal `probe grad` run
//! afterwards on the same checkpoints (every dataset but `/seconds`), a follower killed midway
//! and restarted gives the same file, and a checkpoint written slowly in pieces (no rename, with
//! a pause longer than `--settle` in the middle) is never read before it is whole.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_probe"))
        .current_dir(root())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn grad_args(dir: &Path, out: &Path, follow: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = [
        "grad",
        "--model",
        model("mlp.onnx").to_str().unwrap(),
        "--data",
        fmnist_2000().to_str().unwrap(),
        "--batch",
        "100",
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(settle) = follow {
        a.extend(["--follow", dir.to_str().unwrap(), "--settle", settle].map(String::from));
        a.extend(["--idle-timeout", "120"].map(String::from));
    } else {
        a.extend(["--ckpt", dir.to_str().unwrap()].map(String::from));
    }
    a
}

fn wait(mut c: Child, what: &str) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(s.success(), "{what}: {s}\n{err}");
            return err;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "{what} still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rows(out: &Path) -> i64 {
    if !out.exists() {
        return 0;
    }
    h5_i64_attr(out, "rows").unwrap_or(0)
}

#[test]
fn follower_beside_probe_train_equals_grad_afterwards_and_survives_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = d.join("run");
    let train: Vec<String> = [
        "train",
        "--model",
        model("mlp.onnx").to_str().unwrap(),
        // The whole training set: slow enough (1200 steps) for the follower to be killed midway.
        "--data",
        "fashion-mnist",
        "--epochs",
        "1",
        "--batch",
        "50",
        "--ckpt-every",
        "200",
        "--threads",
        "1",
        "--out",
        run.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let trainer = spawn(&train);
    // The first follower is killed once it has written two rows.
    let out = d.join("follow.h5");
    let mut first = spawn(&grad_args(&run, &out, Some("0.5")));
    let t0 = Instant::now();
    while rows(&out) < 2 {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the follower ended early"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no rows after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    // Restarted, it goes on until the trainer's DONE.
    let second = spawn(&grad_args(&run, &out, Some("0.5")));
    wait(trainer, "probe train");
    assert!(
        run.join("DONE").exists(),
        "probe train writes its done marker"
    );
    let err = wait(second, "the restarted follower");
    assert!(err.contains("DONE found"), "{err}");

    let after = d.join("after.h5");
    probe(&grad_args(&run, &after, None)).ok();
    let (got, want) = (h5_dump(&out), h5_dump(&after));
    assert_eq!(
        i64s(&got["datasets"]["checkpoints/step"]),
        vec![0, 200, 400, 600, 800, 1000, 1200],
        "every checkpoint, in step order"
    );
    same_datasets(&got, &want, 0.0);
}

/// A checkpoint written in pieces over ~3 s by a loop that does not rename, pausing 2 s (longer
/// than --settle) with the file cut short: the follower takes it only when whole.
#[test]
fn a_checkpoint_written_slowly_is_never_read_early() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = d.join("ckpts");
    std::fs::create_dir(&dir).unwrap();
    let mlp = model("mlp.onnx");
    let whole = d.join("whole.safetensors");
    write_ckpt(&whole, &own_state(&mlp, |x| x * 1.1), &[]);
    let bytes = std::fs::read(&whole).unwrap();
    let target = dir.join("step-5.safetensors");
    let out = d.join("f.h5");
    let mut a = grad_args(&dir, &out, Some("1"));
    a.extend(["--until-step", "5"].map(String::from));
    let follower = spawn(&a);
    let writer = {
        let (target, bytes) = (target.clone(), bytes.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&target).unwrap();
            let step = bytes.len() / 8 + 1;
            for (i, piece) in bytes.chunks(step).enumerate() {
                f.write_all(piece).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(if i == 3 { 2000 } else { 150 }));
            }
        })
    };
    writer.join().unwrap();
    let err = wait(follower, "the follower");
    assert!(err.contains("reached --until-step 5"), "{err}");
    let got = h5_dump(&out);
    let sha = sha256_hex(&bytes);
    assert_eq!(
        got["datasets"]["checkpoints/sha256"][0].as_str().unwrap(),
        sha,
        "the row is of the whole file"
    );
}

fn sha256_hex(b: &[u8]) -> String {
    let out = py(&[
        "-c",
        "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
        &write_tmp(b).to_string_lossy(),
    ]);
    out.trim().to_string()
}

fn write_tmp(b: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("probe-follow-sha-{}", std::process::id()));
    std::fs::write(&p, b).unwrap();
    p
}
