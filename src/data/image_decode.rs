//! Decoding an image file to 8-bit RGB as `PIL.Image.open(f).convert("RGB")` does, which is
//! what torchvision's `ImageFolder` loader calls.
//!
//! - JPEG: libjpeg-turbo through its TurboJPEG API (Debian's `libturbojpeg0-dev`), the library
//!   PIL's wheels bundle, with PIL's settings: the accurate integer IDCT (`JDCT_ISLOW`) and fancy
//!   (triangle-filter) chroma upsampling, both libjpeg's defaults. Debian's 2.1.5 and the 3.2.0
//!   in Pillow 13's wheel gave identical pixels on every test JPEG (tests/imagefolder.rs). A
//!   pure-Rust decoder uses other IDCT and upsampling arithmetic and differs from PIL by ±1 here
//!   and there. Four-component
//!   JPEGs are read as PIL reads them: CMYK with every byte inverted ("assume adobe
//!   conventions", `CMYK;I`), then PIL's `cmyk2rgb`.
//! - PNG: the `png` crate (lossless, so any correct decoder gives the same samples), then PIL's
//!   mode for each colour type and bit depth (`PngImagePlugin._MODES`) and its conversion to RGB:
//!   grey replicated, alpha dropped (not composited), palette looked up, 16-bit samples cut to
//!   their high byte, except 16-bit grey, which PIL holds as `I;16` and converts by clipping the
//!   value to 255 (`I16_RGB`).
//!
//! The format is told by the file's first bytes, as PIL does, not by its name.
use super::image_ops::Rgb8;

/// A file that is not a readable JPEG or PNG: the message (without the path) says why.
pub type DecodeError = String;

pub fn decode(bytes: &[u8]) -> Result<Rgb8, DecodeError> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg::decode(bytes)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes)
    } else if bytes.is_empty() {
        Err("empty file".into())
    } else {
        Err("not a JPEG or PNG file (probe reads those two formats)".into())
    }
}

/// PIL's `MULDIV255(a, b)`: a*b/255 rounded, by the shift trick `(t + (t >> 8)) >> 8`.
#[inline]
fn muldiv255(a: i32, b: i32) -> i32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// PIL's `cmyk2rgb` on the already inverted (`CMYK;I`) bytes: `r = k' - c*k'/255` with
/// `k' = 255 - k`, i.e. `r = (1-c)(1-k)` in 8-bit fixed point.
fn cmyk_to_rgb(cmyk: &[u8], out: &mut [u8]) {
    for (p, o) in cmyk.chunks_exact(4).zip(out.chunks_exact_mut(3)) {
        let nk = 255 - p[3] as i32;
        for c in 0..3 {
            o[c] = (nk - muldiv255(p[c] as i32, nk)).clamp(0, 255) as u8;
        }
    }
}

mod jpeg {
    // Named from the crate root: `super` here is this file, not the `data` folder.
    use crate::data::image_decode::{cmyk_to_rgb, DecodeError};
    use crate::data::image_ops::Rgb8;
    use std::ffi::{c_char, c_int, c_uchar, c_ulong, c_void, CStr};

    // The TurboJPEG 2.1 API (turbojpeg.h), only what decoding needs.
    #[link(name = "turbojpeg")]
    extern "C" {
        fn tjInitDecompress() -> *mut c_void;
        fn tjDestroy(handle: *mut c_void) -> c_int;
        fn tjDecompressHeader3(
            handle: *mut c_void,
            buf: *const c_uchar,
            size: c_ulong,
            width: *mut c_int,
            height: *mut c_int,
            subsamp: *mut c_int,
            colorspace: *mut c_int,
        ) -> c_int;
        fn tjDecompress2(
            handle: *mut c_void,
            buf: *const c_uchar,
            size: c_ulong,
            dst: *mut c_uchar,
            width: c_int,
            pitch: c_int,
            height: c_int,
            pixel_format: c_int,
            flags: c_int,
        ) -> c_int;
        fn tjGetErrorStr2(handle: *mut c_void) -> *mut c_char;
        fn tjGetErrorCode(handle: *mut c_void) -> c_int;
    }
    const TJPF_RGB: c_int = 0;
    const TJPF_GRAY: c_int = 6;
    const TJPF_CMYK: c_int = 11;
    const TJCS_GRAY: c_int = 2;
    const TJCS_CMYK: c_int = 3;
    const TJCS_YCCK: c_int = 4;
    const TJERR_WARNING: c_int = 0;

    /// A decompressor, destroyed on drop (one per decode: creating one is a small allocation,
    /// far below the cost of decoding an image).
    struct Handle(*mut c_void);
    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: the handle came from tjInitDecompress and is destroyed once.
            unsafe { tjDestroy(self.0) };
        }
    }
    impl Handle {
        fn message(&self) -> String {
            // SAFETY: tjGetErrorStr2 returns a NUL-terminated string owned by the handle.
            unsafe { CStr::from_ptr(tjGetErrorStr2(self.0)) }
                .to_string_lossy()
                .into_owned()
        }
        /// Whether a failed call stopped on an error, or finished with a warning only.
        fn fatal(&self, rc: c_int) -> Option<String> {
            if rc == 0 {
                return None;
            }
            let msg = self.message();
            // SAFETY: a valid handle.
            let code = unsafe { tjGetErrorCode(self.0) };
            // libjpeg warns and fills the missing rows with grey when the data ends early; PIL
            // refuses such a file ("image file is truncated"), so probe does too. Other warnings
            // (stray bytes before a marker, say) leave a complete image, which PIL accepts.
            if code != TJERR_WARNING || msg.contains("Premature end") {
                Some(msg)
            } else {
                None
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Rgb8, DecodeError> {
        // SAFETY: no arguments; null on failure.
        let h = Handle(unsafe { tjInitDecompress() });
        if h.0.is_null() {
            return Err("could not start a JPEG decoder".into());
        }
        let (mut w, mut ht, mut sub, mut cs) = (0, 0, 0, 0);
        // SAFETY: the buffer and its length are valid; the outputs are plain ints.
        let rc = unsafe {
            tjDecompressHeader3(
                h.0,
                bytes.as_ptr(),
                bytes.len() as c_ulong,
                &mut w,
                &mut ht,
                &mut sub,
                &mut cs,
            )
        };
        // Any complaint about the header is fatal: with no complete header there is no image.
        if rc != 0 || w <= 0 || ht <= 0 {
            let m = if rc != 0 {
                h.message()
            } else {
                "no image size".into()
            };
            return Err(format!("not a readable JPEG file ({m})"));
        }
        let (w, ht) = (w as usize, ht as usize);
        let (format, channels) = match cs {
            TJCS_GRAY => (TJPF_GRAY, 1),
            TJCS_CMYK | TJCS_YCCK => (TJPF_CMYK, 4),
            _ => (TJPF_RGB, 3),
        };
        let mut px = vec![0u8; w * ht * channels];
        // SAFETY: px holds height rows of width*channels bytes, the pitch given.
        let rc = unsafe {
            tjDecompress2(
                h.0,
                bytes.as_ptr(),
                bytes.len() as c_ulong,
                px.as_mut_ptr(),
                w as c_int,
                (w * channels) as c_int,
                ht as c_int,
                format,
                0, // accurate DCT, fancy upsampling: libjpeg's defaults, PIL's settings
            )
        };
        if let Some(m) = h.fatal(rc) {
            return Err(format!("not a readable JPEG file ({m})"));
        }
        let mut out = Rgb8::new(w, ht);
        match channels {
            1 => {
                for (o, &g) in out.data.chunks_exact_mut(3).zip(&px) {
                    o.fill(g);
                }
            }
            4 => {
                // PIL's rawmode for 4-component JPEGs is `CMYK;I`: every byte inverted.
                px.iter_mut().for_each(|v| *v = 255 - *v);
                cmyk_to_rgb(&px, &mut out.data);
            }
            _ => out.data = px,
        }
        Ok(out)
    }
}

fn decode_png(bytes: &[u8]) -> Result<Rgb8, DecodeError> {
    use png::{BitDepth, ColorType, Transformations};
    let bad = |e: png::DecodingError| format!("not a readable PNG file ({e})");
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    // EXPAND: palette -> RGB(A), grey below 8 bits -> 8 bits scaled by 255/(2^d - 1) (PIL's
    // `L;2`, `L;4` and `1` unpackers give the same values), tRNS -> an alpha channel (dropped).
    dec.set_transformations(Transformations::EXPAND);
    let mut reader = dec.read_info().map_err(bad)?;
    let src_color = reader.info().color_type;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(bad)?;
    let (w, h) = (frame.width as usize, frame.height as usize);
    let data = &buf[..frame.buffer_size()];
    let (color, depth) = (frame.color_type, frame.bit_depth);
    let bytes_per_sample = if depth == BitDepth::Sixteen { 2 } else { 1 };
    let channels = color.samples();
    let stride = frame.line_size;
    let mut out = Rgb8::new(w, h);
    for y in 0..h {
        let row = &data[y * stride..][..w * channels * bytes_per_sample];
        let dst = &mut out.data[y * w * 3..][..w * 3];
        for (x, o) in dst.chunks_exact_mut(3).enumerate() {
            let px = &row[x * channels * bytes_per_sample..][..channels * bytes_per_sample];
            // A sample's value as PIL's mode holds it (big-endian high byte for 16 bits).
            let hi = |c: usize| px[c * bytes_per_sample];
            match color {
                ColorType::Grayscale | ColorType::GrayscaleAlpha => {
                    let v = if bytes_per_sample == 2 && src_color == ColorType::Grayscale {
                        // PIL: mode `I;16`, then `I16_RGB`: the 16-bit value clipped to 255.
                        u16::from_be_bytes([px[0], px[1]]).min(255) as u8
                    } else {
                        hi(0)
                    };
                    o.fill(v);
                }
                _ => {
                    for c in 0..3 {
                        o[c] = hi(c);
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muldiv255_is_rounded_division() {
        for a in 0..=255 {
            for b in [0, 1, 127, 128, 254, 255] {
                let exact = (a * b) as f64 / 255.0;
                assert!(
                    (muldiv255(a, b) as f64 - exact).abs() <= 0.5 + 1e-9,
                    "{a}*{b}"
                );
            }
        }
    }

    #[test]
    fn unknown_bytes_name_the_formats() {
        assert!(decode(b"GIF89a....").unwrap_err().contains("JPEG or PNG"));
        assert!(decode(b"").unwrap_err().contains("empty"));
        // A JPEG that stops right after its start marker.
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xE0])
            .unwrap_err()
            .contains("JPEG"));
    }
}
