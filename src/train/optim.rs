//! PyTorch's optimizers and learning-rate schedules, on tch tensors: `torch.optim.SGD`, `Adam` and
//! `AdamW` with the update order of their single-tensor implementations (what PyTorch 2.11 runs for
//! CPU tensors), and `StepLR` / `CosineAnnealingLR` stepped once per optimizer step.
//!
//! One step, for a parameter `p` with gradient `g` and learning rate `lr` (everything in f32 but
//! the scalars, which are f64 as in Python and rounded to f32 where they meet a tensor):
//!
//! ```text
//! SGD     g <- g + wd p                            (if wd != 0)
//!         b <- g (first step) | m b + g            (if m != 0; dampening 0, nesterov off)
//!         p <- p - lr b                            (b = g if m == 0)
//! Adam    t <- t + 1
//!         g <- g + wd p                            (if wd != 0; Adam's L2 decay, in the gradient)
//!         a <- lerp(a, g, 1 - beta1)               (first moment, starts at 0)
//!         v <- beta2 v + (1 - beta2) g g           (second moment, starts at 0)
//!         p <- p - (lr / (1 - beta1^t)) a / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! AdamW   t <- t + 1;  p <- p (1 - lr wd)  (decoupled decay, before the moments); then Adam
//!         without the gradient decay
//! ```
//!
//! PyTorch computes `x + alpha y` in one fused multiply-add; tch exposes no `alpha`, so `alpha y`
//! is rounded once before the add here. That, and nothing else, can make a step differ from
//! PyTorch's in the last bit of a value (measured in `tests/optim_reference.rs`).
//!
//! A parameter whose gradient is undefined (it took no part in the loss) is skipped, with no
//! decay, as in PyTorch.
//!
//! The state (SGD's momentum buffers; Adam's `exp_avg`, `exp_avg_sq` and per-parameter step) is
//! saved to a safetensors file, keyed `<slot>/<parameter name>` (see [`Optimizer::save`]), so a
//! resumed run continues with exactly the values it stopped with.
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptKind {
    Sgd,
    Adam,
    AdamW,
}

impl OptKind {
    pub fn name(self) -> &'static str {
        match self {
            OptKind::Sgd => "sgd",
            OptKind::Adam => "adam",
            OptKind::AdamW => "adamw",
        }
    }
    pub fn parse(s: &str) -> Option<OptKind> {
        Some(match s {
            "sgd" => OptKind::Sgd,
            "adam" => OptKind::Adam,
            "adamw" => OptKind::AdamW,
            _ => return None,
        })
    }
}

/// An optimizer's hyperparameters, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct OptConfig {
    pub kind: OptKind,
    /// The base learning rate (the schedule scales it per step).
    pub lr: f64,
    /// SGD only.
    pub momentum: f64,
    pub weight_decay: f64,
    /// Adam/AdamW only: PyTorch's defaults (0.9, 0.999) and 1e-8.
    pub betas: (f64, f64),
    pub eps: f64,
}

impl OptConfig {
    /// PyTorch's defaults where a flag is not given: lr 1e-3, momentum 0, weight decay 0 (SGD,
    /// Adam) or 1e-2 (AdamW). A flag that does not apply to `kind` is an input error.
    pub fn new(
        kind: OptKind,
        lr: Option<f64>,
        momentum: Option<f64>,
        weight_decay: Option<f64>,
    ) -> Result<OptConfig> {
        if momentum.is_some() && kind != OptKind::Sgd {
            return Err(crate::error::input(format!(
                "--momentum applies to --opt sgd only; {} keeps its own moment estimates (betas 0.9, 0.999)",
                kind.name()
            )));
        }
        let lr = lr.unwrap_or(1e-3);
        let momentum = momentum.unwrap_or(0.0);
        let weight_decay = weight_decay.unwrap_or(if kind == OptKind::AdamW { 1e-2 } else { 0.0 });
        for (flag, v) in [
            ("--lr", lr),
            ("--momentum", momentum),
            ("--weight-decay", weight_decay),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(crate::error::input(format!(
                    "{flag} {v}: needs a finite value >= 0"
                )));
            }
        }
        Ok(OptConfig {
            kind,
            lr,
            momentum,
            weight_decay,
            betas: (0.9, 0.999),
            eps: 1e-8,
        })
    }

    /// As text for checkpoint metadata and the training log, e.g.
    /// `sgd lr=0.05 momentum=0.9 weight_decay=0.0005`.
    pub fn describe(&self) -> String {
        match self.kind {
            OptKind::Sgd => format!(
                "sgd lr={} momentum={} weight_decay={}",
                self.lr, self.momentum, self.weight_decay
            ),
            k => format!(
                "{} lr={} betas=({}, {}) eps={} weight_decay={}",
                k.name(),
                self.lr,
                self.betas.0,
                self.betas.1,
                self.eps,
                self.weight_decay
            ),
        }
    }
}

/// The learning rate as a function of the step: PyTorch's scheduler stepped once after every
/// optimizer step, so optimizer step `s` (1-based) uses `lr(s - 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// `lr`.
    Constant,
    /// `StepLR(step_size=every, gamma)`: `lr * gamma^floor(k / every)`.
    Step { every: u64, gamma: f64 },
    /// `CosineAnnealingLR(T_max=total steps, eta_min=0)`: `lr * (1 + cos(pi k / T)) / 2`.
    Cosine,
}

impl Schedule {
    /// `constant`, `step:EVERY,GAMMA` or `cosine`.
    pub fn parse(s: &str) -> Result<Schedule> {
        let bad = |why: &str| {
            crate::error::input(format!(
                "--schedule {s}: {why} (expected constant, step:EVERY,GAMMA e.g. step:1000,0.1, or cosine)"
            ))
        };
        match s {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            _ => {
                let Some(rest) = s.strip_prefix("step:") else {
                    return Err(bad("unknown schedule"));
                };
                let (e, g) = rest
                    .split_once(',')
                    .ok_or_else(|| bad("step needs EVERY,GAMMA"))?;
                let every: u64 = e
                    .trim()
                    .parse()
                    .map_err(|_| bad("EVERY is not a whole number of steps"))?;
                let gamma: f64 = g.trim().parse().map_err(|_| bad("GAMMA is not a number"))?;
                if every == 0 {
                    return Err(bad("EVERY must be at least 1"));
                }
                if !gamma.is_finite() || gamma <= 0.0 {
                    return Err(bad("GAMMA must be a finite number > 0"));
                }
                Ok(Schedule::Step { every, gamma })
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Schedule::Constant => "constant".into(),
            Schedule::Step { every, gamma } => format!("step:{every},{gamma}"),
            Schedule::Cosine => "cosine".into(),
        }
    }

    /// The learning rate after `k` scheduler steps, for a run of `total` optimizer steps.
    ///
    /// These are PyTorch's closed forms (`_get_closed_form_lr`); its `get_lr` updates the previous
    /// value recursively instead, which agrees to about 1e-16 relative (the values are rounded to
    /// f32 where they meet the parameters). Past `total`, the cosine goes on as PyTorch's does
    /// (rising again), by the same formula.
    pub fn lr(&self, base: f64, k: u64, total: u64) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((k / every) as i32),
            Schedule::Cosine => {
                let t = total.max(1) as f64;
                base * (1.0 + (std::f64::consts::PI * k as f64 / t).cos()) / 2.0
            }
        }
    }
}

/// One parameter's optimizer state (PyTorch's `optimizer.state[p]`).
#[derive(Debug, Default)]
struct Slots {
    momentum_buffer: Option<Tensor>,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
    /// Adam's per-parameter step count `t`.
    step: i64,
}

pub struct Optimizer {
    pub config: OptConfig,
    state: BTreeMap<String, Slots>,
}

/// The format tag in an optimizer-state file's metadata.
pub use crate::model::checkpoint_set::OPTIMIZER_STATE_FORMAT as STATE_FORMAT;

impl Optimizer {
    pub fn new(config: OptConfig) -> Optimizer {
        Optimizer {
            config,
            state: BTreeMap::new(),
        }
    }

    /// One optimizer step over `params` (name, leaf tensor with its `.grad()` from the backward
    /// pass), at learning rate `lr` (the schedule's value for this step). Runs under `no_grad`.
    pub fn step(&mut self, params: &[(&str, &Tensor)], lr: f64) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (name, p) in params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let slots = self.state.entry(name.to_string()).or_default();
                let mut p = p.shallow_clone();
                update(&self.config, slots, &mut p, &g, lr)
                    .map_err(|e| anyhow!("optimizer step of '{name}': {e}"))?;
            }
            Ok(())
        })
    }

    /// Like [`Optimizer::step`] with the gradients given explicitly (tests, fixtures).
    pub fn step_with_grads(
        &mut self,
        params: &[(&str, &Tensor)],
        grads: &[&Tensor],
        lr: f64,
    ) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for ((name, p), g) in params.iter().zip(grads) {
                let slots = self.state.entry(name.to_string()).or_default();
                let mut p = p.shallow_clone();
                update(&self.config, slots, &mut p, g, lr)
                    .map_err(|e| anyhow!("optimizer step of '{name}': {e}"))?;
            }
            Ok(())
        })
    }

    /// The state as safetensors tensors: `momentum_buffer/<name>`, `exp_avg/<name>`,
    /// `exp_avg_sq/<name>` (f32, the parameter's shape) and `step/<name>` (i64, shape []),
    /// for every parameter that has been stepped. Metadata: `extra`, then `format`, `optimizer`
    /// and the hyperparameters (which win over keys of the same name in `extra`).
    pub fn to_safetensors(&self, extra: &BTreeMap<String, String>) -> Result<Vec<u8>> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for (name, s) in &self.state {
            for (slot, t) in [
                ("momentum_buffer", &s.momentum_buffer),
                ("exp_avg", &s.exp_avg),
                ("exp_avg_sq", &s.exp_avg_sq),
            ] {
                if let Some(t) = t {
                    named.push((format!("{slot}/{name}"), t.shallow_clone()));
                }
            }
            if self.config.kind != OptKind::Sgd {
                let step = Tensor::from_slice(&[s.step]).reshape(Vec::<i64>::new());
                named.push((format!("step/{name}"), step));
            }
        }
        let c = &self.config;
        // The caller's keys first: the optimizer's own (`format`, ...) win over them.
        let mut meta = extra.clone();
        meta.extend(
            [
                ("format", STATE_FORMAT.to_string()),
                ("optimizer", c.kind.name().to_string()),
                ("lr", c.lr.to_string()),
                ("momentum", c.momentum.to_string()),
                ("weight_decay", c.weight_decay.to_string()),
                ("betas", format!("{},{}", c.betas.0, c.betas.1)),
                ("eps", c.eps.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
        );
        super::files::safetensors_bytes(named.iter().map(|(n, t)| (n.as_str(), t)), &meta)
    }

    /// Reads a state written by [`Optimizer::to_safetensors`] for `config`'s optimizer; `params`
    /// (name, shape) are the model's trainable parameters, and every tensor must belong to one.
    pub fn from_safetensors(
        bytes: &[u8],
        path: &Path,
        config: OptConfig,
        params: &BTreeMap<String, Vec<usize>>,
        device: Device,
    ) -> Result<Optimizer> {
        let bad = |why: String| {
            crate::error::input(format!(
                "{}: not a usable optimizer state: {why}",
                path.display()
            ))
        };
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(bad(format!("metadata 'format' is not {STATE_FORMAT}")));
        }
        let saved = meta.get("optimizer").cloned().unwrap_or_default();
        if saved != config.kind.name() {
            return Err(bad(format!(
                "it holds {saved} state, this run uses {}",
                config.kind.name()
            )));
        }
        let mut opt = Optimizer::new(config);
        let mut names: Vec<String> = st.names().into_iter().cloned().collect();
        names.sort();
        for key in names {
            let view = st.tensor(&key).map_err(|e| bad(e.to_string()))?;
            let (slot, name) = key
                .split_once('/')
                .ok_or_else(|| bad(format!("unexpected tensor '{key}'")))?;
            let shape = params.get(name).ok_or_else(|| {
                bad(format!(
                    "'{key}' is for a parameter the model does not have"
                ))
            })?;
            let slots = opt.state.entry(name.to_string()).or_default();
            if slot == "step" {
                let b: [u8; 8] = view
                    .data()
                    .try_into()
                    .map_err(|_| bad(format!("'{key}' is not one i64")))?;
                slots.step = i64::from_le_bytes(b);
                continue;
            }
            if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape.as_slice() {
                return Err(bad(format!(
                    "'{key}' is {:?} {:?}, the parameter is F32 {:?}",
                    view.dtype(),
                    view.shape(),
                    shape
                )));
            }
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_slice(&v)?
                .f_reshape(&dims)?
                .f_to_device(device)?;
            match slot {
                "momentum_buffer" => slots.momentum_buffer = Some(t),
                "exp_avg" => slots.exp_avg = Some(t),
                "exp_avg_sq" => slots.exp_avg_sq = Some(t),
                _ => return Err(bad(format!("unexpected tensor '{key}'"))),
            }
        }
        Ok(opt)
    }

    pub fn save(&self, path: &Path, extra: &BTreeMap<String, String>) -> Result<()> {
        let bytes = self.to_safetensors(extra)?;
        super::files::write_atomic(path, &bytes)
    }

    pub fn load(
        path: &Path,
        config: OptConfig,
        params: &BTreeMap<String, Vec<usize>>,
        device: Device,
    ) -> Result<Optimizer> {
        let bytes = std::fs::read(path)
            .map_err(|e| crate::error::input(format!("{}: {e}", path.display())))?;
        Optimizer::from_safetensors(&bytes, path, config, params, device)
    }
}

/// One parameter's update, in PyTorch's order (see the module docs). `p` is modified in place.
fn update(c: &OptConfig, s: &mut Slots, p: &mut Tensor, g: &Tensor, lr: f64) -> Result<()> {
    let wd = c.weight_decay;
    match c.kind {
        OptKind::Sgd => {
            // grad.add(param, alpha=wd)
            let g = if wd != 0.0 {
                g.f_add(&p.f_mul_scalar(wd)?)?
            } else {
                g.shallow_clone()
            };
            let d = if c.momentum != 0.0 {
                match &mut s.momentum_buffer {
                    // buf = grad.detach().clone()
                    None => {
                        let b = g.f_detach()?.copy();
                        s.momentum_buffer = Some(b.shallow_clone());
                        b
                    }
                    // buf.mul_(momentum).add_(grad, alpha=1 - dampening), dampening 0
                    Some(b) => {
                        _ = b.f_mul_scalar_(c.momentum)?;
                        _ = b.f_add_(&g)?;
                        b.shallow_clone()
                    }
                }
            } else {
                g
            };
            // param.add_(grad, alpha=-lr)
            _ = p.f_add_(&d.f_mul_scalar(-lr)?)?;
        }
        OptKind::Adam | OptKind::AdamW => {
            let (beta1, beta2) = c.betas;
            s.step += 1;
            let mut g = g.shallow_clone();
            if wd != 0.0 {
                if c.kind == OptKind::AdamW {
                    // param.mul_(1 - lr * weight_decay)
                    _ = p.f_mul_scalar_(1.0 - lr * wd)?;
                } else {
                    g = g.f_add(&p.f_mul_scalar(wd)?)?;
                }
            }
            let a = match &mut s.exp_avg {
                Some(a) => a,
                None => s.exp_avg.insert(p.f_zeros_like()?),
            };
            // exp_avg.lerp_(grad, 1 - beta1)
            _ = a.f_lerp_(&g, 1.0 - beta1)?;
            let v = match &mut s.exp_avg_sq {
                Some(v) => v,
                None => s.exp_avg_sq.insert(p.f_zeros_like()?),
            };
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            _ = v.f_mul_scalar_(beta2)?;
            _ = v.f_add_(&g.f_mul_scalar(1.0 - beta2)?.f_mul(&g)?)?;
            let t = s.step as f64;
            let bias_correction1 = 1.0 - beta1.powf(t);
            let bias_correction2 = 1.0 - beta2.powf(t);
            let step_size = lr / bias_correction1;
            let bias_correction2_sqrt = bias_correction2.powf(0.5);
            // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            let mut denom = v.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?;
            _ = denom.f_add_scalar_(c.eps)?;
            // param.addcdiv_(exp_avg, denom, value=-step_size): p + (value * a) / denom
            let a = s.exp_avg.as_ref().unwrap();
            _ = p.f_add_(&a.f_mul_scalar(-step_size)?.f_div(&denom)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_evaluate() {
        assert_eq!(Schedule::parse("constant").unwrap(), Schedule::Constant);
        assert_eq!(
            Schedule::parse("step:3,0.5").unwrap(),
            Schedule::Step {
                every: 3,
                gamma: 0.5
            }
        );
        for bad in ["step:0,0.1", "step:3", "step:x,0.1", "step:3,-1", "linear"] {
            let e = Schedule::parse(bad).unwrap_err();
            assert_eq!(
                crate::error::fault_of(&e),
                Some(crate::error::Fault::Input),
                "{bad}"
            );
            assert!(format!("{e}").contains(bad), "{e}");
        }
        let s = Schedule::Step {
            every: 3,
            gamma: 0.5,
        };
        let lrs: Vec<f64> = (0..7).map(|k| s.lr(1.0, k, 7)).collect();
        assert_eq!(lrs, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
        let c = Schedule::Cosine;
        assert_eq!(c.lr(0.1, 0, 10), 0.1);
        assert!((c.lr(0.1, 5, 10) - 0.05).abs() < 1e-16);
        assert!(c.lr(0.1, 10, 10).abs() < 1e-16);
    }

    #[test]
    fn flags_that_do_not_apply_are_refused() {
        let e = OptConfig::new(OptKind::Adam, Some(0.1), Some(0.9), None).unwrap_err();
        assert!(format!("{e}").contains("--momentum applies to --opt sgd only"));
        assert_eq!(crate::error::fault_of(&e), Some(crate::error::Fault::Input));
        assert!(OptConfig::new(OptKind::Sgd, Some(-1.0), None, None).is_err());
        assert!(OptConfig::new(OptKind::Sgd, Some(f64::NAN), None, None).is_err());
        let w = OptConfig::new(OptKind::AdamW, None, None, None).unwrap();
        assert_eq!((w.lr, w.weight_decay), (1e-3, 1e-2));
    }

    /// SGD with momentum and decay by hand on one value: p=1, g=0.5, lr=0.1, m=0.9, wd=0.1.
    #[test]
    fn sgd_by_hand() {
        let c = OptConfig::new(OptKind::Sgd, Some(0.1), Some(0.9), Some(0.1)).unwrap();
        let mut opt = Optimizer::new(c);
        let p = Tensor::from_slice(&[1.0f32]);
        let g = Tensor::from_slice(&[0.5f32]);
        opt.step_with_grads(&[("w", &p)], &[&g], 0.1).unwrap();
        // d = 0.5 + 0.1 = 0.6; b = 0.6; p = 1 - 0.06 = 0.94
        let v = f32::try_from(&p).unwrap();
        assert!((v - 0.94).abs() < 1e-7, "{v}");
        opt.step_with_grads(&[("w", &p)], &[&g], 0.1).unwrap();
        // d = 0.5 + 0.094 = 0.594; b = 0.54 + 0.594 = 1.134; p = 0.94 - 0.1134 = 0.8266
        let v = f32::try_from(&p).unwrap();
        assert!((v - 0.8266).abs() < 1e-6, "{v}");
    }

    /// Adam's first step moves every coordinate by about lr (sign of g).
    #[test]
    fn adam_first_step_is_lr_sized() {
        let c = OptConfig::new(OptKind::Adam, Some(0.01), None, None).unwrap();
        let mut opt = Optimizer::new(c);
        let p = Tensor::from_slice(&[1.0f32, -2.0, 3.0]);
        let g = Tensor::from_slice(&[0.3f32, -4.0, 1e-3]);
        opt.step_with_grads(&[("w", &p)], &[&g], 0.01).unwrap();
        let v = Vec::<f32>::try_from(&p).unwrap();
        for (got, want) in v.iter().zip([0.99f32, -1.99, 2.99]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn state_round_trips_through_safetensors() {
        for kind in [OptKind::Sgd, OptKind::Adam, OptKind::AdamW] {
            let c = OptConfig::new(
                kind,
                Some(0.01),
                (kind == OptKind::Sgd).then_some(0.9),
                Some(0.1),
            )
            .unwrap();
            let p1 = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
            let p2 = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
            let g = Tensor::from_slice(&[0.1f32, -0.2, 0.3, 0.5]).reshape([2, 2]);
            let mut a = Optimizer::new(c.clone());
            a.step_with_grads(&[("w", &p1)], &[&g], 0.01).unwrap();
            let bytes = a.to_safetensors(&BTreeMap::new()).unwrap();
            let shapes: BTreeMap<String, Vec<usize>> = [("w".to_string(), vec![2, 2])].into();
            let mut b = Optimizer::from_safetensors(
                &bytes,
                Path::new("o.safetensors"),
                c.clone(),
                &shapes,
                Device::Cpu,
            )
            .unwrap();
            // Continuing from the loaded state equals continuing the original, bit for bit.
            let mut a2 = Optimizer::new(c.clone());
            a2.step_with_grads(&[("w", &p2)], &[&g], 0.01).unwrap();
            a2.step_with_grads(&[("w", &p2)], &[&g], 0.01).unwrap();
            b.step_with_grads(&[("w", &p1)], &[&g], 0.01).unwrap();
            let (x, y) = (
                Vec::<f32>::try_from(&p1.reshape([-1])).unwrap(),
                Vec::<f32>::try_from(&p2.reshape([-1])).unwrap(),
            );
            assert_eq!(x, y, "{kind:?}");
            // A state for another optimizer, or for a parameter the model lacks, is refused.
            let other = OptConfig::new(
                if kind == OptKind::Sgd {
                    OptKind::Adam
                } else {
                    OptKind::Sgd
                },
                None,
                None,
                None,
            )
            .unwrap();
            let path = Path::new("o.safetensors");
            assert!(
                Optimizer::from_safetensors(&bytes, path, other, &shapes, Device::Cpu).is_err()
            );
            let wrong: BTreeMap<String, Vec<usize>> = [("v".to_string(), vec![2, 2])].into();
            assert!(Optimizer::from_safetensors(&bytes, path, c, &wrong, Device::Cpu).is_err());
        }
    }
}
