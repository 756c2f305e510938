//! probe's optimizers and schedules against torch.optim, on fixed tensors and gradients recorded
//! by `tests/fixtures/optim_reference.py` (no model involved: the whole-run comparison is in
//! `tests/train.rs`).
use probe::train::optim::{OptConfig, OptKind, Optimizer, Schedule};
use std::collections::BTreeMap;
use tch::Tensor;

struct Fixture {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    cases: serde_json::Map<String, serde_json::Value>,
}

fn fixture() -> Fixture {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/optim_reference.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, (v.shape().to_vec(), vals))
        })
        .collect();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap();
    Fixture {
        tensors,
        cases: cases.as_object().unwrap().clone(),
    }
}

fn tensor(f: &Fixture, key: &str) -> Tensor {
    let (shape, v) = &f.tensors[key];
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(v).reshape(&dims)
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.reshape([-1])).unwrap()
}

/// max |a - b| / max |b| over a tensor.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max);
    let m = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
    d / m
}

#[test]
fn optimizer_steps_match_torch_optim() {
    let f = fixture();
    let names: Vec<String> = f
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("p0/").map(String::from))
        .collect();
    let mut report = Vec::new();
    for (case, c) in &f.cases {
        let kind = OptKind::parse(c["opt"].as_str().unwrap()).unwrap();
        let config = OptConfig::new(
            kind,
            c["lr"].as_f64(),
            c.get("momentum").and_then(|v| v.as_f64()),
            c.get("weight_decay").and_then(|v| v.as_f64()),
        )
        .unwrap();
        let schedule = Schedule::parse(
            c.get("schedule")
                .and_then(|v| v.as_str())
                .unwrap_or("constant"),
        )
        .unwrap();
        let steps = c["steps"].as_u64().unwrap();
        let lrs: Vec<f64> = c["lrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let params: Vec<Tensor> = names
            .iter()
            .map(|n| tensor(&f, &format!("p0/{n}")))
            .collect();
        let mut opt = Optimizer::new(config.clone());
        for k in 0..steps {
            let lr = schedule.lr(config.lr, k, steps);
            // PyTorch's scheduler (recursive form) and probe's (closed form) agree to rounding.
            let want = lrs[k as usize];
            assert!(
                (lr - want).abs() <= 1e-15 * want.abs(),
                "{case}: lr at step {k}: probe {lr} vs torch {want}"
            );
            let grads: Vec<Tensor> = names
                .iter()
                .map(|n| tensor(&f, &format!("grad/{k}/{n}")))
                .collect();
            let named: Vec<(&str, &Tensor)> = names
                .iter()
                .map(|n| n.as_str())
                .zip(params.iter())
                .collect();
            opt.step_with_grads(&named, &grads.iter().collect::<Vec<_>>(), lr)
                .unwrap();
        }
        for (n, p) in names.iter().zip(&params) {
            let want = &f.tensors[&format!("{case}/{n}")].1;
            let got = values(p);
            let r = rel(&got, want);
            let p0 = &f.tensors[&format!("p0/{n}")].1;
            // The error relative to how far the step moved the tensor, too: 1e-5 of the values
            // alone could hide a wrong update of a small step.
            let moved = rel(want, p0) * p0.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max)
                / want.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
            report.push(format!(
                "{case:>18} {n:>12}: rel {r:.2e} (moved {moved:.2e})"
            ));
            assert!(r <= 1e-5, "{case} {n}: relative error {r:.3e} > 1e-5");
            assert!(
                r <= 1e-3 * moved,
                "{case} {n}: error {r:.3e} vs movement {moved:.3e}"
            );
        }
    }
    eprintln!("{}", report.join("\n"));
}
