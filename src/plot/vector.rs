//! A vector page for plotters: [`VectorBackend`] implements plotters' `DrawingBackend` by
//! recording what is drawn (paths, filled polygons, rectangles, circles, text) on a [`Page`],
//! which [`super::pdf`] and [`super::svg`] write out. Nothing is rasterized.
//!
//! The PDF sets text in Helvetica, one of PDF's 14 standard fonts (every reader has it or a
//! metric-compatible substitute, so nothing is embedded), measured with Helvetica's AFM
//! advance widths (`HELVETICA`); the SVG names DejaVu Sans (or Verdana, as wide), measured
//! with the copy embedded in probe ([`Metrics`]). So the layout knows how wide every label is.
//!
//! Sizes follow plotters' raster text (its `ab_glyph` font): a text style's `size` is the
//! font's line height, ascent to descent, which for the DejaVu Sans the PNG uses is
//! [`LINE_PER_EM`] em; the baseline of text anchored at its top lies `size / 2` below the
//! anchor. Drawn the same way here, a figure lays out alike in every format.
use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
    FontTransform,
};
use std::convert::Infallible;

/// DejaVu Sans's ascent minus descent in em ((1901 + 483) / 2048): plotters' `ab_glyph` text
/// of size `s` has an em of `s / LINE_PER_EM`.
pub const LINE_PER_EM: f64 = 1.1641;

/// An RGB colour with opacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rgba {
    pub rgb: (u8, u8, u8),
    pub alpha: f64,
}

impl From<BackendColor> for Rgba {
    fn from(c: BackendColor) -> Rgba {
        Rgba {
            rgb: c.rgb,
            alpha: c.alpha.clamp(0.0, 1.0),
        }
    }
}

/// Where a text's anchor point lies along its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Align {
    Start,
    Middle,
    End,
}

/// What was drawn, in the page's units (y down).
#[derive(Debug, Clone)]
pub enum Item {
    /// An open polyline, stroked `width` wide.
    Path {
        points: Vec<(i32, i32)>,
        color: Rgba,
        width: f64,
    },
    /// A filled polygon.
    Fill {
        points: Vec<(i32, i32)>,
        color: Rgba,
    },
    Rect {
        a: (i32, i32),
        b: (i32, i32),
        color: Rgba,
        fill: bool,
        width: f64,
    },
    Circle {
        c: (i32, i32),
        r: f64,
        color: Rgba,
        fill: bool,
        width: f64,
    },
    /// One line of Helvetica, `em` high, its baseline through `at` in direction `angle`
    /// degrees clockwise from the x axis (0, 90, 180 or 270: 270 reads upwards); `at` is the
    /// baseline's start, middle or end as `align` says.
    Text {
        text: String,
        at: (f64, f64),
        align: Align,
        angle: i32,
        em: f64,
        color: Rgba,
    },
}

/// A page: its size in units, units per typographic point (1/72 in), and what is on it.
pub struct Page {
    pub size: (u32, u32),
    pub units_per_pt: f64,
    pub items: Vec<Item>,
}

impl Page {
    pub fn new(size: (u32, u32), units_per_pt: f64) -> Page {
        Page {
            size,
            units_per_pt,
            items: Vec::new(),
        }
    }
}

/// How text is measured: by Helvetica's AFM widths (the PDF sets Helvetica), or by a font's
/// own advances and kerning (the SVG names DejaVu Sans, measured with the embedded copy).
pub enum Metrics {
    Helvetica,
    Font(Box<FontRef<'static>>),
}

impl Metrics {
    /// The advance width of `text` at line height `size` (em = size / LINE_PER_EM).
    fn width(&self, text: &str, size: f64) -> f64 {
        match self {
            Metrics::Helvetica => size / LINE_PER_EM * helvetica_width(text),
            Metrics::Font(font) => {
                let f = font.as_scaled(PxScale::from(size as f32));
                let (mut x, mut prev) = (0.0f32, None);
                for c in text.chars() {
                    let id = f.glyph_id(c);
                    if let Some(p) = prev {
                        x += f.kern(p, id);
                    }
                    x += f.h_advance(id);
                    prev = Some(id);
                }
                x as f64
            }
        }
    }
}

pub struct VectorBackend<'a> {
    page: &'a mut Page,
    metrics: Metrics,
}

impl<'a> VectorBackend<'a> {
    pub fn new(page: &'a mut Page, metrics: Metrics) -> VectorBackend<'a> {
        VectorBackend { page, metrics }
    }
}

type R = Result<(), DrawingErrorKind<Infallible>>;

impl DrawingBackend for VectorBackend<'_> {
    type ErrorType = Infallible;

    fn get_size(&self) -> (u32, u32) {
        self.page.size
    }

    fn ensure_prepared(&mut self) -> R {
        Ok(())
    }

    fn present(&mut self) -> R {
        Ok(())
    }

    fn draw_pixel(&mut self, p: BackendCoord, color: BackendColor) -> R {
        if color.alpha > 0.0 {
            self.page.items.push(Item::Rect {
                a: p,
                b: (p.0 + 1, p.1 + 1),
                color: color.into(),
                fill: true,
                width: 0.0,
            });
        }
        Ok(())
    }

    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, s: &S) -> R {
        self.draw_path([from, to], s)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        s: &S,
        fill: bool,
    ) -> R {
        if s.color().alpha > 0.0 {
            self.page.items.push(Item::Rect {
                a,
                b,
                color: s.color().into(),
                fill,
                width: s.stroke_width() as f64,
            });
        }
        Ok(())
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        s: &S,
    ) -> R {
        let points: Vec<_> = path.into_iter().collect();
        if s.color().alpha > 0.0 && points.len() > 1 {
            self.page.items.push(Item::Path {
                points,
                color: s.color().into(),
                width: s.stroke_width() as f64,
            });
        }
        Ok(())
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        c: BackendCoord,
        radius: u32,
        s: &S,
        fill: bool,
    ) -> R {
        if s.color().alpha > 0.0 {
            self.page.items.push(Item::Circle {
                c,
                r: radius as f64,
                color: s.color().into(),
                fill,
                width: s.stroke_width() as f64,
            });
        }
        Ok(())
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        s: &S,
    ) -> R {
        let points: Vec<_> = vert.into_iter().collect();
        if s.color().alpha > 0.0 && points.len() > 2 {
            self.page.items.push(Item::Fill {
                points,
                color: s.color().into(),
            });
        }
        Ok(())
    }

    fn draw_text<T: BackendTextStyle>(&mut self, text: &str, style: &T, pos: BackendCoord) -> R {
        if style.color().alpha == 0.0 || text.is_empty() {
            return Ok(());
        }
        let size = style.size();
        let em = size / LINE_PER_EM;
        let h = size / 1.24;
        // As plotters' raster text: the layout box (size/1.24 high) is placed by the anchor,
        // the baseline lies size/2 below the box's top, and the transform turns it about
        // `pos`.
        let dy = match style.anchor().v_pos {
            VPos::Top => 0.0,
            VPos::Center => -h / 2.0,
            VPos::Bottom => -h,
        };
        let align = match style.anchor().h_pos {
            HPos::Left => Align::Start,
            HPos::Center => Align::Middle,
            HPos::Right => Align::End,
        };
        // The anchor's point on the baseline, in the text's own frame (x along the baseline,
        // y down); the writers place the text by `align` from it.
        let (x, y) = (0.0, dy + size / 2.0);
        let (angle, (tx, ty)) = match style.transform() {
            FontTransform::None => (0, (x, y)),
            FontTransform::Rotate90 => (90, (-y, x)),
            FontTransform::Rotate180 => (180, (-x, -y)),
            FontTransform::Rotate270 => (270, (y, -x)),
        };
        self.page.items.push(Item::Text {
            text: text.to_string(),
            at: (pos.0 as f64 + tx, pos.1 as f64 + ty),
            align,
            angle,
            em,
            color: style.color().into(),
        });
        Ok(())
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> Result<(u32, u32), DrawingErrorKind<Infallible>> {
        let size = style.size();
        let w = self.metrics.width(text, size);
        Ok((w.round() as u32, (size / 1.24).round() as u32))
    }
}

/// The WinAnsiEncoding byte of `c` (the encoding the PDF's Helvetica is set in): ASCII, Latin-1
/// and a few dashes; `None` for what Helvetica's standard encoding cannot show.
pub fn winansi(c: char) -> Option<u8> {
    match c {
        ' '..='~' => Some(c as u8),
        '\u{a0}'..='\u{ff}' => Some(c as u32 as u8),
        '\u{2022}' => Some(0x95),
        '\u{2013}' => Some(0x96),
        '\u{2014}' => Some(0x97),
        _ => None,
    }
}

/// Helvetica's advance widths in 1/1000 em (Adobe's Helvetica AFM, `phvr8a.afm`, Core 14
/// metrics), for WinAnsi codes 32..=126 ...
const HELVETICA: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667,
    611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500,
    222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
];

/// ... and for 0xA0..=0xFF (Latin-1).
const HELVETICA_LATIN1: [u16; 96] = [
    278, 333, 556, 556, 556, 556, 260, 556, 333, 737, 370, 556, 584, 333, 737, 333, 400, 584, 333,
    333, 333, 556, 537, 278, 333, 333, 365, 556, 834, 834, 834, 611, 667, 667, 667, 667, 667, 667,
    1000, 722, 667, 667, 667, 667, 278, 278, 278, 278, 722, 722, 778, 778, 778, 778, 778, 584, 778,
    722, 722, 722, 722, 667, 667, 611, 556, 556, 556, 556, 556, 556, 889, 500, 556, 556, 556, 556,
    278, 278, 278, 278, 556, 556, 556, 556, 556, 556, 556, 584, 611, 556, 556, 556, 556, 500, 556,
    500,
];

/// The width of one WinAnsi byte in 1/1000 em.
fn byte_width(b: u8) -> u16 {
    match b {
        32..=126 => HELVETICA[(b - 32) as usize],
        0xa0..=0xff => HELVETICA_LATIN1[(b - 0xa0) as usize],
        0x95 => 350,
        0x96 => 556,
        0x97 => 1000,
        _ => HELVETICA[(b'?' - 32) as usize],
    }
}

/// The advance width of `text` set in Helvetica, in em (no kerning: the PDF sets it without).
/// Characters outside WinAnsi are drawn as '?' and measured so.
pub fn helvetica_width(text: &str) -> f64 {
    text.chars()
        .map(|c| byte_width(winansi(c).unwrap_or(b'?')) as f64)
        .sum::<f64>()
        / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn afm_widths() {
        // From the AFM: space 278, 'H' 722, 'e' 556, 'l' 222, 'o' 556, '1' 556.
        assert!(
            (helvetica_width("Hello 1")
                - (722 + 556 + 222 + 222 + 556 + 278 + 556) as f64 / 1000.0)
                .abs()
                < 1e-12
        );
        assert_eq!(byte_width(b'\''), 191);
        assert_eq!(byte_width(winansi('\u{b2}').unwrap()), 333); // twosuperior
        assert_eq!(byte_width(winansi('\u{e9}').unwrap()), 556); // eacute
        assert_eq!(winansi('\u{3bb}'), None); // lambda: not in WinAnsi
    }
}
