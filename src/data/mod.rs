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
//!   read by slices so memory does not grow with N.
//! - `imagefolder:DIR[:resize=256,crop=224,...]`: an ImageNet-layout folder of JPEG and PNG files
//!   through torchvision's evaluation transform (see [`imagefolder`]).

pub mod batch;
pub mod check;
pub mod fashion_mnist;
pub mod hdf5_file;
pub mod image_decode;
pub mod image_ops;
pub mod imagefolder;
pub mod memory;
pub mod rng;
pub mod shakespeare;

pub use batch::{batches, Array, Batch, Dataset, Kind, Limited, Spec};
pub use memory::{memory_limit, sample_bytes, samples_bytes};

use anyhow::Result;

/// What the model expects, so a data set with a free parameter (Shakespeare's window length) can
/// fit it: the model's per-sample input shape where it is static.
#[derive(Debug, Clone, Default)]
pub struct Hint {
    pub x_shape: Option<Vec<usize>>,
}

/// Opens a data set by name or path (see the module docs).
pub fn open(spec: &str, hint: &Hint) -> Result<Box<dyn Dataset>> {
    let lower = spec.to_ascii_lowercase();
    if lower.ends_with(".h5") || lower.ends_with(".hdf5") || std::path::Path::new(spec).is_file() {
        return Ok(Box::new(hdf5_file::Hdf5Data::open(std::path::Path::new(
            spec,
        ))?));
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
        "imagefolder" => Ok(Box::new(imagefolder::ImageFolder::open(
            spec,
            split.unwrap_or(""),
        )?)),
        _ => Err(crate::error::input(format!(
            "--data {spec}: no such file, and not a data set probe knows (fashion-mnist[:train|:test], shakespeare[:T], or an .h5 file with x and y)"
        ))),
    }
}
