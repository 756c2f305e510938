//! `probe plot`: one figure of a `probe grad` results file, a panel per quantity it holds,
//! against step: the full-dataset loss, gradient norm (with |g + wd w|) and accuracy (the
//! paper's Figure 1), then the weight norm, the weights' motion between checkpoints against the
//! Wasserstein distance of their distributions, gradient noise, and sharpness with the 2/lr line.
//!
//! Panels whose columns are missing are left out and named in the returned notes. Text uses
//! DejaVu Sans embedded in the binary (`assets/fonts`, registered with plotters' `ab_glyph`
//! feature), so no system font lookup happens at build or run time. PNG or SVG by extension.
use crate::analyze::results::Results;
use crate::error::{input, output};
use anyhow::Result;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::PathBuf;

pub struct PlotPlan {
    pub path: PathBuf,
    pub out: PathBuf,
    /// Learning rate for the 2/lr line, overriding `/checkpoints/lr`.
    pub lr: Option<f64>,
    /// Accept a lone data shard (`--allow-partial`).
    pub allow_partial: bool,
}

/// DejaVu Sans 2.37 (Bitstream Vera license, `assets/fonts/LICENSE`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid font file checked in beside this code; failing here is a bug.
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("assets/fonts/DejaVuSans.ttf is not a usable font"));
    });
}

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

struct Panel {
    title: String,
    y_desc: String,
    log: bool,
    lines: Vec<Line>,
}

impl Panel {
    fn new(title: &str, y_desc: &str, log: bool, lines: Vec<Line>) -> Panel {
        Panel {
            title: title.into(),
            y_desc: y_desc.into(),
            log,
            lines,
        }
    }
}

fn line(label: &str, steps: &[f64], v: &[f64]) -> Line {
    Line {
        label: label.into(),
        points: steps.iter().copied().zip(v.iter().copied()).collect(),
        dashed: false,
    }
}

/// The panels drawn so far, and notes on what was left out.
struct Figure {
    /// The results file, as notes name it.
    name: String,
    panels: Vec<Panel>,
    notes: Vec<String>,
}

impl Figure {
    /// Adds panel `title` (y axis `y_desc`, log or linear) of `lines`, if there are any; says
    /// whether it did.
    fn panel(&mut self, title: &str, y_desc: &str, log: bool, lines: Vec<Line>) -> bool {
        if lines.is_empty() {
            return false;
        }
        self.panels.push(Panel::new(title, y_desc, log, lines));
        true
    }

    /// Notes that the file has no column `c` (`how` one gets it), so `what` is left out.
    fn missing(&mut self, c: &str, what: &str, how: &str) {
        let name = &self.name;
        self.notes
            .push(format!("{name} has no /{c} ({how}): {what} left out"));
    }
}

/// The panels `res` supports, and notes naming the columns that are missing.
fn panels(res: &Results, lr: Option<f64>) -> (Vec<Panel>, Vec<String>) {
    let mut fig = Figure {
        name: res.path.display().to_string(),
        panels: Vec::new(),
        notes: Vec::new(),
    };
    let steps = res.sorted_steps();
    let col = |c: &str| res.series(c).map(|v| res.sorted(&v));
    // One line per (column, label) the file holds.
    let lines = |cols: &[(&str, &str)]| -> Vec<Line> {
        cols.iter()
            .filter_map(|&(c, label)| col(c).map(|v| line(label, &steps, &v)))
            .collect()
    };

    let loss = lines(&[("loss", "loss")]);
    if !fig.panel("Full-dataset loss", "loss", true, loss) {
        fig.missing("loss", "the loss panel", "damaged file?");
    }
    let mut gl = lines(&[("grad/l2", "|g|")]);
    if gl.is_empty() {
        fig.missing("grad/l2", "|g|", "damaged file?");
    }
    match col("grad_reg/l2") {
        Some(v) => {
            let wd = if res.weight_decay.is_empty() {
                "wd".to_string()
            } else {
                res.weight_decay.clone()
            };
            // Dashed: it often lies on top of |g| (a small wd), which then shows through the gaps.
            let mut l = line(&format!("|g + {wd} w| (dashed)"), &steps, &v);
            l.dashed = true;
            gl.push(l)
        }
        None => fig.missing("grad_reg/l2", "|g + wd w|", "probe grad --weight-decay L"),
    }
    fig.panel("Full-dataset gradient norm", "l2 norm", true, gl);
    let mut accuracy = lines(&[("accuracy", "accuracy")]);
    accuracy.retain(|l| l.points.iter().any(|p| p.1.is_finite()));
    if !fig.panel("Full-dataset accuracy", "accuracy", false, accuracy) {
        fig.missing(
            "accuracy",
            "the accuracy panel",
            "not defined for --loss mse",
        );
    }
    let norm = lines(&[("weights/l2", "|w|")]);
    if !fig.panel("Weight norm |w|", "l2 norm", false, norm) {
        fig.missing("weights/l2", "the weight-norm panel", "damaged file?");
    }
    // Motion between consecutive checkpoints, all per entry so they share an axis:
    // RMS |dw| = dist_prev / sqrt(N) >= mean |dw| >= W1 of the per-tensor distributions.
    let a = crate::analyze::analyze(res, lr);
    let mut mv = Vec::new();
    let entries: Option<f64> = res.entries().map(|e| e.iter().sum());
    if let Some(v) = col("weights/dist_prev") {
        match entries {
            Some(n) => {
                let rms: Vec<f64> = v.iter().map(|x| x / n.sqrt()).collect();
                mv.push(line("RMS |dw| (dist_prev / sqrt N)", &steps, &rms));
            }
            None => mv.push(line("|w_k - w_(k-1)|", &steps, &v)),
        }
    } else {
        fig.missing("weights/dist_prev", "the distance moved", "damaged file?");
    }
    match &a.distribution {
        Some(d) if !d.ratio.is_empty() => {
            mv.push(line("mean |dw|", &steps, &res.sorted(&d.move_prev)));
            mv.push(line("W1 of weight distributions", &steps, &res.sorted(&d.w1_prev)));
        }
        _ => fig.notes.push(format!(
            "{} has no /weights/w1_prev and /weights/per_param_mean_abs_move (schema 2): the Wasserstein distance is left out",
            fig.name
        )),
    }
    let per_entry = entries.is_some() || mv.len() > 1;
    // Row 0 has nothing before it: its zeros are not motion.
    for l in &mut mv {
        if let Some(&first) = res.order.first() {
            let s0 = res.step[first] as f64;
            l.points.retain(|p| p.0 != s0 || p.1 != 0.0);
        }
    }
    let y_desc = if per_entry {
        "per weight"
    } else {
        "|w_k - w_(k-1)|"
    };
    fig.panel("Motion between consecutive checkpoints", y_desc, true, mv);
    let mut noise = lines(&[
        ("noise/batch_var", "minibatch gradient variance"),
        (
            "noise/sample_var_trace",
            "per-sample gradient variance (trace)",
        ),
    ]);
    if let (false, Some(v)) = (noise.is_empty(), col("grad/l2")) {
        let sq: Vec<f64> = v.iter().map(|x| x * x).collect();
        noise.push(line("|g|^2", &steps, &sq));
    }
    if !fig.panel("Gradient noise", "squared norm", true, noise) {
        fig.missing(
            "noise/batch_var",
            "the gradient-noise panel",
            "probe grad --noise",
        );
    }
    let b_noise = lines(&[("noise/b_noise", "B_noise")]);
    fig.panel("Noise scale B_noise", "samples", true, b_noise);
    let mut sharp = lines(&[
        ("hessian/top", "top Hessian eigenvalue"),
        ("hessian/sharpness", "sharpness"),
    ]);
    if !sharp.is_empty() {
        let lrs = lr.map(|l| vec![l; res.rows]).or_else(|| res.lr());
        match lrs {
            Some(l) => {
                let two: Vec<f64> = res.sorted(&l).iter().map(|x| 2.0 / x).collect();
                let mut e = line("2 / lr (dashed)", &steps, &two);
                e.dashed = true;
                sharp.push(e);
            }
            None => fig.notes.push(format!(
                "{}: the learning rate is unknown (no finite /checkpoints/lr): pass --lr for the 2/lr line",
                fig.name
            )),
        }
    }
    if !fig.panel("Sharpness", "eigenvalue", true, sharp) {
        fig.missing("hessian/top", "the sharpness panel", "probe grad --hessian");
    }
    (fig.panels, fig.notes)
}

/// Draws the figure; returns notes on what was left out.
pub fn run(plan: &PlotPlan) -> Result<Vec<String>> {
    let ext = plan
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    let svg = match ext.as_deref() {
        Some("png") => false,
        Some("svg") => true,
        _ => {
            return Err(input(format!(
                "{}: the figure's name must end in .png or .svg",
                plan.out.display()
            )))
        }
    };
    if let Some(dir) = plan.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(input(format!(
                "{}: the output folder {} does not exist",
                plan.out.display(),
                dir.display()
            )));
        }
    }
    let res = Results::open(&plan.path, 1, plan.allow_partial)?;
    let (panels, notes) = panels(&res, plan.lr);
    if panels.is_empty() {
        return Err(input(format!("{}: nothing to plot", plan.path.display())));
    }
    register_font();
    let cols = if panels.len() <= 4 { 2 } else { 3 };
    let rows = panels.len().div_ceil(cols);
    let size = (520 * cols as u32, 40 + 380 * rows as u32);
    let attr = |k: &str| crate::store::read_str_attr(res.file(), k).unwrap_or_default();
    let model = attr("model_path");
    let model = std::path::Path::new(&model)
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let title = format!(
        "{}:  {} on {}, {} checkpoints",
        res.path
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default(),
        if model.is_empty() { "model" } else { &model },
        attr("data"),
        res.rows
    );
    let x_desc = if res.steps_known {
        "step"
    } else {
        "row (no steps recorded)"
    };
    let err = |e: String| output(format!("{}: drawing: {e}", plan.out.display()));
    if svg {
        let root = SVGBackend::new(&plan.out, size).into_drawing_area();
        draw(&root, &title, &panels, (rows, cols), x_desc).map_err(err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    } else {
        let root = BitMapBackend::new(&plan.out, size).into_drawing_area();
        draw(&root, &title, &panels, (rows, cols), x_desc).map_err(err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(notes)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[Panel],
    grid: (usize, usize),
    x_desc: &str,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let body = root
        .titled(title, ("sans-serif", 22).into_font().color(&BLACK))
        .map_err(e)?;
    let areas = body.split_evenly(grid);
    // One step axis for every panel, so they line up.
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    for q in panels
        .iter()
        .flat_map(|p| p.lines.iter())
        .flat_map(|l| l.points.iter())
    {
        x0 = x0.min(q.0);
        x1 = x1.max(q.0);
    }
    if x1 <= x0 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    for (p, area) in panels.iter().zip(&areas) {
        let pts = p
            .lines
            .iter()
            .flat_map(|l| l.points.iter())
            .filter(|q| q.1.is_finite() && (!p.log || q.1 > 0.0));
        let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
        for &(_, y) in pts {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if !y0.is_finite() {
            continue;
        }
        let xr = x0..x1;
        // The y range, padded: 8% of the log range (a factor of 2 around a constant), or 6%.
        let (mut lo, mut hi) = if p.log {
            let pad = if y1 > y0 { (y1 / y0).powf(0.08) } else { 2.0 };
            (y0 / pad, y1 * pad)
        } else {
            let pad = if y1 > y0 {
                0.06 * (y1 - y0)
            } else {
                0.1 * y0.abs().max(1e-3)
            };
            (y0 - pad, y1 + pad)
        };
        // To and from the axis's own scale (ln y on a log axis).
        type Map = fn(f64) -> f64;
        let (to_n, from_n): (Map, Map) = if p.log {
            (f64::ln, f64::exp)
        } else {
            (|v| v, |v| v)
        };
        // The legend goes to the corner where it hides the least data; where every corner
        // holds some, the y range grows upwards to make room for it.
        let h = ((p.lines.len() * 20 + 12) as f64 / 300.0).min(0.6);
        let (mut corner, hidden) = legend_corner(&normalized(p, &xr, (to_n(lo), to_n(hi))), h);
        if p.lines.len() > 1 && hidden > 0 {
            let (ln, hn) = (to_n(lo), to_n(hi));
            hi = from_n(hn + (hn - ln) * h / (1.0 - h));
            corner = SeriesLabelPosition::UpperRight;
        }
        if !p.log {
            lo = lo.min(hi);
        }
        if p.log {
            let (bold, light) = log_ticks(lo, hi);
            let spec = (lo..hi)
                .log_scale()
                .with_key_points(bold)
                .with_light_points(light);
            panel(area, p, xr, spec, corner, x_desc).map_err(e)?;
        } else {
            panel(area, p, xr, lo..hi, corner, x_desc).map_err(e)?;
        }
    }
    Ok(())
}

/// Tick values for a log axis over [lo, hi]: bold ones labelled (1-2-5 per decade, thinned to
/// powers of ten over wide ranges, or every integer multiple over narrow ones), light ones for
/// the grid (every integer multiple).
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let within = |mults: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        for e in e0..=e1 {
            for m in mults {
                let v = m * 10f64.powi(e);
                if v >= lo && v <= hi {
                    out.push(v);
                }
            }
        }
        out
    };
    let all: Vec<f64> = (1..10).map(|m| m as f64).collect();
    let mut bold = within(&[1.0, 2.0, 5.0]);
    if bold.len() > 8 {
        bold = within(&[1.0]);
    }
    if bold.len() < 3 {
        bold = within(&all);
    }
    if bold.len() < 3 {
        bold = within(&[1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    }
    if bold.len() > 8 {
        // Powers of ten over many decades: every n-th of them.
        let n = bold.len().div_ceil(8);
        bold = bold.into_iter().step_by(n).collect();
    }
    (bold, within(&all))
}

/// A tick label: at most 4 significant digits, no trailing zeros; e-notation outside
/// [1e-3, 1e5).
pub fn tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let e = v.abs().log10().floor() as i32;
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if (-3..5).contains(&e) {
        trim(format!("{:.*}", (3 - e).max(0) as usize, v))
    } else {
        let m = v / 10f64.powi(e);
        format!("{}e{e}", trim(format!("{m:.2}")))
    }
}

/// Which corner of the plot the legend covers least data in (coordinates normalized to [0,1];
/// the legend taken as 45% wide and `h` high).
fn legend_corner(pts: &[(f64, f64)], h: f64) -> (SeriesLabelPosition, usize) {
    let corners = [
        (SeriesLabelPosition::UpperRight, (0.55, 1.0), (1.0 - h, 1.0)),
        (SeriesLabelPosition::UpperLeft, (0.0, 0.45), (1.0 - h, 1.0)),
        (SeriesLabelPosition::LowerRight, (0.55, 1.0), (0.0, h)),
        (SeriesLabelPosition::LowerLeft, (0.0, 0.45), (0.0, h)),
    ];
    let mut best = (usize::MAX, 0);
    for (i, (_, xs, ys)) in corners.iter().enumerate() {
        let n = pts
            .iter()
            .filter(|p| p.0 >= xs.0 && p.0 <= xs.1 && p.1 >= ys.0 && p.1 <= ys.1)
            .count();
        if n < best.0 {
            best = (n, i);
        }
    }
    (corners[best.1].0.clone(), best.0)
}

/// The panel's lines (sampled between their points) in [0,1]^2 of the plot, y in `y_norm`
/// (ln y on a log axis).
fn normalized(p: &Panel, x: &std::ops::Range<f64>, y_norm: (f64, f64)) -> Vec<(f64, f64)> {
    let norm = |q: (f64, f64)| {
        let yv = if p.log { q.1.ln() } else { q.1 };
        (
            (q.0 - x.start) / (x.end - x.start),
            (yv - y_norm.0) / (y_norm.1 - y_norm.0),
        )
    };
    let mut seen = Vec::new();
    for l in &p.lines {
        let pts: Vec<(f64, f64)> = l
            .points
            .iter()
            .copied()
            .filter(|q| q.1.is_finite() && (!p.log || q.1 > 0.0))
            .map(norm)
            .collect();
        for w in pts.windows(2) {
            for t in 0..10 {
                let t = t as f64 / 10.0;
                seen.push((
                    w[0].0 + t * (w[1].0 - w[0].0),
                    w[0].1 + t * (w[1].1 - w[0].1),
                ));
            }
        }
        seen.extend(pts);
    }
    seen
}

fn panel<DB: DrawingBackend, Y>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    x: std::ops::Range<f64>,
    y: Y,
    legend: SeriesLabelPosition,
    x_desc: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 18))
        .margin_left(8)
        .margin_right(20)
        .margin_top(6)
        .margin_bottom(6)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d::<std::ops::Range<f64>, Y>(x, y)?;
    let xf = |v: &f64| tick(*v);
    let yf = |v: &f64| tick(*v);
    chart
        .configure_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .x_desc(x_desc)
        .y_desc(p.y_desc.as_str())
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&xf)
        .y_label_formatter(&yf)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    let markers = p.lines.iter().map(|l| l.points.len()).max().unwrap_or(0) <= 60;
    for (i, l) in p.lines.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = l
            .points
            .iter()
            .copied()
            .filter(|q| q.1.is_finite() && (!p.log || q.1 > 0.0))
            .collect();
        let style = c.stroke_width(2);
        let drawn = if l.dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style))?
        };
        drawn
            .label(l.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        if markers && !l.dashed {
            chart.draw_series(pts.iter().map(|&q| Circle::new(q, 2, c.filled())))?;
        }
    }
    if p.lines.len() > 1 {
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(190, 190, 190))
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        for (v, want) in [
            (400.0, "400"),
            (0.8, "0.8"),
            (0.0005, "5e-4"),
            (1.0, "1"),
            (12345.0, "12345"),
            (2.5e6, "2.5e6"),
            (0.123456, "0.1235"),
            (0.0, "0"),
        ] {
            assert_eq!(tick(v), want);
        }
    }

    #[test]
    fn log_ticks_label_a_few_round_values() {
        assert_eq!(log_ticks(0.15, 2.5).0, vec![0.2, 0.5, 1.0, 2.0]);
        // Narrow ranges fall back to finer multiples, wide ones to powers of ten.
        assert_eq!(log_ticks(1.1, 3.3).0, vec![1.2, 1.5, 2.0, 2.5, 3.0]);
        assert_eq!(log_ticks(1e-6, 1e3).0.len(), 5);
    }

    #[test]
    fn legend_goes_where_the_data_is_not() {
        // Data along the top: a lower corner is free.
        let top: Vec<(f64, f64)> = (0..=10).map(|i| (i as f64 / 10.0, 0.95)).collect();
        let (pos, hidden) = legend_corner(&top, 0.2);
        assert_eq!(hidden, 0);
        assert!(matches!(pos, SeriesLabelPosition::LowerRight));
    }
}
