//! What a figure is made of, before any drawing: panels of lines in their styles, legends, the
//! page size. [`super::panels`] builds it from the runs; [`super::draw`] lays it out and draws.
use plotters::style::RGBColor;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dash {
    Solid,
    Dashed,
    Dotted,
}

impl Dash {
    /// On and off lengths in points.
    pub(super) fn pattern(self) -> Option<(f64, f64)> {
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
    /// Whether the y axis may be logarithmic (where the values span a decade): not for
    /// percentages.
    pub log_ok: bool,
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

/// A panel's place: the cell, and its plot area inside it.
pub(super) struct Frame {
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
}
