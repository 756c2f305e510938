//! The PNG: plotters' bitmap backend draws at [`SUPERSAMPLE`] times the resolution into memory,
//! the image is averaged down (so lines, markers and text edges are anti-aliased), and written
//! with its resolution recorded (the pHYs chunk), so viewers and LaTeX know its printed size.
//!
//! Text goes through [`Raster`], which hands everything else to the bitmap backend and sets
//! text itself with `ab_glyph`: each glyph at its advance plus kerning, with its side bearing
//! (plotters' own raster text starts every glyph's ink at the pen position, which opens gaps
//! like "gradien t"). Sizes and anchors follow plotters' convention (see [`super::vector`]):
//! a style's size is the line height, the baseline `size / 2` below a top anchor.
use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind, FontTransform,
};
use std::path::Path;

/// Each output pixel is the mean of SUPERSAMPLE x SUPERSAMPLE drawn ones.
pub const SUPERSAMPLE: u32 = 3;

/// plotters' bitmap backend's error.
type BitMapBackendError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

pub struct Raster<'a> {
    inner: BitMapBackend<'a>,
    font: FontRef<'static>,
}

type R = Result<(), DrawingErrorKind<BitMapBackendError>>;

impl Raster<'_> {
    /// The glyphs of `text` at line height `size`, with their pen positions, and the advance.
    fn layout(&self, text: &str, size: f64) -> (Vec<(ab_glyph::GlyphId, f32)>, f32) {
        let f = self.font.as_scaled(PxScale::from(size as f32));
        let (mut x, mut prev) = (0.0f32, None);
        let mut out = Vec::new();
        for c in text.chars() {
            let id = f.glyph_id(c);
            if let Some(p) = prev {
                x += f.kern(p, id);
            }
            out.push((id, x));
            x += f.h_advance(id);
            prev = Some(id);
        }
        (out, x)
    }
}

impl DrawingBackend for Raster<'_> {
    type ErrorType = BitMapBackendError;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> R {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> R {
        self.inner.present()
    }

    fn draw_pixel(&mut self, p: BackendCoord, c: BackendColor) -> R {
        self.inner.draw_pixel(p, c)
    }

    fn draw_line<S: BackendStyle>(&mut self, a: BackendCoord, b: BackendCoord, s: &S) -> R {
        self.inner.draw_line(a, b, s)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        s: &S,
        fill: bool,
    ) -> R {
        self.inner.draw_rect(a, b, s, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        s: &S,
    ) -> R {
        self.inner.draw_path(path, s)
    }

    fn draw_circle<S: BackendStyle>(&mut self, c: BackendCoord, r: u32, s: &S, fill: bool) -> R {
        self.inner.draw_circle(c, r, s, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        s: &S,
    ) -> R {
        self.inner.fill_polygon(vert, s)
    }

    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> R {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn draw_text<T: BackendTextStyle>(&mut self, text: &str, style: &T, pos: BackendCoord) -> R {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let size = style.size();
        let (glyphs, w) = self.layout(text, size);
        let h = (size / 1.24) as f32;
        let dx = match style.anchor().h_pos {
            HPos::Left => 0.0,
            HPos::Center => -w / 2.0,
            HPos::Right => -w,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0.0,
            VPos::Center => -h / 2.0,
            VPos::Bottom => -h,
        };
        let baseline = dy + size as f32 / 2.0;
        let trans = style.transform();
        let scale = PxScale::from(size as f32);
        let mut pixels = Vec::new();
        for (id, x) in glyphs {
            let g = id.with_scale_and_position(scale, point(dx + x, baseline));
            if let Some(o) = self.font.outline_glyph(g) {
                let b = o.px_bounds();
                o.draw(|px, py, cov| {
                    let (tx, ty) = (b.min.x as i32 + px as i32, b.min.y as i32 + py as i32);
                    // A quarter turn maps pixel [x, x+1] to [-x-1, -x].
                    let (x, y) = match trans {
                        FontTransform::None => (tx, ty),
                        FontTransform::Rotate90 => (-ty - 1, tx),
                        FontTransform::Rotate180 => (-tx - 1, -ty - 1),
                        FontTransform::Rotate270 => (ty, -tx - 1),
                    };
                    pixels.push(((pos.0 + x, pos.1 + y), cov));
                });
            }
        }
        for (p, cov) in pixels {
            if cov > 0.0 {
                self.inner.draw_pixel(
                    p,
                    BackendColor {
                        alpha: color.alpha * cov.min(1.0) as f64,
                        rgb: color.rgb,
                    },
                )?;
            }
        }
        Ok(())
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), DrawingErrorKind<BitMapBackendError>> {
        let (_, w) = self.layout(text, style.size());
        Ok((w.round() as u32, (style.size() / 1.24).round() as u32))
    }
}

/// Draws a `size` pixel image with `paint` (given the drawing area at SUPERSAMPLE times the
/// size) and writes it to `path` as an 8-bit RGB PNG of `dpi` pixels per inch.
pub fn png(
    path: &Path,
    size: (u32, u32),
    dpi: f64,
    font: &'static [u8],
    paint: impl FnOnce(&DrawingArea<Raster, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<(), String> {
    let s = SUPERSAMPLE;
    let big = (size.0 * s, size.1 * s);
    let mut buf = vec![255u8; big.0 as usize * big.1 as usize * 3];
    {
        let font = FontRef::try_from_slice(font).map_err(|e| format!("the embedded font: {e}"))?;
        let root = Raster {
            inner: BitMapBackend::with_buffer(&mut buf, big),
            font,
        }
        .into_drawing_area();
        paint(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    // The mean of each s x s block.
    let (w, h) = (size.0 as usize, size.1 as usize);
    let mut out = vec![0u8; w * h * 3];
    let (bw, n) = (big.0 as usize, s * s);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut sum = 0u32;
                for yy in 0..s as usize {
                    let row = (y * s as usize + yy) * bw;
                    for xx in 0..s as usize {
                        sum += buf[(row + x * s as usize + xx) * 3 + c] as u32;
                    }
                }
                out[(y * w + x) * 3 + c] = ((sum + n / 2) / n) as u8;
            }
        }
    }
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), size.0, size.1);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    // Pixels per metre: 1 in = 0.0254 m.
    let ppm = (dpi / 0.0254).round() as u32;
    enc.set_pixel_dims(Some(png::PixelDimensions {
        xppu: ppm,
        yppu: ppm,
        unit: png::Unit::Meter,
    }));
    let mut wr = enc.write_header().map_err(|e| e.to_string())?;
    wr.write_image_data(&out).map_err(|e| e.to_string())?;
    wr.finish().map_err(|e| e.to_string())
}
