//! Drawing in typographic points on any plotters backend: [`Pen`] turns points into the
//! backend's units, sets text by its baseline (plotters anchors text at the top of a box whose
//! baseline lies half the style's size below: see [`super::vector`]), dashes lines itself (the
//! pattern runs on across vertices, the same in every format), and draws markers and legend
//! swatches in a line's own style.
use super::axis::Label;
use super::figure::{Marker, Style};
use super::vector::{helvetica_width, LINE_PER_EM};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub(super) const INK: RGBColor = RGBColor(25, 25, 25);

/// Width of `s` at `size` points as the layout plans it before it can measure: Helvetica's,
/// widened to DejaVu Sans's (about 12% wider) so a row planned here fits in either font.
pub(super) fn planned_width(s: &str, size: f64) -> f64 {
    1.15 * helvetica_width(s) * size
}

pub(super) type DrawErr<DB> = DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>;

/// Drawing in points on a backend of `u` units per point.
pub(super) struct Pen<'a, DB: DrawingBackend> {
    pub area: &'a DrawingArea<DB, Shift>,
    pub u: f64,
}

impl<DB: DrawingBackend> Pen<'_, DB> {
    pub(super) fn at(&self, p: (f64, f64)) -> (i32, i32) {
        ((p.0 * self.u).round() as i32, (p.1 * self.u).round() as i32)
    }

    pub(super) fn stroke(&self, c: RGBColor, width: f64) -> ShapeStyle {
        c.stroke_width((width * self.u).round().max(1.0) as u32)
    }

    pub(super) fn font(&self, size: f64, h: HPos, up: bool, c: RGBColor) -> TextStyle<'static> {
        let font = FontDesc::new(
            FontFamily::SansSerif,
            size * self.u * LINE_PER_EM,
            FontStyle::Normal,
        );
        TextStyle {
            font: if up {
                font.transform(FontTransform::Rotate270)
            } else {
                font
            },
            color: c.to_backend_color(),
            pos: Pos::new(h, VPos::Top),
        }
    }

    /// The advance width of `s` at `size` points, as this backend sets it.
    pub(super) fn width(&self, s: &str, size: f64) -> f64 {
        match self
            .area
            .estimate_text_size(s, &self.font(size, HPos::Left, false, INK))
        {
            Ok((w, _)) => w as f64 / self.u,
            Err(_) => planned_width(s, size),
        }
    }

    /// One line of text, its baseline at `y`, starting, centred or ending at `x` (`h`).
    pub(super) fn text(
        &self,
        s: &str,
        x: f64,
        y: f64,
        size: f64,
        h: HPos,
    ) -> Result<(), DrawErr<DB>> {
        // Text anchored at its top has its baseline size/2 below (see super::vector).
        let top = y - 0.5 * size * LINE_PER_EM;
        self.area
            .draw_text(s, &self.font(size, h, false, INK), self.at((x, top)))
    }

    /// Text reading upwards, centred on `y`, its baseline at `x`.
    pub(super) fn text_up(&self, s: &str, x: f64, y: f64, size: f64) -> Result<(), DrawErr<DB>> {
        let left = x - 0.5 * size * LINE_PER_EM;
        self.area.draw_text(
            s,
            &self.font(size, HPos::Center, true, INK),
            self.at((left, y)),
        )
    }

    /// A tick label: text, or 10 (after a mantissa and a times sign) with a raised exponent;
    /// aligned by `h` at (x, baseline y).
    pub(super) fn label(
        &self,
        l: &Label,
        x: f64,
        y: f64,
        size: f64,
        h: HPos,
    ) -> Result<(), DrawErr<DB>> {
        let (base, e) = match l {
            Label::Text(s) => return self.text(s, x, y, size, h),
            Label::Pow10(e) => ("10".to_string(), e),
            Label::Sci(m, e) => (format!("{m}\u{d7}10"), e),
        };
        let (e, es) = (e.to_string(), 0.72 * size);
        let (wb, we) = (self.width(&base, size), self.width(&e, es));
        let start = match h {
            HPos::Left => x,
            HPos::Center => x - 0.5 * (wb + we),
            HPos::Right => x - wb - we,
        };
        self.text(&base, start, y, size, HPos::Left)?;
        self.text(&e, start + wb, y - 0.42 * size, es, HPos::Left)
    }

    pub(super) fn label_width(&self, l: &Label, size: f64) -> f64 {
        match l {
            Label::Text(s) => self.width(s, size),
            Label::Pow10(e) => self.width("10", size) + self.width(&e.to_string(), 0.72 * size),
            Label::Sci(m, e) => {
                self.width(&format!("{m}\u{d7}10"), size) + self.width(&e.to_string(), 0.72 * size)
            }
        }
    }

    /// A polyline in `style`'s colour, width and dash.
    pub(super) fn path(&self, pts: &[(f64, f64)], style: &Style) -> Result<(), DrawErr<DB>> {
        let s = self.stroke(style.color, style.width);
        for piece in dashes(pts, style.dash.pattern()) {
            let p: Vec<(i32, i32)> = piece.iter().map(|&q| self.at(q)).collect();
            self.area.draw(&PathElement::new(p, s))?;
        }
        Ok(())
    }

    pub(super) fn rect(
        &self,
        a: (f64, f64),
        b: (f64, f64),
        style: ShapeStyle,
    ) -> Result<(), DrawErr<DB>> {
        self.area
            .draw(&Rectangle::new([self.at(a), self.at(b)], style))
    }

    pub(super) fn marker(
        &self,
        m: Marker,
        x: f64,
        y: f64,
        r: f64,
        c: RGBColor,
    ) -> Result<(), DrawErr<DB>> {
        let poly = |v: &[(f64, f64)]| -> Vec<(i32, i32)> {
            v.iter()
                .map(|d| self.at((x + d.0 * r, y + d.1 * r)))
                .collect()
        };
        match m {
            Marker::Circle => self.area.draw(&Circle::new(
                self.at((x, y)),
                (r * self.u).round().max(1.0) as i32,
                c.filled(),
            )),
            Marker::Square => {
                let s = 0.85;
                self.rect((x - s * r, y - s * r), (x + s * r, y + s * r), c.filled())
            }
            Marker::Triangle => self.area.draw(&Polygon::new(
                poly(&[(0.0, -1.25), (1.1, 0.75), (-1.1, 0.75)]),
                c.filled(),
            )),
            Marker::Down => self.area.draw(&Polygon::new(
                poly(&[(0.0, 1.25), (1.1, -0.75), (-1.1, -0.75)]),
                c.filled(),
            )),
            Marker::Diamond => self.area.draw(&Polygon::new(
                poly(&[(0.0, -1.3), (1.0, 0.0), (0.0, 1.3), (-1.0, 0.0)]),
                c.filled(),
            )),
        }
    }

    /// A legend swatch `len` long, centred on y: the line (dash, width) and its marker.
    pub(super) fn swatch(
        &self,
        x: f64,
        y: f64,
        len: f64,
        style: &Style,
    ) -> Result<(), DrawErr<DB>> {
        self.path(&[(x, y), (x + len, y)], style)?;
        if let Some(m) = style.marker {
            self.marker(m, x + 0.5 * len, y, style.mark, style.color)?;
        }
        Ok(())
    }
}

/// The drawn pieces of a polyline with the dash `pattern` (on, off) in its units, the
/// pattern running on across vertices; the whole line when solid.
fn dashes(pts: &[(f64, f64)], pattern: Option<(f64, f64)>) -> Vec<Vec<(f64, f64)>> {
    let Some((on, off)) = pattern else {
        return vec![pts.to_vec()];
    };
    let mut out = Vec::new();
    let mut cur: Vec<(f64, f64)> = Vec::new();
    let (mut drawing, mut left) = (true, on);
    for w in pts.windows(2) {
        let (mut a, b) = (w[0], w[1]);
        if drawing && cur.is_empty() {
            cur.push(a);
        }
        let mut d = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        while d > left {
            let t = left / d;
            a = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
            d -= left;
            if drawing {
                cur.push(a);
                out.push(std::mem::take(&mut cur));
            } else {
                cur.push(a);
            }
            drawing = !drawing;
            left = if drawing { on } else { off };
        }
        left -= d;
        if drawing {
            cur.push(b);
        }
    }
    if drawing && cur.len() > 1 {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashes_run_on_across_vertices() {
        // 10 long in two segments, pattern 3 on 2 off: on [0,3], [5,8], [10,10] (empty).
        let pieces = dashes(&[(0.0, 0.0), (4.0, 0.0), (10.0, 0.0)], Some((3.0, 2.0)));
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert_eq!(pieces[0], vec![(0.0, 0.0), (3.0, 0.0)]);
        assert_eq!(pieces[1], vec![(5.0, 0.0), (8.0, 0.0)]);
        // A dash across the vertex keeps the vertex.
        let pieces = dashes(&[(0.0, 0.0), (2.0, 0.0), (2.0, 2.0)], Some((3.0, 1.0)));
        assert_eq!(pieces[0], vec![(0.0, 0.0), (2.0, 0.0), (2.0, 1.0)]);
    }
}
