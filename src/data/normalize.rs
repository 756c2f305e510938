//! `--mean/--std`: images stored as bytes, turned into the float input a model was trained on the
//! way torchvision does it, `ToTensor()` then `Normalize(mean, std)`: `x = (px / 255 - mean[c]) /
//! std[c]` in float32, one mean and std per channel `c`, the channel being the axis after the
//! batch axis (NCHW). Float data are normalized without the division by 255 (`Normalize` on
//! its own).

/// Per-channel mean and standard deviation; a list of one applies to every channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    /// Checks the lists against a sample shape (`[C, ...]`); `Err` says why they do not fit.
    pub fn check(&self, sample: &[usize]) -> Result<(), String> {
        let channels = sample.first().copied().unwrap_or(1);
        for (name, v) in [("--mean", &self.mean), ("--std", &self.std)] {
            if v.len() != 1 && v.len() != channels {
                return Err(format!(
                    "{name} has {} values but x has {channels} channels (axis 1 of x [N, C, ...], shape {sample:?}): give 1 or {channels}",
                    v.len()
                ));
            }
        }
        Ok(())
    }

    /// Normalizes a batch `[n, C, ...]` in place; `bytes`: the values are pixels 0..=255 to be
    /// scaled to [0, 1] first.
    pub fn apply(&self, x: &mut ndarray::ArrayD<f32>, bytes: bool) {
        let shape = x.shape().to_vec();
        let channels = shape.get(1).copied().unwrap_or(1);
        let per_channel: usize = shape.get(2..).map_or(1, |s| s.iter().product());
        let pick = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c] };
        if !x.is_standard_layout() {
            *x = x.as_standard_layout().into_owned();
        }
        let Some(flat) = x.as_slice_mut() else {
            unreachable!("a standard-layout array is one slice")
        };
        for (k, run) in flat.chunks_mut(per_channel.max(1)).enumerate() {
            let c = k % channels.max(1);
            let (m, s) = (pick(&self.mean, c), pick(&self.std, c));
            for v in run {
                // The same float32 operations, in the same order, as ToTensor and Normalize.
                if bytes {
                    *v /= 255.0;
                }
                *v = (*v - m) / s;
            }
        }
    }

    /// How the results file names it, after the data set's own name.
    pub fn describe(&self) -> String {
        let list = |v: &[f32]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        format!("mean={},std={}", list(&self.mean), list(&self.std))
    }
}
