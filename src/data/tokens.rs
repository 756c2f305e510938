//! A flat stream of token ids in one file, as nanoGPT's `prepare.py` and many language-model
//! codebases write it, cut into windows for next-token prediction.
//!
//! Named `tokens:FILE[:T][:stride=S][:dtype=uint16|uint32]`, options in any order after FILE:
//! - FILE ending in `.npy`: a NumPy array of any integer type, one-dimensional (its header
//!   states the type and length); any other name: raw ids with no header, `uint16` little-endian
//!   (nanoGPT's `train.bin`) unless `dtype=uint32` says so.
//! - `T` (or `T=..`): the window length; default the model's sequence length, where its input
//!   shape fixes one.
//! - `stride=S`: window `i` starts at token `i*S` (default `S = T`: windows side by side, every
//!   target used once; `S < T` overlaps them).
//!
//! Sample `i` is `x = s[iS .. iS+T]`, `y = s[iS+1 .. iS+T+1]`, for every `i` whose `y` lies
//! inside the stream: `N = (n - T - 1) / S + 1` windows of a stream of `n` tokens. Batches are
//! read from the file by byte ranges (`pread`), so memory does not grow with `n`.
//!
//! Token ids are checked where reading them is free: a negative id, or one past `i64`, is an
//! error naming the file and the token's position. Whether an id is inside the model's
//! vocabulary is checked per batch on `y` against the model's output classes (as for every
//! data set); as `x` is `y` shifted by one, that covers every id of `x` but the stream's first.
use super::batch::{Array, Batch, Dataset, Kind, Spec};
use super::npy::{self, IntType};
use anyhow::Result;
use ndarray::{ArrayD, IxDyn};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// What a `tokens:` name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub path: PathBuf,
    pub window: Option<usize>,
    pub stride: Option<usize>,
    /// For raw files only (`.npy` states its own type).
    pub dtype: Option<IntType>,
}

/// Parses the part after `tokens:`. Options are taken from the right, so a FILE with `:` in its
/// name still works as long as its last part does not look like an option.
pub fn parse(spec: &str, rest: &str) -> Result<TokenSpec> {
    let usage = |why: String| {
        crate::error::input(format!(
            "--data {spec}: {why} (expected tokens:FILE[:T][:stride=S][:dtype=uint16|uint32])"
        ))
    };
    let mut parts: Vec<&str> = rest.split(':').collect();
    let mut out = TokenSpec {
        path: PathBuf::new(),
        window: None,
        stride: None,
        dtype: None,
    };
    while parts.len() > 1 {
        let last = *parts.last().unwrap();
        let (key, value) = match last.split_once('=') {
            Some((k, v)) => (k, v),
            None if last.bytes().all(|b| b.is_ascii_digit()) && !last.is_empty() => ("T", last),
            None => break,
        };
        let count = |what: &str| {
            value
                .parse::<usize>()
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| usage(format!("{what} '{value}' is not a whole number >= 1")))
        };
        match key {
            "T" if out.window.is_none() => out.window = Some(count("the window length T")?),
            "stride" if out.stride.is_none() => out.stride = Some(count("the stride")?),
            "dtype" if out.dtype.is_none() => {
                out.dtype = Some(match value {
                    "uint16" | "u2" => IntType::U16,
                    "uint32" | "u4" => IntType::U32,
                    _ => return Err(usage(format!("dtype '{value}' is not uint16 or uint32"))),
                })
            }
            "T" | "stride" | "dtype" => return Err(usage(format!("'{key}' is given twice"))),
            _ => return Err(usage(format!("unknown option '{key}'"))),
        }
        parts.pop();
    }
    let file = parts.join(":");
    if file.is_empty() {
        return Err(usage("no file named".into()));
    }
    out.path = PathBuf::from(file);
    Ok(out)
}

pub struct Tokens {
    spec: Spec,
    path: PathBuf,
    file: File,
    /// Byte offset of token 0.
    offset: u64,
    int: IntType,
    tokens: u64,
    window: usize,
    stride: usize,
}

impl Tokens {
    /// Opens the file of `ts`; `model_window` is the model's sequence length where fixed.
    pub fn open(ts: &TokenSpec, model_window: Option<usize>) -> Result<Tokens> {
        let path = &ts.path;
        let at = |why: String| crate::error::input(format!("{}: {why}", path.display()));
        let file = File::open(path).map_err(|e| {
            at(if e.kind() == std::io::ErrorKind::NotFound {
                "no such file".into()
            } else {
                e.to_string()
            })
        })?;
        let meta = file.metadata().map_err(|e| at(e.to_string()))?;
        if !meta.is_file() {
            return Err(at(format!(
                "not a regular file ({})",
                crate::model::file_kind(&meta)
            )));
        }
        let is_npy = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
        let (offset, int, tokens) = if is_npy {
            if ts.dtype.is_some() {
                return Err(at(
                    "dtype= is for raw token files; a .npy file states its own type".into(),
                ));
            }
            let mut head = vec![0u8; meta.len().min(1 << 16) as usize];
            file.read_exact_at(&mut head, 0)
                .map_err(|e| at(e.to_string()))?;
            let h = npy::parse_header(path, &head)?;
            let int = h.int.ok_or_else(|| {
                at(format!(
                    "dtype '{}' is not an integer type; a token file holds integer ids",
                    h.descr
                ))
            })?;
            let n = match h.shape.as_slice() {
                [n] => *n as u64,
                s => {
                    return Err(at(format!(
                        "has shape {s:?}; a token file holds one flat stream (a 1-D array)"
                    )))
                }
            };
            let want = (n as u128) * int.bytes as u128 + h.data_offset as u128;
            if want != meta.len() as u128 {
                return Err(at(format!(
                    "its header says {n} {} tokens ({want} bytes with the header) but the file has {} bytes: {}",
                    int.name(),
                    meta.len(),
                    if want > meta.len() as u128 { "the file was cut short" } else { "the file is corrupt" }
                )));
            }
            (h.data_offset, int, n)
        } else {
            let int = ts.dtype.unwrap_or(IntType::U16);
            if meta.len() % int.bytes as u64 != 0 {
                return Err(at(format!(
                    "{} bytes is not a whole number of {} tokens ({} bytes each): another dtype, or a file cut short",
                    meta.len(),
                    int.name(),
                    int.bytes
                )));
            }
            (0, int, meta.len() / int.bytes as u64)
        };
        let window = match ts.window.or(model_window) {
            Some(t) => t,
            None => return Err(at(
                "the model's input has no fixed sequence length; give the window as tokens:FILE:T"
                    .into(),
            )),
        };
        let stride = ts.stride.unwrap_or(window);
        let span = window as u64 + 1;
        if tokens < span {
            return Err(at(format!(
                "{tokens} tokens, too few for one window of T = {window} (x and y need T + 1 = {span})"
            )));
        }
        let len = (tokens - span) / stride as u64 + 1;
        let len = usize::try_from(len).map_err(|_| at(format!("{len} windows: too many")))?;
        let mut identity = format!("tokens:{}:T={window}", path.display());
        if stride != window {
            identity += &format!(":stride={stride}");
        }
        if !is_npy {
            identity += &format!(":dtype={}", int.name());
        }
        Ok(Tokens {
            spec: Spec {
                identity,
                len,
                x_shape: vec![window],
                x_kind: Kind::Int,
                y_shape: vec![window],
                y_kind: Kind::Int,
            },
            path: path.clone(),
            file,
            offset,
            int,
            tokens,
            window,
            stride,
        })
    }

    /// Tokens `first .. first + n` as i64, checked.
    fn tokens(&self, first: u64, n: usize) -> Result<Vec<i64>> {
        let size = self.int.bytes;
        let mut raw = vec![0u8; n * size];
        self.file
            .read_exact_at(&mut raw, self.offset + first * size as u64)
            .map_err(|e| {
                crate::error::input(format!(
                    "{}: reading tokens {first}..{}: {e}",
                    self.path.display(),
                    first + n as u64
                ))
            })?;
        raw.chunks_exact(size)
            .enumerate()
            .map(|(k, b)| {
                let v = self.int.decode(b);
                i64::try_from(v).ok().filter(|&v| v >= 0).ok_or_else(|| {
                    crate::error::input(format!(
                        "{}: token {} has id {v}; token ids are whole numbers >= 0",
                        self.path.display(),
                        first + k as u64
                    ))
                })
            })
            .collect()
    }
}

impl Dataset for Tokens {
    fn spec(&self) -> &Spec {
        &self.spec
    }
    fn read(&mut self, start: usize, count: usize) -> Result<Batch> {
        let (t, s) = (self.window, self.stride as u64);
        let mut x = Vec::with_capacity(count * t);
        let mut y = Vec::with_capacity(count * t);
        // Windows that touch or overlap are read as one range; far-apart ones one by one, so a
        // batch never reads the gaps between them.
        let joined = self.stride <= t + 1;
        let first = start as u64 * s;
        let all = if joined {
            let end = (start + count - 1) as u64 * s + t as u64 + 1;
            debug_assert!(end <= self.tokens);
            Some(self.tokens(first, (end - first) as usize)?)
        } else {
            None
        };
        for i in 0..count as u64 {
            let at = (start as u64 + i) * s;
            let w = match &all {
                Some(all) => {
                    let o = (at - first) as usize;
                    std::borrow::Cow::Borrowed(&all[o..o + t + 1])
                }
                None => std::borrow::Cow::Owned(self.tokens(at, t + 1)?),
            };
            x.extend_from_slice(&w[..t]);
            y.extend_from_slice(&w[1..]);
        }
        Ok(Batch {
            start,
            x: Array::I64(ArrayD::from_shape_vec(IxDyn(&[count, t]), x)?),
            y: Array::I64(ArrayD::from_shape_vec(IxDyn(&[count, t]), y)?),
        })
    }
}
