//! The optimizer a checkpoint was trained with, from its safetensors metadata: what `probe
//! train` writes (`optimizer` = `sgd lr=0.05 momentum=0.9 weight_decay=0.0005`, or `adamw
//! lr=0.001 betas=(0.9, 0.999) eps=1e-08 weight_decay=0.01`), or what a PyTorch loop writes as
//! separate keys (`optimizer` = `SGD`/`AdamW`, `momentum`, `weight_decay`).
//!
//! It decides what "stationary" means for the run. SGD with weight decay `wd` (L2 in the
//! gradient, as torch.optim.SGD and Adam apply it) stops where g + wd w = 0. AdamW decays the
//! weights outside the preconditioner: its fixed points satisfy m/(sqrt(v)+eps) = -wd w, which
//! needs the optimizer's second moments, not |g + wd w|.
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerMeta {
    /// Lower case: `sgd`, `adam`, `adamw`, or what the metadata says.
    pub kind: String,
    pub momentum: Option<f64>,
    pub weight_decay: Option<f64>,
}

impl OptimizerMeta {
    /// None when the metadata names no optimizer.
    pub fn of(metadata: &BTreeMap<String, String>) -> Option<OptimizerMeta> {
        let text = metadata.get("optimizer")?.trim();
        let kind = text
            .split(|c: char| c.is_whitespace() || c == '(')
            .next()?
            .to_ascii_lowercase();
        if kind.is_empty() {
            return None;
        }
        let field = |key: &str| -> Option<f64> {
            metadata
                .get(key)
                .and_then(|v| v.trim().parse().ok())
                .or_else(|| {
                    text.split_whitespace()
                        .find_map(|t| t.strip_prefix(&format!("{key}=")))
                        .and_then(|v| v.trim_end_matches(',').parse().ok())
                })
        };
        Some(OptimizerMeta {
            kind,
            momentum: field("momentum"),
            weight_decay: field("weight_decay"),
        })
    }

    /// Weight decay added to the gradient (L2), whose stationarity condition is g + wd w = 0.
    pub fn coupled_decay(&self) -> bool {
        self.kind != "adamw"
    }

    /// Adaptive (preconditioned) steps: the edge-of-stability threshold 2/lr is not theirs.
    pub fn adaptive(&self) -> bool {
        self.kind.starts_with("adam") || self.kind == "rmsprop" || self.kind == "adagrad"
    }

    /// For the results file: the kind and momentum (what the analysis needs).
    pub fn describe(&self) -> String {
        match self.momentum {
            Some(m) if !self.adaptive() => format!("{} momentum={m}", self.kind),
            _ => self.kind.clone(),
        }
    }

    /// Reads [`OptimizerMeta::describe`] back.
    pub fn parse_described(s: &str) -> Option<OptimizerMeta> {
        let meta = BTreeMap::from([("optimizer".to_string(), s.to_string())]);
        OptimizerMeta::of(&meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn probe_train_and_pytorch_metadata() {
        let o = OptimizerMeta::of(&meta(&[(
            "optimizer",
            "sgd lr=0.05 momentum=0.9 weight_decay=0.0005",
        )]))
        .unwrap();
        assert_eq!(
            (o.kind.as_str(), o.momentum, o.weight_decay),
            ("sgd", Some(0.9), Some(5e-4))
        );
        assert!(o.coupled_decay() && !o.adaptive());
        assert_eq!(o.describe(), "sgd momentum=0.9");
        assert_eq!(
            OptimizerMeta::parse_described("sgd momentum=0.9"),
            Some(OptimizerMeta {
                weight_decay: None,
                ..o
            })
        );
        let a =
            OptimizerMeta::of(&meta(&[("optimizer", "AdamW"), ("weight_decay", "0.01")])).unwrap();
        assert_eq!((a.kind.as_str(), a.weight_decay), ("adamw", Some(0.01)));
        assert!(!a.coupled_decay() && a.adaptive());
        let b = OptimizerMeta::of(&meta(&[(
            "optimizer",
            "adamw lr=0.001 betas=(0.9, 0.999) eps=1e-08 weight_decay=0.01",
        )]))
        .unwrap();
        assert_eq!(b.weight_decay, Some(0.01));
        assert_eq!(OptimizerMeta::of(&meta(&[("lr", "0.1")])), None);
    }
}
