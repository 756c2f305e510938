//! `probe grad` and `probe autodiff` as a user runs them: the gradient graph file, bad input,
//! non-finite values, shards, reruns, killed runs, and the weight-decay column.
mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn autodiff_writes_a_checked_deterministic_standard_onnx_graph() {
    let dir = tempfile::tempdir().unwrap();
    for m in ["mlp", "resnet", "gpt"] {
        let a = dir.path().join(format!("{m}.a.onnx"));
        let b = dir.path().join(format!("{m}.b.onnx"));
        probe(&[
            "autodiff",
            model(&format!("{m}.onnx")).to_str().unwrap(),
            "-o",
            a.to_str().unwrap(),
        ])
        .ok();
        probe(&[
            "autodiff",
            model(&format!("{m}.onnx")).to_str().unwrap(),
            "-o",
            b.to_str().unwrap(),
        ])
        .ok();
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{m}: two builds differ"
        );
        let out = py(&[
            "-c",
            "import sys, onnx\nm = onnx.load(sys.argv[1])\nonnx.checker.check_model(m, full_check=True)\n\
             doms = {n.domain for n in m.graph.node}\nassert doms <= {'', 'ai.onnx'}, doms\n\
             outs = [o.name for o in m.graph.output]\nassert outs[0] == 'probe/loss_sum', outs\n\
             print(sum(o.startswith('grad/') for o in outs))",
            a.to_str().unwrap(),
        ]);
        let n: usize = out.trim().parse().unwrap();
        let expected = match m {
            "mlp" => 6,
            "resnet" => 29,
            _ => 30,
        };
        assert_eq!(n, expected, "{m}: gradient outputs");
    }
}

fn tiny_data(dir: &Path, n: usize, poison: Option<usize>, label: i64) -> std::path::PathBuf {
    let path = dir.join(format!("tiny-{n}-{poison:?}-{label}.h5"));
    let mut x = noise(n * 4, 7);
    if let Some(i) = poison {
        x[i * 4 + 1] = f32::NAN;
    }
    let x = ndarray::ArrayD::from_shape_vec(vec![n, 4], x).unwrap();
    let y = ndarray::ArrayD::from_shape_vec(
        vec![n],
        (0..n as i64)
            .map(|i| if i == 3 { label } else { i % 3 })
            .collect(),
    )
    .unwrap();
    write_data(&path, &x, &y);
    path
}

#[test]
fn ops_without_rules_are_listed_at_once_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "tan", &["Tan", "Asin", "Tan"], true);
    let data = tiny_data(dir.path(), 10, None, 0);
    let out = dir.path().join("r.h5");
    let o = probe(&[
        "grad",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    one_line_error(
        &o,
        3,
        &["tan.onnx", "Tan", "Asin", "tan_0", "asin_1", "tan_2"],
    );
    assert!(!out.exists(), "no results file after a refused model");
    let o = probe(&[
        "autodiff",
        m.to_str().unwrap(),
        "-o",
        dir.path().join("g.onnx").to_str().unwrap(),
    ]);
    one_line_error(&o, 3, &["Tan", "Asin"]);
}

#[test]
fn a_model_without_trainable_parameters_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "noparams", &["Relu"], false);
    let data = tiny_data(dir.path(), 10, None, 0);
    let out = dir.path().join("r.h5");
    let o = probe(&[
        "grad",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    one_line_error(&o, 3, &["noparams.onnx", "trainable"]);
    assert!(!out.exists());
}

#[test]
fn targets_out_of_range_and_nonfinite_batches() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "tanh", &["Tanh"], true);
    let bad = tiny_data(dir.path(), 10, None, 3);
    let out = dir.path().join("r.h5");
    let o = probe(&[
        "grad",
        "--model",
        m.to_str().unwrap(),
        "--data",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    one_line_error(&o, 3, &["sample 3", "target 3", "3 classes"]);
    assert!(!out.exists());

    // NaN in sample 5: batch 1 of batches of 4.
    let nan = tiny_data(dir.path(), 10, Some(5), 0);
    let args = |policy: &str, out: &Path| -> Vec<String> {
        [
            "grad",
            "--model",
            m.to_str().unwrap(),
            "--data",
            nan.to_str().unwrap(),
            "--batch",
            "4",
            "--on-nonfinite",
            policy,
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let stop = dir.path().join("stop.h5");
    let o = probe(&args("stop", &stop));
    one_line_error(&o, 4, &["batch 1", "samples 4..8", "non-finite"]);
    assert!(!stop.exists(), "a stopped first checkpoint leaves no file");
    let cont = dir.path().join("cont.h5");
    let o = probe(&args("continue", &cont));
    assert_eq!(o.code, 4, "{}", o.stderr);
    let d = h5_dump(&cont);
    assert_eq!(
        d["attrs"]["complete"], 0,
        "a run with NaN rows is not complete"
    );
    assert_eq!(i64s(&d["datasets"]["nonfinite_batches"]), vec![1]);
    assert!(d["datasets"]["grad/l2"][0].is_null(), "NaN recorded");
}

#[test]
fn shards_reruns_weight_decay_and_distances() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = model("mlp.onnx");
    let data = fm(100, dir.path());
    let mut ckpts = Vec::new();
    for (k, s) in [1.0f32, 1.1, 1.2].iter().enumerate() {
        let p = dir.path().join(format!("step-{:08}.safetensors", 10 * k));
        write_ckpt(&p, &own_state(&mlp, |x| x * s), &[]);
        ckpts.push(p.to_str().unwrap().to_string());
    }
    let run = |shard: &str, out: &Path| {
        let mut a: Vec<String> = [
            "grad",
            "--model",
            mlp.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--weight-decay",
            "0.01",
            "--save-grad",
            "--shard",
            shard,
            "--out",
            out.to_str().unwrap(),
            "--ckpt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(ckpts.iter().cloned());
        probe(&a)
    };
    let a = dir.path().join("a.h5");
    let b = dir.path().join("b.h5");
    run("0/2", &a).ok();
    run("1/2", &b).ok();
    let da = h5_dump(&a);
    let db = h5_dump(&b);
    assert_eq!(i64s(&da["datasets"]["checkpoints/step"]), vec![0, 20]);
    assert_eq!(i64s(&db["datasets"]["checkpoints/step"]), vec![10]);
    assert_eq!(da["attrs"]["complete"], 1);
    // Distances follow the full checkpoint list, not the shard: w_k = s_k w_0.
    let w0 = f64s(&da["datasets"]["weights/l2"])[0];
    assert_rel(
        f64s(&da["datasets"]["weights/dist_prev"])[1],
        0.1 * w0,
        1e-5,
        "dist_prev of step 20",
    );
    assert_rel(
        f64s(&da["datasets"]["weights/dist_first"])[1],
        0.2 * w0,
        1e-5,
        "dist_first of step 20",
    );
    assert_rel(
        f64s(&db["datasets"]["weights/dist_prev"])[0],
        0.1 * w0,
        1e-5,
        "dist_prev of step 10",
    );
    // |g + L w| from the stored full gradient and the checkpoint's weights, recomputed by numpy.
    let expect: f64 = py(&[
        "-c",
        "import sys, h5py, numpy as np\nfrom safetensors.numpy import load_file\n\
         f = h5py.File(sys.argv[1], 'r'); w = load_file(sys.argv[2])\n\
         names = [n.decode() for n in f['params/name'][:]]\n\
         print(np.sqrt(sum(((f['grad/full/' + n][0] + 0.01 * w[n].astype(np.float64)) ** 2).sum() for n in names)))",
        a.to_str().unwrap(),
        &ckpts[0],
    ])
    .trim()
    .parse()
    .unwrap();
    assert_rel(
        f64s(&da["datasets"]["grad_reg/l2"])[0],
        expect,
        1e-9,
        "|g + wd w| at step 0",
    );
    // A rerun skips what is complete and adds nothing.
    let o = run("0/2", &a).ok();
    assert_eq!(o.stderr.matches("skip:").count(), 2, "{}", o.stderr);
    assert_eq!(h5_i64_attr(&a, "rows"), Some(2));
}

#[test]
fn a_killed_run_leaves_complete_rows_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let resnet = model("resnet.onnx");
    let data = fm(1000, dir.path());
    let mut ckpts = Vec::new();
    for k in 0..6 {
        let p = dir.path().join(format!("step-{k}.safetensors"));
        write_ckpt(
            &p,
            &own_state(&resnet, |x| x * (1.0 + 0.01 * k as f32)),
            &[],
        );
        ckpts.push(p);
    }
    let out = dir.path().join("r.h5");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_probe"));
    cmd.args([
        "--quiet",
        "grad",
        "--model",
        resnet.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--ckpt",
    ])
    .args(&ckpts);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = {
        let _g = hdf5_guard();
        cmd.spawn().unwrap()
    };
    // Kill it (SIGKILL) as soon as the first row is printed, i.e. committed to the file (the
    // file itself is locked by the writer while it runs).
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let header = lines.next().unwrap().unwrap();
    assert!(header.contains("loss"), "{header}");
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("step-0"), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
    let rows = h5_i64_attr(&out, "rows").unwrap();
    assert!((1..6).contains(&rows), "killed after {rows} rows");
    assert_eq!(
        h5_i64_attr(&out, "complete"),
        Some(0),
        "a killed run is not complete"
    );
    // Rerun: finishes the rest, skipping what was done.
    let mut a: Vec<String> = [
        "grad",
        "--model",
        resnet.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--ckpt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(ckpts.iter().map(|p| p.to_str().unwrap().to_string()));
    let o = probe(&a).ok();
    assert_eq!(
        o.stderr.matches("skip:").count() as i64,
        rows,
        "{}",
        o.stderr
    );
    let d = h5_dump(&out);
    assert_eq!(d["attrs"]["complete"], 1);
    assert_eq!(d["attrs"]["rows"], 6);
    let paths = d["datasets"]["checkpoints/path"].as_array().unwrap().len();
    assert_eq!(paths, 6, "every dataset has exactly the complete rows");
    assert_eq!(f64s(&d["datasets"]["grad/l2"]).len(), 6);
}

// Checkpoint sets as users give them: shell globs over `probe train`'s folder, any order,
// optimizer-state files among the weights, the same file twice, many unusable files.

/// Runs `sh -c SCRIPT` with `$PROBE` the probe binary and `$DIR` the folder, so a glob is
/// expanded by a real shell.
fn sh(script: &str, dir: &Path) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .env("PROBE", env!("CARGO_BIN_EXE_probe"))
        .env("DIR", dir)
        .current_dir(dir);
    run(cmd)
}

/// The `step` column of a results table printed on stdout (after the header line).
fn printed_steps(stdout: &str) -> Vec<i64> {
    stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn the_readme_globs_work_on_probe_trains_own_folder() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "lin", &[], true);
    let d = tiny_data(dir.path(), 12, None, 0);
    probe_in(
        dir.path(),
        &[
            "train",
            "--model",
            "lin.onnx",
            "--data",
            s(&d),
            "--steps",
            "4",
            "--batch",
            "3",
            "--opt",
            "sgd",
            "--lr",
            "0.1",
            "--momentum",
            "0.9",
            "--ckpt-every",
            "1",
            "--out",
            "runs/r",
            "-q",
        ],
    )
    .ok();
    let _ = m;
    let data = s(&d);
    // The README's and --help's commands, as a shell expands them.
    for (what, script) in [
        (
            "grad step-*",
            format!("\"$PROBE\" grad --model lin.onnx --ckpt runs/r/step-*.safetensors --data {data} --out g1.h5"),
        ),
        (
            "grad *",
            format!("\"$PROBE\" grad --model lin.onnx --ckpt runs/r/*.safetensors --data {data} --out g2.h5"),
        ),
        (
            "eval step-*",
            format!("\"$PROBE\" eval --model lin.onnx --ckpt runs/r/step-*.safetensors --data {data} --out e1.h5"),
        ),
    ] {
        let o = sh(&script, dir.path());
        assert_eq!(o.code, 0, "{what}: {}", o.stderr);
        assert_eq!(printed_steps(&o.stdout), [0, 1, 2, 3, 4], "{what}: {}", o.stdout);
        assert!(!o.stderr.contains("note"), "{what}: {}", o.stderr);
    }
    // Optimizer state given on purpose (or by a wider glob) is skipped with one short note.
    let o = sh(
        &format!(
            "\"$PROBE\" eval --model lin.onnx --ckpt runs/r/optim/*.safetensors runs/r/*.safetensors --data {data} --out e2.h5"
        ),
        dir.path(),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(printed_steps(&o.stdout), [0, 1, 2, 3, 4], "{}", o.stdout);
    let notes: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("note")).collect();
    assert_eq!(notes.len(), 1, "{}", o.stderr);
    assert!(
        notes[0].contains("5 optimizer-state") && notes[0].len() < 300,
        "{}",
        notes[0]
    );
    // Only optimizer state: nothing to measure, an input error.
    let o = sh(
        &format!(
            "\"$PROBE\" eval --model lin.onnx --ckpt runs/r/optim/*.safetensors --data {data} --out e3.h5"
        ),
        dir.path(),
    );
    one_line_error(&o, 3, &["optimizer", "step-00000000.safetensors"]);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Checkpoints named `step-<n>` without padding (a shell glob gives 0, 120, 160, 40, 80) and one
/// whose step is only in its metadata: every neighbour-based column must be the same as when
/// they are given in step order.
#[test]
fn checkpoints_given_out_of_order_are_measured_in_step_order() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "lin", &[], true);
    let d = tiny_data(dir.path(), 12, None, 0);
    let mut by_step = Vec::new();
    for step in [0, 40, 80, 120, 160, 200] {
        let k = step as f32 / 40.0;
        let scale = 1.0 + 0.1 * k * k;
        let name = if step == 200 {
            "final.safetensors".to_string()
        } else {
            format!("step-{step}.safetensors")
        };
        let p = dir.path().join(&name);
        let meta: &[(&str, &str)] = if step == 200 { &[("step", "200")] } else { &[] };
        write_ckpt(&p, &own_state(&m, |x| x * scale + 0.01 * k), meta);
        by_step.push(name);
    }
    let mut shell_order = by_step.clone();
    shell_order.sort();
    assert_eq!(shell_order[1], "step-0.safetensors");
    let run = |ckpts: &[String], out: &str| {
        let mut a: Vec<String> = [
            "grad",
            "--model",
            s(&m),
            "--data",
            s(&d),
            "-q",
            "--out",
            out,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.push("--ckpt".into());
        a.extend(ckpts.iter().cloned());
        let o = probe_in(dir.path(), &a).ok();
        assert_eq!(printed_steps(&o.stdout), [0, 40, 80, 120, 160, 200]);
        h5_dump(&dir.path().join(out))
    };
    let want = run(&by_step, "in_order.h5");
    let got = run(&shell_order, "shell_order.h5");
    assert_eq!(
        i64s(&got["datasets"]["checkpoints/step"]),
        [0, 40, 80, 120, 160, 200]
    );
    let moved = f64s(&want["datasets"]["weights/dist_prev"]);
    assert!(moved[2] > moved[1], "{moved:?}");
    for key in [
        "weights/dist_prev",
        "weights/dist_first",
        "weights/w1_prev",
        "weights/w1_first",
        "weights/per_param_dist_prev",
        "weights/per_param_mean_abs_move",
        "loss",
        "grad/l2",
    ] {
        assert_eq!(got["datasets"][key], want["datasets"][key], "{key}");
    }
}

#[test]
fn the_same_checkpoint_twice_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "lin", &[], true);
    let d = tiny_data(dir.path(), 12, None, 0);
    let a = dir.path().join("step-10.safetensors");
    write_ckpt(&a, &own_state(&m, |x| x * 1.5), &[]);
    let b = dir.path().join("copy-of-10.safetensors");
    std::fs::copy(&a, &b).unwrap();
    let other = dir.path().join("step-20.safetensors");
    write_ckpt(&other, &own_state(&m, |x| x * 2.0), &[]);
    for (cmd, ckpts) in [
        ("grad", vec![&a, &other, &b]),
        ("eval", vec![&a, &other, &a]),
    ] {
        let out = dir.path().join(format!("{cmd}.h5"));
        let mut args = vec![
            cmd,
            "--model",
            s(&m),
            "--data",
            s(&d),
            "--out",
            s(&out),
            "--ckpt",
        ];
        args.extend(ckpts.iter().map(|p| s(p)));
        let o = probe(&args);
        one_line_error(&o, 3, &[s(ckpts[0]), s(ckpts[2]), "same", "sha256"]);
        assert!(!out.exists(), "{cmd}: no results after a refused set");
    }
}

#[test]
fn many_unusable_checkpoints_give_one_short_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(dir.path(), "lin", &[], true);
    let d = tiny_data(dir.path(), 12, None, 0);
    let mut args: Vec<String> = ["grad", "--model", s(&m), "--data", s(&d), "--out"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    args.push(s(&dir.path().join("g.h5")).to_string());
    args.push("--ckpt".into());
    let good = dir.path().join("step-0.safetensors");
    write_ckpt(&good, &own_state(&m, |x| x), &[]);
    args.push(s(&good).to_string());
    let mut bad = Vec::new();
    for k in 1..=4 {
        let p = dir.path().join(format!("step-{k}.safetensors"));
        let t = CkptTensor::f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]);
        write_ckpt(&p, &[(format!("other{k}.weight"), t)], &[]);
        args.push(s(&p).to_string());
        bad.push(p);
    }
    let o = probe(&args);
    one_line_error(&o, 3, &["4 of the 5 checkpoints", s(&bad[0]), "fc.weight"]);
    for p in &bad[1..] {
        assert!(
            !o.stderr.contains(p.file_name().unwrap().to_str().unwrap()),
            "only the first unusable file is named: {}",
            o.stderr
        );
    }
}

/// `--ckpts-per-pass`: checkpoints measured together in one pass over the data give exactly the
/// rows of one pass each (every dataset but the timing, --noise's moments and --save-grad's full
/// gradients included), in groups of all of them and in groups that do not divide them.
#[test]
fn several_checkpoints_in_one_pass_equal_one_pass_each() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = model("mlp.onnx");
    let data = fm(130, dir.path());
    let mut ckpts = Vec::new();
    for (k, s) in [1.0f32, 0.9, 1.3, 1.1].iter().enumerate() {
        let p = dir.path().join(format!("step-{:08}.safetensors", 5 * k));
        write_ckpt(&p, &own_state(&mlp, |x| x * s + 0.01 * k as f32), &[]);
        ckpts.push(p.to_str().unwrap().to_string());
    }
    let run = |group: &str, out: &Path| {
        let mut a: Vec<String> = [
            "grad",
            "--model",
            mlp.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--batch",
            "32",
            "--noise",
            "--save-grad",
            "--ckpts-per-pass",
            group,
            "--out",
            out.to_str().unwrap(),
            "--ckpt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(ckpts.iter().cloned());
        probe(&a).ok()
    };
    let dump = |group: &str| {
        let out = dir.path().join(format!("g{group}.h5"));
        let o = run(group, &out);
        let mut d = h5_dump(&out);
        let ds = d["datasets"].as_object_mut().unwrap();
        ds.retain(|k, _| k != "seconds");
        (d, o.stdout)
    };
    let (one, _) = dump("1");
    assert_eq!(
        i64s(&one["datasets"]["checkpoints/step"]),
        vec![0, 5, 10, 15]
    );
    assert!(one["datasets"].as_object().unwrap().len() > 10);
    for group in ["4", "3"] {
        let (d, _) = dump(group);
        assert_eq!(d["datasets"], one["datasets"], "--ckpts-per-pass {group}");
    }
    // probe eval the same way.
    let eval = |group: &str| {
        let out = dir.path().join(format!("e{group}.h5"));
        let mut a: Vec<String> = ["eval", "--model", mlp.to_str().unwrap(), "--data"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let tail = ["--batch", "32", "--ckpts-per-pass", group, "--out"];
        a.push(data.to_str().unwrap().into());
        a.extend(tail.iter().map(|s| s.to_string()));
        a.push(out.to_str().unwrap().into());
        a.push("--ckpt".into());
        a.extend(ckpts.iter().cloned());
        probe(&a).ok();
        let mut d = h5_dump(&out);
        d["datasets"]
            .as_object_mut()
            .unwrap()
            .retain(|k, _| k != "seconds");
        d["datasets"].clone()
    };
    let e1 = eval("1");
    assert_eq!(i64s(&e1["checkpoints/step"]), vec![0, 5, 10, 15]);
    assert_eq!(eval("3"), e1, "probe eval --ckpts-per-pass 3");
}
