//! probes/follow.sh on a real single-node SLURM (the cluster of `tests/slurm.rs`, from
//! `common/cluster.rs`): a training job (`probe train` writing checkpoints) and a probe job
//! (`probe grad --follow`) submitted together. The probe job runs beside training on its own CPU
//! and ends when training ends: at the trainer's DONE marker, or, when the training job is
//! killed without writing it, through follow.sh's end job. Either way its rows equal `probe grad`
//! run afterwards on the same checkpoints in every dataset but /seconds.
//!
//! Skipped, saying why, where no SLURM can be started: not root, the packages missing
//! (`./setup.sh` as root installs them), or the daemons not coming up.
#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::*;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one follow.sh submission left.
struct Submitted {
    train_id: String,
    probe_id: String,
    end_id: String,
    ckpts: PathBuf,
    out: PathBuf,
}

/// Writes a training batch script running `train` (a shell line, `{probe}` and `{ckpts}` filled
/// in) and submits it with probes/follow.sh; waits until the queue is empty.
fn follow_sh(c: &Cluster, train: &str) -> Submitted {
    let d = c.path().to_path_buf();
    let probe_bin = env!("CARGO_BIN_EXE_probe");
    let ckpts = d.join("run");
    let script = d.join("train.sh");
    let train = train
        .replace("{probe}", probe_bin)
        .replace("{ckpts}", ckpts.to_str().unwrap())
        .replace("{mlp}", model("mlp.onnx").to_str().unwrap());
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n#SBATCH --job-name=train --cpus-per-task=1 --output={}/train-%j.log\n{train}\n",
            d.display()
        ),
    )
    .unwrap();
    let out = d.join("grad").join("follow.h5");
    let mut cmd = c.cmd("bash");
    cmd.current_dir(&d)
        .arg(root().join("probes/follow.sh"))
        .args(["--cpus", "1"])
        .arg(&script)
        .arg(model("mlp.onnx"))
        .arg(&ckpts)
        .arg(fmnist_2000())
        .arg(&out)
        .args(["--batch", "100", "--settle", "0.5", "--idle-timeout", "120"])
        .args(["--progress-every", "2", "--log-json"])
        .arg(d.join("follow.jsonl"))
        .env("PROBE", probe_bin);
    let o = run(cmd).ok();
    eprint!("{}", o.stdout);
    // "training job A; probe job B (follows ...); end job C (only if training fails)"
    let id = |after: &str| {
        let line = o.stdout.lines().next().unwrap_or_default();
        line.split_once(after)
            .and_then(|(_, rest)| rest.split([';', ' ']).next())
            .unwrap_or_else(|| panic!("no '{after}N' in:\n{}", o.stdout))
            .to_string()
    };
    let s = Submitted {
        train_id: id("training job "),
        probe_id: id("probe job "),
        end_id: id("end job "),
        ckpts,
        out,
    };
    c.drain(Duration::from_secs(150));
    s
}

/// The probe job's log.
fn follow_log(s: &Submitted) -> String {
    let name = format!("probe-follow-{}.log", s.probe_id);
    std::fs::read_to_string(s.out.parent().unwrap().join(name)).unwrap_or_default()
}

/// The probe job's file against `probe grad` afterwards on the same checkpoints, one thread as
/// the job; returns the steps.
fn equals_grad_afterwards(s: &Submitted, d: &Path) -> Vec<i64> {
    let after = d.join("after.h5");
    probe(&mlp_grad_args(
        &after,
        &["--ckpt", s.ckpts.to_str().unwrap()],
    ))
    .ok();
    let (got, want) = (h5_dump(&s.out), h5_dump(&after));
    same_datasets(&got, &want, 0.0);
    i64s(&got["datasets"]["checkpoints/step"])
}

fn cluster() -> Option<Cluster> {
    match Cluster::start() {
        Ok(c) => Some(c),
        Err(why) => {
            eprintln!("SKIPPED: no SLURM here: {why}");
            None
        }
    }
}

/// Training: 800 steps of the MLP (a few seconds), a checkpoint every 160, after a 3 s sleep so
/// that the probe job, which starts once training has started (at the scheduler's next pass: the
/// cluster's sched_interval is 1 s), is up before the first checkpoint and waits for the folder.
#[test]
fn follow_sh_probes_a_training_job_until_its_done_marker() {
    let t0 = Instant::now();
    let Some(c) = cluster() else { return };
    let s = follow_sh(
        &c,
        "sleep 3\nexec {probe} train --model {mlp} --data fashion-mnist --limit 20000 --epochs 4 \
         --batch 100 --ckpt-every 160 --threads 1 --out {ckpts}",
    );
    eprintln!("jobs done at {:.1} s", t0.elapsed().as_secs_f64());
    let log = follow_log(&s);
    eprintln!("the probe job's log:\n{log}");
    for (id, what) in [(&s.train_id, "training"), (&s.probe_id, "probe")] {
        assert!(
            c.state(id).starts_with("JobState=COMPLETED"),
            "{what} job {id}: {}",
            c.state(id)
        );
    }
    assert_eq!(
        c.state(&s.end_id),
        "JobState=CANCELLED Reason=DependencyNeverSatisfied",
        "the end job, after a training job that succeeded"
    );
    assert!(
        log.contains("DONE found and every checkpoint measured: done"),
        "the probe job should end at DONE"
    );
    // Beside training, not after it: checkpoints came in more than one round.
    let rounds = log.matches(" new checkpoint(s): ").count();
    assert!(
        rounds >= 2,
        "the probe job took every checkpoint in {rounds} round(s): it did not run beside training"
    );
    assert!(
        log.contains("follow: waiting for "),
        "says what it waits for"
    );
    let events = std::fs::read_to_string(c.path().join("follow.jsonl")).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"event\":\"follow\"") && l.contains("\"state\":\"done\"")),
        "{events}"
    );
    let steps = equals_grad_afterwards(&s, c.path());
    assert_eq!(steps, vec![0, 160, 320, 480, 640, 800], "every checkpoint");
    eprintln!("test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// Training killed (SIGKILL, no DONE) after 4 s of a run that would last far longer: follow.sh's
/// end job writes DONE, and the probe job measures every checkpoint written and ends, long
/// before its --idle-timeout of 120 s.
#[test]
fn follow_sh_ends_the_probe_job_when_training_dies() {
    let t0 = Instant::now();
    let Some(c) = cluster() else { return };
    let s = follow_sh(
        &c,
        "exec timeout -s KILL 4 {probe} train --model {mlp} --data fashion-mnist --limit 20000 \
         --epochs 100 --batch 100 --ckpt-every 160 --threads 1 --out {ckpts}",
    );
    let took = t0.elapsed().as_secs_f64();
    eprintln!("jobs done at {took:.1} s");
    let log = follow_log(&s);
    eprintln!("the probe job's log:\n{log}");
    assert!(
        c.state(&s.train_id).starts_with("JobState=FAILED"),
        "training job: {}",
        c.state(&s.train_id)
    );
    for (id, what) in [(&s.probe_id, "probe"), (&s.end_id, "end")] {
        assert!(
            c.state(id).starts_with("JobState=COMPLETED"),
            "{what} job {id}: {}",
            c.state(id)
        );
    }
    let done = std::fs::read_to_string(s.ckpts.join("DONE")).unwrap();
    assert!(done.contains("ended without success"), "{done}");
    assert!(log.contains("DONE found and every checkpoint measured: done"));
    assert!(
        took < 60.0,
        "the probe job should not wait for its idle timeout"
    );
    let steps = equals_grad_afterwards(&s, c.path());
    assert!(steps.len() >= 2 && steps[0] == 0, "{steps:?}");
    eprintln!(
        "{} checkpoints; test took {:.1} s",
        steps.len(),
        t0.elapsed().as_secs_f64()
    );
}
