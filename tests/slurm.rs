//! probes/submit.sh on a real single-node SLURM (Debian's slurmctld, slurmd and munge, started
//! here with a private configuration, ports, state folders and munge socket under a temporary
//! folder, so that nothing else on the machine is touched): 3 checkpoint shards x 4 data shards
//! as a job array plus the merge job; one task cancelled in the middle of its pass, the merge
//! cancelled with it, the task rerun alone, and the merged file equal to one process's.
//!
//! Skipped, saying why, where no SLURM can be started: not root, the packages missing
//! (`./setup.sh` as root installs them), or the daemons not coming up.
#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::*;
use common::*;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// probes/submit.sh with the cluster's configuration, from `cwd`; its printed job ids.
fn submit(c: &Cluster, cwd: &Path, args: &[String]) -> (String, String) {
    let mut cmd = c.cmd("bash");
    cmd.current_dir(cwd)
        .arg(root().join("probes/submit.sh"))
        .args(args)
        .env("PROBE", env!("CARGO_BIN_EXE_probe"));
    let o = run(cmd).ok();
    eprint!("{}", o.stdout);
    let id = |prefix: &str| {
        o.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|l| l.split([':', ' ']).next())
            .unwrap_or_else(|| panic!("no '{prefix}' line in:\n{}", o.stdout))
            .to_string()
    };
    (id("array job "), id("merge job "))
}

/// 3 checkpoint shards x 4 data shards of `probe grad` through probes/submit.sh; task 5
/// (checkpoint shard 1, data shard 1) is cancelled in the middle of its pass, which cancels the
/// merge; `submit.sh --tasks 5` reruns it alone with a new merge; every task wrote its own
/// (checkpoint, data) pair, and the merged file equals one process's in every dataset but
/// /seconds, to f64 rounding of the sums.
#[test]
fn job_array_with_a_cancelled_task_rerun_merges_into_one_process_file() {
    let t0 = Instant::now();
    let c = match Cluster::start() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED: no SLURM here: {why}");
            return;
        }
    };
    eprintln!("cluster up in {:.1} s", t0.elapsed().as_secs_f64());
    let d = c.path().to_path_buf();

    // Three checkpoints and, in the same folder, an optimizer's state, which probe skips.
    let ckpts = d.join("ckpts");
    std::fs::create_dir(&ckpts).unwrap();
    let mlp = model("mlp.onnx");
    for (k, s) in [1.0f32, 0.9, 1.3].iter().enumerate() {
        let p = ckpts.join(format!("step-{:08}.safetensors", 10 * k));
        write_ckpt(&p, &own_state(&mlp, |x| x * s + 0.01 * k as f32), &[]);
    }
    write_ckpt(
        &ckpts.join("optimizer-00000020.safetensors"),
        &[(
            "fc1.weight.momentum".to_string(),
            CkptTensor::f32(vec![2], &[0.0, 0.0]),
        )],
        &[("format", "probe-optimizer-state-1")],
    );

    // 40,000 images at --batch 2: a task's pass lasts about a second, long enough to cancel.
    let flags: Vec<String> = [
        "--limit",
        "40000",
        "--batch",
        "2",
        "--weight-decay",
        "5e-4",
        "--noise",
        "--noise-samples",
        "0",
        "--save-grad",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = d.join("run");
    let mut args: Vec<String> = ["--ckpt-shards", "3", "--data-shards", "4", "--cpus", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for p in [&mlp, &ckpts] {
        args.push(p.display().to_string());
    }
    args.push("fashion-mnist".into());
    args.push(out.display().to_string());
    args.extend(flags.iter().cloned());
    let (array, merge) = submit(&c, &d, &args);
    // Meanwhile, one process over the same inputs, one thread as every task (the thread count
    // changes f32 rounding inside a batch; see docs/cluster.md).
    let one = d.join("one.h5");
    let mut reference = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_probe"));
        cmd.args(["grad", "--model"])
            .arg(&mlp)
            .arg("--ckpt")
            .arg(&ckpts);
        cmd.args(["--data", "fashion-mnist", "--threads", "1", "--out"]);
        cmd.arg(&one).args(&flags);
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(File::create(d.join("one.err")).unwrap());
        let _g = hdf5_guard();
        KillOnDrop(cmd.spawn().unwrap())
    };

    // Task 5 = (c 1, d 1): cancelled once probe has opened its file.
    let victim = out.join("grad-c1-d1.h5");
    let task5 = format!("{array}_5");
    let log = |name: &str| std::fs::read_to_string(out.join("logs").join(name)).unwrap_or_default();
    let log5 = format!("grad-{array}_5.log");
    until(Duration::from_secs(120), || {
        // The task's first line names its file: it must be (c 1, d 1)'s.
        if let Some(l) = log(&log5).lines().find(|l| l.starts_with("task 5 of 12")) {
            assert!(
                l.ends_with(&format!("-> {}", victim.display())),
                "task 5 should write {}: {l}",
                victim.display()
            );
            return victim.exists();
        }
        false
    })
    .unwrap_or_else(|_| panic!("task 5 never started: {:?}", c.queue()));
    std::thread::sleep(Duration::from_millis(200));
    c.run("scancel", &[task5.as_str()]).ok();
    eprintln!("cancelled task 5 at {:.1} s", t0.elapsed().as_secs_f64());
    c.drain(Duration::from_secs(180));
    eprintln!("first array done at {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        c.state(&task5).contains("JobState=CANCELLED"),
        "task 5 should have been cancelled mid-pass, not {} (make its pass longer)\n{}",
        c.state(&task5),
        log(&log5)
    );
    assert!(
        log(&log5).contains("stopped by SIGTERM"),
        "probe in task 5 should have been stopped by SIGTERM:\n{}",
        log(&log5)
    );
    assert_eq!(
        c.state(&merge),
        "JobState=CANCELLED Reason=DependencyNeverSatisfied",
        "the merge job after a cancelled task"
    );
    assert!(!out.join("grad.h5").exists());
    assert!(!out.join("grad-c1-d1.done").exists());
    assert_ne!(h5_i64_attr(&victim, "complete"), Some(1), "task 5's file");
    for i in (0..12).filter(|&i| i != 5) {
        assert!(
            c.state(&format!("{array}_{i}"))
                .contains("JobState=COMPLETED"),
            "task {i}: {}\n{}",
            c.state(&format!("{array}_{i}")),
            log(&format!("grad-{array}_{i}.log"))
        );
    }

    // The merge script by hand names the unfinished task and merges nothing.
    let mut cmd = c.cmd("bash");
    cmd.arg(root().join("probes/slurm_merge.sh"))
        .args(["--ckpt-shards", "3", "--data-shards", "4"])
        .arg(&out)
        .env("PROBE", env!("CARGO_BIN_EXE_probe"));
    let o = run(cmd);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("task 5 (") && o.stderr.contains("--tasks 5"),
        "{}",
        o.stderr
    );
    assert!(!out.join("grad.h5").exists());

    // Rerun task 5 alone, with a new merge.
    let mut again = vec!["--tasks".to_string(), "5".to_string()];
    again.extend(args.iter().cloned());
    let (array2, merge2) = submit(&c, &d, &again);
    c.drain(Duration::from_secs(120));
    eprintln!(
        "rerun and merge done at {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        c.state(&merge2).starts_with("JobState=COMPLETED"),
        "merge {}:\n{}",
        c.state(&merge2),
        log(&format!("grad-merge-{merge2}.log"))
    );
    assert!(
        c.state(&format!("{array2}_5"))
            .starts_with("JobState=COMPLETED"),
        "rerun of task 5 {}",
        c.state(&format!("{array2}_5"))
    );

    // Each task's file holds its own pair: checkpoint 10*c, data shard d/4.
    for i in 0..12 {
        let (ck, ds) = (i / 4, i % 4);
        let f = out.join(format!("grad-c{ck}-d{ds}.h5"));
        let dump = h5_dump(&f);
        assert_eq!(
            dump["attrs"]["data_shard"],
            format!("{ds}/4"),
            "{}",
            f.display()
        );
        assert_eq!(
            i64s(&dump["datasets"]["checkpoints/step"]),
            vec![10 * ck as i64],
            "{}",
            f.display()
        );
        assert_eq!(dump["attrs"]["complete"], 1, "{}", f.display());
    }

    let status = reference.0.wait().unwrap();
    assert!(
        status.success(),
        "probe grad in one process: {status}\n{}",
        std::fs::read_to_string(d.join("one.err")).unwrap_or_default()
    );
    eprintln!("one process done by {:.1} s", t0.elapsed().as_secs_f64());
    let (got, want) = (h5_dump(&out.join("grad.h5")), h5_dump(&one));
    assert_eq!(i64s(&got["datasets"]["checkpoints/step"]), vec![0, 10, 20]);
    assert!(want["datasets"].as_object().unwrap().len() > 30);
    // The shards' f64 sums are added in another order than one pass adds its batches: equal to
    // f64 rounding, measured against each dataset's largest entry.
    let worst = close_datasets(&got, &want, 1e-12);
    assert_eq!(got["attrs"]["complete"], 1);
    for a in [
        "data",
        "data_samples",
        "batch_size",
        "model_sha256",
        "weight_decay",
    ] {
        assert_eq!(got["attrs"][a], want["attrs"][a], "attribute {a}");
    }
    eprintln!(
        "merged file vs one process: largest relative difference {worst:e}; test took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
