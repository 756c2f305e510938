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
use super::axis::Axis;
use super::figure::{Dash, Figure, Frame, PageSize, Panel, Style};
use super::legend::{choose_corner, draw_legend, legend_box, Corner};
use super::pen::{planned_width, DrawErr, Pen};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::HPos;

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
        let titles = [fig.title.clone()];
        let (title, size) = fitting(&pen, &titles, 1.1 * f, page.width - 2.0 * lay.pad);
        pen.text(title, page.width / 2.0, y + 1.0 * f, size, HPos::Center)?;
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
    // Steps are whole: a range under 4 steps (one checkpoint) widens to 4, so the ticks do not
    // fall between steps.
    let (x0, x1) = if x1 - x0 < 4.0 {
        let m = (0.5 * (x0 + x1)).round();
        (m - 2.0, m + 2.0)
    } else {
        (x0, x1)
    };
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

/// The y axis of a panel: over its drawable values, log where they span a decade (and the
/// panel allows it).
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
    Axis::fit(lo, hi, p.log_ok, 0.06, 4)
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

#[cfg(test)]
mod tests {
    use super::*;

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
