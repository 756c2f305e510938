//! The loss head, written as standard ONNX ops after the model's output.
//!
//! Cross-entropy from logits `z` [.., C] on class targets `t` [..] (every leading axis is a
//! sample or token position): per element `l = -log_softmax(z)[t] = logsumexp(z) - z_t`, computed
//! by LogSoftmax + GatherElements. Correctness is `argmax(z) == t` (ONNX ArgMax takes the first
//! maximum, as `torch.argmax` does). Squared error for real targets: `l = (z - t)^2` per element.
//! Both are emitted per element, flattened to [M]; the caller sums them in f64 and divides by the
//! total element count, so the reported loss is the mean over every target element of the data set.
use crate::data::check::Targets;
use crate::model::graph::{attr_int, attr_ints, Builder};
use crate::tensor::DType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    CrossEntropy,
    Mse,
}

impl LossKind {
    pub fn name(self) -> &'static str {
        match self {
            LossKind::CrossEntropy => "cross_entropy",
            LossKind::Mse => "mse",
        }
    }

    /// What the loss needs of the targets: cross-entropy takes class ids, squared error real
    /// values.
    pub fn targets(self) -> Targets {
        match self {
            LossKind::CrossEntropy => Targets::ClassIds,
            LossKind::Mse => Targets::Real,
        }
    }

    /// The type of the targets the loss head reads: class ids, or real values.
    pub fn target_dtype(self) -> DType {
        match self {
            LossKind::CrossEntropy => DType::I64,
            LossKind::Mse => DType::F32,
        }
    }
}

pub struct Head {
    /// Per-element loss, f32 [M].
    pub loss: String,
    /// Per-element correctness (1.0 or 0.0), f32 [M]; cross-entropy only.
    pub correct: Option<String>,
}

/// Appends the loss head reading `output` (the model's logits or predictions) and `target`.
pub fn append(b: &mut Builder, output: &str, target: &str, kind: LossKind) -> Head {
    let flat = b.ints(&[-1]);
    match kind {
        LossKind::CrossEntropy => {
            // [.., C] -> [M, C] with C read from the tensor, so any rank of logits works.
            let shape = b.op("Shape", &[output], vec![]);
            let last = b.ints(&[-1]);
            let end = b.ints(&[i64::MAX]);
            let c = b.op("Slice", &[&shape, &last, &end], vec![]);
            let mc = b.op("Concat", &[&flat, &c], vec![attr_int("axis", 0)]);
            let z = b.op("Reshape", &[output, &mc], vec![]);
            let t = b.op("Reshape", &[target, &flat], vec![]);
            let logp = b.op("LogSoftmax", &[&z], vec![attr_int("axis", 1)]);
            let one = b.ints(&[1]);
            let t2 = b.op("Unsqueeze", &[&t, &one], vec![]);
            let picked = b.op("GatherElements", &[&logp, &t2], vec![attr_int("axis", 1)]);
            let picked = b.op("Reshape", &[&picked, &flat], vec![]);
            let loss = b.op("Neg", &[&picked], vec![]);
            let pred = b.op(
                "ArgMax",
                &[&z],
                vec![attr_int("axis", 1), attr_int("keepdims", 0)],
            );
            let eq = b.op("Equal", &[&pred, &t], vec![]);
            let correct = b.op("Cast", &[&eq], vec![attr_int("to", 1)]);
            Head {
                loss,
                correct: Some(correct),
            }
        }
        LossKind::Mse => {
            let z = b.op("Reshape", &[output, &flat], vec![]);
            let t = b.op("Reshape", &[target, &flat], vec![]);
            let d = b.op("Sub", &[&z, &t], vec![]);
            let loss = b.op("Mul", &[&d, &d], vec![]);
            let _ = attr_ints; // (kept for heads that reduce over axes)
            Head {
                loss,
                correct: None,
            }
        }
    }
}
