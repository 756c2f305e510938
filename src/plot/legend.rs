//! A panel's legend: its size (a row per quantity, the swatch in the line's own style, then
//! the label), the corner of the plot it covers the least data in, the y axis grown upwards
//! where every corner holds some, and its drawing.
use super::axis::Axis;
use super::figure::{Frame, Panel};
use super::pen::{DrawErr, Pen};
use plotters::prelude::*;
use plotters::style::text_anchor::HPos;

/// The legend's size in points (None without one): a row per entry, swatch then label.
pub(super) fn legend_box<DB: DrawingBackend>(
    pen: &Pen<DB>,
    p: &Panel,
    size: f64,
) -> Option<(f64, f64)> {
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
pub(super) struct Corner {
    left: bool,
    bottom: bool,
}

impl Corner {
    /// The legend's top-left point in this corner of `fr`.
    pub(super) fn place(self, fr: &Frame, (w, h): (f64, f64), f: f64) -> (f64, f64) {
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
pub(super) fn choose_corner(
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

pub(super) fn draw_legend<DB: DrawingBackend>(
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
