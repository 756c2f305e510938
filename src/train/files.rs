//! The run folder of `probe train` and how files get into it.
//!
//! ```text
//! DIR/step-00000000.safetensors          the initial weights (step 0)
//! DIR/step-<8-digit step>.safetensors    weights after that many optimizer steps: every state
//!                                        tensor (parameters and BatchNorm running statistics) by
//!                                        ONNX initializer name, float32; metadata below
//! DIR/optim/step-<8-digit step>.safetensors  the optimizer's state at that step
//! DIR/train.h5                           the training log (see `super::run`)
//! ```
//!
//! The optimizer state lives in its own folder so that `DIR/*.safetensors` and
//! `DIR/step-*.safetensors`, the globs users give `probe eval`/`probe grad`, name the weights
//! only. Runs made before this layout kept it as `DIR/step-<8-digit step>.optim.safetensors`;
//! `--resume` still reads it there ([`find_optim`]), `--force` still removes it, and `probe
//! eval`/`probe grad` skip such files with a note (`model::checkpoint_set`).
//!
//! Every file is written under a temporary name in the same folder (`.probe-tmp-<pid>-<name>`),
//! synced, then renamed, so a file with a final name is always complete. Within a checkpoint the
//! optimizer state is renamed into place before the weights: a weights file whose name is final
//! always has its optimizer state beside it.
use anyhow::Result;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub const LOG_NAME: &str = "train.h5";
const TMP_PREFIX: &str = ".probe-tmp-";

pub fn weights_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}.safetensors"))
}

/// The folder of the optimizer states, inside the run folder.
pub const OPTIM_DIR: &str = "optim";

/// Where a checkpoint's optimizer state is written.
pub fn optim_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(OPTIM_DIR)
        .join(format!("step-{step:08}.safetensors"))
}

/// Where runs made before the `optim/` folder kept it.
fn legacy_optim_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}.optim.safetensors"))
}

/// The optimizer state of the checkpoint at `step`: in `optim/`, else where older runs kept it.
pub fn find_optim(dir: &Path, step: u64) -> Option<PathBuf> {
    [optim_path(dir, step), legacy_optim_path(dir, step)]
        .into_iter()
        .find(|p| p.is_file())
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename; the folder
/// is created if missing (`optim/` at a run's first checkpoint).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(dir)
            .map_err(|e| crate::error::output(format!("{}: {e}", dir.display())))?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!("{TMP_PREFIX}{}-{name}", std::process::id()));
    let err = |e: std::io::Error| crate::error::output(format!("{}: {e}", path.display()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// Checkpoints in `dir` as (step, weights file), by step; optimizer-state files are not listed.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(crate::error::input(format!("{}: {e}", dir.display()))),
    };
    for entry in rd {
        let entry = entry.map_err(|e| crate::error::input(format!("{}: {e}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(digits) = name
            .strip_prefix("step-")
            .and_then(|r| r.strip_suffix(".safetensors"))
        else {
            continue;
        };
        if let Ok(step) = digits.parse::<u64>() {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The files a run leaves in `dir` and `dir/optim` (checkpoints, optimizer states, the log,
/// stale temporaries).
pub fn run_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in [dir.to_path_buf(), dir.join(OPTIM_DIR)] {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let ours = (name.starts_with("step-") && name.ends_with(".safetensors"))
                || (name == LOG_NAME && d == dir)
                || (name == crate::measure::follow::DONE_MARKER && d == dir)
                || name.starts_with(TMP_PREFIX);
            if ours {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Removes temporary files a killed run left behind (in `dir` and `dir/optim`).
pub fn remove_stale_temporaries(dir: &Path) {
    for d in [dir.to_path_buf(), dir.join(OPTIM_DIR)] {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for entry in rd.flatten() {
                if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// A tch tensor's values on the host, in the element type it has (float32 for floating point
/// other than f64's, which are narrowed: checkpoints are float32).
pub fn host_bytes(t: &Tensor) -> Result<(safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let t = t.f_detach()?.f_to_device(Device::Cpu)?;
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    let kind = t.f_kind()?;
    if matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        let t = t.f_to_kind(Kind::Float)?.f_contiguous()?;
        let mut v = vec![0f32; n];
        t.f_copy_data(&mut v, n)?;
        Ok((
            safetensors::Dtype::F32,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ))
    } else {
        let t = t.f_to_kind(Kind::Int64)?.f_contiguous()?;
        let mut v = vec![0i64; n];
        t.f_copy_data(&mut v, n)?;
        Ok((
            safetensors::Dtype::I64,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ))
    }
}

/// Serializes named tch tensors (by name order) with metadata as safetensors bytes.
pub fn safetensors_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut owned = Vec::new();
    for (name, t) in tensors {
        let (d, s, b) = host_bytes(t)?;
        owned.push((name.to_string(), d, s, b));
    }
    owned.sort_by(|a, b| a.0.cmp(&b.0));
    let views = owned
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let meta: std::collections::HashMap<String, String> = metadata.clone().into_iter().collect();
    Ok(safetensors::tensor::serialize(views, &Some(meta))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_listing_and_atomic_writes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(
            weights_path(d, 5).file_name().unwrap(),
            "step-00000005.safetensors"
        );
        assert_eq!(
            optim_path(d, 123),
            d.join("optim").join("step-00000123.safetensors")
        );
        write_atomic(&weights_path(d, 10), b"ten").unwrap();
        write_atomic(&weights_path(d, 2), b"two").unwrap();
        // The optim/ folder is made by the first write into it.
        write_atomic(&optim_path(d, 10), b"opt").unwrap();
        // A run from before the optim/ folder: its state beside the weights.
        std::fs::write(legacy_optim_path(d, 2), b"old").unwrap();
        assert_eq!(find_optim(d, 10), Some(optim_path(d, 10)));
        assert_eq!(find_optim(d, 2), Some(legacy_optim_path(d, 2)));
        assert_eq!(find_optim(d, 3), None);
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        std::fs::write(d.join(".probe-tmp-1-step-00000011.safetensors"), "half").unwrap();
        std::fs::write(
            d.join("optim/.probe-tmp-1-step-00000011.safetensors"),
            "half",
        )
        .unwrap();
        let steps: Vec<u64> = list_checkpoints(d)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, [2, 10]);
        assert_eq!(run_files(d).unwrap().len(), 6);
        remove_stale_temporaries(d);
        assert_eq!(run_files(d).unwrap().len(), 4);
        assert_eq!(std::fs::read(weights_path(d, 10)).unwrap(), b"ten");
        // No temporary is left behind by a successful write.
        assert!(std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(TMP_PREFIX)));
        assert!(list_checkpoints(&d.join("missing")).unwrap().is_empty());
    }

    #[test]
    fn tensors_serialize_with_metadata() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let b = Tensor::from_slice(&[7i64]).reshape(Vec::<i64>::new());
        let meta = [("step".to_string(), "3".to_string())].into();
        let bytes = safetensors_bytes([("w", &a), ("n", &b)], &meta).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let w = st.tensor("w").unwrap();
        assert_eq!(w.shape(), [2, 2]);
        assert_eq!(w.dtype(), safetensors::Dtype::F32);
        assert_eq!(&w.data()[4..8], &2.0f32.to_le_bytes());
        assert_eq!(st.tensor("n").unwrap().shape(), [] as [usize; 0]);
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(m.metadata().as_ref().unwrap()["step"], "3");
    }
}
