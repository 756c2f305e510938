//! Checkpoints: safetensors files keyed by ONNX initializer names, i.e. what
//! `safetensors.torch.save_file(model.state_dict(), path)` writes for a model exported with
//! `dynamo=True, optimize=False`.
//!
//! Matching a checkpoint against a model ([`super::matching`]) checks every state tensor at once
//! and reports every problem in one message: names missing from the checkpoint, names the model
//! does not have, shape and dtype mismatches; it takes checkpoints as users save them (a DDP
//! prefix with `--strip-prefix`, non-persistent buffers left out, tied weights under one name or
//! two, integer buffers).
use super::matching::{match_state, Entry, Matched, Options};
use super::onnx::{file_kind, hash_stream, At, Model};
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

/// Opens `path` if it is a regular file (checked before opening: opening a FIFO blocks until a
/// writer comes, and a device such as `/dev/zero` never ends); returns it with its size.
pub fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    let io = |e: std::io::Error| crate::error::input(format!("{}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(crate::error::input(format!(
            "{}: not a regular file ({})",
            path.display(),
            file_kind(&meta)
        )));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let opened = file.metadata().map_err(io)?;
    if !opened.is_file() {
        return Err(crate::error::input(format!(
            "{}: not a regular file ({})",
            path.display(),
            file_kind(&opened)
        )));
    }
    Ok((file, opened.len()))
}

/// safetensors' own limit on the JSON header.
const MAX_HEADER: u64 = 100_000_000;

/// A safetensors file's header, checked against the file: the same files the safetensors crate
/// accepts, without holding the file in memory.
struct Layout {
    /// Where the data section starts (8 + the header's length).
    data_start: u64,
    meta: safetensors::tensor::Metadata,
}

impl Layout {
    fn read(file: &mut std::fs::File, len: u64) -> std::result::Result<Layout, String> {
        use std::io::Read;
        if len < 8 {
            return Err(format!(
                "{len} bytes, fewer than the 8 of the header's length"
            ));
        }
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|e| e.to_string())?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER {
            return Err(format!(
                "a header of {n} bytes, more than safetensors' limit of {MAX_HEADER}"
            ));
        }
        if n > len - 8 {
            return Err(format!("a header of {n} bytes in a file of {len} bytes"));
        }
        let mut json = vec![0u8; n as usize];
        file.read_exact(&mut json).map_err(|e| e.to_string())?;
        let text =
            std::str::from_utf8(&json).map_err(|_| "a header that is not UTF-8".to_string())?;
        let meta: safetensors::tensor::Metadata =
            serde_json::from_str(text).map_err(|e| format!("header: {e}"))?;
        // As the crate's own check: the tensors tile the data section from 0 in offset order,
        // each as long as its shape says, and the data section ends the file.
        let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> =
            meta.tensors().into_iter().collect();
        infos.sort_by(|a, b| a.1.data_offsets.cmp(&b.1.data_offsets).then(a.0.cmp(&b.0)));
        let mut at: usize = 0;
        for (name, info) in &infos {
            let (s, e) = info.data_offsets;
            if s != at || e < s {
                return Err(format!(
                    "tensor '{name}' has data offsets [{s}, {e}], expected to start at {at}"
                ));
            }
            let bytes = info
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .and_then(|n| n.checked_mul(info.dtype.size()))
                .ok_or_else(|| {
                    format!(
                        "tensor '{name}' has a shape {:?} too large to address",
                        info.shape
                    )
                })?;
            if e - s != bytes {
                return Err(format!(
                    "tensor '{name}' has {} bytes of data for shape {:?} of {:?} ({bytes} bytes)",
                    e - s,
                    info.shape,
                    info.dtype
                ));
            }
            at = e;
        }
        let data_len = len - 8 - n;
        if at as u64 != data_len {
            return Err(format!(
                "its tensors hold {at} bytes but the file has {data_len} after the header"
            ));
        }
        Ok(Layout {
            data_start: 8 + n,
            meta,
        })
    }

    /// One tensor's bytes, read by its range (checked against the file in [`Layout::read`]).
    fn tensor_bytes(
        &self,
        file: &mut std::fs::File,
        info: &safetensors::tensor::TensorInfo,
    ) -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let (s, e) = info.data_offsets;
        let mut bytes = vec![0u8; e - s];
        file.seek(SeekFrom::Start(self.data_start + s as u64))?;
        file.read_exact(&mut bytes)?;
        Ok(bytes)
    }
}

/// What a file that is not safetensors is, when it is what `torch.save` writes (a zip archive
/// since PyTorch 1.6, a pickle before), with how to convert it.
fn pytorch_file(file: &mut std::fs::File) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_exact(&mut magic).ok()?;
    let what = match magic {
        [b'P', b'K', 3, 4] => "a zip archive, as torch.save writes .pt and .bin files",
        [0x80, 2..=5, ..] => "a Python pickle, as torch.save wrote before PyTorch 1.6",
        _ => return None,
    };
    Some(format!(
        "{what}; save checkpoints with safetensors.torch.save_file(model.state_dict(), path) \
         (save_model(model, path) when weights are tied), or convert this one with \
         save_file({{k: v.clone() for k, v in torch.load(file).items()}}, path)"
    ))
}

/// The step in a checkpoint's name, as training loops name them: `step-00000120`, `step_7`,
/// `step120`, `global_step120`, `iter_40`, `iteration-40`, `epoch1_iter40` and `epoch1_step40`
/// (the iteration or step, not the epoch), `model_step=40`, `checkpoint-500` and `ckpt_3` (a
/// Hugging Face Trainer folder `checkpoint-500/model.safetensors` too: the folder's name when the
/// file's has none). A step or iteration wins over a checkpoint number; the last one in the
/// name wins among equals.
pub fn step_from_name(path: &Path) -> Option<i64> {
    let stem = path.file_stem()?.to_str()?;
    step_in(stem).or_else(|| step_in(path.parent()?.file_name()?.to_str()?))
}

fn step_in(name: &str) -> Option<i64> {
    let lower = name.to_ascii_lowercase();
    let b = lower.as_bytes();
    // Keyword, and its rank: steps and iterations before checkpoint numbers.
    const KEYS: [(&str, u8); 6] = [
        ("step", 2),
        ("iteration", 2),
        ("iter", 2),
        ("it", 2),
        ("checkpoint", 1),
        ("ckpt", 1),
    ];
    let mut best: Option<(u8, usize, i64)> = None;
    for (key, rank) in KEYS {
        let mut from = 0;
        while let Some(i) = lower[from..].find(key).map(|i| i + from) {
            from = i + 1;
            // The keyword starts a word (`global_step` counts, `restep` does not)...
            if i > 0 && b[i - 1].is_ascii_alphabetic() && !lower[..i].ends_with("global_") {
                continue;
            }
            // ...and is followed by an optional separator and digits that end the number.
            let mut j = i + key.len();
            if j < b.len() && matches!(b[j], b'-' | b'_' | b'=') {
                j += 1;
            }
            let end = j + b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
            if end == j || (end < b.len() && b[end].is_ascii_alphabetic()) {
                continue;
            }
            let Ok(n) = lower[j..end].parse::<i64>() else {
                continue;
            };
            if best.is_none_or(|(r, at, _)| (rank, i) > (r, at)) {
                best = Some((rank, i, n));
            }
        }
    }
    best.map(|(_, _, n)| n)
}

/// `--step-from REGEX` applied to `path` as given: the first capture group, else the whole match,
/// as a whole number.
pub fn step_by_pattern(path: &Path, pattern: &str) -> Result<i64> {
    let re = regex::Regex::new(pattern)
        .map_err(|e| crate::error::input(format!("--step-from '{pattern}': {e}")))?;
    let text = path.to_string_lossy();
    let caps = re.captures(&text).ok_or_else(|| {
        crate::error::input(format!(
            "{}: --step-from '{pattern}' does not match this path",
            path.display()
        ))
    })?;
    let m = caps.get(1).or_else(|| caps.get(0)).unwrap();
    m.as_str().parse().map_err(|_| {
        crate::error::input(format!(
            "{}: --step-from '{pattern}' matched '{}', not a whole number",
            path.display(),
            m.as_str()
        ))
    })
}

impl Checkpoint {
    /// A checkpoint's step: `--step-from`'s match in its path when given, else its metadata's
    /// `step`, else its name's ([`step_from_name`]), else -1.
    pub fn step_of(
        path: &Path,
        metadata: &BTreeMap<String, String>,
        opts: &Options,
    ) -> Result<i64> {
        if let Some(p) = &opts.step_from {
            return step_by_pattern(path, p);
        }
        Ok(metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .or_else(|| step_from_name(path))
            .unwrap_or(-1))
    }

    /// A checkpoint of the set that this command does not read (another `--shard`'s): its
    /// place, path, step and metadata, no tensors and no hash.
    pub fn unread(path: PathBuf, step: i64, metadata: BTreeMap<String, String>) -> Checkpoint {
        Checkpoint {
            path,
            step,
            metadata,
            tensors: BTreeMap::new(),
            notes: vec![],
            sha256: String::new(),
        }
    }

    /// Whether the file was read (see [`Checkpoint::unread`]).
    pub fn is_read(&self) -> bool {
        !self.sha256.is_empty()
    }

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
    ///
    /// The header is read and checked first (its length against safetensors' limit and the
    /// file's size, every tensor's offsets against the data section, its byte count against
    /// its shape, in checked arithmetic); then only the tensors the model takes are read, each
    /// by its range. The file's sha256 is streamed.
    pub fn load(path: &Path, model: &Model) -> Result<Checkpoint> {
        Checkpoint::load_with(path, model, &Options::default())
    }

    /// [`Checkpoint::load`] with names mapped as `opts` says (a prefix stripped).
    pub fn load_with(path: &Path, model: &Model, opts: &Options) -> Result<Checkpoint> {
        let (mut file, len) = open_regular(path)?;
        let layout = Layout::read(&mut file, len).map_err(|why| {
            crate::error::input(match pytorch_file(&mut file) {
                Some(what) => format!("{}: not a safetensors file: {what}", path.display()),
                None => format!("{}: not a safetensors file ({why})", path.display()),
            })
        })?;
        // The file's SHA-256 on a thread of its own, reading by offset (pread) through a second
        // handle, while this one reads the tensors: SHA-256 of a 400 MB checkpoint is ~0.2 s
        // of one core.
        let hashed = file
            .try_clone()
            .map_err(|e| crate::error::input(format!("{}: {e}", path.display())))?;
        let hasher = std::thread::spawn(move || -> std::io::Result<String> {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            hash_stream(
                &mut At {
                    file: hashed,
                    at: 0,
                },
                &mut h,
            )?;
            Ok(format!("{:x}", h.finalize()))
        });
        let metadata: BTreeMap<String, String> = layout
            .meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();

        let mut entries: Vec<Entry> = Vec::new();
        let mut infos = BTreeMap::new();
        for (file_name, view) in layout.meta.tensors() {
            let name = match &opts.strip_prefix {
                Some(p) => file_name.strip_prefix(p.as_str()).unwrap_or(&file_name),
                None => &file_name,
            };
            entries.push(Entry {
                name: name.to_string(),
                file_name: file_name.clone(),
                dtype: st_dtype(view.dtype),
                file_dtype: format!("{:?}", view.dtype),
                shape: view.shape.clone(),
                renamed: false,
            });
            infos.insert(file_name, view);
        }
        let read = |e: &Entry| -> Result<HostTensor> {
            let fail = |why: String| {
                crate::error::input(format!("{}: '{}': {why}", path.display(), e.file_name))
            };
            let view = infos[&e.file_name];
            let bytes = layout
                .tensor_bytes(&mut file, view)
                .map_err(|err| fail(err.to_string()))?;
            // Only entries whose element type probe reads are read.
            let dtype = e.dtype.ok_or_else(|| fail("unsupported dtype".into()))?;
            HostTensor::from_le_bytes(dtype, e.shape.clone(), &bytes)
                .map_err(|err| fail(err.to_string()))
        };
        let matched = match_state(path, model, &entries, opts, read);
        let sha256 = hasher
            .join()
            .map_err(|_| crate::error::input(format!("{}: hashing failed", path.display())))?
            .map_err(|e| crate::error::input(format!("{}: {e}", path.display())))?;
        let Matched { tensors, notes } = matched?;
        let step = Checkpoint::step_of(path, &metadata, opts)?;
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
        for (name, want) in [
            ("step120.safetensors", Some(120)),
            ("global_step300.safetensors", Some(300)),
            ("iter_40.safetensors", Some(40)),
            ("iteration-41.safetensors", Some(41)),
            ("epoch1_iter40.safetensors", Some(40)),
            ("epoch2_step77.safetensors", Some(77)),
            ("model_step=9.safetensors", Some(9)),
            ("ckpt_3.safetensors", Some(3)),
            ("runs/r/checkpoint-500/model.safetensors", Some(500)),
            ("checkpoint-500_step-20.safetensors", Some(20)),
            ("restep5.safetensors", None),
            ("step-5a.safetensors", None),
            ("steps.safetensors", None),
            ("split_3.safetensors", None),
        ] {
            assert_eq!(step_from_name(Path::new(name)), want, "{name}");
        }
        let p = Path::new("runs/ep12.safetensors");
        assert_eq!(step_by_pattern(p, r"ep(\d+)").unwrap(), 12);
        assert!(step_by_pattern(p, r"x(\d+)").is_err());
        assert!(step_by_pattern(p, r"ep").is_err());
    }
}
