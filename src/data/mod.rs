//! Data sets as deterministic, ordered streams of batches.
//!
//! Every data set is `N` samples, each an input `x` (a tensor of fixed per-sample shape, float or
//! integer) and a target `y` (a class id, shape `[]`, or token ids `[T]`, or real values for
//! `--loss mse`). A batch is the samples `start..start+count` in file order: no shuffling and no
//! augmentation, so a full pass visits every sample exactly once in a fixed order.
//!
//! Names understood by [`open`]:
//! - `fashion-mnist` / `fashion-mnist:train` / `fashion-mnist:test`: Debian's
//!   `dataset-fashion-mnist` (IDX, gzipped), images normalized as `(px/255 - 0.2860) / 0.3530`.
//! - `shakespeare`: 42 plays and poems as one character stream, windows of `T` (see
//!   [`shakespeare`]).
//! - any path ending in `.h5` / `.hdf5`: a file with datasets `x` [N, ...] and `y` [N] or [N, T],
//!   read by slices so memory does not grow with N; `FILE.h5:GROUP:x=KEY,y=KEY` names other
//!   datasets (see [`hdf5_file`]).
//! - `tokens:FILE[:T][:stride=S][:dtype=uint16|uint32]`: a flat token stream (`.bin`, `.npy`)
//!   cut into windows (see [`tokens`]).
//! - `imagefolder:DIR[:resize=256,crop=224,...]`: an ImageNet-layout folder of JPEG and PNG files
//!   through torchvision's evaluation transform (see [`imagefolder`]).
//!
//! `--samples A:B` ([`Samples`]) and `--limit` ([`Limited`]) restrict any of them.

pub mod batch;
pub mod check;
pub mod fashion_mnist;
pub mod hdf5_file;
pub mod image_decode;
pub mod image_ops;
pub mod imagefolder;
pub mod memory;
pub mod normalize;
pub mod npy;
pub mod rng;
pub mod shakespeare;
pub mod tokens;

pub use batch::{batches, Array, Batch, Dataset, Kind, Limited, Samples, Spec};
pub use memory::{memory_limit, sample_bytes, samples_bytes};
pub use normalize::Normalize;

use anyhow::Result;

/// What the model expects, so a data set with a free parameter (Shakespeare's window length) can
/// fit it: the model's per-sample input shape where it is static; and how the command line asks
/// for the input to be prepared.
#[derive(Debug, Clone, Default)]
pub struct Hint {
    pub x_shape: Option<Vec<usize>>,
    /// `--mean/--std`.
    pub normalize: Option<Normalize>,
}

/// Where in an HDF5 file `spec` points, if it names one.
fn hdf5_spec(spec: &str) -> Option<Result<hdf5_file::H5Spec>> {
    let lower = spec.to_ascii_lowercase();
    if lower.ends_with(".h5") || lower.ends_with(".hdf5") || std::path::Path::new(spec).is_file() {
        return Some(Ok(hdf5_file::H5Spec::plain(std::path::Path::new(spec))));
    }
    if lower.starts_with("tokens:") {
        return None;
    }
    hdf5_file::H5Spec::parse(spec)
}

/// Checks an HDF5 data file's metadata in a child process now, before the caller loads a model
/// (see [`hdf5_file::preflight_early`]); [`open`] uses the verdict. Any other spec: nothing.
pub fn preflight(spec: &str) {
    if let Some(Ok(at)) = hdf5_spec(spec) {
        hdf5_file::preflight_early(&at);
    }
}

/// Opens a data set by name or path (see the module docs).
pub fn open(spec: &str, hint: &Hint) -> Result<Box<dyn Dataset>> {
    if let Some(at) = hdf5_spec(spec) {
        return Ok(Box::new(hdf5_file::Hdf5Data::open_at(
            &at?,
            hint.normalize.as_ref(),
        )?));
    }
    if hint.normalize.is_some() {
        return Err(crate::error::input(format!(
            "--data {spec}: --mean/--std normalize images stored in an HDF5 file; this data set is not one"
        )));
    }
    let (name, split) = match spec.split_once(':') {
        Some((n, s)) => (n, Some(s)),
        None => (spec, None),
    };
    match name {
        "fashion-mnist" => {
            let split = match split.unwrap_or("train") {
                "train" => fashion_mnist::Split::Train,
                "test" => fashion_mnist::Split::Test,
                other => {
                    return Err(crate::error::input(format!(
                        "--data {spec}: unknown split '{other}' (fashion-mnist has 'train' and 'test')"
                    )))
                }
            };
            Ok(Box::new(fashion_mnist::FashionMnist::open(split)?))
        }
        "shakespeare" => {
            let t = match split {
                Some(s) => s.strip_prefix("T=").unwrap_or(s).parse::<usize>().map_err(|_| {
                    crate::error::input(format!("--data {spec}: expected shakespeare or shakespeare:T (window length)"))
                })?,
                None => match hint.x_shape.as_deref() {
                    Some([t]) => *t,
                    _ => shakespeare::DEFAULT_WINDOW,
                },
            };
            Ok(Box::new(shakespeare::Shakespeare::open(t)?))
        }
        "tokens" => {
            let ts = tokens::parse(spec, split.unwrap_or(""))?;
            // The window a model fixes: its per-sample input shape [T].
            let model_window = match hint.x_shape.as_deref() {
                Some([t]) => Some(*t),
                _ => None,
            };
            Ok(Box::new(tokens::Tokens::open(&ts, model_window)?))
        }
        "imagefolder" => Ok(Box::new(imagefolder::ImageFolder::open(
            spec,
            split.unwrap_or(""),
        )?)),
        _ => Err(crate::error::input(format!(
            "--data {spec}: no such file, and not a data set probe knows (fashion-mnist[:train|:test], shakespeare[:T], tokens:FILE[:T], imagefolder:DIR, or an .h5 file with x and y)"
        ))),
    }
}

/// [`open`], then `--samples A:B` (samples A..B), then `--limit N` (the first N of what is left).
pub fn open_restricted(
    spec: &str,
    hint: &Hint,
    samples: Option<(usize, usize)>,
    limit: Option<usize>,
) -> Result<Box<dyn Dataset>> {
    let mut data = open(spec, hint)?;
    if let Some((a, b)) = samples {
        data = Box::new(Samples::new(data, a, b)?);
    }
    if let Some(l) = limit {
        data = Box::new(Limited::new(data, l));
    }
    Ok(data)
}
