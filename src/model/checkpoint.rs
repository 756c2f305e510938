//! Checkpoints: safetensors files keyed by ONNX initializer names, i.e. what
//! `safetensors.torch.save_file(model.state_dict(), path)` writes for a model exported with
//! `dynamo=True, optimize=False`.
//!
//! Matching a checkpoint against a model checks every state tensor at once and reports every
//! problem in one message: names missing from the checkpoint, names the model does not have, shape
//! and dtype mismatches. Integer buffers (BatchNorm's `num_batches_tracked`) are not part of the
//! ONNX graph's computation; they are skipped with a note.
use super::{Model, Role};
use crate::tensor::{DType, HostTensor};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    pub path: PathBuf,
    /// Training step: the safetensors metadata's `step`, else the file name's `step-<n>`, else -1.
    pub step: i64,
    pub metadata: BTreeMap<String, String>,
    /// State tensors by initializer name (parameters and buffers).
    pub tensors: BTreeMap<String, HostTensor>,
    /// Things skipped on the way (integer buffers), for the log.
    pub notes: Vec<String>,
    /// sha256 of the file, or of the model for the model's own state.
    pub sha256: String,
}

fn st_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::I64 => DType::I64,
        S::I32 => DType::I32,
        S::I16 => DType::I16,
        S::I8 => DType::I8,
        S::U8 => DType::U8,
        S::BOOL => DType::Bool,
        _ => return None,
    })
}

/// `step-00000120.safetensors` -> 120.
pub fn step_from_name(path: &Path) -> Option<i64> {
    let stem = path.file_stem()?.to_str()?;
    let digits = stem.rsplit(['-', '_']).next()?;
    if stem.len() > digits.len() && stem[..stem.len() - digits.len() - 1].ends_with("step") {
        digits.parse().ok()
    } else {
        None
    }
}

impl Checkpoint {
    /// The model's own initializers as a checkpoint (no `--ckpt`).
    pub fn from_model(model: &Model) -> Result<Checkpoint> {
        Ok(Checkpoint {
            path: model.path.clone(),
            step: -1,
            metadata: BTreeMap::new(),
            tensors: model.own_state()?,
            notes: vec![],
            sha256: model.sha256.clone(),
        })
    }

    /// Reads and matches every checkpoint before any work: one that does not fit fails the run
    /// at once, and when several do not, every one is named in the error.
    pub fn load_all(paths: &[std::path::PathBuf], model: &Model) -> Result<Vec<Checkpoint>> {
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for p in paths {
            match Checkpoint::load(p, model) {
                Ok(c) => ok.push(c),
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(ok),
            1 => Err(errors.pop().unwrap()),
            n => {
                let msg = errors
                    .iter()
                    .map(|e| format!("{e:#}"))
                    .collect::<Vec<_>>()
                    .join(" | ");
                Err(crate::error::input(format!(
                    "{n} checkpoints do not fit: {msg}"
                )))
            }
        }
    }

    /// Reads `path` and checks it against `model`; every mismatch is listed in one error.
    pub fn load(path: &Path, model: &Model) -> Result<Checkpoint> {
        let bytes = std::fs::read(path)
            .map_err(|e| crate::error::input(format!("{}: {e}", path.display())))?;
        let sha256 = {
            use sha2::{Digest, Sha256};
            format!("{:x}", Sha256::digest(&bytes))
        };
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            crate::error::input(format!("{}: not a safetensors file ({e})", path.display()))
        })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
            crate::error::input(format!("{}: not a safetensors file ({e})", path.display()))
        })?;
        let metadata: BTreeMap<String, String> = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();

        let mut tensors = BTreeMap::new();
        let mut ignored = Vec::new();
        let mut extra = Vec::new();
        let mut wrong = Vec::new();
        for (name, view) in st.tensors() {
            let dtype = st_dtype(view.dtype());
            let info = model.param(&name).filter(|p| p.role != Role::Constant);
            let Some(info) = info else {
                if dtype.is_some_and(|d| !d.is_float()) {
                    ignored.push(name);
                } else {
                    extra.push(name);
                }
                continue;
            };
            let Some(dtype) = dtype else {
                wrong.push(format!(
                    "'{name}' has dtype {:?}, model {}",
                    view.dtype(),
                    info.dtype
                ));
                continue;
            };
            if dtype.is_float() != info.dtype.is_float() {
                wrong.push(format!(
                    "'{name}' is {dtype} in the checkpoint, {} in the model",
                    info.dtype
                ));
                continue;
            }
            if view.shape() != info.shape.as_slice() {
                wrong.push(format!(
                    "'{name}' has shape {:?} in the checkpoint, {:?} in the model",
                    view.shape(),
                    info.shape
                ));
                continue;
            }
            let t = HostTensor::from_le_bytes(dtype, view.shape().to_vec(), view.data())
                .map_err(|e| crate::error::input(format!("{}: '{name}': {e}", path.display())))?;
            tensors.insert(name, t);
        }
        let missing: Vec<&str> = model
            .state()
            .map(|p| p.name.as_str())
            .filter(|n| {
                !tensors.contains_key(*n) && !wrong.iter().any(|w| w.starts_with(&format!("'{n}'")))
            })
            .collect();
        // safetensors lists tensors in hash order: sort, so the same file gives the same message.
        extra.sort();
        wrong.sort();
        if !missing.is_empty() || !extra.is_empty() || !wrong.is_empty() {
            let mut parts = Vec::new();
            if !missing.is_empty() {
                parts.push(format!(
                    "missing {} of the model's tensors: {}",
                    missing.len(),
                    missing.join(", ")
                ));
            }
            if !extra.is_empty() {
                let mut s = format!(
                    "{} tensors the model does not have: {}",
                    extra.len(),
                    extra.join(", ")
                );
                if extra
                    .iter()
                    .any(|n| n.contains("running_mean") || n.contains("running_var"))
                {
                    s.push_str(
                        " (BatchNorm statistics with no match in the graph: was the model exported with \
                         BatchNorm folded into Conv? export with torch.onnx.export(..., dynamo=True, optimize=False))",
                    );
                }
                parts.push(s);
            }
            parts.extend(wrong);
            return Err(crate::error::input(format!(
                "{}: checkpoint does not fit {}: {}",
                path.display(),
                model.path.display(),
                parts.join("; ")
            )));
        }
        let mut notes = Vec::new();
        if !ignored.is_empty() {
            ignored.sort();
            notes.push(format!(
                "ignored {} integer buffer(s) the ONNX graph does not use: {}",
                ignored.len(),
                ignored.join(", ")
            ));
        }
        let step = metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .or_else(|| step_from_name(path))
            .unwrap_or(-1);
        Ok(Checkpoint {
            path: path.to_path_buf(),
            step,
            metadata,
            tensors,
            notes,
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn steps_from_file_names() {
        assert_eq!(
            step_from_name(Path::new("ckpts/step-00000120.safetensors")),
            Some(120)
        );
        assert_eq!(step_from_name(Path::new("step_7.safetensors")), Some(7));
        assert_eq!(step_from_name(Path::new("epoch-3.safetensors")), None);
        assert_eq!(step_from_name(Path::new("model.safetensors")), None);
    }
}
