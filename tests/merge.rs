//! One checkpoint's pass split across jobs (`--data-shard i/n`) and `probe merge`: the merged
//! file against one process, dataset by dataset; what merge refuses; checkpoint shards
//! (`--shard i/n`) merged into step order; analyze and plot refusing a lone data shard.
mod common;

use common::*;
use std::path::Path;

/// Three checkpoints of the committed MLP (scaled and shifted weights), in a scrambled order.
fn checkpoints(dir: &Path) -> Vec<String> {
    let mlp = model("mlp.onnx");
    let mut ckpts = Vec::new();
    for (k, s) in [1.0f32, 0.9, 1.3].iter().enumerate() {
        let p = dir.join(format!("step-{:08}.safetensors", 10 * k));
        write_ckpt(&p, &own_state(&mlp, |x| x * s + 0.01 * k as f32), &[]);
        ckpts.push(p.to_str().unwrap().to_string());
    }
    ckpts.reverse();
    ckpts
}

fn args(cmd: &str, data: &Path, out: &Path, ckpts: &[String], extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [cmd, "--model"].iter().map(|s| s.to_string()).collect();
    a.push(model("mlp.onnx").to_str().unwrap().into());
    a.extend(["--data".into(), data.to_str().unwrap().into()]);
    a.extend(["--batch".into(), "16".into()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend([
        "--out".into(),
        out.to_str().unwrap().into(),
        "--ckpt".into(),
    ]);
    a.extend(ckpts.iter().cloned());
    a
}

/// 4 data shards x 3 checkpoints of `probe grad` (--noise's minibatch part, --save-grad,
/// --weight-decay) and of `probe eval`, merged: every dataset but /seconds equals one process
/// to 1e-15 relative; the shard files are marked partial and hold sums, not means; analyze and
/// plot refuse a lone shard and take the merged file; merge refuses a shard given twice, a
/// missing shard, a shard of another model and one of other flags; --hessian and --noise's
/// per-sample part are refused with --data-shard.
#[test]
fn data_shards_merge_into_what_one_process_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 130 samples at --batch 16: 9 batches, the last of 2; 4 shards of 2, 2, 2 and 3 batches.
    let data = fm(130, d);
    let ckpts = checkpoints(d);
    let flags = [
        "--noise",
        "--noise-samples",
        "0",
        "--save-grad",
        "--weight-decay",
        "5e-4",
    ];
    let one = d.join("one.h5");
    probe(&args("grad", &data, &one, &ckpts, &flags)).ok();
    let mut parts = Vec::new();
    for i in 0..4 {
        let out = d.join(format!("part-{i}.h5"));
        let shard = format!("{i}/4");
        let mut extra = flags.to_vec();
        extra.extend(["--data-shard", &shard]);
        probe(&args("grad", &data, &out, &ckpts, &extra)).ok();
        parts.push(out);
    }
    let p0 = h5_dump(&parts[0]);
    assert_eq!(p0["attrs"]["partial"], "true");
    assert_eq!(p0["attrs"]["data_shard"], "0/4");
    assert_eq!(p0["attrs"]["data_shard_range"], "0:32");
    assert_eq!(h5_dump(&parts[3])["attrs"]["data_shard_range"], "96:130");
    let ds = p0["datasets"].as_object().unwrap();
    for absent in [
        "loss",
        "accuracy",
        "grad/l2",
        "noise/batch_var",
        "grad_reg/l2",
    ] {
        assert!(!ds.contains_key(absent), "a shard has no /{absent}");
    }
    assert!(ds.contains_key("partial/loss_sum") && ds.contains_key("partial/noise/sq_sum"));
    assert_eq!(i64s(&p0["datasets"]["samples"]), vec![32, 32, 32]);

    let merged = d.join("merged.h5");
    let mut m: Vec<String> = vec![
        "merge".into(),
        "--out".into(),
        merged.to_str().unwrap().into(),
    ];
    // In any order: merge sorts the shards.
    for i in [2, 0, 3, 1] {
        m.push(parts[i].to_str().unwrap().into());
    }
    probe(&m).ok();
    let (got, want) = (h5_dump(&merged), h5_dump(&one));
    assert_eq!(i64s(&want["datasets"]["checkpoints/step"]), vec![0, 10, 20]);
    assert!(want["datasets"].as_object().unwrap().len() > 30);
    let worst = same_datasets(&got, &want, 1e-15);
    eprintln!("grad: largest relative difference of the merged file from one process: {worst:e}");
    for a in [
        "data",
        "data_samples",
        "batch_size",
        "model_sha256",
        "noise",
        "weight_decay",
    ] {
        assert_eq!(got["attrs"][a], want["attrs"][a], "attribute {a}");
    }
    assert_eq!(got["attrs"]["complete"], 1);
    assert!(got["attrs"].get("partial").is_none());

    // probe analyze and plot: a lone shard is refused, the merged file is not.
    let o = probe(&["analyze", parts[1].to_str().unwrap()]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("data shard 1/4") && o.stderr.contains("probe merge"),
        "{}",
        o.stderr
    );
    let fig = d.join("fig.png");
    let o = probe(&[
        "plot",
        parts[1].to_str().unwrap(),
        "-o",
        fig.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("--allow-partial"), "{}", o.stderr);
    probe(&["analyze", merged.to_str().unwrap()]).ok();

    // Refusals, each naming the files.
    let refused = |files: &[&Path], needles: &[&str]| {
        let out = d.join("refused.h5");
        let mut a: Vec<String> = vec!["merge".into(), "--out".into(), out.to_str().unwrap().into()];
        a.extend(files.iter().map(|f| f.to_str().unwrap().to_string()));
        let o = probe(&a);
        assert_eq!(o.code, 3, "merge {files:?}: {}", o.stderr);
        for n in needles {
            assert!(o.stderr.contains(n), "should mention {n:?}: {}", o.stderr);
        }
        assert!(!out.exists(), "a refused merge writes nothing");
    };
    let copy = d.join("copy-of-2.h5");
    std::fs::copy(&parts[2], &copy).unwrap();
    let name = |p: &Path| p.to_str().unwrap().to_string();
    refused(
        &[&parts[0], &parts[1], &parts[2], &parts[3], &copy],
        &["data shard 2/4 is in both", &name(&parts[2]), &name(&copy)],
    );
    refused(
        &[&parts[0], &parts[1], &parts[3]],
        &["data shard 2/4 missing"],
    );
    refused(&[&parts[0], &parts[0]], &["given twice"]);
    // Shard 3 of another run: other flags (weight decay), another model.
    let other = d.join("other-3.h5");
    let mut extra = flags.to_vec();
    extra[5] = "1e-3";
    extra.extend(["--data-shard", "3/4"]);
    probe(&args("grad", &data, &other, &ckpts, &extra)).ok();
    refused(
        &[&parts[0], &parts[1], &parts[2], &other],
        &["not files of the same run", "weight_decay", &name(&other)],
    );
    let resnet = d.join("resnet-3.h5");
    let a: Vec<String> = [
        "grad",
        "--model",
        model("resnet.onnx").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--batch",
        "16",
        "--data-shard",
        "3/4",
        "--out",
        resnet.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    probe(&a).ok();
    refused(
        &[&parts[0], &parts[1], &parts[2], &resnet],
        &["model_sha256", &name(&resnet)],
    );

    // What cannot be split by data: usage errors (exit 2).
    for (extra, needle) in [
        (vec!["--hessian"], "--hessian"),
        (vec!["--noise"], "--noise-samples 0"),
    ] {
        let mut e = extra.clone();
        e.extend(["--data-shard", "0/4"]);
        let o = probe(&args("grad", &data, &d.join("no.h5"), &ckpts, &e));
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(o.stderr.contains(needle), "{}", o.stderr);
    }

    // probe eval the same way.
    let eone = d.join("eval-one.h5");
    probe(&args("eval", &data, &eone, &ckpts, &[])).ok();
    let mut m: Vec<String> = vec!["merge".into(), "--out".into()];
    let emerged = d.join("eval-merged.h5");
    m.push(emerged.to_str().unwrap().into());
    for i in 0..4 {
        let out = d.join(format!("eval-{i}.h5"));
        let shard = format!("{i}/4");
        probe(&args(
            "eval",
            &data,
            &out,
            &ckpts,
            &["--data-shard", &shard],
        ))
        .ok();
        m.push(out.to_str().unwrap().into());
    }
    probe(&m).ok();
    let worst = same_datasets(&h5_dump(&emerged), &h5_dump(&eone), 1e-15);
    eprintln!("eval: largest relative difference: {worst:e}");
}

/// Files of `probe grad --shard i/n` (whole rows, each a share of the checkpoints) merge into
/// the file of one process, rows in step order, whatever order the files are given in.
#[test]
fn checkpoint_shards_merge_into_step_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = fm(40, d);
    let ckpts = checkpoints(d);
    let one = d.join("one.h5");
    probe(&args(
        "grad",
        &data,
        &one,
        &ckpts,
        &["--weight-decay", "5e-4"],
    ))
    .ok();
    let merged = d.join("merged.h5");
    let mut m: Vec<String> = vec![
        "merge".into(),
        "--out".into(),
        merged.to_str().unwrap().into(),
    ];
    for i in [1, 0] {
        let out = d.join(format!("shard-{i}.h5"));
        let shard = format!("{i}/2");
        let extra = ["--weight-decay", "5e-4", "--shard", &shard];
        probe(&args("grad", &data, &out, &ckpts, &extra)).ok();
        m.push(out.to_str().unwrap().into());
    }
    let o = probe(&m).ok();
    assert!(o.stdout.contains("shard-1.h5"), "{}", o.stdout);
    let (got, want) = (h5_dump(&merged), h5_dump(&one));
    assert_eq!(i64s(&got["datasets"]["checkpoints/step"]), vec![0, 10, 20]);
    // Whole rows are copied: identical, not merely close.
    same_datasets(&got, &want, 0.0);
    assert_eq!(
        got["attrs"].get("ckpt_shard"),
        None,
        "the merged file is no shard"
    );

    // A missing checkpoint shard is named, not silently left out of the series.
    let lone = probe(&[
        "merge",
        "--out",
        d.join("lone.h5").to_str().unwrap(),
        d.join("shard-1.h5").to_str().unwrap(),
    ]);
    assert_eq!(lone.code, 3, "{}", lone.stderr);
    assert!(
        lone.stderr
            .contains("checkpoint shard 0/2 (--shard) missing"),
        "{}",
        lone.stderr
    );

    // Each task reads only its own checkpoints, the one before each and the first: with a
    // damaged step-30 in the folder, shard 0/2 (steps 0 and 20; reads 0, 10, 20) runs, and
    // shard 1/2 (10 and 30) names it.
    let bad = d.join("step-00000030.safetensors");
    std::fs::write(&bad, b"not a checkpoint").unwrap();
    let mut all = ckpts.clone();
    all.push(bad.to_str().unwrap().into());
    let a = probe(&args(
        "grad",
        &data,
        &d.join("s0.h5"),
        &all,
        &["--shard", "0/2"],
    ))
    .ok();
    assert!(!a.stderr.contains("step-00000030"), "{}", a.stderr);
    assert_eq!(
        i64s(&h5_dump(&d.join("s0.h5"))["datasets"]["checkpoints/step"]),
        vec![0, 20]
    );
    let b = probe(&args(
        "grad",
        &data,
        &d.join("s1.h5"),
        &all,
        &["--shard", "1/2"],
    ));
    assert_eq!(b.code, 3, "{}", b.stderr);
    assert!(
        b.stderr.contains("step-00000030.safetensors"),
        "{}",
        b.stderr
    );
}
