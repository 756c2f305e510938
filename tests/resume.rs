//! Resume inside a pass (`--save-every`): a run killed (SIGKILL) at about half of a checkpoint's
//! pass goes on from its last save when rerun with the same command, and its results file is
//! identical to an uninterrupted run's, every dataset but `/seconds`; a save of another pass
//! (other flags) is ignored, not mixed in.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn checkpoints(dir: &Path) -> Vec<String> {
    let mlp = model("mlp.onnx");
    (0..3)
        .map(|k| {
            let p = dir.join(format!("step-{}.safetensors", 10 * k));
            write_ckpt(&p, &own_state(&mlp, |x| x * (1.0 + 0.1 * k as f32)), &[]);
            p.to_str().unwrap().to_string()
        })
        .collect()
}

fn args(cmd: &str, data: &Path, out: &Path, ckpts: &[String], extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![cmd.into(), "--model".into()];
    a.push(model("mlp.onnx").to_str().unwrap().into());
    a.extend(["--data".into(), data.to_str().unwrap().into()]);
    a.extend([
        "--batch".into(),
        "10".into(),
        "--threads".into(),
        "1".into(),
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend([
        "--out".into(),
        out.to_str().unwrap().into(),
        "--ckpt".into(),
    ]);
    a.extend(ckpts.iter().cloned());
    a
}

/// Samples done and in all, from the save's human line (`next batch B, samples done S`).
fn saved_samples(pass: &Path) -> Option<usize> {
    let b = std::fs::read(pass).ok()?;
    let text = String::from_utf8_lossy(&b[..b.len().min(200)]).to_string();
    let line = text.lines().nth(1)?;
    line.rsplit(' ').next()?.parse().ok()
}

/// Starts `args`, waits until its save holds at least `at` samples of the first group's pass,
/// and kills it (SIGKILL). Returns the samples of the last save.
fn kill_when_saved(args: &[String], pass: &Path, at: usize) -> usize {
    let mut child = Command::new(env!("CARGO_BIN_EXE_probe"))
        .current_dir(root())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if saved_samples(pass).is_some_and(|s| s >= at) {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before its save reached {at} samples");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no save after 120 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    saved_samples(pass).expect("a save survives the kill")
}

/// The sample a resumed run says it goes on from.
fn resumed_from(stderr: &str) -> usize {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("resume: "))
        .unwrap_or_else(|| panic!("no resume line in:\n{stderr}"));
    let s = line.split("from sample ").nth(1).unwrap();
    s.split(' ').next().unwrap().parse().unwrap()
}

fn kill_and_resume(cmd: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 4000;
    let data = fm(n, d);
    let ckpts = checkpoints(d);
    let whole = d.join("whole.h5");
    probe(&args(cmd, &data, &whole, &ckpts, extra)).ok();

    let out = d.join("killed.h5");
    let mut flags = extra.to_vec();
    flags.extend(["--save-every", "0"]);
    let a = args(cmd, &data, &out, &ckpts, &flags);
    let pass = PathBuf::from(format!("{}.pass", out.display()));
    let saved = kill_when_saved(&a, &pass, n / 2);
    let rerun = probe(&a).ok();
    let from = resumed_from(&rerun.stderr);
    assert_eq!(from, saved, "resumed from the last save");
    assert!(
        from as f64 >= 0.4 * n as f64,
        "{cmd}: resumed from {from} of {n}"
    );
    assert!(!pass.exists(), "the save is removed once the rows are in");
    let worst = same_datasets(&h5_dump(&out), &h5_dump(&whole), 0.0);
    assert_eq!(worst, 0.0);
}

/// `probe grad` with `--noise`'s minibatch part and `--save-grad`, its three checkpoints in one
/// pass: killed at half the pass, resumed from there, the file equals an uninterrupted run's.
#[test]
fn grad_killed_mid_pass_resumes_and_equals_an_uninterrupted_run() {
    kill_and_resume(
        "grad",
        &[
            "--noise",
            "--noise-samples",
            "0",
            "--save-grad",
            "--ckpts-per-pass",
            "3",
        ],
    );
}

/// `probe grad`, one checkpoint per pass: the kill lands in the first checkpoint's pass.
#[test]
fn grad_one_checkpoint_per_pass_resumes() {
    kill_and_resume("grad", &["--ckpts-per-pass", "1"]);
}

#[test]
fn eval_killed_mid_pass_resumes_and_equals_an_uninterrupted_run() {
    kill_and_resume("eval", &["--ckpts-per-pass", "3"]);
}

/// A save left by a pass with other flags (here `--batch`) is not used: the rerun says so,
/// starts over and gives the right rows.
#[test]
fn a_save_of_another_pass_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 4000;
    let data = fm(n, d);
    let ckpts = checkpoints(d);
    let out = d.join("r.h5");
    let a = args("grad", &data, &out, &ckpts, &["--save-every", "0"]);
    let pass = PathBuf::from(format!("{}.pass", out.display()));
    kill_when_saved(&a, &pass, n / 2);
    // The killed run's file holds no rows; a rerun with another batch size is another run.
    let mut b = a.clone();
    let i = b.iter().position(|x| x == "--batch").unwrap();
    b[i + 1] = "20".into();
    b.push("--force".into());
    let rerun = probe(&b).ok();
    assert!(
        rerun.stderr.contains("saved partial sums of another pass"),
        "{}",
        rerun.stderr
    );
    assert!(!rerun.stderr.contains("resume: "), "{}", rerun.stderr);
    let whole = d.join("whole.h5");
    let mut c = b.clone();
    let o = c.iter().position(|x| x == "--out").unwrap();
    c[o + 1] = whole.to_str().unwrap().into();
    probe(&c).ok();
    same_datasets(&h5_dump(&out), &h5_dump(&whole), 0.0);
}
