//! Hugging Face models with the checkpoints their users save: tiny random-init GPT-2
//! (tied `transformer.wte.weight`/`lm_head.weight`), Llama (non-persistent rotary `inv_freq`,
//! grouped-query attention) and BERT masked-LM (tied decoder weight and bias, non-persistent int64
//! `position_ids`/`token_type_ids`), exported as `shared/export.md` says, each saved three ways:
//! `save_file({k: v.clone() ...})` (tied names twice), `safetensors.torch.save_model` and
//! `save_pretrained` (one name of a pair). probe's full gradient from every one must match
//! PyTorch float64 autograd on the same weights and tokens (`models/hf_reference.py`) within 2x of
//! PyTorch float32's own error, or 1e-5; and the checkpoints users get wrong are refused with the
//! fix: a DDP `module.` prefix (then `--strip-prefix` takes it), tied names whose values differ, a
//! `torch.save` file, a missing parameter, a model exported with a fixed batch. Beside them, two
//! recurrent models (nn.LSTM, nn.GRU) get the same gradient check on every engine, and `probe
//! train` on them takes torch.optim's steps.
//!
//! One Python run exports and saves everything (~30 s on 2 cores; the exports dominate).
mod common;
use common::{assert_pytorchs, probe, root, run};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const MODELS: [&str; 3] = ["gpt2", "llama", "bert"];

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run ./setup.sh", p.display());
    p
}

fn helper(args: &[&str]) -> String {
    let mut cmd = Command::new(python());
    cmd.arg(root().join("models/hf_reference.py")).args(args);
    run(cmd).ok().stdout
}

/// The exported models, checkpoints and references, made once for all tests of this file.
fn prepared() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        helper(&["prepare", "--out", d.path().to_str().unwrap()]);
        eprintln!("exported and saved in {:.1} s", t.elapsed().as_secs_f64());
        d
    })
    .path()
}

/// `probe grad --save-grad` of the prepared `model` (a folder name) from `ckpt` (a path under the
/// prepared folder) on the tokens, batch 24 (64 samples: batches of 24, 24, 16), into `out`.
fn grad(model: &str, ckpt: &str, out: &Path, extra: &[&str]) -> common::Output {
    grad_of(&format!("{model}/m.onnx"), ckpt, out, extra)
}

/// [`grad`] of the ONNX file `onnx` (a path under the prepared folder).
fn grad_of(onnx: &str, ckpt: &str, out: &Path, extra: &[&str]) -> common::Output {
    let d = prepared();
    let mut args: Vec<String> = vec!["grad".into(), "--model".into()];
    for p in [d.join(onnx), d.join(ckpt), d.join("tokens.h5")] {
        args.push(p.to_str().unwrap().into());
    }
    args.insert(3, "--ckpt".into());
    args.insert(5, "--data".into());
    args.extend(["--batch", "24", "--save-grad", "--out"].map(String::from));
    args.push(out.to_str().unwrap().into());
    args.extend(extra.iter().map(|s| s.to_string()));
    probe(&args)
}

#[test]
fn checkpoints_saved_every_way_give_pytorchs_gradient() {
    let d = prepared();
    let out = tempfile::tempdir().unwrap();
    let mut pairs = Vec::new();
    for m in MODELS {
        for (tag, ckpt) in [
            ("clone", "clone.safetensors"),
            ("save_model", "save_model.safetensors"),
            ("pretrained", "pretrained/model.safetensors"),
        ] {
            let h5 = out.path().join(format!("{m}-{tag}.h5"));
            let o = grad(m, &format!("{m}/{ckpt}"), &h5, &[]).ok();
            // What was taken from where is said.
            let want: &[&str] = match (m, tag) {
                ("gpt2", "clone") => &["'transformer.wte.weight' = 'lm_head.weight'"],
                ("gpt2", "pretrained") => {
                    &["'lm_head.weight' from its tied name 'transformer.wte.weight'"]
                }
                ("llama", _) => &["non-persistent buffer(s) from the ONNX file (state_dict() leaves them out): model.rotary_emb.inv_freq"],
                ("bert", "clone") => &[
                    "'bert.embeddings.word_embeddings.weight' = 'cls.predictions.decoder.weight'",
                    "'cls.predictions.bias' = 'cls.predictions.decoder.bias'",
                    "bert.embeddings.position_ids, bert.embeddings.token_type_ids",
                ],
                ("bert", _) => &[
                    "'cls.predictions.decoder.weight' from its tied name 'bert.embeddings.word_embeddings.weight'",
                    "'cls.predictions.decoder.bias' from its tied name 'cls.predictions.bias'",
                ],
                _ => &[],
            };
            for w in want {
                assert!(
                    o.stderr.contains(w),
                    "{m}/{tag}: '{w}' not in\n{}",
                    o.stderr
                );
            }
            let r = d.join(m).join("ref.safetensors");
            pairs.push(r.to_str().unwrap().to_string());
            pairs.push(h5.to_str().unwrap().to_string());
        }
    }
    let mut args = vec!["compare".to_string()];
    args.extend(pairs);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lines = helper(&args);
    let mut k = 0;
    for m in MODELS {
        for tag in ["clone", "save_model", "pretrained"] {
            assert_pytorchs(&format!("{m} ({tag})"), lines.lines().nth(k).unwrap());
            k += 1;
        }
    }
}

/// The opset-23 exports (attention as one `Attention` node, GPT-2's LayerNormalization, Llama's
/// grouped-query heads, BERT's boolean padding mask) from the same checkpoint: PyTorch's gradient
/// within 2x of its own float32 error, as the opset-18 exports above.
#[test]
fn opset_23_attention_nodes_give_pytorchs_gradient() {
    let d = prepared();
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["compare".to_string()];
    for m in MODELS {
        let h5 = out.path().join(format!("{m}-23.h5"));
        grad_of(
            &format!("{m}/m23.onnx"),
            &format!("{m}/clone.safetensors"),
            &h5,
            &[],
        )
        .ok();
        args.push(d.join(m).join("ref.safetensors").to_str().unwrap().into());
        args.push(h5.to_str().unwrap().into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for (m, line) in MODELS.iter().zip(helper(&args).lines()) {
        assert_pytorchs(&format!("{m} (opset 23)"), line);
    }
}

/// nn.LSTM (2 layers, bidirectional) and nn.GRU (2 layers) over token embeddings, exported as
/// ONNX LSTM and GRU nodes: PyTorch's gradient with the default kernels, with standard ops, and
/// by libtorch autograd through the ops' torch forwards (`--engine torch`).
#[test]
fn recurrent_layers_give_pytorchs_gradient() {
    let d = prepared();
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["compare".to_string()];
    let runs: [(&str, &[&str]); 6] = [
        ("lstm", &[]),
        ("lstm", &["--standard-ops"]),
        ("lstm", &["--engine", "torch"]),
        ("gru", &[]),
        ("gru", &["--standard-ops"]),
        ("gru", &["--engine", "torch"]),
    ];
    for (k, (m, extra)) in runs.iter().enumerate() {
        let h5 = out.path().join(format!("{m}-{k}.h5"));
        grad(m, &format!("{m}/clone.safetensors"), &h5, extra).ok();
        args.push(d.join(m).join("ref.safetensors").to_str().unwrap().into());
        args.push(h5.to_str().unwrap().into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for ((m, extra), line) in runs.iter().zip(helper(&args).lines()) {
        assert_pytorchs(format!("{m} {}", extra.join(" ")).trim_end(), line);
    }
}

/// `probe train` of the same two models (3 SGD steps with momentum, 24 of the 64 sequences a
/// step, file order, one thread) from the export's weights, against torch.optim's steps in
/// float64 (`hf_reference.py train-ref`): every weight within 2x of PyTorch float32's own error
/// (or 1e-5), errors against how far the steps moved each tensor.
#[test]
fn recurrent_layers_train_as_torch_optim() {
    let d = prepared();
    let out = tempfile::tempdir().unwrap();
    let flags = ["--opt", "sgd", "--lr", "0.1", "--momentum", "0.9"];
    let tokens = d.join("tokens.h5");
    for m in ["lstm", "gru"] {
        let run = out.path().join(m);
        let onnx = d.join(m).join("m.onnx");
        let mut args = vec!["train", "--model", onnx.to_str().unwrap(), "--data"];
        args.push(tokens.to_str().unwrap());
        args.extend([
            "--steps",
            "3",
            "--batch",
            "24",
            "--no-shuffle",
            "--threads",
            "1",
        ]);
        args.extend(["--quiet", "--out", run.to_str().unwrap()]);
        args.extend(flags);
        probe(&args).ok();
        let (init, last) = (
            run.join("step-00000000.safetensors"),
            run.join("step-00000003.safetensors"),
        );
        let mut ref_args = vec!["train-ref", d.to_str().unwrap(), m, "--init"];
        ref_args.extend([
            init.to_str().unwrap(),
            "--probe-ckpt",
            last.to_str().unwrap(),
        ]);
        ref_args.extend(["--steps", "3", "--batch", "24"]);
        ref_args.extend(flags);
        let line = helper(&ref_args);
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        eprintln!(
            "{m} train: worst {:.2e} ({}), PyTorch float32 {:.2e} ({}), {} tensors",
            v["worst"].as_f64().unwrap(),
            v["tensor"].as_str().unwrap(),
            v["f32_error"].as_f64().unwrap(),
            v["f32_tensor"].as_str().unwrap(),
            v["tensors"]
        );
        assert_eq!(
            v["exact"], true,
            "{m}: probe train is not torch.optim's: {line}"
        );
    }
}

/// Runs `probe grad` on `model` (a folder under the prepared one) and `ckpt`, which must fail
/// with exit 3 and one error line holding every one of `want`; returns the line.
fn refused(model: &str, ckpt: &str, extra: &[&str], want: &[&str]) -> String {
    let out = tempfile::tempdir().unwrap();
    let o = grad(
        model,
        &format!("{model}/{ckpt}"),
        &out.path().join("r.h5"),
        extra,
    );
    assert_eq!(o.code, 3, "{model}/{ckpt}: exit {}\n{}", o.code, o.stderr);
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("probe: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", o.stderr);
    for w in want {
        assert!(errors[0].contains(w), "'{w}' not in: {}", errors[0]);
    }
    assert!(
        !out.path().join("r.h5").exists(),
        "a refused run left a results file"
    );
    errors[0].to_string()
}

/// An int64 buffer (persistent, as swin's `relative_position_index`) is fed from the checkpoint:
/// `perm`'s checkpoint reverses the positions the exported graph holds.
#[test]
fn integer_buffers_come_from_the_checkpoint() {
    let d = prepared();
    let out = tempfile::tempdir().unwrap();
    let h5 = out.path().join("perm.h5");
    grad("perm", "perm/clone.safetensors", &h5, &[]).ok();
    let r = d.join("perm/ref.safetensors");
    let line = helper(&["compare", r.to_str().unwrap(), h5.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let (worst, f32_error) = (
        v["worst"].as_f64().unwrap(),
        v["f32_error"].as_f64().unwrap(),
    );
    eprintln!(
        "perm: worst {worst:.2e} ({}); PyTorch float32's own {f32_error:.2e}",
        v["name"]
    );
    assert!(
        worst <= (2.0 * f32_error).max(1e-5),
        "perm: off by {worst:.2e}: {line}"
    );
}

#[test]
fn checkpoints_users_get_wrong_are_refused_with_the_fix() {
    let line = refused(
        "gpt2",
        "ddp.safetensors",
        &[],
        &[
            "ddp.safetensors: checkpoint does not fit",
            "its tensor names start with 'module.' (as DistributedDataParallel saves them)",
            "give --strip-prefix module. (then it fits)",
        ],
    );
    assert!(!line.contains("folded") && line.len() < 400, "{line}");
    refused(
        "gpt2",
        "untied.safetensors",
        &[],
        &["'transformer.wte.weight' and 'lm_head.weight' are one tied tensor in the model (the graph holds it as 'lm_head.weight') but their values differ in the checkpoint"],
    );
    refused(
        "gpt2",
        "torch_save.pt",
        &[],
        &[
            "torch_save.pt: not a safetensors file: a zip archive, as torch.save writes",
            "safetensors.torch.save_file(model.state_dict(), path)",
        ],
    );
    refused(
        "gpt2",
        "no_param.safetensors",
        &[],
        &["missing 1 of the model's tensors: transformer.h.0.mlp.c_fc.bias"],
    );
    refused(
        "static",
        "c.safetensors",
        &[],
        &[
            "m.onnx: the model's input 'x' has a fixed batch size of 2 (shape [2, 8])",
            "dynamic_shapes=({0: torch.export.Dim(\"N\")},)",
        ],
    );
}

#[test]
fn strip_prefix_reads_a_ddp_checkpoint_as_the_plain_one() {
    let out = tempfile::tempdir().unwrap();
    let plain = out.path().join("plain.h5");
    let ddp = out.path().join("ddp.h5");
    grad("gpt2", "gpt2/clone.safetensors", &plain, &[]).ok();
    let o = grad(
        "gpt2",
        "gpt2/ddp.safetensors",
        &ddp,
        &["--strip-prefix", "module."],
    )
    .ok();
    assert!(
        o.stderr
            .contains("stripped the prefix 'module.' from 29 tensor name(s)"),
        "{}",
        o.stderr
    );
    let script = "import sys, h5py, numpy as np\n\
                  a, b = h5py.File(sys.argv[1], 'r'), h5py.File(sys.argv[2], 'r')\n\
                  assert set(a['grad/full']) == set(b['grad/full']) and len(a['grad/full']) == 28\n\
                  for k in a['grad/full']:\n    assert np.array_equal(a['grad/full/' + k][:], b['grad/full/' + k][:]), k\n\
                  print('same')";
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(script).arg(&plain).arg(&ddp);
    assert_eq!(run(cmd).ok().stdout.trim(), "same");
}
