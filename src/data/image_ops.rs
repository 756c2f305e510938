//! torchvision's ImageNet evaluation transform on 8-bit RGB images, ported so the bytes agree
//! with PIL's exactly: `Resize` (PIL's antialiased bilinear resampling, `Resample.c`),
//! `CenterCrop` (with its zero padding when the crop is larger than the image), `ToTensor` and
//! `Normalize`.
//!
//! Why a port and not any bilinear filter: PIL resamples in two separable passes (horizontal, then
//! vertical), each rounding to 8 bits with fixed-point coefficients. A float implementation of the
//! same filter differs from it by ±1 in many pixels, and a model's loss moves with those pixels by
//! far more than the 1e-5 the results are held to.

/// An 8-bit RGB image, rows top to bottom, pixels interleaved `r g b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Rgb8 {
    pub fn new(width: usize, height: usize) -> Rgb8 {
        Rgb8 {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }
}

/// How `Resize` is asked: the shorter side to a length (aspect kept), or an exact `(h, w)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    Shorter(usize),
    Exact { height: usize, width: usize },
}

impl Resize {
    /// The output `(width, height)` for an input of `(w, h)`, as torchvision's
    /// `_compute_resized_output_size`: the long side is `int(size * long / short)`, the quotient
    /// in double precision and truncated (not rounded).
    pub fn output_size(self, w: usize, h: usize) -> (usize, usize) {
        match self {
            Resize::Exact { height, width } => (width, height),
            Resize::Shorter(size) => {
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                let new_long = (size as f64 * long as f64 / short as f64) as usize;
                if w <= h {
                    (size, new_long)
                } else {
                    (new_long, size)
                }
            }
        }
    }
}

/// PIL's fixed-point precision for 8-bit resampling: 32 bits less 8 for the value and 2 for the
/// overshoot of filters with negative lobes (bilinear has none, but the rounding is PIL's).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One pass's filter, as PIL's `precompute_coeffs` builds it for the triangle (bilinear) filter
/// scaled to the reduction: for output `i`, the input range `bounds[i] = (first, count)` and its
/// integer weights `k[i * ksize ..][..count]`.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
}

/// PIL's `precompute_coeffs` (support 1, `bilinear_filter`) followed by `normalize_coeffs_8bpc`.
///
/// The filter is stretched by `scale = in/out` when shrinking (that is the antialiasing: each
/// output pixel averages all inputs under a triangle of half-width `scale`), weights are
/// normalized to sum to 1 in double precision, then scaled by 2^22 and rounded half away from 0.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear's support is 1.0
    let ksize = support.ceil() as usize * 2 + 1;
    let inv = 1.0 / filterscale;
    let triangle = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    };
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; `center - support + 0.5` can be negative, and then
        // the clamp to 0 below gives the same result as flooring would.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(count) {
            *wx = triangle((x as f64 + xmin as f64 - center + 0.5) * inv);
            ww += *wx;
        }
        for x in 0..count {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            k[xx * ksize + x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, count));
    }
    Coeffs { ksize, bounds, k }
}

/// PIL's `clip8`: the sum carries 2^21 (one half) already, so the shift rounds to nearest.
#[inline]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Which of Pillow's rules orders the two passes. The arithmetic of each pass is the same in
/// every Pillow since 4.x; only the order differs, and the order changes the result by ±1 where
/// a pass's rounding lands differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassOrder {
    /// Pillow 13: vertical first when the height shrinks by more than twice the width does
    /// (`dh > 0 && dh > 2 dw`, in pixels), horizontal first otherwise. For an aspect-keeping
    /// resize that is a downscale of an image more than twice as tall as wide.
    #[default]
    Pillow13,
    /// Pillow 12 and older: always horizontal first.
    Pillow12,
}

/// `img.resize((w, h), Image.BILINEAR)` for an RGB image, as PIL computes it: two passes, each
/// rounding to 8 bits; when the horizontal pass goes first it only resamples the rows the
/// vertical pass will read. A pass is skipped when its size does not change (PIL's
/// `need_horizontal` / `need_vertical`).
pub fn resize_bilinear(img: &Rgb8, width: usize, height: usize, order: PassOrder) -> Rgb8 {
    let (need_h, need_v) = (width != img.width, height != img.height);
    if !need_h && !need_v {
        return img.clone();
    }
    let (dh, dw) = (
        img.height as i64 - height as i64,
        img.width as i64 - width as i64,
    );
    let vertical_first = order == PassOrder::Pillow13 && dh > 0 && dh > dw * 2;
    if vertical_first {
        let v = vertical(img, &coeffs(img.height, height), 0);
        return if need_h {
            horizontal(&v, &coeffs(img.width, width), 0, height)
        } else {
            v
        };
    }
    let vert = coeffs(img.height, height);
    if !need_h {
        return vertical(img, &vert, 0);
    }
    // Only the rows from the first one the vertical pass reads to the last.
    let first = vert.bounds[0].0;
    let (lf, lc) = vert.bounds[height - 1];
    let h = horizontal(img, &coeffs(img.width, width), first, lf + lc - first);
    if need_v {
        vertical(&h, &vert, first)
    } else {
        h
    }
}

/// PIL's `_ImagingResampleHorizontal_8bpc`: rows `first..first + rows` of `img`, each output
/// value `clip8(2^21 + sum_x p[x] k[x])`.
fn horizontal(img: &Rgb8, c: &Coeffs, first: usize, rows: usize) -> Rgb8 {
    let width = c.bounds.len();
    let mut out = Rgb8::new(width, rows);
    let half = 1i32 << (PRECISION_BITS - 1);
    for y in 0..rows {
        let line = &img.data[(y + first) * img.width * 3..][..img.width * 3];
        let dst = &mut out.data[y * width * 3..][..width * 3];
        for (xx, &(xmin, count)) in c.bounds.iter().enumerate() {
            let k = &c.k[xx * c.ksize..][..count];
            let (mut s0, mut s1, mut s2) = (half, half, half);
            let src = &line[xmin * 3..(xmin + count) * 3];
            for (p, &kx) in src.chunks_exact(3).zip(k) {
                s0 += p[0] as i32 * kx;
                s1 += p[1] as i32 * kx;
                s2 += p[2] as i32 * kx;
            }
            dst[xx * 3] = clip8(s0);
            dst[xx * 3 + 1] = clip8(s1);
            dst[xx * 3 + 2] = clip8(s2);
        }
    }
    out
}

/// PIL's `_ImagingResampleVertical_8bpc` over an image whose row 0 is source row `shift` (the
/// horizontal pass kept only the rows needed).
fn vertical(img: &Rgb8, c: &Coeffs, shift: usize) -> Rgb8 {
    let w3 = img.width * 3;
    let mut out = Rgb8::new(img.width, c.bounds.len());
    let mut acc = vec![0i32; w3];
    for (yy, &(ymin, count)) in c.bounds.iter().enumerate() {
        let k = &c.k[yy * c.ksize..][..count];
        acc.fill(1 << (PRECISION_BITS - 1));
        // Row by row rather than PIL's column by column: the same integer sums, added in the
        // same order for each output value, so the result is identical and the reads sequential.
        for (y, &ky) in k.iter().enumerate() {
            let row = &img.data[(ymin - shift + y) * w3..][..w3];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * ky;
            }
        }
        for (d, &a) in out.data[yy * w3..][..w3].iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

/// `CenterCrop((height, width))` as torchvision does it on a PIL image: zero padding first when
/// the crop is larger than the image (`(crop - size) // 2` before, the rest after), then the
/// offsets `int(round((size - crop) / 2))` with Python's round-half-to-even.
pub fn center_crop(img: &Rgb8, width: usize, height: usize) -> Rgb8 {
    let mut src = std::borrow::Cow::Borrowed(img);
    if width > img.width || height > img.height {
        let left = if width > img.width {
            (width - img.width) / 2
        } else {
            0
        };
        let top = if height > img.height {
            (height - img.height) / 2
        } else {
            0
        };
        let pw = img.width.max(width);
        let ph = img.height.max(height);
        // torchvision pads by (crop - size + 1) // 2 on the right/bottom: the total is exactly
        // max(size, crop) either way.
        let mut p = Rgb8::new(pw, ph);
        for y in 0..img.height {
            p.data[((y + top) * pw + left) * 3..][..img.width * 3]
                .copy_from_slice(&img.data[y * img.width * 3..][..img.width * 3]);
        }
        if (pw, ph) == (width, height) {
            return p;
        }
        src = std::borrow::Cow::Owned(p);
    }
    let top = round_half_even((src.height - height) as f64 / 2.0);
    let left = round_half_even((src.width - width) as f64 / 2.0);
    let mut out = Rgb8::new(width, height);
    for y in 0..height {
        out.data[y * width * 3..][..width * 3]
            .copy_from_slice(&src.data[((y + top) * src.width + left) * 3..][..width * 3]);
    }
    out
}

/// Python's `round` on a non-negative half-integer or integer: ties go to the even neighbour
/// (`round(0.5) == 0`, `round(1.5) == 2`), which decides CenterCrop's offset when the margin is odd.
fn round_half_even(v: f64) -> usize {
    let f = v.floor();
    let r = if v - f == 0.5 {
        if f % 2.0 == 0.0 {
            f
        } else {
            f + 1.0
        }
    } else {
        v.round()
    };
    r as usize
}

/// `ToTensor` then `Normalize(mean, std)` into `out` ([3, h, w], channel-major): in float32,
/// `(p / 255 - mean) / std`, the same operations in the same order as torchvision's
/// `div(255)`, `sub_(mean)`, `div_(std)`, so the values are the same floats.
pub fn normalize_into(img: &Rgb8, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let plane = img.width * img.height;
    assert_eq!(out.len(), 3 * plane);
    for (i, p) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (p[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_output_size_truncates_the_long_side() {
        // 500x375 (w x h) -> short side 256: long = int(256 * 500 / 375) = int(341.33) = 341.
        assert_eq!(Resize::Shorter(256).output_size(500, 375), (341, 256));
        assert_eq!(Resize::Shorter(256).output_size(375, 500), (256, 341));
        assert_eq!(Resize::Shorter(256).output_size(28, 28), (256, 256));
        // int(256 * 3 / 2) = 384 exactly.
        assert_eq!(Resize::Shorter(256).output_size(300, 200), (384, 256));
    }

    #[test]
    fn center_crop_offsets_round_half_to_even() {
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.0), 3);
        // A 5-wide row cropped to 2: margin 3, offset round(1.5) = 2.
        let mut img = Rgb8::new(5, 1);
        for x in 0..5 {
            img.data[x * 3] = x as u8;
        }
        let c = center_crop(&img, 2, 1);
        assert_eq!((c.data[0], c.data[3]), (2, 3));
    }

    #[test]
    fn center_crop_pads_with_zeros_before_and_after() {
        let img = Rgb8 {
            width: 1,
            height: 1,
            data: vec![9, 9, 9],
        };
        // 4 wide: (4-1)//2 = 1 column before, 2 after.
        let c = center_crop(&img, 4, 1);
        assert_eq!(c.data, vec![0, 0, 0, 9, 9, 9, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn bilinear_weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(500, 256), (28, 256), (375, 256), (7, 3)] {
            let c = coeffs(i, o);
            for (xx, &(_, n)) in c.bounds.iter().enumerate() {
                let s: i64 = c.k[xx * c.ksize..][..n].iter().map(|&v| v as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{i}->{o} at {xx}: {s}"
                );
            }
        }
    }
}
