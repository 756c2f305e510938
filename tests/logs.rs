//! Logs a batch system reads: `--log-json` (JSON lines: start, progress, one per row, finish,
//! exit) and the timestamped plain progress lines on a stderr that is not a terminal (as under
//! `nohup` or `sbatch`), checked against the results file they describe.
mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn events<'a>(log: &'a [Value], kind: &str) -> Vec<&'a Value> {
    log.iter().filter(|e| e["event"] == kind).collect()
}

/// `probe grad` over 4 checkpoints (two per pass) with `--noise`, stderr and stdout to files:
/// every line is JSON with a time and an event; the row events are the file's rows (loss and
/// |g| to the bit, in order); the finish event's totals are the file's; the last line is the
/// exit; progress events carry the whole run's fraction, rising, and an ETA; the plain stderr
/// lines carry a timestamp, the checkpoints' place in the run and the ETA.
#[test]
fn json_log_and_plain_lines_match_the_results_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mlp = model("mlp.onnx");
    let mut ckpts = Vec::new();
    for k in 0..4 {
        let p = d.join(format!("step-{}.safetensors", 10 * k));
        write_ckpt(&p, &own_state(&mlp, |x| x * (1.0 + 0.05 * k as f32)), &[]);
        ckpts.push(p.to_str().unwrap().to_string());
    }
    let (out, log) = (d.join("g.h5"), d.join("g.jsonl"));
    let mut a: Vec<String> = [
        "grad",
        "--model",
        mlp.to_str().unwrap(),
        "--data",
        fmnist_2000().to_str().unwrap(),
        "--batch",
        "20",
        "--threads",
        "1",
        "--noise",
        "--noise-samples",
        "200",
        "--ckpts-per-pass",
        "2",
        "--progress-every",
        "0",
        "--log-json",
        log.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--ckpt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(ckpts);
    let o = probe(&a).ok();

    let log = lines(&log);
    for e in &log {
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    assert_eq!(log[0]["event"], "start");
    assert_eq!(log[0]["checkpoints"], 4);
    let last = log.last().unwrap();
    assert_eq!(last["event"], "exit");
    assert_eq!(last["code"], 0);

    let file = h5_dump(&out);
    let (loss, g) = (
        f64s(&file["datasets"]["loss"]),
        f64s(&file["datasets"]["grad/l2"]),
    );
    let rows = events(&log, "row");
    assert_eq!(rows.len(), loss.len());
    for (k, r) in rows.iter().enumerate() {
        assert_eq!(r["loss"].as_f64().unwrap(), loss[k], "row {k}");
        assert_eq!(r["grad_l2"].as_f64().unwrap(), g[k], "row {k}");
        assert_eq!(r["rows"], k + 1);
    }
    let finish = events(&log, "finish");
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["rows"], loss.len());
    assert_eq!(finish[0]["complete"], true);

    let progress = events(&log, "progress");
    assert!(progress.len() >= 4, "{} progress events", progress.len());
    let fracs: Vec<f64> = progress
        .iter()
        .map(|e| e["run_fraction"].as_f64().unwrap())
        .collect();
    assert!(fracs.windows(2).all(|w| w[0] <= w[1]), "{fracs:?}");
    assert!(progress.iter().any(|e| e["phase"] == "noise"));
    assert!(progress.iter().any(|e| e["eta_s"].is_f64()));
    assert!(progress.iter().all(|e| e["of"] == 4));

    let plain: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert!(!plain.is_empty(), "{}", o.stderr);
    assert!(
        plain
            .iter()
            .any(|l| l.contains("checkpoints 1-2 of 4") && l.contains("eta")),
        "{}",
        o.stderr
    );
}
