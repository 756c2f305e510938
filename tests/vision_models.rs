//! Image models through the activations PyTorch's vision families use: torchvision's
//! mobilenet_v3_small (HardSwish, HardSigmoid) and a small CNN through PReLU, ELU, SELU, CELU,
//! Mish, Softsign, sin/cos, maximum/minimum, clamp with tensor bounds, fmod, cumsum and topk
//! (`models/vision_reference.py`, tiny 3x32x32 inputs, random init, exported with dynamo and
//! saved with `save_file(model.state_dict())`). probe's full gradient must match PyTorch
//! float64 autograd within 2x of PyTorch float32's own error (or 1e-5), as the Hugging Face
//! models in hf_checkpoints.rs.
mod common;
use common::{assert_pytorchs, model, probe, py};

#[test]
fn activations_give_pytorchs_gradient() {
    let d = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let script = model("vision_reference.py");
    py(&[
        script.as_os_str(),
        "prepare".as_ref(),
        "--out".as_ref(),
        d.path().as_os_str(),
    ]);
    eprintln!("exported and saved in {:.1} s", t.elapsed().as_secs_f64());
    let mut args = vec!["compare".to_string()];
    for m in ["mobilenet_v3", "acts"] {
        let (dir, h5) = (d.path().join(m), d.path().join(format!("{m}.h5")));
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        probe(&[
            "grad".into(),
            "--model".into(),
            path(&dir.join("m.onnx")),
            "--ckpt".into(),
            path(&dir.join("c.safetensors")),
            "--data".into(),
            path(&d.path().join("images.h5")),
            "--batch".into(),
            "16".into(),
            "--save-grad".into(),
            "--out".into(),
            path(&h5),
        ])
        .ok();
        args.push(path(&dir.join("ref.safetensors")));
        args.push(path(&h5));
    }
    let compare = model("hf_reference.py").to_str().unwrap().to_string();
    let mut all = vec![compare];
    all.extend(args);
    let lines = py(&all);
    for (m, line) in ["mobilenet_v3_small", "activations CNN"]
        .iter()
        .zip(lines.lines())
    {
        assert_pytorchs(m, line);
    }
    assert_eq!(lines.lines().count(), 2, "{lines}");
}
