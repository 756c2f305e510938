//! Faithful to the run: `probe grad` and `probe analyze` read the optimizer from the checkpoints'
//! metadata (`probe train` writes it): SGD's coupled weight decay gives |g + wd w| without the
//! flag, and the edge of stability uses the run's momentum; AdamW's decoupled decay does not give
//! |g + wd w|, and its edge of stability is not compared with 2/lr; a disagreeing flag warns.
mod common;

use common::*;
use std::path::Path;

fn train(dir: &Path, name: &str, opt: &[&str]) -> String {
    let out = dir.join(name);
    let mut a = vec![
        "train",
        "--model",
        model("mlp.onnx").to_str().unwrap().to_string().leak(),
        "--data",
        fmnist_2000().to_str().unwrap().to_string().leak(),
        "--epochs",
        "1",
        "--batch",
        "250",
        "--ckpt-every",
        "4",
        "--out",
        out.to_str().unwrap().to_string().leak(),
    ];
    a.extend(opt);
    probe(&a).ok();
    out.to_str().unwrap().to_string()
}

fn grad(run: &str, extra: &[&str]) -> (Output, std::path::PathBuf) {
    let out = Path::new(run).join("g.h5");
    let mut a = vec![
        "grad",
        "--model",
        model("mlp.onnx").to_str().unwrap().to_string().leak(),
        "--data",
        fmnist_2000().to_str().unwrap().to_string().leak(),
        "--limit",
        "500",
        "--hessian",
        "--hessian-iters",
        "4",
        "--hessian-samples",
        "100",
        "--force",
        "--out",
        out.to_str().unwrap().to_string().leak(),
        "--ckpt",
        run,
    ];
    a.extend(extra);
    (probe(&a).ok(), out)
}

#[test]
fn sgd_and_adamw_metadata_decide_decay_and_edge_of_stability() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let sgd = train(
        d,
        "sgd",
        &[
            "--opt",
            "sgd",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--weight-decay",
            "5e-4",
        ],
    );
    let (o, out) = grad(&sgd, &[]);
    assert!(
        o.stderr.contains("note: weight decay 0.0005 from"),
        "{}",
        o.stderr
    );
    let f = h5_dump(&out);
    assert_eq!(f["attrs"]["weight_decay"], "0.0005");
    assert_eq!(f["attrs"]["optimizer"], "sgd momentum=0.9");
    assert!(f["datasets"].get("grad_reg/l2").is_some());
    let a = probe(&["analyze", out.to_str().unwrap()]).ok();
    let text = format!("{}{}", a.stdout, a.stderr);
    assert!(
        text.contains("2(1+b)/lr") && text.contains("momentum b = 0.9"),
        "{text}"
    );
    // A flag that disagrees wins, with a warning; 0 turns the decay off.
    let (o, _) = grad(&sgd, &["--weight-decay", "1e-3"]);
    assert!(
        o.stderr.contains("warning: --weight-decay 0.001, but"),
        "{}",
        o.stderr
    );
    let (_, out) = grad(&sgd, &["--weight-decay", "0"]);
    assert!(h5_dump(&out)["datasets"].get("grad_reg/l2").is_none());

    let adamw = train(
        d,
        "adamw",
        &["--opt", "adamw", "--lr", "0.001", "--weight-decay", "0.01"],
    );
    let (o, out) = grad(&adamw, &[]);
    assert!(
        o.stderr.contains("AdamW decays the weights outside"),
        "{}",
        o.stderr
    );
    let f = h5_dump(&out);
    assert_eq!(f["attrs"]["optimizer"], "adamw");
    assert_eq!(f["attrs"]["weight_decay"], "");
    assert!(f["datasets"].get("grad_reg/l2").is_none());
    let a = probe(&["analyze", out.to_str().unwrap()]).ok();
    let text = format!("{}{}", a.stdout, a.stderr);
    assert!(
        text.contains("Edge of stability: not compared") && text.contains("preconditioned"),
        "{text}"
    );
}
