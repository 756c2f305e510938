//! Which samples each training step sees, and how they are augmented: a pure function of
//! (seed, epoch, step), so a resumed run re-derives exactly what an uninterrupted one would use.
//!
//! - An epoch is `ceil(N / B)` steps; its last batch is smaller when B does not divide N (PyTorch's
//!   `DataLoader(drop_last=False)`). Step `s` (1-based) is batch `(s - 1) % steps_per_epoch` of
//!   epoch `(s - 1) / steps_per_epoch` (0-based).
//! - `--no-shuffle`: every epoch visits the samples in file order. `--shuffle`: epoch `e` visits
//!   them in the order of a Fisher-Yates permutation drawn from the stream `(seed, "shuffle", e)`.
//! - `--augment` (images `[N, C, H, W]`): each sample of step `s` at batch position `j` draws from
//!   the stream `(seed, "augment", s, j)` a crop offset `(dy, dx)` in `0..=8` and a flip bit: the
//!   image is zero-padded by 4 pixels on each side (zero in the stored, normalized units), the
//!   `H x W` window at `(dy, dx)` is kept, then mirrored left-right if the bit is set
//!   (torchvision's `RandomCrop(size, padding=4)` then `RandomHorizontalFlip()`).
//!
//! The streams are SplitMix64 (Steele, Lea, Flood 2014) seeded by hashing their key; integers in
//! `0..n` are `(u64 * n) >> 64` (bias below n / 2^64). No libtorch or OS randomness is involved,
//! so the order is the same on every machine.
use crate::data::rng::Rng;
use crate::data::{Array, Dataset, Kind, Spec};
use crate::runtime::torch::to_tensor;
use anyhow::Result;
use tch::{Device, Tensor};

const SHUFFLE: u64 = 0x5348_5546_464c_4531; // "SHUFFLE1"
const AUGMENT: u64 = 0x4155_474d_454e_5431; // "AUGMENT1"
/// Zero padding of the random crop, in pixels per side.
pub const PAD: usize = 4;

/// Epoch `epoch`'s order of the samples `0..n`.
pub fn permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    let mut rng = Rng::keyed(seed, SHUFFLE, epoch, 0);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// Crop offset (0..=2*PAD each) and flip for the sample at position `j` of step `step`.
pub fn augmentation(seed: u64, step: u64, j: usize) -> (usize, usize, bool) {
    let mut rng = Rng::keyed(seed, AUGMENT, step, j as u64);
    let dy = rng.below(2 * PAD as u64 + 1) as usize;
    let dx = rng.below(2 * PAD as u64 + 1) as usize;
    let flip = rng.next_u64() >> 63 == 1;
    (dy, dx, flip)
}

/// Random crop with zero padding, then the optional flip, of one `[C, H, W]` image in place.
pub fn augment_image(
    img: &mut [f32],
    c: usize,
    h: usize,
    w: usize,
    dy: usize,
    dx: usize,
    flip: bool,
) {
    let src = img.to_vec();
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        for i in 0..h {
            // Row i of the crop is row i + dy - PAD of the image (zero outside it).
            let si = (i + dy) as isize - PAD as isize;
            for j in 0..w {
                let jj = if flip { w - 1 - j } else { j };
                let sj = (jj + dx) as isize - PAD as isize;
                let v = if si >= 0 && (si as usize) < h && sj >= 0 && (sj as usize) < w {
                    plane[si as usize * w + sj as usize]
                } else {
                    0.0
                };
                img[ch * h * w + i * w + j] = v;
            }
        }
    }
}

/// How the steps of a run walk through the data.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub n: usize,
    pub batch: usize,
    pub shuffle: bool,
    pub augment: bool,
    pub seed: u64,
    /// The permutation of the epoch last asked for (one epoch is asked for many times in a row).
    cached: Option<(u64, Vec<usize>)>,
}

impl Sampler {
    pub fn new(n: usize, batch: usize, shuffle: bool, augment: bool, seed: u64) -> Sampler {
        Sampler {
            n,
            batch,
            shuffle,
            augment,
            seed,
            cached: None,
        }
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.n.div_ceil(self.batch) as u64
    }

    /// Epoch (0-based) of step `step` (1-based).
    pub fn epoch_of(&self, step: u64) -> u64 {
        (step - 1) / self.steps_per_epoch()
    }

    /// Epochs of data seen after `step` steps (fractional within an epoch).
    pub fn epochs_done(&self, step: u64) -> f64 {
        let per = self.steps_per_epoch();
        let full = step / per;
        let rest = step % per;
        let seen = (rest as usize * self.batch).min(self.n);
        full as f64 + seen as f64 / self.n as f64
    }

    /// The sample indices of step `step` (1-based).
    pub fn indices(&mut self, step: u64) -> Vec<usize> {
        let per = self.steps_per_epoch();
        let epoch = (step - 1) / per;
        let b = ((step - 1) % per) as usize;
        let range = b * self.batch..((b + 1) * self.batch).min(self.n);
        if !self.shuffle {
            return range.collect();
        }
        if self.cached.as_ref().map(|c| c.0) != Some(epoch) {
            self.cached = Some((epoch, permutation(self.seed, epoch, self.n)));
        }
        self.cached.as_ref().unwrap().1[range].to_vec()
    }
}

/// A data set held in memory as libtorch tensors on the training device, so that a batch is a
/// view (file order) or one gather (shuffled), as a PyTorch loop over tensors in memory has it.
pub struct InMemory {
    pub spec: Spec,
    x: Tensor,
    y: Tensor,
}

fn standard(a: Array) -> Array {
    match a {
        Array::F32(v) if !v.is_standard_layout() => Array::F32(v.as_standard_layout().into_owned()),
        Array::I64(v) if !v.is_standard_layout() => Array::I64(v.as_standard_layout().into_owned()),
        other => other,
    }
}

/// Training holds the whole data set in memory, twice while it is copied into a tensor: refuse
/// a data set that cannot fit before allocating (a file declaring 10^8 images asked for 313 GB
/// and aborted).
fn check_fits_in_memory(spec: &Spec) -> Result<()> {
    let width = |k: Kind| if k == Kind::Float { 4 } else { 8 };
    let x = crate::data::samples_bytes(spec.len, &spec.x_shape, width(spec.x_kind));
    let y = crate::data::samples_bytes(spec.len, &spec.y_shape, width(spec.y_kind));
    let shape = |s: &[usize]| {
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let what = format!(
        "{} samples of x [{}] ({}) and y [{}] ({})",
        spec.len,
        shape(&spec.x_shape),
        spec.x_kind,
        shape(&spec.y_shape),
        spec.y_kind
    );
    let Some(need) = x
        .zip(y)
        .and_then(|(x, y)| x.checked_add(y))
        .and_then(|b| b.checked_mul(2))
    else {
        return Err(crate::error::input(format!(
            "{}: probe train holds the data set in memory, and {what} cannot even be addressed; \
             train on its first samples with --limit",
            spec.identity
        )));
    };
    if let Some(have) = crate::data::memory_limit() {
        if need > have {
            let gb = |b: u64| b as f64 / 1e9;
            return Err(crate::error::input(format!(
                "{}: probe train holds the data set in memory: {what} take {:.1} GB \
                 (twice {:.1} GB while they are copied into tensors), but this process may use \
                 {:.1} GB; train on its first samples with --limit",
                spec.identity,
                gb(need),
                gb(need / 2),
                gb(have)
            )));
        }
    }
    Ok(())
}

impl InMemory {
    /// Reads every sample of `data` onto `device`; `check` sees the host batch first (target
    /// ranges).
    pub fn load(
        data: &mut dyn Dataset,
        device: Device,
        check: impl FnOnce(&crate::data::Batch) -> Result<()>,
    ) -> Result<InMemory> {
        let spec = data.spec().clone();
        check_fits_in_memory(&spec)?;
        let mut b = data.read(0, spec.len)?;
        b.x = standard(b.x);
        b.y = standard(b.y);
        check(&b)?;
        Ok(InMemory {
            x: to_tensor(&b.x, device)?,
            y: to_tensor(&b.y, device)?,
            spec,
        })
    }

    /// Whether `--augment` applies: float images `[N, C, H, W]`.
    pub fn check_augment(&self) -> Result<()> {
        if self.spec.x_kind != Kind::Float || self.spec.x_shape.len() != 3 {
            return Err(crate::error::input(format!(
                "--augment (random crop and flip) needs float images [N, C, H, W]; {} has {} x of shape [N, {}]",
                self.spec.identity,
                self.spec.x_kind,
                self.spec
                    .x_shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }

    /// The inputs and targets of step `step`, augmented if the sampler says so.
    pub fn batch(&self, sampler: &mut Sampler, step: u64) -> Result<(Tensor, Tensor)> {
        let idx = sampler.indices(step);
        let (x, y) = if sampler.shuffle {
            let i: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            let i = Tensor::f_from_slice(&i)?.f_to_device(self.x.device())?;
            (self.x.f_index_select(0, &i)?, self.y.f_index_select(0, &i)?)
        } else {
            let (start, n) = (idx[0] as i64, idx.len() as i64);
            (self.x.f_narrow(0, start, n)?, self.y.f_narrow(0, start, n)?)
        };
        if !sampler.augment {
            return Ok((x, y));
        }
        let (c, h, w) = (
            self.spec.x_shape[0],
            self.spec.x_shape[1],
            self.spec.x_shape[2],
        );
        let mut v =
            Vec::<f32>::try_from(&x.f_contiguous()?.f_view([-1])?.f_to_device(Device::Cpu)?)?;
        for (j, img) in v.chunks_mut(c * h * w).enumerate() {
            let (dy, dx, flip) = augmentation(sampler.seed, step, j);
            augment_image(img, c, h, w, dy, dx, flip);
        }
        let x = Tensor::f_from_slice(&v)?
            .f_view(x.size().as_slice())?
            .f_to_device(self.x.device())?;
        Ok((x, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_fixed_by_seed_and_epoch() {
        let a = permutation(0, 0, 10);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(a, permutation(0, 0, 10));
        assert_ne!(a, permutation(0, 1, 10));
        assert_ne!(a, permutation(1, 0, 10));
        // Pinned: the order must not change between versions (resumed runs depend on it).
        assert_eq!(permutation(0, 0, 8), PINNED);
    }
    const PINNED: [usize; 8] = [6, 1, 5, 4, 2, 7, 0, 3];

    #[test]
    fn steps_walk_epochs() {
        let mut s = Sampler::new(10, 4, false, false, 0);
        assert_eq!(s.steps_per_epoch(), 3);
        assert_eq!(s.indices(1), [0, 1, 2, 3]);
        assert_eq!(s.indices(3), [8, 9]);
        assert_eq!(s.indices(4), [0, 1, 2, 3]);
        assert_eq!(s.epoch_of(3), 0);
        assert_eq!(s.epoch_of(4), 1);
        assert_eq!(s.epochs_done(3), 1.0);
        assert_eq!(s.epochs_done(4), 1.4);
        let mut sh = Sampler::new(10, 4, true, false, 7);
        let mut epoch: Vec<usize> = (1..=3).flat_map(|k| sh.indices(k)).collect();
        assert_eq!(epoch, permutation(7, 0, 10));
        epoch.sort();
        assert_eq!(epoch, (0..10).collect::<Vec<_>>());
        // Asking out of order (as a resumed run does) gives the same batches.
        let mut fresh = Sampler::new(10, 4, true, false, 7);
        assert_eq!(fresh.indices(5), sh.indices(5));
        assert_eq!(
            fresh.indices(2),
            Sampler::new(10, 4, true, false, 7).indices(2)
        );
    }

    #[test]
    fn crop_and_flip() {
        // One 1x3x3 image 1..9; offsets (PAD, PAD) are the identity.
        let img: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut a = img.clone();
        augment_image(&mut a, 1, 3, 3, PAD, PAD, false);
        assert_eq!(a, img);
        let mut f = img.clone();
        augment_image(&mut f, 1, 3, 3, PAD, PAD, true);
        assert_eq!(f, [3., 2., 1., 6., 5., 4., 9., 8., 7.]);
        // Shift down by one (dy = PAD - 1): the first row comes from the zero padding.
        let mut d = img.clone();
        augment_image(&mut d, 1, 3, 3, PAD - 1, PAD, false);
        assert_eq!(d, [0., 0., 0., 1., 2., 3., 4., 5., 6.]);
        // Right by one (dx = PAD + 1): column j comes from j + 1.
        let mut r = img.clone();
        augment_image(&mut r, 1, 3, 3, PAD, PAD + 1, false);
        assert_eq!(r, [2., 3., 0., 5., 6., 0., 8., 9., 0.]);
        // Draws cover the range and differ between positions.
        let draws: Vec<_> = (0..200).map(|j| augmentation(3, 1, j)).collect();
        assert!(draws.iter().any(|d| d.0 == 0) && draws.iter().any(|d| d.0 == 2 * PAD));
        assert!(draws.iter().any(|d| d.2) && draws.iter().any(|d| !d.2));
        assert_eq!(augmentation(3, 1, 5), augmentation(3, 1, 5));
    }
}
