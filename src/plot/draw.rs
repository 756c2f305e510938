//! Lays a [`Figure`] out on a page and draws it with plotters' primitives, the same way on
//! every backend (PNG raster, PDF and SVG vector). Everything is placed in typographic points
//! (1/72 in) and scaled to the backend's units, so a figure printed at its `--width` shows its
//! text at `--font-size`: panel titles and axis labels at that size, tick labels and legends
//! at 7/8 of it.
//!
//! Each panel: its title; a frame with grid lines at the ticks (log axes also at every
//! integer multiple of a power of ten); tick labels outside, at least 3 per axis; the y axis
//! label turned upwards; the lines in the order solid, dashed, dotted, so a dashed line on top
//! of a solid one shows in its gaps; markers at checkpoints; the legend (swatches drawn with
//! the line's own dash, width and marker) in the corner of the plot where it covers least
//! data, the y range grown upwards to make room when every corner holds some. Plot areas of a
//! column share their left edge, so the panels line up.
use super::axis::{Axis, Label};
use super::vector::{helvetica_width, LINE_PER_EM};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dash {
    Solid,
    Dashed,
    Dotted,
}

impl Dash {
    /// On and off lengths in points.
    fn pattern(self) -> Option<(f64, f64)> {
        match self {
            Dash::Solid => None,
            Dash::Dashed => Some((3.6, 2.0)),
            Dash::Dotted => Some((1.1, 1.5)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
    Down,
}

#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: RGBColor,
    pub dash: Dash,
    /// Line width in points.
    pub width: f64,
    pub marker: Option<Marker>,
    /// The marker's radius in points.
    pub mark: f64,
}

pub struct Line {
    pub points: Vec<(f64, f64)>,
    pub style: Style,
}

pub struct Panel {
    /// The title and the y axis label: the first that fits is drawn (longest first); where
    /// none does, the last, made smaller to fit (down to 3/4).
    pub titles: Vec<String>,
    pub y_labels: Vec<String>,
    /// Drawn in this order.
    pub lines: Vec<Line>,
    pub legend: Vec<(String, Style)>,
}

pub struct Figure {
    pub title: String,
    /// One entry per run when there are several: the figure's legend, under the title.
    pub runs: Vec<(String, Style)>,
    pub x_label: String,
    pub panels: Vec<Panel>,
}

/// The page: width and (optional) height in points, and the base font size in points.
#[derive(Debug, Clone, Copy)]
pub struct PageSize {
    pub width: f64,
    pub height: Option<f64>,
    pub font: f64,
    /// Panels per row; `None`: up to 3, as many as are at least 16 font sizes wide.
    pub columns: Option<usize>,
}

const INK: RGBColor = RGBColor(25, 25, 25);
const FRAME: RGBColor = RGBColor(80, 80, 80);
const GRID: RGBColor = RGBColor(222, 222, 222);
const GRID_MINOR: RGBColor = RGBColor(240, 240, 240);

/// Panels per row for `n` panels on `page`.
fn columns(n: usize, page: &PageSize) -> usize {
    if let Some(c) = page.columns {
        return c.clamp(1, n.max(1));
    }
    let fit = ((page.width - page.font) / (16.0 * page.font))
        .floor()
        .max(1.0) as usize;
    let want = match n {
        0..=3 => n.max(1),
        4 => 2,
        _ => 3,
    };
    want.min(fit)
}

/// The vertical layout, in points, shared by the page size and the drawing.
struct Layout {
    pad: f64,
    /// Height of the title and the run legend above the panels.
    head: f64,
    /// The run legend's entries, by row.
    run_rows: Vec<Vec<usize>>,
    cols: usize,
    rows: usize,
    cell_w: f64,
    cell_h: f64,
}

/// Width of `s` at `size` points as the layout plans it before it can measure: Helvetica's,
/// widened to DejaVu Sans's (about 12% wider) so a row planned here fits in either font.
fn planned_width(s: &str, size: f64) -> f64 {
    1.15 * helvetica_width(s) * size
}

impl Layout {
    fn new(fig: &Figure, page: &PageSize) -> Layout {
        let f = page.font;
        let pad = 0.5 * f;
        let cols = columns(fig.panels.len(), page);
        let rows = fig.panels.len().div_ceil(cols).max(1);
        // The run legend's rows: entries in order, a new row when the next does not fit.
        let mut run_rows: Vec<Vec<usize>> = Vec::new();
        let mut used = f64::INFINITY;
        for (i, (label, _)) in fig.runs.iter().enumerate() {
            let w = run_entry_width(planned_width(label, 0.875 * f), f);
            if used + w > page.width - 2.0 * pad {
                run_rows.push(Vec::new());
                used = 0.0;
            }
            run_rows.last_mut().unwrap().push(i);
            used += w;
        }
        let mut head = pad;
        if !fig.title.is_empty() {
            head += 1.6 * f;
        }
        head += 1.5 * f * run_rows.len() as f64;
        let cell_w = (page.width - 2.0 * pad) / cols as f64;
        let cell_h = match page.height {
            Some(h) => ((h - head - pad) / rows as f64).max(4.0 * f),
            None => cell_w * if cols == 1 { 0.6 } else { 0.74 },
        };
        Layout {
            pad,
            head,
            run_rows,
            cols,
            rows,
            cell_w,
            cell_h,
        }
    }

    fn height(&self) -> f64 {
        self.head + self.rows as f64 * self.cell_h + self.pad
    }
}

/// A run legend entry's width: swatch, gap, label, space to the next.
fn run_entry_width(label_w: f64, f: f64) -> f64 {
    2.2 * f + 0.4 * f + label_w + 1.4 * f
}

/// The page's height in points for `fig` at `page`'s width (its own when given).
pub fn page_height(fig: &Figure, page: &PageSize) -> f64 {
    page.height
        .unwrap_or_else(|| Layout::new(fig, page).height())
}

type DrawErr<DB> = DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>;

/// Drawing in points on a backend of `u` units per point.
struct Pen<'a, DB: DrawingBackend> {
    area: &'a DrawingArea<DB, Shift>,
    u: f64,
}

impl<DB: DrawingBackend> Pen<'_, DB> {
    fn at(&self, p: (f64, f64)) -> (i32, i32) {
        ((p.0 * self.u).round() as i32, (p.1 * self.u).round() as i32)
    }

    fn stroke(&self, c: RGBColor, width: f64) -> ShapeStyle {
        c.stroke_width((width * self.u).round().max(1.0) as u32)
    }

    fn font(&self, size: f64, h: HPos, up: bool, c: RGBColor) -> TextStyle<'static> {
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
    fn width(&self, s: &str, size: f64) -> f64 {
        match self
            .area
            .estimate_text_size(s, &self.font(size, HPos::Left, false, INK))
        {
            Ok((w, _)) => w as f64 / self.u,
            Err(_) => planned_width(s, size),
        }
    }

    /// One line of text, its baseline at `y`, starting, centred or ending at `x` (`h`).
    fn text(&self, s: &str, x: f64, y: f64, size: f64, h: HPos) -> Result<(), DrawErr<DB>> {
        // Text anchored at its top has its baseline size/2 below (see super::vector).
        let top = y - 0.5 * size * LINE_PER_EM;
        self.area
            .draw_text(s, &self.font(size, h, false, INK), self.at((x, top)))
    }

    /// Text reading upwards, centred on `y`, its baseline at `x`.
    fn text_up(&self, s: &str, x: f64, y: f64, size: f64) -> Result<(), DrawErr<DB>> {
        let left = x - 0.5 * size * LINE_PER_EM;
        self.area.draw_text(
            s,
            &self.font(size, HPos::Center, true, INK),
            self.at((left, y)),
        )
    }

    /// A tick label: text, or 10 with a raised exponent; aligned by `h` at (x, baseline y).
    fn label(&self, l: &Label, x: f64, y: f64, size: f64, h: HPos) -> Result<(), DrawErr<DB>> {
        match l {
            Label::Text(s) => self.text(s, x, y, size, h),
            Label::Pow10(e) => {
                let (e, es) = (e.to_string(), 0.72 * size);
                let (wb, we) = (self.width("10", size), self.width(&e, es));
                let start = match h {
                    HPos::Left => x,
                    HPos::Center => x - 0.5 * (wb + we),
                    HPos::Right => x - wb - we,
                };
                self.text("10", start, y, size, HPos::Left)?;
                self.text(&e, start + wb, y - 0.42 * size, es, HPos::Left)
            }
        }
    }

    fn label_width(&self, l: &Label, size: f64) -> f64 {
        match l {
            Label::Text(s) => self.width(s, size),
            Label::Pow10(e) => self.width("10", size) + self.width(&e.to_string(), 0.72 * size),
        }
    }

    /// A polyline in `style`'s colour, width and dash.
    fn path(&self, pts: &[(f64, f64)], style: &Style) -> Result<(), DrawErr<DB>> {
        let s = self.stroke(style.color, style.width);
        for piece in dashes(pts, style.dash.pattern()) {
            let p: Vec<(i32, i32)> = piece.iter().map(|&q| self.at(q)).collect();
            self.area.draw(&PathElement::new(p, s))?;
        }
        Ok(())
    }

    fn rect(&self, a: (f64, f64), b: (f64, f64), style: ShapeStyle) -> Result<(), DrawErr<DB>> {
        self.area
            .draw(&Rectangle::new([self.at(a), self.at(b)], style))
    }

    fn marker(&self, m: Marker, x: f64, y: f64, r: f64, c: RGBColor) -> Result<(), DrawErr<DB>> {
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
    fn swatch(&self, x: f64, y: f64, len: f64, style: &Style) -> Result<(), DrawErr<DB>> {
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

/// A panel's place: the cell, and its plot area inside it.
struct Frame {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

/// Draws `fig` on `area` (`u` backend units per point).
pub fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fig: &Figure,
    page: &PageSize,
    u: f64,
) -> Result<(), String> {
    draw_all(area, fig, page, u).map_err(|e| e.to_string())
}

fn draw_all<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fig: &Figure,
    page: &PageSize,
    u: f64,
) -> Result<(), DrawErr<DB>> {
    let pen = Pen { area, u };
    let f = page.font;
    let (tick, lab) = (0.875 * f, f);
    let lay = Layout::new(fig, page);
    area.fill(&WHITE)?;
    let mut y = lay.pad;
    if !fig.title.is_empty() {
        pen.text(
            &fig.title,
            page.width / 2.0,
            y + 1.0 * f,
            1.1 * f,
            HPos::Center,
        )?;
        y += 1.6 * f;
    }
    for row in &lay.run_rows {
        let ws: Vec<f64> = row
            .iter()
            .map(|&i| run_entry_width(pen.width(&fig.runs[i].0, tick), f))
            .collect();
        let mut x = (page.width - ws.iter().sum::<f64>() + 1.4 * f) / 2.0;
        for (&i, w) in row.iter().zip(&ws) {
            let (label, style) = &fig.runs[i];
            pen.swatch(x, y + 0.75 * f, 2.2 * f, style)?;
            pen.text(
                label,
                x + 2.6 * f,
                y + 0.75 * f + 0.36 * tick,
                tick,
                HPos::Left,
            )?;
            x += w;
        }
        y += 1.5 * f;
    }

    // One step axis for every panel, so they line up.
    let xs = fig
        .panels
        .iter()
        .flat_map(|p| p.lines.iter())
        .flat_map(|l| l.points.iter())
        .filter(|q| q.0.is_finite() && q.1.is_finite())
        .map(|q| q.0);
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (x0, x1) = if x0.is_finite() { (x0, x1) } else { (0.0, 1.0) };
    let x_axis = Axis::fit(x0, x1, false, 0.03, 4);
    let x_label_w = x_axis
        .ticks
        .iter()
        .filter_map(|t| t.label.as_ref())
        .map(|l| pen.label_width(l, tick))
        .fold(0.0, f64::max);

    // Each panel's y axis, then the left margin its tick labels need; a column takes the
    // widest of its panels'.
    let mut y_axes: Vec<Axis> = fig.panels.iter().map(y_axis).collect();
    let margin = |ax: &Axis| -> f64 {
        let w = ax
            .ticks
            .iter()
            .filter_map(|t| t.label.as_ref())
            .map(|l| pen.label_width(l, tick))
            .fold(0.0, f64::max);
        0.25 * f + 1.05 * lab + 0.45 * f + w + 0.35 * f
    };
    let lefts = |axes: &[Axis]| -> Vec<f64> {
        let mut left = vec![0.0f64; lay.cols];
        for (i, ax) in axes.iter().enumerate() {
            left[i % lay.cols] = left[i % lay.cols].max(margin(ax));
        }
        left
    };
    let right = 0.5 * f + 0.5 * x_label_w;
    let title_h = 1.7 * f;
    let tick_base = 0.35 * f + 0.78 * tick;
    let xlab_base = tick_base + 0.4 * f + 0.95 * lab;
    let bottom = xlab_base + 0.3 * lab + 0.2 * f;
    let frame = |i: usize, left: &[f64]| {
        let (col, row) = (i % lay.cols, i / lay.cols);
        let cx = lay.pad + col as f64 * lay.cell_w;
        let cy = lay.head + row as f64 * lay.cell_h;
        Frame {
            left: cx + left[col],
            right: cx + lay.cell_w - right,
            top: cy + title_h,
            bottom: cy + lay.cell_h - bottom,
        }
    };
    // Each legend's size (its text made smaller, down to 3/4, where the plot is narrow), where
    // it goes (growing a y axis where it must), then the margins again for the axes as they
    // are now.
    let first = lefts(&y_axes);
    let mut legends: Vec<Option<(f64, f64, f64)>> = Vec::new();
    let mut corners = vec![Corner::default(); fig.panels.len()];
    for (i, p) in fig.panels.iter().enumerate() {
        let fr = frame(i, &first);
        let room = fr.right - fr.left - 0.8 * f;
        let fit = legend_box(&pen, p, tick).map(|(w, _)| {
            let size = (tick * room / w).clamp(0.75 * tick, tick);
            let (w, h) = legend_box(&pen, p, size).unwrap();
            (w, h, size)
        });
        if let Some((w, h, _)) = fit {
            corners[i] = choose_corner(p, &x_axis, &mut y_axes[i], &fr, (w, h), f);
        }
        legends.push(fit);
    }
    let left = lefts(&y_axes);

    for (i, p) in fig.panels.iter().enumerate() {
        let (cx, cy) = (
            lay.pad + (i % lay.cols) as f64 * lay.cell_w,
            lay.head + (i / lay.cols) as f64 * lay.cell_h,
        );
        let fr = frame(i, &left);
        // The x axis label only where no panel is below.
        let last_in_column = i + lay.cols >= fig.panels.len();
        let ax = &y_axes[i];
        let (title, size) = fitting(&pen, &p.titles, f, lay.cell_w - 0.5 * f);
        pen.text(
            title,
            (fr.left + fr.right) / 2.0,
            cy + 1.15 * f,
            size,
            HPos::Center,
        )?;
        panel(&pen, p, &x_axis, ax, &fr, f)?;
        for t in &x_axis.ticks {
            if let Some(l) = &t.label {
                let x = fr.left + x_axis.frac(t.value) * (fr.right - fr.left);
                pen.label(l, x, fr.bottom + tick_base, tick, HPos::Center)?;
            }
        }
        for t in &ax.ticks {
            if let Some(l) = &t.label {
                let y = fr.bottom - ax.frac(t.value) * (fr.bottom - fr.top);
                pen.label(l, fr.left - 0.35 * f, y + 0.36 * tick, tick, HPos::Right)?;
            }
        }
        let (y_label, size) = fitting(&pen, &p.y_labels, lab, fr.bottom - fr.top + 0.5 * f);
        pen.text_up(
            y_label,
            cx + 0.25 * f + 0.8 * lab,
            (fr.top + fr.bottom) / 2.0,
            size,
        )?;
        if last_in_column {
            pen.text(
                &fig.x_label,
                (fr.left + fr.right) / 2.0,
                fr.bottom + xlab_base,
                lab,
                HPos::Center,
            )?;
        }
        if let Some((w, h, size)) = legends[i] {
            let at = corners[i].place(&fr, (w, h), f);
            draw_legend(&pen, p, at, (w, h), size)?;
        }
    }
    Ok(())
}

/// The first of `texts` no wider than `room` at `size`, or the last made smaller to fit (down
/// to 3/4 of `size`); and its size.
fn fitting<'t, DB: DrawingBackend>(
    pen: &Pen<DB>,
    texts: &'t [String],
    size: f64,
    room: f64,
) -> (&'t str, f64) {
    for t in texts {
        if pen.width(t, size) <= room {
            return (t, size);
        }
    }
    let last = texts.last().map(String::as_str).unwrap_or("");
    let w = pen.width(last, size).max(1e-9);
    (last, (size * room / w).clamp(0.75 * size, size))
}

/// The y axis of a panel: over its drawable values, log where they span a decade.
fn y_axis(p: &Panel) -> Axis {
    let ys = || {
        p.lines
            .iter()
            .flat_map(|l| l.points.iter())
            .map(|q| q.1)
            .filter(|v| v.is_finite())
    };
    let (lo, hi) = ys().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return Axis::fit(0.0, 1.0, false, 0.06, 4);
    }
    Axis::fit(lo, hi, true, 0.06, 4)
}

/// Frame, grid, ticks and lines of one panel.
fn panel<DB: DrawingBackend>(
    pen: &Pen<DB>,
    p: &Panel,
    xa: &Axis,
    ya: &Axis,
    fr: &Frame,
    f: f64,
) -> Result<(), DrawErr<DB>> {
    let to = |q: (f64, f64)| {
        (
            fr.left + xa.frac(q.0) * (fr.right - fr.left),
            fr.bottom - ya.frac(q.1) * (fr.bottom - fr.top),
        )
    };
    let tick_len = 0.3 * f;
    for t in ya.ticks.iter().rev() {
        let y = fr.bottom - ya.frac(t.value) * (fr.bottom - fr.top);
        let (c, w) = match t.label {
            Some(_) => (GRID, 0.45),
            None => (GRID_MINOR, 0.35),
        };
        pen.path(
            &[(fr.left, y), (fr.right, y)],
            &Style {
                color: c,
                dash: Dash::Solid,
                width: w,
                marker: None,
                mark: 0.0,
            },
        )?;
    }
    for t in &xa.ticks {
        let x = fr.left + xa.frac(t.value) * (fr.right - fr.left);
        pen.path(
            &[(x, fr.top), (x, fr.bottom)],
            &Style {
                color: GRID,
                dash: Dash::Solid,
                width: 0.45,
                marker: None,
                mark: 0.0,
            },
        )?;
    }
    let frame = Style {
        color: FRAME,
        dash: Dash::Solid,
        width: 0.6,
        marker: None,
        mark: 0.0,
    };
    for t in ya.ticks.iter().filter(|t| t.label.is_some()) {
        let y = fr.bottom - ya.frac(t.value) * (fr.bottom - fr.top);
        pen.path(&[(fr.left - tick_len, y), (fr.left, y)], &frame)?;
    }
    for t in xa.ticks.iter().filter(|t| t.label.is_some()) {
        let x = fr.left + xa.frac(t.value) * (fr.right - fr.left);
        pen.path(&[(x, fr.bottom), (x, fr.bottom + tick_len)], &frame)?;
    }
    for l in &p.lines {
        // Pieces between points that cannot be drawn (NaN, or <= 0 on a log axis).
        for piece in l.points.split(|q| !ya.shows(q.1) || !q.0.is_finite()) {
            let pts: Vec<(f64, f64)> = piece.iter().map(|&q| to(q)).collect();
            if pts.len() > 1 {
                pen.path(&pts, &l.style)?;
            }
        }
    }
    for l in &p.lines {
        if let Some(m) = l.style.marker {
            for &q in l.points.iter().filter(|q| ya.shows(q.1) && q.0.is_finite()) {
                let (x, y) = to(q);
                pen.marker(m, x, y, l.style.mark, l.style.color)?;
            }
        }
    }
    pen.rect(
        (fr.left, fr.top),
        (fr.right, fr.bottom),
        pen.stroke(FRAME, 0.6),
    )?;
    Ok(())
}

/// The legend's size in points (None without one): a row per entry, swatch then label.
fn legend_box<DB: DrawingBackend>(pen: &Pen<DB>, p: &Panel, size: f64) -> Option<(f64, f64)> {
    if p.legend.is_empty() {
        return None;
    }
    let text = p
        .legend
        .iter()
        .map(|(l, _)| pen.width(l, size))
        .fold(0.0, f64::max);
    let w = 0.45 * size + 2.4 * size + 0.45 * size + text + 0.5 * size;
    let h = p.legend.len() as f64 * 1.3 * size + 0.5 * size;
    Some((w, h))
}

/// A corner of the plot area.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Corner {
    left: bool,
    bottom: bool,
}

impl Corner {
    /// The legend's top-left point in this corner of `fr`.
    fn place(self, fr: &Frame, (w, h): (f64, f64), f: f64) -> (f64, f64) {
        let inset = 0.4 * f;
        let x = if self.left {
            fr.left + inset
        } else {
            fr.right - inset - w
        };
        let y = if self.bottom {
            fr.bottom - inset - h
        } else {
            fr.top + inset
        };
        (x, y)
    }
}

/// The corner of the plot where the legend covers the fewest of the panel's line points; where
/// every corner covers some, the y range grows upwards and the legend goes top right.
fn choose_corner(
    p: &Panel,
    xa: &Axis,
    ya: &mut Axis,
    fr: &Frame,
    (w, h): (f64, f64),
    f: f64,
) -> Corner {
    let inset = 0.4 * f;
    let (pw, ph) = (fr.right - fr.left, fr.bottom - fr.top);
    let (bw, bh) = ((w + inset) / pw, (h + inset) / ph);
    let pts = sampled(p, xa, ya);
    let covered = |c: Corner| {
        let xs = if c.left { (0.0, bw) } else { (1.0 - bw, 1.0) };
        let ys = if c.bottom { (0.0, bh) } else { (1.0 - bh, 1.0) };
        pts.iter()
            .filter(|q| q.0 >= xs.0 && q.0 <= xs.1 && q.1 >= ys.0 && q.1 <= ys.1)
            .count()
    };
    let corners = [(false, false), (true, false), (false, true), (true, true)]
        .map(|(left, bottom)| Corner { left, bottom });
    let (best, n) = corners
        .iter()
        .map(|&c| (c, covered(c)))
        .min_by_key(|&(_, n)| n)
        .unwrap();
    if n > 0 && bh < 0.6 {
        ya.grow_top(bh, 4);
        return Corner::default();
    }
    best
}

/// The panel's lines in the plot's [0,1]^2 (y up), with 10 points along each segment.
fn sampled(p: &Panel, xa: &Axis, ya: &Axis) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for l in &p.lines {
        let pts: Vec<(f64, f64)> = l
            .points
            .iter()
            .filter(|q| ya.shows(q.1) && q.0.is_finite())
            .map(|q| (xa.frac(q.0), ya.frac(q.1)))
            .collect();
        for w in pts.windows(2) {
            for t in 0..10 {
                let t = t as f64 / 10.0;
                out.push((
                    w[0].0 + t * (w[1].0 - w[0].0),
                    w[0].1 + t * (w[1].1 - w[0].1),
                ));
            }
        }
        out.extend(pts);
    }
    out
}

fn draw_legend<DB: DrawingBackend>(
    pen: &Pen<DB>,
    p: &Panel,
    (x, y): (f64, f64),
    (w, h): (f64, f64),
    size: f64,
) -> Result<(), DrawErr<DB>> {
    pen.rect((x, y), (x + w, y + h), WHITE.filled())?;
    pen.rect(
        (x, y),
        (x + w, y + h),
        pen.stroke(RGBColor(200, 200, 200), 0.4),
    )?;
    for (i, (label, style)) in p.legend.iter().enumerate() {
        let cy = y + 0.25 * size + (i as f64 + 0.5) * 1.3 * size;
        pen.swatch(x + 0.45 * size, cy, 2.4 * size, style)?;
        pen.text(label, x + 3.3 * size, cy + 0.36 * size, size, HPos::Left)?;
    }
    Ok(())
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

    #[test]
    fn grid_of_panels() {
        let page = |width: f64| PageSize {
            width,
            height: None,
            font: 8.0,
            columns: None,
        };
        assert_eq!(
            (1..=9)
                .map(|n| columns(n, &page(486.0)))
                .collect::<Vec<_>>(),
            [1, 2, 3, 2, 3, 3, 3, 3, 3]
        );
        // A column of a two-column paper (3.25 in): one panel per row at 8 pt.
        assert_eq!(columns(2, &page(234.0)), 1);
        let two = PageSize {
            columns: Some(2),
            ..page(234.0)
        };
        assert_eq!(columns(4, &two), 2);
    }
}
