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
    let dir = dir.to_str().unwrap();
    match follow {
        Some(settle) => mlp_grad_args(
            out,
            &["--follow", dir, "--settle", settle, "--idle-timeout", "120"],
        ),
        None => mlp_grad_args(out, &["--ckpt", dir]),
    }
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
    // The whole training set: slow enough (1200 steps) for the follower to be killed midway.
    let train = train_args(
        &run,
        &[
            "--data",
            "fashion-mnist",
            "--epochs",
            "1",
            "--batch",
            "50",
            "--ckpt-every",
            "200",
        ],
    );
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

/// `probe train` of the MLP into `run`, one thread, with `flags` (data, epochs, batch, ...).
fn train_args(run: &Path, flags: &[&str]) -> Vec<String> {
    let mut a = ["train", "--model", model("mlp.onnx").to_str().unwrap()]
        .map(String::from)
        .to_vec();
    a.extend(flags.iter().map(|s| s.to_string()));
    a.extend(["--threads", "1", "--out", run.to_str().unwrap()].map(String::from));
    a
}

/// 800 steps of the MLP, a checkpoint every 160: a few seconds.
const SHORT_RUN: [&str; 12] = [
    "--data",
    "fashion-mnist",
    "--limit",
    "20000",
    "--epochs",
    "4",
    "--batch",
    "100",
    "--ckpt-every",
    "160",
    "--seed",
    "0",
];

/// Two followers of one folder on data shards 0/2 and 1/2 while `probe train` writes it; `probe
/// merge` of their files equals one `probe grad` run afterwards, every dataset but /seconds to
/// f64 rounding of the merge (as tests/merge.rs compares).
#[test]
fn followers_on_two_data_shards_merge_into_grad_afterwards() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = d.join("run");
    let parts: Vec<PathBuf> = (0..2).map(|i| d.join(format!("part-{i}.h5"))).collect();
    let followers: Vec<Child> = parts
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let mut a = grad_args(&run, out, Some("0.3"));
            a.extend(["--data-shard".to_string(), format!("{i}/2")]);
            spawn(&a)
        })
        .collect();
    // The followers first: they wait for the folder, and so see the run as it is written.
    std::thread::sleep(Duration::from_millis(1500));
    let trainer = spawn(&train_args(&run, &SHORT_RUN));
    wait(trainer, "probe train");
    for (i, f) in followers.into_iter().enumerate() {
        let err = wait(f, &format!("the follower of data shard {i}/2"));
        assert!(err.contains("DONE found"), "{err}");
        let rounds = err.matches(" new checkpoint(s): ").count();
        assert!(
            rounds >= 2,
            "shard {i}/2 took every checkpoint in one round:\n{err}"
        );
    }
    let merged = d.join("merged.h5");
    let mut m = vec![
        "merge".to_string(),
        "--out".into(),
        merged.to_str().unwrap().into(),
    ];
    m.extend(parts.iter().map(|p| p.to_str().unwrap().to_string()));
    probe(&m).ok();
    let after = d.join("after.h5");
    probe(&grad_args(&run, &after, None)).ok();
    let (got, want) = (h5_dump(&merged), h5_dump(&after));
    assert_eq!(
        i64s(&got["datasets"]["checkpoints/step"]),
        vec![0, 160, 320, 480, 640, 800]
    );
    let worst = same_datasets(&got, &want, 1e-15);
    eprintln!("merged followers vs grad afterwards: largest relative difference {worst:e}");
    assert_eq!(got["attrs"]["complete"], 1);
    assert!(got["attrs"].get("partial").is_none());
}

/// `probe analyze` and `probe plot` on a file a follower is still writing (holding
/// `<out>.lock`): both read it and work; analyze leaves /analysis unwritten and says so in one
/// line; the follower ends with the file `probe grad` writes afterwards; once it has ended,
/// analyze writes /analysis.
#[test]
fn analyze_and_plot_read_a_file_while_a_follower_writes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = d.join("ckpts");
    std::fs::create_dir(&dir).unwrap();
    let out = d.join("f.h5");
    let mut a = grad_args(&dir, &out, Some("0.2"));
    a.extend(["--save-grad".to_string()]);
    let follower = spawn(&a);
    let mlp = model("mlp.onnx");
    let lock = d.join("f.h5.lock");
    for k in 0..5i64 {
        let p = dir.join(format!("step-{k}.safetensors"));
        let s = 1.0 + 0.05 * k as f32;
        write_ckpt(&p, &own_state(&mlp, |x| x * s), &[]);
        let t0 = Instant::now();
        while rows(&out) < k + 1 {
            assert!(t0.elapsed() < Duration::from_secs(60), "row {k} never came");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(lock.exists(), "the follower holds {}", lock.display());
        if k >= 1 {
            let o = probe_in(d, &["analyze", "f.h5"]);
            assert_eq!(o.code, 0, "analyze while the follower writes: {}", o.stderr);
            let head = format!("f.h5: {} checkpoints, steps 0..{k}", k + 1);
            assert!(o.stdout.starts_with(&head), "{}", o.stdout);
            let note: Vec<&str> = o
                .stderr
                .lines()
                .filter(|l| l.contains("being written by another probe"))
                .collect();
            assert_eq!(note.len(), 1, "one line says what to do:\n{}", o.stderr);
            assert!(
                note[0].contains("/analysis not written")
                    && note[0].contains("run probe analyze again once that probe has ended"),
                "{}",
                note[0]
            );
        }
        let fig = d.join(format!("fig-{k}.png"));
        let o = probe_in(d, &["plot", "f.h5", "-o", fig.to_str().unwrap()]);
        assert_eq!(o.code, 0, "plot while the follower writes: {}", o.stderr);
        assert!(fig.metadata().unwrap().len() > 1000);
    }
    std::fs::write(dir.join("DONE"), "").unwrap();
    let err = wait(follower, "the follower");
    assert!(err.contains("DONE found"), "{err}");
    assert!(!lock.exists());
    let after = d.join("after.h5");
    let mut a = grad_args(&dir, &after, None);
    a.push("--save-grad".into());
    probe(&a).ok();
    let got = h5_dump(&out);
    same_datasets(&got, &h5_dump(&after), 0.0);
    assert!(
        !got["datasets"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("analysis")),
        "analyze wrote into the follower's file"
    );
    let o = probe_in(d, &["analyze", "f.h5"]).ok();
    assert!(
        o.stderr.contains("wrote /analysis into f.h5"),
        "{}",
        o.stderr
    );
}

/// `--until-step` takes the step as the rows do: from `--step-from REGEX` when given. The files
/// are named ep9 and ep10 (their names alone sort them the other way) and their metadata says
/// steps 1 and 2: with `--step-from 'ep(\d+)' --until-step 10` the follower stops once ep10 is
/// measured, long before its idle timeout.
#[test]
fn until_step_honours_step_from() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = d.join("ckpts");
    std::fs::create_dir(&dir).unwrap();
    let mlp = model("mlp.onnx");
    for (name, meta, s) in [("ep9", "1", 1.0f32), ("ep10", "2", 1.2)] {
        let p = dir.join(format!("{name}.safetensors"));
        write_ckpt(&p, &own_state(&mlp, |x| x * s), &[("step", meta)]);
    }
    let step_from = ["--step-from", r"ep(\d+)"].map(String::from);
    let out = d.join("f.h5");
    let mut a = grad_args(&dir, &out, Some("0.2"));
    a.extend(step_from.clone());
    a.extend(["--until-step", "10"].map(String::from));
    let i = a.iter().position(|x| x == "--idle-timeout").unwrap();
    a[i + 1] = "30".into();
    let t0 = Instant::now();
    let err = wait(spawn(&a), "the follower");
    assert!(err.contains("step 10 reached --until-step 10"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "stopped by its idle timeout"
    );
    let after = d.join("after.h5");
    let mut a = grad_args(&dir, &after, None);
    a.extend(step_from);
    probe(&a).ok();
    let got = h5_dump(&out);
    assert_eq!(i64s(&got["datasets"]["checkpoints/step"]), vec![9, 10]);
    same_datasets(&got, &h5_dump(&after), 0.0);
}

/// What the follower waits for, and since when, in the plain log (stderr) and in `--log-json`:
/// the folder not made yet, a checkpoint written in pieces not yet whole, then a new checkpoint;
/// repeated every `--progress-every` seconds with the same `since`.
#[test]
fn logs_say_what_the_follower_waits_for_and_since_when() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dir = d.join("ckpts");
    let out = d.join("f.h5");
    let log = d.join("log.jsonl");
    let mut a = grad_args(&dir, &out, Some("1"));
    a.extend(
        [
            "--progress-every",
            "0.5",
            "--log-json",
            log.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let follower = spawn(&a);
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::create_dir(&dir).unwrap();
    // A checkpoint written in two halves 1.5 s apart (--settle is 1 s).
    let whole = d.join("whole.safetensors");
    write_ckpt(&whole, &own_state(&model("mlp.onnx"), |x| x), &[]);
    let bytes = std::fs::read(&whole).unwrap();
    let target = dir.join("step-3.safetensors");
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&target, &bytes).unwrap();
    let t0 = Instant::now();
    while rows(&out) < 1 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no row");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1200));
    std::fs::write(dir.join("DONE"), "").unwrap();
    let err = wait(follower, "the follower");
    eprintln!("{err}");

    // Plain: "[T] follow: waiting for WHAT since T0 (N s)".
    let waits: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("] follow: waiting for "))
        .collect();
    let folder = format!("waiting for {} to be created since ", dir.display());
    let piece = "waiting for step-3.safetensors to be whole (unchanged for 1 s, data complete)";
    let next = format!(
        "waiting for a new checkpoint in {} (or DONE) since ",
        dir.display()
    );
    for what in [folder.as_str(), piece, next.as_str()] {
        assert!(
            waits.iter().any(|l| l.contains(what)),
            "no '{what}' in:\n{err}"
        );
    }
    let sinces = |what: &str| -> Vec<String> {
        waits
            .iter()
            .filter(|l| l.contains(what))
            .map(|l| {
                l.split(" since ")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let f = sinces(&folder);
    assert!(f.len() >= 2, "the folder wait is repeated: {f:?}");
    assert!(f.iter().all(|s| s == &f[0] && s.ends_with('Z')), "{f:?}");

    // JSON: `follow` events, state `waiting`, with waiting_for, since and waited_seconds.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let waiting: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "follow" && e["state"] == "waiting")
        .collect();
    assert_eq!(waiting.len(), waits.len(), "the same waits in both logs");
    for (e, line) in waiting.iter().zip(&waits) {
        let what = e["waiting_for"].as_str().unwrap();
        let since = e["since"].as_str().unwrap();
        assert!(
            line.contains(&format!("waiting for {what} since {since}")),
            "{e} vs {line}"
        );
        assert!(e["waited_seconds"].as_u64().is_some(), "{e}");
    }
    assert!(waiting.iter().any(|e| e["settling"][0]
        .as_str()
        .is_some_and(|s| s.ends_with("step-3.safetensors"))));
    for state in ["watching", "new", "done"] {
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "follow" && e["state"] == state),
            "no follow event '{state}'"
        );
    }
}
