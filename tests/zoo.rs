//! The model zoo's quick subset (the whole zoo is `benches/zoo.py`): architectures nobody here
//! wrote, from torchvision, timm and Hugging Face transformers, tiny configurations, random init,
//! exported as the README says, checkpoints saved as their users save them (`save_file(
//! model.state_dict())`, `save_pretrained`), at the initial weights and two SGD steps later.
//! probe's full gradient at both checkpoints must match PyTorch float64 autograd within 2x of
//! PyTorch float32's own error from float64 (or 1e-5), per tensor, and its loss likewise
//! (`models/zoo_models.py compare`). And `probe train` on five of them equals torch.optim's steps
//! in float64 within 2x of PyTorch float32's own error.
//!
//! The exports, checkpoints and references are made once and cached under target/zoo/ by a hash of
//! each model's config and the library versions (the first run exports, ~10 s a model on 2 cores).
mod common;
use common::{probe, py, root};
use std::path::{Path, PathBuf};

/// One model per family, among those exact today, each a few seconds: depthwise convolutions
/// with BatchNorm (torchvision MNASNet), dense concatenations (torchvision DenseNet), LayerNorm over
/// channels (torchvision ConvNeXt), timm's ViT (DeiT) and MLP-Mixer, and three Hugging Face
/// language models (GPT-2: tied embeddings, `save_pretrained` keeping one name; Llama: rotary
/// embeddings, grouped-query attention, RMSNorm; Qwen3: per-head q/k norms), and two whose
/// `save_pretrained` writes transformers' original names, which probe renames as
/// `from_pretrained` does (GPT-NeoX: `embed_out`; Hugging Face ViT: `encoder.layer.N...`).
const SUBSET: [&str; 10] = [
    "mnasnet0_5",
    "densenet-small",
    "convnext-small",
    "deit_tiny",
    "mixer-small",
    "gpt2",
    "llama",
    "qwen3",
    "gpt_neox",
    "hf-vit",
];

fn zoo_py(args: &[&str]) -> String {
    let mut all = vec![root()
        .join("models/zoo_models.py")
        .to_str()
        .unwrap()
        .to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    py(&all)
}

/// The prepared folders of `names` (made or found in the cache), in order.
fn prepared(names: &[&str]) -> Vec<PathBuf> {
    let mut args = vec!["prepare"];
    args.extend_from_slice(names);
    let dirs: Vec<PathBuf> = zoo_py(&args).lines().map(PathBuf::from).collect();
    assert_eq!(dirs.len(), names.len());
    dirs
}

fn meta(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap()
}

#[test]
fn zoo_subset_gives_pytorchs_gradient() {
    let dirs = prepared(&SUBSET);
    let out = tempfile::tempdir().unwrap();
    let mut pairs: Vec<String> = vec!["compare".into()];
    for (name, dir) in SUBSET.iter().zip(&dirs) {
        let h5 = out.path().join(format!("{name}.h5"));
        let mut args: Vec<String> = vec!["grad".into(), "--model".into()];
        args.push(dir.join("m.onnx").to_str().unwrap().into());
        args.push("--ckpt".into());
        for c in meta(dir)["checkpoints"].as_array().unwrap() {
            args.push(dir.join(c.as_str().unwrap()).to_str().unwrap().into());
        }
        args.extend([
            "--data".into(),
            dir.join("data.h5").to_str().unwrap().into(),
        ]);
        args.extend(["--batch", "6", "--save-grad", "--quiet", "--out"].map(String::from));
        args.push(h5.to_str().unwrap().into());
        let t = std::time::Instant::now();
        let o = probe(&args);
        assert_eq!(
            o.code, 0,
            "{name}: probe grad exit {}\n{}",
            o.code, o.stderr
        );
        eprintln!("{name}: probe grad {:.1} s", t.elapsed().as_secs_f64());
        pairs.push(dir.to_str().unwrap().into());
        pairs.push(h5.to_str().unwrap().into());
    }
    let args: Vec<&str> = pairs.iter().map(String::as_str).collect();
    let mut failed = Vec::new();
    for (name, line) in SUBSET.iter().zip(zoo_py(&args).lines()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for (k, r) in v["rows"].as_array().unwrap().iter().enumerate() {
            let f = |key: &str| r[key].as_f64().unwrap();
            eprintln!(
                "{name} checkpoint {k}: worst {:.2e} ({}), PyTorch float32 {:.2e}, bound {:.2e}; loss error {:.1e} (bound {:.1e})",
                f("worst"),
                r["tensor"].as_str().unwrap(),
                f("f32_error"),
                f("bound"),
                f("loss_error"),
                f("loss_bound")
            );
        }
        if !v["problems"].as_array().unwrap().is_empty() {
            eprintln!("{name}: {}", v["problems"]);
        }
        if v["exact"] != true {
            failed.push(*name);
        }
    }
    assert!(
        failed.is_empty(),
        "not PyTorch's gradient (or loss): {failed:?}"
    );
}

/// `probe train` (3 steps of 8 of the 16 samples, file order, one thread) from the export's own
/// weights, against the same steps by torch.optim in float64 (`zoo_models.py train-ref`): every
/// weight and BatchNorm statistic within 2x of PyTorch float32's own error (or 1e-5), errors
/// measured against how far the steps moved each tensor. GPT-2 and Llama (AdamW) run through
/// transformers' mask code (CumSum, GatherND, Max, and the IsNaN of the exported
/// scaled_dot_product_attention) and Llama's rotary embedding.
#[test]
fn zoo_models_train_as_torch_optim() {
    let cases: [(&str, &[&str]); 5] = [
        (
            "resnet18",
            &[
                "--opt",
                "sgd",
                "--lr",
                "0.01",
                "--momentum",
                "0.9",
                "--weight-decay",
                "5e-4",
            ],
        ),
        (
            "vit-small",
            &["--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.05"],
        ),
        (
            "deit_tiny",
            &["--opt", "sgd", "--lr", "0.01", "--momentum", "0.9"],
        ),
        (
            "gpt2",
            &["--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.01"],
        ),
        (
            "llama",
            &["--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.01"],
        ),
    ];
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let dirs = prepared(&names);
    let out = tempfile::tempdir().unwrap();
    let mut failed = Vec::new();
    for ((name, flags), dir) in cases.iter().zip(&dirs) {
        let run = out.path().join(name);
        let (m, d, r) = (dir.join("m.onnx"), dir.join("data.h5"), run.clone());
        let mut args = vec![
            "train",
            "--model",
            m.to_str().unwrap(),
            "--data",
            d.to_str().unwrap(),
            "--steps",
            "3",
            "--batch",
            "8",
            "--no-shuffle",
            "--threads",
            "1",
            "--quiet",
            "--out",
            r.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        probe(&args).ok();
        let (init, last) = (
            run.join("step-00000000.safetensors"),
            run.join("step-00000003.safetensors"),
        );
        let mut ref_args = vec![
            "train-ref",
            dir.to_str().unwrap(),
            "--init",
            init.to_str().unwrap(),
            "--probe-ckpt",
            last.to_str().unwrap(),
            "--steps",
            "3",
            "--batch",
            "8",
        ];
        ref_args.extend_from_slice(flags);
        let v: serde_json::Value = serde_json::from_str(zoo_py(&ref_args).trim()).unwrap();
        eprintln!(
            "{name} ({}): worst {:.2e} ({}), PyTorch float32 {:.2e} ({}), {} tensors",
            flags.join(" "),
            v["worst"].as_f64().unwrap(),
            v["tensor"].as_str().unwrap(),
            v["f32_error"].as_f64().unwrap(),
            v["f32_tensor"].as_str().unwrap(),
            v["tensors"]
        );
        if v["exact"] != true {
            failed.push(*name);
        }
    }
    assert!(
        failed.is_empty(),
        "probe train is not torch.optim's: {failed:?}"
    );
}
